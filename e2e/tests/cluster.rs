//! Smoke tests of the local control plane itself and of the project's CRDs on it.
//!
//! One cluster is shared by the tests of this binary; each test works in its own namespace.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::install_crds;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use lexserve_e2e::wait::{self, Poll};
use lexserve_e2e::{repo_root, shared_cluster};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn control_plane_is_real_and_complete() {
    let cluster = shared_cluster().await.expect("local cluster");
    let version = cluster.get_raw("/version").await.expect("GET /version");
    let version: serde_json::Value = serde_json::from_str(&version).expect("version JSON");
    assert!(
        version["gitVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("v1.36.")),
        "apiserver version: {version}"
    );

    let metrics = cluster
        .apiserver_metrics()
        .await
        .expect("apiserver /metrics");
    assert!(
        metrics.contains("apiserver_request_total"),
        "no apiserver_request_total in /metrics"
    );

    let out = cluster
        .kubectl_ok(["get", "nodes", "-o", "name"])
        .await
        .expect("kubectl get nodes");
    assert_eq!(out.lines().count(), 4, "nodes: {out}");

    let nodes: Api<Node> = Api::all(cluster.client().expect("client"));
    let gpu_nodes = nodes
        .list(&ListParams::default().labels("nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"))
        .await
        .expect("list GPU nodes");
    assert_eq!(gpu_nodes.items.len(), 2);
    for node in &gpu_nodes.items {
        let status = node.status.as_ref().expect("node status");
        let gpus = status
            .allocatable
            .as_ref()
            .and_then(|a| a.get("nvidia.com/gpu"))
            .map(|q| q.0.as_str());
        assert_eq!(
            gpus,
            Some("8"),
            "allocatable GPUs of {:?}",
            node.metadata.name
        );
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        assert!(
            taints
                .iter()
                .any(|t| t.key == "nvidia.com/gpu" && t.effect == "NoSchedule"),
            "taints of {:?}: {taints:?}",
            node.metadata.name
        );
    }

    // RBAC is on: an unprivileged ServiceAccount may not list nodes.
    let ns = cluster.namespace("rbac").await.expect("namespace");
    let out = cluster
        .kubectl([
            "auth",
            "can-i",
            "list",
            "nodes",
            "--as",
            &format!("system:serviceaccount:{}:default", ns.name()),
        ])
        .await
        .expect("kubectl auth can-i");
    assert_eq!(out.stdout.trim(), "no", "RBAC should deny: {out:?}");
}

#[tokio::test]
async fn crds_install_and_become_established() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs install");
    let out = cluster
        .kubectl_ok(["api-resources", "--api-group=lexserve.io", "-o", "name"])
        .await
        .expect("api-resources");
    for kind in ["inferenceservices", "experiments", "shadowdeployments"] {
        assert!(out.contains(kind), "lexserve.io resources: {out}");
    }
}

#[tokio::test]
async fn invalid_examples_are_rejected_with_their_cel_message() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs install");
    let ns = cluster
        .namespace("invalid-examples")
        .await
        .expect("namespace");
    let dir = repo_root().join("examples").join("invalid");
    let min_over_max = dir.join("inferenceservice-min-over-max.yaml");
    assert!(min_over_max.exists(), "missing {}", min_over_max.display());

    let mut checked = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read examples/invalid")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    for file in entries {
        let text = std::fs::read_to_string(&file).expect("read example");
        let out = cluster
            .kubectl(["apply", "-n", ns.name(), "-f", &file.display().to_string()])
            .await
            .expect("kubectl apply");
        assert!(
            !out.success,
            "{} was accepted: {}",
            file.display(),
            out.stdout
        );
        // Each invalid example says what the apiserver must answer, in an `# expect:` line.
        if let Some(expect) = text.lines().find_map(|l| l.strip_prefix("# expect:")) {
            assert!(
                out.stderr.contains(expect.trim()),
                "{}: expected {:?} in the apiserver's answer, got: {}",
                file.display(),
                expect.trim(),
                out.stderr
            );
        }
        if file == min_over_max {
            assert!(
                out.stderr.contains("minReplicas"),
                "CEL message: {}",
                out.stderr
            );
            assert!(
                out.stderr.contains("Invalid value"),
                "not an admission rejection: {}",
                out.stderr
            );
        }
        checked += 1;
    }
    assert!(checked >= 1);
}

#[tokio::test]
async fn valid_examples_pass_admission() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs install");
    let ns = cluster
        .namespace("valid-examples")
        .await
        .expect("namespace");
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .expect("read examples")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        cluster
            .kubectl_ok([
                "apply",
                "--dry-run=server",
                "-n",
                ns.name(),
                "-f",
                &file.display().to_string(),
            ])
            .await
            .unwrap_or_else(|e| panic!("{} rejected: {e:#}", file.display()));
    }
}

fn gpu_deployment(name: &str, gpus: u32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "nodeSelector": { "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3" },
                    "tolerations": [{
                        "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule",
                    }],
                    "containers": [{
                        "name": "model",
                        "image": "lexserve/sidecar:test",
                        "resources": {
                            "limits": { "nvidia.com/gpu": gpus.to_string() },
                        },
                    }],
                },
            },
        },
    }))
    .expect("deployment JSON")
}

#[tokio::test]
async fn gpu_pod_is_scheduled_onto_a_gpu_node_and_becomes_ready() {
    let cluster = shared_cluster().await.expect("local cluster");
    let ns = cluster.namespace("gpu-fits").await.expect("namespace");
    let client = cluster.client().expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    deployments
        .create(&PostParams::default(), &gpu_deployment("one-gpu", 1))
        .await
        .expect("create deployment");
    wait::until(
        "deployment one-gpu to be available",
        TIMEOUT,
        Duration::from_millis(500),
        || async {
            let d = deployments.get("one-gpu").await?;
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            Ok(if ready == 1 {
                Poll::Ready(())
            } else {
                Poll::pending(format!("{ready} ready"))
            })
        },
    )
    .await
    .expect("GPU deployment Ready");
    let pods: Api<Pod> = Api::namespaced(client, ns.name());
    let list = pods
        .list(&ListParams::default().labels("app=one-gpu"))
        .await
        .expect("pods");
    let pod = list.items.first().expect("one pod");
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    assert!(node.starts_with("kwok-gpu-"), "scheduled onto {node:?}");
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    assert_eq!(phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn pod_asking_more_gpus_than_any_node_has_stays_pending_with_the_reason() {
    let cluster = shared_cluster().await.expect("local cluster");
    let ns = cluster.namespace("gpu-too-many").await.expect("namespace");
    let client = cluster.client().expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    deployments
        .create(&PostParams::default(), &gpu_deployment("sixteen-gpus", 16))
        .await
        .expect("create deployment");
    let pods: Api<Pod> = Api::namespaced(client, ns.name());
    let message = wait::until(
        "the scheduler to report the pod unschedulable",
        TIMEOUT,
        Duration::from_millis(500),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=sixteen-gpus"))
                .await?;
            let condition = list
                .items
                .iter()
                .filter_map(|p| p.status.as_ref()?.conditions.as_ref())
                .flatten()
                .find(|c| c.type_ == "PodScheduled")
                .cloned();
            Ok(match condition {
                Some(c) if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") => {
                    Poll::Ready(c.message.unwrap_or_default())
                }
                other => Poll::pending(format!("{other:?}")),
            })
        },
    )
    .await
    .expect("PodScheduled=False");
    assert!(
        message.contains("Insufficient nvidia.com/gpu"),
        "scheduler message: {message}"
    );
    // And it stays Pending: kwok must not make an unscheduled pod Running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let list = pods
        .list(&ListParams::default().labels("app=sixteen-gpus"))
        .await
        .expect("pods");
    for pod in list.items {
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    }
}
