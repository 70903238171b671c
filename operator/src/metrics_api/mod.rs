//! The operator's own `external.metrics.k8s.io` API: the load signal the HPAs of
//! `provider: hpa` InferenceServices scale on, computed from Prometheus, so that autoscaling
//! works without prometheus-adapter or KEDA.
//!
//! - [`load`]: the PromQL and the arithmetic (pure).
//! - [`selector`]: label selectors of metric requests (pure).
//! - [`signal`]: reading one service's load from Prometheus and the pods' readiness.
//! - [`server`]: the aggregated API's HTTP endpoints.
//! - [`tls`]: serving certificate and client authentication.
//! - [`serving_secret`]: the default serving certificate, shared by replicas through a Secret.
//! - [`ca_bundle`]: the APIService's `caBundle`, kept at the generated CA.
//! - [`client_trust`]: the front proxy's CA and allowed names, kept current.

pub mod ca_bundle;
pub mod client_trust;
pub mod load;
pub mod selector;
pub mod server;
pub mod serving_secret;
pub mod signal;
pub mod tls;
