//! The `external.metrics.k8s.io/v1beta1` HTTP API: discovery documents and the metric values
//! endpoint, behind TLS. Errors are `metav1.Status` objects, as the apiserver relays them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use super::load::{SignalMissing, quantity};
use super::selector::Selector;
use super::signal::LoadSignal;
use crate::resources::labels::INFERENCE_SERVICE_LABEL;
use crate::resources::load_query::EXTERNAL_METRIC_NAME;
use crate::telemetry::Metrics;

/// The API group served.
pub const GROUP: &str = "external.metrics.k8s.io";
/// The version served.
pub const VERSION: &str = "v1beta1";

#[derive(Clone)]
struct ApiState {
    signal: LoadSignal,
    metrics: Metrics,
}

/// The router (without TLS), for tests and for [`serve`].
pub fn router(signal: LoadSignal, metrics: Metrics) -> Router {
    let base = format!("/apis/{GROUP}/{VERSION}");
    Router::new()
        .route("/apis", get(group_list))
        .route(&format!("/apis/{GROUP}"), get(group))
        .route(&base, get(resource_list))
        .route(
            &format!("{base}/namespaces/{{namespace}}/{{metric}}"),
            get(metric_values),
        )
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .with_state(ApiState { signal, metrics })
}

/// Serves the API on `tcp` with `tls` until the process ends.
pub async fn serve(
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    signal: LoadSignal,
    metrics: Metrics,
) -> std::io::Result<()> {
    let listener = TlsListener::new(tcp, TlsAcceptor::from(tls))?;
    axum::serve(listener, router(signal, metrics)).await
}

fn group_version() -> String {
    format!("{GROUP}/{VERSION}")
}

async fn group_list() -> Json<Value> {
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group_document()],
    }))
}

async fn group() -> Json<Value> {
    Json(group_document())
}

fn group_document() -> Value {
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [{ "groupVersion": group_version(), "version": VERSION }],
        "preferredVersion": { "groupVersion": group_version(), "version": VERSION },
    })
}

async fn resource_list() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(),
        "resources": [{
            "name": EXTERNAL_METRIC_NAME,
            "singularName": "",
            "namespaced": true,
            "kind": "ExternalMetricValueList",
            "verbs": ["get"],
        }],
    }))
}

#[derive(Deserialize)]
struct ValuesQuery {
    #[serde(rename = "labelSelector", default)]
    label_selector: String,
}

async fn metric_values(
    State(state): State<ApiState>,
    Path((namespace, metric)): Path<(String, String)>,
    Query(query): Query<ValuesQuery>,
) -> Response {
    let response = answer(&state, &namespace, &metric, &query.label_selector).await;
    let code = match &response {
        Ok(_) => "200".to_string(),
        Err(r) => r.status().as_u16().to_string(),
    };
    state.metrics.metrics_api_request(&code);
    response.unwrap_or_else(|r| r)
}

async fn answer(
    state: &ApiState,
    namespace: &str,
    metric: &str,
    label_selector: &str,
) -> Result<Response, Response> {
    if metric != EXTERNAL_METRIC_NAME {
        return Err(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no external metric {metric:?}: this server serves {EXTERNAL_METRIC_NAME}"),
        ));
    }
    let selector = Selector::parse(label_selector)
        .map_err(|e| status(StatusCode::BAD_REQUEST, "BadRequest", &e))?;
    let Some(service) = selector.single_value(INFERENCE_SERVICE_LABEL) else {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "labelSelector must name one InferenceService with {INFERENCE_SERVICE_LABEL}=<name> (got {label_selector:?})"
            ),
        ));
    };
    let reading = state.signal.read(namespace, service).await.map_err(|missing| {
        debug!(%namespace, inference_service = %service, reason = missing.reason(), "no load signal: {missing}");
        let code = match missing {
            SignalMissing::PrometheusUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::NOT_FOUND,
        };
        let reason = if code == StatusCode::NOT_FOUND { "NotFound" } else { "ServiceUnavailable" };
        status(
            code,
            reason,
            &format!("{EXTERNAL_METRIC_NAME} for InferenceService {namespace}/{service}: {missing}"),
        )
    })?;
    let timestamp = Timestamp::now()
        .round(jiff_second())
        .unwrap_or_else(|_| Timestamp::now());
    let items: Vec<Value> = reading
        .pods
        .iter()
        .filter_map(|p| {
            let labels = std::collections::BTreeMap::from([
                (INFERENCE_SERVICE_LABEL.to_string(), service.to_string()),
                ("pod".to_string(), p.pod.clone()),
            ]);
            selector.matches(&labels).then(|| {
                json!({
                    "metricName": EXTERNAL_METRIC_NAME,
                    "metricLabels": labels,
                    "timestamp": timestamp.to_string(),
                    "value": quantity(p.load),
                })
            })
        })
        .collect();
    Ok(Json(json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": group_version(),
        "metadata": {},
        "items": items,
    }))
    .into_response())
}

fn jiff_second() -> k8s_openapi::jiff::Unit {
    k8s_openapi::jiff::Unit::Second
}

/// A `metav1.Status` failure.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// A listener whose connections arrive with the TLS handshake (client verification included)
/// done. Handshakes run in their own tasks, so a slow or hostile client delays nobody else; a
/// failed one drops that connection only.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "metrics API: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            warn!(%peer, error = %e, "metrics API: TLS handshake refused")
                        }
                        Err(_) => debug!(%peer, "metrics API: TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { ready, addr })
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
