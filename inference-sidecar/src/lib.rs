//! lexserve-sidecar: the lexserve data plane. `serve` runs a model behind an HTTP API with dynamic
//! batching and Prometheus metrics; `fetch` copies a model into the serving volume and verifies it;
//! `route` splits an experiment's traffic between its variants and counts outcomes; `serve`'s
//! mirror copies a sample of production's requests to a shadow candidate and compares the answers;
//! drift monitoring's series and a reference sample's baseline are `serve`'s too ([`drift`]).

pub mod cli;
pub mod config;
pub mod drift;
pub mod encoder;
pub mod fault;
pub mod fetch;
pub mod generation;
pub mod http;
pub mod metrics;
pub mod mirror;
pub mod reload;
pub mod route;
/// Model URIs: the contract's grammar, shared with the operator.
pub use lexserve_contract::uri;
