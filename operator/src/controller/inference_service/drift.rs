//! Drift monitoring of one InferenceService (`spec.monitoring.drift`), done by its reconcile so
//! that its status keeps one writer.
//!
//! When a check is due (`interval` after the last one), [`read`] fetches from Prometheus each
//! watched feature's distribution over the last `window`, and the baseline's: the gauges the
//! sidecars export from a reference sample, or, for a window baseline, the same series over the
//! traffic that followed the rollout of the model version (read once, when `baseline.window`
//! has passed and every feature has `minSamples`, then kept in `status.drift.baseline`).
//! [`apply`] (pure) judges with `analysis::drift::assess` and returns `status.drift` and the two
//! conditions.
//!
//! No verdict without numbers: while Prometheus does not answer, the baseline is being learned
//! or missing, or a side has too few samples, `DriftDetected` is Unknown and
//! `DriftMonitoringAvailable` is False with the reason. A new model version (its digest, or its
//! URI while no fetch has reported one) starts a new baseline, learned once the rollout is
//! complete.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;

use crate::analysis::drift::{Assessment, FeatureCounts, assess, bins_from_cumulative};
use crate::api::InferenceService;
use crate::api::conditions::{ConditionStatus, ConditionType, DesiredCondition, reason};
use crate::api::inference_service::{
    DriftFeature, DriftSpec, DriftStatus, FeatureBaseline, FeatureDrift, InferenceServiceStatus,
};
use crate::controller::promql::{self, Failure, PrometheusClient, escape};
use lexserve_contract::drift::{Feature, unknown_bin};
use lexserve_contract::names::metric;
use lexserve_contract::{ModelTask, duration};

/// The drift settings, when drift is monitored.
pub fn spec(isvc: &InferenceService) -> Option<&DriftSpec> {
    isvc.spec.monitoring.as_ref()?.drift.as_ref()
}

/// The features watched: those asked for (default: all) that the model's task exports;
/// `CentroidCosine` needs a reference sample.
pub fn features(spec: &DriftSpec, task: ModelTask) -> Vec<Feature> {
    let asked: Vec<Feature> = if spec.features.is_empty() {
        Feature::ALL.to_vec()
    } else {
        spec.features.clone()
    };
    asked
        .into_iter()
        .filter(|f| f.applies_to(task))
        .filter(|f| *f != Feature::CentroidCosine || spec.baseline.reference.is_some())
        .collect()
}

/// The model version a baseline belongs to: the verified digest, else the URI.
pub fn model_version(isvc: &InferenceService, status: &InferenceServiceStatus) -> String {
    status
        .model
        .as_ref()
        .and_then(|m| m.digest.clone())
        .unwrap_or_else(|| isvc.spec.model.uri.clone())
}

fn seconds(text: &str) -> Duration {
    duration::parse_duration(text).unwrap_or(Duration::from_secs(60))
}

fn since(at: &Time, now: &Time) -> Duration {
    let elapsed = now.0.duration_since(at.0);
    Duration::try_from(elapsed).unwrap_or(Duration::ZERO)
}

fn plus(at: &Time, by: Duration) -> Time {
    Time(
        at.0.checked_add(SignedDuration::try_from(by).unwrap_or(SignedDuration::ZERO))
            .unwrap_or(at.0),
    )
}

/// The drift status carried over to this check: the stored one, or a new baseline when the
/// model version changed. A window baseline starts once the rollout is `settled`. Pure.
pub fn carried(
    before: Option<&DriftStatus>,
    version: &str,
    settled: bool,
    now: &Time,
) -> DriftStatus {
    let mut status = match before {
        Some(b) if b.model_version.as_deref() == Some(version) => b.clone(),
        _ => DriftStatus {
            model_version: Some(version.to_string()),
            ..Default::default()
        },
    };
    if status.baseline_start.is_none() && settled {
        status.baseline_start = Some(now.clone());
    }
    status
}

/// How long until the next check (zero: due now). Pure.
pub fn next_check_in(spec: &DriftSpec, status: Option<&DriftStatus>, now: &Time) -> Duration {
    let interval = seconds(&spec.interval);
    match status.and_then(|s| s.last_check_time.as_ref()) {
        Some(last) => interval.saturating_sub(since(last, now)),
        None => Duration::ZERO,
    }
}

/// What one read of Prometheus found.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// The distributions, and the window baseline when it was learned at this check.
    Counts {
        features: Vec<FeatureCounts>,
        learned: Option<Vec<FeatureBaseline>>,
    },
    /// Prometheus did not answer, or refused a query.
    Unreachable(String),
    /// A window baseline is not learned yet (the message says until when, or what it waits for).
    Learning(String),
    /// The reference sample's baseline series are not there.
    BaselineMissing(String),
    /// Nothing to watch.
    NoFeatures(String),
}

fn selector(namespace: &str, name: &str) -> String {
    format!(
        r#"namespace="{}",inference_service="{}""#,
        escape(namespace),
        escape(name)
    )
}

/// A histogram feature's series.
fn histogram(feature: Feature) -> Option<&'static str> {
    Some(match feature {
        Feature::InputTokens => metric::INPUT_TOKENS,
        Feature::Confidence => metric::PREDICTION_CONFIDENCE,
        Feature::EmbeddingNorm => metric::EMBEDDING_NORM,
        Feature::CentroidCosine => metric::EMBEDDING_CENTROID_COSINE,
        Feature::PromptTokens => metric::PROMPT_TOKENS,
        Feature::OutputTokens => metric::OUTPUT_TOKENS,
        Feature::UnknownTokens | Feature::PredictedClass => return None,
    })
}

/// A histogram bin's name in the contract's one spelling (`drift::bin_label`, what the
/// sidecar's baseline gauges use), whatever the exporter wrote for `le` (`4`, `4.0`, `4e0`).
fn edge_name(le: &str) -> String {
    le.parse::<f64>()
        .map_or_else(|_| le.to_string(), lexserve_contract::drift::bin_label)
}

async fn query(
    prometheus: &PrometheusClient,
    text: &str,
    at: Option<&str>,
) -> Result<Vec<promql::Sample>, String> {
    promql::instant(prometheus, text, at)
        .await
        .map_err(|e| match e {
            Failure::Unreachable(why) => format!("Prometheus did not answer: {why}"),
            Failure::Rejected(why) => format!("Prometheus refused {text}: {why}"),
        })
}

/// One feature's counts by bin over `range` ending at `at` (now when None).
async fn live_counts(
    prometheus: &PrometheusClient,
    labels: &str,
    feature: Feature,
    range: Duration,
    at: Option<&str>,
) -> Result<BTreeMap<String, f64>, String> {
    let range = format!("{}s", range.as_secs().max(1));
    if let Some(series) = histogram(feature) {
        let text = format!("sum by (le) (increase({series}_bucket{{{labels}}}[{range}]))");
        let cumulative: BTreeMap<String, f64> = query(prometheus, &text, at)
            .await?
            .into_iter()
            .filter_map(|(l, v)| Some((l.get("le")?.clone(), v)))
            .collect();
        if cumulative.is_empty() {
            return Ok(BTreeMap::new());
        }
        let bins = bins_from_cumulative(&cumulative)
            .ok_or_else(|| format!("{series}'s buckets are not cumulative"))?;
        return Ok(bins
            .into_iter()
            .map(|(le, c)| (edge_name(&le), c))
            .collect());
    }
    match feature {
        Feature::PredictedClass => {
            let text = format!(
                "sum by (class) (increase({}_total{{{labels}}}[{range}]))",
                metric::PREDICTIONS
            );
            Ok(query(prometheus, &text, at)
                .await?
                .into_iter()
                .filter_map(|(l, v)| Some((l.get("class")?.clone(), v)))
                .collect())
        }
        _ => {
            let unknown = format!(
                "sum(increase({}_total{{{labels}}}[{range}]))",
                metric::UNKNOWN_TOKENS
            );
            let tokens = format!(
                "sum(increase({}_sum{{{labels}}}[{range}]))",
                metric::INPUT_TOKENS
            );
            let first = |samples: Vec<promql::Sample>| samples.first().map_or(0.0, |s| s.1);
            let unknown = first(query(prometheus, &unknown, at).await?);
            let tokens = first(query(prometheus, &tokens, at).await?);
            Ok(BTreeMap::from([
                (unknown_bin::UNKNOWN.to_string(), unknown),
                (unknown_bin::KNOWN.to_string(), (tokens - unknown).max(0.0)),
            ]))
        }
    }
}

/// The reference sample's counts for `feature`, as the sidecars export them.
async fn reference_counts(
    prometheus: &PrometheusClient,
    labels: &str,
    feature: Feature,
) -> Result<BTreeMap<String, f64>, String> {
    let text = format!(
        r#"max by (bin) ({}{{{labels},feature="{}"}})"#,
        metric::DRIFT_BASELINE,
        feature.label()
    );
    let ordered = histogram(feature).is_some();
    Ok(query(prometheus, &text, None)
        .await?
        .into_iter()
        .filter_map(|(l, v)| {
            let bin = l.get("bin")?;
            Some((if ordered { edge_name(bin) } else { bin.clone() }, v))
        })
        .collect())
}

fn total(counts: &BTreeMap<String, f64>) -> f64 {
    counts.values().sum()
}

/// Reads the distributions a check needs. `status` is the [`carried`] one.
pub async fn read(
    prometheus: &PrometheusClient,
    isvc: &InferenceService,
    spec: &DriftSpec,
    status: &DriftStatus,
    now: &Time,
) -> Reading {
    let namespace = isvc.metadata.namespace.clone().unwrap_or_default();
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let labels = selector(&namespace, &name);
    let watched = features(spec, isvc.spec.model.task);
    if watched.is_empty() {
        return Reading::NoFeatures(format!(
            "no feature of spec.monitoring.drift.features applies to task {:?}",
            isvc.spec.model.task
        ));
    }
    let window = seconds(&spec.window);
    // The baseline's counts by feature, and whether they were learned now.
    let mut learned = None;
    let baseline: BTreeMap<Feature, BTreeMap<String, f64>> = if spec.baseline.reference.is_some() {
        let mut counts = BTreeMap::new();
        for feature in &watched {
            match reference_counts(prometheus, &labels, *feature).await {
                Ok(c) if total(&c) > 0.0 => {
                    counts.insert(*feature, c);
                }
                Ok(_) => {
                    return Reading::BaselineMissing(format!(
                        "no sidecar exports {}{{feature=\"{}\"}}: are the pods running with the reference sample, and scraped?",
                        metric::DRIFT_BASELINE,
                        feature.label()
                    ));
                }
                Err(e) => return Reading::Unreachable(e),
            }
        }
        counts
    } else if !status.baseline.is_empty() {
        status
            .baseline
            .iter()
            .map(|b| (b.feature, b.counts.clone()))
            .collect()
    } else {
        let Some(start) = status.baseline_start.as_ref() else {
            return Reading::Learning(
                "the baseline is learned once the rollout of this model version is complete"
                    .to_string(),
            );
        };
        let learn = seconds(spec.baseline.window.as_deref().unwrap_or("1h"));
        let learned_for = since(start, now);
        if learned_for < learn {
            return Reading::Learning(format!(
                "learning the baseline from the traffic until {}",
                plus(start, learn).0
            ));
        }
        let mut counts = BTreeMap::new();
        for feature in &watched {
            match live_counts(prometheus, &labels, *feature, learned_for, None).await {
                Ok(c) => {
                    if total(&c) < spec.min_samples as f64 {
                        return Reading::Learning(format!(
                            "learning the baseline: {} has {:.0} of minSamples {} since {}",
                            feature.label(),
                            total(&c),
                            spec.min_samples,
                            start.0
                        ));
                    }
                    counts.insert(*feature, c);
                }
                Err(e) => return Reading::Unreachable(e),
            }
        }
        learned = Some(
            counts
                .iter()
                .map(|(feature, counts)| FeatureBaseline {
                    feature: *feature,
                    counts: counts.clone(),
                })
                .collect(),
        );
        counts
    };
    let mut features = Vec::new();
    for feature in &watched {
        let current = match live_counts(prometheus, &labels, *feature, window, None).await {
            Ok(c) => c,
            Err(e) => return Reading::Unreachable(e),
        };
        let empty = BTreeMap::new();
        let base = baseline.get(feature).unwrap_or(&empty);
        features.push(FeatureCounts::align(*feature, base, &current));
    }
    Reading::Counts { features, learned }
}

/// The check's outcome: the new `status.drift` and the two conditions. Pure.
pub fn apply(
    spec: &DriftSpec,
    mut status: DriftStatus,
    reading: Reading,
    now: &Time,
) -> (DriftStatus, [DesiredCondition; 2]) {
    status.last_check_time = Some(now.clone());
    let no_verdict = |why: &str, message: String| {
        [
            DesiredCondition::new(
                ConditionType::DriftDetected,
                ConditionStatus::Unknown,
                why,
                format!("no verdict: {message}"),
            ),
            DesiredCondition::new(ConditionType::DriftMonitoringAvailable, false, why, message),
        ]
    };
    let (features, learned) = match reading {
        Reading::Counts { features, learned } => (features, learned),
        Reading::Unreachable(message) => {
            return (status, no_verdict(reason::PROMETHEUS_UNREACHABLE, message));
        }
        Reading::Learning(message) => {
            return (status, no_verdict(reason::BASELINE_LEARNING, message));
        }
        Reading::BaselineMissing(message) => {
            return (status, no_verdict(reason::BASELINE_MISSING, message));
        }
        Reading::NoFeatures(message) => {
            status.features.clear();
            return (status, no_verdict(reason::NO_FEATURES, message));
        }
    };
    if let Some(learned) = learned {
        status.baseline = learned;
    }
    let drifted_before: Vec<DriftFeature> = status
        .features
        .iter()
        .filter(|f| f.drifted)
        .map(|f| f.feature)
        .collect();
    let assessment = assess(
        &spec.measures,
        &spec.thresholds,
        spec.min_samples,
        &features,
        &drifted_before,
    );
    let (scores, conditions) = match assessment {
        Assessment::NotEnoughData { scores, message } => {
            (scores, no_verdict(reason::NOT_ENOUGH_DATA, message))
        }
        Assessment::Drift {
            scores, message, ..
        } => (
            scores,
            [
                DesiredCondition::new(
                    ConditionType::DriftDetected,
                    true,
                    reason::FEATURES_DRIFTED,
                    message,
                ),
                measured(spec),
            ],
        ),
        Assessment::NoDrift { scores, message } => (
            scores,
            [
                DesiredCondition::new(
                    ConditionType::DriftDetected,
                    false,
                    reason::NO_DRIFT,
                    message,
                ),
                measured(spec),
            ],
        ),
    };
    status.features = scores
        .into_iter()
        .map(|s| FeatureDrift {
            feature: s.feature,
            baseline_samples: s.baseline_samples,
            window_samples: s.window_samples,
            psi: s.psi,
            jensen_shannon: s.jensen_shannon,
            kolmogorov_smirnov: s.ks.map(|k| k.statistic),
            ks_p_value: s.ks.map(|k| k.p_value),
            drifted: s.drifted,
        })
        .collect();
    (status, conditions)
}

fn measured(spec: &DriftSpec) -> DesiredCondition {
    DesiredCondition::new(
        ConditionType::DriftMonitoringAvailable,
        true,
        reason::DRIFT_MEASURED,
        format!(
            "the last {} of traffic is compared with the baseline every {}",
            spec.window, spec.interval
        ),
    )
}

#[cfg(test)]
#[path = "drift_tests.rs"]
mod tests;
