//! `spec.runtime`: how the sidecar runs the model. Every default is a constant in [`defaults`],
//! written into the field's documentation (checked by a test), so `kubectl explain` and the
//! sidecar say the same thing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::DURATION_PATTERN;
use crate::quantity::Quantity;

/// The values the sidecar uses for what the spec leaves out.
pub mod defaults {
    /// `runtime.batching.maxBatchTokens`.
    pub const MAX_BATCH_TOKENS: u32 = 16384;
    /// `runtime.batching.maxBatchRequests`.
    pub const MAX_BATCH_REQUESTS: u32 = 32;
    /// `runtime.batching.maxQueueDelay`.
    pub const MAX_QUEUE_DELAY_TEXT: &str = "0s";
    /// `runtime.batching.maxQueueSize` and `runtime.generation.maxQueueSize`.
    pub const MAX_QUEUE_SIZE: u32 = 256;
    /// `runtime.generation.maxConcurrentSequences`.
    pub const MAX_CONCURRENT_SEQUENCES: u32 = 16;
    /// `runtime.generation.kvCacheMemory`.
    pub const KV_CACHE_MEMORY: &str = "256Mi";
    /// `runtime.generation.blockSize`.
    pub const BLOCK_SIZE: u32 = 16;
    /// `runtime.generation.maxNewTokens`.
    pub const MAX_NEW_TOKENS: u32 = 256;
    /// `runtime.generation.prefixCache`.
    pub const PREFIX_CACHE: bool = true;
    /// `runtime.generation.kvCacheDtype`.
    pub const KV_CACHE_DTYPE: super::KvCacheDtype = super::KvCacheDtype::F16;
    /// `runtime.generation.speculation.mode`.
    /// Off by default: on ordinary chat, prompt-lookup drafts are mostly rejected and cost about a
    /// tenth of single-stream speed and a worse p99 inter-token latency (bench/generate/README.md),
    /// while answers that copy from the prompt (extraction, quoting, edits) decode about 1.8x as
    /// fast with `ngram`: a choice per workload.
    pub const SPECULATION_MODE: super::SpeculationMode = super::SpeculationMode::None;
    /// `runtime.generation.speculation.maxDraftTokens`.
    pub const MAX_DRAFT_TOKENS: u32 = 4;
    /// `model.normalize`.
    pub const NORMALIZE: bool = true;

    /// The longest `runtime.batching.maxQueueDelay` allowed (a bound, not a default), as CEL
    /// reads it in the CRD's rule and as the sidecar checks it.
    pub const MAX_QUEUE_DELAY_BOUND_TEXT: &str = "1m";
    pub const MAX_QUEUE_DELAY_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

    /// `runtime.shutdownDelay`: long enough for the endpoint removal to reach kube-proxy (its
    /// minimum sync period is 1 s) and typical ingress controllers and service meshes, which
    /// watch EndpointSlices and reprogram within a few seconds.
    pub const SHUTDOWN_DELAY_TEXT: &str = "5s";
    pub const SHUTDOWN_DELAY: std::time::Duration = std::time::Duration::from_secs(5);
    /// The longest `runtime.shutdownDelay` allowed: the pod's grace period is computed from it,
    /// and a rollout waits this long for every replica it replaces.
    pub const MAX_SHUTDOWN_DELAY_BOUND_TEXT: &str = "2m";
    pub const MAX_SHUTDOWN_DELAY_BOUND: std::time::Duration = std::time::Duration::from_secs(120);

    // The sidecar's HTTP server: flags with no spec field (names in `names::flag` and `names::env`).

    /// `--max-concurrent-requests`: requests admitted at once (from before their body is read to
    /// the end of their answer, token streams included); more get 429 at once. Text generation
    /// inference's default: past a few dozen requests on a CPU pod, more concurrency only adds
    /// queueing, while each admitted request may buffer a body of up to `--max-body-bytes` (2 MiB)
    /// and its parsed texts: 128 of them bound that memory to well under 1 GiB.
    pub const MAX_CONCURRENT_REQUESTS: u32 = 128;
    /// `--header-read-timeout`: a request's headers must arrive within it (slowloris). hyper starts
    /// the same clock while a kept-alive connection waits for its next request, so it is also the
    /// idle timeout: longer than the 60 s idle timeout of common load balancers, so that the
    /// balancer, not the sidecar, closes an idle connection (no request races a close).
    pub const HEADER_READ_TIMEOUT_TEXT: &str = "75s";
    /// `--body-read-timeout`: a request's body must arrive within it (2 MiB at 1 Mbit/s takes 17 s).
    pub const BODY_READ_TIMEOUT_TEXT: &str = "30s";
    /// `--request-timeout`: a whole answer (not a token stream) must be ready within it; otherwise
    /// 503. Generous: the default 256 new tokens take about 4 s at the measured decode speed, and a
    /// request may wait for a full queue before it.
    pub const REQUEST_TIMEOUT_TEXT: &str = "120s";
    /// `--write-stall-timeout`: a client that takes no byte of its answer for this long is
    /// disconnected, and a token stream it stopped reading is cancelled (its KV blocks freed).
    pub const WRITE_STALL_TIMEOUT_TEXT: &str = "30s";
    /// `--send-buffer-bytes`: the kernel's send buffer of each connection (SO_SNDBUF). Left to
    /// autotuning, it grows to megabytes (on loopback at once), which a client that stopped
    /// reading keeps filled, and a stalled write is only noticed once it is full. 256 KiB still
    /// sends 5 MB/s over a 50 ms round trip, more than any answer of this server needs.
    pub const SEND_BUFFER_BYTES: u32 = 256 * 1024;
}

/// How the sidecar runs the model.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// The sidecar image, overriding the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// The inference engine: `onnx` (ONNX Runtime) for `onnx` models, `candle` for
    /// `safetensors` and `gguf`. Default: from the model's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Threads the engine may use. Default: the CPUs the container may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<u32>,
    /// Dynamic batching of encoder requests (`embed`, `classify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingSpec>,
    /// Continuous batching and the KV cache for `generate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSpec>,
    /// Weight quantization: `none` or `int8` (an int8 ONNX file: `onnx` models only). Default:
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<Quantize>,
    /// After SIGTERM, how long the sidecar keeps serving with readiness already false, before it
    /// refuses new work and drains (a Go duration, at most 2m): endpoints are removed
    /// asynchronously, and clients keep sending to a terminating pod until kube-proxy, the
    /// ingress or the mesh has caught up. The pod's grace period grows by this much.
    /// Default: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        pattern(DURATION_PATTERN),
        transform = crate::rules::shutdown_delay_rules
    )]
    pub shutdown_delay: Option<String>,
}

impl RuntimeSpec {
    /// `shutdownDelay`, or its default when unset or (refused at admission) unreadable.
    pub fn shutdown_delay(&self) -> std::time::Duration {
        self.shutdown_delay
            .as_deref()
            .and_then(|text| crate::duration::parse_duration(text).ok())
            .unwrap_or(defaults::SHUTDOWN_DELAY)
    }
}

/// The inference engine.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Onnx,
    Candle,
}

/// Weight quantization.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    #[default]
    None,
    Int8,
}

/// How the KV cache stores keys and values: f16 (2 bytes a value, rounded to 11 significant bits)
/// or f32 (4 bytes, exactly what the model computed). The default is [`defaults::KV_CACHE_DTYPE`].
// No doc comments on the variants: with them schemars describes the field with the enum's text
// instead of the field's own, which is what `kubectl explain` should show.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDtype {
    F16,
    F32,
}

impl KvCacheDtype {
    /// Bytes of one stored value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }

    /// The spelling of the spec and the flag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }
}

/// Encoder batching: requests wait in a bounded queue and are grouped into batches by a token
/// budget; each batch is padded to its longest member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSpec {
    /// The most tokens in one batch, padding included. Default: 16384, lowered at start to the
    /// most efficient batch the sidecar measures when this is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_batch_tokens: Option<u32>,
    /// The most requests in one batch. Default: 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_batch_requests: Option<u32>,
    /// How long the first request of a batch may wait for others to join (a Go duration such as
    /// `2ms`, at most one minute). Zero sends a batch as soon as the engine is free. Default: 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        pattern(DURATION_PATTERN),
        transform = crate::rules::queue_delay_rules
    )]
    pub max_queue_delay: Option<String>,
    /// The most requests waiting; beyond it the sidecar answers 429 with `Retry-After`.
    /// Default: 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_queue_size: Option<u32>,
}

/// Generation: continuous batching over a paged KV cache.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GenerationSpec {
    /// The most sequences decoded together in one step. Default: 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent_sequences: Option<u32>,
    /// Memory for the KV cache (a quantity such as `512Mi` or `1e9`); it sets how many blocks
    /// exist. Default: 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_memory: Option<Quantity>,
    /// Tokens per KV cache block. Default: 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub block_size: Option<u32>,
    /// The most tokens one request may generate; requests asking for more are rejected.
    /// Default: 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 131072))]
    pub max_new_tokens: Option<u32>,
    /// The most requests waiting for a place in the running batch; beyond it the sidecar answers
    /// 429 with `Retry-After`. Default: 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_queue_size: Option<u32>,
    /// Keep the KV blocks of computed prompt prefixes (a shared system prompt, the prompt of a
    /// request with `n` > 1) and let later requests take them by reference instead of computing
    /// them again. Cached blocks nobody uses are evicted, least recently used first, as soon as the
    /// cache needs room, before any running sequence is preempted. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache: Option<bool>,
    /// How the KV cache stores keys and values: `f16` (half the bytes per token, so twice the
    /// tokens in `kvCacheMemory` and half the memory read per step at long context; keys and values
    /// are rounded to 11 significant bits, as in llama.cpp's default cache) or `f32` (exactly what
    /// the model computed). Default: f16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_dtype: Option<KvCacheDtype>,
    /// Speculative decoding: several tokens per step where the text is predictable, output
    /// identical to plain decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<SpeculationSpec>,
}

/// Speculative decoding: a sequence's next tokens are drafted cheaply and verified together in one
/// step; the sampled tokens are exactly those plain decoding gives, only several per step when the
/// drafts are right. Drafting backs off for a sequence whose drafts are mostly rejected.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::rules::speculation_rules)]
pub struct SpeculationSpec {
    /// `none`; `ngram`: drafts copied from what followed an earlier occurrence of the sequence's
    /// last tokens in its own prompt and output (prompt lookup; pays off when the answer repeats or
    /// extracts from the prompt); or `draft`: drafts written greedily by a smaller model with the
    /// same vocabulary (`draftModel`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SpeculationMode>,
    /// The most drafted tokens verified per sequence and step. Default: 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub max_draft_tokens: Option<u32>,
    /// The draft model of mode `draft`: a GGUF decoder whose tokenizer has exactly the model's
    /// vocabulary (a smaller model of the same family). Only speed depends on it: every token is
    /// still sampled from the model's own logits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_model: Option<DraftModelSpec>,
}

/// Where the draft model lives. It is fetched like `model` (same schemes, `model.credentialsSecret`
/// for remote ones) into the same volume, and its KV cache comes out of `kvCacheMemory`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::rules::draft_model_rules)]
pub struct DraftModelSpec {
    /// A GGUF file, or a directory or `hf://` repository holding one. Same schemes as
    /// `model.uri`.
    #[schemars(
        length(max = crate::model::MAX_URI_LENGTH),
        pattern(crate::uri::MODEL_URI_PATTERN)
    )]
    pub uri: String,
    /// The expected SHA-256 of the draft model (lowercase hex, as `model.sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::model::SHA256_PATTERN))]
    pub sha256: Option<String>,
    /// About how much disk the draft model takes, as `model.size`; the model volume grows by
    /// twice this. Default: `model.size` (a draft is not larger than the model it drafts for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
}

/// How drafts for speculative decoding are made: `none` (plain decoding, one token per sequence and
/// step), `ngram` (prompt lookup) or `draft` (a draft model). `none` rather than `off`: YAML 1.1
/// parsers, which kubectl's is, read an unquoted `off` as the boolean false.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SpeculationMode {
    None,
    Ngram,
    Draft,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelSpec;
    use serde_json::Value;

    /// The description of `field` in the schema of `T`.
    fn description<T: JsonSchema>(field: &str) -> String {
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap();
        schema["properties"][field]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("{field} has no description"))
            .to_string()
    }

    /// `kubectl explain` shows what the sidecar does: each documented default is the constant.
    #[test]
    fn documented_defaults_are_the_constants() {
        let cases: Vec<(String, String)> = vec![
            (
                description::<BatchingSpec>("maxBatchTokens"),
                defaults::MAX_BATCH_TOKENS.to_string(),
            ),
            (
                description::<BatchingSpec>("maxBatchRequests"),
                defaults::MAX_BATCH_REQUESTS.to_string(),
            ),
            (
                description::<BatchingSpec>("maxQueueDelay"),
                defaults::MAX_QUEUE_DELAY_TEXT.to_string(),
            ),
            (
                description::<BatchingSpec>("maxQueueSize"),
                defaults::MAX_QUEUE_SIZE.to_string(),
            ),
            (
                description::<GenerationSpec>("maxConcurrentSequences"),
                defaults::MAX_CONCURRENT_SEQUENCES.to_string(),
            ),
            (
                description::<GenerationSpec>("kvCacheMemory"),
                defaults::KV_CACHE_MEMORY.to_string(),
            ),
            (
                description::<GenerationSpec>("blockSize"),
                defaults::BLOCK_SIZE.to_string(),
            ),
            (
                description::<GenerationSpec>("maxNewTokens"),
                defaults::MAX_NEW_TOKENS.to_string(),
            ),
            (
                description::<GenerationSpec>("maxQueueSize"),
                defaults::MAX_QUEUE_SIZE.to_string(),
            ),
            (
                description::<GenerationSpec>("kvCacheDtype"),
                defaults::KV_CACHE_DTYPE.as_str().to_string(),
            ),
            (
                description::<SpeculationSpec>("mode"),
                serde_json::to_value(defaults::SPECULATION_MODE)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
            (
                description::<SpeculationSpec>("maxDraftTokens"),
                defaults::MAX_DRAFT_TOKENS.to_string(),
            ),
            (
                description::<RuntimeSpec>("shutdownDelay"),
                defaults::SHUTDOWN_DELAY_TEXT.to_string(),
            ),
            (
                description::<GenerationSpec>("prefixCache"),
                defaults::PREFIX_CACHE.to_string(),
            ),
            (
                description::<ModelSpec>("normalize"),
                defaults::NORMALIZE.to_string(),
            ),
        ];
        for (text, value) in cases {
            assert!(
                text.contains(&format!("Default: {value}")),
                "{text:?} should say `Default: {value}`"
            );
        }
    }

    #[test]
    fn kv_cache_dtypes_are_spelled_alike_in_the_spec_and_the_flag() {
        use clap::ValueEnum;
        for dtype in KvCacheDtype::value_variants() {
            assert_eq!(serde_json::to_value(dtype).unwrap(), dtype.as_str());
            let flag = dtype.to_possible_value().unwrap();
            assert_eq!(flag.get_name(), dtype.as_str());
        }
    }

    #[test]
    fn duration_constants_agree_with_their_text() {
        use crate::duration::parse_duration;
        assert_eq!(
            parse_duration(defaults::MAX_QUEUE_DELAY_BOUND_TEXT),
            Ok(defaults::MAX_QUEUE_DELAY_BOUND)
        );
        assert!(parse_duration(defaults::MAX_QUEUE_DELAY_TEXT).is_ok());
        assert_eq!(
            parse_duration(defaults::SHUTDOWN_DELAY_TEXT),
            Ok(defaults::SHUTDOWN_DELAY)
        );
        assert_eq!(
            parse_duration(defaults::MAX_SHUTDOWN_DELAY_BOUND_TEXT),
            Ok(defaults::MAX_SHUTDOWN_DELAY_BOUND)
        );
        assert!(crate::quantity::parse_quantity(defaults::KV_CACHE_MEMORY).is_ok());
        for text in [
            defaults::HEADER_READ_TIMEOUT_TEXT,
            defaults::BODY_READ_TIMEOUT_TEXT,
            defaults::REQUEST_TIMEOUT_TEXT,
            defaults::WRITE_STALL_TIMEOUT_TEXT,
        ] {
            assert!(parse_duration(text).is_ok_and(|d| !d.is_zero()), "{text}");
        }
    }

    #[test]
    fn the_shutdown_delay_rule_is_on_its_field() {
        let schema = serde_json::to_value(schemars::schema_for!(RuntimeSpec)).unwrap();
        let rules = &schema["properties"]["shutdownDelay"]["x-kubernetes-validations"];
        assert!(
            matches!(rules, Value::Array(list) if list.len() == 1),
            "{rules}"
        );
    }

    #[test]
    fn the_queue_delay_rule_is_on_its_field() {
        let schema = serde_json::to_value(schemars::schema_for!(BatchingSpec)).unwrap();
        let rules = &schema["properties"]["maxQueueDelay"]["x-kubernetes-validations"];
        assert!(
            matches!(rules, Value::Array(list) if list.len() == 1),
            "{rules}"
        );
    }
}
