//! `ShadowDeployment`: a candidate model that sees a copy of production traffic and is compared
//! answer by answer, never answering users.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::experiment::Assignment;
use super::inference_service::{ModelSpec, ResourcesSpec, RuntimeSpec, ScalingSpec};
use super::schema::DURATION_PATTERN;
pub use lexserve_contract::mirror::ComparisonMode;
use lexserve_contract::mirror::defaults as mirror_defaults;

/// A candidate model run on a sampled copy of production traffic. The production sidecars mirror
/// requests to it on a bounded queue (overflow is dropped, never slowing users), compare the two
/// answers and export counts; the operator turns them into an agreement rate, a latency ratio,
/// an error rate and a verdict.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lexserve.io",
    version = "v1alpha1",
    kind = "ShadowDeployment",
    namespaced,
    status = "ShadowDeploymentStatus",
    shortname = "lshadow",
    category = "lexserve",
    derive = "PartialEq",
    doc = "A candidate model that sees a copy of production traffic and is compared answer by answer.",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Agreement", "type": "number", "jsonPath": ".status.agreement.rate"}"#,
    printcolumn = r#"{"name": "Verdict", "type": "string", "jsonPath": ".status.verdict"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.comparison.mode != 'Cosine' || self.candidate.model.task == 'embed'")
        .message("spec.comparison.mode Cosine compares embeddings: spec.candidate.model.task must be embed"),
    validation = Rule::new("!(self.comparison.mode in ['Label', 'TopK']) || self.candidate.model.task == 'classify'")
        .message("spec.comparison.mode Label and TopK compare classifications: spec.candidate.model.task must be classify"),
    validation = Rule::new("self.comparison.mode != 'Text' || self.candidate.model.task == 'generate'")
        .message("spec.comparison.mode Text compares generations: spec.candidate.model.task must be generate"),
)]
pub struct ShadowDeploymentSpec {
    /// The InferenceService in production whose sidecars mirror traffic to the candidate.
    #[schemars(length(min = 1, max = 253))]
    pub production: String,
    /// The candidate: a model, how to run it and its resources, as in an InferenceService.
    pub candidate: CandidateSpec,
    /// The share of production requests mirrored to the candidate, in percent.
    #[serde(default = "default_mirror_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub mirror_percent: u32,
    /// How requests are sampled for mirroring: by request (`random`, the default), or by the
    /// same assignment key an Experiment would use, so that one user's requests are mirrored
    /// together. A request without the key is not mirrored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
    /// The bounds that keep mirroring from ever slowing production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
    /// What is masked in a request before its copy leaves the production pod (mirrored traffic
    /// may carry personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redaction: Option<RedactionSpec>,
    /// How two answers are compared.
    pub comparison: ComparisonSpec,
    /// What the candidate must achieve to pass.
    #[serde(default)]
    pub criteria: Criteria,
    /// How long the shadow runs before its verdict (a Go duration such as `24h`).
    #[serde(default = "default_duration")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub duration: String,
    /// What happens when the candidate passes: `Recommend` (report it) or `CreateExperiment`
    /// (start an A/B test of the candidate against production).
    #[serde(default)]
    pub on_pass: OnPass,
}

fn default_mirror_percent() -> u32 {
    10
}

fn default_duration() -> String {
    "24h".to_string()
}

/// The candidate model, shaped like an InferenceService's model, runtime and resources.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = lexserve_contract::rules::add_serving_rules)]
pub struct CandidateSpec {
    /// The candidate model.
    pub model: ModelSpec,
    /// How the sidecar runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
    /// CPU, memory and GPUs for the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
    /// How the candidate scales. Default: no autoscaler, one replica (`provider: none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingSpec>,
}

/// The mirror's bounds in each production pod: a full queue drops the copy (counted), never
/// delaying production's answer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSpec {
    /// Copies waiting to be sent, per production pod; when full, new copies are dropped.
    #[serde(default = "default_mirror_queue")]
    #[schemars(range(min = 1, max = 10000))]
    pub queue_size: u32,
    /// Copies in flight to the candidate at once, per production pod.
    #[serde(default = "default_mirror_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: u32,
    /// How long the candidate may take to answer a copy (a Go duration); later is a candidate
    /// error.
    #[serde(default = "default_mirror_timeout")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub timeout: String,
}

impl Default for MirrorSpec {
    fn default() -> Self {
        Self {
            queue_size: default_mirror_queue(),
            concurrency: default_mirror_concurrency(),
            timeout: default_mirror_timeout(),
        }
    }
}

fn default_mirror_queue() -> u32 {
    mirror_defaults::QUEUE
}
fn default_mirror_concurrency() -> u32 {
    mirror_defaults::CONCURRENCY
}
fn default_mirror_timeout() -> String {
    mirror_defaults::TIMEOUT_TEXT.to_string()
}

/// What is masked before a request is mirrored: the masked text is `[redacted]`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.fields) ? size(self.fields) : 0) + (has(self.patterns) ? size(self.patterns) : 0) > 0")
        .message("spec.redaction needs at least one of fields or patterns"),
)]
pub struct RedactionSpec {
    /// JSON fields of the request body whose whole value is masked: dot paths (`user.email`),
    /// where a `*` segment matches every element of an array or member of an object
    /// (`messages.*.content`).
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub fields: Vec<String>,
    /// Regular expressions (RE2 syntax); every match in any string of the request body is
    /// masked. A pattern that does not compile is reported in the `Ready` condition and nothing
    /// is mirrored.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(min = 1, max = 512)))]
    pub patterns: Vec<String>,
}

/// How two answers are compared.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'TopK' || has(self.k)")
        .message("spec.comparison.k is required when spec.comparison.mode is TopK"),
    validation = Rule::new("self.mode == 'TopK' || !has(self.k)")
        .message("spec.comparison.k is only valid when spec.comparison.mode is TopK"),
    validation = Rule::new("!has(self.tolerance) || (self.tolerance >= 0.0 && self.tolerance <= 1.0)")
        .message("spec.comparison.tolerance must be between 0 and 1"),
)]
pub struct ComparisonSpec {
    /// `Label` (same top label), `TopK` (overlap of the top `k` labels), `Cosine` (embedding
    /// cosine similarity) or `Text` (generated text, normalized).
    pub mode: ComparisonMode,
    /// How far two answers may differ and still agree: for `Cosine` the largest `1 - cosine`,
    /// for `TopK` the largest share of the top k that may differ, for `Text` the largest
    /// normalized edit distance. Ignored by `Label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// How many top labels `TopK` compares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub k: Option<u32>,
}

/// What the candidate must achieve.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minAgreement >= 0.0 && self.minAgreement <= 1.0")
        .message("spec.criteria.minAgreement must be between 0 and 1"),
    validation = Rule::new("self.maxLatencyRatio > 0.0")
        .message("spec.criteria.maxLatencyRatio must be greater than 0"),
    validation = Rule::new("self.maxErrorRate >= 0.0 && self.maxErrorRate <= 1.0")
        .message("spec.criteria.maxErrorRate must be between 0 and 1"),
)]
pub struct Criteria {
    /// Compared pairs needed before a verdict.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1))]
    pub min_samples: u64,
    /// The lowest agreement rate that passes, judged by the lower end of its Wilson interval.
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f64,
    /// The highest p95 latency of the candidate relative to production that passes.
    #[serde(default = "default_max_latency_ratio")]
    pub max_latency_ratio: f64,
    /// The highest share of mirrored requests the candidate may fail.
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Self {
            min_samples: default_min_samples(),
            min_agreement: default_min_agreement(),
            max_latency_ratio: default_max_latency_ratio(),
            max_error_rate: default_max_error_rate(),
        }
    }
}

fn default_min_samples() -> u64 {
    1000
}
fn default_min_agreement() -> f64 {
    0.95
}
fn default_max_latency_ratio() -> f64 {
    1.5
}
fn default_max_error_rate() -> f64 {
    0.01
}

/// What happens when the candidate passes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnPass {
    #[default]
    Recommend,
    CreateExperiment,
}

/// What the operator observed of the shadow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ShadowDeploymentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the shadow is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ShadowPhase>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Compared pairs so far.
    #[serde(default)]
    pub samples: u64,
    /// Mirrored requests dropped because the mirror queue was full.
    #[serde(default)]
    pub dropped: u64,
    /// The agreement rate with its Wilson interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
    /// Latency percentiles of production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_latency: Option<LatencyPercentiles>,
    /// Latency percentiles of the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_latency: Option<LatencyPercentiles>,
    /// The share of mirrored requests production failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_error_rate: Option<f64>,
    /// The share of mirrored requests the candidate failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_error_rate: Option<f64>,
    /// The verdict, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<ShadowVerdict>,
    /// When mirroring began (the candidate ready and the mirror configured): `duration` counts
    /// from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the analysis last ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis_time: Option<Time>,
    /// The candidate's latency over production's, on the same requests, at each percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio: Option<LatencyPercentiles>,
    /// How far the candidate's confidence distribution moved from production's: the
    /// population stability index over the top label's score (classification only; under 0.1
    /// is usually read as no shift, over 0.25 as a large one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_shift: Option<f64>,
    /// The mirror configuration in the production sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorStatus>,
    /// The Experiment created when the candidate passed (`onPass: CreateExperiment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
}

/// Where the mirror configuration stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MirrorStatus {
    /// The generation of the production ConfigMap's `mirror.yaml` that includes this shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_written: Option<u64>,
    /// The lowest generation the production sidecars report running (from Prometheus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_live: Option<u64>,
}

/// Where a shadow is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowPhase {
    Pending,
    Running,
    Completed,
    Aborted,
}

/// The verdict on a candidate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowVerdict {
    Pass,
    Fail,
    Inconclusive,
}

/// An agreement rate with its interval.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Agreement {
    /// Agreeing pairs out of compared pairs.
    pub rate: f64,
    /// The lower end of the 95% Wilson score interval.
    pub lower: f64,
    /// The upper end of the 95% Wilson score interval.
    pub upper: f64,
}

/// Latency percentiles in seconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LatencyPercentiles {
    /// The median.
    pub p50: f64,
    /// The 95th percentile.
    pub p95: f64,
    /// The 99th percentile.
    pub p99: f64,
}
