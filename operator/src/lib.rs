//! lexserve-operator: the API types, the CRD generator, the pure builders of every child, and
//! the controllers that apply them.

pub mod analysis;
pub mod api;
pub mod config;
pub mod controller;
pub mod crd;
pub mod gpu;
pub mod http;
pub mod leader;
pub mod metrics_api;
pub mod resources;
pub mod telemetry;
