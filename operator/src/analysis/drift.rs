//! Drift: how far a window of traffic has moved from its baseline, feature by feature, and the
//! verdict of one check. Pure: the controller reads the counts from Prometheus (histogram buckets
//! through [`bins_from_cumulative`], both sides lined up by [`FeatureCounts::align`]), calls
//! [`assess`], and turns the [`Assessment`] into `status.drift`, the `DriftDetected` condition,
//! the scores it exports and its Events.
//!
//! # The measures
//!
//! Every measure takes per-bin counts on any scale (normalised inside); counts that are not
//! finite or negative count as 0; a side with no observations gives `None`.
//!
//! - [`psi`]: population stability index, natural log. A share below [`PSI_EMPTY_BIN`] counts
//!   as [`PSI_EMPTY_BIN`]: the logarithm of an empty bin's share is infinite, so PSI needs a
//!   floor (the shadow's confidence shift uses the same function).
//! - [`js_divergence`]: Jensen–Shannon divergence, base 2, in [0, 1]. It needs no floor: each
//!   side is compared with the mixture, which is never empty where that side is not
//!   (0·ln 0 = 0), so two distributions without a common bin score exactly 1.
//! - [`ks_binned`]: Kolmogorov–Smirnov on ordered bins (histogram features only): the largest
//!   gap between the two cumulative shares, with the asymptotic p-value of the Kolmogorov
//!   distribution at √(n·m/(n+m))·D. Binning ties observations, which makes this p-value
//!   conservative (larger than the raw samples' would be).
//! - [`kl_divergence`] (nats) and [`ks_2samp`] (raw samples) are not part of a check; they are
//!   here for the dashboards' documentation and for checking the others.
//!
//! # The rules of [`assess`]
//!
//! 1. **Samples.** A feature's samples on a side are the sum of its counts there (inputs for the
//!    histograms and classes, tokens for `unknown_tokens`). A feature with fewer than
//!    `min_samples` on either side is **not judged**: it gets no scores (no number from too
//!    little data reaches the status or the exported scores), and the message names it with
//!    its counts. It keeps the verdict of the last check (drifted if it is in `drifted_before`):
//!    too little traffic is no evidence that the drift went away, and clearing it would make the
//!    condition flap with the traffic.
//! 2. **No feature judged** (or no feature at all): [`Assessment::NotEnoughData`], no verdict;
//!    the message says which feature has how many samples of `min_samples`.
//! 3. **Scores.** Each judged feature gets the requested measures: PSI, JS, and KS only on
//!    ordered bins (a histogram feature, [`Feature::buckets`]); for `predicted_class` and
//!    `unknown_tokens` KS is `None`. A measure not requested is `None`.
//! 4. **Drift.** A judged feature drifts when any requested measure passes its threshold: PSI
//!    above `psi`, JS above `jensenShannon`, or KS with its statistic above
//!    `kolmogorovSmirnov` **and** its p-value below `ksPValue` (a large gap on little data, or a
//!    significant but tiny one on a great deal, is not drift).
//! 5. **Hysteresis.** A judged feature in `drifted_before` stays drifted until every requested
//!    measure is below [`HOLD`] (80%) of its threshold: PSI under 0.8·`psi`, JS under
//!    0.8·`jensenShannon`, and KS either under 0.8·`kolmogorovSmirnov` or with its p-value at or
//!    above `ksPValue`/0.8 (a p-value counts the other way). A feature that hovers at a threshold
//!    therefore changes its verdict once, not at every check.
//! 6. **Verdict.** Some feature drifted (judged, or held by rule 1): [`Assessment::Drift`],
//!    `moved` listing them in the order given, the message naming each with its values against
//!    the thresholds; otherwise [`Assessment::NoDrift`] with every judged feature's values. Both
//!    messages also name the features not judged.

use std::collections::BTreeMap;
use std::f64::consts::{LN_2, PI};

use lexserve_contract::drift::{Feature, Measure};

use super::compare::whole;
use crate::api::inference_service::DriftThresholds;

/// Below this share a bin counts as empty in [`psi`]: the logarithm of an empty bin's share
/// would be infinite.
pub const PSI_EMPTY_BIN: f64 = 1e-4;

/// A feature that drifted stays drifted until every measure is below this share of its
/// threshold (rule 5 of the module's documentation).
pub const HOLD: f64 = 0.8;

/// [`ks_2samp`] computes the exact p-value while n·m is at most this (the exact count takes
/// n·m steps; scipy's `auto` goes exact up to 10,000 per side), the asymptotic one beyond.
pub const KS_EXACT_MAX_CELLS: u64 = 10_000_000;

/// How far (relative) a cumulative bucket may fall below the one before it and still count as
/// equal: `increase()` extrapolates each bucket's series on its own, so counts that are equal
/// can differ in their last bits.
const CUMULATIVE_SLACK: f64 = 1e-9;

/// Population stability index between two binned distributions (counts; normalised inside),
/// with empty bins smoothed; None when either side has no observations.
///
/// PSI = Σ (qᵢ − pᵢ)·ln(qᵢ/pᵢ) over the bins, p the baseline's shares and q the window's.
/// A share below [`PSI_EMPTY_BIN`] counts as [`PSI_EMPTY_BIN`] (every term stays ≥ 0, so the
/// index does too). Bins beyond the shorter side count as empty on it; counts that are not
/// finite or negative count as 0.
pub fn psi(baseline: &[f64], window: &[f64]) -> Option<f64> {
    let bins = baseline.len().max(window.len());
    let (p, q) = (shares(baseline, bins)?, shares(window, bins)?);
    Some(
        p.iter()
            .zip(&q)
            .map(|(&p, &q)| {
                let (p, q) = (p.max(PSI_EMPTY_BIN), q.max(PSI_EMPTY_BIN));
                (q - p) * (q / p).ln()
            })
            .sum(),
    )
}

/// Jensen–Shannon divergence, base 2, between two binned distributions (counts; normalised
/// inside): ½·KL(p‖m) + ½·KL(q‖m) with m = (p+q)/2, in [0, 1]; symmetric, no floor needed (an
/// empty bin's term is 0). None when either side has no observations.
pub fn js_divergence(p: &[f64], q: &[f64]) -> Option<f64> {
    let bins = p.len().max(q.len());
    let (p, q) = (shares(p, bins)?, shares(q, bins)?);
    let term = |a: f64, m: f64| if a > 0.0 { a * (a / m).ln() } else { 0.0 };
    let nats: f64 = p
        .iter()
        .zip(&q)
        .map(|(&a, &b)| {
            let m = 0.5 * (a + b);
            0.5 * term(a, m) + 0.5 * term(b, m)
        })
        .sum();
    Some((nats / LN_2).clamp(0.0, 1.0))
}

/// Kullback–Leibler divergence KL(p‖q) in nats (counts; normalised inside), as scipy's
/// `entropy(p, q)`: infinite when q has an empty bin where p has not. None when either side has
/// no observations.
pub fn kl_divergence(p: &[f64], q: &[f64]) -> Option<f64> {
    let bins = p.len().max(q.len());
    let (p, q) = (shares(p, bins)?, shares(q, bins)?);
    let mut nats = 0.0;
    for (&a, &b) in p.iter().zip(&q) {
        if a > 0.0 {
            if b <= 0.0 {
                return Some(f64::INFINITY);
            }
            nats += a * (a / b).ln();
        }
    }
    Some(nats.max(0.0))
}

/// A Kolmogorov–Smirnov statistic (the largest gap between two cumulative distributions, 0 to
/// 1) and its two-sided p-value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ks {
    pub statistic: f64,
    pub p_value: f64,
}

/// Kolmogorov–Smirnov on counts over ORDERED bins (a histogram's, in edge order): D is the
/// largest gap between the cumulative shares at the bins' upper edges, its p-value the
/// asymptotic one, Q(√(n·m/(n+m))·D) with Q the Kolmogorov distribution's survival function and
/// n, m the two totals. Binning ties observations, so the p-value is conservative. None when
/// either side has no observations.
pub fn ks_binned(baseline: &[f64], window: &[f64]) -> Option<Ks> {
    let bins = baseline.len().max(window.len());
    let (p, q) = (shares(baseline, bins)?, shares(window, bins)?);
    let (n, m) = (total(baseline), total(window));
    let (mut cp, mut cq, mut d) = (0.0, 0.0, 0.0_f64);
    for (a, b) in p.iter().zip(&q) {
        cp += a;
        cq += b;
        d = d.max((cp - cq).abs());
    }
    let d = d.min(1.0);
    let n_eff = n * m / (n + m);
    Some(Ks {
        statistic: d,
        p_value: kolmogorov_sf(n_eff.sqrt() * d),
    })
}

/// Two-sample Kolmogorov–Smirnov on raw samples (ties handled: the gap is taken after every
/// distinct value). The p-value is exact while n·m ≤ [`KS_EXACT_MAX_CELLS`], counted as scipy's
/// `method="exact"` does (the share of the lattice paths from (0, 0) to (n, m) that leave the
/// band the statistic defines, which assumes no ties), and the asymptotic Kolmogorov one
/// beyond, as [`ks_binned`]. None when a sample is empty or holds a NaN.
pub fn ks_2samp(x: &[f64], y: &[f64]) -> Option<Ks> {
    if x.is_empty() || y.is_empty() || x.iter().chain(y).any(|v| v.is_nan()) {
        return None;
    }
    let (mut x, mut y) = (x.to_vec(), y.to_vec());
    x.sort_by(f64::total_cmp);
    y.sort_by(f64::total_cmp);
    let (n, m) = (x.len() as u64, y.len() as u64);
    // The gap in units of 1/(n·m), so that the exact count works on integers.
    let (mut i, mut j, mut gap) = (0usize, 0usize, 0u64);
    while i < x.len() || j < y.len() {
        let value = match (x.get(i), y.get(j)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => break,
        };
        while i < x.len() && x[i] == value {
            i += 1;
        }
        while j < y.len() && y[j] == value {
            j += 1;
        }
        gap = gap.max((i as u64 * m).abs_diff(j as u64 * n));
    }
    let statistic = gap as f64 / (n as f64 * m as f64);
    let p_value = if n.saturating_mul(m) <= KS_EXACT_MAX_CELLS {
        ks_exact_sf(n as usize, m as usize, gap)
    } else {
        let n_eff = (n as f64 * m as f64) / (n + m) as f64;
        kolmogorov_sf(n_eff.sqrt() * statistic)
    };
    Some(Ks { statistic, p_value })
}

/// P(D ≥ gap/(n·m)) for two samples of n and m without ties: one minus the share of the lattice
/// paths from (0, 0) to (n, m) that stay strictly inside |i·m − j·n| < gap. `inside[j]` holds,
/// for the current i, the paths to (i, j) that stayed inside over all paths to (i, j): dividing
/// by the binomial coefficient as it goes keeps every value in [0, 1] (no overflow), with
/// C(i+j−1, i−1)/C(i+j, i) = i/(i+j) and C(i+j−1, i)/C(i+j, i) = j/(i+j).
pub(crate) fn ks_exact_sf(n: usize, m: usize, gap: u64) -> f64 {
    if gap == 0 {
        return 1.0;
    }
    let within = |i: usize, j: usize| ((i * m) as u64).abs_diff((j * n) as u64) < gap;
    let mut inside = vec![0.0_f64; m + 1];
    inside[0] = 1.0;
    for j in 1..=m {
        inside[j] = if within(0, j) { inside[j - 1] } else { 0.0 };
    }
    for i in 1..=n {
        if !within(i, 0) {
            inside[0] = 0.0;
        }
        for j in 1..=m {
            inside[j] = if within(i, j) {
                (i as f64 * inside[j] + j as f64 * inside[j - 1]) / (i + j) as f64
            } else {
                0.0
            };
        }
    }
    (1.0 - inside[m]).clamp(0.0, 1.0)
}

/// The Kolmogorov distribution's survival function, Q(x) = 2·Σ (−1)^(k−1)·e^(−2k²x²). Below
/// 1.18 that alternating series converges slowly, so there it is 1 − P(x) with the Jacobi form
/// P(x) = √(2π)/x · Σ e^(−(2k−1)²π²/(8x²)), which converges fast for small x.
pub(crate) fn kolmogorov_sf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x < 1.18 {
        let mut cdf = 0.0;
        for k in 1..=20 {
            let odd = (2 * k - 1) as f64;
            let term = (-odd * odd * PI * PI / (8.0 * x * x)).exp();
            cdf += term;
            if term < 1e-17 * cdf {
                break;
            }
        }
        return (1.0 - (2.0 * PI).sqrt() / x * cdf).clamp(0.0, 1.0);
    }
    let mut sf = 0.0;
    for k in 1..=100 {
        let k = k as f64;
        let term = (-2.0 * k * k * x * x).exp();
        sf += if k as u64 % 2 == 1 { term } else { -term };
        if term < 1e-17 * sf.abs().max(f64::MIN_POSITIVE) {
            break;
        }
    }
    (2.0 * sf).clamp(0.0, 1.0)
}

/// Turns Prometheus histogram buckets (`le` text -> cumulative count, "+Inf" included) into
/// per-bin counts in edge order, bins named by their `le` text; None when not cumulative.
///
/// "Not cumulative": a count that is negative or not finite, a count below the one of a lower
/// edge (beyond a relative 1e-9, the rounding of `increase()`'s extrapolation, which counts as
/// equal), an `le` that is not a number, or two texts of the same edge ("4" and "4.0"). An
/// empty map gives no bins.
pub fn bins_from_cumulative(buckets: &BTreeMap<String, f64>) -> Option<Vec<(String, f64)>> {
    let mut edges = buckets
        .iter()
        .map(|(le, &c)| Some((edge(le)?, le, c)))
        .collect::<Option<Vec<_>>>()?;
    edges.sort_by(|a, b| a.0.total_cmp(&b.0));
    if edges.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let mut below = 0.0_f64;
    let mut bins = Vec::with_capacity(edges.len());
    for (_, le, cumulative) in edges {
        if !cumulative.is_finite() || cumulative < 0.0 {
            return None;
        }
        if cumulative < below - CUMULATIVE_SLACK * below {
            return None;
        }
        bins.push((le.clone(), (cumulative - below).max(0.0)));
        below = below.max(cumulative);
    }
    Some(bins)
}

/// A histogram's upper edge from its `le` text (`"+Inf"` is infinite); None when not a number.
fn edge(le: &str) -> Option<f64> {
    let le = le.trim();
    if le.eq_ignore_ascii_case("+inf") || le.eq_ignore_ascii_case("inf") {
        return Some(f64::INFINITY);
    }
    le.parse::<f64>().ok().filter(|e| !e.is_nan())
}

/// One feature's counts on both sides, on the same bins.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureCounts {
    pub feature: Feature,
    pub bins: Vec<String>,
    pub baseline: Vec<f64>,
    pub window: Vec<f64>,
}

impl FeatureCounts {
    /// Aligns two bin->count maps on the union of their bins (missing = 0): a histogram feature's
    /// bins in numeric edge order ("+Inf" last), others (classes, unknown/known) in name order.
    ///
    /// A histogram's bins are matched by their edge, not their text: "4" on one side and "4.0"
    /// on the other are one bin (named as the baseline writes it); a bin whose name is not a
    /// number comes after the edges, in name order.
    pub fn align(
        feature: Feature,
        baseline: &BTreeMap<String, f64>,
        window: &BTreeMap<String, f64>,
    ) -> Self {
        let histogram = feature.buckets().is_some();
        // (edge, name, baseline, window)
        let mut rows: Vec<(Option<f64>, String, f64, f64)> = Vec::new();
        for (side, counts) in [baseline, window].into_iter().enumerate() {
            for (name, &count) in counts {
                let at = if histogram { edge(name) } else { None };
                let row = match rows.iter_mut().position(|r| match (at, r.0) {
                    (Some(a), Some(b)) => a == b,
                    _ => r.1 == *name,
                }) {
                    Some(i) => &mut rows[i],
                    None => {
                        rows.push((at, name.clone(), 0.0, 0.0));
                        rows.last_mut().expect("just pushed")
                    }
                };
                if side == 0 {
                    row.2 += count;
                } else {
                    row.3 += count;
                }
            }
        }
        rows.sort_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1),
        });
        FeatureCounts {
            feature,
            bins: rows.iter().map(|r| r.1.clone()).collect(),
            baseline: rows.iter().map(|r| r.2).collect(),
            window: rows.iter().map(|r| r.3).collect(),
        }
    }
}

/// One feature's scores in a check (`None`: not requested, not applicable, or not judged).
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureScores {
    pub feature: Feature,
    pub baseline_samples: u64,
    pub window_samples: u64,
    pub psi: Option<f64>,
    pub jensen_shannon: Option<f64>,
    pub ks: Option<Ks>,
    pub drifted: bool,
}

/// The verdict of one check (rules in the module's documentation).
#[derive(Clone, Debug, PartialEq)]
pub enum Assessment {
    /// No feature has min_samples on both sides (or there is no feature): no verdict at all
    /// (message says which, how many).
    NotEnoughData {
        scores: Vec<FeatureScores>,
        message: String,
    },
    /// Features that moved (message names each with its values vs thresholds).
    Drift {
        scores: Vec<FeatureScores>,
        moved: Vec<Feature>,
        message: String,
    },
    NoDrift {
        scores: Vec<FeatureScores>,
        message: String,
    },
}

impl Assessment {
    /// Every feature's scores, whatever the verdict.
    pub fn scores(&self) -> &[FeatureScores] {
        match self {
            Assessment::NotEnoughData { scores, .. }
            | Assessment::Drift { scores, .. }
            | Assessment::NoDrift { scores, .. } => scores,
        }
    }

    /// The message for the condition and the Events.
    pub fn message(&self) -> &str {
        match self {
            Assessment::NotEnoughData { message, .. }
            | Assessment::Drift { message, .. }
            | Assessment::NoDrift { message, .. } => message,
        }
    }
}

/// One check: the rules are in the module's documentation.
pub fn assess(
    measures: &[Measure],
    thresholds: &DriftThresholds,
    min_samples: u64,
    features: &[FeatureCounts],
    drifted_before: &[Feature],
) -> Assessment {
    let mut scores = Vec::with_capacity(features.len());
    let (mut moved, mut drifted, mut held, mut calm, mut short) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for counts in features {
        let feature = counts.feature;
        let was = drifted_before.contains(&feature);
        let mut s = FeatureScores {
            feature,
            baseline_samples: whole(total(&counts.baseline)),
            window_samples: whole(total(&counts.window)),
            psi: None,
            jensen_shannon: None,
            ks: None,
            drifted: false,
        };
        let samples = format!(
            "{} baseline, {} window samples",
            s.baseline_samples, s.window_samples
        );
        if s.baseline_samples < min_samples || s.window_samples < min_samples {
            s.drifted = was;
            short.push(format!(
                "{} ({samples} of minSamples {min_samples}{})",
                feature.label(),
                if was {
                    "; still drifted from the last check"
                } else {
                    ""
                }
            ));
        } else {
            if measures.contains(&Measure::Psi) {
                s.psi = psi(&counts.baseline, &counts.window);
            }
            if measures.contains(&Measure::JensenShannon) {
                s.jensen_shannon = js_divergence(&counts.baseline, &counts.window);
            }
            if measures.contains(&Measure::KolmogorovSmirnov) && feature.buckets().is_some() {
                s.ks = ks_binned(&counts.baseline, &counts.window);
            }
            let over = beyond(&s, thresholds, 1.0);
            let near = beyond(&s, thresholds, HOLD);
            if !over.is_empty() {
                s.drifted = true;
                drifted.push(format!(
                    "{} ({}; {samples})",
                    feature.label(),
                    over.join(", ")
                ));
            } else if was && !near.is_empty() {
                s.drifted = true;
                held.push(format!(
                    "{} ({}; {samples})",
                    feature.label(),
                    near.join(", ")
                ));
            } else {
                calm.push(format!("{} ({}; {samples})", feature.label(), values(&s)));
            }
        }
        if s.drifted {
            moved.push(feature);
        }
        scores.push(s);
    }

    let judged = drifted.len() + held.len() + calm.len();
    if judged == 0 {
        let message = if features.is_empty() {
            "not enough data: no feature to compare".to_string()
        } else {
            format!(
                "not enough data, no feature has minSamples {min_samples} on both sides: {}",
                short.join(", ")
            )
        };
        return Assessment::NotEnoughData { scores, message };
    }
    let mut parts = Vec::new();
    if !drifted.is_empty() {
        parts.push(format!("drift in {}", drifted.join(", ")));
    }
    if !held.is_empty() {
        parts.push(format!(
            "still drifted (drifted at the last check, not yet below {:.0}% of a threshold): {}",
            HOLD * 100.0,
            held.join(", ")
        ));
    }
    if !calm.is_empty() {
        parts.push(format!("no drift in {}", calm.join(", ")));
    }
    if !short.is_empty() {
        parts.push(format!(
            "not judged (too little data): {}",
            short.join(", ")
        ));
    }
    parts.push(format!(
        "thresholds: {}",
        threshold_text(measures, thresholds)
    ));
    let message = parts.join("; ");
    if moved.is_empty() {
        Assessment::NoDrift { scores, message }
    } else {
        Assessment::Drift {
            scores,
            moved,
            message,
        }
    }
}

/// The measures of `s` at or beyond `share` of their thresholds (`share` = 1: strictly beyond,
/// rule 4; [`HOLD`]: at or beyond, rule 5), each with its value and the bound.
fn beyond(s: &FeatureScores, t: &DriftThresholds, share: f64) -> Vec<String> {
    let strict = share >= 1.0;
    let past = |value: f64, threshold: f64| {
        let bound = share * threshold;
        if strict {
            value > bound
        } else {
            value >= bound
        }
    };
    let bound = |name: &str, threshold: f64| {
        if strict {
            format!("{name} {threshold}")
        } else {
            format!("{:.0}% of {name} {threshold}", share * 100.0)
        }
    };
    let mut out = Vec::new();
    if let Some(v) = s.psi
        && past(v, t.psi)
    {
        out.push(format!("PSI {v:.4} over {}", bound("psi", t.psi)));
    }
    if let Some(v) = s.jensen_shannon
        && past(v, t.jensen_shannon)
    {
        out.push(format!(
            "JS {v:.4} over {}",
            bound("jensenShannon", t.jensen_shannon)
        ));
    }
    if let Some(ks) = s.ks
        && past(ks.statistic, t.kolmogorov_smirnov)
        && ks.p_value < t.ks_p_value / share
    {
        out.push(format!(
            "KS {:.4} over {} with p {:.3e} under {}",
            ks.statistic,
            bound("kolmogorovSmirnov", t.kolmogorov_smirnov),
            ks.p_value,
            if strict {
                format!("ksPValue {}", t.ks_p_value)
            } else {
                format!("ksPValue/{share} {:.4}", t.ks_p_value / share)
            }
        ));
    }
    out
}

/// A judged feature's values, for a feature that did not drift.
fn values(s: &FeatureScores) -> String {
    let mut out = Vec::new();
    if let Some(v) = s.psi {
        out.push(format!("PSI {v:.4}"));
    }
    if let Some(v) = s.jensen_shannon {
        out.push(format!("JS {v:.4}"));
    }
    if let Some(ks) = s.ks {
        out.push(format!("KS {:.4} p {:.3e}", ks.statistic, ks.p_value));
    }
    if out.is_empty() {
        "no requested measure applies".to_string()
    } else {
        out.join(", ")
    }
}

/// "psi 0.2, jensenShannon 0.1, ...": the thresholds of the requested measures.
fn threshold_text(measures: &[Measure], t: &DriftThresholds) -> String {
    let mut out = Vec::new();
    for measure in Measure::ALL {
        if !measures.contains(&measure) {
            continue;
        }
        out.push(match measure {
            Measure::Psi => format!("psi {}", t.psi),
            Measure::JensenShannon => format!("jensenShannon {}", t.jensen_shannon),
            Measure::KolmogorovSmirnov => format!(
                "kolmogorovSmirnov {} with ksPValue {}",
                t.kolmogorov_smirnov, t.ks_p_value
            ),
        });
    }
    if out.is_empty() {
        "no measure requested".to_string()
    } else {
        out.join(", ")
    }
}

/// Shares of `bins` bins (bins beyond `counts` are empty); None without observations.
fn shares(counts: &[f64], bins: usize) -> Option<Vec<f64>> {
    let clean: Vec<f64> = (0..bins)
        .map(|i| counts.get(i).map_or(0.0, |&c| count(c)))
        .collect();
    let total: f64 = clean.iter().sum();
    (total > 0.0).then(|| clean.iter().map(|c| c / total).collect())
}

/// The observations of a side.
fn total(counts: &[f64]) -> f64 {
    counts.iter().map(|&c| count(c)).sum()
}

/// A count read from Prometheus; what cannot be a count (NaN, negative) is 0.
fn count(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

#[cfg(test)]
#[path = "drift_tests.rs"]
mod tests;
