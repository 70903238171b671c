//! A rolling update loses no request (issue 13, item 11).
//!
//! kube-controller-manager's Deployment controller replaces the pods of an InferenceService while
//! clients send requests through the Service's endpoints, as kube-proxy routes them: this test
//! plays kubelet and kube-proxy for kwok's pods, with real sidecar processes.
//!
//! - kubelet: each pod carries [`TEST_KUBELET_LABEL`], so kwok leaves its status to the test. A
//!   real sidecar starts from the config the operator wrote; the pod turns Running, with an IP,
//!   and Ready when the sidecar's `/ready` answers 200 (the readiness probe). When the pod is
//!   deleted, the sidecar gets SIGTERM and has the pod's grace period to exit.
//! - kube-proxy: every [`PROXY_SYNC`] (kube-proxy's default minimum sync period) it reads the
//!   Service's EndpointSlices and routes to the ready endpoints. Between a pod's deletion and the
//!   next sync, clients are still sent to it, as in a real cluster where the removal takes a while
//!   to reach every node, ingress and mesh.
//!
//! A sidecar that stopped taking work at SIGTERM would answer those requests 503; with the
//! shutdown delay it answers them, then drains.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lexserve_contract::duration::parse_duration;
use lexserve_contract::names::drain::termination_grace_seconds;
use lexserve_e2e::LocalCluster;
use lexserve_e2e::kwok::TEST_KUBELET_LABEL;
use lexserve_e2e::sidecar::{SidecarProcess, minilm_int8_uris, start_for_pod};
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::resources::config_map::config_map_name;
use lexserve_operator::resources::service::service_name;
use serde_json::json;

const NAME: &str = "rollout";
const REPLICAS: i32 = 2;
/// kube-proxy's default `--iptables-min-sync-period`.
const PROXY_SYNC: Duration = Duration::from_secs(1);
/// Longer than a proxy sync, so that every client has been rerouted before the drain begins.
const SHUTDOWN_DELAY: &str = "3s";
const CLIENTS: usize = 4;
const TEXT: &str = "A rolling update replaces every replica while clients keep sending requests.";

/// A sidecar that got SIGTERM, and when.
struct Terminated {
    url: String,
    at: Instant,
    exit: Arc<Mutex<Option<Option<std::process::ExitStatus>>>>,
}

/// What the kubelet runs, and what kube-proxy and the clients see.
#[derive(Default)]
struct Node {
    /// Pod name → its running sidecar.
    sidecars: Mutex<BTreeMap<String, SidecarProcess>>,
    /// Pod IP → the sidecar's URL (where a packet to the pod would land).
    by_ip: Mutex<BTreeMap<String, String>>,
    terminated: Mutex<Vec<Terminated>>,
    /// kube-proxy's current routes: the URLs of the ready endpoints.
    routes: Mutex<Vec<String>>,
}

/// Reports a pod Running at `ip` and Ready, as the kubelet does when its readiness probe passes.
async fn mark_ready(pods: &Api<Pod>, name: &str, ip: &str) -> kube::Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "startTime": now,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .map(|_| ())
}

/// The kubelet's loop: sidecars for new pods, SIGTERM for deleted ones.
async fn kubelet(cluster: &LocalCluster, ns: String, node: Arc<Node>, stop: Arc<AtomicBool>) {
    let client = cluster.client().expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client, &ns);
    let dir = cluster.log_dir().join(format!("rolling-update-{ns}"));
    std::fs::create_dir_all(&dir).expect("sidecar dir");
    let selector = format!("lexserve.io/inference-service={NAME}");
    let next_ip = AtomicUsize::new(1);
    while !stop.load(Ordering::Relaxed) {
        let listed = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(e) => {
                eprintln!("listing pods: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let alive: BTreeMap<String, &Pod> = listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| (p.name_any(), p))
            .collect();
        // Deleted pods: SIGTERM, then the grace period to exit (waited for off this loop).
        let gone: Vec<String> = node
            .sidecars
            .lock()
            .unwrap()
            .keys()
            .filter(|name| !alive.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            let Some(mut sidecar) = node.sidecars.lock().unwrap().remove(&name) else {
                continue;
            };
            sidecar.terminate();
            let exit = Arc::new(Mutex::new(None));
            node.terminated.lock().unwrap().push(Terminated {
                url: sidecar.url(),
                at: Instant::now(),
                exit: exit.clone(),
            });
            eprintln!("pod {name} deleted: SIGTERM to {}", sidecar.url());
            let delay = parse_duration(SHUTDOWN_DELAY).expect("a duration");
            let grace = Duration::from_secs(termination_grace_seconds(delay).unsigned_abs());
            tokio::task::spawn_blocking(move || {
                let status = sidecar.wait_exit(grace);
                *exit.lock().unwrap() = Some(status);
                drop(sidecar);
            });
        }
        for (name, pod) in alive {
            if node.sidecars.lock().unwrap().contains_key(&name) {
                continue;
            }
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none()
            {
                continue; // not scheduled yet
            }
            // Each pod its own address, as the node's IPAM would give it.
            let ip = format!("10.244.200.{}", next_ip.fetch_add(1, Ordering::Relaxed));
            let sidecar = start_for_pod(&config_maps, &config_map_name(NAME), &name, &dir)
                .await
                .expect("the pod's sidecar serves");
            node.by_ip.lock().unwrap().insert(ip.clone(), sidecar.url());
            node.sidecars.lock().unwrap().insert(name.clone(), sidecar);
            mark_ready(&pods, &name, &ip)
                .await
                .expect("pod marked Ready");
            eprintln!("pod {name} ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// kube-proxy's loop: the ready endpoints of the Service, every [`PROXY_SYNC`].
async fn kube_proxy(cluster: &LocalCluster, ns: String, node: Arc<Node>, stop: Arc<AtomicBool>) {
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client().expect("client"), &ns);
    let selector = format!("kubernetes.io/service-name={}", service_name(NAME));
    while !stop.load(Ordering::Relaxed) {
        match slices.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => {
                let by_ip = node.by_ip.lock().unwrap().clone();
                let routes: Vec<String> = list
                    .items
                    .iter()
                    .flat_map(|slice| slice.endpoints.iter().flatten())
                    // A nil `ready` means unknown, which consumers treat as ready.
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                    .filter_map(|e| e.addresses.first().and_then(|ip| by_ip.get(ip).cloned()))
                    .collect();
                *node.routes.lock().unwrap() = routes;
            }
            Err(e) => eprintln!("listing EndpointSlices: {e}"),
        }
        tokio::time::sleep(PROXY_SYNC).await;
    }
}

/// What the clients saw.
#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    /// (URL, when) of every answered request.
    answered: Mutex<Vec<(String, Instant)>>,
    failures: Mutex<Vec<String>>,
}

/// Closed-loop clients over kube-proxy's routes, round robin.
fn clients(node: Arc<Node>, outcomes: Arc<Outcomes>, stop: Arc<AtomicBool>) {
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..CLIENTS {
        let (node, outcomes, stop, next) =
            (node.clone(), outcomes.clone(), stop.clone(), next.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            while !stop.load(Ordering::Relaxed) {
                let target = {
                    let routes = node.routes.lock().unwrap();
                    (!routes.is_empty()).then(|| {
                        routes[next.fetch_add(1, Ordering::Relaxed) % routes.len()].clone()
                    })
                };
                let Some(base) = target else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let response = http
                    .post(format!("{base}/embed"))
                    .json(&json!({"texts": [TEXT]}))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        outcomes.ok.fetch_add(1, Ordering::Relaxed);
                        outcomes
                            .answered
                            .lock()
                            .unwrap()
                            .push((base, Instant::now()));
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        outcomes
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("{base}: {status} {body}"));
                    }
                    Err(e) => outcomes
                        .failures
                        .lock()
                        .unwrap()
                        .push(format!("{base}: {e}")),
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_through_the_service_endpoints_fails_no_request() {
    let cluster = cluster_with_operator("lexserve-operator-rollout").await;
    let scene = scene(cluster, "rollout").await;
    let ns = scene.ns.name().to_string();
    let (model, tokenizer) = minilm_int8_uris().expect("models installed");
    scene
        .api
        .create(
            &Default::default(),
            &isvc(
                NAME,
                json!({
                    "model": {"uri": model, "tokenizer": tokenizer, "format": "onnx", "task": "embed"},
                    "runtime": {"quantize": "int8", "threads": 1, "shutdownDelay": SHUTDOWN_DELAY},
                    "scaling": {"provider": "none", "minReplicas": REPLICAS},
                    "podTemplate": {"labels": {TEST_KUBELET_LABEL: "rolling-update"}},
                }),
            ),
        )
        .await
        .expect("create the InferenceService");

    let node = Arc::new(Node::default());
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Outcomes::default());
    let kubelet_task = tokio::spawn({
        let (ns, node, stop) = (ns.clone(), node.clone(), stop.clone());
        async move { kubelet(cluster, ns, node, stop).await }
    });
    let proxy_task = tokio::spawn({
        let (ns, node, stop) = (ns.clone(), node.clone(), stop.clone());
        async move { kube_proxy(cluster, ns, node, stop).await }
    });

    wait::until(
        "both replicas routed",
        Duration::from_secs(180),
        Duration::from_millis(100),
        || {
            let routed = node.routes.lock().unwrap().len();
            async move {
                if routed == REPLICAS as usize {
                    Ok(Poll::Ready(()))
                } else {
                    Ok(Poll::Pending(format!("{routed} routed")))
                }
            }
        },
    )
    .await
    .expect("the first replicas serve");
    clients(node.clone(), outcomes.clone(), stop.clone());
    wait::until(
        "requests answered",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let ok = outcomes.ok.load(Ordering::Relaxed);
            async move {
                if ok >= 20 {
                    Ok(Poll::Ready(()))
                } else {
                    Ok(Poll::Pending(format!("{ok} answered")))
                }
            }
        },
    )
    .await
    .expect("clients are served");

    // A change to the pod template: the Deployment controller rolls every replica.
    scene
        .api
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podTemplate": {"annotations": {
                "lexserve.io/e2e-rollout": "2",
            }}}})),
        )
        .await
        .expect("patch the pod template");
    let deployments: Api<Deployment> = Api::namespaced(scene.client.clone(), &ns);
    wait::until("the rollout completes", Duration::from_secs(240), Duration::from_millis(200), || {
        let deployments = deployments.clone();
        let node = node.clone();
        async move {
            let Ok(d) = deployments.get(NAME).await else {
                return Ok(Poll::Pending("no Deployment".into()));
            };
            let status = d.status.unwrap_or_default();
            let rolled = d.metadata.generation == status.observed_generation
                && status.updated_replicas == Some(REPLICAS)
                && status.replicas == Some(REPLICAS)
                && status.ready_replicas == Some(REPLICAS);
            let terminated = node.terminated.lock().unwrap();
            let exited = terminated
                .iter()
                .all(|t| t.exit.lock().unwrap().is_some());
            if rolled && terminated.len() == REPLICAS as usize && exited {
                Ok(Poll::Ready(()))
            } else {
                Ok(Poll::Pending(format!(
                    "updated {:?}, replicas {:?}, ready {:?}, terminated {} (all exited: {exited})",
                    status.updated_replicas,
                    status.replicas,
                    status.ready_replicas,
                    terminated.len()
                )))
            }
        }
    })
    .await
    .expect("the rollout replaces both replicas");
    // A little traffic on the new replicas only, then stop.
    tokio::time::sleep(2 * PROXY_SYNC).await;
    stop.store(true, Ordering::Relaxed);
    let _ = kubelet_task.await;
    let _ = proxy_task.await;

    let failures = outcomes.failures.lock().unwrap().clone();
    let answered = outcomes.answered.lock().unwrap().clone();
    let terminated = node.terminated.lock().unwrap();
    // Requests the old replicas answered after their SIGTERM: the window this test is about.
    let after_sigterm = terminated
        .iter()
        .map(|t| {
            answered
                .iter()
                .filter(|(url, at)| *url == t.url && *at > t.at)
                .count()
        })
        .sum::<usize>();
    eprintln!(
        "answered {}, failed {}, answered by terminating replicas after SIGTERM {after_sigterm}",
        answered.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} requests failed during the rollout: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        after_sigterm > 0,
        "no request reached a terminating replica: the test did not exercise the window"
    );
    for t in terminated.iter() {
        let exit = (*t.exit.lock().unwrap()).flatten();
        assert!(
            exit.is_some_and(|s| s.success()),
            "{} did not exit cleanly within the grace period: {exit:?}",
            t.url
        );
    }
}
