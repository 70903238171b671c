//! Sample-ratio mismatch: does the observed split of traffic fit the configured weights? A Pearson
//! chi-square goodness-of-fit test, χ² = Σ (oᵢ − eᵢ)²/eᵢ with eᵢ = N·wᵢ/Σw and k − 1 degrees of
//! freedom. A small p-value means the assignment is broken and the experiment's results can't be
//! trusted, whatever they say.

use super::StatsError;
use super::distributions::chi2_sf;

/// Result of [`sample_ratio_mismatch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Srm {
    pub chi2: f64,
    pub df: u32,
    pub p_value: f64,
}

/// Chi-square test of `observed` counts per variant against `weights` (any positive scale; they are
/// normalized). Variants with weight zero must have seen no traffic.
pub fn sample_ratio_mismatch(observed: &[u64], weights: &[f64]) -> Result<Srm, StatsError> {
    if observed.len() != weights.len() {
        return Err(StatsError::InvalidSplit(format!(
            "{} observed counts for {} weights",
            observed.len(),
            weights.len()
        )));
    }
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(StatsError::InvalidSplit(
            "weights must be finite and non-negative".into(),
        ));
    }
    let wsum: f64 = weights.iter().sum();
    if wsum <= 0.0 {
        return Err(StatsError::InvalidSplit(
            "weights must sum to more than 0".into(),
        ));
    }
    let total: u64 = observed.iter().sum();
    if total == 0 {
        return Err(StatsError::TooFewObservations {
            what: "sample ratio",
            needed: 1,
            has: 0,
        });
    }
    let mut chi2 = 0.0;
    let mut cells = 0u32;
    for (&o, &w) in observed.iter().zip(weights) {
        if w == 0.0 {
            if o > 0 {
                return Err(StatsError::InvalidSplit(format!(
                    "a variant with weight 0 received {o} requests"
                )));
            }
            continue;
        }
        let e = total as f64 * w / wsum;
        chi2 += (o as f64 - e).powi(2) / e;
        cells += 1;
    }
    if cells < 2 {
        return Err(StatsError::InvalidSplit(
            "at least two variants with positive weight are needed".into(),
        ));
    }
    let df = cells - 1;
    Ok(Srm {
        chi2,
        df,
        p_value: chi2_sf(chi2, df as f64),
    })
}
