//! `lexserve-e2e pods`: what a node, kube-proxy and the cluster's Prometheus would do for one
//! namespace of the local cluster, whose kwok pods run no containers. For every model-server pod
//! the operator's Deployments create, the pod's containers run as kubelet would run them (the
//! model fetch, then the server, with the pod's own arguments and environment; stopped when the
//! pod goes); each
//! InferenceService gets a loopback address that spreads connections over its serving sidecars
//! (its Service, as kube-proxy would make it reachable); and a real Prometheus scrapes the
//! sidecars with the documented scrape config (file discovery standing in for Kubernetes
//! discovery) and, when given, the operator.
//!
//! What it runs is written to a state file (JSON: `prometheus`, `services` name -> URL), which
//! the demo reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::kubelet::PodHost;
use crate::pod_harness::{discovered_target, scrape_job};
use crate::prometheus::Prometheus;
use crate::sidecar::SidecarProcess;

const POD_LABEL: &str = lexserve_contract::names::label::INFERENCE_SERVICE_POD_LABEL;

/// What `pods` serves, and where it writes down what it runs.
pub struct Options {
    pub namespace: String,
    /// Where the sidecars' configs and logs go.
    pub dir: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// The operator's `/metrics` address, scraped as job `lexserve-operator`.
    pub operator_metrics: Option<String>,
}

/// The serving sidecars of one InferenceService, by pod.
type Serving = Arc<Mutex<BTreeMap<String, String>>>;

/// Runs until `shutdown` resolves; stops every sidecar it started.
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), &options.namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client, &options.namespace);
    let mut sidecars: BTreeMap<String, SidecarProcess> = BTreeMap::new();
    let mut services: BTreeMap<String, (String, Serving)> = BTreeMap::new();
    let starting: Arc<Mutex<BTreeMap<String, Option<SidecarProcess>>>> = Arc::default();
    let write_state = |services: &BTreeMap<String, (String, Serving)>| -> Result<()> {
        let state = json!({
            "prometheus": prometheus.url(),
            "services": services.iter().map(|(k, (url, _))| (k.clone(), url.clone())).collect::<BTreeMap<_, _>>(),
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
        let alive: BTreeMap<String, String> = listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| Some((p.name_any(), p.labels().get(POD_LABEL)?.clone())))
            .collect();
        // Sidecars whose start finished join; pods that went take their sidecar with them.
        {
            let mut starting = starting.lock().unwrap();
            let ready: Vec<String> = starting
                .iter()
                .filter(|(_, s)| s.is_some())
                .map(|(pod, _)| pod.clone())
                .collect();
            for pod in ready {
                if let Some(Some(sidecar)) = starting.remove(&pod) {
                    sidecars.insert(pod, sidecar);
                }
            }
        }
        sidecars.retain(|pod, sidecar| {
            let keep = alive.contains_key(pod);
            if !keep {
                sidecar.stop();
            }
            keep
        });
        for pod in &listed {
            let name = pod.name_any();
            if !alive.contains_key(&name)
                || sidecars.contains_key(&name)
                || starting.lock().unwrap().contains_key(&name)
            {
                continue;
            }
            starting.lock().unwrap().insert(name.clone(), None);
            let (starting, config_maps, dir, object, pod) = (
                starting.clone(),
                config_maps.clone(),
                options.dir.join(&name),
                pod.clone(),
                name,
            );
            tokio::spawn(async move {
                match start_pod(&config_maps, &object, &dir).await {
                    Ok(sidecar) => {
                        starting.lock().unwrap().insert(pod, Some(sidecar));
                    }
                    Err(e) => {
                        eprintln!("pods: the sidecar of {pod} did not become ready: {e:#}");
                        // Tried again on the next round.
                        starting.lock().unwrap().remove(&pod);
                    }
                }
            });
        }
        // Each InferenceService's address, over its serving sidecars.
        for isvc in alive.values() {
            if !services.contains_key(isvc) {
                let serving: Serving = Arc::default();
                let url = serve_service(serving.clone()).await?;
                services.insert(isvc.clone(), (url, serving));
                write_state(&services)?;
            }
        }
        for (isvc, (_, serving)) in &services {
            *serving.lock().unwrap() = sidecars
                .iter()
                .filter(|(pod, _)| alive.get(*pod) == Some(isvc))
                .map(|(pod, sidecar)| (pod.clone(), sidecar.address()))
                .collect();
        }
        let groups: Vec<serde_json::Value> = listed
            .iter()
            .filter_map(|p| {
                sidecars
                    .get(&p.name_any())
                    .map(|s| discovered_target(p, &s.address()))
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
    for (_, mut sidecar) in sidecars {
        sidecar.stop();
    }
    let left = std::mem::take(&mut *starting.lock().unwrap());
    for mut sidecar in left.into_values().flatten() {
        sidecar.stop();
    }
    Ok(())
}

/// Runs `pod` as kubelet would: its volumes as directories (ConfigMaps projected), its init
/// containers (the model fetch) in order, then its serving container with the pod's own
/// arguments and environment, until it is ready.
async fn start_pod(
    config_maps: &Api<ConfigMap>,
    pod: &Pod,
    dir: &std::path::Path,
) -> Result<SidecarProcess> {
    let host = PodHost::prepare(config_maps, pod, dir).await?;
    for (container, ended) in host.run_init_containers().await? {
        anyhow::ensure!(
            ended.exit_code == 0,
            "init container {container} exited {}: {}",
            ended.exit_code,
            ended.message
        );
    }
    let mut server = host.start_server()?;
    server.wait_ready(Duration::from_secs(180)).await?;
    Ok(server)
}

/// A loopback listener whose connections go, round robin, to one of `serving`'s sidecars (a
/// connection refused while none serves). Returns its URL.
async fn serve_service(serving: Serving) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let backends: Vec<String> = serving.lock().unwrap().values().cloned().collect();
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
    Ok(url)
}
