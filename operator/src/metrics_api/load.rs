//! The load of one InferenceService as the external metrics API answers it, computed from
//! Prometheus samples and the pods' readiness. Pure: the queries are built and the samples
//! interpreted here; fetching them is [`super::signal`]'s job.
//!
//! The answer is one item per ready replica, valued at that replica's waiting plus running
//! requests (a ready replica not scraped yet counts at the others' average). The HPA sums the items and, with an `AverageValue` target, wants
//! `ceil(sum / targetLoadPerReplica)` replicas: the total load over the load one replica should
//! carry. Replicas that are not ready (loading, draining) receive no new traffic, so their
//! gauges are left out rather than counted as idle capacity.
//!
//! Missing data is never a zero. Prometheus unreachable, no series for the service, or no ready
//! replica that reports: each is an error the HPA sees, and it holds its replicas until the
//! signal is back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use lexserve_contract::names::label;

use crate::resources::load_query::load_selector;

/// PromQL for the load of each pod of one InferenceService:
/// `sum by (pod) ({__name__=~"lexserve_queue_size|lexserve_requests_running",namespace="NS",inference_service="NAME"})`.
///
/// Summed over `pod`, this is [`crate::resources::load_query::load_query`], the query KEDA's
/// trigger runs, so both providers see the same load.
pub fn per_pod_load_query(namespace: &str, inference_service: &str) -> String {
    format!(
        "sum by ({}) ({})",
        label::POD,
        load_selector(namespace, inference_service)
    )
}

/// One replica's share of the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct PodLoad {
    pub pod: String,
    /// Waiting plus running requests.
    pub load: f64,
}

/// The load of an InferenceService: what the metrics API answers.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReading {
    /// One entry per ready replica, sorted by pod name.
    pub pods: Vec<PodLoad>,
    /// Ready replicas without series yet (just started, or not scraped): in `pods` at the
    /// average of those that report.
    pub unreported: Vec<String>,
}

impl LoadReading {
    /// The total load the HPA computes from the items.
    pub fn total(&self) -> f64 {
        self.pods.iter().map(|p| p.load).sum()
    }

    /// The load per ready replica.
    pub fn per_replica(&self) -> f64 {
        if self.pods.is_empty() {
            0.0
        } else {
            self.total() / self.pods.len() as f64
        }
    }
}

/// Why there is no load to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalMissing {
    /// Prometheus could not be queried (connection refused, timeout, 5xx).
    PrometheusUnavailable { url: String, error: String },
    /// Prometheus answered, but has no series of the sidecars' gauges for this service.
    NoSeries { query: String },
    /// Series exist, but none belongs to a ready replica (all starting, failing or draining).
    NoReadyReplicaReports { ready: usize },
    /// The InferenceService has no ready replica at all.
    NoReadyReplicas,
}

impl SignalMissing {
    /// A CamelCase reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SignalMissing::PrometheusUnavailable { .. } => "PrometheusUnavailable",
            SignalMissing::NoSeries { .. } => "LoadSeriesMissing",
            SignalMissing::NoReadyReplicaReports { .. } => "LoadSeriesMissing",
            SignalMissing::NoReadyReplicas => "NoReadyReplicas",
        }
    }

    /// Whether the cause is outside the service (monitoring), rather than the service not
    /// running yet: only these make the InferenceService Degraded.
    pub fn is_monitoring_problem(&self) -> bool {
        !matches!(self, SignalMissing::NoReadyReplicas)
    }
}

impl fmt::Display for SignalMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalMissing::PrometheusUnavailable { url, error } => {
                write!(f, "Prometheus at {url} cannot be queried: {error}")
            }
            SignalMissing::NoSeries { query } => write!(
                f,
                "Prometheus has no series for {query}: are the sidecars scraped with the labels namespace, inference_service and pod?"
            ),
            SignalMissing::NoReadyReplicaReports { ready } => write!(
                f,
                "none of the {ready} ready replicas has load series in Prometheus yet"
            ),
            SignalMissing::NoReadyReplicas => {
                f.write_str("no replica is ready, so there is no load to measure")
            }
        }
    }
}

/// Combines the per-pod samples with the set of ready pods into the answer.
///
/// `samples` maps pod name to load (the result of [`per_pod_load_query`]); a sample without a
/// `pod` label arrives under the empty name and is ignored, as are NaN and negative values
/// (gauges of counts are never negative; such a value is a broken exporter, not load).
pub fn reading(
    samples: &BTreeMap<String, f64>,
    ready_pods: &BTreeSet<String>,
    query: &str,
) -> Result<LoadReading, SignalMissing> {
    if samples.is_empty() {
        return Err(SignalMissing::NoSeries {
            query: query.to_string(),
        });
    }
    if ready_pods.is_empty() {
        return Err(SignalMissing::NoReadyReplicas);
    }
    let mut pods = Vec::new();
    let mut unreported = Vec::new();
    for pod in ready_pods {
        match samples.get(pod) {
            Some(load) if load.is_finite() && *load >= 0.0 => pods.push(PodLoad {
                pod: pod.clone(),
                load: *load,
            }),
            _ => unreported.push(pod.clone()),
        }
    }
    if pods.is_empty() {
        return Err(SignalMissing::NoReadyReplicaReports {
            ready: ready_pods.len(),
        });
    }
    // A ready replica not scraped yet (it just started) already takes its share of the traffic:
    // leaving it out would count it as idle, a made-up zero that can talk the HPA into scaling
    // down in the middle of a scale-up. It is counted at the reporting replicas' average.
    let average = pods.iter().map(|p| p.load).sum::<f64>() / pods.len() as f64;
    pods.extend(unreported.iter().map(|pod| PodLoad {
        pod: pod.clone(),
        load: average,
    }));
    pods.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(LoadReading { pods, unreported })
}

/// A load as a Kubernetes quantity: whole numbers plain, others in thousandths (`1500m`).
pub fn quantity(value: f64) -> String {
    let milli = (value * 1000.0).round() as i64;
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(p, v)| (p.to_string(), *v)).collect()
    }

    fn ready(pods: &[&str]) -> BTreeSet<String> {
        pods.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn per_pod_query_sums_both_gauges_by_pod_for_one_service() {
        let q = per_pod_load_query("team-a", "minilm");
        assert_eq!(
            q,
            "sum by (pod) ({__name__=~\"lexserve_queue_size|lexserve_requests_running\",namespace=\"team-a\",inference_service=\"minilm\"})"
        );
        // Summing it over pods is exactly KEDA's query.
        let keda = crate::resources::load_query::load_query("team-a", "minilm");
        assert_eq!(q.replace("sum by (pod) (", "sum("), keda);
    }

    #[test]
    fn per_pod_query_escapes_quotes() {
        let q = per_pod_load_query("a\"b", "c");
        assert!(q.contains("namespace=\"a\\\"b\""), "{q}");
    }

    #[test]
    fn items_are_the_ready_replicas_loads() {
        let r = reading(
            &samples(&[("p1", 6.0), ("p2", 2.0)]),
            &ready(&["p1", "p2"]),
            "q",
        )
        .expect("reading");
        assert_eq!(r.total(), 8.0);
        assert_eq!(r.per_replica(), 4.0);
        assert_eq!(r.pods.len(), 2);
        assert!(r.unreported.is_empty());
    }

    #[test]
    fn a_busy_replica_with_an_empty_queue_still_counts() {
        // running 4, waiting 0: the per-pod sum is 4, not 0.
        let r = reading(&samples(&[("p1", 4.0)]), &ready(&["p1"]), "q").expect("reading");
        assert_eq!(r.total(), 4.0);
    }

    #[test]
    fn replicas_that_are_not_ready_are_left_out() {
        let r = reading(
            &samples(&[("p1", 3.0), ("draining", 9.0)]),
            &ready(&["p1"]),
            "q",
        )
        .expect("reading");
        assert_eq!(r.total(), 3.0);
        assert_eq!(
            r.pods,
            vec![PodLoad {
                pod: "p1".into(),
                load: 3.0
            }]
        );
    }

    #[test]
    fn a_ready_replica_not_yet_scraped_counts_at_the_average_not_zero() {
        let r = reading(
            &samples(&[("p1", 3.0), ("p2", 5.0)]),
            &ready(&["p1", "p2", "new"]),
            "q",
        )
        .expect("reading");
        assert_eq!(r.total(), 12.0);
        assert_eq!(r.pods.len(), 3);
        assert_eq!(r.unreported, vec!["new".to_string()]);
    }

    #[test]
    fn idle_is_zero_and_distinct_from_missing() {
        let r = reading(&samples(&[("p1", 0.0)]), &ready(&["p1"]), "q").expect("reading");
        assert_eq!(r.total(), 0.0);
        assert_eq!(
            reading(&samples(&[]), &ready(&["p1"]), "Q"),
            Err(SignalMissing::NoSeries { query: "Q".into() })
        );
    }

    #[test]
    fn no_ready_replica_is_missing_not_zero() {
        assert_eq!(
            reading(&samples(&[("p1", 0.0)]), &ready(&[]), "q"),
            Err(SignalMissing::NoReadyReplicas)
        );
        assert_eq!(
            reading(&samples(&[("old", 5.0)]), &ready(&["p1", "p2"]), "q"),
            Err(SignalMissing::NoReadyReplicaReports { ready: 2 })
        );
    }

    #[test]
    fn broken_values_are_not_load() {
        let r = reading(
            &samples(&[("p1", f64::NAN), ("p2", -1.0), ("p3", 2.0)]),
            &ready(&["p1", "p2", "p3"]),
            "q",
        )
        .expect("reading");
        // p1 and p2 are not believed; they count at p3's value, not at their own.
        assert_eq!(r.total(), 6.0);
        assert_eq!(r.unreported, vec!["p1".to_string(), "p2".to_string()]);
    }

    #[test]
    fn reasons_and_messages_name_the_cause() {
        let e = SignalMissing::PrometheusUnavailable {
            url: "http://prom:9090".into(),
            error: "connection refused".into(),
        };
        assert_eq!(e.reason(), "PrometheusUnavailable");
        assert!(e.to_string().contains("http://prom:9090"));
        assert!(e.is_monitoring_problem());
        assert!(!SignalMissing::NoReadyReplicas.is_monitoring_problem());
        assert!(
            SignalMissing::NoSeries { query: "q".into() }
                .to_string()
                .contains("inference_service")
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity(0.0), "0");
        assert_eq!(quantity(12.0), "12");
        assert_eq!(quantity(1.5), "1500m");
        assert_eq!(quantity(0.0004), "0");
        assert_eq!(quantity(2.0 / 3.0), "667m");
    }
}
