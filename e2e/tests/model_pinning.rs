//! Remote models are pinned to what the first fetch got (issue 13, item 2).
//!
//! A Hub repository whose `main` moves between two pods' starts: the operator records the commit
//! the first pod's fetch resolved (`status.model.revision`) and passes it to every later pod's
//! fetch, so a replica started after the push serves the first replica's bytes. Changing
//! `spec.model.uri` drops the pin. `status.model.digest` only ever shows what a fetch verified,
//! never the spec's `sha256`.
//!
//! This test plays the kubelet for the fetch init container: for each pod (handed to the test with
//! [`TEST_KUBELET_LABEL`], which kwok leaves alone) it runs the real `lexserve-sidecar fetch` with the arguments the operator
//! put in the pod against a Hub stand-in, and writes its termination message into the pod's
//! `initContainerStatuses` as Kubernetes does.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lexserve_e2e::LocalCluster;
use lexserve_e2e::kwok::TEST_KUBELET_LABEL;
use lexserve_e2e::operator::workspace_bin;
use lexserve_e2e::wait::{self, Poll};
use serde_json::json;

const NAME: &str = "pinned";
const REPO: &str = "lexserve/moving";
/// The commits `main` points at, in turn.
const COMMITS: [&str; 2] = [
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
];

/// The Hub stand-in: `lexserve/moving`, whose `main` is `COMMITS[head]`.
#[derive(Default)]
struct Hub {
    head: AtomicUsize,
}

/// The repository's files at commit `index`: the same names, other weights.
fn files(index: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        ("model.safetensors", vec![index as u8 + 1; 4096]),
        ("tokenizer.json", br#"{"version":"1.0"}"#.to_vec()),
    ]
}

impl Hub {
    fn commit_index(&self, revision: &str) -> Option<usize> {
        if revision == "main" {
            Some(self.head.load(Ordering::SeqCst))
        } else {
            COMMITS.iter().position(|c| *c == revision)
        }
    }

    /// Serves the two endpoints `fetch` uses; returns the endpoint.
    async fn serve(self: Arc<Self>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Hub stand-in");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let info = {
            let hub = self.clone();
            move |UrlPath((org, name, revision)): UrlPath<(String, String, String)>| {
                let hub = hub.clone();
                async move {
                    match hub.commit_index(&revision) {
                        Some(index) if format!("{org}/{name}") == REPO => {
                            let siblings: Vec<_> = files(index)
                                .iter()
                                .map(|(name, _)| json!({"rfilename": name}))
                                .collect();
                            Json(json!({"sha": COMMITS[index], "siblings": siblings}))
                                .into_response()
                        }
                        _ => not_found(),
                    }
                }
            }
        };
        let resolve = {
            let hub = self.clone();
            move |UrlPath((_org, _name, revision, file)): UrlPath<(
                String,
                String,
                String,
                String,
            )>| {
                let hub = hub.clone();
                async move {
                    // Files are asked for at a commit, never at a branch.
                    match hub.commit_index(&revision) {
                        Some(index) if COMMITS[index] == revision => files(index)
                            .into_iter()
                            .find(|(n, _)| *n == file)
                            .map_or_else(not_found, |(_, bytes)| bytes.into_response()),
                        _ => not_found(),
                    }
                }
            }
        };
        let app = Router::new()
            .route("/api/models/{org}/{name}/revision/{revision}", get(info))
            .route("/{org}/{name}/resolve/{revision}/{*file}", get(resolve));
        tokio::spawn(async move { axum::serve(listener, app).await });
        endpoint
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))).into_response()
}

/// What the test's kubelet did for each pod: its fetch's termination message.
type Fetches = Arc<Mutex<BTreeMap<String, String>>>;

/// Runs the pod's fetch init container, as the kubelet would, and reports its end in the pod's
/// status.
async fn run_fetch(pods: &Api<Pod>, pod: &Pod, hub: &str, dir: &std::path::Path) -> String {
    let name = pod.name_any();
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "fetch-model"))
        .expect("a fetch-model init container");
    let mut args = init.args.clone().expect("fetch args");
    // The volume is a directory of this test's.
    let dest = dir.join(&name);
    if let Some(i) = args.iter().position(|a| a == "--dest") {
        args[i + 1] = dest.display().to_string();
    }
    let log = dir.join(format!("{name}.termination-log"));
    let output = tokio::process::Command::new(workspace_bin("lexserve-sidecar").expect("binary"))
        .args(&args)
        .env("HF_ENDPOINT", hub)
        .env("LEXSERVE_TERMINATION_LOG", &log)
        .output()
        .await
        .expect("run lexserve-sidecar fetch");
    let message = std::fs::read_to_string(&log).unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let code = output.status.code().unwrap_or(1);
    let status = json!({"status": {"initContainerStatuses": [{
        "name": "fetch-model", "image": init.image, "imageID": "", "ready": false,
        "restartCount": 0,
        "state": {"terminated": {
            "exitCode": code, "message": message, "startedAt": now, "finishedAt": now,
            "reason": if code == 0 { "Completed" } else { "Error" },
        }},
    }]}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .expect("report the fetch in the pod's status");
    eprintln!(
        "pod {name}: fetch {args:?} -> {code}: {message} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    message
}

/// The kubelet's loop: each new pod of the service gets its fetch run once.
async fn kubelet(
    cluster: &LocalCluster,
    ns: String,
    hub: String,
    fetches: Fetches,
    stop: Arc<AtomicBool>,
) {
    let pods: Api<Pod> = Api::namespaced(cluster.client().expect("client"), &ns);
    let dir = cluster.log_dir().join(format!("model-pinning-{ns}"));
    std::fs::create_dir_all(&dir).expect("fetch dir");
    let selector = format!("lexserve.io/inference-service={NAME}");
    while !stop.load(Ordering::Relaxed) {
        let listed = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for pod in listed {
            let name = pod.name_any();
            // Scheduled: the kubelet of its node would start its init containers now.
            let scheduled = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
            if pod.metadata.deletion_timestamp.is_some()
                || !scheduled
                || fetches.lock().unwrap().contains_key(&name)
            {
                continue;
            }
            let message = run_fetch(&pods, &pod, &hub, &dir).await;
            fetches.lock().unwrap().insert(name, message);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `--revision` of the Deployment's fetch, once it is `expected`.
async fn wait_fetch_revision(deployments: &Api<Deployment>, expected: Option<&str>) {
    wait::until(
        "the Deployment's fetch revision",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let d = deployments.get(NAME).await?;
            let args = d
                .spec
                .and_then(|s| s.template.spec)
                .and_then(|s| s.init_containers)
                .and_then(|c| c.into_iter().find(|c| c.name == "fetch-model"))
                .and_then(|c| c.args)
                .unwrap_or_default();
            let revision = args
                .windows(2)
                .find(|w| w[0] == "--revision")
                .map(|w| w[1].clone());
            Ok(if revision.as_deref() == expected {
                Poll::Ready(())
            } else {
                Poll::pending(format!("--revision {revision:?}"))
            })
        },
    )
    .await
    .expect("the Deployment's fetch revision");
}

/// `status.model` once `check` accepts it.
async fn wait_model(
    api: &Api<lexserve_operator::api::InferenceService>,
    what: &str,
    check: impl Fn(&lexserve_operator::api::inference_service::ResolvedModel) -> bool,
) -> lexserve_operator::api::inference_service::ResolvedModel {
    wait::until(
        what,
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            let model = api.get(NAME).await?.status.and_then(|s| s.model);
            Ok(match model {
                Some(model) if check(&model) => Poll::Ready(model),
                other => Poll::pending(format!("{other:?}")),
            })
        },
    )
    .await
    .expect(what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_replicas_fetch_the_commit_the_first_one_resolved() {
    let cluster = cluster_with_operator("lexserve-operator-pinning").await;
    let scene = scene(cluster, "pinning").await;
    let ns = scene.ns.name().to_string();
    let hub = Arc::new(Hub::default());
    let endpoint = hub.clone().serve().await;
    let expected_sha = "9".repeat(64);
    scene
        .api
        .create(
            &Default::default(),
            &isvc(
                NAME,
                json!({
                    "model": {
                        "uri": format!("hf://{REPO}"), "format": "safetensors", "task": "embed",
                        "sha256": expected_sha,
                    },
                    "scaling": {"provider": "none", "minReplicas": 1},
                    "podTemplate": {"labels": {TEST_KUBELET_LABEL: "model-pinning"}},
                }),
            ),
        )
        .await
        .expect("create the InferenceService");

    // Nothing fetched yet: status names the uri and claims no digest, though the spec pins one.
    let model = wait_model(&scene.api, "status.model", |_| true).await;
    assert_eq!(model.uri, format!("hf://{REPO}"));
    assert_eq!((model.digest, model.revision), (None, None));

    // The spec's digest is of no commit: drop it, so that the fetch succeeds.
    scene
        .api
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"model": {"sha256": null}}})),
        )
        .await
        .expect("unpin the digest");

    let fetches: Fetches = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet_task = tokio::spawn({
        let (ns, endpoint, fetches, stop) =
            (ns.clone(), endpoint.clone(), fetches.clone(), stop.clone());
        async move { kubelet(cluster, ns, endpoint, fetches, stop).await }
    });

    // The first fetch resolves main, and the operator records what it got.
    let first = wait_model(&scene.api, "the first fetch recorded", |m| {
        m.revision.is_some()
    })
    .await;
    assert_eq!(first.revision.as_deref(), Some(COMMITS[0]));
    let first_digest = first.digest.clone().expect("a verified digest");
    let deployments: Api<Deployment> = Api::namespaced(scene.client.clone(), &ns);
    wait_fetch_revision(&deployments, Some(COMMITS[0])).await;

    // main moves; the pod the pinned template starts fetches the first commit all the same.
    hub.head.store(1, Ordering::SeqCst);
    let pinned_report = wait::until(
        "a pod started with --revision fetched",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &ns);
            let listed = pods
                .list(
                    &ListParams::default().labels(&format!("lexserve.io/inference-service={NAME}")),
                )
                .await?;
            let pinned_pod = listed.items.iter().find(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.init_containers.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.args.iter().flatten().any(|a| a == "--revision"))
                    })
            });
            let report =
                pinned_pod.and_then(|p| fetches.lock().unwrap().get(&p.name_any()).cloned());
            Ok(match report {
                Some(report) => Poll::Ready(report),
                None => Poll::pending(format!("{} pods", listed.items.len())),
            })
        },
    )
    .await
    .expect("the pinned pod's fetch");
    assert_eq!(
        pinned_report,
        format!("sha256:{first_digest} revision:{}", COMMITS[0])
    );

    // Another uri: the pin goes from the template at once, and the next fetch resolves again.
    scene
        .api
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"model": {"uri": format!("hf://{REPO}@main")}}})),
        )
        .await
        .expect("change the uri");
    wait_fetch_revision(&deployments, None).await;
    let moved = wait_model(&scene.api, "the new uri recorded", |m| {
        m.uri.ends_with("@main") && m.revision.is_some()
    })
    .await;
    assert_eq!(moved.revision.as_deref(), Some(COMMITS[1]));
    assert_ne!(moved.digest, Some(first_digest));
    wait_fetch_revision(&deployments, Some(COMMITS[1])).await;

    stop.store(true, Ordering::Relaxed);
    kubelet_task.await.expect("kubelet loop");
}
