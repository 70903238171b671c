//! The verdict on a ShadowDeployment's candidate: one analysis, from the mirror's counts that
//! Prometheus holds (`controller::shadow::observe`) to a verdict, a condition reason and the
//! numbers behind them. Pure.
//!
//! The rules, in the order [`judge`] applies them (each may end the analysis):
//!
//! 1. **No numbers.** Prometheus unreachable, or no series yet: still running
//!    (`PrometheusUnreachable`, `NoData`), whatever the time; the judgement carries no numbers
//!    (the controller keeps the status it has).
//! 2. **The numbers.** `samples` = agree + disagree (the compared pairs); the agreement rate is
//!    agree / samples with its 95% Wilson interval. The candidate's error rate is
//!    candidate errors / (samples + candidate errors): of the copies the candidate was sent,
//!    the share it failed. Production's error rate is production errors over every sampled
//!    request (agree + disagree + both error kinds). The latency ratio is the candidate's
//!    percentile over production's at p50, p95 and p99 (none where production's is 0 or
//!    missing); the confidence shift is [`psi`] of production's confidence bins against the
//!    candidate's.
//! 3. **Fail as soon as a criterion cannot be met** (`CandidateFailed`, naming it):
//!    - the agreement interval's upper bound is below `minAgreement`, or
//!    - the candidate error rate's interval has its lower bound above `maxErrorRate`, or
//!    - with at least `minSamples` pairs, the p95 latency ratio is above `maxLatencyRatio`.
//!
//!    The controller looks every interval, and a 95% interval looked at every interval fails a
//!    candidate that sits exactly at the criterion far more often than 5% of the time (17% over
//!    50 looks in the tests' simulation). So the two fail bounds are **always valid**: the same
//!    Wilson score form with the normal-mixture boundary of `sequential::confidence_sequence`
//!    (tuned at `minSamples`, alpha 0.05) in place of 1.96 (2% in the same simulation). They
//!    are wider than the 95% interval the status shows, by about 1.5x at `minSamples`: a
//!    clearly worse candidate still fails within its first hundreds of pairs (0.90 against
//!    0.95: 300 pairs, median).
//! 4. **Pass** (`CandidatePassed`) with at least `minSamples` pairs, the 95% agreement
//!    interval's lower bound at or above `minAgreement`, the candidate's error rate (the point
//!    estimate) at or below `maxErrorRate` and the p95 latency ratio at or below
//!    `maxLatencyRatio` (no latency numbers yet: not yet). The pass rule keeps the 95% interval
//!    the criterion is defined by (`spec.criteria.minAgreement`); looked at every interval it
//!    passed 1% of candidates at 0.945 against 0.95 in the simulation.
//! 5. **Otherwise** still running (`Mirroring`) until `elapsed >= duration`, then
//!    `Inconclusive` (`ShadowDurationReached`), saying which criterion was still open.

use std::time::Duration;

use super::compare::whole;
use super::decision::human;
use super::proportions::Proportion;
use super::sequential::rho;
use super::wilson::{wilson_interval, wilson_score_interval};
use crate::api::conditions::reason;
use crate::api::shadow_deployment::{Agreement, Criteria, LatencyPercentiles, ShadowVerdict};

// The confidence shift is drift's PSI, named here too as the shadow's tests and callers know it.
pub use super::drift::{PSI_EMPTY_BIN, psi};

/// The level of the agreement interval the status shows and the pass rule uses, and of the
/// always-valid fail bounds.
pub const ALPHA: f64 = 0.05;

/// Cumulative counts since the shadow started mirroring, read from Prometheus.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ShadowCounts {
    pub agree: f64,
    pub disagree: f64,
    pub candidate_errors: f64,
    pub production_errors: f64,
    pub dropped: f64,
    /// Latency percentiles of each side over the compared pairs (None: no pairs yet).
    pub production_latency: Option<LatencyPercentiles>,
    pub candidate_latency: Option<LatencyPercentiles>,
    /// Per-bucket (not cumulative) counts of each side's top-label score on CONFIDENCE_BUCKETS;
    /// empty when the mode is not a classification one.
    pub production_confidence: Vec<f64>,
    pub candidate_confidence: Vec<f64>,
}

/// What one read of Prometheus gave.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowObservation {
    Data(ShadowCounts),
    /// Prometheus answered without the shadow's series.
    NoData {
        reason: String,
    },
    /// Prometheus did not answer.
    Unreachable {
        error: String,
    },
}

/// The outcome of one analysis, in the shape of the status it fills.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowJudgement {
    /// None: still running.
    pub verdict: Option<ShadowVerdict>,
    /// A `conditions::reason` constant.
    pub reason: &'static str,
    /// The numbers behind it (status, Events).
    pub message: String,
    pub samples: u64,
    pub dropped: u64,
    pub agreement: Option<Agreement>,
    pub latency_ratio: Option<LatencyPercentiles>,
    pub candidate_error_rate: Option<f64>,
    pub production_error_rate: Option<f64>,
    pub confidence_shift: Option<f64>,
}

/// One analysis. `elapsed` is the time since `status.startTime`, `duration` the spec's. The
/// rules are in the module's documentation.
pub fn judge(
    criteria: &Criteria,
    observation: &ShadowObservation,
    elapsed: Duration,
    duration: Duration,
) -> ShadowJudgement {
    let counts = match observation {
        ShadowObservation::Unreachable { error } => {
            return waiting(
                reason::PROMETHEUS_UNREACHABLE,
                format!("Prometheus did not answer, the analysis waits: {error}"),
            );
        }
        ShadowObservation::NoData { reason: why } => {
            return waiting(
                reason::NO_DATA,
                format!("no data yet, the analysis waits: {why}"),
            );
        }
        ShadowObservation::Data(counts) => counts,
    };
    let numbers = Numbers::of(criteria, counts);
    let mut judgement = ShadowJudgement {
        verdict: None,
        reason: reason::MIRRORING,
        message: String::new(),
        samples: numbers.samples,
        dropped: whole(counts.dropped),
        agreement: numbers.agreement.clone(),
        latency_ratio: numbers.latency_ratio.clone(),
        candidate_error_rate: numbers.candidate_error_rate,
        production_error_rate: numbers.production_error_rate,
        confidence_shift: numbers.confidence_shift,
    };
    let summary = numbers.summary(criteria, judgement.dropped);

    if let Some(failed) = numbers.failed(criteria) {
        judgement.verdict = Some(ShadowVerdict::Fail);
        judgement.reason = reason::CANDIDATE_FAILED;
        judgement.message = format!("the candidate fails: {failed}. {summary}");
        return judgement;
    }
    let open = numbers.open(criteria);
    if open.is_empty() {
        judgement.verdict = Some(ShadowVerdict::Pass);
        judgement.reason = reason::CANDIDATE_PASSED;
        judgement.message = format!("the candidate passes every criterion. {summary}");
        return judgement;
    }
    let open = open.join("; ");
    if elapsed >= duration {
        judgement.verdict = Some(ShadowVerdict::Inconclusive);
        judgement.reason = reason::SHADOW_DURATION_REACHED;
        judgement.message = format!(
            "duration {} reached ({} elapsed) without a verdict, still open: {open}. {summary}",
            human(duration),
            human(elapsed)
        );
        return judgement;
    }
    judgement.message = format!("still open: {open}. {summary}");
    judgement
}

/// A judgement without numbers: the analysis waits.
fn waiting(reason: &'static str, message: String) -> ShadowJudgement {
    ShadowJudgement {
        verdict: None,
        reason,
        message,
        samples: 0,
        dropped: 0,
        agreement: None,
        latency_ratio: None,
        candidate_error_rate: None,
        production_error_rate: None,
        confidence_shift: None,
    }
}

/// What the counts say, before any rule is applied.
struct Numbers {
    samples: u64,
    agreed: u64,
    /// The 95% Wilson interval (what the status shows, what passes).
    agreement: Option<Agreement>,
    /// The always-valid interval of the agreement rate (what fails).
    agreement_bounds: Option<(f64, f64)>,
    candidate_errors: u64,
    candidate_error_rate: Option<f64>,
    /// The always-valid interval of the candidate's error rate (what fails).
    candidate_error_bounds: Option<(f64, f64)>,
    production_error_rate: Option<f64>,
    latency_ratio: Option<LatencyPercentiles>,
    confidence_shift: Option<f64>,
}

impl Numbers {
    fn of(criteria: &Criteria, counts: &ShadowCounts) -> Numbers {
        let agreed = whole(counts.agree);
        let samples = agreed.saturating_add(whole(counts.disagree));
        let candidate_errors = whole(counts.candidate_errors);
        let sent = samples.saturating_add(candidate_errors);
        let sampled = sent.saturating_add(whole(counts.production_errors));
        let tuning_n = criteria.min_samples.max(1) as f64;
        let agreement = Proportion {
            successes: agreed,
            trials: samples,
        };
        let failures = Proportion {
            successes: candidate_errors,
            trials: sent,
        };
        Numbers {
            samples,
            agreed,
            agreement: wilson_interval(agreement, ALPHA)
                .ok()
                .map(|(lower, upper)| Agreement {
                    rate: agreed as f64 / samples as f64,
                    lower,
                    upper,
                }),
            agreement_bounds: always_valid_interval(agreement, tuning_n),
            candidate_errors,
            candidate_error_rate: (sent > 0).then(|| candidate_errors as f64 / sent as f64),
            candidate_error_bounds: always_valid_interval(failures, tuning_n),
            production_error_rate: (sampled > 0)
                .then(|| whole(counts.production_errors) as f64 / sampled as f64),
            latency_ratio: latency_ratio(
                counts.production_latency.as_ref(),
                counts.candidate_latency.as_ref(),
            ),
            confidence_shift: psi(&counts.production_confidence, &counts.candidate_confidence),
        }
    }

    /// The criterion that can no longer be met, with its numbers.
    fn failed(&self, criteria: &Criteria) -> Option<String> {
        if let Some((_, upper)) = self.agreement_bounds
            && upper < criteria.min_agreement
        {
            return Some(format!(
                "agreement {} of {} pairs, its always-valid upper bound {:.4} is below \
                 minAgreement {}",
                self.agreed, self.samples, upper, criteria.min_agreement
            ));
        }
        if let Some((lower, _)) = self.candidate_error_bounds
            && lower > criteria.max_error_rate
        {
            return Some(format!(
                "{} candidate errors of {} copies sent, the error rate's always-valid lower \
                 bound {:.4} is above maxErrorRate {}",
                self.candidate_errors,
                self.samples + self.candidate_errors,
                lower,
                criteria.max_error_rate
            ));
        }
        if self.samples >= criteria.min_samples
            && let Some(ratio) = &self.latency_ratio
            && ratio.p95 > criteria.max_latency_ratio
        {
            return Some(format!(
                "p95 latency ratio {:.3} over {} pairs is above maxLatencyRatio {}",
                ratio.p95, self.samples, criteria.max_latency_ratio
            ));
        }
        None
    }

    /// The criteria not yet met, each with its numbers (empty: the candidate passes).
    fn open(&self, criteria: &Criteria) -> Vec<String> {
        let mut open = Vec::new();
        if self.samples < criteria.min_samples {
            open.push(format!(
                "{} of minSamples {} pairs",
                self.samples, criteria.min_samples
            ));
        }
        match &self.agreement {
            Some(a) if a.lower >= criteria.min_agreement => {}
            Some(a) => open.push(format!(
                "agreement lower bound {:.4} below minAgreement {}",
                a.lower, criteria.min_agreement
            )),
            None => open.push("no compared pairs yet".to_string()),
        }
        if let Some(rate) = self.candidate_error_rate
            && rate > criteria.max_error_rate
        {
            open.push(format!(
                "candidate error rate {rate:.4} above maxErrorRate {}",
                criteria.max_error_rate
            ));
        }
        match &self.latency_ratio {
            Some(r) if r.p95 <= criteria.max_latency_ratio => {}
            Some(r) => open.push(format!(
                "p95 latency ratio {:.3} above maxLatencyRatio {}",
                r.p95, criteria.max_latency_ratio
            )),
            None => open.push("no latency numbers yet".to_string()),
        }
        open
    }

    /// "agreement 0.9612 [0.9540, 0.9675] over 2500 pairs, ...": every number, for the message.
    fn summary(&self, criteria: &Criteria, dropped: u64) -> String {
        let mut parts = Vec::new();
        match &self.agreement {
            Some(a) => parts.push(format!(
                "agreement {:.4} [{:.4}, {:.4}] over {} pairs (minAgreement {}, minSamples {})",
                a.rate,
                a.lower,
                a.upper,
                self.samples,
                criteria.min_agreement,
                criteria.min_samples
            )),
            None => parts.push(format!(
                "no compared pairs (minSamples {})",
                criteria.min_samples
            )),
        }
        if let Some(rate) = self.candidate_error_rate {
            parts.push(format!(
                "candidate error rate {rate:.4} (maxErrorRate {})",
                criteria.max_error_rate
            ));
        }
        if let Some(rate) = self.production_error_rate {
            parts.push(format!("production error rate {rate:.4}"));
        }
        if let Some(r) = &self.latency_ratio {
            parts.push(format!(
                "latency ratio p50 {:.3}, p95 {:.3}, p99 {:.3} (maxLatencyRatio {})",
                r.p50, r.p95, r.p99, criteria.max_latency_ratio
            ));
        }
        if let Some(shift) = self.confidence_shift {
            parts.push(format!("confidence shift (PSI) {shift:.4}"));
        }
        parts.push(format!("{dropped} copies dropped"));
        parts.join(", ")
    }
}

/// The interval of a rate that may be looked at after every new observation: the Wilson score
/// interval with z replaced by the normal-mixture boundary's at n trials (Waudby-Smith et al.,
/// as `sequential::confidence_sequence` computes it, tightest at `tuning_n`). Wilson's interval
/// is the set of rates p₀ whose score statistic |p̂ − p₀|/√(p₀(1−p₀)/n) stays within z; with the
/// boundary in place of z it is the set no look would reject. None without trials.
fn always_valid_interval(rate: Proportion, tuning_n: f64) -> Option<(f64, f64)> {
    if rate.trials == 0 {
        return None;
    }
    let n = rate.trials as f64;
    let r2 = rho(ALPHA, tuning_n).powi(2);
    let k = n * r2 + 1.0;
    let z = (2.0 * k * (k.sqrt() / ALPHA).ln() / (n * r2)).sqrt();
    wilson_score_interval(rate, z).ok()
}

/// The candidate's percentiles over production's; None where production's is 0 or missing.
fn latency_ratio(
    production: Option<&LatencyPercentiles>,
    candidate: Option<&LatencyPercentiles>,
) -> Option<LatencyPercentiles> {
    let (p, c) = (production?, candidate?);
    let ratio = |c: f64, p: f64| {
        let r = c / p;
        (p > 0.0 && r.is_finite() && r >= 0.0).then_some(r)
    };
    Some(LatencyPercentiles {
        p50: ratio(c.p50, p.p50)?,
        p95: ratio(c.p95, p.p95)?,
        p99: ratio(c.p99, p.p99)?,
    })
}

#[cfg(test)]
#[path = "shadow_tests.rs"]
mod tests;
