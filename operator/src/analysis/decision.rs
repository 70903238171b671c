//! The decision engine: one analysis of an Experiment, from the numbers Prometheus holds to a
//! phase, a reason and an action. Pure: the controller reads Prometheus (`observe`), calls
//! [`decide`], and carries out the [`Action`].

use std::collections::BTreeMap;
use std::time::Duration;

use lexserve_contract::duration::parse_duration;

use super::compare::{Compared, Settings, compare, whole};
use super::holm::holm_adjust;
use super::means::Moments;
use super::power::{mde_means, mde_proportion, sample_size_means, sample_size_proportions};
use super::srm::sample_ratio_mismatch;
use crate::api::conditions::reason;
use crate::api::experiment::{
    Comparison, ComparisonVerdict, Direction, Estimate, ExperimentPhase, ExperimentSpec,
    ExperimentStatus, GuardrailBreach, MAX_VARIANTS, MetricKind, MetricRole, MetricSpec,
    OnInconclusive, OnSuccess, SampleSizePlan, SrmCheck, Variant, VariantStatus,
};

/// A metric's sufficient statistics for one variant, cumulative since the experiment started
/// (counter resets already accounted for): trials and successes of a proportion, or
/// observations, sum and sum of squares of a mean.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sufficient {
    pub count: f64,
    pub sum: f64,
    pub sum_squares: f64,
}

/// What Prometheus holds for one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantData {
    pub variant: String,
    /// Requests assigned to the variant.
    pub assignments: f64,
    /// By metric name; a metric without series is absent.
    pub metrics: BTreeMap<String, Sufficient>,
}

/// What one read of Prometheus gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Data(Vec<VariantData>),
    /// Prometheus answered without the series the analysis needs.
    NoData {
        reason: String,
    },
    /// Prometheus did not answer.
    Unreachable {
        error: String,
    },
}

/// What the controller does after an analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep the split and analyse again next interval.
    Continue,
    /// Send all traffic to the winner.
    Promote { variant: String },
    /// Send all traffic to the control.
    Rollback,
    /// Keep the split, decide nothing (sample-ratio mismatch, `onInconclusive: Hold`).
    Hold,
    /// `maxDuration` passed and `onInconclusive: Extend`: keep collecting for one more
    /// `maxDuration` (`Verdict.extensions` already counts it).
    Extend,
    /// The experiment is over without promotion (`onSuccess: Recommend`): the control serves
    /// alone, the winner is only reported.
    End,
}

/// The outcome of one analysis, in the shape of the status it fills.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// `Running` while undecided; `Succeeded`, `Failed` or `Inconclusive` once decided.
    pub phase: ExperimentPhase,
    /// A condition reason constant (`api::conditions::reason`).
    pub reason: &'static str,
    /// The numbers behind it, for status, history and Events.
    pub message: String,
    pub action: Action,
    pub variants: Vec<VariantStatus>,
    pub comparisons: Vec<Comparison>,
    pub srm: Option<SrmCheck>,
    pub winner: Option<String>,
    pub sample_size: Option<SampleSizePlan>,
    /// The guardrail streaks to store in `status.guardrailBreaches`.
    pub guardrail_breaches: Vec<GuardrailBreach>,
    /// `status.extensions` after this analysis.
    pub extensions: u32,
    /// Challengers a guardrail has failed while others go on (kept by their streaks in
    /// `guardrail_breaches`, which stay at or above [`BREACHES_TO_FAIL`]): they take no further
    /// part in the analysis, and the controller gives them no new traffic (weight 0).
    pub dropped: Vec<String>,
}

/// One analysis: `status` carries what earlier analyses left (breach streaks, extensions),
/// `elapsed` is the time since `status.startTime`.
///
/// The order is fixed, and each step may end the analysis:
/// 1. No data, or Prometheus unreachable: `Running`, `Continue`, everything earlier analyses
///    left (streaks included) stays as it was. Never a failed check.
/// 2. Guardrails (see [`guardrail_breached`] for the rule): a breach
///    [`BREACHES_TO_FAIL`] analyses in a row fails the variant. With every challenger failed
///    (the usual case: one challenger), `Failed` and `Rollback`. With challengers left, the
///    failed ones are listed in [`Verdict::dropped`] (the controller gives them no new traffic),
///    take no further part in the primary comparison, the sample-ratio check and the minimum
///    sample count, and the rest go on. A first breach holds every decision for one interval
///    (`Running`, `GuardrailBreached`): a winner is not promoted while a guardrail is in doubt.
/// 3. Enough data: `minDuration` elapsed and the control and every remaining challenger with
///    weight > 0 have `minSamplesPerVariant` primary samples; else `NotEnoughData` with the
///    sample-size plan.
/// 4. Sample-ratio mismatch (p < [`SRM_P_VALUE`]): `Running`, `Hold`; it never promotes.
/// 5. The primary metric, each remaining challenger against the control, Holm across them: a
///    significantly better one wins (the best of them if several); every one significantly
///    worse fails the experiment.
///
/// Steps 3 to 5 end in `onInconclusive` once `maxDuration × (1 + extensions)` has passed
/// without a verdict.
pub fn decide(
    spec: &ExperimentSpec,
    status: &ExperimentStatus,
    observation: &Observation,
    elapsed: Duration,
) -> Verdict {
    let data = match observation {
        Observation::Unreachable { error } => {
            return waiting(
                status,
                reason::PROMETHEUS_UNREACHABLE,
                format!("Prometheus did not answer, the analysis waits: {error}"),
            );
        }
        Observation::NoData { reason: why } => {
            return waiting(
                status,
                reason::NO_DATA,
                format!("no data yet, the analysis waits: {why}"),
            );
        }
        Observation::Data(data) => data,
    };
    match Analysis::new(spec, status, data) {
        Ok(analysis) => analysis.run(elapsed),
        Err(message) => {
            let mut verdict = waiting(status, reason::INVALID_SPEC, message);
            verdict.action = Action::Hold;
            verdict
        }
    }
}

/// Analyses in a row a guardrail must be breached to fail its variant: one breach may be a
/// burst (a cold cache, a noisy neighbour), two in a row are a trend.
pub const BREACHES_TO_FAIL: u32 = 2;
/// The fewest observations each arm needs before a guardrail can be breached: below it a few
/// slow requests look like a degradation.
pub const MIN_GUARDRAIL_SAMPLES: u64 = 30;
/// The sample-ratio check fails below this p-value (as `status.srm.mismatch` documents).
pub const SRM_P_VALUE: f64 = 0.001;

/// An analysis that did not run on new numbers: everything earlier analyses left stays.
fn waiting(status: &ExperimentStatus, reason: &'static str, message: String) -> Verdict {
    Verdict {
        phase: ExperimentPhase::Running,
        reason,
        message,
        action: Action::Continue,
        variants: status.variants.clone(),
        comparisons: status.comparisons.clone(),
        srm: status.srm.clone(),
        winner: None,
        sample_size: status.sample_size.clone(),
        guardrail_breaches: status.guardrail_breaches.clone(),
        extensions: status.extensions,
        dropped: failed_variants(&status.guardrail_breaches),
    }
}

/// The variants a guardrail has failed, in the order of `breaches`.
pub fn failed_variants(breaches: &[GuardrailBreach]) -> Vec<String> {
    let mut failed: Vec<String> = Vec::new();
    for b in breaches {
        if b.consecutive >= BREACHES_TO_FAIL && !failed.contains(&b.variant) {
            failed.push(b.variant.clone());
        }
    }
    failed
}

/// The guardrail rule: a variant breaches a guardrail when
/// - both arms have at least [`MIN_GUARDRAIL_SAMPLES`] observations,
/// - the point estimate of the relative degradation against the control (the lift, turned by
///   the metric's direction) is worse than `threshold` (any degradation of a control at 0, an
///   error rate with no errors, counts as infinitely worse), and
/// - the one-sided interval of the difference at `alpha` (always valid with `sequential`)
///   excludes "no degradation": its bound on the degradation is above 0.
///
/// The point estimate alone would trip on noise with few samples; the interval alone would trip
/// on a real but tolerated degradation with many. Neither is corrected across variants, metrics
/// or looks: a guardrail errs on the side of safety, and a breach must repeat before it fails.
pub fn guardrail_breached(compared: &Compared, direction: Direction, threshold: f64) -> bool {
    let relative = -improvement(direction, compared.relative());
    let absolute = -improvement(direction, compared.diff);
    compared.samples.0 >= MIN_GUARDRAIL_SAMPLES
        && compared.samples.1 >= MIN_GUARDRAIL_SAMPLES
        && relative > threshold
        && absolute - compared.diff_one_sided_halfwidth > 0.0
}

/// The lift turned so that positive is better.
fn improvement(direction: Direction, lift: f64) -> f64 {
    match direction {
        Direction::HigherIsBetter => lift,
        Direction::LowerIsBetter => -lift,
    }
}

/// What a guardrail says about one variant at this analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuardrailState {
    Breached,
    Clear,
    /// No numbers for this variant or the control: the streak neither grows nor resets.
    Unknown,
}

/// The guardrail step's outcome.
struct Guardrails {
    breaches: Vec<GuardrailBreach>,
    comparisons: Vec<Comparison>,
    /// Variants the guardrails have failed (now or earlier).
    failed: Vec<String>,
    /// First breaches, by variant, as "variant metric +x% ..." for the message (a variant that
    /// fails on another guardrail is left out: it is no longer in doubt).
    warnings: Vec<(String, String)>,
    /// Failures decided at this analysis, for the message.
    new_failures: Vec<String>,
}

struct Analysis<'a> {
    spec: &'a ExperimentSpec,
    status: &'a ExperimentStatus,
    data: BTreeMap<&'a str, &'a VariantData>,
    control: &'a Variant,
    primary: &'a MetricSpec,
    settings: Settings,
    min_duration: Duration,
    /// `maxDuration × (1 + extensions)`.
    max_duration: Duration,
}

impl<'a> Analysis<'a> {
    fn new(
        spec: &'a ExperimentSpec,
        status: &'a ExperimentStatus,
        data: &'a [VariantData],
    ) -> Result<Self, String> {
        // The CRD's rules guarantee all of these; a spec that slipped past them is reported,
        // not panicked on.
        let control = spec
            .variants
            .iter()
            .find(|v| v.inference_service == spec.control)
            .ok_or_else(|| format!("no variant serves the control {:?}", spec.control))?;
        let primary = spec
            .metrics
            .iter()
            .find(|m| m.role == MetricRole::Primary)
            .ok_or("spec.metrics has no Primary metric")?;
        let duration = |field: &str, text: &str| {
            parse_duration(text).map_err(|e| format!("spec.analysis.{field}: {e}"))
        };
        let analysis = &spec.analysis;
        let min_duration = duration("minDuration", &analysis.min_duration)?;
        let max_duration = duration("maxDuration", &analysis.max_duration)?
            .checked_mul(status.extensions.saturating_add(1))
            .unwrap_or(Duration::MAX);
        Ok(Analysis {
            spec,
            status,
            data: data.iter().map(|d| (d.variant.as_str(), d)).collect(),
            control,
            primary,
            settings: Settings {
                alpha: analysis.alpha,
                sequential: analysis.sequential,
                tuning_n: 2.0 * analysis.min_samples_per_variant.max(1) as f64,
            },
            min_duration,
            max_duration,
        })
    }

    /// A variant's numbers for a metric, with what cannot be a count or a sum (NaN, negative)
    /// read as nothing.
    fn stats(&self, variant: &str, metric: &str) -> Option<Sufficient> {
        let s = *self.data.get(variant)?.metrics.get(metric)?;
        let clean = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
        let s = Sufficient {
            count: clean(s.count),
            sum: clean(s.sum),
            sum_squares: clean(s.sum_squares),
        };
        (s.count > 0.0).then_some(s)
    }

    fn assignments(&self, variant: &str) -> u64 {
        self.data.get(variant).map_or(0, |d| whole(d.assignments))
    }

    fn primary_samples(&self, variant: &str) -> u64 {
        self.stats(variant, &self.primary.name)
            .map_or(0, |s| whole(s.count))
    }

    fn run(&self, elapsed: Duration) -> Verdict {
        let guard = self.guardrails();
        let active: Vec<&Variant> = self
            .spec
            .variants
            .iter()
            .filter(|v| v.name != self.control.name && !guard.failed.contains(&v.name))
            .collect();
        // Who must have enough samples and keeps the split in check: the arms still receiving
        // traffic.
        let mut arms: Vec<&Variant> = vec![self.control];
        arms.extend(active.iter().filter(|v| v.weight > 0));

        let (primary, primary_numbers) = self.primary_comparisons(&active);
        let mut comparisons = primary.clone();
        comparisons.extend(guard.comparisons.iter().cloned());
        comparisons.truncate(MAX_COMPARISONS);
        let plan = self.plan(&arms, active.len());
        let srm = self.srm(&arms);
        let mut verdict = Verdict {
            phase: ExperimentPhase::Running,
            reason: reason::NO_SIGNIFICANT_DIFFERENCE,
            message: String::new(),
            action: Action::Continue,
            variants: self.variant_statuses(),
            comparisons,
            srm: srm.clone(),
            winner: None,
            sample_size: plan.clone(),
            guardrail_breaches: guard.breaches.clone(),
            extensions: self.status.extensions,
            dropped: guard.failed.clone(),
        };
        let mut notes = Vec::new();
        if !guard.new_failures.is_empty() {
            notes.push(format!(
                "guardrail failed (breached {BREACHES_TO_FAIL} analyses in a row): {}",
                guard.new_failures.join("; ")
            ));
        }
        let message = |notes: &[String], text: String| {
            let mut all = notes.to_vec();
            all.push(text);
            all.join(". ")
        };

        // 1. Guardrails.
        if active.is_empty() {
            verdict.phase = ExperimentPhase::Failed;
            verdict.reason = reason::GUARDRAIL_FAILED;
            verdict.action = Action::Rollback;
            verdict.message = message(
                &notes,
                format!(
                    "every challenger failed a guardrail ({}): all traffic back to the control {}",
                    guard.failed.join(", "),
                    self.control.name
                ),
            );
            return verdict;
        }
        if !guard.new_failures.is_empty() {
            notes.push(format!(
                "dropped from the comparison: {}; the others go on",
                guard.failed.join(", ")
            ));
        }
        if !guard.warnings.is_empty() {
            verdict.reason = reason::GUARDRAIL_BREACHED;
            verdict.message = message(
                &notes,
                format!(
                    "guardrail breached, nothing is decided until the next analysis (a second \
                     breach in a row fails the variant): {}",
                    guard
                        .warnings
                        .iter()
                        .map(|(_, line)| line.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
            return verdict;
        }

        // 2. Enough data.
        let too_few: Vec<String> = arms
            .iter()
            .filter_map(|v| {
                let n = self.primary_samples(&v.name);
                (n < self.spec.analysis.min_samples_per_variant).then(|| format!("{} {n}", v.name))
            })
            .collect();
        if elapsed < self.min_duration || !too_few.is_empty() {
            let mut missing = Vec::new();
            if elapsed < self.min_duration {
                missing.push(format!(
                    "minDuration {} not reached ({} elapsed)",
                    self.spec.analysis.min_duration,
                    human(elapsed)
                ));
            }
            if !too_few.is_empty() {
                missing.push(format!(
                    "{} samples of {} per variant needed, have {}",
                    self.primary.name,
                    self.spec.analysis.min_samples_per_variant,
                    too_few.join(", ")
                ));
            }
            if let Some(plan) = &plan {
                missing.push(format!(
                    "planned: needs about {} per variant, has {}",
                    plan.needed_per_variant, plan.smallest_variant_samples
                ));
            }
            let why = missing.join("; ");
            if elapsed >= self.max_duration {
                return self.inconclusive(verdict, message(&notes, why), elapsed);
            }
            verdict.reason = reason::NOT_ENOUGH_DATA;
            verdict.message = message(&notes, why);
            return verdict;
        }

        // 3. Sample-ratio mismatch.
        if let Some(check) = srm.as_ref().filter(|c| c.mismatch) {
            let split: Vec<String> = arms
                .iter()
                .map(|v| {
                    format!(
                        "{} {} (weight {})",
                        v.name,
                        self.assignments(&v.name),
                        v.weight
                    )
                })
                .collect();
            let why = format!(
                "sample-ratio mismatch: assignments {} do not fit the weights (chi-square {:.1}, \
                 p = {:.2e} < {SRM_P_VALUE}); results cannot be trusted, nothing is promoted",
                split.join(", "),
                check.chi_square,
                check.p_value
            );
            if elapsed >= self.max_duration {
                return self.inconclusive(verdict, message(&notes, why), elapsed);
            }
            verdict.reason = reason::SAMPLE_RATIO_MISMATCH;
            verdict.action = Action::Hold;
            verdict.message = message(&notes, why);
            return verdict;
        }

        // 4. The primary metric.
        let summary = primary.iter().map(describe).collect::<Vec<_>>().join("; ");
        let direction = self.primary.direction;
        let gain = |c: &Option<Compared>| c.map_or(0.0, |c| improvement(direction, c.relative()));
        let winner = primary
            .iter()
            .zip(&primary_numbers)
            .filter(|(row, _)| row.verdict == ComparisonVerdict::Better)
            .max_by(|(_, a), (_, b)| gain(a).total_cmp(&gain(b)))
            .map(|(row, _)| row);
        if let Some(winner) = winner {
            verdict.phase = ExperimentPhase::Succeeded;
            verdict.reason = reason::WINNER_FOUND;
            verdict.winner = Some(winner.variant.clone());
            verdict.action = match self.spec.on_success {
                OnSuccess::Promote => Action::Promote {
                    variant: winner.variant.clone(),
                },
                OnSuccess::Recommend => Action::End,
            };
            let what = match self.spec.on_success {
                OnSuccess::Promote => "promoted",
                OnSuccess::Recommend => "recommended (the control serves alone)",
            };
            verdict.message = message(
                &notes,
                format!(
                    "{} beats the control on {}, {what}: {summary}",
                    winner.variant, self.primary.name
                ),
            );
            return verdict;
        }
        if primary
            .iter()
            .all(|c| c.verdict == ComparisonVerdict::Worse)
        {
            verdict.phase = ExperimentPhase::Failed;
            verdict.reason = reason::VARIANTS_WORSE;
            verdict.action = Action::Rollback;
            verdict.message = message(
                &notes,
                format!(
                    "every challenger is worse than the control on {}, all traffic back to \
                     the control: {summary}",
                    self.primary.name
                ),
            );
            return verdict;
        }
        let why = format!(
            "no significant difference on {}: {summary}",
            self.primary.name
        );
        if elapsed >= self.max_duration {
            return self.inconclusive(verdict, message(&notes, why), elapsed);
        }
        verdict.message = message(&notes, why);
        verdict
    }

    /// `maxDuration` passed without a verdict: what `onInconclusive` says.
    fn inconclusive(&self, mut verdict: Verdict, why: String, elapsed: Duration) -> Verdict {
        verdict.reason = reason::MAX_DURATION_REACHED;
        let passed = format!(
            "maxDuration {} passed ({} elapsed, {} extension(s)) without a verdict",
            self.spec.analysis.max_duration,
            human(elapsed),
            self.status.extensions
        );
        let what = match self.spec.on_inconclusive {
            OnInconclusive::Rollback => {
                verdict.phase = ExperimentPhase::Inconclusive;
                verdict.action = Action::Rollback;
                "all traffic back to the control".to_string()
            }
            OnInconclusive::Extend => {
                verdict.extensions = self.status.extensions.saturating_add(1);
                verdict.action = Action::Extend;
                format!(
                    "extended to {} maxDuration(s) in all",
                    verdict.extensions.saturating_add(1)
                )
            }
            OnInconclusive::Hold => {
                verdict.phase = ExperimentPhase::Inconclusive;
                verdict.action = Action::Hold;
                "the split stays as it is".to_string()
            }
        };
        verdict.message = format!("{passed}, {what}. {why}");
        verdict
    }

    fn variant_statuses(&self) -> Vec<VariantStatus> {
        self.spec
            .variants
            .iter()
            .take(MAX_VARIANTS)
            .map(|v| VariantStatus {
                name: v.name.clone(),
                assignments: self.assignments(&v.name),
                estimates: self
                    .spec
                    .metrics
                    .iter()
                    .filter_map(|m| {
                        let s = self.stats(&v.name, &m.name)?;
                        estimate(m, &s)
                    })
                    .collect(),
            })
            .collect()
    }

    /// Each challenger (failed or not) against the control on each guardrail, and the updated
    /// streaks.
    fn guardrails(&self) -> Guardrails {
        let mut out = Guardrails {
            breaches: Vec::new(),
            comparisons: Vec::new(),
            failed: Vec::new(),
            warnings: Vec::new(),
            new_failures: Vec::new(),
        };
        let challengers: Vec<&Variant> = self
            .spec
            .variants
            .iter()
            .filter(|v| v.name != self.control.name)
            .collect();
        for metric in self
            .spec
            .metrics
            .iter()
            .filter(|m| m.role == MetricRole::Guardrail)
        {
            let threshold = metric.threshold.unwrap_or(0.0);
            let compared: Vec<Option<Compared>> = challengers
                .iter()
                .map(|v| self.compare(metric, &v.name))
                .collect();
            let rows = self.rows(metric, &challengers, &compared, MIN_GUARDRAIL_SAMPLES);
            for ((variant, compared), mut row) in challengers.iter().zip(&compared).zip(rows) {
                let state = match compared {
                    None => GuardrailState::Unknown,
                    Some(c) if guardrail_breached(c, metric.direction, threshold) => {
                        GuardrailState::Breached
                    }
                    Some(_) => GuardrailState::Clear,
                };
                let before = self
                    .status
                    .guardrail_breaches
                    .iter()
                    .find(|b| b.variant == variant.name && b.metric == metric.name)
                    .map_or(0, |b| b.consecutive);
                let after = match state {
                    GuardrailState::Breached => before.saturating_add(1),
                    // A failed variant stays failed: its traffic is gone, its streak is its
                    // record.
                    GuardrailState::Clear if before >= BREACHES_TO_FAIL => before,
                    GuardrailState::Clear => 0,
                    GuardrailState::Unknown => before,
                };
                if state == GuardrailState::Breached {
                    row.verdict = ComparisonVerdict::Worse;
                    let effect = match compared.and_then(|c| c.lift) {
                        Some(lift) => format!("{:+.1}% vs control", 100.0 * lift.value),
                        None => "worse than a control at 0".to_string(),
                    };
                    let line = format!(
                        "{} {} {effect} (threshold {:.1}% worse, {} in a row)",
                        variant.name,
                        metric.name,
                        100.0 * threshold,
                        after
                    );
                    if after == BREACHES_TO_FAIL {
                        out.new_failures.push(line);
                    } else if after < BREACHES_TO_FAIL {
                        out.warnings.push((variant.name.clone(), line));
                    }
                }
                if after > 0 {
                    out.breaches.push(GuardrailBreach {
                        variant: variant.name.clone(),
                        metric: metric.name.clone(),
                        consecutive: after,
                    });
                }
                out.comparisons.push(row);
            }
        }
        out.failed = failed_variants(&out.breaches);
        // A variant failing now is not also a warning.
        out.warnings
            .retain(|(variant, _)| !out.failed.contains(variant));
        out
    }

    /// Each active challenger against the control on the primary metric, Holm across them.
    /// The status rows, and each row's numbers (the winner is ranked by them: a row's effect
    /// is 0 where the control is at 0).
    fn primary_comparisons(&self, active: &[&Variant]) -> (Vec<Comparison>, Vec<Option<Compared>>) {
        let compared: Vec<Option<Compared>> = active
            .iter()
            .map(|v| self.compare(self.primary, &v.name))
            .collect();
        let rows = self.rows(
            self.primary,
            active,
            &compared,
            self.spec.analysis.min_samples_per_variant,
        );
        (rows, compared)
    }

    fn compare(&self, metric: &MetricSpec, variant: &str) -> Option<Compared> {
        let treatment = self.stats(variant, &metric.name)?;
        let control = self.stats(&self.control.name, &metric.name)?;
        compare(metric.kind, &treatment, &control, self.settings).ok()
    }

    /// Status rows for one metric: Holm-adjusted p-values across the variants (one that could
    /// not be computed counts as p = 1, so the family stays the size of the variants), and a
    /// verdict when both arms have `min_samples`.
    fn rows(
        &self,
        metric: &MetricSpec,
        variants: &[&Variant],
        compared: &[Option<Compared>],
        min_samples: u64,
    ) -> Vec<Comparison> {
        let raw: Vec<f64> = compared
            .iter()
            .map(|c| c.map_or(1.0, |c| finite_or(c.p_value, 1.0).clamp(0.0, 1.0)))
            .collect();
        let adjusted = holm_adjust(&raw).unwrap_or(raw);
        variants
            .iter()
            .zip(compared)
            .zip(adjusted)
            .map(|((v, c), p)| {
                let Some(c) = c else {
                    return Comparison {
                        variant: v.name.clone(),
                        metric: metric.name.clone(),
                        effect: 0.0,
                        interval: vec![0.0, 0.0],
                        p_value: 1.0,
                        verdict: ComparisonVerdict::NotEnoughData,
                    };
                };
                let verdict = if c.samples.0 < min_samples || c.samples.1 < min_samples {
                    ComparisonVerdict::NotEnoughData
                } else if p <= self.settings.alpha {
                    if improvement(metric.direction, c.diff) > 0.0 {
                        ComparisonVerdict::Better
                    } else {
                        ComparisonVerdict::Worse
                    }
                } else {
                    ComparisonVerdict::NoDifference
                };
                Comparison {
                    variant: v.name.clone(),
                    metric: metric.name.clone(),
                    effect: c.lift.map_or(0.0, |l| finite_or(l.value, 0.0)),
                    interval: c.lift.map_or(vec![0.0, 0.0], |l| {
                        vec![finite_or(l.interval.0, 0.0), finite_or(l.interval.1, 0.0)]
                    }),
                    p_value: p,
                    verdict,
                }
            })
            .collect()
    }

    /// "Needs about N per variant, has M": from the control's rate or variance on the primary
    /// metric, at alpha split across the challengers (Holm's first step), for a relative effect
    /// of `minimumDetectableEffect`. It is the fixed-horizon size: a sequential test needs
    /// somewhat more for the same power, the price of looking every interval.
    fn plan(&self, arms: &[&Variant], challengers: usize) -> Option<SampleSizePlan> {
        let control = self.stats(&self.control.name, &self.primary.name)?;
        let analysis = &self.spec.analysis;
        let alpha = analysis.alpha / challengers.max(1) as f64;
        let mde = analysis.minimum_detectable_effect;
        let smallest = arms
            .iter()
            .map(|v| self.primary_samples(&v.name))
            .min()
            .unwrap_or(0);
        let (needed, detectable) = match self.primary.kind {
            MetricKind::Proportion => {
                let p = control.sum / control.count;
                let shifted = if p * (1.0 + mde) < 1.0 {
                    p * (1.0 + mde)
                } else {
                    p * (1.0 - mde)
                };
                let needed = sample_size_proportions(p, shifted, alpha, analysis.power).ok()?;
                let detectable = mde_proportion(p, smallest, alpha, analysis.power)
                    .ok()
                    .map(|d| d / p);
                (needed, detectable)
            }
            MetricKind::Mean => {
                let moments = Moments {
                    count: whole(control.count),
                    sum: control.sum,
                    sum_sq: control.sum_squares,
                };
                let sigma = moments.variance("control").ok()?.sqrt();
                let mean = moments.mean().abs();
                let needed = sample_size_means(sigma, mde * mean, alpha, analysis.power).ok()?;
                let detectable = mde_means(sigma, smallest, alpha, analysis.power)
                    .ok()
                    .filter(|_| mean > 0.0)
                    .map(|d| d / mean);
                (needed, detectable)
            }
        };
        needed.is_finite().then(|| SampleSizePlan {
            needed_per_variant: needed.ceil() as u64,
            smallest_variant_samples: smallest,
            detectable_effect_now: detectable.filter(|d| d.is_finite()),
        })
    }

    /// Chi-square of the assignments of the arms still receiving traffic against their weights.
    fn srm(&self, arms: &[&Variant]) -> Option<SrmCheck> {
        let observed: Vec<u64> = arms.iter().map(|v| self.assignments(&v.name)).collect();
        let weights: Vec<f64> = arms.iter().map(|v| v.weight as f64).collect();
        let srm = sample_ratio_mismatch(&observed, &weights).ok()?;
        Some(SrmCheck {
            chi_square: finite_or(srm.chi2, 0.0),
            p_value: finite_or(srm.p_value, 1.0),
            mismatch: srm.p_value < SRM_P_VALUE,
        })
    }
}

/// The most comparisons `status.comparisons` holds.
const MAX_COMPARISONS: usize = 200;

/// A metric's estimate for one variant: the rate or mean with its standard error.
fn estimate(metric: &MetricSpec, s: &Sufficient) -> Option<Estimate> {
    let n = whole(s.count);
    if n == 0 {
        return None;
    }
    let value = s.sum / s.count;
    let std_error = match metric.kind {
        MetricKind::Proportion => {
            let p = value.clamp(0.0, 1.0);
            Some((p * (1.0 - p) / s.count).sqrt())
        }
        MetricKind::Mean => Moments {
            count: n,
            sum: s.sum,
            sum_sq: s.sum_squares,
        }
        .variance("variant")
        .ok()
        .map(|v| (v / s.count).sqrt()),
    };
    Some(Estimate {
        metric: metric.name.clone(),
        samples: n,
        value: finite_or(value, 0.0),
        std_error: std_error.filter(|e| e.is_finite()),
    })
}

/// "candidate +12.0% [+4.1%, +19.9%] p = 0.003": a comparison for a message.
fn describe(c: &Comparison) -> String {
    format!(
        "{} {:+.1}% [{:+.1}%, {:+.1}%] p = {:.3} ({:?})",
        c.variant,
        100.0 * c.effect,
        100.0 * c.interval[0],
        100.0 * c.interval[1],
        c.p_value,
        c.verdict
    )
}

/// A duration for people: "1h5m", "12m", "40s".
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, _) => format!("{min}m"),
        (h, 0, _) => format!("{h}h"),
        (h, min, _) => format!("{h}h{min}m"),
    }
}

/// Status fields are JSON numbers: NaN and infinities cannot be stored.
fn finite_or(x: f64, fallback: f64) -> f64 {
    if x.is_finite() { x } else { fallback }
}

#[cfg(test)]
#[path = "decision_tests.rs"]
mod tests;
