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
    /// Variant over control, minus one (0.05 = 5% higher).
    pub lift: f64,
    /// The two-sided interval of `lift` at `alpha` (always valid when sequential).
    pub interval: (f64, f64),
    /// The two-sided p-value of "no difference" (always valid when sequential), before Holm.
    pub p_value: f64,
    /// Half the width of the one-sided interval of `lift` at `alpha` (always valid when
    /// sequential): `lift - one_sided_halfwidth` is a lower bound at level 1 − alpha.
    pub one_sided_halfwidth: f64,
    /// Observations in the treatment and the control arm.
    pub samples: (u64, u64),
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
/// difference and variance for the sequence. Either way the effect is the relative lift with a
/// delta-method standard error; its always-valid interval is the confidence sequence of that
/// estimate.
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
    let lift = relative_lift(t_est, c_est, alpha)?;
    let n_total = samples.0 + samples.1;
    if !settings.sequential {
        let one_sided = norm_ppf(1.0 - alpha) * lift.se;
        return Ok(Compared {
            lift: lift.lift,
            interval: lift.ci,
            p_value: fixed_p,
            one_sided_halfwidth: one_sided,
            samples,
        });
    }
    let p_value = confidence_sequence(diff, var_diff, n_total, settings.tuning_n, alpha)?.p_value;
    let var_lift = lift.se * lift.se;
    let two_sided = confidence_sequence(lift.lift, var_lift, n_total, settings.tuning_n, alpha)?;
    // The sequence at 2·alpha two-sided bounds each side at alpha (the boundary is symmetric);
    // alpha < 0.5 is a CRD rule, so 2·alpha stays a valid level.
    let one_sided = confidence_sequence(
        lift.lift,
        var_lift,
        n_total,
        settings.tuning_n,
        (2.0 * alpha).min(0.999),
    )?;
    Ok(Compared {
        lift: lift.lift,
        interval: two_sided.ci,
        p_value,
        one_sided_halfwidth: one_sided.halfwidth,
        samples,
    })
}
