//! A reference sample's counts per feature and bin, and their export as the contract's
//! `lexserve_drift_baseline{feature,bin}` gauges.

use lexserve_contract::drift::Feature;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::bins::BinCounts;
use crate::metrics::DriftBinLabels;

/// Every bin of every feature a sample gave, in the order they were added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    bins: Vec<(Feature, String, u64)>,
}

impl Baseline {
    /// All bins of a histogram feature, empty ones included.
    pub fn add_histogram(&mut self, feature: Feature, counts: &BinCounts) {
        self.bins
            .extend(counts.labeled().map(|(bin, n)| (feature, bin, n)));
    }

    /// One bin of a counted feature (`unknown_tokens`, `predicted_class`).
    pub fn add_count(&mut self, feature: Feature, bin: &str, count: u64) {
        self.bins.push((feature, bin.to_string(), count));
    }

    /// The count of `feature`'s `bin`, if the sample gave that feature.
    pub fn get(&self, feature: Feature, bin: &str) -> Option<u64> {
        self.bins
            .iter()
            .find(|(f, b, _)| *f == feature && b == bin)
            .map(|(_, _, n)| *n)
    }

    /// Sets one gauge per bin.
    pub fn export(&self, gauges: &Family<DriftBinLabels, Gauge>) {
        for (feature, bin, count) in &self.bins {
            gauges
                .get_or_create(&DriftBinLabels {
                    feature: feature.label().to_string(),
                    bin: bin.clone(),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }
}
