//! The operator's own metrics (`/metrics`) and logging setup.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::InferenceService;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// One count of an InferenceService's replicas.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub namespace: String,
    pub inference_service: String,
    /// `desired` (what the Deployment asks for: the autoscaler's decision), `current` (that
    /// exist) or `ready`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

/// One API request a reconcile of `kind` made.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    pub kind: String,
    pub verb: String,
    pub resource: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Reconcile counts, errors by reason, durations, and whether this replica leads.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub reconciliations: Family<KindLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub writes: Family<KindLabels, Counter>,
    pub leader: Gauge,
    /// External metric requests answered, by HTTP status code.
    pub metrics_api_requests: Family<CodeLabels, Counter>,
    /// Scaling-signal checks that found the signal missing, by reason.
    pub signal_missing: Family<ReasonLabels, Counter>,
    /// API requests made by reconciles (watches excluded), by reconciled kind, verb and
    /// resource: divided by `reconciliations`, the cost of a reconcile.
    pub api_requests: Family<ApiRequestLabels, Counter>,
    /// Children re-applied because a field the operator sets was changed, by child kind.
    pub drift_corrections: Family<KindLabels, Counter>,
    /// The InferenceService cache the replica counts are read from at each scrape (set once the
    /// caches are filled; none before).
    inference_services: Arc<OnceLock<Store<InferenceService>>>,
}

/// `lexserve_operator_inference_service_replicas{namespace,inference_service,state}`, read from
/// the InferenceServices' status at each scrape: a deleted InferenceService's series go with it
/// (no stale gauges), and dashboards get desired and ready replicas without kube-state-metrics.
#[derive(Debug)]
struct ReplicaCollector {
    inference_services: Arc<OnceLock<Store<InferenceService>>>,
}

impl Collector for ReplicaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<ReplicaLabels, Gauge>::default();
        for isvc in self
            .inference_services
            .get()
            .map(Store::state)
            .unwrap_or_default()
        {
            let Some(status) = isvc.status.as_ref() else {
                continue;
            };
            for (state, count) in [
                ("desired", status.desired_replicas),
                ("current", status.replicas),
                ("ready", status.ready_replicas),
            ] {
                if let Some(count) = count {
                    family
                        .get_or_create(&ReplicaLabels {
                            namespace: isvc.namespace().unwrap_or_default(),
                            inference_service: isvc.name_any(),
                            state,
                        })
                        .set(i64::from(count));
                }
            }
        }
        let metric = encoder.encode_descriptor(
            "inference_service_replicas",
            "Replicas of each InferenceService's model server: desired (the autoscaler's decision), current and ready",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

/// One drift score of an InferenceService.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftScoreLabels {
    pub namespace: String,
    pub inference_service: String,
    /// `drift::Feature::label` (`input_tokens`, ...).
    pub feature: &'static str,
    /// `drift::Measure::label` (`psi`, `js`, `ks`).
    pub measure: &'static str,
}

/// Whether one feature of an InferenceService drifted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftFeatureLabels {
    pub namespace: String,
    pub inference_service: String,
    pub feature: &'static str,
}

/// `lexserve_operator_drift_score{namespace,inference_service,feature,measure}` and
/// `lexserve_operator_drift_detected{namespace,inference_service,feature}`: the last drift
/// check's scores and verdicts, read from the InferenceServices' `status.drift` at each scrape (the status is
/// the record; a service that stops monitoring drift loses its series with it).
#[derive(Debug)]
struct DriftScoreCollector {
    inference_services: Arc<OnceLock<Store<InferenceService>>>,
}

impl Collector for DriftScoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use lexserve_contract::drift::Measure;
        let family = Family::<DriftScoreLabels, Gauge<f64, AtomicU64>>::default();
        let drifted = Family::<DriftFeatureLabels, Gauge>::default();
        for isvc in self
            .inference_services
            .get()
            .map(Store::state)
            .unwrap_or_default()
        {
            let Some(drift) = isvc.status.as_ref().and_then(|s| s.drift.as_ref()) else {
                continue;
            };
            for feature in &drift.features {
                drifted
                    .get_or_create(&DriftFeatureLabels {
                        namespace: isvc.namespace().unwrap_or_default(),
                        inference_service: isvc.name_any(),
                        feature: feature.feature.label(),
                    })
                    .set(i64::from(feature.drifted));
                for (measure, score) in [
                    (Measure::Psi, feature.psi),
                    (Measure::JensenShannon, feature.jensen_shannon),
                    (Measure::KolmogorovSmirnov, feature.kolmogorov_smirnov),
                ] {
                    if let Some(score) = score {
                        family
                            .get_or_create(&DriftScoreLabels {
                                namespace: isvc.namespace().unwrap_or_default(),
                                inference_service: isvc.name_any(),
                                feature: feature.feature.label(),
                                measure: measure.label(),
                            })
                            .set(score);
                    }
                }
            }
        }
        let metric = encoder.encode_descriptor(
            "drift_score",
            "The last drift check's score of each feature of an InferenceService against its baseline, by measure (psi, js, ks)",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)?;
        let metric = encoder.encode_descriptor(
            "drift_detected",
            "1 when the last drift check found the feature drifted past its thresholds (the DriftDetected condition), else 0",
            None,
            drifted.metric_type(),
        )?;
        drifted.encode(metric)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lexserve_operator");
        let reconciliations = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let writes = Family::<KindLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "reconciliations",
            "Reconciles run, by kind",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took",
            duration.clone(),
        );
        registry.register(
            "child_writes",
            "Children applied or deleted, by kind of parent",
            writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let metrics_api_requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            "metrics_api_requests",
            "external.metrics.k8s.io value requests answered, by HTTP status code",
            metrics_api_requests.clone(),
        );
        let signal_missing = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "scaling_signal_missing",
            "Scaling-signal checks that found an InferenceService's load signal missing, by reason",
            signal_missing.clone(),
        );
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests made by reconciles (not watches), by reconciled kind, verb and resource",
            api_requests.clone(),
        );
        let drift_corrections = Family::<KindLabels, Counter>::default();
        registry.register(
            "drift_corrections",
            "Children re-applied because a field the operator sets had been changed, by child kind",
            drift_corrections.clone(),
        );
        let inference_services = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(ReplicaCollector {
            inference_services: inference_services.clone(),
        }));
        registry.register_collector(Box::new(DriftScoreCollector {
            inference_services: inference_services.clone(),
        }));
        Self {
            registry: Arc::new(registry),
            inference_services,
            api_requests,
            drift_corrections,
            metrics_api_requests,
            signal_missing,
            reconciliations,
            errors,
            duration,
            writes,
            leader,
        }
    }
}

impl Metrics {
    /// Exports the replica counts of the InferenceServices in `store` from now on.
    pub fn watch_inference_services(&self, store: Store<InferenceService>) {
        let _ = self.inference_services.set(store);
    }

    /// Counts one reconcile of `kind` that took `elapsed`.
    pub fn reconciled(&self, kind: &str, elapsed: Duration) {
        let labels = KindLabels {
            kind: kind.to_string(),
        };
        self.reconciliations.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, kind: &str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one API request of a reconcile of `kind`.
    pub fn api_request(&self, kind: &str, verb: &str, resource: &str) {
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                kind: kind.to_string(),
                verb: verb.to_string(),
                resource: resource.to_string(),
            })
            .inc();
    }

    /// Counts one drift correction of a child of `kind`.
    pub fn drift_corrected(&self, kind: &str) {
        self.drift_corrections
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts one answered external metric request.
    pub fn metrics_api_request(&self, code: &str) {
        self.metrics_api_requests
            .get_or_create(&CodeLabels {
                code: code.to_string(),
            })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Logs as JSON lines (or plain text for people at a terminal), filtered by `RUST_LOG`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
