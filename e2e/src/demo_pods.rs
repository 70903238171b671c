//! `lexserve-e2e pods`: what the nodes, kube-proxy, cluster DNS and the cluster's Prometheus
//! would do for one namespace of the local cluster, whose kwok pods run no containers.
//!
//! - Every pod the operator's Deployments create (model servers, an experiment's router, a
//!   shadow's candidate) runs its containers as kubelet would: the model fetch, then the
//!   server, with the pod's own arguments and environment, stopped when the pod goes. Its
//!   status says what happened (kwok leaves the pods of [`crate::kwok::PODS_NAMESPACE`]
//!   alone): Ready once the server answers its readiness endpoint, as the readiness probe
//!   would. Its ConfigMap volumes follow their ConfigMaps (kubelet's sync), so that a shadow's
//!   mirror target or a router's buckets reach the running process.
//! - Every Service of the namespace gets a loopback address that spreads connections over the
//!   serving processes of the pods its selector picks now (kube-proxy): a Service the
//!   Experiment controller points at its router follows it there.
//! - The servers reach Services by their cluster names (`http://NAME.NS.svc.cluster.local:80`,
//!   what the operator writes into `router.yaml` and `mirror.yaml`) through one HTTP proxy that
//!   routes by `Host`, given to them as `--resolve '*.NS.svc.cluster.local:80=PROXY'`.
//! - A real Prometheus scrapes the servers with the documented scrape config (file discovery
//!   standing in for Kubernetes discovery) and, when given, the operator.
//!
//! What it runs is written to a state file (JSON: `prometheus`, `services` name -> URL), which
//! the demo reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use lexserve_contract::names::flag;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::kubelet::PodHost;
use crate::pod_harness::{discovered_target, scrape_job};
use crate::prometheus::Prometheus;
use crate::sidecar::SidecarProcess;

const POD_LABEL: &str = lexserve_contract::names::label::INFERENCE_SERVICE_POD_LABEL;
/// The port lexserve's Services listen on, the one the URLs the operator writes name.
const SERVICE_PORT: u16 = 80;
/// Largest request body the cluster proxy forwards.
const MAX_PROXIED_BODY: usize = 16 << 20;

/// What `pods` serves, and where it writes down what it runs.
pub struct Options {
    pub namespace: String,
    /// Where the servers' volumes and logs go.
    pub dir: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// The operator's `/metrics` address, scraped as job `lexserve-operator`.
    pub operator_metrics: Option<String>,
}

/// A pod whose server answers: its volumes (kept in sync) and its process.
struct Running {
    host: PodHost,
    server: SidecarProcess,
}

/// The addresses one Service spreads its connections over.
type Endpoints = Arc<Mutex<Vec<String>>>;

/// A Service's loopback listener.
struct ServiceAddress {
    url: String,
    endpoints: Endpoints,
    task: JoinHandle<()>,
}

/// Pods whose start is under way (`None`) or done (`Some`, to be joined by the loop).
type Starting = Arc<Mutex<BTreeMap<String, Option<Running>>>>;

/// Runs until `shutdown` resolves; stops every server it started.
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let targets = options.dir.join("targets.json");
    std::fs::write(&targets, "[]")?;
    let mut jobs = vec![scrape_job(&targets)];
    if let Some(operator) = &options.operator_metrics {
        jobs.push(json!({
            "job_name": "lexserve-operator",
            "scrape_interval": "2s",
            "static_configs": [{"targets": [operator]}],
        }));
    }
    let prometheus = Prometheus::start_with_jobs(jobs).await?;
    let ns = options.namespace.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let services_api: Api<Service> = Api::namespaced(client, &ns);

    // Service name -> its loopback address, for the proxy that stands in for cluster DNS.
    let by_name: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let proxy = cluster_proxy(&ns, by_name.clone()).await?;
    let resolve = vec![
        flag::arg(flag::RESOLVE),
        format!(
            "*.{ns}.svc.cluster.local:{SERVICE_PORT}={proxy},*.{ns}.svc:{SERVICE_PORT}={proxy}"
        ),
    ];

    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut services: BTreeMap<String, ServiceAddress> = BTreeMap::new();
    let starting: Starting = Arc::default();
    let write_state = |services: &BTreeMap<String, ServiceAddress>| -> Result<()> {
        let state = json!({
            "prometheus": prometheus.url(),
            "services": services.iter().map(|(k, s)| (k.clone(), s.url.clone())).collect::<BTreeMap<_, _>>(),
        });
        let tmp = options.state.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&state)?)?;
        std::fs::rename(&tmp, &options.state)?;
        Ok(())
    };
    write_state(&services)?;
    tokio::pin!(shutdown);
    loop {
        let listed = match pods.list(&ListParams::default().labels(POD_LABEL)).await {
            Ok(list) => list.items,
            Err(e) => {
                eprintln!("pods: listing pods: {e}");
                Vec::new()
            }
        };
        let alive: BTreeMap<String, &Pod> = listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| (p.name_any(), p))
            .collect();
        // Servers whose start finished join; pods that went take their server with them.
        {
            let mut starting = starting.lock().unwrap();
            let done: Vec<String> = starting
                .iter()
                .filter(|(_, s)| s.is_some())
                .map(|(pod, _)| pod.clone())
                .collect();
            for pod in done {
                if let Some(Some(started)) = starting.remove(&pod) {
                    running.insert(pod, started);
                }
            }
        }
        running.retain(|pod, r| {
            let keep = alive.contains_key(pod);
            if !keep {
                r.server.stop();
            }
            keep
        });
        for (name, pod) in &alive {
            if running.contains_key(name) || starting.lock().unwrap().contains_key(name) {
                continue;
            }
            starting.lock().unwrap().insert(name.clone(), None);
            let (starting, config_maps, pods, dir, object, pod, resolve) = (
                starting.clone(),
                config_maps.clone(),
                pods.clone(),
                options.dir.join(name),
                (*pod).clone(),
                name.clone(),
                resolve.clone(),
            );
            tokio::spawn(async move {
                match start_pod(&config_maps, &pods, &object, &dir, &resolve).await {
                    Ok(started) => {
                        starting.lock().unwrap().insert(pod, Some(started));
                    }
                    Err(e) => {
                        eprintln!("pods: the server of {pod} did not become ready: {e:#}");
                        // Tried again on the next round.
                        starting.lock().unwrap().remove(&pod);
                    }
                }
            });
        }
        // kubelet's volume sync: one list of the namespace's ConfigMaps for every pod.
        if !running.is_empty() {
            match config_maps.list(&ListParams::default()).await {
                Ok(list) => {
                    let current: BTreeMap<String, ConfigMap> =
                        list.items.into_iter().map(|c| (c.name_any(), c)).collect();
                    for (pod, r) in &running {
                        if let Err(e) = r.host.sync_config_maps(&current) {
                            eprintln!("pods: syncing the volumes of {pod}: {e:#}");
                        }
                    }
                }
                Err(e) => eprintln!("pods: listing ConfigMaps: {e}"),
            }
        }
        // kube-proxy: every Service over the serving pods its selector picks now.
        match services_api.list(&ListParams::default()).await {
            Ok(list) => {
                let selecting: BTreeMap<String, BTreeMap<String, String>> = list
                    .items
                    .iter()
                    .filter_map(|s| {
                        let selector = s.spec.as_ref()?.selector.clone()?;
                        (!selector.is_empty()).then(|| (s.name_any(), selector))
                    })
                    .collect();
                let before = services.len();
                services.retain(|name, address| {
                    let keep = selecting.contains_key(name);
                    if !keep {
                        address.task.abort();
                    }
                    keep
                });
                let mut changed = before != services.len();
                for (name, selector) in &selecting {
                    if !services.contains_key(name) {
                        services.insert(name.clone(), serve_service().await?);
                        changed = true;
                    }
                    let picked: Vec<String> = running
                        .iter()
                        .filter(|(pod, _)| {
                            alive.get(*pod).is_some_and(|p| {
                                let labels = p.labels();
                                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                            })
                        })
                        .map(|(_, r)| r.server.address())
                        .collect();
                    *services[name].endpoints.lock().unwrap() = picked;
                }
                if changed {
                    *by_name.lock().unwrap() = services
                        .iter()
                        .map(|(k, s)| (k.clone(), s.url.trim_start_matches("http://").to_string()))
                        .collect();
                    write_state(&services)?;
                }
            }
            Err(e) => eprintln!("pods: listing Services: {e}"),
        }
        let groups: Vec<serde_json::Value> = listed
            .iter()
            .filter_map(|p| {
                running
                    .get(&p.name_any())
                    .map(|r| discovered_target(p, &r.server.address()))
            })
            .flatten()
            .collect();
        let tmp = targets.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&groups)?)?;
        std::fs::rename(&tmp, &targets)?;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    for (_, mut r) in running {
        r.server.stop();
    }
    let left = std::mem::take(&mut *starting.lock().unwrap());
    for mut r in left.into_values().flatten() {
        r.server.stop();
    }
    Ok(())
}

/// Runs `pod` as kubelet would: its volumes as directories (ConfigMaps projected), its init
/// containers (the model fetch) in order, their outcomes reported in the pod's status, then its
/// serving container with the pod's own arguments and environment plus `extra`; the pod is
/// reported Running and Ready once the server answers its readiness endpoint.
async fn start_pod(
    config_maps: &Api<ConfigMap>,
    pods: &Api<Pod>,
    pod: &Pod,
    dir: &Path,
    extra: &[String],
) -> Result<Running> {
    let host = PodHost::prepare(config_maps, pod, dir).await?;
    let outcomes = host.run_init_containers().await?;
    if !outcomes.is_empty() {
        host.report_init(pods, &outcomes).await?;
    }
    for (container, ended) in &outcomes {
        anyhow::ensure!(
            ended.exit_code == 0,
            "init container {container} exited {}: {}",
            ended.exit_code,
            ended.message
        );
    }
    let mut server = host.start_server_with(extra)?;
    host.report_ready_when_ready(pods, &mut server, Duration::from_secs(180))
        .await?;
    Ok(Running { host, server })
}

/// A loopback listener whose connections go, round robin, to one of its endpoints (a
/// connection refused while there are none), as kube-proxy spreads a Service's connections.
async fn serve_service() -> Result<ServiceAddress> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let endpoints: Endpoints = Arc::default();
    let serving = endpoints.clone();
    let next = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let backends = serving.lock().unwrap().clone();
            if backends.is_empty() {
                continue;
            }
            let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()].clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Ok(ServiceAddress {
        url,
        endpoints,
        task,
    })
}

/// Cluster DNS and kube-proxy for the servers: an HTTP proxy on loopback that sends a request
/// for `NAME.NS.svc[.cluster.local]` to Service NAME's loopback address, the answer streamed
/// back as it comes (token streams included). Returns its `HOST:PORT`.
async fn cluster_proxy(
    namespace: &str,
    services: Arc<Mutex<BTreeMap<String, String>>>,
) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let namespace = namespace.to_string();
    let app = axum::Router::new().fallback(move |request: Request| {
        let (http, services, namespace) = (http.clone(), services.clone(), namespace.clone());
        async move { forward(&http, &services, &namespace, request).await }
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("pods: the cluster proxy stopped: {e}");
        }
    });
    Ok(address)
}

/// The Service a `Host` header names in `namespace`: `NAME.NS.svc.cluster.local[:PORT]` or
/// `NAME.NS.svc[:PORT]`.
fn service_of<'a>(host: &'a str, namespace: &str) -> Option<&'a str> {
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    [".svc.cluster.local", ".svc"]
        .iter()
        .find_map(|domain| name.strip_suffix(&format!(".{namespace}{domain}")))
        .filter(|service| !service.is_empty() && !service.contains('.'))
}

/// Headers that belong to one connection, not to the request or answer passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::HOST,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

async fn forward(
    http: &reqwest::Client,
    services: &Mutex<BTreeMap<String, String>>,
    namespace: &str,
    request: Request,
) -> Response {
    let failed = |status: StatusCode, error: String| {
        (status, axum::Json(json!({ "error": error }))).into_response()
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let Some(service) = service_of(&host, namespace) else {
        return failed(
            StatusCode::BAD_GATEWAY,
            format!("host {host:?} names no Service of namespace {namespace}"),
        );
    };
    let Some(address) = services.lock().unwrap().get(service).cloned() else {
        return failed(
            StatusCode::BAD_GATEWAY,
            format!("no Service {service} in namespace {namespace}"),
        );
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_PROXIED_BODY).await {
        Ok(body) => body,
        Err(e) => return failed(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = http
        .request(parts.method, format!("http://{address}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    match outgoing.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if !hop_by_hop(name) {
                    response = response.header(name, value);
                }
            }
            response
                .body(Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|e| failed(StatusCode::BAD_GATEWAY, e.to_string()))
        }
        Err(e) => failed(StatusCode::BAD_GATEWAY, format!("Service {service}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::service_of;

    #[test]
    fn a_host_names_a_service_of_the_namespace_by_its_cluster_names() {
        assert_eq!(service_of("a.ns.svc.cluster.local:80", "ns"), Some("a"));
        assert_eq!(service_of("a.ns.svc.cluster.local", "ns"), Some("a"));
        assert_eq!(service_of("a.ns.svc:80", "ns"), Some("a"));
        assert_eq!(service_of("a.other.svc:80", "ns"), None);
        assert_eq!(service_of("a.b.ns.svc:80", "ns"), None);
        assert_eq!(service_of(".ns.svc:80", "ns"), None);
        assert_eq!(service_of("127.0.0.1:80", "ns"), None);
    }
}
