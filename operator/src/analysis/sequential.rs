//! Always-valid inference, so the controller may look at an experiment every interval without
//! inflating the false-positive rate (a fixed-horizon z-test checked at every look rejects a true
//! null far more often than alpha; see the A/A simulation test).
//!
//! Two forms, both exactly as `golden/stats-golden.py` defines them:
//! - the asymptotic confidence sequence of Waudby-Smith et al. ("Time-uniform central limit theory",
//!   normal-mixture boundary with tuning sample size N), as GrowthBook and PostHog implement it, and
//!   the p-value it implies (the operator's default);
//! - the mixture SPRT of Johari et al. ("Always valid inference", normal mixture with prior variance
//!   τ², known variance), as a running-minimum p-value over a stream of looks.

use super::{StatsError, check_alpha};

/// ρ = √((−2 ln α + ln(−2 ln α + 1)) / N): the mixture scale that makes the boundary tightest at
/// n = N total observations.
pub fn rho(alpha: f64, tuning_n: f64) -> f64 {
    let la = alpha.ln();
    ((-2.0 * la + (-2.0 * la + 1.0).ln()) / tuning_n).sqrt()
}

/// An always-valid interval for an estimate after `n` total observations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfidenceSequence {
    pub estimate: f64,
    /// σ̂·√(2k·ln(√k/α) / (nρ)²), k = nρ² + 1, σ̂² = n·Var(estimate) (variance per observation).
    pub halfwidth: f64,
    pub ci: (f64, f64),
    /// The smallest alpha at which the sequence excludes 0: exp(−(ρ²t²/(2k) − ½ ln k)) capped at 1,
    /// t² = n·estimate²/Var(estimate); 1 when the exponent is ≤ 0.
    pub p_value: f64,
}

/// The confidence sequence at level 1 − alpha for `estimate` (e.g. a difference of means or rates)
/// whose sampling variance is `var_of_estimate`, after `n` total observations, tuned for `tuning_n`.
pub fn confidence_sequence(
    estimate: f64,
    var_of_estimate: f64,
    n: u64,
    tuning_n: f64,
    alpha: f64,
) -> Result<ConfidenceSequence, StatsError> {
    check_alpha(alpha)?;
    if n == 0 {
        return Err(StatsError::TooFewObservations {
            what: "confidence sequence",
            needed: 1,
            has: 0,
        });
    }
    if var_of_estimate <= 0.0 || var_of_estimate.is_nan() {
        return Err(StatsError::ZeroVariance {
            what: "confidence sequence estimate",
        });
    }
    if tuning_n <= 0.0 || tuning_n.is_nan() {
        return Err(StatsError::OutOfRange {
            what: "tuning N",
            value: tuning_n,
            rule: "must be positive",
        });
    }
    let n = n as f64;
    let r = rho(alpha, tuning_n);
    let k = n * r * r + 1.0;
    let s2 = var_of_estimate * n;
    let halfwidth = s2.sqrt() * (2.0 * k * (k.sqrt() / alpha).ln() / (n * r).powi(2)).sqrt();
    let t2 = estimate * estimate * n / var_of_estimate;
    let log_e = r * r * t2 / (2.0 * k) - 0.5 * k.ln();
    let p_value = if log_e <= 0.0 {
        1.0
    } else {
        (-log_e).exp().min(1.0)
    };
    Ok(ConfidenceSequence {
        estimate,
        halfwidth,
        ci: (estimate - halfwidth, estimate + halfwidth),
        p_value,
    })
}

/// The mSPRT mixture likelihood ratio after `n` pairs with mean pairwise difference `ybar`, known
/// variance `var_pair` of one pairwise difference and mixture variance `tau2`:
/// Λₙ = √(V/(V + nτ²)) · exp(n²τ²ȳ² / (2V(V + nτ²))).
pub fn msprt_lambda(n: u64, ybar: f64, var_pair: f64, tau2: f64) -> Result<f64, StatsError> {
    if var_pair <= 0.0 || var_pair.is_nan() {
        return Err(StatsError::ZeroVariance { what: "mSPRT pair" });
    }
    if tau2 <= 0.0 || tau2.is_nan() {
        return Err(StatsError::OutOfRange {
            what: "tau2",
            value: tau2,
            rule: "must be positive",
        });
    }
    let n = n as f64;
    let denom = var_pair + n * tau2;
    Ok((var_pair / denom).sqrt() * (n * n * tau2 * ybar * ybar / (2.0 * var_pair * denom)).exp())
}

/// The always-valid mSPRT p-value carried across looks: pₙ = min(pₙ₋₁, 1/Λₙ), p₀ = 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Msprt {
    pub var_pair: f64,
    pub tau2: f64,
    pub p_value: f64,
}

impl Msprt {
    pub fn new(var_pair: f64, tau2: f64) -> Msprt {
        Msprt {
            var_pair,
            tau2,
            p_value: 1.0,
        }
    }

    /// One look; returns Λₙ and updates the running p-value.
    pub fn look(&mut self, n_per_arm: u64, ybar: f64) -> Result<f64, StatsError> {
        let lambda = msprt_lambda(n_per_arm, ybar, self.var_pair, self.tau2)?;
        self.p_value = self.p_value.min(1.0 / lambda);
        Ok(lambda)
    }
}
