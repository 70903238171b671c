//! The statistics of an Experiment: pure functions from counts and sums (what the router exports)
//! to tests, intervals, sample sizes and corrections. No I/O here; the Prometheus queries that feed
//! these live beside them. Every function is checked against `golden/stats-golden.json`, computed by
//! `golden/stats-golden.py` with scipy/statsmodels (copied from the project's shared reference set).

pub mod compare;
pub mod decision;
pub mod distributions;
pub mod drift;
pub mod holm;
pub mod means;
pub mod power;
pub mod proportions;
pub mod sequential;
pub mod shadow;
pub mod srm;
pub mod wilson;

#[cfg(test)]
mod golden;
#[cfg(test)]
pub(crate) mod simulation;

/// Why a statistic could not be computed. Degenerate input is reported, never turned into NaN.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// A sample (an arm, a variant) has too few observations for the statistic.
    #[error("{what}: needs at least {needed} observations, has {has}")]
    TooFewObservations {
        what: &'static str,
        needed: u64,
        has: u64,
    },
    /// The variance is zero (or negative from rounding), so no standard error exists.
    #[error("{what}: variance is zero, the statistic is undefined")]
    ZeroVariance { what: &'static str },
    /// A parameter is outside its domain (a probability outside (0, 1), a negative count...).
    #[error("{what} = {value} is out of range: {rule}")]
    OutOfRange {
        what: &'static str,
        value: f64,
        rule: &'static str,
    },
    /// Weights or observed counts that cannot describe a split.
    #[error("invalid split: {0}")]
    InvalidSplit(String),
}

/// Which way a test looks. `Greater` means "treatment larger than control".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alternative {
    TwoSided,
    Greater,
    Less,
}

impl Alternative {
    /// The p-value of a statistic whose null distribution has survival function `sf` and is
    /// symmetric about zero (normal, Student t).
    pub(crate) fn p_value(self, stat: f64, sf: impl Fn(f64) -> f64) -> f64 {
        match self {
            Alternative::TwoSided => (2.0 * sf(stat.abs())).min(1.0),
            Alternative::Greater => sf(stat),
            Alternative::Less => sf(-stat),
        }
    }
}

/// Checks `0 < alpha < 1`.
pub(crate) fn check_alpha(alpha: f64) -> Result<(), StatsError> {
    check_open_unit("alpha", alpha)
}

pub(crate) fn check_open_unit(what: &'static str, value: f64) -> Result<(), StatsError> {
    if value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(StatsError::OutOfRange {
            what,
            value,
            rule: "must be strictly between 0 and 1",
        })
    }
}
