//! One variant against the control on one metric, from the sufficient statistics Prometheus
//! holds: the relative effect, its interval, the p-value, and the one-sided bound the guardrail
//! rule needs. Fixed-horizon or always-valid, as `spec.analysis.sequential` says.

use super::StatsError;
use super::decision::Sufficient;
use super::distributions::norm_ppf;
use super::means::{Estimate, Moments, relative_lift, welch_ttest};
use super::proportions::{Proportion, two_proportion_ztest};
use super::sequential::confidence_sequence;
use super::{Alternative, check_alpha};
use crate::api::experiment::MetricKind;

/// How sure a comparison must be, and whether it is looked at once or every interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub alpha: f64,
    /// Always-valid p-values and intervals (a confidence sequence) instead of fixed-horizon
    /// ones.
    pub sequential: bool,
    /// The total sample size the confidence sequence is tightest at. It must not depend on the
    /// data (a boundary tuned by what was seen is no longer always valid), so the decision
    /// engine fixes it from the spec.
    pub tuning_n: f64,
}

/// One variant against the control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compared {
    /// Variant minus control, in the metric's units (a rate or a mean).
    pub diff: f64,
    /// Half the width of the one-sided interval of `diff` at `alpha` (always valid when
    /// sequential): `diff - h` is a lower bound, `diff + h` an upper bound, each at 1 − alpha.
    pub diff_one_sided_halfwidth: f64,
    /// The relative effect; `None` when the control's rate or mean is 0 (no ratio exists, the
    /// difference still does).
    pub lift: Option<RelativeEffect>,
    /// The two-sided p-value of "no difference" (always valid when sequential), before Holm.
    pub p_value: f64,
    /// Observations in the treatment and the control arm.
    pub samples: (u64, u64),
}

/// The relative effect of a variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelativeEffect {
    /// Variant over control, minus one (0.05 = 5% higher).
    pub value: f64,
    /// Its two-sided interval at `alpha` (always valid when sequential).
    pub interval: (f64, f64),
}

impl Compared {
    /// The relative effect, or ±∞ by the sign of the difference when the control is at 0.
    pub fn relative(&self) -> f64 {
        match self.lift {
            Some(lift) => lift.value,
            None if self.diff > 0.0 => f64::INFINITY,
            None if self.diff < 0.0 => f64::NEG_INFINITY,
            None => 0.0,
        }
    }
}

/// An observation count as Prometheus returns it (a float, extrapolated by `increase`), as the
/// tests want it.
pub fn whole(count: f64) -> u64 {
    if count.is_finite() && count > 0.0 {
        count.round() as u64
    } else {
        0
    }
}

/// The treatment (variant) against the control on a metric of `kind`.
///
/// Proportion: the pooled two-proportion z-test gives the fixed-horizon p-value; the unpooled
/// difference and its variance feed the confidence sequence. Mean: Welch's t-test, and its
/// difference and variance for the sequence. The relative lift has a delta-method standard
/// error; its always-valid interval is the confidence sequence of that estimate.
pub fn compare(
    kind: MetricKind,
    treatment: &Sufficient,
    control: &Sufficient,
    settings: Settings,
) -> Result<Compared, StatsError> {
    check_alpha(settings.alpha)?;
    let alpha = settings.alpha;
    let samples = (whole(treatment.count), whole(control.count));
    let (diff, var_diff, fixed_p, t_est, c_est) = match kind {
        MetricKind::Proportion => {
            let arm = |s: &Sufficient, n: u64| Proportion {
                // Successes above trials only come from extrapolation rounding.
                successes: whole(s.sum).min(n),
                trials: n,
            };
            let (t, c) = (arm(treatment, samples.0), arm(control, samples.1));
            let z = two_proportion_ztest(t, c, Alternative::TwoSided, alpha)?;
            let estimate = |p: Proportion| {
                let rate = p.successes as f64 / p.trials as f64;
                Estimate {
                    mean: rate,
                    var_of_mean: rate * (1.0 - rate) / p.trials as f64,
                }
            };
            (z.diff, z.se * z.se, z.p_value, estimate(t), estimate(c))
        }
        MetricKind::Mean => {
            let moments = |s: &Sufficient, n: u64| Moments {
                count: n,
                sum: s.sum,
                sum_sq: s.sum_squares,
            };
            let (t, c) = (moments(treatment, samples.0), moments(control, samples.1));
            let welch = welch_ttest(t, c, Alternative::TwoSided, alpha)?;
            (
                welch.diff,
                welch.se * welch.se,
                welch.p_value,
                Estimate::from_moments(t, "treatment")?,
                Estimate::from_moments(c, "control")?,
            )
        }
    };
    // A control at 0 has no relative effect; the test of the difference stands anyway.
    let lift = relative_lift(t_est, c_est, alpha).ok();
    let n_total = samples.0 + samples.1;
    if !settings.sequential {
        let z = norm_ppf(1.0 - alpha);
        return Ok(Compared {
            diff,
            diff_one_sided_halfwidth: z * var_diff.sqrt(),
            lift: lift.map(|l| RelativeEffect {
                value: l.lift,
                interval: l.ci,
            }),
            p_value: fixed_p,
            samples,
        });
    }
    let sequence = |estimate: f64, variance: f64, alpha: f64| {
        confidence_sequence(estimate, variance, n_total, settings.tuning_n, alpha)
    };
    let p_value = sequence(diff, var_diff, alpha)?.p_value;
    // The sequence at 2·alpha two-sided bounds each side at alpha (the boundary is symmetric);
    // alpha < 0.5 is a CRD rule, so 2·alpha stays a valid level.
    let one_sided = sequence(diff, var_diff, (2.0 * alpha).min(0.999))?.halfwidth;
    let lift = match lift {
        Some(l) => Some(RelativeEffect {
            value: l.lift,
            interval: sequence(l.lift, l.se * l.se, alpha)?.ci,
        }),
        None => None,
    };
    Ok(Compared {
        diff,
        diff_one_sided_halfwidth: one_sided,
        lift,
        p_value,
        samples,
    })
}
