//! lexserve-sidecar: the lexserve data plane. `serve` runs a model behind an HTTP API with dynamic
//! batching and Prometheus metrics; `fetch` copies a model into the serving volume and verifies it;
//! `route` splits an experiment's traffic between its variants and counts outcomes.

pub mod cli;
pub mod config;
pub mod encoder;
pub mod fault;
pub mod fetch;
pub mod generation;
pub mod http;
pub mod metrics;
pub mod route;
/// Model URIs: the contract's grammar, shared with the operator.
pub use lexserve_contract::uri;
