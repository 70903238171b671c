//! Prometheus metrics. The names are a contract with the operator (the autoscaler reads
//! `lexserve_queue_size` and `lexserve_requests_running`) and the dashboards: change them only with both.
//!
//! Units: the queue and running gauges count sequences — texts through the encoder, or generation
//! requests (waiting for admission, or in the running batch) — so "waiting + running" is the load a
//! replica carries whatever the request sizes.

use lexserve_contract::drift::{
    CENTROID_COSINE_BUCKETS, CONFIDENCE_BUCKETS, EMBEDDING_NORM_BUCKETS, GENERATION_TOKEN_BUCKETS,
    INPUT_TOKEN_BUCKETS,
};
use lexserve_contract::names::metric;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub version: String,
}

/// `lexserve_drift_baseline`'s labels (`names::label::FEATURE`, `names::label::BIN`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftBinLabels {
    pub feature: String,
    pub bin: String,
}

/// `lexserve_encoder_variant_seconds`'s labels: a form of the weights (`int8`, `fp32`), whether it is
/// the one served, and whether it ran faster at start-up (`true`/`false`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VariantLabels {
    pub variant: String,
    pub serving: String,
    pub faster: String,
}

/// The start-up comparison of the model's int8 and fp32 forms (`encoder::variant`).
pub const ENCODER_VARIANT_SECONDS: &str = "lexserve_encoder_variant_seconds";

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub(crate) fn seconds_histogram() -> Histogram {
    // 100µs .. ~26s
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

fn confidence_histogram() -> Histogram {
    Histogram::new(CONFIDENCE_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    pub queue_size: Gauge,
    pub requests_running: Gauge,
    pub requests_total: Family<RouteLabels, Counter>,
    pub request_duration: Histogram,
    pub queue_duration: Histogram,
    pub inference_duration: Histogram,
    pub batch_size: Histogram,
    pub batch_tokens: Histogram,
    pub input_tokens: Histogram,
    pub predictions_total: Family<ClassLabels, Counter>,
    pub prediction_confidence: HistogramFamily<ClassLabels>,
    pub model_loaded: Family<ModelLabels, Gauge>,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub generated_tokens: Counter,
    pub speculative_draft_tokens: Counter,
    pub speculative_accepted_tokens: Counter,
    pub kv_cache_usage_ratio: Gauge<f64, AtomicU64>,
    pub preemptions: Counter,
    pub kv_cache_block_errors: Counter,
    pub prefix_cache_query_tokens: Counter,
    pub prefix_cache_hit_tokens: Counter,
    pub kv_cache_shared_blocks: Gauge,
    pub prefix_cache_blocks: Gauge,
    // Drift monitoring (`lexserve_contract::drift`).
    pub unknown_tokens: Counter,
    pub embedding_norm: Histogram,
    /// Registered only for an embedding model with a reference sample (no centroid otherwise).
    pub embedding_centroid_cosine: Histogram,
    pub prompt_tokens: Histogram,
    pub output_tokens: Histogram,
    /// Registered only with a reference sample.
    pub drift_baseline: Family<DriftBinLabels, Gauge>,
    /// Median seconds per start-up batch of each form of the weights, when the model has both.
    pub encoder_variant_seconds: Family<VariantLabels, Gauge<f64, AtomicU64>>,
    /// The shadow mirror's series (in the same registry: one `/metrics`).
    pub mirror: crate::mirror::metrics::MirrorMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::build(false, false)
    }

    /// With the series only a reference sample gives: its baseline, and with `centroid` (an
    /// embedding model) the cosine of live embeddings to the sample's centroid.
    pub fn with_reference_sample(centroid: bool) -> Self {
        Self::build(true, centroid)
    }

    fn build(reference_sample: bool, centroid: bool) -> Self {
        let mut registry = Registry::default();
        let queue_size = Gauge::default();
        let requests_running = Gauge::default();
        let requests_total = Family::<RouteLabels, Counter>::default();
        let request_duration = seconds_histogram();
        let queue_duration = seconds_histogram();
        let inference_duration = seconds_histogram();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let batch_tokens = Histogram::new(exponential_buckets(16.0, 2.0, 12));
        let input_tokens = Histogram::new(INPUT_TOKEN_BUCKETS);
        let predictions_total = Family::<ClassLabels, Counter>::default();
        let prediction_confidence: HistogramFamily<ClassLabels> =
            Family::new_with_constructor(confidence_histogram);
        let model_loaded = Family::<ModelLabels, Gauge>::default();
        let time_to_first_token = seconds_histogram();
        let inter_token_latency = seconds_histogram();
        let generated_tokens = Counter::default();
        let speculative_draft_tokens = Counter::default();
        let speculative_accepted_tokens = Counter::default();
        let kv_cache_usage_ratio = Gauge::<f64, AtomicU64>::default();
        let preemptions = Counter::default();
        let kv_cache_block_errors = Counter::default();
        let prefix_cache_query_tokens = Counter::default();
        let prefix_cache_hit_tokens = Counter::default();
        let kv_cache_shared_blocks = Gauge::default();
        let prefix_cache_blocks = Gauge::default();
        let unknown_tokens = Counter::default();
        let embedding_norm = Histogram::new(EMBEDDING_NORM_BUCKETS);
        let embedding_centroid_cosine = Histogram::new(CENTROID_COSINE_BUCKETS);
        let prompt_tokens = Histogram::new(GENERATION_TOKEN_BUCKETS);
        let output_tokens = Histogram::new(GENERATION_TOKEN_BUCKETS);
        let drift_baseline = Family::<DriftBinLabels, Gauge>::default();
        let encoder_variant_seconds = Family::<VariantLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            ENCODER_VARIANT_SECONDS,
            "Median seconds per start-up batch of each form of the model's weights (int8, fp32), \
             timed on this CPU when the model folder holds both",
            encoder_variant_seconds.clone(),
        );

        registry.register(
            metric::QUEUE_SIZE,
            "Texts waiting in the batching queue",
            queue_size.clone(),
        );
        registry.register(
            metric::REQUESTS_RUNNING,
            "Texts being worked on outside the queue: tokenized, in the running batch, or answered (with lexserve_queue_size, a request counts from admission to answer)",
            requests_running.clone(),
        );
        // The OpenMetrics encoder appends `_total` to counters.
        registry.register(
            metric::REQUESTS,
            "HTTP requests by route and status code",
            requests_total.clone(),
        );
        registry.register(
            metric::REQUEST_DURATION_SECONDS,
            "Time from receiving an inference request to answering it",
            request_duration.clone(),
        );
        registry.register(
            metric::QUEUE_DURATION_SECONDS,
            "Time a text waited in the queue before its batch started",
            queue_duration.clone(),
        );
        registry.register(
            metric::INFERENCE_DURATION_SECONDS,
            "Time the backend took per batch, post-processing included",
            inference_duration.clone(),
        );
        registry.register(metric::BATCH_SIZE, "Texts per batch", batch_size.clone());
        registry.register(
            metric::BATCH_TOKENS,
            "Padded tokens per batch (texts x longest text)",
            batch_tokens.clone(),
        );
        registry.register(
            metric::INPUT_TOKENS,
            "Tokens per input text after truncation",
            input_tokens.clone(),
        );
        registry.register(
            metric::PREDICTIONS,
            "Classifications by predicted class",
            predictions_total.clone(),
        );
        registry.register(
            metric::PREDICTION_CONFIDENCE,
            "Probability of the predicted class",
            prediction_confidence.clone(),
        );
        registry.register(
            metric::MODEL_LOADED,
            "1 when the model is loaded and warmed up",
            model_loaded.clone(),
        );
        registry.register(
            metric::TIME_TO_FIRST_TOKEN_SECONDS,
            "Time from receiving a generation request to its first generated token",
            time_to_first_token.clone(),
        );
        registry.register(
            metric::INTER_TOKEN_LATENCY_SECONDS,
            "Time between consecutive generated tokens of one sequence",
            inter_token_latency.clone(),
        );
        registry.register(
            metric::GENERATED_TOKENS,
            "Tokens generated",
            generated_tokens.clone(),
        );
        registry.register(
            metric::SPECULATIVE_DRAFT_TOKENS,
            "Tokens drafted by speculative decoding and verified by the model",
            speculative_draft_tokens.clone(),
        );
        registry.register(
            metric::SPECULATIVE_ACCEPTED_TOKENS,
            "Drafted tokens the model confirmed; over the drafted ones, the acceptance rate",
            speculative_accepted_tokens.clone(),
        );
        registry.register(
            metric::KV_CACHE_USAGE_RATIO,
            "Share of the KV cache's blocks held by sequences (idle prefix-cache blocks count as free)",
            kv_cache_usage_ratio.clone(),
        );
        registry.register(
            metric::PREEMPTIONS,
            "Sequences preempted (cache freed, recomputed later) because the KV cache ran out of blocks",
            preemptions.clone(),
        );
        registry.register(
            metric::PREFIX_CACHE_QUERY_TOKENS,
            "Prompt tokens of admitted requests, looked up in the prefix cache",
            prefix_cache_query_tokens.clone(),
        );
        registry.register(
            metric::PREFIX_CACHE_HIT_TOKENS,
            "Prompt tokens found in the prefix cache (taken by reference, not computed)",
            prefix_cache_hit_tokens.clone(),
        );
        registry.register(
            metric::KV_CACHE_SHARED_BLOCKS,
            "KV cache blocks held by more than one sequence (a shared prefix, held once)",
            kv_cache_shared_blocks.clone(),
        );
        registry.register(
            metric::PREFIX_CACHE_BLOCKS,
            "KV cache blocks the prefix cache holds (evicted first when blocks run out)",
            prefix_cache_blocks.clone(),
        );
        registry.register(
            metric::KV_CACHE_BLOCK_ERRORS,
            "KV cache blocks freed twice or leaked (a bookkeeping bug; debug builds stop instead)",
            kv_cache_block_errors.clone(),
        );
        // Registered without `_total` in the name: the encoder appends it.
        registry.register(
            metric::UNKNOWN_TOKENS,
            "Input tokens that are the tokenizer's unknown token (embed, classify)",
            unknown_tokens.clone(),
        );
        registry.register(
            metric::EMBEDDING_NORM,
            "L2 norm of each pooled embedding before normalization",
            embedding_norm.clone(),
        );
        registry.register(
            metric::PROMPT_TOKENS,
            "Prompt tokens per generation request",
            prompt_tokens.clone(),
        );
        registry.register(
            metric::OUTPUT_TOKENS,
            "Tokens generated per finished sequence",
            output_tokens.clone(),
        );
        if reference_sample && centroid {
            registry.register(
                metric::EMBEDDING_CENTROID_COSINE,
                "Cosine between each embedding and the reference sample's centroid",
                embedding_centroid_cosine.clone(),
            );
        }
        if reference_sample {
            registry.register(
                metric::DRIFT_BASELINE,
                "The reference sample's count in each bin of each drift feature",
                drift_baseline.clone(),
            );
        }
        let mirror = crate::mirror::metrics::MirrorMetrics::register(&mut registry);
        Self {
            registry,
            mirror,
            queue_size,
            requests_running,
            requests_total,
            request_duration,
            queue_duration,
            inference_duration,
            batch_size,
            batch_tokens,
            input_tokens,
            predictions_total,
            prediction_confidence,
            model_loaded,
            time_to_first_token,
            inter_token_latency,
            generated_tokens,
            speculative_draft_tokens,
            speculative_accepted_tokens,
            kv_cache_usage_ratio,
            preemptions,
            kv_cache_block_errors,
            prefix_cache_query_tokens,
            prefix_cache_hit_tokens,
            kv_cache_shared_blocks,
            prefix_cache_blocks,
            unknown_tokens,
            embedding_norm,
            embedding_centroid_cosine,
            prompt_tokens,
            output_tokens,
            drift_baseline,
            encoder_variant_seconds,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn record_prediction(&self, class: &str, confidence: f32) {
        let labels = ClassLabels {
            class: class.to_string(),
        };
        self.predictions_total.get_or_create(&labels).inc();
        self.prediction_confidence
            .get_or_create(&labels)
            .observe(f64::from(confidence));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_contract_names() {
        let metrics = Metrics::new();
        let _ = metrics.requests_total.get_or_create(&RouteLabels {
            route: "/embed".into(),
            code: "200".into(),
        });
        metrics.record_prediction("pos", 0.9);
        let _ = metrics.model_loaded.get_or_create(&ModelLabels {
            model: "m".into(),
            version: "1".into(),
        });
        let text = metrics.encode().unwrap();
        for name in [
            "lexserve_queue_size ",
            "lexserve_requests_running ",
            "lexserve_requests_total{route=\"/embed\",code=\"200\"}",
            "lexserve_request_duration_seconds_bucket",
            "lexserve_queue_duration_seconds_bucket",
            "lexserve_inference_duration_seconds_bucket",
            "lexserve_batch_size_bucket",
            "lexserve_batch_tokens_bucket",
            "lexserve_input_tokens_bucket",
            "lexserve_predictions_total{class=\"pos\"}",
            "lexserve_prediction_confidence_bucket{le=\"0.9\",class=\"pos\"}",
            "lexserve_model_loaded{model=\"m\",version=\"1\"}",
            "lexserve_time_to_first_token_seconds_bucket",
            "lexserve_inter_token_latency_seconds_bucket",
            "lexserve_generated_tokens_total ",
            "lexserve_speculative_draft_tokens_total ",
            "lexserve_speculative_accepted_tokens_total ",
            "lexserve_kv_cache_usage_ratio ",
            "lexserve_preemptions_total ",
            "lexserve_kv_cache_block_errors_total ",
            "lexserve_prefix_cache_query_tokens_total ",
            "lexserve_prefix_cache_hit_tokens_total ",
            "lexserve_kv_cache_shared_blocks ",
            "lexserve_prefix_cache_blocks ",
            "lexserve_unknown_tokens_total ",
            "lexserve_embedding_norm_bucket{le=\"20.0\"}",
            "lexserve_prompt_tokens_bucket{le=\"4096.0\"}",
            "lexserve_output_tokens_bucket{le=\"8.0\"}",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        // Only a reference sample gives a centroid and a baseline.
        assert!(!text.contains("lexserve_embedding_centroid_cosine"));
        assert!(!text.contains("lexserve_drift_baseline"));
        let text = Metrics::with_reference_sample(false).encode().unwrap();
        assert!(!text.contains("lexserve_embedding_centroid_cosine"));
        let metrics = Metrics::with_reference_sample(true);
        metrics
            .drift_baseline
            .get_or_create(&DriftBinLabels {
                feature: "input_tokens".into(),
                bin: "+Inf".into(),
            })
            .set(3);
        let text = metrics.encode().unwrap();
        assert!(text.contains("lexserve_embedding_centroid_cosine_bucket{le=\"-0.5\"}"));
        assert!(text.contains("lexserve_drift_baseline{feature=\"input_tokens\",bin=\"+Inf\"} 3"));
    }
}
