//! Holm–Bonferroni step-down correction across variants (each compared with control).

use super::{StatsError, check_alpha};

/// Holm-adjusted p-values, in the input order: sort ascending, p̃₍ᵢ₎ = maxⱼ≤ᵢ min(1, (m − j + 1)·p₍ⱼ₎)
/// (1-based j), which controls the family-wise error rate at alpha. Same as statsmodels
/// `multipletests(method="holm")`.
pub fn holm_adjust(p_values: &[f64]) -> Result<Vec<f64>, StatsError> {
    if let Some(&p) = p_values.iter().find(|p| !(0.0..=1.0).contains(*p)) {
        return Err(StatsError::OutOfRange {
            what: "p-value",
            value: p,
            rule: "must be between 0 and 1",
        });
    }
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    let mut running_max: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let scaled = ((m - rank) as f64 * p_values[i]).min(1.0);
        running_max = running_max.max(scaled);
        adjusted[i] = running_max;
    }
    Ok(adjusted)
}

/// Which hypotheses Holm rejects at family-wise level alpha (adjusted p ≤ alpha).
pub fn holm_reject(p_values: &[f64], alpha: f64) -> Result<Vec<bool>, StatsError> {
    check_alpha(alpha)?;
    Ok(holm_adjust(p_values)?
        .into_iter()
        .map(|p| p <= alpha)
        .collect())
}
