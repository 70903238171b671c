//! Command line: one binary, one subcommand per role. Every setting has an `LEXSERVE_*` environment
//! fallback so the operator can configure a pod without rewriting its arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use lexserve_contract::names::{drain, env, flag, http, path};
use lexserve_contract::runtime::defaults;
use lexserve_contract::{Backend, KvCacheDtype, ModelFormat, ModelTask, Pooling, Quantize};

#[derive(Debug, Parser)]
#[command(
    name = "lexserve-sidecar",
    version,
    about = "lexserve data plane: model server and model fetcher"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over HTTP.
    Serve(Box<ServeArgs>),
    /// Copy a model into a local directory and verify its digest (an init container's job).
    Fetch(FetchArgs),
    /// Route an experiment's requests to its variants and count assignments and outcomes.
    Route(Box<RouteArgs>),
}

/// `serve` flags. Model and runtime flags mirror `spec.model` / `spec.runtime` and override the file.
#[derive(Debug, Clone, Parser)]
#[command(name = "serve")]
pub struct ServeArgs {
    /// YAML or JSON file with `model` and `runtime` blocks (the InferenceService spec shape).
    #[arg(long = flag::CONFIG, env = env::CONFIG)]
    pub config: Option<PathBuf>,
    /// Address for the API and /metrics.
    #[arg(long = flag::LISTEN, env = env::LISTEN, default_value_t = http::default_listen())]
    pub listen: String,

    /// model.uri: file:///path, pvc://claim/path (s3:// and hf:// are fetched by `fetch`, not served directly).
    #[arg(long, env = env::MODEL_URI)]
    pub model_uri: Option<String>,
    /// model.format.
    #[arg(long = "model-format", env = "LEXSERVE_MODEL_FORMAT", value_enum)]
    pub format: Option<ModelFormat>,
    /// model.task.
    #[arg(long, env = "LEXSERVE_TASK", value_enum)]
    pub task: Option<ModelTask>,
    /// model.tokenizer: uri of a tokenizer.json (default: the one next to the model).
    #[arg(long, env = env::TOKENIZER)]
    pub tokenizer: Option<String>,
    /// model.sha256: digest the model must have (see `fetch` for how a directory is digested).
    #[arg(long = "model-sha256", env = env::MODEL_SHA256)]
    pub sha256: Option<String>,
    /// model.labels, comma-separated (classifiers).
    #[arg(long, env = "LEXSERVE_LABELS", value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// model.pooling (default: the model's pooling config, else mean).
    #[arg(long, env = "LEXSERVE_POOLING", value_enum)]
    pub pooling: Option<Pooling>,
    /// model.normalize: L2-normalize pooled embeddings (default true).
    #[arg(long, env = "LEXSERVE_NORMALIZE")]
    pub normalize: Option<bool>,

    /// runtime.backend (default: onnx for format onnx, candle otherwise).
    #[arg(long, env = "LEXSERVE_BACKEND", value_enum)]
    pub backend: Option<Backend>,
    /// runtime.threads: compute threads (default: all CPUs).
    #[arg(long, env = "LEXSERVE_THREADS")]
    pub threads: Option<u64>,
    /// runtime.quantize.
    #[arg(long, env = "LEXSERVE_QUANTIZE", value_enum)]
    pub quantize: Option<Quantize>,
    /// runtime.batching.maxBatchTokens: padded tokens per batch (default 16384).
    #[arg(long, env = "LEXSERVE_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<u64>,
    /// runtime.batching.maxBatchRequests: texts per batch (default 32).
    #[arg(long, env = "LEXSERVE_MAX_BATCH_REQUESTS")]
    pub max_batch_requests: Option<u64>,
    /// runtime.batching.maxQueueDelay: Go duration the oldest text may wait for a fuller batch (default 0s).
    #[arg(long, env = "LEXSERVE_MAX_QUEUE_DELAY")]
    pub max_queue_delay: Option<String>,
    /// runtime.batching.maxQueueSize (encoders: texts) or runtime.generation.maxQueueSize
    /// (generation: requests): how many may wait before new requests get 429 (default 256).
    #[arg(long, env = "LEXSERVE_MAX_QUEUE_SIZE")]
    pub max_queue_size: Option<u64>,
    /// runtime.generation.maxConcurrentSequences.
    #[arg(long, env = "LEXSERVE_MAX_CONCURRENT_SEQUENCES")]
    pub max_concurrent_sequences: Option<u64>,
    /// runtime.generation.kvCacheMemory (a Kubernetes quantity).
    #[arg(long, env = "LEXSERVE_KV_CACHE_MEMORY")]
    pub kv_cache_memory: Option<String>,
    /// runtime.generation.blockSize.
    #[arg(long, env = "LEXSERVE_BLOCK_SIZE")]
    pub block_size: Option<u64>,
    /// runtime.generation.kvCacheDtype: how keys and values are stored (default f16).
    #[arg(long, env = "LEXSERVE_KV_CACHE_DTYPE", value_enum)]
    pub kv_cache_dtype: Option<KvCacheDtype>,
    /// runtime.generation.maxNewTokens.
    #[arg(long, env = "LEXSERVE_MAX_NEW_TOKENS")]
    pub max_new_tokens: Option<u64>,
    /// Generation: tokens fed to the model per step, prompt chunks and decode tokens together
    /// (default 256; raised to maxConcurrentSequences if lower).
    #[arg(long, env = "LEXSERVE_MAX_STEP_TOKENS")]
    pub max_step_tokens: Option<u64>,
    /// Generation: prompt tokens fed per step while other sequences decode in it (default 8, or as
    /// many as sequences decode where that is more):
    /// bounds the inter-token gap a new prompt causes the streams already running; with nothing
    /// decoding, a prompt takes the whole step budget.
    #[arg(long, env = "LEXSERVE_PREFILL_TOKENS_WHILE_DECODING")]
    pub prefill_tokens_while_decoding: Option<u64>,
    /// runtime.generation.prefixCache: share computed prompt prefixes (default true).
    #[arg(long, env = "LEXSERVE_PREFIX_CACHE")]
    pub prefix_cache: Option<bool>,
    /// runtime.generation.speculation.mode: none (default), ngram (prompt-lookup drafts) or draft
    /// (a draft model, --draft-model-uri).
    #[arg(long, env = "LEXSERVE_SPECULATION")]
    pub speculation: Option<lexserve_contract::SpeculationMode>,
    /// runtime.generation.speculation.draftModel.uri: the draft model of speculation mode draft (a
    /// GGUF with the model's vocabulary).
    #[arg(long, env = env::DRAFT_MODEL_URI)]
    pub draft_model_uri: Option<String>,
    /// runtime.generation.speculation.maxDraftTokens: drafted tokens verified per sequence and step
    /// (1 to 32, default 4).
    #[arg(long, env = "LEXSERVE_MAX_DRAFT_TOKENS")]
    pub max_draft_tokens: Option<u64>,

    /// Name the model is served under (default: from the uri).
    #[arg(long, env = env::MODEL_NAME)]
    pub model_name: Option<String>,
    /// Version reported in metrics and metadata (default: the sha256 prefix, else "1").
    #[arg(long, env = env::MODEL_VERSION)]
    pub model_version: Option<String>,
    /// The ONNX Runtime shared library (libonnxruntime.so) the onnx backend loads.
    #[arg(long, env = env::ORT_DYLIB_PATH)]
    pub ort_dylib_path: Option<PathBuf>,
    /// Where PersistentVolumeClaims are mounted: pvc://claim/path is read from <root>/claim/path.
    #[arg(long = flag::PVC_ROOT, env = env::PVC_ROOT, default_value = path::PVC_ROOT)]
    pub pvc_root: PathBuf,
    /// The shadow mirror's configuration (the operator's ConfigMap key `mirror.yaml`), re-read
    /// when its content changes; absent: nothing is mirrored (default: `mirror.yaml` in the
    /// directory of `--config`; without either, no mirror).
    #[arg(long = flag::MIRROR_CONFIG, env = env::MIRROR_CONFIG)]
    pub mirror_config: Option<PathBuf>,
    /// `HOST:PORT=ADDR` (repeatable, or comma-separated): connect to ADDR when a mirror
    /// candidate's URL names HOST:PORT, like curl's --resolve (a sidecar run outside the cluster);
    /// HOST `*.DOMAIN` covers every name under DOMAIN (a proxy that routes by `Host`).
    #[arg(long = flag::RESOLVE, env = env::RESOLVE, value_delimiter = ',')]
    pub resolve: Vec<String>,
    /// Drift monitoring's reference sample: a UTF-8 file, one input per line (blank lines
    /// skipped), at most 10000 inputs and 1 MiB. Run through the model at start-up, before
    /// `/ready` turns 200, and exported as `lexserve_drift_baseline{feature,bin}` (see
    /// `lexserve_contract::drift`); embed also compares live embeddings with its centroid. A
    /// file that cannot be read, is empty or breaks a bound stops `serve`.
    #[arg(long = flag::DRIFT_REFERENCE, env = env::DRIFT_REFERENCE)]
    pub drift_reference: Option<PathBuf>,
    /// Most texts in one request; more get 413.
    #[arg(long, env = "LEXSERVE_MAX_TEXTS_PER_REQUEST", default_value_t = 128)]
    pub max_texts_per_request: u64,
    /// Truncation length in tokens (default: the model's own limit).
    #[arg(long, env = "LEXSERVE_MAX_INPUT_TOKENS")]
    pub max_input_tokens: Option<u64>,
    /// The HTTP server's backpressure: admission, deadlines, shutdown.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// The HTTP server's backpressure and shutdown flags, shared by `serve` and `route`: the router
/// follows the same rules as the model server it stands in front of.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Largest request body accepted (bytes); larger bodies get 413.
    #[arg(long, env = "LEXSERVE_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// After SIGTERM, how long work in flight may take before the server exits anyway.
    #[arg(long, env = env::DRAIN_TIMEOUT, default_value = drain::DRAIN_TIMEOUT_TEXT)]
    pub drain_timeout: String,
    /// After SIGTERM, how long to keep serving with readiness already false before draining, so
    /// that clients still routed here while the endpoint removal propagates are answered
    /// (overrides `runtime.shutdownDelay`; default 5s). A second SIGTERM skips what is left of it.
    #[arg(long, env = env::SHUTDOWN_DELAY)]
    pub shutdown_delay: Option<String>,
    /// Requests admitted at once, token streams included; more get 429 with Retry-After before
    /// their body is read. Probes and /metrics are never refused.
    #[arg(long = flag::MAX_CONCURRENT_REQUESTS, env = env::MAX_CONCURRENT_REQUESTS,
        default_value_t = defaults::MAX_CONCURRENT_REQUESTS.into())]
    pub max_concurrent_requests: u64,
    /// How long a request's headers may take to arrive, and how long a kept-alive connection may
    /// wait idle for its next request; then the connection is closed.
    #[arg(long = flag::HEADER_READ_TIMEOUT, env = env::HEADER_READ_TIMEOUT,
        default_value = defaults::HEADER_READ_TIMEOUT_TEXT)]
    pub header_read_timeout: String,
    /// How long a request's body may take to arrive once admitted; then 408.
    #[arg(long = flag::BODY_READ_TIMEOUT, env = env::BODY_READ_TIMEOUT,
        default_value = defaults::BODY_READ_TIMEOUT_TEXT)]
    pub body_read_timeout: String,
    /// How long a whole answer (not a token stream) may take once the body is read; then 503.
    #[arg(long = flag::REQUEST_TIMEOUT, env = env::REQUEST_TIMEOUT,
        default_value = defaults::REQUEST_TIMEOUT_TEXT)]
    pub request_timeout: String,
    /// A client that takes no byte of its answer for this long is disconnected; a token stream it
    /// stopped reading is cancelled and its KV cache blocks freed.
    #[arg(long = flag::WRITE_STALL_TIMEOUT, env = env::WRITE_STALL_TIMEOUT,
        default_value = defaults::WRITE_STALL_TIMEOUT_TEXT)]
    pub write_stall_timeout: String,
    /// The kernel's send buffer per connection (SO_SNDBUF, bytes): what a client that stopped
    /// reading can hold before its writes stall.
    #[arg(long = flag::SEND_BUFFER_BYTES, env = env::SEND_BUFFER_BYTES,
        default_value_t = defaults::SEND_BUFFER_BYTES.into())]
    pub send_buffer_bytes: u64,
}

/// `route` flags: the experiment router in front of an experiment's variants.
#[derive(Debug, Clone, Parser)]
#[command(name = "route")]
pub struct RouteArgs {
    /// The router configuration (the operator's ConfigMap key `router.yaml`); re-read when its
    /// content changes, the old one kept when the new one is invalid.
    #[arg(long = flag::CONFIG, env = env::CONFIG)]
    pub config: PathBuf,
    /// Address for the proxied API, `/outcome` and /metrics.
    #[arg(long = flag::LISTEN, env = env::LISTEN, default_value_t = http::default_listen())]
    pub listen: String,
    /// `HOST:PORT=ADDR` (repeatable, or comma-separated): connect to ADDR when a variant's URL
    /// names HOST:PORT, like curl's --resolve (a router run outside the cluster); HOST `*.DOMAIN`
    /// covers every name under DOMAIN (a proxy that routes by `Host`).
    #[arg(long = flag::RESOLVE, env = env::RESOLVE, value_delimiter = ',')]
    pub resolve: Vec<String>,
    /// How long connecting to a variant may take; then 503.
    #[arg(long = flag::CONNECT_TIMEOUT, env = env::CONNECT_TIMEOUT, default_value = "2s")]
    pub connect_timeout: String,
    /// How many request ids `/outcome` remembers (the oldest are forgotten first); with the
    /// window, the bound on that memory (about 100 bytes an id).
    #[arg(long, env = "LEXSERVE_OUTCOME_REQUEST_IDS", default_value_t = 100_000)]
    pub outcome_request_ids: u64,
    /// How long after its request an outcome may name the request id.
    #[arg(long, env = "LEXSERVE_OUTCOME_WINDOW", default_value = "15m")]
    pub outcome_window: String,
    /// The HTTP server's backpressure: admission, deadlines, shutdown.
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Source: file:///path or pvc://claim/path (a file or a directory), s3://bucket/key or
    /// s3://bucket/prefix/ (credentials from AWS_* variables), hf://org/name[@revision][/file]
    /// (token from HF_TOKEN; a file or glob picks the files, else --model-format does).
    #[arg(long = flag::URI, env = env::MODEL_URI)]
    pub uri: String,
    /// Where the model goes: this path becomes the model, the file itself for a one-file source
    /// (whatever its name) or a directory of the source's files; what it held before is replaced.
    /// Its parent (created if missing) must be writable: the copy is staged there.
    #[arg(long = flag::DEST, env = env::FETCH_DEST)]
    pub dest: PathBuf,
    /// Expected sha256: of the file, or the directory digest described in `fetch`'s docs.
    #[arg(long = flag::SHA256, env = env::MODEL_SHA256)]
    pub sha256: Option<String>,
    /// Where PersistentVolumeClaims are mounted.
    #[arg(long = flag::PVC_ROOT, env = env::PVC_ROOT, default_value = path::PVC_ROOT)]
    pub pvc_root: PathBuf,
    /// Where the outcome goes (`sha256:<hex> [revision:<revision>]` or the error), read back by
    /// the operator as the init container's termination message. The default is written only if
    /// it exists.
    #[arg(long, env = env::TERMINATION_LOG)]
    pub termination_log: Option<PathBuf>,
    /// Fetch exactly what an earlier fetch of the same uri reported (its `revision:`): a Hub
    /// commit, or for S3 `versionId:<id>`, `etag:<etag>` or `listing:<digest>`. An S3 object or
    /// prefix that no longer matches is refused rather than served.
    #[arg(long = flag::REVISION, env = env::FETCH_REVISION)]
    pub revision: Option<String>,
    /// What is fetched: the model, or its tokenizer (the tokenizer files of an hf:// repository).
    #[arg(long = flag::ARTIFACT, env = env::FETCH_ARTIFACT, value_enum, default_value_t = Artifact::Model)]
    pub artifact: Artifact,
    /// model.format: which weights of an hf:// repository to fetch when the uri names no file.
    #[arg(long = flag::FORMAT, env = env::MODEL_FORMAT, value_enum)]
    pub format: Option<ModelFormat>,
    /// model.task (an hf:// classifier also needs its head).
    #[arg(long = flag::TASK, env = env::TASK, value_enum)]
    pub task: Option<ModelTask>,
    /// runtime.quantize: which ONNX file of an hf:// repository (int8: the quantized one).
    #[arg(long = flag::QUANTIZE, env = env::QUANTIZE, value_enum)]
    pub quantize: Option<Quantize>,
}

/// What a fetch brings: a model, or a tokenizer kept apart from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Artifact {
    Model,
    Tokenizer,
}
