//! `InferenceService`: a model, how to run it, and how to scale it.
//!
//! The `model` and `runtime` blocks are also the sidecar's config file: the operator writes them
//! into the ConfigMap unchanged, so a user can run `lexserve-sidecar serve` by hand from the same
//! block they put in a manifest. Their types, defaults and the CEL rules that involve only them are
//! the operator↔sidecar contract (`lexserve-contract`), shared with the sidecar.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HPAScalingRules;
use k8s_openapi::api::core::v1::{LocalObjectReference, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
pub use lexserve_contract::{
    Backend, BatchingSpec, GenerationSpec, ModelFormat, ModelSpec, ModelTask, Pooling, Quantize,
    RuntimeSpec, SecretReference,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{DURATION_PATTERN, preserve_unknown_object};

/// The GPU resource name used when none is given.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Declares a model server: the model, how the sidecar runs it, its resources (GPUs included)
/// and how it scales. The operator turns it into a Deployment of the lexserve sidecar, a
/// Service, a ConfigMap with the sidecar's config and an autoscaler driven by queue depth.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lexserve.io",
    version = "v1alpha1",
    kind = "InferenceService",
    namespaced,
    status = "InferenceServiceStatus",
    shortname = "lisvc",
    category = "lexserve",
    derive = "PartialEq",
    doc = "A model server: the model, how to run it (batching, GPUs) and how to scale it on queue depth.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"}"#,
    printcolumn = r#"{"name": "Model", "type": "string", "jsonPath": ".spec.model.uri"}"#,
    printcolumn = r#"{"name": "URL", "type": "string", "jsonPath": ".status.url"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = lexserve_contract::rules::add_serving_rules)]
pub struct InferenceServiceSpec {
    /// The model to serve: where it lives, its format and its task.
    pub model: ModelSpec,
    /// How the sidecar runs the model: image, threads, batching, generation and quantization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
    /// CPU, memory and GPUs for each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
    /// How many replicas run, and what scales them. Without it, one replica runs and nothing
    /// scales it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingSpec>,
    /// Fragments merged into the pod template of the model server's Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateFragment>,
    /// Model monitoring: drift of the traffic against a baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
}

/// Resources of each replica.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// CPU for the model server (requests and limits), for example `2` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory for the model server (requests and limits), for example `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// GPUs for each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
}

/// GPUs for each replica: put in the container's limits, with node selection and tolerations.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.migProfile) || self.resourceName == 'nvidia.com/gpu' || self.resourceName == 'nvidia.com/mig-' + self.migProfile")
        .message("spec.resources.gpu.resourceName must be nvidia.com/gpu or nvidia.com/mig-<migProfile> when spec.resources.gpu.migProfile is set"),
    validation = Rule::new("!has(self.migProfile) || self.resourceName.startsWith('nvidia.com/')")
        .message("spec.resources.gpu.migProfile is an NVIDIA MIG profile and needs an nvidia.com/ resourceName"),
    validation = Rule::new("!has(self.product) || self.resourceName.startsWith('nvidia.com/')")
        .message("spec.resources.gpu.product selects nodes by the nvidia.com/gpu.product label and needs an nvidia.com/ resourceName"),
)]
pub struct GpuSpec {
    /// GPUs (or MIG slices) per replica.
    #[schemars(range(min = 1, max = 16))]
    pub count: u32,
    /// The extended resource to request. With a MIG profile under the mixed strategy, use
    /// `nvidia.com/mig-<profile>`.
    #[serde(default = "default_gpu_resource")]
    #[schemars(
        length(max = 253),
        pattern(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}/[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")
    )]
    pub resource_name: String,
    /// The GPU product to run on, matched against the `nvidia.com/gpu.product` node label (for
    /// example `NVIDIA-H100-80GB-HBM3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub product: Option<String>,
    /// A MIG profile such as `1g.10gb`: pods then select nodes offering that profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[1-7]g\.[0-9]+gb(\+me)?$"))]
    pub mig_profile: Option<String>,
}

fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.to_string()
}

/// Replicas and what scales them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas")
        .message("spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas"),
    validation = Rule::new("self.provider == 'none' || has(self.maxReplicas)")
        .message("spec.scaling.maxReplicas is required when spec.scaling.provider is hpa or keda"),
    validation = Rule::new("self.provider != 'none' || (!has(self.scaleUp) && !has(self.scaleDown))")
        .message("spec.scaling.scaleUp and spec.scaling.scaleDown need spec.scaling.provider hpa or keda"),
)]
pub struct ScalingSpec {
    /// What scales the Deployment: `hpa` (a HorizontalPodAutoscaler on the operator's external
    /// queue-depth metric), `keda` (a KEDA ScaledObject with a Prometheus trigger) or `none`
    /// (`minReplicas` replicas, fixed).
    #[serde(default)]
    pub provider: ScalingProvider,
    /// The fewest replicas (the fixed count when `provider` is `none`).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: u32,
    /// The most replicas the autoscaler may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: Option<u32>,
    /// The load each replica should carry: requests waiting plus running, averaged over ready
    /// replicas. Above it the autoscaler adds replicas.
    #[serde(default = "default_target_load")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_load_per_replica: u32,
    /// How fast to scale up (the HPA's scaleUp rules). Default: at once, doubling at most every
    /// 15 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub scale_up: Option<HPAScalingRules>,
    /// How fast to scale down (the HPA's scaleDown rules). Default: a 5-minute stabilization
    /// window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub scale_down: Option<HPAScalingRules>,
}

fn default_min_replicas() -> u32 {
    1
}

fn default_target_load() -> u32 {
    4
}

/// What scales an InferenceService.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScalingProvider {
    Hpa,
    Keda,
    #[default]
    None,
}

/// Fragments merged into the model server's pod template. Kept to the fields platform teams set
/// so the CRD stays small; `affinity` is passed through as-is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateFragment {
    /// Node labels the pods must match, added to the GPU product selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations added to the GPU tolerations the operator sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub tolerations: Option<Vec<Toleration>>,
    /// The pods' affinity (a core/v1 Affinity), passed through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    /// The pods' PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
    /// The ServiceAccount the pods run as (for example one with access to model storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,
    /// Secrets for pulling the sidecar image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Labels added to the pods (the operator's own `lexserve.io/` labels win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations added to the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Model monitoring.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Drift detection: whether the traffic still looks like its baseline, reported as the
    /// `DriftDetected` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftSpec>,
}

/// Drift detection: every `interval`, the operator compares the distributions of the last
/// `window` of traffic (input length, unknown-token rate, predicted classes and confidence,
/// embedding norm and centroid cosine, prompt and output length: those of the model's task, see
/// `lexserve-contract`'s `drift` module) with the baseline's, by each of `measures`, and reports
/// drift when a measure passes its threshold on at least `minSamples` inputs on both sides.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.window) >= duration('1m') && duration(self.window) <= duration('168h')")
        .message("spec.monitoring.drift.window must be between 1m and 168h"),
    validation = Rule::new("duration(self.interval) >= duration('10s') && duration(self.interval) <= duration(self.window)")
        .message("spec.monitoring.drift.interval must be at least 10s and at most the window"),
)]
pub struct DriftSpec {
    /// What normal traffic looks like: a window of traffic after each rollout, or a reference
    /// sample of inputs.
    pub baseline: DriftBaseline,
    /// The recent traffic compared with the baseline (a Go duration, 1m to 168h).
    #[serde(default = "default_drift_window")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub window: String,
    /// How often the operator compares (a Go duration, at least 10s, at most the window).
    #[serde(default = "default_drift_interval")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub interval: String,
    /// Fewer inputs than this in the baseline or the window: no verdict (the condition says
    /// so).
    #[serde(default = "default_drift_min_samples")]
    #[schemars(range(min = 10, max = 100_000_000))]
    pub min_samples: u64,
    /// The measures computed for every feature (default: all three).
    #[serde(default = "default_drift_measures")]
    #[schemars(length(min = 1, max = 3))]
    #[x_kube(validation = Rule::new("self.all(m, self.exists_one(n, n == m))").message("spec.monitoring.drift.measures must not repeat a measure"))]
    pub measures: Vec<DriftMeasure>,
    /// The features watched (default: every feature of the model's task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g == f))").message("spec.monitoring.drift.features must not repeat a feature"))]
    pub features: Vec<DriftFeature>,
    /// When a measure counts as drift.
    #[serde(default)]
    pub thresholds: DriftThresholds,
}

/// The baseline: exactly one of `window` and `reference`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.window) != has(self.reference)")
        .message("spec.monitoring.drift.baseline needs exactly one of window and reference"),
)]
pub struct DriftBaseline {
    /// Learn the baseline from this much traffic after each rollout of a new model version (a
    /// Go duration, 1m to 168h); no verdict until it has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("spec.monitoring.drift.baseline.window must be between 1m and 168h"))]
    pub window: Option<String>,
    /// A reference sample of inputs, one per line (at most 10000 lines, 1 MiB), in a ConfigMap
    /// of the InferenceService's namespace: the sidecar runs it through the model at start-up and
    /// exports its distributions as the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ConfigMapKey>,
}

/// A key of a ConfigMap in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKey {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the sample.
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

pub use lexserve_contract::drift::{Feature as DriftFeature, Measure as DriftMeasure};

/// Thresholds above which a measure reports drift.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftThresholds {
    /// Population stability index (0.1: a moderate shift, 0.25: a major one).
    #[serde(default = "default_psi_threshold")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub psi: f64,
    /// Jensen–Shannon divergence, base 2 (0 to 1; 0.05 by default: a whole bin's worth of
    /// traffic moving to its neighbour scores about 0.09, sampling noise on 2000 inputs under
    /// 0.005).
    #[serde(default = "default_js_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jensen_shannon: f64,
    /// Kolmogorov–Smirnov statistic (the largest gap between the cumulative shares, 0 to 1);
    /// drift also needs its p-value under `ksPValue`.
    #[serde(default = "default_ks_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub kolmogorov_smirnov: f64,
    /// The Kolmogorov–Smirnov p-value under which a statistic above its threshold counts.
    #[serde(default = "default_ks_p_value")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ks_p_value: f64,
}

impl Default for DriftThresholds {
    fn default() -> Self {
        Self {
            psi: default_psi_threshold(),
            jensen_shannon: default_js_threshold(),
            kolmogorov_smirnov: default_ks_threshold(),
            ks_p_value: default_ks_p_value(),
        }
    }
}

fn default_drift_window() -> String {
    "15m".to_string()
}
fn default_drift_interval() -> String {
    "1m".to_string()
}
fn default_drift_min_samples() -> u64 {
    500
}
fn default_drift_measures() -> Vec<DriftMeasure> {
    DriftMeasure::ALL.to_vec()
}
fn default_psi_threshold() -> f64 {
    0.2
}
fn default_js_threshold() -> f64 {
    0.05
}
fn default_ks_threshold() -> f64 {
    0.1
}
fn default_ks_p_value() -> f64 {
    0.01
}

/// What the last drift check found.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DriftStatus {
    /// The model version the baseline belongs to (its digest, or its URI when no digest is
    /// known): a new version starts a new baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// When the baseline window began (a window baseline: the rollout of `modelVersion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_start: Option<Time>,
    /// The learned baseline (a window baseline, once its window has passed): counts per bin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub baseline: Vec<FeatureBaseline>,
    /// When the last check ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    /// The features the last check measured, with their scores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub features: Vec<FeatureDrift>,
}

/// A baseline's counts for one feature.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureBaseline {
    pub feature: DriftFeature,
    /// Bin name (a histogram's upper edge, a class, `unknown`/`known`) to count.
    #[schemars(length(max = 64))]
    pub counts: BTreeMap<String, f64>,
}

/// One feature's last scores.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureDrift {
    pub feature: DriftFeature,
    /// Inputs in the baseline.
    pub baseline_samples: u64,
    /// Inputs in the window.
    pub window_samples: u64,
    /// Population stability index against the baseline (when measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi: Option<f64>,
    /// Jensen–Shannon divergence, base 2 (when measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jensen_shannon: Option<f64>,
    /// Kolmogorov–Smirnov statistic (ordered features only, when measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kolmogorov_smirnov: Option<f64>,
    /// The Kolmogorov–Smirnov statistic's p-value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ks_p_value: Option<f64>,
    /// Whether a measure passed its threshold.
    pub drifted: bool,
}

/// What the operator observed of an InferenceService.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Replicas the Deployment asks for: the autoscaler's decision, or `minReplicas` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Replicas of the model server that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Replicas that passed their readiness probe (the model is loaded and warmed up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The in-cluster URL of the model server's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The model actually served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ResolvedModel>,
    /// When the autoscaler last changed the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Drift monitoring: the baseline and the last check's scores (with
    /// `spec.monitoring.drift`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStatus>,
}

/// The model a running InferenceService serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModel {
    /// The URI it was fetched from.
    pub uri: String,
    /// Its SHA-256 as the fetch init container computed and verified it, from the first pod
    /// that fetched this URI. Absent until a fetch has reported: `spec.model.sha256` is what is
    /// expected, this is what was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// What the URI resolved to at that first fetch: the Hub commit of an `hf://` URI, or for
    /// `s3://` `versionId:<id>`, `etag:<etag>` or (a prefix) `listing:<digest>`. Every later pod
    /// fetches exactly this (`fetch --revision`), so replicas serve the same bytes even after the
    /// branch moves or the object is overwritten (an overwritten object without versions fails
    /// the fetch instead). Cleared when `spec.model.uri` changes, or `spec.model.sha256` no longer
    /// matches `digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The tokenizer fetched from `spec.model.tokenizer`, recorded and pinned the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<ResolvedArtifact>,
}

/// A fetched artifact: where from, what was verified, what the URI resolved to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedArtifact {
    /// The URI it was fetched from.
    pub uri: String,
    /// Its SHA-256 as the fetch init container verified it; absent until one has reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// What the URI resolved to at the first fetch (as `model.revision`); later pods fetch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}
