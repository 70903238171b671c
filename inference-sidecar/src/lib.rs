//! lexserve-sidecar: the lexserve data plane. `serve` runs a model behind an HTTP API with dynamic
//! batching and Prometheus metrics; `fetch` copies a model into the serving volume and verifies it.

pub mod artifacts;
pub mod backend;
pub mod batching;
pub mod classifier_training;
pub mod cli;
pub mod config;
pub mod digest;
pub mod fetch;
pub mod generation;
pub mod head;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod remote;
pub mod service;
pub mod tokenize;
/// Model URIs: the contract's grammar, shared with the operator.
pub use lexserve_contract::uri;
