//! `spec.model`: where a model lives, its format and its task.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;
use crate::uri::MODEL_URI_PATTERN;

/// The fewest labels a classifier has: one label is not a classification.
pub const MIN_CLASSIFY_LABELS: usize = 2;
/// The most labels a classifier may name.
pub const MAX_CLASSIFY_LABELS: usize = 1024;
/// The longest model or tokenizer URI.
pub const MAX_URI_LENGTH: usize = 2048;
/// A SHA-256 digest as the spec writes it: 64 lowercase hexadecimal characters.
pub const SHA256_PATTERN: &str = r"^[a-f0-9]{64}$";

/// Where a model lives and what it does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::rules::model_rules)]
pub struct ModelSpec {
    /// Where the model lives: `file:///path` (a path in the image or on the node),
    /// `pvc://<claim>/<path>` (a PersistentVolumeClaim in the same namespace), `s3://bucket/key`
    /// or `hf://<org>/<name>[@revision][/file]` (a file or a glob with `*`/`?` picks what to fetch;
    /// without one, the files `format` and `task` need). The `fetch` init container copies it into
    /// the pod; what a remote uri resolved to (`status.model.revision`) is fetched by every later
    /// pod.
    #[schemars(length(max = MAX_URI_LENGTH), pattern(MODEL_URI_PATTERN))]
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
    #[schemars(length(max = MAX_URI_LENGTH), pattern(MODEL_URI_PATTERN))]
    pub tokenizer: Option<String>,
    /// The expected SHA-256 of the model (lowercase hex): of the file when `uri` names one file,
    /// of the directory's manifest (`sha256sum` of every file, sorted by path) when it names a
    /// directory. The init container refuses a model whose digest differs, the server checks it
    /// again on load; the verified digest is reported in `status.model.digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(SHA256_PATTERN))]
    pub sha256: Option<String>,
    /// About how much disk the fetched model takes (the file, or the directory's files, plus a
    /// separate tokenizer), as a Kubernetes quantity (`500Mi`, `2Gi`). It bounds the model
    /// volume: its `sizeLimit` is twice this plus 256Mi, because a fetch stages the new copy beside
    /// a complete one an earlier attempt in the same pod may have left, and the rest covers a
    /// tokenizer and filesystem overhead. A pod whose fetch outgrows it is evicted rather than
    /// filling the node's disk. Without it the volume has no `sizeLimit` (it may use the node's
    /// ephemeral storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// The expected SHA-256 of the tokenizer fetched from `tokenizer` (lowercase hex; the file's,
    /// or a directory's digest as for `sha256`). The init container refuses one whose digest
    /// differs; the digest it verified is reported in `status.model.tokenizer.digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(SHA256_PATTERN))]
    pub tokenizer_sha256: Option<String>,
    /// Class names in the order of the classifier's outputs (`classify` only), at least 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = MIN_CLASSIFY_LABELS, max = MAX_CLASSIFY_LABELS),
        inner(length(min = 1, max = 253), pattern(r"\S"))
    )]
    pub labels: Option<Vec<String>>,
    /// How token embeddings become one vector: `mean` or `cls`. Default: the model's own
    /// pooling config, else `mean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Whether embeddings are L2-normalized. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// A Secret in the same namespace with credentials for `s3://` (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`) or
    /// `hf://` (`HF_TOKEN`) URIs. Without one, `s3://` uses the pod's web identity when it has one
    /// (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, as EKS IRSA injects them for the
    /// ServiceAccount named in `podTemplate.serviceAccountName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretReference>,
}

/// A Secret in the object's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The format of a model's weights.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
    Safetensors,
    Gguf,
}

/// What a model does.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelTask {
    Embed,
    Classify,
    Generate,
}

/// How token embeddings are pooled into one sentence embedding.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

impl ModelFormat {
    /// The backend that runs this format.
    pub fn backend(self) -> crate::Backend {
        match self {
            Self::Onnx => crate::Backend::Onnx,
            Self::Safetensors | Self::Gguf => crate::Backend::Candle,
        }
    }
}
