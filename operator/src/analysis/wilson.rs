//! Wilson score interval for a rate (e.g. a shadow's agreement rate with production): unlike the
//! Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1, where agreement rates
//! live.

use super::distributions::norm_ppf;
use super::proportions::Proportion;
use super::{StatsError, check_alpha};

/// Two-sided Wilson score interval at level 1 − alpha (Wilson 1927; statsmodels
/// `proportion_confint(method="wilson")`): with p̂ = x/n and z = z₁₋α/₂,
/// centre (p̂ + z²/2n)/(1 + z²/n), half-width z/(1 + z²/n)·√(p̂(1−p̂)/n + z²/4n²).
pub fn wilson_interval(rate: Proportion, alpha: f64) -> Result<(f64, f64), StatsError> {
    check_alpha(alpha)?;
    wilson_score_interval(rate, norm_ppf(1.0 - alpha / 2.0))
}

/// The Wilson score interval for a given z: the rates p₀ whose score statistic
/// |p̂ − p₀|/√(p₀(1−p₀)/n) is at most z. A z other than a normal quantile makes other intervals of
/// the same form (the shadow's always-valid fail bounds).
pub fn wilson_score_interval(rate: Proportion, z: f64) -> Result<(f64, f64), StatsError> {
    let p = rate.rate("rate")?;
    let n = rate.trials as f64;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Ok(((centre - half).max(0.0), (centre + half).min(1.0)))
}
