//! The harness that stands in for kubelet and for clients of one InferenceService's pods, for
//! tests that need its sidecars really serving (autoscaling, the chart's autoscaling):
//!
//! - [`run_pods`]: kwok's pods run no containers, so one real `lexserve-sidecar` is started per
//!   live pod of the service, from the config the operator wrote into its ConfigMap, and stopped
//!   when the pod goes; the file of Prometheus targets is rewritten with what Kubernetes pod
//!   discovery would report for them ([`discovered_target`]).
//! - [`run_load`]: closed-loop clients over the serving sidecars, as the Service would spread
//!   them.
//! - [`scrape_job`]: the documented scrape config, with file discovery in place of Kubernetes
//!   discovery (Debian's Prometheus is built without it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::sidecar::{SidecarProcess, start_for_pod};
use crate::{LocalCluster, repo_root};

/// The sidecars standing in for the pods, and the addresses the load generator uses.
#[derive(Default)]
pub struct Pods {
    pub sidecars: Mutex<BTreeMap<String, SidecarProcess>>,
    pub serving: Mutex<Vec<String>>,
}

/// Starts a sidecar for every new pod of InferenceService `name` (its config from ConfigMap
/// `config_map`) and stops those of deleted pods, until `stop`.
pub async fn run_pods(
    cluster: &LocalCluster,
    ns: String,
    name: String,
    config_map: String,
    targets_file: std::path::PathBuf,
    pods_state: Arc<Pods>,
    stop: Arc<AtomicBool>,
) {
    let client = cluster.client().expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let dir = cluster.log_dir().join(format!("pods-{ns}-{name}"));
    std::fs::create_dir_all(&dir).expect("sidecar dir");
    let selector = format!("lexserve.io/inference-service={name}");
    while !stop.load(Ordering::Relaxed) {
        let listed = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(e) => {
                eprintln!("listing pods: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let alive: Vec<String> = listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        // Deleted pods: their sidecar stops, and the load generator stops using it.
        let gone: Vec<String> = pods_state
            .sidecars
            .lock()
            .unwrap()
            .keys()
            .filter(|name| !alive.contains(name))
            .cloned()
            .collect();
        for name in gone {
            let sidecar = pods_state.sidecars.lock().unwrap().remove(&name);
            if let Some(mut sidecar) = sidecar {
                pods_state
                    .serving
                    .lock()
                    .unwrap()
                    .retain(|url| *url != sidecar.url());
                sidecar.stop();
            }
        }
        for name in alive {
            if pods_state.sidecars.lock().unwrap().contains_key(&name) {
                continue;
            }
            let sidecar = start_for_pod(&config_maps, &config_map, &name, &dir)
                .await
                .expect("the pod's sidecar serves");
            pods_state.serving.lock().unwrap().push(sidecar.url());
            pods_state.sidecars.lock().unwrap().insert(name, sidecar);
        }
        // What pod discovery would report now: the live pods that have a sidecar.
        let groups: Vec<serde_json::Value> = {
            let sidecars = pods_state.sidecars.lock().unwrap();
            listed
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| {
                    sidecars
                        .get(&p.name_any())
                        .map(|s| discovered_target(p, &s.address()))
                })
                .flatten()
                .collect()
        };
        let tmp = targets_file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&groups).expect("JSON"))
            .expect("targets");
        std::fs::rename(&tmp, &targets_file).expect("targets file");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `clients` closed-loop clients embedding `text` on the serving sidecars, round robin, while
/// `on` is set, until `stop`; `done` counts the answered requests.
pub fn run_load(
    pods: Arc<Pods>,
    clients: usize,
    text: &str,
    on: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..clients {
        let (pods, on, stop, done, next, text) = (
            pods.clone(),
            on.clone(),
            stop.clone(),
            done.clone(),
            next.clone(),
            text.to_string(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            while !stop.load(Ordering::Relaxed) {
                if !on.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let target = {
                    let serving = pods.serving.lock().unwrap();
                    (!serving.is_empty()).then(|| {
                        serving[next.fetch_add(1, Ordering::Relaxed) % serving.len()].clone()
                    })
                };
                let Some(base) = target else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let response = http
                    .post(format!("{base}/embed"))
                    .json(&json!({"texts": [text]}))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    // A sidecar that is stopping or full: try again, as a client would.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
    }
}

/// The documented scrape config with one substitution: Debian's Prometheus is built without
/// Kubernetes service discovery, so the targets come from a file that this harness writes with
/// the `__meta_kubernetes_*` labels that discovery would attach to each pod (from the real pod
/// objects), and the sidecar's address in place of the kwok pod's. The documented relabel
/// rules then run, unchanged, in a real Prometheus.
pub fn scrape_job(targets_file: &std::path::Path) -> serde_json::Value {
    let path = repo_root().join("deploy/prometheus/scrape-config.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/prometheus/scrape-config.yaml");
    let mut job: serde_json::Value = serde_yaml::from_str(&text).expect("scrape config YAML");
    assert!(
        job.get("kubernetes_sd_configs").is_some(),
        "the documented config discovers pods through Kubernetes"
    );
    let object = job.as_object_mut().expect("a scrape job");
    object.remove("kubernetes_sd_configs");
    object.insert("scrape_interval".into(), json!("1s"));
    object.insert(
        "file_sd_configs".into(),
        json!([{ "files": [targets_file.display().to_string()], "refresh_interval": "1s" }]),
    );
    job
}

/// Prometheus' label-name sanitizing for discovered labels and annotations.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The target group Kubernetes pod discovery would produce for one container port of `pod`,
/// with `address` (the sidecar's) as `__address__`.
pub fn discovered_target(pod: &Pod, address: &str) -> Vec<serde_json::Value> {
    let mut groups = Vec::new();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    for container in containers {
        for port in container.ports.unwrap_or_default() {
            let mut labels = BTreeMap::new();
            labels.insert(
                "__meta_kubernetes_namespace".to_string(),
                pod.namespace().unwrap_or_default(),
            );
            labels.insert("__meta_kubernetes_pod_name".to_string(), pod.name_any());
            labels.insert(
                "__meta_kubernetes_pod_container_name".to_string(),
                container.name.clone(),
            );
            labels.insert(
                "__meta_kubernetes_pod_container_port_name".to_string(),
                port.name.clone().unwrap_or_default(),
            );
            labels.insert(
                "__meta_kubernetes_pod_container_port_number".to_string(),
                port.container_port.to_string(),
            );
            for (k, v) in pod.labels() {
                labels.insert(
                    format!("__meta_kubernetes_pod_label_{}", sanitize(k)),
                    v.clone(),
                );
            }
            for (k, v) in pod.annotations() {
                labels.insert(
                    format!("__meta_kubernetes_pod_annotation_{}", sanitize(k)),
                    v.clone(),
                );
            }
            groups.push(json!({ "targets": [address], "labels": labels }));
        }
    }
    groups
}
