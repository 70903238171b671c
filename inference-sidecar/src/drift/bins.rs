//! A histogram feature's bins counted as the exposition's histograms count them, so that a
//! baseline and the live series of the same inputs agree bin for bin: a value goes in the first
//! bin whose upper edge is at least the value, past the last edge in `+Inf`, and NaN in `+Inf`
//! (prometheus-client's rule).

use lexserve_contract::drift::bin_label;

/// The index of the bin `value` falls in: `edges.len()` is `+Inf`.
pub fn bin_index(edges: &[f64], value: f64) -> usize {
    if value.is_nan() {
        return edges.len();
    }
    edges
        .iter()
        .position(|edge| *edge >= value)
        .unwrap_or(edges.len())
}

/// Counts per bin of one histogram feature (not cumulative).
#[derive(Debug, Clone, PartialEq)]
pub struct BinCounts {
    edges: &'static [f64],
    counts: Vec<u64>,
}

impl BinCounts {
    pub fn new(edges: &'static [f64]) -> Self {
        Self {
            edges,
            counts: vec![0; edges.len() + 1],
        }
    }

    pub fn observe(&mut self, value: f64) {
        self.counts[bin_index(self.edges, value)] += 1;
    }

    /// `(bin label, count)` for every bin, `+Inf` last.
    pub fn labeled(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.edges
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .map(bin_label)
            .zip(self.counts.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::Histogram;

    const EDGES: [f64; 3] = [1.0, 2.0, 4.0];

    #[test]
    fn edges_are_inclusive_upper_bounds() {
        assert_eq!(bin_index(&EDGES, 0.0), 0);
        assert_eq!(bin_index(&EDGES, 1.0), 0);
        assert_eq!(bin_index(&EDGES, 1.5), 1);
        assert_eq!(bin_index(&EDGES, 4.0), 2);
        assert_eq!(bin_index(&EDGES, 4.5), 3);
        assert_eq!(bin_index(&EDGES, f64::NAN), 3);
        assert_eq!(bin_index(&EDGES, f64::INFINITY), 3);
    }

    /// The same values through a prometheus-client histogram and through `BinCounts` give the
    /// same per-bin counts under the same `le` labels.
    #[test]
    fn counts_and_labels_match_the_exposition() {
        let values = [0.5, 1.0, 1.0000001, 2.0, 3.9, 4.0, 7.0, f64::NAN, -3.0];
        let histogram = Histogram::new(EDGES);
        let mut counts = BinCounts::new(&EDGES);
        for v in values {
            histogram.observe(v);
            counts.observe(v);
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("h", "h", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut cumulative = 0;
        for (label, count) in counts.labeled() {
            cumulative += count;
            let line = format!("h_bucket{{le=\"{label}\"}} {cumulative}\n");
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }
}
