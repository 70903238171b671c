//! `InferenceService`: a model, how to run it, and how to scale it.
//!
//! The `model` and `runtime` blocks are also the sidecar's config file: the operator writes them
//! into the ConfigMap unchanged, so a user can run `lexserve-sidecar serve` by hand from the same
//! block they put in a manifest.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HPAScalingRules;
use k8s_openapi::api::core::v1::{LocalObjectReference, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{DURATION_PATTERN, MODEL_URI_PATTERN, preserve_unknown_object};

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
#[x_kube(
    validation = Rule::new("!has(self.runtime) || !has(self.runtime.backend) || self.model.format != 'onnx' || self.runtime.backend == 'onnx'")
        .message("spec.runtime.backend must be onnx when spec.model.format is onnx"),
    validation = Rule::new("!has(self.runtime) || !has(self.runtime.backend) || self.model.format == 'onnx' || self.runtime.backend == 'candle'")
        .message("spec.runtime.backend must be candle when spec.model.format is safetensors or gguf"),
    validation = Rule::new("!has(self.runtime) || !has(self.runtime.generation) || self.model.task == 'generate'")
        .message("spec.runtime.generation is only valid when spec.model.task is generate"),
    validation = Rule::new("!has(self.runtime) || !has(self.runtime.batching) || self.model.task != 'generate'")
        .message("spec.runtime.batching applies to embed and classify; use spec.runtime.generation when spec.model.task is generate"),
    validation = Rule::new("!has(self.runtime) || !has(self.runtime.quantize) || self.runtime.quantize == 'none' || self.model.format != 'gguf'")
        .message("spec.runtime.quantize: int8 is not valid for spec.model.format gguf, whose weights are already quantized"),
)]
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
    /// Model monitoring settings (reserved for input drift detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
}

/// Where a model lives and what it does.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.task != 'generate' || self.format == 'gguf'")
        .message("spec.model.task generate needs a decoder: spec.model.format must be gguf"),
    validation = Rule::new("self.format != 'gguf' || self.task == 'generate'")
        .message("spec.model.format gguf holds a decoder: spec.model.task must be generate"),
    validation = Rule::new("!has(self.labels) || self.task == 'classify'")
        .message("spec.model.labels is only valid when spec.model.task is classify"),
    validation = Rule::new("!has(self.credentialsSecret) || self.uri.startsWith('s3://') || self.uri.startsWith('hf://')")
        .message("spec.model.credentialsSecret is only used with s3:// and hf:// URIs"),
    validation = Rule::new("!has(self.pooling) || self.task != 'generate'")
        .message("spec.model.pooling applies to embed and classify, not generate"),
)]
pub struct ModelSpec {
    /// Where the model lives: `file:///path` (a path in the image or on the node),
    /// `pvc://<claim>/<path>` (a PersistentVolumeClaim in the same namespace), `s3://bucket/key`
    /// or `hf://<org>/<name>[@revision]`. The `fetch` init container copies it into the pod.
    #[schemars(length(max = 2048), pattern(MODEL_URI_PATTERN))]
    pub uri: String,
    /// The weights' format: `onnx` (ONNX Runtime), `safetensors` (a BERT-family encoder run by
    /// candle) or `gguf` (a llama-family decoder run by candle).
    pub format: ModelFormat,
    /// What the model does: `embed` (sentence embeddings), `classify` (labels with
    /// probabilities) or `generate` (text generation).
    pub task: ModelTask,
    /// Where the tokenizer (`tokenizer.json`) lives, when it is not beside the model. Same schemes
    /// as `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(MODEL_URI_PATTERN))]
    pub tokenizer: Option<String>,
    /// The expected SHA-256 of the model (lowercase hex). The init container refuses a model
    /// whose digest differs; the resolved digest is reported in `status.model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
    /// Class names in the order of the classifier's outputs (`classify` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024), inner(length(min = 1, max = 253)))]
    pub labels: Option<Vec<String>>,
    /// How token embeddings become one vector: `mean` or `cls`. Defaults to the model's own
    /// pooling config, else `mean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Whether embeddings are L2-normalized. Defaults to true for `embed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// A Secret in the same namespace with credentials for `s3://` (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, optional `AWS_ENDPOINT_URL`) or `hf://` (`HF_TOKEN`) URIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<LocalObjectReference>,
}

/// The format of a model's weights.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
    Safetensors,
    Gguf,
}

/// What a model does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelTask {
    Embed,
    Classify,
    Generate,
}

/// How token embeddings are pooled into one sentence embedding.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

/// How the sidecar runs the model.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// The sidecar image, overriding the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// The inference engine: `onnx` (ONNX Runtime) for `onnx` models, `candle` for
    /// `safetensors` and `gguf`. Defaults from the model's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Threads the engine may use. Defaults to the CPU limit, else the node's cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<u32>,
    /// Dynamic batching of encoder requests (`embed`, `classify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingSpec>,
    /// Continuous batching and the KV cache for `generate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSpec>,
    /// Weight quantization: `none` or `int8` (an int8 ONNX file, or candle's quantized matmul).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<Quantize>,
}

/// The inference engine.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Onnx,
    Candle,
}

/// Weight quantization.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    None,
    Int8,
}

/// Encoder batching: requests wait in a bounded queue and are grouped into batches by a token
/// budget; each batch is padded to its longest member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSpec {
    /// The most tokens in one batch, padding included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_batch_tokens: Option<u32>,
    /// The most requests in one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_batch_requests: Option<u32>,
    /// How long the first request of a batch may wait for others to join (a Go duration such as
    /// `2ms`). Zero sends a batch as soon as the engine is free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub max_queue_delay: Option<String>,
    /// The most requests waiting; beyond it the sidecar answers 429 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_queue_size: Option<u32>,
}

/// Generation: continuous batching over a paged KV cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GenerationSpec {
    /// The most sequences decoded together in one step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent_sequences: Option<u32>,
    /// Memory for the KV cache (a quantity such as `512Mi`); it sets how many blocks exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_memory: Option<Quantity>,
    /// Tokens per KV cache block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub block_size: Option<u32>,
    /// The most tokens one request may generate; requests asking for more are rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 131072))]
    pub max_new_tokens: Option<u32>,
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

/// Model monitoring (reserved: input drift detection lands in a later release).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Input drift detection against a reference sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftSpec>,
}

/// Input drift detection settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DriftSpec {
    /// Whether drift is measured.
    #[serde(default)]
    pub enabled: bool,
    /// Where the reference sample lives (same schemes as the model URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(MODEL_URI_PATTERN))]
    pub reference: Option<String>,
    /// The population stability index above which drift is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub psi_threshold: Option<f64>,
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
}

/// The model a running InferenceService serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModel {
    /// The URI it was fetched from.
    pub uri: String,
    /// Its SHA-256, as verified by the init container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}
