//! The pure parts of drift monitoring: which features are watched, when a baseline starts over,
//! when a check is due, and what each reading makes of the status and conditions.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::api::conditions::ConditionStatus;

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(second).expect("valid"))
}

fn drift_spec(value: serde_json::Value) -> DriftSpec {
    serde_json::from_value(value).expect("a valid drift spec")
}

fn window_baseline() -> DriftSpec {
    drift_spec(
        json!({"baseline": {"window": "10m"}, "window": "5m", "interval": "30s", "minSamples": 100}),
    )
}

#[test]
fn the_features_are_those_of_the_task_and_centroid_cosine_needs_a_reference() {
    let all = window_baseline();
    assert_eq!(
        features(&all, ModelTask::Classify),
        vec![
            Feature::InputTokens,
            Feature::UnknownTokens,
            Feature::PredictedClass,
            Feature::Confidence
        ]
    );
    assert_eq!(
        features(&all, ModelTask::Embed),
        vec![
            Feature::InputTokens,
            Feature::UnknownTokens,
            Feature::EmbeddingNorm
        ]
    );
    assert_eq!(
        features(&all, ModelTask::Generate),
        vec![Feature::PromptTokens, Feature::OutputTokens]
    );
    let reference = drift_spec(json!({"baseline": {"reference": {"name": "s", "key": "k"}}}));
    assert!(features(&reference, ModelTask::Embed).contains(&Feature::CentroidCosine));
    let asked = drift_spec(
        json!({"baseline": {"window": "1h"}, "features": ["PredictedClass", "PromptTokens"]}),
    );
    assert_eq!(
        features(&asked, ModelTask::Classify),
        vec![Feature::PredictedClass]
    );
    assert!(features(&asked, ModelTask::Embed).is_empty());
}

#[test]
fn a_new_model_version_starts_a_new_baseline_once_the_rollout_is_complete() {
    let learned = DriftStatus {
        model_version: Some("sha256:a".into()),
        baseline_start: Some(at(100)),
        baseline: vec![FeatureBaseline {
            feature: Feature::InputTokens,
            counts: BTreeMap::from([("4".to_string(), 10.0)]),
        }],
        last_check_time: Some(at(200)),
        features: Vec::new(),
    };
    // The same version: kept as it is.
    assert_eq!(carried(Some(&learned), "sha256:a", true, &at(300)), learned);
    // Another version, still rolling out: no baseline, no start yet, a check due at once.
    let rolling = carried(Some(&learned), "sha256:b", false, &at(300));
    assert_eq!(rolling.model_version.as_deref(), Some("sha256:b"));
    assert!(rolling.baseline.is_empty() && rolling.baseline_start.is_none());
    assert!(rolling.last_check_time.is_none());
    // Settled: the baseline window starts now.
    let settled = carried(Some(&rolling), "sha256:b", true, &at(400));
    assert_eq!(settled.baseline_start, Some(at(400)));
}

#[test]
fn a_check_is_due_an_interval_after_the_last() {
    let spec = window_baseline();
    let mut status = DriftStatus::default();
    assert_eq!(
        next_check_in(&spec, Some(&status), &at(100)),
        Duration::ZERO
    );
    status.last_check_time = Some(at(100));
    assert_eq!(
        next_check_in(&spec, Some(&status), &at(110)),
        Duration::from_secs(20)
    );
    assert_eq!(
        next_check_in(&spec, Some(&status), &at(130)),
        Duration::ZERO
    );
}

fn condition(conditions: &[DesiredCondition; 2], type_: ConditionType) -> &DesiredCondition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("the condition")
}

#[test]
fn no_numbers_means_no_verdict_and_says_why_keeping_the_last_scores() {
    let spec = window_baseline();
    let before = DriftStatus {
        features: vec![FeatureDrift {
            feature: Feature::InputTokens,
            baseline_samples: 500,
            window_samples: 500,
            psi: Some(0.5),
            jensen_shannon: None,
            kolmogorov_smirnov: None,
            ks_p_value: None,
            drifted: true,
        }],
        ..Default::default()
    };
    for (reading, why) in [
        (
            Reading::Unreachable("Prometheus did not answer: refused".into()),
            reason::PROMETHEUS_UNREACHABLE,
        ),
        (
            Reading::Learning("learning the baseline".into()),
            reason::BASELINE_LEARNING,
        ),
        (
            Reading::BaselineMissing("no sidecar exports it".into()),
            reason::BASELINE_MISSING,
        ),
    ] {
        let (status, conditions) = apply(&spec, before.clone(), reading, &at(500));
        let detected = condition(&conditions, ConditionType::DriftDetected);
        assert_eq!(detected.status, ConditionStatus::Unknown, "{why}");
        assert_eq!(detected.reason, why);
        let available = condition(&conditions, ConditionType::DriftMonitoringAvailable);
        assert_eq!(available.status, ConditionStatus::False, "{why}");
        assert_eq!(available.reason, why);
        assert_eq!(status.last_check_time, Some(at(500)));
        assert_eq!(status.features, before.features, "{why}");
    }
}
