//! Reads an InferenceService's load: the per-pod query from Prometheus, the pods' readiness from
//! a watch-backed cache, combined by [`super::load::reading`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use super::load::{LoadReading, SignalMissing, per_pod_load_query, reading};
use crate::resources::labels::{COMPONENT_LABEL, INFERENCE_SERVICE_LABEL};

/// How long one Prometheus query may take before the signal counts as unavailable.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The load signal of every InferenceService, from Prometheus and the pods.
#[derive(Clone)]
pub struct LoadSignal {
    prometheus: prometheus_http_query::Client,
    url: String,
    pods: Store<Pod>,
}

impl LoadSignal {
    /// Connects to Prometheus at `url` (queried lazily) and reads readiness from `pods`.
    pub fn new(url: &str, pods: Store<Pod>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(QUERY_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let prometheus = prometheus_http_query::Client::from(http, url)
            .map_err(|e| anyhow::anyhow!("invalid Prometheus URL {url}: {e}"))?;
        Ok(Self {
            prometheus,
            url: url.to_string(),
            pods,
        })
    }

    /// The load of `namespace/name` now.
    pub async fn read(&self, namespace: &str, name: &str) -> Result<LoadReading, SignalMissing> {
        let query = per_pod_load_query(namespace, name);
        let unavailable = |error: String| SignalMissing::PrometheusUnavailable {
            url: self.url.clone(),
            error,
        };
        let result = self
            .prometheus
            .query(&query)
            .get()
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
        let vector = result.data().as_vector().ok_or_else(|| {
            unavailable(format!(
                "expected an instant vector for {query}, got another result type"
            ))
        })?;
        let samples: BTreeMap<String, f64> = vector
            .iter()
            .map(|s| {
                (
                    s.metric().get("pod").cloned().unwrap_or_default(),
                    s.sample().value(),
                )
            })
            .collect();
        reading(&samples, &self.ready_pods(namespace, name), &query)
    }

    /// The names of the service's pods that are Ready and not terminating.
    fn ready_pods(&self, namespace: &str, name: &str) -> BTreeSet<String> {
        self.pods
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .filter(|p| p.labels().get(INFERENCE_SERVICE_LABEL).map(String::as_str) == Some(name))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|p| p.name_any())
            .collect()
    }
}

/// An error with its causes ("failed to send request: ...: Connection refused"): the top-level
/// message of an HTTP client error alone rarely says what went wrong.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // reqwest names the whole URL, query included: the query is in the message already.
        let mut message = cause.to_string();
        if let Some(at) = message.find(" for url (") {
            message.truncate(at);
        }
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// Starts a watch-backed cache of the model-server pods (in `namespace`, or everywhere); returns
/// its reader (wait with `wait_until_ready` for the first list) and the watch's last error, which
/// says why the first list does not come (`pods is forbidden: ...`).
pub fn watch_model_pods(client: Client, namespace: Option<&str>) -> (Store<Pod>, WatchErrors) {
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let config = watcher::Config::default().labels(&format!("{COMPONENT_LABEL}=model-server"));
    let (reader, writer) = reflector::store();
    // Only what readiness needs is kept: the operator's memory does not grow with pod specs.
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|pod| {
            pod.managed_fields_mut().clear();
            pod.annotations_mut().clear();
            pod.spec = None;
        })
        .reflect(writer)
        .applied_objects();
    let errors = WatchErrors::default();
    let last = errors.clone();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                warn!(error = %e, "watching model-server pods");
                last.record(e.to_string());
            }
        }
    });
    (reader, errors)
}

/// The last error of a watch, for saying why its cache is not filled.
#[derive(Clone, Default)]
pub struct WatchErrors(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl WatchErrors {
    fn record(&self, error: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// The last error seen, if any.
    pub fn last(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
