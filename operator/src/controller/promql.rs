//! What the analyses' Prometheus readers (`experiment::observe`, `shadow::observe`) share: the
//! client with the analysis's timeouts, instant queries that tell "Prometheus did not answer"
//! from "Prometheus rejected the query", and PromQL string literals.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_http_query::Error as QueryError;
use prometheus_http_query::error::PrometheusErrorType;
use prometheus_http_query::response::Data;

use crate::metrics_api::signal::error_chain;

/// The client the operator queries Prometheus with (the load signal uses the same).
pub type PrometheusClient = prometheus_http_query::Client;

/// How long one query may take before Prometheus counts as unreachable.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for Prometheus at `url` with the timeouts the analysis wants.
pub fn connect(url: &str) -> anyhow::Result<PrometheusClient> {
    let http = reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    PrometheusClient::from(http, url)
        .map_err(|e| anyhow::anyhow!("invalid Prometheus URL {url}: {e}"))
}

/// Why a query gave no number.
pub(crate) enum Failure {
    /// No answer (connection, timeout, a 5xx).
    Unreachable(String),
    /// Prometheus answered that the query is wrong.
    Rejected(String),
}

/// One sample of an instant query's answer: its labels and its value.
pub(crate) type Sample = (BTreeMap<String, String>, f64);

/// Runs an instant query at `at` (Unix seconds, as PromQL's `time` parameter takes it) or now.
/// A scalar is one sample without labels; a range vector is rejected (the readers want numbers).
pub(crate) async fn instant(
    prometheus: &PrometheusClient,
    text: &str,
    at: Option<&str>,
) -> Result<Vec<Sample>, Failure> {
    let mut request = prometheus.query(text);
    if let Some(at) = at {
        request = request.query("time", at);
    }
    let response = request.get().await.map_err(|e| match &e {
        QueryError::Prometheus(p) if p.error_type() == PrometheusErrorType::BadData => {
            Failure::Rejected(p.message().to_string())
        }
        _ => Failure::Unreachable(format!("{text}: {}", error_chain(&e))),
    })?;
    match response.data() {
        Data::Vector(vector) => Ok(vector
            .iter()
            .map(|s| (s.metric().clone().into_iter().collect(), s.sample().value()))
            .collect()),
        Data::Scalar(sample) => Ok(vec![(BTreeMap::new(), sample.value())]),
        Data::Matrix(_) => Err(Failure::Rejected(format!(
            "{text} returns a range vector; it must return one number"
        ))),
    }
}

/// A PromQL string literal's content.
pub(crate) fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}
