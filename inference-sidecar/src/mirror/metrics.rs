//! The mirror's series (names in `contract::names::metric`, label values in
//! `contract::mirror`): what the operator's analysis reads per shadow, and the configuration
//! generation it waits for. Registered in the model server's own registry (one `/metrics`).

use lexserve_contract::mirror::{
    CONFIDENCE_BUCKETS, ComparisonMode, DISTANCE_BUCKETS, drop_reason, outcome, side,
};
use lexserve_contract::names::metric;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Active;
use crate::metrics::seconds_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub shadow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub shadow: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideLabels {
    pub shadow: String,
    pub side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub shadow: String,
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn confidence_histogram() -> Histogram {
    Histogram::new(CONFIDENCE_BUCKETS)
}

fn distance_histogram() -> Histogram {
    Histogram::new(DISTANCE_BUCKETS)
}

#[derive(Clone)]
pub struct MirrorMetrics {
    pub comparisons: Family<OutcomeLabels, Counter>,
    pub request_duration: HistogramFamily<SideLabels>,
    pub confidence: HistogramFamily<SideLabels>,
    pub distance: HistogramFamily<ShadowLabels>,
    pub dropped: Family<DropLabels, Counter>,
    pub generation: Gauge,
    pub config_errors: Counter,
}

impl MirrorMetrics {
    /// The series, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            comparisons: Family::default(),
            request_duration: Family::new_with_constructor(seconds_histogram),
            confidence: Family::new_with_constructor(confidence_histogram),
            distance: Family::new_with_constructor(distance_histogram),
            dropped: Family::default(),
            generation: Gauge::default(),
            config_errors: Counter::default(),
        };
        // The OpenMetrics encoder appends `_total` to counters.
        registry.register(
            metric::SHADOW_COMPARISONS,
            "Requests mirrored to a shadow, by what came of the pair (agree, disagree, candidate_error, production_error)",
            metrics.comparisons.clone(),
        );
        registry.register(
            metric::SHADOW_REQUEST_DURATION_SECONDS,
            "Time each side took from the request to the end of its answer, for compared pairs",
            metrics.request_duration.clone(),
        );
        registry.register(
            metric::SHADOW_CONFIDENCE,
            "Top label's score of each side's answer, for compared classification pairs",
            metrics.confidence.clone(),
        );
        registry.register(
            metric::SHADOW_DISTANCE,
            "Distance between the two answers of a compared pair, in the comparison mode's measure",
            metrics.distance.clone(),
        );
        registry.register(
            metric::SHADOW_DROPPED,
            "Copies not sent to a shadow (queue_full, too_large, shutdown)",
            metrics.dropped.clone(),
        );
        registry.register(
            metric::MIRROR_CONFIG_GENERATION,
            "Generation of the mirror configuration in force (0 before any)",
            metrics.generation.clone(),
        );
        registry.register(
            metric::MIRROR_CONFIG_ERRORS,
            "Mirror configuration files that could not be read or were invalid (the previous one was kept)",
            metrics.config_errors.clone(),
        );
        metrics
    }

    /// A configuration came into force: its generation, and every series of each target at 0,
    /// so that `increase` over the shadow's life counts from zero.
    pub fn configured(&self, active: &Active) {
        self.generation
            .set(i64::try_from(active.generation).unwrap_or(i64::MAX));
        for target in active.targets.iter().map(|t| &t.target) {
            let shadow = &target.spec.shadow;
            for outcome in [
                outcome::AGREE,
                outcome::DISAGREE,
                outcome::CANDIDATE_ERROR,
                outcome::PRODUCTION_ERROR,
            ] {
                let _ = self
                    .comparisons
                    .get_or_create(&outcome_labels(shadow, outcome));
            }
            for reason in [
                drop_reason::QUEUE_FULL,
                drop_reason::TOO_LARGE,
                drop_reason::SHUTDOWN,
            ] {
                let _ = self.dropped.get_or_create(&drop_labels(shadow, reason));
            }
            let classification = matches!(
                target.spec.comparison.mode,
                ComparisonMode::Label | ComparisonMode::TopK
            );
            for side in [side::PRODUCTION, side::CANDIDATE] {
                let _ = self
                    .request_duration
                    .get_or_create(&side_labels(shadow, side));
                if classification {
                    let _ = self.confidence.get_or_create(&side_labels(shadow, side));
                }
            }
            let _ = self.distance.get_or_create(&ShadowLabels {
                shadow: shadow.clone(),
            });
        }
    }

    pub fn outcome(&self, shadow: &str, outcome: &'static str) {
        self.comparisons
            .get_or_create(&outcome_labels(shadow, outcome))
            .inc();
    }

    pub fn dropped(&self, shadow: &str, reason: &'static str) {
        self.dropped
            .get_or_create(&drop_labels(shadow, reason))
            .inc();
    }

    pub fn duration(&self, shadow: &str, side: &'static str, seconds: f64) {
        self.request_duration
            .get_or_create(&side_labels(shadow, side))
            .observe(seconds);
    }

    pub fn confidence(&self, shadow: &str, side: &'static str, score: f64) {
        self.confidence
            .get_or_create(&side_labels(shadow, side))
            .observe(score);
    }

    pub fn distance(&self, shadow: &str, distance: f64) {
        self.distance
            .get_or_create(&ShadowLabels {
                shadow: shadow.to_string(),
            })
            .observe(distance);
    }
}

fn outcome_labels(shadow: &str, outcome: &'static str) -> OutcomeLabels {
    OutcomeLabels {
        shadow: shadow.to_string(),
        outcome,
    }
}

fn side_labels(shadow: &str, side: &'static str) -> SideLabels {
    SideLabels {
        shadow: shadow.to_string(),
        side,
    }
}

fn drop_labels(shadow: &str, reason: &'static str) -> DropLabels {
    DropLabels {
        shadow: shadow.to_string(),
        reason,
    }
}
