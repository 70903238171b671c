//! Welch's t-test from count, sum and sum of squares (what the router exports per variant), and the
//! relative lift with a delta-method interval.

use super::distributions::{norm_ppf, norm_sf, t_ppf, t_sf};
use super::{Alternative, StatsError, check_alpha};

/// Running moments of a metric in one arm: n, Σx, Σx².
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Moments {
    /// Moments of raw observations.
    pub fn from_samples(xs: &[f64]) -> Moments {
        Moments {
            count: xs.len() as u64,
            sum: xs.iter().sum(),
            sum_sq: xs.iter().map(|x| x * x).sum(),
        }
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Sample variance with n − 1 in the denominator: (Σx² − (Σx)²/n)/(n − 1). Needs n ≥ 2.
    pub fn variance(&self, what: &'static str) -> Result<f64, StatsError> {
        if self.count < 2 {
            return Err(StatsError::TooFewObservations {
                what,
                needed: 2,
                has: self.count,
            });
        }
        let n = self.count as f64;
        // Rounding can make a constant sample's variance slightly negative: clamp at zero.
        Ok(((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0))
    }
}

/// Result of [`welch_ttest`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WelchTest {
    /// t = (x̄ₜ − x̄꜀) / √(sₜ²/nₜ + s꜀²/n꜀).
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom (vₜ + v꜀)² / (vₜ²/(nₜ−1) + v꜀²/(n꜀−1)), v = s²/n.
    pub df: f64,
    pub p_value: f64,
    /// x̄ₜ − x̄꜀.
    pub diff: f64,
    /// √(sₜ²/nₜ + s꜀²/n꜀).
    pub se: f64,
    /// Two-sided interval diff ± t₁₋α/₂,df · se.
    pub ci: (f64, f64),
}

/// Welch's unequal-variance t-test, treatment minus control (scipy `ttest_ind(equal_var=False)`).
pub fn welch_ttest(
    treatment: Moments,
    control: Moments,
    alternative: Alternative,
    alpha: f64,
) -> Result<WelchTest, StatsError> {
    check_alpha(alpha)?;
    let vt = treatment.variance("treatment")? / treatment.count as f64;
    let vc = control.variance("control")? / control.count as f64;
    let se2 = vt + vc;
    if se2 <= 0.0 {
        return Err(StatsError::ZeroVariance {
            what: "both arms are constant",
        });
    }
    let df =
        se2 * se2 / (vt * vt / (treatment.count - 1) as f64 + vc * vc / (control.count - 1) as f64);
    let se = se2.sqrt();
    let diff = treatment.mean() - control.mean();
    let t = diff / se;
    let half = t_ppf(1.0 - alpha / 2.0, df) * se;
    Ok(WelchTest {
        t,
        df,
        p_value: alternative.p_value(t, |x| t_sf(x, df)),
        diff,
        se,
        ci: (diff - half, diff + half),
    })
}

/// An arm's estimated mean and the variance of that estimate (s²/n for a mean, p(1−p)/n for a rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub var_of_mean: f64,
}

impl Estimate {
    /// The mean of the moments and its variance s²/n.
    pub fn from_moments(m: Moments, what: &'static str) -> Result<Estimate, StatsError> {
        Ok(Estimate {
            mean: m.mean(),
            var_of_mean: m.variance(what)? / m.count as f64,
        })
    }
}

/// Result of [`relative_lift`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lift {
    /// x̄ₜ / x̄꜀ − 1.
    pub lift: f64,
    /// Delta-method standard error of the ratio:
    /// √(Var(x̄ₜ)/x̄꜀² + x̄ₜ²·Var(x̄꜀)/x̄꜀⁴) (independent arms).
    pub se: f64,
    /// lift ± z₁₋α/₂ · se.
    pub ci: (f64, f64),
}

/// Relative lift of treatment over control with a delta-method normal interval at level 1 − alpha.
pub fn relative_lift(
    treatment: Estimate,
    control: Estimate,
    alpha: f64,
) -> Result<Lift, StatsError> {
    check_alpha(alpha)?;
    if control.mean == 0.0 {
        return Err(StatsError::OutOfRange {
            what: "control mean",
            value: 0.0,
            rule: "relative lift needs a non-zero control mean",
        });
    }
    let (mt, mc) = (treatment.mean, control.mean);
    let var = treatment.var_of_mean / (mc * mc) + mt * mt * control.var_of_mean / mc.powi(4);
    let se = var.sqrt();
    let lift = mt / mc - 1.0;
    let half = norm_ppf(1.0 - alpha / 2.0) * se;
    Ok(Lift {
        lift,
        se,
        ci: (lift - half, lift + half),
    })
}

/// Two-sided normal p-value of a lift against zero, for reporting beside the interval.
pub fn lift_p_value(lift: &Lift) -> Result<f64, StatsError> {
    if lift.se <= 0.0 {
        return Err(StatsError::ZeroVariance { what: "lift" });
    }
    Ok((2.0 * norm_sf((lift.lift / lift.se).abs())).min(1.0))
}
