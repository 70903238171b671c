//! The load signal the autoscalers act on: requests waiting plus requests running, summed over
//! an InferenceService's pods. Both the operator's external metrics API and KEDA's Prometheus
//! trigger use this one query, so the two providers scale alike.
//!
//! The query relies on three labels on the sidecars' series: `namespace`, `inference_service`
//! (from the pod label `lexserve.io/inference-service`) and `pod`. The chart's PodMonitor and the
//! documented plain scrape config both produce exactly these.

use lexserve_contract::names::{label, metric};

/// The external metric the HPA targets.
pub const EXTERNAL_METRIC_NAME: &str = "lexserve_inference_load";

/// PromQL for the total load (waiting + running) of one InferenceService.
///
/// `a + b` would drop the whole result when one side has no series; summing one vector selected
/// over both metric names keeps a result as long as either exists, and yields no result (not
/// zero) when neither does, so "no data" stays distinguishable from "idle". A plain instant
/// selector (no `*_over_time`) lets Prometheus' staleness markers drop a deleted pod at once.
pub fn load_query(namespace: &str, inference_service: &str) -> String {
    format!("sum({})", load_selector(namespace, inference_service))
}

/// The series of one InferenceService's load: both gauges, selected by name in one vector.
pub fn load_selector(namespace: &str, inference_service: &str) -> String {
    format!(
        "{{__name__=~\"{}\",{}=\"{}\",{}=\"{}\"}}",
        metric::LOAD.join("|"),
        label::NAMESPACE,
        escape(namespace),
        label::INFERENCE_SERVICE,
        escape(inference_service)
    )
}

/// Escapes a PromQL string literal. Kubernetes names cannot hold quotes or backslashes, but the
/// query must be safe whatever it is given.
pub(crate) fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_selects_both_metrics_for_one_service() {
        let q = load_query("team-a", "minilm");
        assert!(q.contains("lexserve_queue_size|lexserve_requests_running"));
        assert!(q.contains("namespace=\"team-a\""));
        assert!(q.contains("inference_service=\"minilm\""));
        assert!(q.starts_with("sum("));
    }

    #[test]
    fn quotes_are_escaped() {
        let q = load_query("a\"b", "c\\d");
        assert!(q.contains("namespace=\"a\\\"b\""));
        assert!(q.contains("inference_service=\"c\\\\d\""));
    }
}
