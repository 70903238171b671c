//! The contract between `lexserve-operator` and `lexserve-sidecar`, defined once and imported by
//! both binaries.
//!
//! - [`model`] and [`runtime`]: the `spec.model` and `spec.runtime` blocks of an
//!   InferenceService. The operator embeds them in its CRDs and copies them unchanged into the
//!   sidecar's ConfigMap; the sidecar reads them back with the same types. Their defaults are
//!   constants in [`runtime::defaults`], documented on each field (so `kubectl explain` shows
//!   them) and used by the sidecar.
//! - [`quantity`], [`duration`] and [`uri`]: the value grammars both sides must agree on, each
//!   with the schema pattern the apiserver checks and the parser the sidecar runs.
//! - [`fetch_report`]: what the `fetch` init container reports (digest and revision) and the
//!   operator reads back.
//! - [`names`]: the names both sides spell: flags, environment variables, paths, the port and
//!   probe paths, metric and label names, the termination-message prefix.
//! - [`router`]: the experiment router's configuration file (the operator writes it, `route`
//!   reads it) and its bucket table.
//! - [`mirror`]: the shadow mirror's configuration (the operator writes it into the production
//!   sidecar's ConfigMap, `serve` re-reads it) and what each comparison mode means.
//! - [`drift`]: the distributions a model server exports for drift monitoring, their fixed
//!   buckets, the reference sample's baseline series, the features and measures.
//! - [`digest`]: what a model's `sha256` covers (one file, or a directory's manifest), computed
//!   by both `fetch` and `serve`.
//!
//! CEL rules that involve only these blocks live here too ([`model::ModelSpec`]'s, and
//! [`rules::SERVING_RULES`] across `model` and `runtime`), so an object the apiserver admits is an
//! object the sidecar accepts.

pub mod digest;
pub mod drift;
pub mod duration;
pub mod fetch_report;
pub mod mirror;
pub mod model;
pub mod names;
pub mod quantity;
pub mod router;
pub mod rules;
pub mod runtime;
pub mod uri;

pub use model::{ModelFormat, ModelSpec, ModelTask, Pooling, SecretReference};
pub use quantity::Quantity;
pub use runtime::{
    Backend, BatchingSpec, DraftModelSpec, GenerationSpec, KvCacheDtype, Quantize, RuntimeSpec,
    SpeculationMode, SpeculationSpec,
};
pub use uri::ModelUri;
