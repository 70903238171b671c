//! Reads an Experiment's numbers from Prometheus for the decision engine
//! (`analysis::decision`).

use std::time::Duration;

use crate::analysis::decision::Observation;
use crate::api::experiment::Experiment;

/// The client the operator queries Prometheus with (the load signal uses the same).
pub type PrometheusClient = prometheus_http_query::Client;

/// Reads the numbers of every variant and metric, cumulative over `since_start` (PromQL
/// `increase` over the experiment's whole life, so router restarts do not lose counts), with
/// builtin metrics from the router's series and `prometheus` metrics from the user's queries
/// ({{variant}}, {{experiment}} substituted). Prometheus unreachable -> Observation::Unreachable;
/// empty series -> Observation::NoData. Never an error.
pub async fn observe(
    prometheus: &PrometheusClient,
    experiment: &Experiment,
    since_start: Duration,
) -> Observation {
    let _ = (prometheus, experiment, since_start);
    Observation::NoData {
        reason: "not implemented yet".to_string(),
    }
}
