//! Every path of `decide`, and a seeded Monte-Carlo through it: A/A experiments looked at every
//! interval, and a planted effect.

use super::*;
use crate::analysis::holm::holm_adjust;
use crate::analysis::power::{sample_size_means, sample_size_proportions};
use crate::analysis::simulation::SplitMix64;
use crate::api::experiment::{
    AnalysisSpec, Assignment, MetricSource, OnFailure, RoutingSpec, Variant,
};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn primary_proportion(name: &str) -> MetricSpec {
    MetricSpec {
        name: name.to_string(),
        kind: MetricKind::Proportion,
        role: MetricRole::Primary,
        source: MetricSource {
            builtin: Some(name.to_string()),
            prometheus: None,
        },
        direction: Direction::HigherIsBetter,
        threshold: None,
    }
}

fn guardrail_mean(name: &str, direction: Direction, threshold: f64) -> MetricSpec {
    MetricSpec {
        kind: MetricKind::Mean,
        role: MetricRole::Guardrail,
        direction,
        threshold: Some(threshold),
        ..primary_proportion(name)
    }
}

/// Control `control` (InferenceService `svc-control`) and the given challengers, the first
/// variant being the control; analysis: minDuration 1h, maxDuration 24h, 1000 samples, alpha
/// 0.05, sequential.
fn spec(variants: &[(&str, u32)], metrics: Vec<MetricSpec>) -> ExperimentSpec {
    ExperimentSpec {
        control: "svc-control".to_string(),
        variants: variants
            .iter()
            .map(|(name, weight)| Variant {
                name: name.to_string(),
                inference_service: format!("svc-{name}"),
                weight: *weight,
            })
            .collect(),
        assignment: Assignment::default(),
        metrics,
        analysis: AnalysisSpec {
            interval: "1m".to_string(),
            min_duration: "1h".to_string(),
            max_duration: "24h".to_string(),
            min_samples_per_variant: 1000,
            ..AnalysisSpec::default()
        },
        on_success: OnSuccess::Promote,
        on_failure: OnFailure::Rollback,
        on_inconclusive: OnInconclusive::Rollback,
        routing: RoutingSpec::default(),
    }
}

/// A/B with a conversion primary and a latency guardrail (lower is better, 10%).
fn ab() -> ExperimentSpec {
    spec(
        &[("control", 50), ("candidate", 50)],
        vec![
            primary_proportion("conversion"),
            guardrail_mean("latency", Direction::LowerIsBetter, 0.10),
        ],
    )
}

fn proportion(trials: f64, successes: f64) -> Sufficient {
    Sufficient {
        count: trials,
        sum: successes,
        sum_squares: successes,
    }
}

/// n observations with this mean and sample standard deviation.
fn mean(n: f64, mean: f64, sd: f64) -> Sufficient {
    Sufficient {
        count: n,
        sum: n * mean,
        sum_squares: (n - 1.0) * sd * sd + n * mean * mean,
    }
}

fn variant(name: &str, assignments: f64, metrics: &[(&str, Sufficient)]) -> VariantData {
    VariantData {
        variant: name.to_string(),
        assignments,
        metrics: metrics.iter().map(|(m, s)| (m.to_string(), *s)).collect(),
    }
}

/// Control and candidate with 10,000 users each: conversion 10% vs `candidate_rate`, latency
/// 100 ms vs `candidate_latency` (sd 30 ms).
fn ab_data(candidate_rate: f64, candidate_latency: f64) -> Observation {
    Observation::Data(vec![
        variant(
            "control",
            10_000.0,
            &[
                ("conversion", proportion(10_000.0, 1_000.0)),
                ("latency", mean(10_000.0, 0.100, 0.030)),
            ],
        ),
        variant(
            "candidate",
            10_000.0,
            &[
                (
                    "conversion",
                    proportion(10_000.0, 10_000.0 * candidate_rate),
                ),
                ("latency", mean(10_000.0, candidate_latency, 0.030)),
            ],
        ),
    ])
}

fn breach(variant: &str, metric: &str, consecutive: u32) -> GuardrailBreach {
    GuardrailBreach {
        variant: variant.to_string(),
        metric: metric.to_string(),
        consecutive,
    }
}

fn with_breaches(breaches: Vec<GuardrailBreach>) -> ExperimentStatus {
    ExperimentStatus {
        guardrail_breaches: breaches,
        ..ExperimentStatus::default()
    }
}

#[test]
fn no_data_waits_and_keeps_the_breach_streaks() {
    let status = with_breaches(vec![breach("candidate", "latency", 1)]);
    let v = decide(
        &ab(),
        &status,
        &Observation::NoData {
            reason: "no series for experiment shop".to_string(),
        },
        2 * HOUR,
    );
    assert_eq!(v.phase, ExperimentPhase::Running);
    assert_eq!(v.reason, reason::NO_DATA);
    assert_eq!(v.action, Action::Continue);
    assert_eq!(v.guardrail_breaches, status.guardrail_breaches);
    assert!(
        v.message.contains("no series for experiment shop"),
        "{}",
        v.message
    );
}

#[test]
fn prometheus_unreachable_waits_past_max_duration_too() {
    let status = with_breaches(vec![breach("candidate", "latency", 1)]);
    let v = decide(
        &ab(),
        &status,
        &Observation::Unreachable {
            error: "connection refused".to_string(),
        },
        100 * HOUR,
    );
    assert_eq!(v.phase, ExperimentPhase::Running);
    assert_eq!(v.reason, reason::PROMETHEUS_UNREACHABLE);
    assert_eq!(v.action, Action::Continue);
    assert_eq!(v.guardrail_breaches, status.guardrail_breaches);
    assert!(v.message.contains("connection refused"), "{}", v.message);
}

#[test]
fn before_min_duration_there_is_not_enough_data_and_the_plan_says_how_much() {
    let v = decide(
        &ab(),
        &ExperimentStatus::default(),
        &ab_data(0.13, 0.100),
        30 * MINUTE,
    );
    assert_eq!(v.phase, ExperimentPhase::Running);
    assert_eq!(v.reason, reason::NOT_ENOUGH_DATA);
    assert_eq!(v.action, Action::Continue);
    assert!(v.winner.is_none());
    assert!(
        v.message
            .contains("minDuration 1h not reached (30m elapsed)"),
        "{}",
        v.message
    );
    let plan = v.sample_size.expect("a plan from the control's rate");
    let expected = sample_size_proportions(0.10, 0.105, 0.05, 0.8)
        .unwrap()
        .ceil() as u64;
    assert_eq!(plan.needed_per_variant, expected);
    assert_eq!(plan.smallest_variant_samples, 10_000);
    assert!(
        v.message
            .contains(&format!("needs about {expected} per variant, has 10000")),
        "{}",
        v.message
    );
    // The numbers are there already, with their verdict withheld by the time rule only.
    assert_eq!(v.variants.len(), 2);
    assert_eq!(v.variants[1].estimates[0].samples, 10_000);
}

#[test]
fn too_few_samples_is_not_enough_data() {
    let data = Observation::Data(vec![
        variant("control", 600.0, &[("conversion", proportion(600.0, 60.0))]),
        variant(
            "candidate",
            600.0,
            &[("conversion", proportion(600.0, 120.0))],
        ),
    ]);
    let v = decide(&ab(), &ExperimentStatus::default(), &data, 2 * HOUR);
    assert_eq!(v.reason, reason::NOT_ENOUGH_DATA);
    assert_eq!(v.phase, ExperimentPhase::Running);
    assert!(
        v.message.contains("control 600, candidate 600"),
        "{}",
        v.message
    );
    assert_eq!(v.comparisons[0].verdict, ComparisonVerdict::NotEnoughData);
}

#[test]
fn sample_ratio_mismatch_holds_even_with_a_clear_winner() {
    let data = Observation::Data(vec![
        variant(
            "control",
            10_000.0,
            &[("conversion", proportion(10_000.0, 1_000.0))],
        ),
        variant(
            "candidate",
            9_000.0,
            &[("conversion", proportion(9_000.0, 1_800.0))],
        ),
    ]);
    let v = decide(&ab(), &ExperimentStatus::default(), &data, 2 * HOUR);
    assert_eq!(v.phase, ExperimentPhase::Running);
    assert_eq!(v.reason, reason::SAMPLE_RATIO_MISMATCH);
    assert_eq!(v.action, Action::Hold);
    assert!(v.winner.is_none());
    let srm = v.srm.expect("an SRM check");
    assert!(srm.mismatch && srm.p_value < SRM_P_VALUE, "{srm:?}");
    assert_eq!(v.comparisons[0].verdict, ComparisonVerdict::Better);
}

#[test]
fn a_split_that_fits_the_weights_is_no_mismatch() {
    let v = decide(
        &ab(),
        &ExperimentStatus::default(),
        &ab_data(0.10, 0.100),
        2 * HOUR,
    );
    let srm = v.srm.expect("an SRM check");
    assert!(!srm.mismatch);
    assert_eq!(srm.chi_square, 0.0);
}

#[test]
fn a_guardrail_breached_once_holds_the_decision_without_failing() {
    // The candidate converts far better, but is 30% slower.
    let v = decide(
        &ab(),
        &ExperimentStatus::default(),
        &ab_data(0.13, 0.130),
        2 * HOUR,
    );
    assert_eq!(v.phase, ExperimentPhase::Running);
    assert_eq!(v.reason, reason::GUARDRAIL_BREACHED);
    assert_eq!(v.action, Action::Continue);
    assert!(v.winner.is_none());
    assert_eq!(
        v.guardrail_breaches,
        vec![breach("candidate", "latency", 1)]
    );
    assert!(v.dropped.is_empty());
    let latency = v
        .comparisons
        .iter()
        .find(|c| c.metric == "latency")
        .expect("a latency comparison");
    assert_eq!(latency.verdict, ComparisonVerdict::Worse);
    assert!((latency.effect - 0.30).abs() < 1e-9, "{latency:?}");
}

#[test]
fn a_guardrail_breached_twice_in_a_row_fails_the_only_challenger() {
    let status = with_breaches(vec![breach("candidate", "latency", 1)]);
    let v = decide(&ab(), &status, &ab_data(0.13, 0.130), 2 * HOUR);
    assert_eq!(v.phase, ExperimentPhase::Failed);
    assert_eq!(v.reason, reason::GUARDRAIL_FAILED);
    assert_eq!(v.action, Action::Rollback);
    assert!(v.winner.is_none());
    assert_eq!(
        v.guardrail_breaches,
        vec![breach("candidate", "latency", 2)]
    );
    assert_eq!(v.dropped, vec!["candidate".to_string()]);
    assert!(v.message.contains("+30.0%"), "{}", v.message);
}

#[test]
fn a_breach_that_clears_resets_its_streak() {
    let status = with_breaches(vec![breach("candidate", "latency", 1)]);
    let v = decide(&ab(), &status, &ab_data(0.10, 0.101), 2 * HOUR);
    assert!(v.guardrail_breaches.is_empty());
    assert_eq!(v.reason, reason::NO_SIGNIFICANT_DIFFERENCE);
}

#[test]
fn a_guardrail_without_numbers_keeps_its_streak() {
    let status = with_breaches(vec![breach("candidate", "latency", 1)]);
    let data = Observation::Data(vec![
        variant(
            "control",
            10_000.0,
            &[("conversion", proportion(10_000.0, 1_000.0))],
        ),
        variant(
            "candidate",
            10_000.0,
            &[("conversion", proportion(10_000.0, 1_000.0))],
        ),
    ]);
    let v = decide(&ab(), &status, &data, 2 * HOUR);
    assert_eq!(v.guardrail_breaches, status.guardrail_breaches);
    assert_eq!(v.phase, ExperimentPhase::Running);
}

#[test]
fn noise_does_not_breach_a_guardrail() {
    let ab = ab();
    let latency = &ab.metrics[1];
    let compare_latency = |t: Sufficient, c: Sufficient| {
        compare(
            MetricKind::Mean,
            &t,
            &c,
            Settings {
                alpha: 0.05,
                sequential: true,
                tuning_n: 2000.0,
            },
        )
        .expect("comparable")
    };
    let breached = |c: &Compared| guardrail_breached(c, latency.direction, 0.10);
    // Degraded within the threshold, however sure: tolerated.
    let tolerated = compare_latency(mean(100_000.0, 0.105, 0.03), mean(100_000.0, 0.100, 0.03));
    assert!(!breached(&tolerated), "{tolerated:?}");
    // 15% worse on 20 requests per arm: too few to say.
    let few = compare_latency(mean(20.0, 0.115, 0.001), mean(20.0, 0.100, 0.001));
    assert!(!breached(&few), "{few:?}");
    // 15% worse on 200 very noisy requests: the interval does not exclude "no degradation".
    let noisy = compare_latency(mean(200.0, 0.115, 0.2), mean(200.0, 0.100, 0.2));
    assert!(noisy.relative() > 0.10);
    assert!(!breached(&noisy), "{noisy:?}");
    // 15% worse on 5,000 requests with the usual spread: a real degradation.
    let real = compare_latency(mean(5_000.0, 0.115, 0.03), mean(5_000.0, 0.100, 0.03));
    assert!(breached(&real), "{real:?}");
    // Direction-aware: 15% faster breaches nothing.
    let faster = compare_latency(mean(5_000.0, 0.085, 0.03), mean(5_000.0, 0.100, 0.03));
    assert!(!breached(&faster), "{faster:?}");
}

/// Control, `b` (30% slower, far better conversion) and `c` (as fast, somewhat better).
fn three_way() -> (ExperimentSpec, Observation) {
    let spec = spec(
        &[("control", 34), ("b", 33), ("c", 33)],
        vec![
            primary_proportion("conversion"),
            guardrail_mean("latency", Direction::LowerIsBetter, 0.10),
        ],
    );
    let arm = |name: &str, n: f64, rate: f64, latency: f64| {
        variant(
            name,
            n,
            &[
                ("conversion", proportion(n, n * rate)),
                ("latency", mean(n, latency, 0.030)),
            ],
        )
    };
    let data = Observation::Data(vec![
        arm("control", 10_300.0, 0.10, 0.100),
        arm("b", 10_000.0, 0.15, 0.130),
        arm("c", 10_000.0, 0.12, 0.100),
    ]);
    (spec, data)
}

#[test]
fn with_several_challengers_a_failed_one_is_dropped_and_the_rest_go_on() {
    let (spec, data) = three_way();
    // First breach: nothing is decided, although c already wins.
    let first = decide(&spec, &ExperimentStatus::default(), &data, 2 * HOUR);
    assert_eq!(first.reason, reason::GUARDRAIL_BREACHED);
    assert_eq!(first.phase, ExperimentPhase::Running);
    assert!(first.winner.is_none());

    // Second: b fails and is dropped; c, the best of the rest, wins.
    let status = ExperimentStatus {
        guardrail_breaches: first.guardrail_breaches.clone(),
        ..ExperimentStatus::default()
    };
    let second = decide(&spec, &status, &data, 2 * HOUR);
    assert_eq!(second.dropped, vec!["b".to_string()]);
    assert_eq!(second.guardrail_breaches, vec![breach("b", "latency", 2)]);
    assert_eq!(second.phase, ExperimentPhase::Succeeded);
    assert_eq!(second.winner.as_deref(), Some("c"));
    assert_eq!(
        second.action,
        Action::Promote {
            variant: "c".to_string()
        }
    );
    assert!(
        second.message.contains("dropped from the comparison: b"),
        "{}",
        second.message
    );
    // b's primary comparison is gone; its guardrail row stays, as the reason it left.
    assert!(
        !second
            .comparisons
            .iter()
            .any(|c| c.variant == "b" && c.metric == "conversion")
    );
    assert!(
        second
            .comparisons
            .iter()
            .any(|c| c.variant == "b" && c.metric == "latency")
    );

    // Later analyses keep b failed even when its guardrail clears (it gets no traffic).
    let healed = Observation::Data(vec![
        variant(
            "control",
            10_300.0,
            &[
                ("conversion", proportion(10_300.0, 1_030.0)),
                ("latency", mean(10_300.0, 0.100, 0.030)),
            ],
        ),
        variant(
            "b",
            10_000.0,
            &[
                ("conversion", proportion(10_000.0, 1_000.0)),
                ("latency", mean(10_000.0, 0.100, 0.030)),
            ],
        ),
        variant(
            "c",
            10_000.0,
            &[
                ("conversion", proportion(10_000.0, 1_000.0)),
                ("latency", mean(10_000.0, 0.100, 0.030)),
            ],
        ),
    ]);
    let status = ExperimentStatus {
        guardrail_breaches: second.guardrail_breaches.clone(),
        ..ExperimentStatus::default()
    };
    let third = decide(&spec, &status, &healed, 2 * HOUR);
    assert_eq!(third.dropped, vec!["b".to_string()]);
    assert_eq!(third.guardrail_breaches, vec![breach("b", "latency", 2)]);
    assert_eq!(third.phase, ExperimentPhase::Running);
}

#[test]
fn every_challenger_failed_by_guardrails_rolls_back() {
    let (spec, data) = three_way();
    let status = with_breaches(vec![breach("b", "latency", 2), breach("c", "latency", 2)]);
    let v = decide(&spec, &status, &data, 2 * HOUR);
    assert_eq!(v.phase, ExperimentPhase::Failed);
    assert_eq!(v.reason, reason::GUARDRAIL_FAILED);
    assert_eq!(v.action, Action::Rollback);
}

#[test]
fn a_significantly_better_variant_is_promoted() {
    let v = decide(
        &ab(),
        &ExperimentStatus::default(),
        &ab_data(0.12, 0.100),
        2 * HOUR,
    );
    assert_eq!(v.phase, ExperimentPhase::Succeeded);
    assert_eq!(v.reason, reason::WINNER_FOUND);
    assert_eq!(v.winner.as_deref(), Some("candidate"));
    assert_eq!(
        v.action,
        Action::Promote {
            variant: "candidate".to_string()
        }
    );
    let c = &v.comparisons[0];
    assert_eq!(
        (c.metric.as_str(), c.verdict),
        ("conversion", ComparisonVerdict::Better)
    );
    assert!((c.effect - 0.20).abs() < 1e-9, "{c:?}");
    assert!(
        c.interval[0] > 0.0 && c.interval[0] < 0.20 && c.interval[1] > 0.20,
        "{c:?}"
    );
    assert!(c.p_value <= 0.05, "{c:?}");
    assert!(v.message.contains("candidate +20.0%"), "{}", v.message);
}

#[test]
fn recommend_reports_the_winner_and_ends() {
    let mut spec = ab();
    spec.on_success = OnSuccess::Recommend;
    let v = decide(
        &spec,
        &ExperimentStatus::default(),
        &ab_data(0.12, 0.100),
        2 * HOUR,
    );
    assert_eq!(v.phase, ExperimentPhase::Succeeded);
    assert_eq!(v.winner.as_deref(), Some("candidate"));
    assert_eq!(v.action, Action::End);
}

#[test]
fn a_significantly_worse_variant_fails_the_experiment() {
    let v = decide(
        &ab(),
        &ExperimentStatus::default(),
        &ab_data(0.08, 0.100),
        2 * HOUR,
    );
    assert_eq!(v.phase, ExperimentPhase::Failed);
    assert_eq!(v.reason, reason::VARIANTS_WORSE);
    assert_eq!(v.action, Action::Rollback);
    assert!(v.winner.is_none());
    assert_eq!(v.comparisons[0].verdict, ComparisonVerdict::Worse);
}

#[test]
fn a_mean_primary_compares_with_welch_in_its_direction() {
    let spec = spec(
        &[("control", 50), ("candidate", 50)],
        vec![MetricSpec {
            kind: MetricKind::Mean,
            direction: Direction::LowerIsBetter,
            ..primary_proportion("handle-time")
        }],
    );
    let data = Observation::Data(vec![
        variant(
            "control",
            5_000.0,
            &[("handle-time", mean(5_000.0, 10.0, 3.0))],
        ),
        variant(
            "candidate",
            5_000.0,
            &[("handle-time", mean(5_000.0, 9.5, 3.0))],
        ),
    ]);
    let v = decide(&spec, &ExperimentStatus::default(), &data, 2 * HOUR);
    assert_eq!(v.winner.as_deref(), Some("candidate"), "{}", v.message);
    assert!((v.comparisons[0].effect + 0.05).abs() < 1e-9);
    let estimate = &v.variants[1].estimates[0];
    assert!((estimate.value - 9.5).abs() < 1e-9);
    assert!((estimate.std_error.unwrap() - 3.0 / 5_000f64.sqrt()).abs() < 1e-9);
    let plan = v.sample_size.expect("a plan from the control's variance");
    // σ = 3, δ = 5% of 10.
    let expected = sample_size_means(3.0, 0.5, 0.05, 0.8).unwrap().ceil() as u64;
    assert_eq!(plan.needed_per_variant, expected);
}

#[test]
fn max_duration_without_a_verdict_applies_on_inconclusive() {
    let cases = [
        (
            OnInconclusive::Rollback,
            ExperimentPhase::Inconclusive,
            Action::Rollback,
            0,
        ),
        (
            OnInconclusive::Extend,
            ExperimentPhase::Running,
            Action::Extend,
            1,
        ),
        (
            OnInconclusive::Hold,
            ExperimentPhase::Inconclusive,
            Action::Hold,
            0,
        ),
    ];
    for (on_inconclusive, phase, action, extensions) in cases {
        let mut spec = ab();
        spec.on_inconclusive = on_inconclusive;
        let v = decide(
            &spec,
            &ExperimentStatus::default(),
            &ab_data(0.10, 0.100),
            25 * HOUR,
        );
        assert_eq!(
            (v.phase, v.reason, &v.action, v.extensions),
            (phase, reason::MAX_DURATION_REACHED, &action, extensions),
            "{on_inconclusive:?}: {}",
            v.message
        );
        assert!(
            v.message.contains("maxDuration 24h passed"),
            "{}",
            v.message
        );
    }
}

#[test]
fn an_extension_moves_max_duration_on() {
    let mut spec = ab();
    spec.on_inconclusive = OnInconclusive::Extend;
    let extended = ExperimentStatus {
        extensions: 1,
        ..ExperimentStatus::default()
    };
    let data = ab_data(0.10, 0.100);
    let within = decide(&spec, &extended, &data, 30 * HOUR);
    assert_eq!(within.action, Action::Continue);
    assert_eq!(within.extensions, 1);
    let after = decide(&spec, &extended, &data, 49 * HOUR);
    assert_eq!(after.action, Action::Extend);
    assert_eq!(after.extensions, 2);
}

#[test]
fn not_enough_data_at_max_duration_is_inconclusive() {
    let data = Observation::Data(vec![
        variant("control", 100.0, &[("conversion", proportion(100.0, 10.0))]),
        variant(
            "candidate",
            100.0,
            &[("conversion", proportion(100.0, 10.0))],
        ),
    ]);
    let v = decide(&ab(), &ExperimentStatus::default(), &data, 25 * HOUR);
    assert_eq!(v.phase, ExperimentPhase::Inconclusive);
    assert_eq!(v.action, Action::Rollback);
    assert!(
        v.message.contains("1000 per variant needed"),
        "{}",
        v.message
    );
}

#[test]
fn holm_corrects_across_three_challengers() {
    let mut spec = spec(
        &[("control", 25), ("b", 25), ("c", 25), ("d", 25)],
        vec![primary_proportion("conversion")],
    );
    spec.analysis.sequential = false;
    let arm = |name: &str, successes: f64| {
        variant(
            name,
            10_000.0,
            &[("conversion", proportion(10_000.0, successes))],
        )
    };
    // b alone: z ≈ 2.1, p ≈ 0.034 — a winner without correction, not with three challengers.
    let data = Observation::Data(vec![
        arm("control", 1_000.0),
        arm("b", 1_090.0),
        arm("c", 1_010.0),
        arm("d", 990.0),
    ]);
    let v = decide(&spec, &ExperimentStatus::default(), &data, 2 * HOUR);
    let settings = Settings {
        alpha: 0.05,
        sequential: false,
        tuning_n: 2000.0,
    };
    let raw: Vec<f64> = [1_090.0, 1_010.0, 990.0]
        .iter()
        .map(|s| {
            compare(
                MetricKind::Proportion,
                &proportion(10_000.0, *s),
                &proportion(10_000.0, 1_000.0),
                settings,
            )
            .unwrap()
            .p_value
        })
        .collect();
    assert!(raw[0] < 0.05 && raw[0] > 0.05 / 3.0, "{raw:?}");
    let adjusted = holm_adjust(&raw).unwrap();
    let reported: Vec<f64> = v.comparisons.iter().map(|c| c.p_value).collect();
    assert_eq!(reported, adjusted);
    assert!(
        v.comparisons
            .iter()
            .all(|c| c.verdict == ComparisonVerdict::NoDifference)
    );
    assert_eq!(v.phase, ExperimentPhase::Running);
    assert!(v.winner.is_none());
    // The plan splits alpha across the three challengers.
    let plan = v.sample_size.unwrap();
    let expected = sample_size_proportions(0.10, 0.105, 0.05 / 3.0, 0.8)
        .unwrap()
        .ceil() as u64;
    assert_eq!(plan.needed_per_variant, expected);
}

#[test]
fn the_status_stays_within_its_bounds() {
    let names: Vec<String> = (0..MAX_VARIANTS).map(|i| format!("v{i}")).collect();
    let mut variants: Vec<(&str, u32)> = vec![("control", 10)];
    variants.extend(names.iter().skip(1).map(|n| (n.as_str(), 10)));
    let mut metrics = vec![primary_proportion("conversion")];
    metrics
        .extend((1..20).map(|i| guardrail_mean(&format!("g{i}"), Direction::LowerIsBetter, 0.1)));
    let spec = spec(&variants, metrics.clone());
    let data = Observation::Data(
        variants
            .iter()
            .map(|(name, _)| {
                let stats: Vec<(&str, Sufficient)> = metrics
                    .iter()
                    .map(|m| match m.kind {
                        MetricKind::Proportion => (m.name.as_str(), proportion(5_000.0, 500.0)),
                        MetricKind::Mean => (m.name.as_str(), mean(5_000.0, 1.0, 0.1)),
                    })
                    .collect();
                variant(name, 5_000.0, &stats)
            })
            .collect(),
    );
    let v = decide(&spec, &ExperimentStatus::default(), &data, 2 * HOUR);
    assert_eq!(v.variants.len(), MAX_VARIANTS);
    assert!(v.variants.iter().all(|s| s.estimates.len() == 20));
    assert_eq!(v.comparisons.len(), 9 * 20);
    assert!(v.comparisons.len() <= 200);
    // Everything is a number JSON can hold.
    serde_json::to_string(&v.comparisons).expect("serializable");
}

#[test]
fn garbage_from_prometheus_is_no_data_not_nan() {
    let data = Observation::Data(vec![
        variant(
            "control",
            f64::NAN,
            &[("conversion", proportion(f64::NAN, -3.0))],
        ),
        variant(
            "candidate",
            -1.0,
            &[("conversion", proportion(f64::INFINITY, 1.0))],
        ),
    ]);
    let v = decide(&ab(), &ExperimentStatus::default(), &data, 2 * HOUR);
    assert_eq!(v.reason, reason::NOT_ENOUGH_DATA);
    let json = serde_json::to_value(&v.comparisons).unwrap();
    assert!(!json.to_string().contains("null"), "{json}");
}

/// One simulated experiment over the spec's variants (equal weights): `LOOKS` analyses one
/// interval apart, each after `USERS_PER_ARM_PER_LOOK` users per arm on average more (a
/// multinomial split) converting at `rates` (the spec's variant order); the first look that
/// ends the experiment decides. Returns its phase and winner.
fn simulate(
    rng: &mut SplitMix64,
    spec: &ExperimentSpec,
    rates: &[f64],
) -> (ExperimentPhase, Option<String>) {
    const LOOKS: u32 = 30;
    const USERS_PER_ARM_PER_LOOK: u64 = 200;
    let arms = rates.len();
    let (mut users, mut successes) = (vec![0u64; arms], vec![0u64; arms]);
    let mut status = ExperimentStatus::default();
    for look in 1..=LOOKS {
        let mut left = USERS_PER_ARM_PER_LOOK * arms as u64;
        for arm in 0..arms {
            let new_users = if arm + 1 == arms {
                left
            } else {
                rng.binomial(left, 1.0 / (arms - arm) as f64)
            };
            left -= new_users;
            users[arm] += new_users;
            successes[arm] += rng.binomial(new_users, rates[arm]);
        }
        let data = spec
            .variants
            .iter()
            .enumerate()
            .map(|(arm, v)| {
                let n = users[arm] as f64;
                variant(
                    &v.name,
                    n,
                    &[("conversion", proportion(n, successes[arm] as f64))],
                )
            })
            .collect();
        let v = decide(spec, &status, &Observation::Data(data), look * MINUTE);
        if v.phase != ExperimentPhase::Running {
            return (v.phase, v.winner);
        }
        status.guardrail_breaches = v.guardrail_breaches;
        status.extensions = v.extensions;
    }
    (ExperimentPhase::Running, None)
}

/// A/B spec for the simulation: look every minute from the first, 1000 per arm before any
/// verdict, maxDuration 30 looks.
fn simulation_spec(sequential: bool) -> ExperimentSpec {
    let mut spec = spec(
        &[("control", 50), ("candidate", 50)],
        vec![primary_proportion("conversion")],
    );
    spec.analysis.min_duration = "1m".to_string();
    spec.analysis.max_duration = "30m".to_string();
    spec.analysis.min_samples_per_variant = 1000;
    spec.analysis.sequential = sequential;
    spec.on_inconclusive = OnInconclusive::Hold;
    spec
}

const SIMULATED: usize = 1000;
const ALPHA: f64 = 0.05;

#[test]
fn aa_experiments_looked_at_every_interval_find_a_winner_at_most_alpha_of_the_time() {
    let mut rng = SplitMix64(1414);
    let rate = |spec: &ExperimentSpec, rng: &mut SplitMix64| {
        let winners = (0..SIMULATED)
            .filter(|_| simulate(rng, spec, &[0.10, 0.10]).1.is_some())
            .count();
        winners as f64 / SIMULATED as f64
    };
    let sequential = rate(&simulation_spec(true), &mut rng);
    let naive = rate(&simulation_spec(false), &mut rng);
    println!(
        "A/A through decide, seed 1414: {SIMULATED} experiments x up to 30 looks (200 users per \
         arm per look, rate 0.10, alpha {ALPHA}, verdicts from 1000 per arm): a winner in {sequential:.3} \
         (sequential), {naive:.3} (fixed-horizon test at every look)"
    );
    assert!(
        sequential <= ALPHA,
        "sequential false-positive rate {sequential}"
    );
    // Why the default is sequential: the same looks with a fixed-horizon test find winners
    // that are not there.
    assert!(naive > ALPHA, "naive false-positive rate {naive}");
}

#[test]
fn a_planted_effect_is_found() {
    let mut rng = SplitMix64(2828);
    let spec = simulation_spec(true);
    let (mut right, mut wrong) = (0usize, 0usize);
    for _ in 0..SIMULATED {
        match simulate(&mut rng, &spec, &[0.10, 0.13]) {
            (_, Some(winner)) if winner == "candidate" => right += 1,
            (ExperimentPhase::Failed, _) | (_, Some(_)) => wrong += 1,
            _ => {}
        }
    }
    let power = right as f64 / SIMULATED as f64;
    println!(
        "planted effect through decide, seed 2828: {SIMULATED} experiments, 0.10 vs 0.13, up to \
         30 looks of 200 users per arm: the candidate won {power:.3} of the time, lost {wrong} times"
    );
    assert_eq!(wrong, 0);
    assert!(power >= 0.8, "power {power}");
}

#[test]
fn a_first_breach_of_a_variant_that_fails_on_another_guardrail_holds_nothing() {
    let (mut spec, Observation::Data(mut data)) = three_way() else {
        unreachable!()
    };
    spec.metrics
        .push(guardrail_mean("memory", Direction::LowerIsBetter, 0.10));
    for (arm, memory) in data.iter_mut().zip([1.0, 1.5, 1.0]) {
        arm.metrics
            .insert("memory".to_string(), mean(10_000.0, memory, 0.1));
    }
    let status = with_breaches(vec![breach("b", "latency", 1)]);
    let v = decide(&spec, &status, &Observation::Data(data), 2 * HOUR);
    assert_eq!(v.dropped, vec!["b".to_string()]);
    assert_eq!(
        v.guardrail_breaches,
        vec![breach("b", "latency", 2), breach("b", "memory", 1)]
    );
    assert_eq!(v.winner.as_deref(), Some("c"), "{}", v.message);
}

#[test]
fn holm_keeps_the_family_wise_rate_with_three_challengers_looked_at_every_interval() {
    let mut rng = SplitMix64(4242);
    let mut spec = spec(
        &[("control", 25), ("b", 25), ("c", 25), ("d", 25)],
        vec![primary_proportion("conversion")],
    );
    let base = simulation_spec(true);
    spec.analysis = base.analysis.clone();
    spec.on_inconclusive = base.on_inconclusive;
    const FAMILIES: usize = 400;
    let winners = (0..FAMILIES)
        .filter(|_| simulate(&mut rng, &spec, &[0.10; 4]).1.is_some())
        .count();
    let rate = winners as f64 / FAMILIES as f64;
    println!(
        "A/A/A/A through decide, seed 4242: {FAMILIES} experiments x up to 30 looks, Holm over \
         three challengers, sequential: a winner in {rate:.3}"
    );
    assert!(rate <= ALPHA, "family-wise false-positive rate {rate}");
}

#[test]
fn a_mismatch_lasting_to_max_duration_is_inconclusive_never_a_promotion() {
    let data = Observation::Data(vec![
        variant(
            "control",
            10_000.0,
            &[("conversion", proportion(10_000.0, 1_000.0))],
        ),
        variant(
            "candidate",
            9_000.0,
            &[("conversion", proportion(9_000.0, 1_800.0))],
        ),
    ]);
    let v = decide(&ab(), &ExperimentStatus::default(), &data, 25 * HOUR);
    assert_eq!(v.phase, ExperimentPhase::Inconclusive);
    assert_eq!(v.reason, reason::MAX_DURATION_REACHED);
    assert_eq!(v.action, Action::Rollback);
    assert!(v.winner.is_none());
    assert!(v.message.contains("sample-ratio mismatch"), "{}", v.message);
}

#[test]
fn a_guardrail_over_a_control_at_zero_breaches_on_a_significant_difference() {
    let errors = MetricSpec {
        kind: MetricKind::Proportion,
        role: MetricRole::Guardrail,
        direction: Direction::LowerIsBetter,
        threshold: Some(0.5),
        ..primary_proportion("errors")
    };
    let spec = spec(
        &[("control", 50), ("candidate", 50)],
        vec![primary_proportion("conversion"), errors.clone()],
    );
    let data = |candidate_errors: f64| {
        Observation::Data(vec![
            variant(
                "control",
                2_000.0,
                &[
                    ("conversion", proportion(2_000.0, 200.0)),
                    ("errors", proportion(2_000.0, 0.0)),
                ],
            ),
            variant(
                "candidate",
                2_000.0,
                &[
                    ("conversion", proportion(2_000.0, 260.0)),
                    ("errors", proportion(2_000.0, candidate_errors)),
                ],
            ),
        ])
    };
    // One error against none: no ratio, and no evidence either.
    let one = decide(&spec, &ExperimentStatus::default(), &data(1.0), 2 * HOUR);
    assert!(one.guardrail_breaches.is_empty(), "{}", one.message);
    // A hundred against none: a breach, with words for the missing ratio.
    let hundred = decide(&spec, &ExperimentStatus::default(), &data(100.0), 2 * HOUR);
    assert_eq!(
        hundred.guardrail_breaches,
        vec![breach("candidate", "errors", 1)]
    );
    assert_eq!(hundred.reason, reason::GUARDRAIL_BREACHED);
    assert!(
        hundred.message.contains("worse than a control at 0"),
        "{}",
        hundred.message
    );
    let row = hundred
        .comparisons
        .iter()
        .find(|c| c.metric == "errors")
        .expect("an errors row");
    assert_eq!((row.effect, row.verdict), (0.0, ComparisonVerdict::Worse));
    serde_json::to_string(&hundred.comparisons).expect("finite numbers");
}
