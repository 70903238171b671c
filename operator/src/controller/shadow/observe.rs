//! Reads a ShadowDeployment's numbers from Prometheus for its verdict (`analysis::shadow`): the
//! mirror's series of the production InferenceService's pods, cumulative since the shadow
//! started mirroring. Every series is selected by
//!
//! ```text
//! {namespace="<ns>", inference_service="<spec.production>", shadow="<name>"}
//! ```
//!
//! (the labels the scrape configs put on the sidecars' series, and the mirror's own `shadow`),
//! and read with five queries, whatever the number of pods:
//!
//! ```text
//! sum by (outcome) (increase(lexserve_shadow_comparisons_total{..}[<window>ms]))
//! sum by (reason) (increase(lexserve_shadow_dropped_total{..}[<window>ms]))
//! histogram_quantile(q, sum by (le, side) (increase(lexserve_shadow_request_duration_seconds_bucket{..}[<window>ms])))
//!     for q = 0.5, 0.95, 0.99
//! sum by (le, side) (increase(lexserve_shadow_confidence_bucket{..}[<window>ms]))
//! ```
//!
//! evaluated at the newest scrape of the shadow's counters, the window reaching back from there
//! to the shadow's start: the same rules as the Experiment's reader (`experiment::observe`
//! explains counter resets, extrapolation and why the window ends at a scrape). A production pod
//! that restarts keeps what it counted before its last scrape; a replaced pod is a new series
//! that `sum` adds. The sidecar registers every series of a target at 0 when the target is
//! configured (as the router does for an experiment): a series whose first scrape already
//! counts something loses (most of) that first count to `increase`.
//!
//! The percentiles are `histogram_quantile`'s: exact to the width of the bucket they fall in
//! (linear interpolation inside it). The confidence bins are the differences of the cumulative
//! `le` buckets, one per bound of `mirror::CONFIDENCE_BUCKETS`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::ResourceExt;
use lexserve_contract::mirror::{CONFIDENCE_BUCKETS, outcome, side};
use lexserve_contract::names::{label, metric};

use crate::analysis::shadow::{ShadowCounts, ShadowObservation};
use crate::api::shadow_deployment::{LatencyPercentiles, ShadowDeployment};
use crate::controller::promql::{Failure, PrometheusClient, Sample, escape, instant};

/// Reads the shadow's series of its production InferenceService's pods (labels namespace,
/// inference_service=<spec.production>, shadow=<name>), cumulative over `since_start` (PromQL
/// `increase`). Unreachable -> ShadowObservation::Unreachable; no series -> NoData. Never an
/// error.
pub async fn observe(
    prometheus: &PrometheusClient,
    shadow: &ShadowDeployment,
    since_start: Duration,
) -> ShadowObservation {
    let namespace = shadow.namespace().unwrap_or_default();
    let name = shadow.name_any();
    let series = MirrorSeries {
        namespace: &namespace,
        production: &shadow.spec.production,
        shadow: Some(&name),
    };
    match read(prometheus, &series, since_start).await {
        Ok(Ok(counts)) => ShadowObservation::Data(counts),
        Ok(Err(reason)) => ShadowObservation::NoData {
            reason: format!("shadow {namespace}/{name}: {reason}"),
        },
        Err(Failure::Unreachable(error)) => ShadowObservation::Unreachable { error },
        // The queries are ours: Prometheus rejecting one is a bug, reported as no data.
        Err(Failure::Rejected(error)) => ShadowObservation::NoData {
            reason: format!("Prometheus rejected a query of shadow {namespace}/{name}: {error}"),
        },
    }
}

/// The lowest `lexserve_mirror_config_generation` over production's pods (None: no series /
/// unreachable).
pub async fn mirror_generation_live(
    prometheus: &PrometheusClient,
    namespace: &str,
    production: &str,
) -> Option<u64> {
    let series = MirrorSeries {
        namespace,
        production,
        shadow: None,
    };
    let text = format!("min({})", series.select(metric::MIRROR_CONFIG_GENERATION));
    let samples = instant(prometheus, &text, None).await.ok()?;
    let (_, lowest) = samples.first()?;
    (lowest.is_finite() && *lowest >= 0.0).then(|| lowest.round() as u64)
}

/// The counts, or why there are none yet.
async fn read(
    prometheus: &PrometheusClient,
    series: &MirrorSeries<'_>,
    since_start: Duration,
) -> Result<Result<ShadowCounts, String>, Failure> {
    let comparisons = format!("{}_total", metric::SHADOW_COMPARISONS);
    let dropped = format!("{}_total", metric::SHADOW_DROPPED);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    // Copies that were all dropped are numbers too: the newest scrape of either counter.
    let newest = instant(
        prometheus,
        &format!(
            "max(timestamp({}) or timestamp({}))",
            series.select(&comparisons),
            series.select(&dropped)
        ),
        None,
    )
    .await?;
    let Some(&(_, newest)) = newest.first() else {
        return Ok(Err(format!(
            "Prometheus has no {comparisons} series of production {} yet: nothing was \
             mirrored, or Prometheus does not scrape production's pods with the labels \
             namespace and inference_service",
            series.production
        )));
    };
    let window_ms = ((since_start.as_secs_f64() - (now - newest).max(0.0)) * 1000.0).floor();
    if window_ms < 1000.0 {
        return Ok(Err(format!(
            "mirroring started {}s ago, Prometheus's newest sample of it is older",
            since_start.as_secs()
        )));
    }
    let window = Window {
        range: format!("{window_ms:.0}ms"),
        at: format!("{newest:.3}"),
    };
    let at = Some(window.at.as_str());
    let duration_buckets = format!("{}_bucket", metric::SHADOW_REQUEST_DURATION_SECONDS);
    let by_le_side = series.increase(&duration_buckets, &["le", label::SIDE], &window);
    let quantile = |q: f64| format!("histogram_quantile({q}, {by_le_side})");
    let (p50, p95, p99) = (quantile(0.5), quantile(0.95), quantile(0.99));
    let confidence = series.increase(
        &format!("{}_bucket", metric::SHADOW_CONFIDENCE),
        &["le", label::SIDE],
        &window,
    );
    let by_outcome = series.increase(&comparisons, &[label::OUTCOME], &window);
    let by_reason = series.increase(&dropped, &[label::REASON], &window);
    let (outcomes, drops, p50, p95, p99, confidence) = futures::try_join!(
        instant(prometheus, &by_outcome, at),
        instant(prometheus, &by_reason, at),
        instant(prometheus, &p50, at),
        instant(prometheus, &p95, at),
        instant(prometheus, &p99, at),
        instant(prometheus, &confidence, at),
    )?;
    if outcomes.is_empty() && drops.is_empty() {
        return Ok(Err(format!(
            "no comparisons and no drops in the last {}",
            window.range
        )));
    }
    let by_outcome = |o: &str| sum_where(&outcomes, label::OUTCOME, o);
    let percentiles = |s: &str| {
        Some(LatencyPercentiles {
            p50: value_where(&p50, label::SIDE, s)?,
            p95: value_where(&p95, label::SIDE, s)?,
            p99: value_where(&p99, label::SIDE, s)?,
        })
    };
    Ok(Ok(ShadowCounts {
        agree: by_outcome(outcome::AGREE),
        disagree: by_outcome(outcome::DISAGREE),
        candidate_errors: by_outcome(outcome::CANDIDATE_ERROR),
        production_errors: by_outcome(outcome::PRODUCTION_ERROR),
        dropped: drops.iter().map(|(_, v)| finite(*v)).sum(),
        production_latency: percentiles(side::PRODUCTION),
        candidate_latency: percentiles(side::CANDIDATE),
        production_confidence: bins(&confidence, side::PRODUCTION),
        candidate_confidence: bins(&confidence, side::CANDIDATE),
    }))
}

/// The per-bucket counts of one side's confidence on `CONFIDENCE_BUCKETS`, from the cumulative
/// `le` buckets (sorted by `le`; a bound without a series has the cumulative count of the bound
/// below it). Empty when the side has no series or counted nothing.
fn bins(samples: &[Sample], which: &str) -> Vec<f64> {
    let mut cumulative: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(labels, _)| labels.get(label::SIDE).map(String::as_str) == Some(which))
        .filter_map(|(labels, v)| Some((labels.get("le")?.parse::<f64>().ok()?, finite(*v))))
        .collect();
    cumulative.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    let at_or_below = |bound: f64| {
        cumulative
            .iter()
            .take_while(|(le, _)| *le <= bound * (1.0 + 1e-9))
            .last()
            .map_or(0.0, |(_, c)| *c)
    };
    let mut below = 0.0;
    let counts: Vec<f64> = CONFIDENCE_BUCKETS
        .iter()
        .map(|&bound| {
            let upto = at_or_below(bound);
            // `increase` extrapolates each bucket on its own: a bucket may come out a hair below
            // the one under it.
            let count = (upto - below).max(0.0);
            below = below.max(upto);
            count
        })
        .collect();
    if counts.iter().sum::<f64>() > 0.0 {
        counts
    } else {
        Vec::new()
    }
}

/// The sum of the samples whose `label` is `value`.
fn sum_where(samples: &[Sample], label: &str, value: &str) -> f64 {
    samples
        .iter()
        .filter(|(labels, _)| labels.get(label).map(String::as_str) == Some(value))
        .map(|(_, v)| finite(*v))
        .sum()
}

/// The sample whose `label` is `value`, when it is a number (`histogram_quantile` of buckets
/// that counted nothing is NaN).
fn value_where(samples: &[Sample], label: &str, value: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(labels, _)| labels.get(label).map(String::as_str) == Some(value))
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite() && *v >= 0.0)
}

fn finite(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// The mirror's series of one production InferenceService, of one shadow or all.
struct MirrorSeries<'a> {
    namespace: &'a str,
    production: &'a str,
    shadow: Option<&'a str>,
}

/// The window of a cumulative query: its length (a PromQL duration) and its end (Unix seconds,
/// the evaluation time).
struct Window {
    range: String,
    at: String,
}

impl MirrorSeries<'_> {
    fn select(&self, series: &str) -> String {
        let mut matchers = BTreeMap::new();
        matchers.insert(label::NAMESPACE, self.namespace);
        matchers.insert(label::INFERENCE_SERVICE, self.production);
        if let Some(shadow) = self.shadow {
            matchers.insert(label::SHADOW, shadow);
        }
        let matchers: Vec<String> = matchers
            .iter()
            .map(|(l, v)| format!("{l}=\"{}\"", escape(v)))
            .collect();
        format!("{series}{{{}}}", matchers.join(","))
    }

    fn increase(&self, series: &str, by: &[&str], window: &Window) -> String {
        format!(
            "sum by ({}) (increase({}[{}]))",
            by.join(", "),
            self.select(series),
            window.range,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        (
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        )
    }

    #[test]
    fn series_are_selected_by_namespace_production_and_shadow() {
        let series = MirrorSeries {
            namespace: "team-a",
            production: "sentiment",
            shadow: Some("v2\"x"),
        };
        assert_eq!(
            series.select("lexserve_shadow_comparisons_total"),
            r#"lexserve_shadow_comparisons_total{inference_service="sentiment",namespace="team-a",shadow="v2\"x"}"#
        );
    }

    #[test]
    fn confidence_bins_are_differences_of_the_cumulative_buckets_in_le_order() {
        // Out of order, as Prometheus may answer; 0.3 and 0.4 missing (no change there).
        let mut samples = vec![
            sample(&[("le", "+Inf"), ("side", "production")], 10.0),
            sample(&[("le", "1.0"), ("side", "production")], 10.0),
            sample(&[("le", "0.1"), ("side", "production")], 1.0),
            sample(&[("le", "0.9"), ("side", "production")], 6.0),
            sample(&[("le", "0.2"), ("side", "production")], 3.0),
            sample(&[("le", "0.5"), ("side", "production")], 3.0),
            sample(&[("le", "0.6"), ("side", "production")], 3.0),
            sample(&[("le", "0.7"), ("side", "production")], 3.0),
            sample(&[("le", "0.8"), ("side", "production")], 2.999),
            sample(&[("le", "1.0"), ("side", "candidate")], 0.0),
        ];
        assert_eq!(
            bins(&samples, side::PRODUCTION),
            vec![1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0]
        );
        // A side that counted nothing, or has no series, has no bins.
        assert!(bins(&samples, side::CANDIDATE).is_empty());
        samples.retain(|(l, _)| l["side"] == "candidate");
        assert!(bins(&samples, side::PRODUCTION).is_empty());
    }
}
