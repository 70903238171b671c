//! The shadow mirror's configuration: what the operator writes into a production
//! InferenceService's sidecar ConfigMap (key [`CONFIG_FILE`], beside the model's `config.yaml`,
//! in the same mounted directory) and `lexserve-sidecar serve` re-reads without restart.
//!
//! One file per production InferenceService, one [`MirrorTarget`] per ShadowDeployment that
//! names it. The file is absent, or has no targets, when nothing is mirrored. The model's own
//! config hash (which rolls the pods) does not cover this file: starting or stopping a shadow
//! never restarts production.
//!
//! What "agree" means for each [`ComparisonMode`] is fixed here, so that the sidecar that
//! compares and the operator that explains the verdict say the same thing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::router::AssignmentSource;

/// The file the production sidecar reads, under [`crate::names::path::CONFIG_DIR`] (the
/// ConfigMap's key).
pub const CONFIG_FILE: &str = "mirror.yaml";

/// What replaces a redacted value (a whole JSON field, or a pattern's match inside a string).
pub const REDACTED: &str = "[redacted]";

/// The upper bounds of the `lexserve_shadow_confidence` histogram's buckets (the top label's
/// score). The operator's confidence-shift measure (PSI) bins by exactly these.
pub const CONFIDENCE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// The upper bounds of the `lexserve_shadow_distance` histogram's buckets (how far apart the two
/// answers of a pair were, in the mode's own measure, 0 = identical).
pub const DISTANCE_BUCKETS: [f64; 12] = [
    0.0, 0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0,
];

/// The whole mirror configuration of one production InferenceService.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MirrorConfig {
    /// Increases with every change the operator makes; the sidecar exports the generation it
    /// runs (`lexserve_mirror_config_generation`), so the operator knows when a change is live.
    pub generation: u64,
    /// One per active shadow; empty: nothing is mirrored.
    #[serde(default)]
    pub targets: Vec<MirrorTarget>,
}

/// One candidate that receives copies of production's requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorTarget {
    /// The ShadowDeployment's name: the `shadow` label of every mirror series.
    pub shadow: String,
    /// Where the candidate's Service answers, e.g. `http://s-shadow.team-a.svc.cluster.local:80`.
    pub url: String,
    /// The name the candidate serves under. The copy's model name (OpenAI `model`, the
    /// `/v2/models/{name}` path) is rewritten to it: the candidate answers other names with 404.
    pub model: String,
    /// The share of production's requests copied, in percent (0..=100).
    pub percent: u32,
    /// How requests are sampled.
    pub sampling: MirrorSampling,
    /// How the two answers are compared.
    pub comparison: MirrorComparison,
    /// What is masked before a copy leaves the pod.
    #[serde(default)]
    pub redaction: Redaction,
    /// The bounds that keep the mirror from ever slowing production.
    #[serde(default)]
    pub limits: MirrorLimits,
}

/// How requests are sampled: by request (`random`), or by the same assignment key an
/// Experiment would use, so that one user's requests are mirrored together: a request is
/// copied when `router::bucket_of(seed, key) < percent * BUCKETS / 100`. A request without
/// the key is not copied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSampling {
    pub by: AssignmentSource,
    /// The header name, cookie name or JSON field path; absent for `random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub seed: u64,
}

/// How two answers are compared, with the tolerance resolved (the spec's, or the mode's
/// default).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorComparison {
    pub mode: ComparisonMode,
    /// See [`ComparisonMode`] for what it bounds in each mode.
    pub tolerance: f64,
    /// How many top labels `TopK` compares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
}

/// How two answers are compared. Each mode measures a distance `d` in `[0, 1]` per pair (0:
/// identical) and the pair agrees when `d <= tolerance`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComparisonMode {
    /// Classification: `d` is 0 when both top labels are the same, 1 otherwise (the tolerance
    /// is ignored: labels agree or they do not).
    Label,
    /// Classification: `d` is the share of production's top `k` labels missing from the
    /// candidate's top `k` (order ignored).
    TopK,
    /// Embeddings: `d` is `1 - cosine similarity` (for several inputs in one request, the
    /// largest).
    Cosine,
    /// Generation: `d` is the Levenshtein distance between the two texts, after Unicode
    /// whitespace runs are collapsed to one space and the ends trimmed, divided by the longer
    /// text's length in characters (0 when both are empty).
    Text,
}

impl ComparisonMode {
    /// The tolerance when the spec sets none: exact agreement for labels, top-k sets and
    /// texts; `1e-3` for embeddings (what an int8 export of the same encoder usually keeps).
    pub fn default_tolerance(self) -> f64 {
        match self {
            ComparisonMode::Label | ComparisonMode::TopK | ComparisonMode::Text => 0.0,
            ComparisonMode::Cosine => 1e-3,
        }
    }
}

/// What is masked before a copy leaves the pod (mirrored traffic may carry personal data).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Redaction {
    /// JSON fields of the request body whose whole value becomes [`REDACTED`]: dot paths
    /// (`user.email`), where a `*` segment matches every element of an array or every member
    /// of an object (`messages.*.content`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Regular expressions (RE2 syntax, as the `regex` crate reads it); every match inside any
    /// string value of the JSON body (or of a body that is not JSON) becomes [`REDACTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
}

/// The bounds that keep the mirror from slowing production: a copy waits in a queue of at most
/// `queue` requests per target (a full queue drops the copy, counted), at most `concurrency`
/// copies are in flight per target, and each gets `timeout_ms` (a timeout counts as a candidate
/// error).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorLimits {
    pub queue: u32,
    pub concurrency: u32,
    pub timeout_ms: u64,
}

impl Default for MirrorLimits {
    fn default() -> Self {
        Self {
            queue: defaults::QUEUE,
            concurrency: defaults::CONCURRENCY,
            timeout_ms: defaults::TIMEOUT_MS,
        }
    }
}

/// The defaults of [`MirrorLimits`], also the ShadowDeployment's `spec.mirror` defaults.
pub mod defaults {
    pub const QUEUE: u32 = 64;
    pub const CONCURRENCY: u32 = 4;
    pub const TIMEOUT_MS: u64 = 10_000;
    pub const TIMEOUT_TEXT: &str = "10s";
    /// The largest request body that is copied (a larger one is dropped with reason
    /// `too_large`, never buffered).
    pub const MAX_BODY_BYTES: usize = 1 << 20;
}

/// The values of the `outcome` label of `lexserve_shadow_comparisons`.
pub mod outcome {
    /// Both answered and the answers agree (`d <= tolerance`).
    pub const AGREE: &str = "agree";
    /// Both answered and the answers differ.
    pub const DISAGREE: &str = "disagree";
    /// Production answered; the candidate failed (a non-2xx status, a timeout, a refused
    /// connection, or an answer that does not parse as the task's).
    pub const CANDIDATE_ERROR: &str = "candidate_error";
    /// A sampled request production itself failed (non-2xx): nothing is sent to the candidate.
    pub const PRODUCTION_ERROR: &str = "production_error";
}

/// The values of the `reason` label of `lexserve_shadow_dropped`.
pub mod drop_reason {
    /// The target's queue was full.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The request (or production's answer) was larger than
    /// [`super::defaults::MAX_BODY_BYTES`].
    pub const TOO_LARGE: &str = "too_large";
    /// The sidecar began to drain with the copy still queued.
    pub const SHUTDOWN: &str = "shutdown";
}

/// The values of the `side` label of `lexserve_shadow_request_duration_seconds` and
/// `lexserve_shadow_confidence`.
pub mod side {
    pub const PRODUCTION: &str = "production";
    pub const CANDIDATE: &str = "candidate";
}
