//! The names both binaries spell: the operator writes them into pods, the sidecar reads them; the
//! scrape configs, the autoscaler's query and the dashboards select on them. One definition each.

/// The sidecar binary and its subcommands.
pub mod command {
    pub const SIDECAR_BINARY: &str = "lexserve-sidecar";
    pub const SERVE: &str = "serve";
    pub const FETCH: &str = "fetch";
    /// The experiment router.
    pub const ROUTE: &str = "route";
}

/// Flags of `lexserve-sidecar` that the operator passes.
pub mod flag {
    pub const CONFIG: &str = "config";
    pub const LISTEN: &str = "listen";
    pub const URI: &str = "uri";
    pub const DEST: &str = "dest";
    pub const SHA256: &str = "sha256";
    pub const PVC_ROOT: &str = "pvc-root";
    /// `fetch`: what the source resolved to the first time (`status.model.revision`).
    pub const REVISION: &str = "revision";
    /// `fetch`: which files of an `hf://` repository the model needs.
    pub const FORMAT: &str = "model-format";
    pub const TASK: &str = "task";
    pub const QUANTIZE: &str = "quantize";
    /// `fetch`: `model` or `tokenizer`.
    pub const ARTIFACT: &str = "artifact";
    /// The HTTP server's own limits (defaults in [`crate::runtime::defaults`]).
    pub const MAX_CONCURRENT_REQUESTS: &str = "max-concurrent-requests";
    pub const HEADER_READ_TIMEOUT: &str = "header-read-timeout";
    pub const BODY_READ_TIMEOUT: &str = "body-read-timeout";
    pub const REQUEST_TIMEOUT: &str = "request-timeout";
    pub const WRITE_STALL_TIMEOUT: &str = "write-stall-timeout";
    pub const SEND_BUFFER_BYTES: &str = "send-buffer-bytes";
    /// `route` and `serve`: `HOST:PORT=ADDR`, connect to ADDR when a variant's (or a mirror
    /// candidate's) URL names HOST:PORT (curl's `--resolve`, for a sidecar outside a cluster).
    pub const RESOLVE: &str = "resolve";
    /// `route`: how long connecting to a variant may take before the request gets 503.
    pub const CONNECT_TIMEOUT: &str = "connect-timeout";
    /// `serve`: the shadow mirror's configuration file (default: `mirror.yaml` beside
    /// `--config`).
    pub const MIRROR_CONFIG: &str = "mirror-config";

    /// `serve`: a reference sample for drift monitoring (one input per line), run at start-up
    /// and exported as the baseline (see [`crate::drift`]).
    pub const DRIFT_REFERENCE: &str = "drift-reference";

    /// `--name` from a flag's long name.
    pub fn arg(long: &str) -> String {
        format!("--{long}")
    }
}

/// Environment variables. Every sidecar flag has one (`LEXSERVE_` and the flag in capitals); these
/// are the ones the operator sets or that more than one program reads.
pub mod env {
    pub const CONFIG: &str = "LEXSERVE_CONFIG";
    pub const LISTEN: &str = "LEXSERVE_LISTEN";
    pub const MODEL_URI: &str = "LEXSERVE_MODEL_URI";
    pub const MODEL_NAME: &str = "LEXSERVE_MODEL_NAME";
    pub const MODEL_VERSION: &str = "LEXSERVE_MODEL_VERSION";
    pub const MODEL_SHA256: &str = "LEXSERVE_MODEL_SHA256";
    pub const TOKENIZER: &str = "LEXSERVE_TOKENIZER";
    /// `runtime.generation.speculation.draftModel.uri`, pointed by the operator at the fetched draft.
    pub const DRAFT_MODEL_URI: &str = "LEXSERVE_DRAFT_MODEL_URI";
    pub const PVC_ROOT: &str = "LEXSERVE_PVC_ROOT";
    pub const FETCH_REVISION: &str = "LEXSERVE_FETCH_REVISION";
    pub const FETCH_ARTIFACT: &str = "LEXSERVE_FETCH_ARTIFACT";
    pub const MODEL_FORMAT: &str = "LEXSERVE_MODEL_FORMAT";
    pub const TASK: &str = "LEXSERVE_TASK";
    pub const QUANTIZE: &str = "LEXSERVE_QUANTIZE";
    pub const FETCH_DEST: &str = "LEXSERVE_FETCH_DEST";
    pub const TERMINATION_LOG: &str = "LEXSERVE_TERMINATION_LOG";
    pub const DRAIN_TIMEOUT: &str = "LEXSERVE_DRAIN_TIMEOUT";
    pub const SHUTDOWN_DELAY: &str = "LEXSERVE_SHUTDOWN_DELAY";
    pub const MAX_CONCURRENT_REQUESTS: &str = "LEXSERVE_MAX_CONCURRENT_REQUESTS";
    pub const HEADER_READ_TIMEOUT: &str = "LEXSERVE_HEADER_READ_TIMEOUT";
    pub const BODY_READ_TIMEOUT: &str = "LEXSERVE_BODY_READ_TIMEOUT";
    pub const REQUEST_TIMEOUT: &str = "LEXSERVE_REQUEST_TIMEOUT";
    pub const WRITE_STALL_TIMEOUT: &str = "LEXSERVE_WRITE_STALL_TIMEOUT";
    pub const SEND_BUFFER_BYTES: &str = "LEXSERVE_SEND_BUFFER_BYTES";
    pub const RESOLVE: &str = "LEXSERVE_RESOLVE";
    pub const CONNECT_TIMEOUT: &str = "LEXSERVE_CONNECT_TIMEOUT";
    pub const MIRROR_CONFIG: &str = "LEXSERVE_MIRROR_CONFIG";
    pub const DRIFT_REFERENCE: &str = "LEXSERVE_DRIFT_REFERENCE";
    /// The log filter (tracing's `EnvFilter` syntax) of both binaries.
    pub const LOG: &str = "LEXSERVE_LOG";
    /// The ONNX Runtime shared library (ort's own variable).
    pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
    /// The root of everything the scripts and tests provision on a machine (models, ONNX Runtime,
    /// the control plane's binaries, build outputs): default `$HOME/.cache/lexserve`.
    pub const CACHE: &str = "LEXSERVE_CACHE";
    /// Where the models are, when not `$LEXSERVE_CACHE/models`.
    pub const MODELS_DIR: &str = "LEXSERVE_MODELS_DIR";
}

/// Paths inside a model-server pod.
pub mod path {
    /// Where the sidecar's config file (the ConfigMap) is mounted.
    pub const CONFIG_DIR: &str = "/etc/lexserve";
    /// The config file's name in the ConfigMap and in [`CONFIG_DIR`].
    pub const CONFIG_FILE: &str = "config.yaml";
    /// The model volume's mount point: `fetch` puts the model there (and `serve` reads it).
    pub const MODELS_DIR: &str = "/var/lib/lexserve/models";
    /// The fetched model inside [`MODELS_DIR`] (see [`fetched_artifact`]).
    pub const MODEL_ARTIFACT: &str = "model";
    /// The fetched tokenizer inside [`MODELS_DIR`] (see [`fetched_artifact`]).
    pub const TOKENIZER_ARTIFACT: &str = "tokenizer";
    /// The fetched draft model (speculation mode `draft`) inside [`MODELS_DIR`].
    pub const DRAFT_ARTIFACT: &str = "draft";
    /// Where `pvc://<claim>/...` volumes are mounted: `<PVC_ROOT>/<claim>`.
    pub const PVC_ROOT: &str = "/mnt/pvc";
    /// Kubernetes' default termination log, where `fetch` writes its outcome.
    pub const TERMINATION_LOG: &str = "/dev/termination-log";

    /// The config file's full path in the pod.
    pub fn config_file() -> String {
        format!("{CONFIG_DIR}/{CONFIG_FILE}")
    }

    /// Where a fetched artifact is in the pod: `fetch --dest` writes it there and `serve` is
    /// pointed at it. The path IS the artifact, as [`crate::digest`] defines what a pin covers:
    /// the file itself when the source is one file (whatever its name), a directory holding the
    /// source's files when it is a directory. So `serve` digests exactly what `fetch` verified.
    pub fn fetched_artifact(artifact: &str) -> String {
        format!("{MODELS_DIR}/{artifact}")
    }
}

/// The sidecar's HTTP surface that others probe or scrape.
pub mod http {
    /// The port of the API and `/metrics`.
    pub const PORT: u16 = 8080;
    /// The container port's name.
    pub const PORT_NAME: &str = "http";
    /// Liveness: the process answers.
    pub const HEALTH_PATH: &str = "/health";
    /// Readiness: the model is loaded and warmed up, and the server is not draining.
    pub const READY_PATH: &str = "/ready";
    /// Prometheus metrics.
    pub const METRICS_PATH: &str = "/metrics";
    /// The router's endpoint for outcomes (`POST`).
    pub const OUTCOME_PATH: &str = "/outcome";
    /// The router's response header naming the variant that answered.
    pub const VARIANT_HEADER: &str = "x-lexserve-variant";
    /// The router's response header with the request's id (for `/outcome`).
    pub const REQUEST_ID_HEADER: &str = "x-lexserve-request-id";

    /// The default listen address.
    pub fn default_listen() -> String {
        format!("0.0.0.0:{PORT}")
    }
}

/// Shutdown timing. After SIGTERM the sidecar keeps serving for `runtime.shutdownDelay` (readiness
/// already false, while the endpoint removal propagates), then refuses new work and drains for at
/// most [`DRAIN_TIMEOUT_SECONDS`]; the pod's grace period covers both and leaves room for the
/// process to close its connections and exit.
pub mod drain {
    use std::time::Duration;

    pub const DRAIN_TIMEOUT_SECONDS: u64 = 30;

    /// The drain timeout as the sidecar's flag default (a Go duration).
    pub const DRAIN_TIMEOUT_TEXT: &str = "30s";

    /// What the grace period leaves beyond the delay and the drain: the sidecar's 5 s for
    /// connections to close, and the exit.
    pub const EXIT_MARGIN_SECONDS: u64 = 15;

    /// The pod's `terminationGracePeriodSeconds` for a sidecar with this shutdown delay.
    pub fn termination_grace_seconds(shutdown_delay: Duration) -> i64 {
        let delay = shutdown_delay.as_secs() + u64::from(shutdown_delay.subsec_nanos() > 0);
        i64::try_from(delay + DRAIN_TIMEOUT_SECONDS + EXIT_MARGIN_SECONDS).unwrap_or(i64::MAX)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_grace_period_covers_delay_drain_and_exit() {
            assert_eq!(termination_grace_seconds(Duration::ZERO), 45);
            assert_eq!(termination_grace_seconds(Duration::from_secs(5)), 50);
            // A fraction of a second is a whole second more, never less.
            assert_eq!(termination_grace_seconds(Duration::from_millis(1500)), 47);
        }
    }
}

/// The fetch init container's termination message on success: `sha256:<hex>` of what it verified.
pub const TERMINATION_DIGEST_PREFIX: &str = "sha256:";

/// The word after the digest in that message: `revision:<what the source resolved to>` (see
/// [`crate::fetch_report`]).
pub const TERMINATION_REVISION_PREFIX: &str = "revision:";

/// Metric names (DESIGN.md lists them; the operator's queries and the dashboards use them).
pub mod metric {
    pub const QUEUE_SIZE: &str = "lexserve_queue_size";
    pub const REQUESTS_RUNNING: &str = "lexserve_requests_running";
    /// Registered without `_total`: the exposition adds it to counters.
    pub const REQUESTS: &str = "lexserve_requests";
    pub const REQUEST_DURATION_SECONDS: &str = "lexserve_request_duration_seconds";
    pub const QUEUE_DURATION_SECONDS: &str = "lexserve_queue_duration_seconds";
    pub const INFERENCE_DURATION_SECONDS: &str = "lexserve_inference_duration_seconds";
    pub const BATCH_SIZE: &str = "lexserve_batch_size";
    pub const BATCH_TOKENS: &str = "lexserve_batch_tokens";
    pub const INPUT_TOKENS: &str = "lexserve_input_tokens";
    pub const PREDICTIONS: &str = "lexserve_predictions";
    pub const PREDICTION_CONFIDENCE: &str = "lexserve_prediction_confidence";
    pub const MODEL_LOADED: &str = "lexserve_model_loaded";
    pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "lexserve_time_to_first_token_seconds";
    pub const INTER_TOKEN_LATENCY_SECONDS: &str = "lexserve_inter_token_latency_seconds";
    pub const GENERATED_TOKENS: &str = "lexserve_generated_tokens";
    pub const KV_CACHE_USAGE_RATIO: &str = "lexserve_kv_cache_usage_ratio";
    pub const PREEMPTIONS: &str = "lexserve_preemptions";
    /// Counters (registered without `_total`): prompt tokens of admitted requests, and how many of
    /// them were found in the prefix cache (not computed); their ratio is the hit ratio.
    pub const PREFIX_CACHE_QUERY_TOKENS: &str = "lexserve_prefix_cache_query_tokens";
    pub const PREFIX_CACHE_HIT_TOKENS: &str = "lexserve_prefix_cache_hit_tokens";
    /// Gauge: KV blocks held by more than one sequence (the prefix cache's hold not counted).
    pub const KV_CACHE_SHARED_BLOCKS: &str = "lexserve_kv_cache_shared_blocks";
    /// Gauge: KV blocks the prefix cache holds (used by sequences or idle and evictable).
    pub const PREFIX_CACHE_BLOCKS: &str = "lexserve_prefix_cache_blocks";
    /// Refused KV block releases and leaked blocks: a scheduler bug, counted in release builds.
    pub const KV_CACHE_BLOCK_ERRORS: &str = "lexserve_kv_cache_block_errors";
    /// Counter: tokens drafted by speculative decoding and verified by the model.
    pub const SPECULATIVE_DRAFT_TOKENS: &str = "lexserve_speculative_draft_tokens";
    /// Counter: drafted tokens the model confirmed (emitted without a step of their own); over
    /// `SPECULATIVE_DRAFT_TOKENS`, the acceptance rate.
    pub const SPECULATIVE_ACCEPTED_TOKENS: &str = "lexserve_speculative_accepted_tokens";

    // Drift monitoring (see `crate::drift` for the buckets and the features they feed).
    /// Counter (registered without `_total`): input tokens the tokenizer mapped to its unknown
    /// token; against the sum of `lexserve_input_tokens`, the unknown-token rate.
    pub const UNKNOWN_TOKENS: &str = "lexserve_unknown_tokens";
    /// Histogram on `drift::EMBEDDING_NORM_BUCKETS`: the pooled embedding's L2 norm before
    /// normalization.
    pub const EMBEDDING_NORM: &str = "lexserve_embedding_norm";
    /// Histogram on `drift::CENTROID_COSINE_BUCKETS`: cosine to the reference sample's centroid
    /// (only with a reference sample).
    pub const EMBEDDING_CENTROID_COSINE: &str = "lexserve_embedding_centroid_cosine";
    /// Histogram on `drift::GENERATION_TOKEN_BUCKETS`: prompt tokens per generation request.
    pub const PROMPT_TOKENS: &str = "lexserve_prompt_tokens";
    /// Histogram on `drift::GENERATION_TOKEN_BUCKETS`: tokens generated per finished sequence.
    pub const OUTPUT_TOKENS: &str = "lexserve_output_tokens";
    /// Gauge `{feature,bin}`: the reference sample's count in each bin of each feature (see
    /// `crate::drift`), exported by `serve` when started with `--drift-reference`.
    pub const DRIFT_BASELINE: &str = "lexserve_drift_baseline";
    /// The operator's gauge `{namespace,inference_service,feature,measure}`: the last drift
    /// score of a feature against its baseline.
    pub const OPERATOR_DRIFT_SCORE: &str = "lexserve_operator_drift_score";
    /// The operator's gauge `{namespace,inference_service,feature}`: 1 when the last check found
    /// the feature drifted, else 0.
    pub const OPERATOR_DRIFT_DETECTED: &str = "lexserve_operator_drift_detected";

    // The experiment router. Outcome values must be finite and at least 0, so that all four
    // series only grow and a decrease means a restart (what PromQL's `increase` assumes).
    /// `{experiment,variant}` counter (registered without `_total`): requests assigned.
    pub const EXPERIMENT_ASSIGNMENTS: &str = "lexserve_experiment_assignments";
    /// `{experiment,variant,metric}` counter (registered without `_total`): outcomes reported
    /// (trials of a proportion, observations of a mean).
    pub const EXPERIMENT_OUTCOME: &str = "lexserve_experiment_outcome";
    /// `{experiment,variant,metric}`: the sum of the outcome values (successes of a proportion).
    /// Exposed under exactly this name (a float that only grows, typed gauge so that no `_total`
    /// is appended).
    pub const EXPERIMENT_OUTCOME_SUM: &str = "lexserve_experiment_outcome_sum";
    /// `{experiment,variant,metric}`: the sum of the squared outcome values, exposed like
    /// [`EXPERIMENT_OUTCOME_SUM`].
    pub const EXPERIMENT_OUTCOME_SUM_SQUARES: &str = "lexserve_experiment_outcome_sum_squares";
    /// `{experiment}` gauge: the `generation` of the router configuration being served.
    pub const ROUTER_CONFIG_GENERATION: &str = "lexserve_router_config_generation";
    /// Counter (registered without `_total`): router configuration files that could not be read
    /// or were invalid (the router kept the configuration it had).
    pub const ROUTER_CONFIG_ERRORS: &str = "lexserve_router_config_errors";
    /// `{experiment}` counter (registered without `_total`): requests with no assignment key,
    /// sent to the control and not counted as assignments (they would skew the sample ratio).
    pub const EXPERIMENT_UNASSIGNED: &str = "lexserve_experiment_unassigned";

    // The shadow mirror, in the production sidecar (see `mirror` for the label values).
    /// `{shadow,outcome}` counter (registered without `_total`): sampled requests, by what the
    /// comparison found (`agree`, `disagree`, `candidate_error`, `production_error`).
    pub const SHADOW_COMPARISONS: &str = "lexserve_shadow_comparisons";
    /// `{shadow,side}` histogram: how long production and the candidate took to answer the
    /// same request (each server's time to its answer's headers: production's as it served it,
    /// the candidate's from its `Server-Timing: app;dur=` header), recorded for every compared
    /// pair (both answered).
    pub const SHADOW_REQUEST_DURATION_SECONDS: &str = "lexserve_shadow_request_duration_seconds";
    /// `{shadow,side}` histogram on `mirror::CONFIDENCE_BUCKETS`: the top label's score of each
    /// side's answer, for compared classification pairs.
    pub const SHADOW_CONFIDENCE: &str = "lexserve_shadow_confidence";
    /// `{shadow}` histogram on `mirror::DISTANCE_BUCKETS`: each compared pair's distance in the
    /// comparison mode's measure.
    pub const SHADOW_DISTANCE: &str = "lexserve_shadow_distance";
    /// `{shadow,reason}` counter (registered without `_total`): copies not sent (`queue_full`,
    /// `too_large`, `shutdown`).
    pub const SHADOW_DROPPED: &str = "lexserve_shadow_dropped";
    /// Gauge: the `generation` of the mirror configuration in force (0 before any).
    pub const MIRROR_CONFIG_GENERATION: &str = "lexserve_mirror_config_generation";
    /// Counter (registered without `_total`): mirror configuration files that could not be read
    /// or were invalid (the sidecar kept the configuration it had).
    pub const MIRROR_CONFIG_ERRORS: &str = "lexserve_mirror_config_errors";

    /// The series that make up an InferenceService's load (waiting plus running requests): what
    /// the autoscalers act on.
    pub const LOAD: [&str; 2] = [QUEUE_SIZE, REQUESTS_RUNNING];
}

/// Label names on the sidecar's series, after the scrape config's relabelling.
pub mod label {
    /// The pod label that names a model server's InferenceService.
    pub const INFERENCE_SERVICE_POD_LABEL: &str = "lexserve.io/inference-service";
    /// The series label the scrape configs copy [`INFERENCE_SERVICE_POD_LABEL`] into.
    pub const INFERENCE_SERVICE: &str = "inference_service";
    pub const NAMESPACE: &str = "namespace";
    pub const POD: &str = "pod";
    /// Labels of the router's series.
    pub const EXPERIMENT: &str = "experiment";
    pub const VARIANT: &str = "variant";
    pub const METRIC: &str = "metric";
    /// Labels of the mirror's series.
    pub const SHADOW: &str = "shadow";
    pub const SIDE: &str = "side";
    pub const OUTCOME: &str = "outcome";
    pub const REASON: &str = "reason";
    /// Drift monitoring: the feature (`drift::Feature::label`), the bin, the measure.
    pub const FEATURE: &str = "feature";
    pub const BIN: &str = "bin";
    pub const MEASURE: &str = "measure";
}
