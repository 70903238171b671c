//! `lexserve-sidecar route`: the experiment router. It assigns each request to a variant (a hash
//! of the experiment's seed and the request's key into the bucket table, or at random), forwards
//! it unchanged but for the model name, streams the answer back tagged with the variant, and
//! counts assignments and the outcomes clients report on `/outcome`.
//!
//! [`config`] loads and compiles the configuration the operator writes, [`reload`] swaps it when
//! the file changes, [`assign`] and [`model_name`] are the pure decisions on a request, [`proxy`]
//! forwards it, [`outcome`] records what clients report, [`metrics`] exposes the counts, and
//! [`server`] runs it all behind the model server's own admission and connection handling.

pub mod assign;
pub mod config;
pub mod metrics;
pub mod model_name;
pub mod outcome;
pub mod proxy;
pub mod reload;
pub mod server;
