//! Drift monitoring: the distributions a model server exports so that the operator can tell when
//! its traffic no longer looks like its baseline, with fixed buckets (both sides and the
//! dashboards read the same edges), the baseline series a reference sample produces, and the
//! names of the features and measures.
//!
//! # Features
//!
//! Each [`Feature`] is a distribution over a fixed set of bins, read from Prometheus as counts:
//!
//! | feature | tasks | series | bins |
//! |---|---|---|---|
//! | `input_tokens` | embed, classify | histogram `lexserve_input_tokens` | [`INPUT_TOKEN_BUCKETS`] (+Inf) |
//! | `unknown_tokens` | embed, classify | counter `lexserve_unknown_tokens` against the sum of `lexserve_input_tokens` | `unknown`, `known` |
//! | `predicted_class` | classify | counter `lexserve_predictions{class}` | the model's classes |
//! | `confidence` | classify | histogram `lexserve_prediction_confidence{class}`, summed over classes | [`CONFIDENCE_BUCKETS`] |
//! | `embedding_norm` | embed | histogram `lexserve_embedding_norm` (before normalization) | [`EMBEDDING_NORM_BUCKETS`] (+Inf) |
//! | `centroid_cosine` | embed, with a reference sample | histogram `lexserve_embedding_centroid_cosine` | [`CENTROID_COSINE_BUCKETS`] |
//! | `prompt_tokens` | generate | histogram `lexserve_prompt_tokens` | [`GENERATION_TOKEN_BUCKETS`] (+Inf) |
//! | `output_tokens` | generate | histogram `lexserve_output_tokens` (per finished sequence) | [`GENERATION_TOKEN_BUCKETS`] (+Inf) |
//!
//! # The baseline
//!
//! Either a window of live traffic after a rollout (the operator reads the same series over that
//! window and keeps the counts in the InferenceService's status), or a reference sample: a file
//! of inputs, one per line, that `serve` runs through the model at start-up (before it reports
//! ready, outside the live series) and exports as [`names::metric::DRIFT_BASELINE`]
//! `{feature, bin}` gauges, one per bin of every feature of its task that a sample of inputs can
//! give: for generate that is `prompt_tokens` only (output lengths need generation, which a
//! start-up sample does not run; their baseline is a window). Each gauge is the sample's count
//! in that bin alone (not cumulative like a histogram's `_bucket` series).
//!
//! A histogram feature's bins are its edges plus `+Inf` (empty for `confidence` and
//! `centroid_cosine`, whose values cannot pass 1), each named by [`bin_label`]: the upper edge
//! as the sidecar's exposition writes `le` (`"4.0"`, `"0.5"`, `"+Inf"`), which is also the form
//! Prometheus 3 normalizes `le` to; compare edges as numbers when reading `le` back from an
//! older Prometheus. `predicted_class` is named by the class (every class of the model, empty
//! ones included); `unknown_tokens` by `unknown` / `known` (input tokens, after truncation and
//! special tokens included, as `lexserve_input_tokens` counts them). The centroid for
//! `centroid_cosine` is the normalized mean of the reference sample's normalized embeddings;
//! without a reference sample that histogram is not exported.
//!
//! [`names::metric::DRIFT_BASELINE`]: crate::names::metric::DRIFT_BASELINE

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Upper edges (tokens) of `lexserve_input_tokens`, after truncation.
pub const INPUT_TOKEN_BUCKETS: [f64; 10] = [
    4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];
/// Upper edges of `lexserve_prediction_confidence` (the predicted class's probability; with
/// many classes it can be well under 0.5).
pub const CONFIDENCE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Upper edges of `lexserve_embedding_norm`: the L2 norm of the pooled embedding before any
/// normalization.
pub const EMBEDDING_NORM_BUCKETS: [f64; 12] = [
    0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0,
];
/// Upper edges of `lexserve_embedding_centroid_cosine`: the cosine between an input's embedding
/// and the reference sample's centroid.
pub const CENTROID_COSINE_BUCKETS: [f64; 12] =
    [-0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Upper edges (tokens) of `lexserve_prompt_tokens` and `lexserve_output_tokens`.
pub const GENERATION_TOKEN_BUCKETS: [f64; 10] = [
    8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Most inputs a reference sample may hold (more: `serve` refuses to start, naming the file).
pub const REFERENCE_MAX_INPUTS: usize = 10_000;
/// Largest reference sample file (bytes): what a ConfigMap key can carry.
pub const REFERENCE_MAX_BYTES: u64 = 1024 * 1024;
/// Where the operator mounts the ConfigMap holding a reference sample; `--drift-reference` names
/// the key's file under it. Not under the config volume's mount (`/etc/lexserve`): a mount
/// point inside a ConfigMap volume cannot be created.
pub const REFERENCE_DIR: &str = "/var/lib/lexserve/drift";

/// The `bin` label of `unknown_tokens`.
pub mod unknown_bin {
    pub const UNKNOWN: &str = "unknown";
    pub const KNOWN: &str = "known";
}

/// A distribution watched for drift (named so in the API; its [`Feature::label`] is the
/// `feature` label of the baseline and of the operator's scores).
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Feature {
    InputTokens,
    UnknownTokens,
    PredictedClass,
    Confidence,
    EmbeddingNorm,
    CentroidCosine,
    PromptTokens,
    OutputTokens,
}

impl Feature {
    pub const ALL: [Feature; 8] = [
        Feature::InputTokens,
        Feature::UnknownTokens,
        Feature::PredictedClass,
        Feature::Confidence,
        Feature::EmbeddingNorm,
        Feature::CentroidCosine,
        Feature::PromptTokens,
        Feature::OutputTokens,
    ];

    /// The label value (`input_tokens`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Feature::InputTokens => "input_tokens",
            Feature::UnknownTokens => "unknown_tokens",
            Feature::PredictedClass => "predicted_class",
            Feature::Confidence => "confidence",
            Feature::EmbeddingNorm => "embedding_norm",
            Feature::CentroidCosine => "centroid_cosine",
            Feature::PromptTokens => "prompt_tokens",
            Feature::OutputTokens => "output_tokens",
        }
    }

    /// Whether a model of `task` exports this feature (`centroid_cosine` also needs a reference
    /// sample).
    pub fn applies_to(self, task: crate::ModelTask) -> bool {
        use crate::ModelTask::{Classify, Embed, Generate};
        match self {
            Feature::InputTokens | Feature::UnknownTokens => matches!(task, Embed | Classify),
            Feature::PredictedClass | Feature::Confidence => matches!(task, Classify),
            Feature::EmbeddingNorm | Feature::CentroidCosine => matches!(task, Embed),
            Feature::PromptTokens | Feature::OutputTokens => matches!(task, Generate),
        }
    }

    /// The fixed upper edges of a histogram feature (a `+Inf` bin always follows, as in the
    /// exposition); `None` for the counted ones (`unknown_tokens`, `predicted_class`).
    pub fn buckets(self) -> Option<&'static [f64]> {
        match self {
            Feature::InputTokens => Some(&INPUT_TOKEN_BUCKETS),
            Feature::Confidence => Some(&CONFIDENCE_BUCKETS),
            Feature::EmbeddingNorm => Some(&EMBEDDING_NORM_BUCKETS),
            Feature::CentroidCosine => Some(&CENTROID_COSINE_BUCKETS),
            Feature::PromptTokens | Feature::OutputTokens => Some(&GENERATION_TOKEN_BUCKETS),
            Feature::UnknownTokens | Feature::PredictedClass => None,
        }
    }
}

/// The `le` label of an upper edge (and the `bin` label of a histogram feature's baseline):
/// the shortest text that reads back as the same `f64`, with `.0` on whole numbers, as
/// prometheus-client writes it; `+Inf` for the overflow bin.
pub fn bin_label(edge: f64) -> String {
    if edge == f64::INFINITY {
        return "+Inf".to_string();
    }
    // `Debug` is the shortest round-trip form with `.0` kept (`Display` drops it); it turns
    // to exponent notation only outside 1e-5..1e16, far from every edge above.
    format!("{edge:?}")
}

/// A measure of the distance between a baseline and a window (the `measure` label of the
/// operator's scores).
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Measure {
    /// Population stability index (natural log; empty bins floored).
    #[serde(rename = "PSI")]
    Psi,
    /// Jensen–Shannon divergence, base 2 (0 to 1).
    JensenShannon,
    /// Kolmogorov–Smirnov statistic on the bins' cumulative shares (ordered bins only), with its
    /// asymptotic p-value.
    KolmogorovSmirnov,
}

impl Measure {
    pub const ALL: [Measure; 3] = [
        Measure::Psi,
        Measure::JensenShannon,
        Measure::KolmogorovSmirnov,
    ];

    /// The label value (`psi`, `js`, `ks`).
    pub fn label(self) -> &'static str {
        match self {
            Measure::Psi => "psi",
            Measure::JensenShannon => "js",
            Measure::KolmogorovSmirnov => "ks",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_applies_to_some_task_and_histograms_have_increasing_edges() {
        use crate::ModelTask::{Classify, Embed, Generate};
        for feature in Feature::ALL {
            assert!(
                [Embed, Classify, Generate]
                    .iter()
                    .any(|t| feature.applies_to(*t)),
                "{feature:?}"
            );
            if let Some(edges) = feature.buckets() {
                assert!(edges.windows(2).all(|w| w[0] < w[1]), "{feature:?}");
            }
        }
    }

    #[test]
    fn bin_labels_are_the_exposition_le_text() {
        assert_eq!(bin_label(4.0), "4.0");
        assert_eq!(bin_label(4096.0), "4096.0");
        assert_eq!(bin_label(0.1), "0.1");
        assert_eq!(bin_label(-0.5), "-0.5");
        assert_eq!(bin_label(0.0), "0.0");
        assert_eq!(bin_label(f64::INFINITY), "+Inf");
    }
}
