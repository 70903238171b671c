//! Reaching a local process through the apiserver's aggregation layer, and a small
//! `external.metrics.k8s.io` server for tests.
//!
//! The apiserver runs with `--enable-aggregator-routing=false`, so it sends an APIService's
//! requests to its Service's address; for a Service of type ExternalName that is
//! `externalName:port`. An ExternalName Service to 127.0.0.1 thus lets an APIService reach a
//! process on this machine: a test server, or the operator's metrics API run as a local
//! process. (With routing on, the aggregator only accepts Services with endpoints, and
//! endpoints may not be loopback addresses.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::cluster::LocalCluster;
use crate::wait::{self, Poll};

/// The API group the HPA controller reads External metrics from.
pub const EXTERNAL_METRICS_GROUP: &str = "external.metrics.k8s.io";
/// Its version.
pub const EXTERNAL_METRICS_VERSION: &str = "v1beta1";

/// How the apiserver is to trust an APIService's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendTrust {
    /// `insecureSkipTLSVerify`: for test servers with throwaway self-signed certificates.
    InsecureSkipVerify,
    /// Neither `caBundle` nor `insecureSkipTLSVerify`: the backend itself sets the `caBundle`
    /// (the operator does, for its metrics API); until then the APIService is not Available.
    CaBundleFromBackend,
}

/// Registers an APIService `VERSION.GROUP` backed by a process listening on 127.0.0.1:`port`
/// (through an ExternalName Service named `service` in `namespace`), and waits until the
/// apiserver reports it Available.
#[allow(clippy::too_many_arguments)]
pub async fn register_local_apiservice(
    cluster: &LocalCluster,
    group: &str,
    version: &str,
    namespace: &str,
    service: &str,
    port: u16,
    trust: BackendTrust,
    timeout: Duration,
) -> Result<()> {
    let name = format!("{version}.{group}");
    let mut spec = json!({
        "group": group,
        "version": version,
        "groupPriorityMinimum": 100,
        "versionPriority": 100,
        "service": { "name": service, "namespace": namespace, "port": port },
    });
    if trust == BackendTrust::InsecureSkipVerify {
        spec["insecureSkipTLSVerify"] = json!(true);
    }
    let manifest = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": { "name": service, "namespace": namespace },
                "spec": {
                    "type": "ExternalName",
                    "externalName": "127.0.0.1",
                    "ports": [{ "name": "https", "port": port, "protocol": "TCP" }],
                },
            },
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": { "name": name },
                "spec": spec,
            },
        ],
    });
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(&manifest.to_string()))
        .await?
        .ok()
        .with_context(|| format!("applying APIService {name}"))?;
    wait_apiservice_available(cluster, &name, timeout).await
}

/// Waits until APIService `name` has condition Available=True.
pub async fn wait_apiservice_available(
    cluster: &LocalCluster,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    wait::until(
        &format!("APIService {name} to be Available"),
        timeout,
        Duration::from_millis(500),
        || async {
            let out = cluster
                .kubectl([
                    "get",
                    "apiservice",
                    name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Available\")]}",
                ])
                .await?;
            let condition: serde_json::Value =
                serde_json::from_str(out.stdout.trim()).unwrap_or(json!(null));
            Ok(if condition["status"] == "True" {
                Poll::Ready(())
            } else {
                Poll::pending(format!("{} {}", out.stdout.trim(), out.stderr.trim()))
            })
        },
    )
    .await
}

/// An `external.metrics.k8s.io/v1beta1` server for tests: serves discovery and each metric's
/// current value (set with [`ExternalMetricsServer::set`]) over HTTPS with a self-signed
/// certificate on 127.0.0.1. Stops when dropped.
#[derive(Debug)]
pub struct ExternalMetricsServer {
    addr: SocketAddr,
    state: Arc<MetricsState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct MetricsState {
    values: Mutex<BTreeMap<String, String>>,
    requests: AtomicU64,
}

impl ExternalMetricsServer {
    /// Starts serving on a free loopback port (in the current tokio runtime).
    pub async fn start() -> Result<Self> {
        let (cert_pem, key_pem) = crate::pki::self_signed_localhost()?;
        let acceptor = tls_acceptor(&cert_pem, &key_pem)?;
        let tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the metrics server")?;
        let addr = tcp
            .local_addr()
            .context("reading the metrics server's address")?;
        let state = Arc::new(MetricsState::default());
        let base = format!("/apis/{EXTERNAL_METRICS_GROUP}/{EXTERNAL_METRICS_VERSION}");
        let app = Router::new()
            .route(&base, get(discovery))
            .route(
                &format!("{base}/namespaces/{{namespace}}/{{metric}}"),
                get(metric_value),
            )
            .fallback(not_found)
            .with_state(state.clone());
        let listener = TlsListener { tcp, acceptor };
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!("external metrics test server stopped: {err}");
            }
        });
        Ok(ExternalMetricsServer { addr, state, task })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sets a metric's value, as a Kubernetes quantity ("30", "1500m").
    pub fn set(&self, metric: &str, value: &str) {
        self.state
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(metric.to_string(), value.to_string());
    }

    /// How many metric values it has served (discovery excluded).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for ExternalMetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn discovery() -> Json<serde_json::Value> {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{EXTERNAL_METRICS_GROUP}/{EXTERNAL_METRICS_VERSION}"),
        "resources": [{
            "name": "*",
            "singularName": "",
            "namespaced": true,
            "kind": "ExternalMetricValueList",
            "verbs": ["get"],
        }],
    }))
}

async fn metric_value(
    State(state): State<Arc<MetricsState>>,
    Path((namespace, metric)): Path<(String, String)>,
) -> Response {
    let value = state
        .values
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&metric)
        .cloned();
    let Some(value) = value else {
        return status(
            StatusCode::NOT_FOUND,
            &format!("no metric {metric} in {namespace}"),
        );
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Json(json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": format!("{EXTERNAL_METRICS_GROUP}/{EXTERNAL_METRICS_VERSION}"),
        "metadata": {},
        "items": [{
            "metricName": metric,
            "metricLabels": {},
            "timestamp": rfc3339(now),
            "value": value,
        }],
    }))
    .into_response()
}

async fn not_found() -> Response {
    status(StatusCode::NOT_FOUND, "not found")
}

fn status(code: StatusCode, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NotFound",
        "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// Seconds since the epoch as RFC 3339 UTC (no date crate needed for one timestamp).
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the test server's certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("parsing the test server's key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS server configuration")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TCP listener that completes a TLS handshake before handing a connection to axum.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(err)) => tracing::debug!("TLS handshake from {addr} failed: {err}"),
                Err(_) => tracing::debug!("TLS handshake from {addr} timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_784_743_658), "2026-07-22T18:07:38Z");
    }
}
