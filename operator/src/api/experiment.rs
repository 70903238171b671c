//! `Experiment`: an A/B test between InferenceServices that ends in a statistically sound
//! verdict.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{DNS_LABEL_PATTERN, DURATION_PATTERN};

/// The most variants one experiment compares. CEL rules over the list are quadratic, and the
/// apiserver budgets their cost by this bound.
pub const MAX_VARIANTS: usize = 10;
/// The most decisions kept in `status.history`.
pub const MAX_HISTORY: usize = 20;

/// An A/B test: the router assigns users consistently to variants and counts outcomes; every
/// interval the operator analyses the metrics in Prometheus and finally promotes the winner or
/// rolls back.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lexserve.io",
    version = "v1alpha1",
    kind = "Experiment",
    namespaced,
    status = "ExperimentStatus",
    shortname = "lexp",
    category = "lexserve",
    derive = "PartialEq",
    doc = "An A/B test between InferenceServices that ends in a statistically sound verdict.",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Winner", "type": "string", "jsonPath": ".status.winner"}"#,
    printcolumn = r#"{"name": "Control", "type": "string", "jsonPath": ".spec.control", "priority": 1}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.variants.exists(v, v.weight > 0)")
        .message("spec.variants: at least one weight must be greater than zero"),
    validation = Rule::new("self.variants.all(v, self.variants.exists_one(w, w.name == v.name))")
        .message("spec.variants: variant names must be unique"),
    validation = Rule::new("self.variants.exists_one(v, v.inferenceService == self.control)")
        .message("spec.variants must contain exactly one variant whose inferenceService is spec.control"),
    validation = Rule::new("self.metrics.filter(m, m.role == 'Primary').size() == 1")
        .message("spec.metrics must contain exactly one metric with role Primary"),
    validation = Rule::new("self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))")
        .message("spec.metrics: metric names must be unique"),
)]
pub struct ExperimentSpec {
    /// The InferenceService in production today. For the experiment's life its Service points at
    /// the router, so clients keep their URL; one of `variants` must be it.
    #[schemars(length(min = 1, max = 253))]
    pub control: String,
    /// The arms of the test, the control included, with their traffic weights.
    #[schemars(length(min = 2, max = 10))]
    pub variants: Vec<Variant>,
    /// How requests are assigned to variants.
    #[serde(default)]
    pub assignment: Assignment,
    /// The metrics that decide: one Primary, any number of Guardrails.
    #[schemars(length(min = 1, max = 20))]
    pub metrics: Vec<MetricSpec>,
    /// When and how the analysis runs, and how sure it must be.
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// What happens when a variant beats the control: `Promote` (point the control's Service
    /// at the winner's model) or `Recommend` (report the winner, change nothing).
    #[serde(default)]
    pub on_success: OnSuccess,
    /// What happens when a guardrail fails or the variants lose: `Rollback` (all traffic back
    /// to the control).
    #[serde(default)]
    pub on_failure: OnFailure,
    /// What happens when `maxDuration` passes without a verdict: `Rollback`, `Extend` (keep
    /// collecting, one more `maxDuration`) or `Hold` (keep the split, report Inconclusive).
    #[serde(default)]
    pub on_inconclusive: OnInconclusive,
    /// How traffic reaches the variants.
    #[serde(default)]
    pub routing: RoutingSpec,
}

/// One arm of the experiment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    /// The variant's name, used in metrics labels and status.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub name: String,
    /// The InferenceService that serves this variant, in the experiment's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub inference_service: String,
    /// The share of traffic, relative to the other weights (0 stops new assignments).
    #[schemars(range(min = 0, max = 1000))]
    pub weight: u32,
}

/// How users are assigned to variants. With a key, the same key always lands on the same
/// variant (a hash of the seed and the key); `random` assigns each request independently.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.by == 'random' || has(self.key)")
        .message("spec.assignment.key is required when spec.assignment.by is header, cookie or jsonField"),
    validation = Rule::new("self.by != 'random' || !has(self.key)")
        .message("spec.assignment.key must not be set when spec.assignment.by is random"),
)]
pub struct Assignment {
    /// Where the assignment key comes from: a request `header`, a `cookie`, a `jsonField` of the
    /// request body, or `random` (no key).
    pub by: AssignmentSource,
    /// The header name, cookie name, or JSON field path (dots separate levels, e.g. `user.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key: Option<String>,
    /// Mixed into the hash so that two experiments over the same users split them
    /// independently. Defaults to a hash of the experiment's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Default for Assignment {
    fn default() -> Self {
        Self {
            by: AssignmentSource::Random,
            key: None,
            seed: None,
        }
    }
}

/// Where the assignment key comes from (shared with the router's configuration).
pub use lexserve_contract::router::AssignmentSource;

/// A metric the analysis computes per variant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.role != 'Guardrail' || has(self.threshold)")
        .message("spec.metrics[].threshold is required for a Guardrail metric"),
    validation = Rule::new("has(self.source.builtin) != has(self.source.prometheus)")
        .message("spec.metrics[].source must set exactly one of builtin and prometheus"),
    validation = Rule::new("self.kind != 'Mean' || !has(self.source.prometheus) || has(self.source.prometheus.sumSquares)")
        .message("spec.metrics[].source.prometheus.sumSquares is required for a Mean metric"),
)]
pub struct MetricSpec {
    /// The metric's name, unique in the experiment.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub name: String,
    /// `Proportion` (successes out of trials, compared with a two-proportion z-test) or `Mean`
    /// (a per-request value, compared with Welch's t-test from count, sum and sum of squares).
    pub kind: MetricKind,
    /// `Primary` decides the winner; a `Guardrail` fails the variant that degrades it past
    /// `threshold`.
    pub role: MetricRole,
    /// Where the numbers come from.
    pub source: MetricSource,
    /// Which way is better.
    #[serde(default)]
    pub direction: Direction,
    /// For guardrails: the largest relative degradation tolerated against the control (0.05 =
    /// 5% worse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub threshold: Option<f64>,
}

/// How a metric is compared.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Proportion,
    Mean,
}

/// What a metric decides.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricRole {
    Primary,
    Guardrail,
}

/// Which way is better for a metric.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    HigherIsBetter,
    LowerIsBetter,
}

/// Where a metric's numbers come from: exactly one of `builtin` and `prometheus`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricSource {
    /// An outcome the router counts itself (clients report outcomes to the router's `/outcome`
    /// endpoint under this name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub builtin: Option<String>,
    /// PromQL queries, evaluated per variant with `{{variant}}` and `{{experiment}}` replaced,
    /// and `{{namespace}}` and `{{range}}` (the experiment's age as a PromQL duration, so that
    /// `increase(x[{{range}}])` counts since it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
}

/// PromQL queries giving a metric's sufficient statistics for one variant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.count.contains('{{variant}}') && self.sum.contains('{{variant}}') && (!has(self.sumSquares) || self.sumSquares.contains('{{variant}}'))")
        .message("spec.metrics[].source.prometheus queries must contain the {{variant}} placeholder"),
)]
pub struct PrometheusMetric {
    /// The number of trials (Proportion) or observations (Mean).
    #[schemars(length(min = 1, max = 4096))]
    pub count: String,
    /// The number of successes (Proportion) or the sum of the values (Mean).
    #[schemars(length(min = 1, max = 4096))]
    pub sum: String,
    /// The sum of the squared values (Mean only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub sum_squares: Option<String>,
}

/// When and how the analysis runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.minDuration) <= duration(self.maxDuration)")
        .message("spec.analysis.minDuration must be less than or equal to spec.analysis.maxDuration"),
    validation = Rule::new("duration(self.interval) <= duration(self.maxDuration)")
        .message("spec.analysis.interval must be less than or equal to spec.analysis.maxDuration"),
    validation = Rule::new("self.alpha > 0.0 && self.alpha < 0.5")
        .message("spec.analysis.alpha must be greater than 0 and less than 0.5"),
    validation = Rule::new("self.power > 0.5 && self.power < 1.0")
        .message("spec.analysis.power must be greater than 0.5 and less than 1"),
    validation = Rule::new("self.minimumDetectableEffect > 0.0")
        .message("spec.analysis.minimumDetectableEffect must be greater than 0"),
)]
pub struct AnalysisSpec {
    /// How often Prometheus is queried and the statistics recomputed.
    #[serde(default = "default_interval")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub interval: String,
    /// No verdict before this much time, whatever the data say (weekly cycles, novelty).
    #[serde(default = "default_min_duration")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub min_duration: String,
    /// After this much time without a verdict, `onInconclusive` applies.
    #[serde(default = "default_max_duration")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub max_duration: String,
    /// No verdict before every variant has this many samples.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1))]
    pub min_samples_per_variant: u64,
    /// The false-positive rate, before Holm's correction across variants.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The chance to detect an effect of `minimumDetectableEffect`, used for the planned
    /// sample size.
    #[serde(default = "default_power")]
    pub power: f64,
    /// The smallest relative effect worth detecting (0.05 = 5%), used for the planned sample size.
    #[serde(default = "default_mde")]
    pub minimum_detectable_effect: f64,
    /// Use an always-valid (sequential) test so that looking every interval does not inflate
    /// false positives. Turn off only for a fixed-horizon test read once at the end.
    #[serde(default = "default_true")]
    pub sequential: bool,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            min_duration: default_min_duration(),
            max_duration: default_max_duration(),
            min_samples_per_variant: default_min_samples(),
            alpha: default_alpha(),
            power: default_power(),
            minimum_detectable_effect: default_mde(),
            sequential: true,
        }
    }
}

fn default_interval() -> String {
    "1m".to_string()
}
fn default_min_duration() -> String {
    "1h".to_string()
}
fn default_max_duration() -> String {
    "168h".to_string()
}
fn default_min_samples() -> u64 {
    1000
}
fn default_alpha() -> f64 {
    0.05
}
fn default_power() -> f64 {
    0.8
}
fn default_mde() -> f64 {
    0.05
}
fn default_true() -> bool {
    true
}

/// What happens when a variant wins.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnSuccess {
    Promote,
    #[default]
    Recommend,
}

/// What happens when a variant fails.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnFailure {
    #[default]
    Rollback,
}

/// What happens when the experiment runs out of time without a verdict.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnInconclusive {
    #[default]
    Rollback,
    Extend,
    Hold,
}

/// How traffic reaches the variants.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.provider != 'gatewayAPI' || has(self.gatewayAPI)")
        .message("spec.routing.gatewayAPI is required when spec.routing.provider is gatewayAPI"),
    validation = Rule::new("self.provider == 'gatewayAPI' || !has(self.gatewayAPI)")
        .message("spec.routing.gatewayAPI must not be set unless spec.routing.provider is gatewayAPI"),
)]
pub struct RoutingSpec {
    /// `router` (the lexserve router takes over the control's Service: consistent assignment per
    /// user, outcome counting) or `gatewayAPI` (weights on an HTTPRoute: each request assigned
    /// independently by the gateway, and no `/outcome` counting).
    #[serde(default)]
    pub provider: RoutingProvider,
    /// With `provider: gatewayAPI`: the Gateway(s) the HTTPRoute attaches to.
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouting>,
}

/// Where the HTTPRoute of a `gatewayAPI` experiment attaches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    /// The Gateways (Gateway API `parentRefs`) the route attaches to.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<GatewayParentRef>,
    /// Host names the route matches (Gateway API `hostnames`); all of the Gateway's when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostnames: Vec<String>,
}

/// A Gateway the route attaches to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    /// The Gateway's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The Gateway's namespace; the experiment's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,
    /// The Gateway listener to attach to; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// The traffic splitter.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum RoutingProvider {
    #[default]
    Router,
    #[serde(rename = "gatewayAPI")]
    GatewayApi,
}

/// What the operator observed and decided.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the experiment is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ExperimentPhase>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When traffic started being split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// Samples and estimates per variant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub variants: Vec<VariantStatus>,
    /// Each variant against the control, per metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub comparisons: Vec<Comparison>,
    /// The sample-ratio-mismatch check of the assignments against the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srm: Option<SrmCheck>,
    /// The winning variant, once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<String>,
    /// The latest decisions, newest last (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub history: Vec<Decision>,
    /// The planned sample size against what the smallest variant has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_size: Option<SampleSizePlan>,
    /// Guardrails breached at the latest analyses, with how many analyses in a row (two in a
    /// row fail the variant). Kept in status so that an operator restart does not forget them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub guardrail_breaches: Vec<GuardrailBreach>,
    /// When the latest analysis ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis_time: Option<Time>,
    /// How many times `onInconclusive: Extend` has extended `maxDuration`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub extensions: u32,
    /// What traffic does now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingStatus>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The planned sample size ("needs about N per variant, has M").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SampleSizePlan {
    /// Samples per variant needed to detect `minimumDetectableEffect` on the primary metric with
    /// the configured alpha and power, from the control's observed rate or variance.
    pub needed_per_variant: u64,
    /// The fewest primary-metric samples any variant has.
    pub smallest_variant_samples: u64,
    /// The smallest relative effect detectable with the samples so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectable_effect_now: Option<f64>,
}

/// A guardrail a variant breached.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailBreach {
    /// The variant in breach (never the control).
    pub variant: String,
    /// The guardrail metric it breached.
    pub metric: String,
    /// Consecutive analyses in breach.
    pub consecutive: u32,
}

/// Where traffic goes now, and whether the router runs it yet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoutingStatus {
    /// The weights in force: the spec's while running, the winner's or the control's alone after
    /// a promotion or a rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub weights: Vec<VariantWeight>,
    /// The router configuration generation the operator wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_generation: Option<u64>,
    /// The generation every router replica reports serving (from its metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_generation: Option<u64>,
    /// After a promotion: the control InferenceService's `metadata.generation` when it was
    /// promoted. The router keeps sending everything to the winner until the control's
    /// manifest changes (its generation moves on); then the control's Service is its own again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at_control_generation: Option<i64>,
    /// What a user should know about this provider (e.g. that `gatewayAPI` assigns each request
    /// independently).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One variant's weight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VariantWeight {
    /// The variant.
    pub variant: String,
    /// Its share of new assignments, relative to the other weights.
    pub weight: u32,
}

/// Where an experiment is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExperimentPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Inconclusive,
    Aborted,
}

/// Samples and estimates of one variant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VariantStatus {
    /// The variant.
    pub name: String,
    /// Requests assigned to it.
    #[serde(default)]
    pub assignments: u64,
    /// Per-metric estimates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub estimates: Vec<Estimate>,
}

/// A metric's estimate for one variant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    /// The metric.
    pub metric: String,
    /// Observations (trials for a proportion).
    pub samples: u64,
    /// The proportion or mean.
    pub value: f64,
    /// Its standard error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std_error: Option<f64>,
}

/// One variant against the control on one metric.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// The variant compared with the control.
    pub variant: String,
    /// The metric.
    pub metric: String,
    /// Variant minus control, relative to the control (0.05 = 5% higher).
    pub effect: f64,
    /// The confidence interval of the effect at the configured alpha: [low, high].
    #[schemars(length(min = 2, max = 2))]
    pub interval: Vec<f64>,
    /// The p-value, Holm-adjusted across variants.
    pub p_value: f64,
    /// What the comparison says so far.
    pub verdict: ComparisonVerdict,
}

/// What one comparison says.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComparisonVerdict {
    Better,
    Worse,
    NoDifference,
    NotEnoughData,
}

/// The sample-ratio-mismatch check.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SrmCheck {
    /// The chi-square statistic of the assignments against the weights.
    pub chi_square: f64,
    /// Its p-value.
    pub p_value: f64,
    /// True when the split is off by more than chance allows (p < 0.001): the results cannot be
    /// trusted.
    pub mismatch: bool,
}

/// One decision of the analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// When it was taken.
    pub time: Time,
    /// The phase it led to.
    pub phase: ExperimentPhase,
    /// A CamelCase reason (`GuardrailFailed`, `NotEnoughData`, `SampleRatioMismatch`, ...).
    pub reason: String,
    /// The numbers behind it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
