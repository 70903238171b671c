//! The shadow verdict's rules, one path at a time, its statistics against the golden values,
//! and a simulation of the every-interval look.

use crate::analysis::golden::close;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::analysis::simulation::SplitMix64;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn golden() -> Value {
    serde_json::from_str(include_str!("golden/stats-golden.json")).expect("golden file parses")
}

fn criteria() -> Criteria {
    Criteria {
        min_samples: 1000,
        min_agreement: 0.95,
        max_latency_ratio: 1.5,
        max_error_rate: 0.01,
    }
}

fn latency(p50: f64, p95: f64, p99: f64) -> Option<LatencyPercentiles> {
    Some(LatencyPercentiles { p50, p95, p99 })
}

/// A candidate that agrees `agree` times out of `agree + disagree`, as fast as production.
fn counts(agree: f64, disagree: f64) -> ShadowCounts {
    ShadowCounts {
        agree,
        disagree,
        production_latency: latency(0.010, 0.020, 0.040),
        candidate_latency: latency(0.011, 0.022, 0.050),
        ..ShadowCounts::default()
    }
}

fn judge_at(counts: ShadowCounts, elapsed: Duration) -> ShadowJudgement {
    judge(&criteria(), &ShadowObservation::Data(counts), elapsed, DAY)
}

#[test]
fn psi_smooths_empty_bins_and_needs_observations_on_both_sides() {
    // An empty bin counts as a share of PSI_EMPTY_BIN: finite, and large for a real shift.
    let shifted = psi(&[50.0, 50.0, 0.0], &[0.0, 50.0, 50.0]).expect("psi");
    let by_hand = 2.0 * (0.5 - PSI_EMPTY_BIN) * (0.5 / PSI_EMPTY_BIN).ln();
    close(shifted, by_hand, 1e-12);
    assert!(shifted > 0.25, "{shifted}");
    // Bins beyond the shorter side are empty on it; garbage counts are nothing.
    close(psi(&[1.0, 1.0], &[1.0, 1.0, 0.0]).expect("psi"), 0.0, 1e-12);
    assert_eq!(
        psi(&[1.0, f64::NAN, -3.0], &[1.0, 0.0, 0.0]).map(|p| p.abs() < 1e-12),
        Some(true)
    );
    assert_eq!(psi(&[], &[1.0]), None);
    assert_eq!(psi(&[0.0, 0.0], &[1.0, 2.0]), None);
    assert_eq!(psi(&[1.0, 2.0], &[f64::NAN, -1.0]), None);
}

#[test]
fn the_agreement_interval_is_wilsons_and_matches_the_reference() {
    let g = golden();
    for (key, agree, pairs) in [
        ("agreement_wilson", 9500.0, 10000.0),
        ("agreement_wilson_small", 48.0, 50.0),
    ] {
        let j = judge_at(counts(agree, pairs - agree), HOUR);
        let a = j.agreement.expect("an agreement");
        close(a.rate, agree / pairs, 1e-12);
        close(a.lower, g[key]["ci95"][0].as_f64().expect("lower"), 1e-9);
        close(a.upper, g[key]["ci95"][1].as_f64().expect("upper"), 1e-9);
        assert_eq!(j.samples, pairs as u64);
    }
}

#[test]
fn without_numbers_the_analysis_waits_whatever_the_time() {
    let unreachable = ShadowObservation::Unreachable {
        error: "connection refused".to_string(),
    };
    let j = judge(&criteria(), &unreachable, 2 * DAY, DAY);
    assert_eq!(j.verdict, None);
    assert_eq!(j.reason, reason::PROMETHEUS_UNREACHABLE);
    assert!(j.message.contains("connection refused"), "{}", j.message);
    assert_eq!((j.samples, j.agreement), (0, None));

    let nothing = ShadowObservation::NoData {
        reason: "no series of production sentiment".to_string(),
    };
    let j = judge(&criteria(), &nothing, 2 * DAY, DAY);
    assert_eq!(j.verdict, None);
    assert_eq!(j.reason, reason::NO_DATA);
    assert!(j.message.contains("production sentiment"), "{}", j.message);
}

#[test]
fn agreement_that_cannot_reach_the_criterion_fails_early() {
    // 150 of 200 agree: far below 0.95, long before minSamples or the duration.
    let j = judge_at(counts(150.0, 50.0), HOUR);
    assert_eq!(j.verdict, Some(ShadowVerdict::Fail));
    assert_eq!(j.reason, reason::CANDIDATE_FAILED);
    for part in ["agreement 150 of 200 pairs", "minAgreement 0.95", "0.7500"] {
        assert!(j.message.contains(part), "{part:?} in {}", j.message);
    }
    assert_eq!(j.samples, 200);
}

#[test]
fn the_fail_bound_is_wider_than_the_interval_the_status_shows() {
    // 930 of 1000: the 95% upper bound (0.944) is below 0.95, but one look in many would see
    // that of a candidate at 0.95 by chance: the always-valid bound decides, and it is not.
    let j = judge_at(counts(930.0, 70.0), HOUR);
    let a = j.agreement.clone().expect("an agreement");
    assert!(a.upper < 0.95, "{a:?}");
    assert_eq!(j.verdict, None, "{}", j.message);
    assert_eq!(j.reason, reason::MIRRORING);
    assert!(
        j.message.contains("agreement lower bound 0.91"),
        "{}",
        j.message
    );
    // With more pairs the same rate fails.
    let j = judge_at(counts(9300.0, 700.0), HOUR);
    assert_eq!(j.verdict, Some(ShadowVerdict::Fail), "{}", j.message);
}

#[test]
fn a_candidate_that_errors_too_often_fails_early() {
    let j = judge_at(
        ShadowCounts {
            candidate_errors: 40.0,
            ..counts(200.0, 0.0)
        },
        HOUR,
    );
    assert_eq!(j.verdict, Some(ShadowVerdict::Fail));
    assert_eq!(j.reason, reason::CANDIDATE_FAILED);
    assert!(
        j.message.contains("40 candidate errors of 240 copies sent"),
        "{}",
        j.message
    );
    assert!(j.message.contains("maxErrorRate 0.01"), "{}", j.message);
    close(j.candidate_error_rate.expect("a rate"), 40.0 / 240.0, 1e-12);

    // A dead candidate, no pair compared at all: it fails on its errors.
    let j = judge_at(
        ShadowCounts {
            candidate_errors: 50.0,
            ..ShadowCounts::default()
        },
        HOUR,
    );
    assert_eq!(j.verdict, Some(ShadowVerdict::Fail), "{}", j.message);
    assert_eq!((j.samples, j.agreement), (0, None));
    assert_eq!(j.candidate_error_rate, Some(1.0));
}

#[test]
fn an_error_rate_above_the_criterion_by_chance_only_keeps_it_open() {
    // 1.5% of 1000: above 1% as a point, not beyond doubt: no pass, no fail.
    let j = judge_at(
        ShadowCounts {
            candidate_errors: 15.0,
            ..counts(985.0, 0.0)
        },
        HOUR,
    );
    assert_eq!(j.verdict, None, "{}", j.message);
    assert!(
        j.message
            .contains("candidate error rate 0.0150 above maxErrorRate 0.01"),
        "{}",
        j.message
    );
}

#[test]
fn slow_candidates_fail_only_with_min_samples() {
    let slow = |pairs: f64| ShadowCounts {
        candidate_latency: latency(0.02, 0.05, 0.08),
        ..counts(pairs, 0.0)
    };
    let j = judge_at(slow(500.0), HOUR);
    assert_eq!(j.verdict, None, "{}", j.message);
    let ratio = j.latency_ratio.clone().expect("a ratio");
    close(ratio.p50, 2.0, 1e-12);
    close(ratio.p95, 2.5, 1e-12);
    close(ratio.p99, 2.0, 1e-12);
    assert!(
        j.message.contains("500 of minSamples 1000 pairs"),
        "{}",
        j.message
    );

    let j = judge_at(slow(1000.0), HOUR);
    assert_eq!(j.verdict, Some(ShadowVerdict::Fail));
    assert_eq!(j.reason, reason::CANDIDATE_FAILED);
    assert!(
        j.message
            .contains("p95 latency ratio 2.500 over 1000 pairs is above maxLatencyRatio 1.5"),
        "{}",
        j.message
    );
}

#[test]
fn a_candidate_that_meets_every_criterion_passes() {
    let j = judge_at(
        ShadowCounts {
            candidate_errors: 5.0,
            production_errors: 3.0,
            dropped: 12.4,
            production_confidence: vec![0.0, 10.0, 90.0],
            candidate_confidence: vec![0.0, 12.0, 88.0],
            ..counts(1990.0, 10.0)
        },
        HOUR,
    );
    assert_eq!(j.verdict, Some(ShadowVerdict::Pass), "{}", j.message);
    assert_eq!(j.reason, reason::CANDIDATE_PASSED);
    assert_eq!((j.samples, j.dropped), (2000, 12));
    close(j.candidate_error_rate.expect("a rate"), 5.0 / 2005.0, 1e-12);
    close(
        j.production_error_rate.expect("a rate"),
        3.0 / 2008.0,
        1e-12,
    );
    close(
        j.confidence_shift.expect("a shift"),
        psi(&[0.0, 10.0, 90.0], &[0.0, 12.0, 88.0]).expect("psi"),
        1e-12,
    );
    for part in [
        "agreement 0.9950 [",
        "over 2000 pairs",
        "candidate error rate 0.0025",
        "latency ratio p50 1.100, p95 1.100, p99 1.250",
        "12 copies dropped",
    ] {
        assert!(j.message.contains(part), "{part:?} in {}", j.message);
    }
}

#[test]
fn no_pass_without_min_samples_or_latency_numbers() {
    let j = judge_at(counts(999.0, 0.0), HOUR);
    assert_eq!(j.verdict, None);
    assert_eq!(j.reason, reason::MIRRORING);
    assert!(
        j.message.contains("999 of minSamples 1000 pairs"),
        "{}",
        j.message
    );

    // Production at 0 (or missing) has no ratio, and without one there is no pass.
    for production in [latency(0.0, 0.02, 0.04), None] {
        let j = judge_at(
            ShadowCounts {
                production_latency: production,
                ..counts(5000.0, 0.0)
            },
            HOUR,
        );
        assert_eq!(j.latency_ratio, None);
        assert_eq!(j.verdict, None);
        assert!(
            j.message.contains("no latency numbers yet"),
            "{}",
            j.message
        );
    }
}

#[test]
fn the_duration_ends_an_open_shadow_as_inconclusive() {
    // 0.95 exactly over 1000 pairs: neither beyond doubt above nor below.
    let open = counts(950.0, 50.0);
    let j = judge_at(open.clone(), DAY - Duration::from_secs(1));
    assert_eq!(j.verdict, None);
    assert_eq!(j.reason, reason::MIRRORING);

    let j = judge_at(open, DAY + Duration::from_secs(65));
    assert_eq!(j.verdict, Some(ShadowVerdict::Inconclusive));
    assert_eq!(j.reason, reason::SHADOW_DURATION_REACHED);
    for part in [
        "duration 24h reached (24h1m elapsed)",
        "still open: agreement lower bound",
        "below minAgreement 0.95",
    ] {
        assert!(j.message.contains(part), "{part:?} in {}", j.message);
    }
    // A fail or a pass is a verdict at any time, the duration only ends what is open.
    let j = judge_at(counts(5000.0, 0.0), 2 * DAY);
    assert_eq!(j.verdict, Some(ShadowVerdict::Pass));
}

#[test]
fn counts_that_cannot_be_counts_are_nothing() {
    let j = judge_at(
        ShadowCounts {
            candidate_errors: f64::NAN,
            production_errors: -4.0,
            dropped: f64::INFINITY,
            ..counts(99.6, -1.0)
        },
        HOUR,
    );
    assert_eq!((j.samples, j.dropped), (100, 0));
    assert_eq!(j.candidate_error_rate, Some(0.0));
    assert_eq!(j.production_error_rate, Some(0.0));
    assert_eq!(j.agreement.map(|a| a.rate), Some(1.0));
}

/// Pairs per look and looks: one analysis a minute over 50 minutes at 100 mirrored requests a
/// minute, minSamples 1000 (reached at the 10th look).
const LOOKS: usize = 50;
const PAIRS_PER_LOOK: u64 = 100;
const SHADOWS: usize = 2_000;
const SEED: u64 = 15;

/// One shadow, looked at every interval until its first verdict: the look and the verdict (or
/// none by the last look), and whether the 95% interval alone (its upper bound below the
/// criterion) would have failed it by then.
fn run_shadow(rng: &mut SplitMix64, agreement: f64) -> (Option<(usize, ShadowVerdict)>, bool) {
    let (mut agree, mut pairs) = (0u64, 0u64);
    let mut naive = false;
    for look in 1..=LOOKS {
        agree += rng.binomial(PAIRS_PER_LOOK, agreement);
        pairs += PAIRS_PER_LOOK;
        let j = judge_at(counts(agree as f64, (pairs - agree) as f64), HOUR);
        naive |= j.agreement.is_some_and(|a| a.upper < 0.95);
        if let Some(verdict) = j.verdict {
            return (Some((look, verdict)), naive);
        }
    }
    (None, naive)
}

#[test]
fn looking_every_interval_fails_a_candidate_at_the_criterion_at_most_alpha_of_the_time() {
    let mut rng = SplitMix64(SEED);
    let (mut failed, mut naive) = (0usize, 0usize);
    for _ in 0..SHADOWS {
        let (verdict, naive_fail) = run_shadow(&mut rng, 0.95);
        failed += matches!(verdict, Some((_, ShadowVerdict::Fail))) as usize;
        naive += naive_fail as usize;
    }
    let rate = |k: usize, of: usize| k as f64 / of as f64;
    // A clearly worse candidate (0.90 against 0.95) fails, and early.
    let mut worse_looks: Vec<usize> = (0..SHADOWS / 4)
        .map(|_| match run_shadow(&mut rng, 0.90).0 {
            Some((look, ShadowVerdict::Fail)) => look,
            _ => LOOKS + 1,
        })
        .collect();
    worse_looks.sort_unstable();
    let median = worse_looks[worse_looks.len() / 2];
    let slowest = worse_looks[worse_looks.len() - 1];
    // Printed, not asserted: how often the pass rule (the 95% lower bound, every interval from
    // minSamples on) passes a candidate just below the criterion.
    let below = SHADOWS / 4;
    let passed_below = (0..below)
        .filter(|_| {
            matches!(
                run_shadow(&mut rng, 0.945).0,
                Some((_, ShadowVerdict::Pass))
            )
        })
        .count();
    println!(
        "shadow, seed {SEED}: {SHADOWS} candidates at agreement 0.95 = minAgreement, {LOOKS} looks \
         of {PAIRS_PER_LOOK} pairs (minSamples 1000): failed {:.3} (always-valid bound), the 95% \
         interval at every look would fail {:.3}; {} candidates at 0.90 fail at look {median} \
         (median, {} pairs), {slowest} at the latest; {below} candidates at 0.945 passed {:.3}",
        rate(failed, SHADOWS),
        rate(naive, SHADOWS),
        worse_looks.len(),
        median as u64 * PAIRS_PER_LOOK,
        rate(passed_below, below),
    );
    assert!(
        rate(failed, SHADOWS) <= ALPHA,
        "false-fail rate {}",
        rate(failed, SHADOWS)
    );
    // Why the bound is always valid: the 95% interval looked at every interval fails a good
    // candidate several times more often.
    assert!(
        rate(naive, SHADOWS) > 2.0 * ALPHA,
        "naive rate {}",
        rate(naive, SHADOWS)
    );
    assert!(median <= 5, "median look {median}");
    assert!(slowest <= LOOKS, "a candidate at 0.90 never failed");
}
