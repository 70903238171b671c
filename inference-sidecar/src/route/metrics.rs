//! The router's series: the experiment's assignments and outcomes (what the analysis reads), the
//! configuration generation in force (what the operator waits for), and the model server's own
//! request series under the same names, so that the router autoscales on the same load signal.

use std::sync::atomic::AtomicU64;

use lexserve_contract::names::metric;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::config::Routing;
use crate::metrics::{RouteLabels, seconds_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExperimentLabels {
    pub experiment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VariantLabels {
    pub experiment: String,
    pub variant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub experiment: String,
    pub variant: String,
    pub metric: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct RouterMetrics {
    registry: Registry,
    pub requests_total: Family<RouteLabels, Counter>,
    /// Requests admitted and not yet answered to the end (a stream counts for its whole life).
    pub requests_running: Gauge,
    pub request_duration: Histogram,
    pub assignments: Family<VariantLabels, Counter>,
    pub unassigned: Family<ExperimentLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Counter>,
    pub outcome_sum: Family<OutcomeLabels, FloatGauge>,
    pub outcome_sum_squares: Family<OutcomeLabels, FloatGauge>,
    pub generation: Family<ExperimentLabels, Gauge>,
    pub config_errors: Counter,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RouterMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            requests_total: Family::default(),
            requests_running: Gauge::default(),
            request_duration: seconds_histogram(),
            assignments: Family::default(),
            unassigned: Family::default(),
            outcomes: Family::default(),
            outcome_sum: Family::default(),
            outcome_sum_squares: Family::default(),
            generation: Family::default(),
            config_errors: Counter::default(),
            registry: Registry::default(),
        };
        // The router queues nothing: the gauge is there, at 0, so that the load query (waiting
        // plus running) finds both series as it does for a model server.
        let queue_size = Gauge::<i64>::default();
        registry.register(
            metric::QUEUE_SIZE,
            "Requests waiting (the router forwards at once: always 0)",
            queue_size,
        );
        registry.register(
            metric::REQUESTS_RUNNING,
            "Requests admitted and not yet answered to the end",
            metrics.requests_running.clone(),
        );
        registry.register(
            metric::REQUESTS,
            "HTTP requests by route and status code",
            metrics.requests_total.clone(),
        );
        registry.register(
            metric::REQUEST_DURATION_SECONDS,
            "Time from receiving a request to the upstream's response headers",
            metrics.request_duration.clone(),
        );
        registry.register(
            metric::EXPERIMENT_ASSIGNMENTS,
            "Requests assigned to each variant (by key or at random)",
            metrics.assignments.clone(),
        );
        registry.register(
            metric::EXPERIMENT_UNASSIGNED,
            "Requests without an assignment key: sent to the control, not counted as assignments",
            metrics.unassigned.clone(),
        );
        registry.register(
            metric::EXPERIMENT_OUTCOME,
            "Outcomes reported per variant and metric",
            metrics.outcomes.clone(),
        );
        registry.register(
            metric::EXPERIMENT_OUTCOME_SUM,
            "Sum of the outcome values per variant and metric",
            metrics.outcome_sum.clone(),
        );
        registry.register(
            metric::EXPERIMENT_OUTCOME_SUM_SQUARES,
            "Sum of the squared outcome values per variant and metric",
            metrics.outcome_sum_squares.clone(),
        );
        registry.register(
            metric::ROUTER_CONFIG_GENERATION,
            "Generation of the router configuration in force",
            metrics.generation.clone(),
        );
        registry.register(
            metric::ROUTER_CONFIG_ERRORS,
            "Configuration files that could not be read or were invalid (the previous one was kept)",
            metrics.config_errors.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// A configuration came into force: its generation, and every series it can produce at 0,
    /// so that `increase` over the experiment's life counts from zero rather than from the
    /// first value it happens to see.
    pub fn configured(&self, routing: &Routing) {
        let config = &routing.config;
        let experiment = ExperimentLabels {
            experiment: config.experiment.clone(),
        };
        self.generation
            .get_or_create(&experiment)
            .set(i64::try_from(config.generation).unwrap_or(i64::MAX));
        let _ = self.unassigned.get_or_create(&experiment);
        for variant in &config.variants {
            let _ = self.assignments.get_or_create(&VariantLabels {
                experiment: config.experiment.clone(),
                variant: variant.name.clone(),
            });
            for name in &config.outcomes {
                let labels = OutcomeLabels {
                    experiment: config.experiment.clone(),
                    variant: variant.name.clone(),
                    metric: name.clone(),
                };
                let _ = self.outcomes.get_or_create(&labels);
                let _ = self.outcome_sum.get_or_create(&labels);
                let _ = self.outcome_sum_squares.get_or_create(&labels);
            }
        }
    }

    /// One outcome: the count, the sum and the sum of squares move together.
    pub fn record_outcome(&self, labels: &OutcomeLabels, value: f64) {
        self.outcomes.get_or_create(labels).inc();
        self.outcome_sum.get_or_create(labels).inc_by(value);
        self.outcome_sum_squares
            .get_or_create(labels)
            .inc_by(value * value);
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
