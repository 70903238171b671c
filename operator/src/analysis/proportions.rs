//! Two-proportion z-test for a conversion-like metric (success count out of requests per arm).

use super::distributions::{norm_ppf, norm_sf};
use super::{Alternative, StatsError, check_alpha};

/// Successes out of trials in one arm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proportion {
    pub successes: u64,
    pub trials: u64,
}

impl Proportion {
    /// The observed rate, or an error for an arm with no trials or more successes than trials.
    pub fn rate(&self, what: &'static str) -> Result<f64, StatsError> {
        if self.trials == 0 {
            return Err(StatsError::TooFewObservations {
                what,
                needed: 1,
                has: 0,
            });
        }
        if self.successes > self.trials {
            return Err(StatsError::OutOfRange {
                what,
                value: self.successes as f64,
                rule: "successes cannot exceed trials",
            });
        }
        Ok(self.successes as f64 / self.trials as f64)
    }
}

/// Result of [`two_proportion_ztest`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZTest {
    /// Pooled z statistic: (p̂ₜ − p̂꜀) / √(p̄(1−p̄)(1/nₜ + 1/n꜀)), p̄ = (xₜ + x꜀)/(nₜ + n꜀).
    pub z: f64,
    /// p-value of the pooled z under the chosen alternative (statsmodels `proportions_ztest`).
    pub p_value: f64,
    /// p̂ₜ − p̂꜀.
    pub diff: f64,
    /// Unpooled (Wald) standard error √(p̂ₜ(1−p̂ₜ)/nₜ + p̂꜀(1−p̂꜀)/n꜀).
    pub se: f64,
    /// Two-sided Wald interval diff ± z₁₋α/₂·se (unpooled: the pooled variance is only right under
    /// the null, the interval is about the alternative).
    pub ci: (f64, f64),
}

/// Two-proportion z-test, treatment minus control: pooled variance for the p-value, unpooled for the
/// confidence interval at level 1 − alpha.
pub fn two_proportion_ztest(
    treatment: Proportion,
    control: Proportion,
    alternative: Alternative,
    alpha: f64,
) -> Result<ZTest, StatsError> {
    check_alpha(alpha)?;
    let pt = treatment.rate("treatment")?;
    let pc = control.rate("control")?;
    let (nt, nc) = (treatment.trials as f64, control.trials as f64);
    let pooled = (treatment.successes + control.successes) as f64 / (nt + nc);
    let var_pooled = pooled * (1.0 - pooled) * (1.0 / nt + 1.0 / nc);
    if var_pooled <= 0.0 {
        return Err(StatsError::ZeroVariance {
            what: "pooled proportion (all successes or all failures)",
        });
    }
    let diff = pt - pc;
    let z = diff / var_pooled.sqrt();
    let se = (pt * (1.0 - pt) / nt + pc * (1.0 - pc) / nc).sqrt();
    let half = norm_ppf(1.0 - alpha / 2.0) * se;
    Ok(ZTest {
        z,
        p_value: alternative.p_value(z, norm_sf),
        diff,
        se,
        ci: (diff - half, diff + half),
    })
}
