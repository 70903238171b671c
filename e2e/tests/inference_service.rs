//! The InferenceService controller against a real control plane: `lexserve-operator run` as a
//! process, watching all namespaces, shared by the tests of this binary; each test in its own
//! namespace.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use lexserve_e2e::LocalCluster;
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::ConditionType;
use serde_json::json;

/// The cluster, with the CRDs installed and one operator running.
async fn setup() -> &'static LocalCluster {
    cluster_with_operator("operator").await
}

#[tokio::test]
async fn create_builds_owned_children_and_becomes_ready() {
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "create").await;
    let created = create(&api, &isvc("embedder", embedder(2)))
        .await
        .expect("create");
    let uid = created.uid().expect("uid");

    wait_condition(
        &api,
        "embedder",
        ConditionType::Ready,
        "True",
        Some("Available"),
    )
    .await
    .expect("Ready");
    // Ready means serving (one replica is enough); the rollout completes with both.
    let done = wait_condition(
        &api,
        "embedder",
        ConditionType::Progressing,
        "False",
        Some("RolloutComplete"),
    )
    .await
    .expect("rollout complete");
    let status = done.status.expect("status");
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://embedder.{}.svc.cluster.local", &*ns).as_str())
    );
    assert_eq!(
        status.model.map(|m| m.uri).as_deref(),
        Some("file:///models/minilm/model.onnx")
    );

    let owned_by_us = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid && r.controller == Some(true) && r.kind == "InferenceService")
    };
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("embedder")
        .await
        .expect("deployment");
    assert!(owned_by_us(&deployment.metadata));
    let spec = deployment.spec.clone().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.init_containers.as_ref().map(|c| c[0].name.as_str()),
        Some("fetch-model")
    );
    assert_eq!(pod.containers[0].name, "sidecar");
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("embedder-sidecar")
        .await
        .expect("configmap");
    assert!(owned_by_us(&config.metadata));
    assert!(config.data.expect("data")["config.yaml"].contains("file:///models/minilm/model.onnx"));
    let service = Api::<Service>::namespaced(client.clone(), &ns)
        .get("embedder")
        .await
        .expect("service");
    assert!(owned_by_us(&service.metadata));
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get("embedder")
        .await
        .expect("pdb");
    assert!(owned_by_us(&pdb.metadata));
    // The fields were written by the operator's field manager.
    let managers: Vec<_> = deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "lexserve-operator"),
        "managers: {managers:?}"
    );
}

#[tokio::test]
async fn changing_the_model_rolls_the_deployment() {
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "rollout").await;
    create(&api, &isvc("roller", embedder(2)))
        .await
        .expect("create");
    wait_condition(
        &api,
        "roller",
        ConditionType::Progressing,
        "False",
        Some("RolloutComplete"),
    )
    .await
    .expect("first rollout completes");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let before = deployments.get("roller").await.expect("deployment");

    let patch = json!({"spec": {"model": {"uri": "file:///models/minilm-v2/model.onnx"}}});
    api.patch("roller", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let done = wait_condition(
        &api,
        "roller",
        ConditionType::Progressing,
        "False",
        Some("RolloutComplete"),
    )
    .await
    .expect("second rollout completes");
    assert_eq!(
        done.status.as_ref().and_then(|s| s.ready_replicas),
        Some(2),
        "serving throughout and after"
    );
    let after = deployments.get("roller").await.expect("deployment");
    assert!(
        after.metadata.generation > before.metadata.generation,
        "the Deployment changed"
    );
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("roller-sidecar")
        .await
        .expect("configmap");
    assert!(config.data.expect("data")["config.yaml"].contains("minilm-v2"));
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("lexserve.io/inference-service=roller"))
        .await
        .expect("replicasets");
    assert_eq!(
        replica_sets.items.len(),
        2,
        "a new ReplicaSet rolled out beside the old one"
    );
    let (surge, unavailable) = rolling_update(&after);
    assert_eq!(
        (surge.as_str(), unavailable.as_str()),
        ("25%", "0"),
        "CPU services surge"
    );
}

#[tokio::test]
async fn switching_the_scaling_provider_replaces_the_autoscaler() {
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "provider").await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut spec = embedder(1);
    spec["scaling"] =
        json!({"provider": "hpa", "minReplicas": 1, "maxReplicas": 4, "targetLoadPerReplica": 6});
    create(&api, &isvc("switcher", spec)).await.expect("create");
    let hpa = wait_exists(&hpas, "switcher").await.expect("HPA created");
    assert_eq!(hpa.spec.max_replicas, 4);
    wait_condition(&api, "switcher", ConditionType::Ready, "True", None)
        .await
        .expect("Ready");
    // With an HPA, the operator does not own replicas.
    let deployment = deployments.get("switcher").await.expect("deployment");
    let operator_owns_replicas = deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|m| {
            m.manager.as_deref() == Some("lexserve-operator")
                && m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.to_string().contains("\"f:replicas\""))
        });
    assert!(
        !operator_owns_replicas,
        "the operator must not manage replicas under an HPA"
    );

    let patch =
        json!({"spec": {"scaling": {"provider": "none", "minReplicas": 3, "maxReplicas": null}}});
    api.patch("switcher", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    wait_gone(&hpas, "switcher").await.expect("HPA deleted");
    let ready = wait::until(
        "3 ready replicas",
        TIMEOUT,
        Duration::from_millis(500),
        || async {
            let d = deployments.get("switcher").await?;
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            Ok(
                if d.spec.as_ref().and_then(|s| s.replicas) == Some(3) && ready == 3 {
                    Poll::Ready(ready)
                } else {
                    Poll::pending(format!(
                        "replicas {:?}, ready {ready}",
                        d.spec.as_ref().and_then(|s| s.replicas)
                    ))
                },
            )
        },
    )
    .await
    .expect("fixed replicas");
    assert_eq!(ready, 3);

    // Back to one replica: the PDB goes too.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    wait_exists(&pdbs, "switcher")
        .await
        .expect("PDB with 3 replicas");
    let patch = json!({"spec": {"scaling": {"minReplicas": 1}}});
    api.patch("switcher", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    wait_gone(&pdbs, "switcher").await.expect("PDB deleted");
}

#[tokio::test]
async fn keda_without_its_crd_is_reported() {
    let cluster = setup().await;
    let Scene { ns: _ns, api, .. } = scene(cluster, "keda").await;
    let mut spec = embedder(1);
    spec["scaling"] = json!({"provider": "keda", "minReplicas": 1, "maxReplicas": 3});
    create(&api, &isvc("kedaless", spec)).await.expect("create");
    let (_, message) = wait_degraded(&api, "kedaless", "MissingDependency")
        .await
        .expect("missing KEDA reported");
    assert!(message.contains("ScaledObject"), "{message}");
}

#[tokio::test]
async fn deleting_garbage_collects_the_children() {
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "delete").await;
    create(&api, &isvc("doomed", embedder(2)))
        .await
        .expect("create");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_exists(&deployments, "doomed")
        .await
        .expect("deployment");
    wait_exists(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        "doomed",
    )
    .await
    .expect("pdb");

    api.delete("doomed", &DeleteParams::foreground())
        .await
        .expect("delete");
    wait_gone(&api, "doomed")
        .await
        .expect("InferenceService gone");
    wait_gone(&deployments, "doomed")
        .await
        .expect("deployment collected");
    wait_gone(&Api::<Service>::namespaced(client.clone(), &ns), "doomed")
        .await
        .expect("service collected");
    wait_gone(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        "doomed-sidecar",
    )
    .await
    .expect("configmap collected");
    wait_gone(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        "doomed",
    )
    .await
    .expect("pdb collected");
}

#[tokio::test]
async fn more_gpus_than_any_node_has_gives_insufficient_gpu_with_numbers() {
    let cluster = setup().await;
    let Scene { ns: _ns, api, .. } = scene(cluster, "gpu-short").await;
    let mut spec = embedder(1);
    spec["resources"]["gpu"] = json!({"count": 16});
    create(&api, &isvc("greedy", spec)).await.expect("create");
    let (object, message) = wait_degraded(&api, "greedy", "InsufficientGPU")
        .await
        .expect("InsufficientGPU");
    let status = object.status.expect("status");
    assert!(message.contains("requests 16 nvidia.com/gpu"), "{message}");
    assert!(message.contains("8 allocatable"), "{message}");
    assert!(message.contains(" free"), "{message}");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InsufficientGPU")
    );
}

#[tokio::test]
async fn gpu_service_without_spare_capacity_rolls_in_place() {
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "gpu-full").await;
    // Two replicas of 8 GPUs fill both GPU nodes: a surge pod could never be scheduled.
    let mut spec = embedder(2);
    spec["resources"]["gpu"] = json!({"count": 8, "product": "NVIDIA-H100-80GB-HBM3"});
    create(&api, &isvc("filler", spec)).await.expect("create");
    wait_condition(
        &api,
        "filler",
        ConditionType::Progressing,
        "False",
        Some("RolloutComplete"),
    )
    .await
    .expect("both GPU replicas run");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let strategy = wait::until("in-place rollout strategy", TIMEOUT, Duration::from_millis(500), || async {
        // The next reconcile sees the nodes full and switches the strategy.
        api.patch(
            "filler",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": format!("{:?}", std::time::Instant::now())}}})),
        )
        .await?;
        let d = deployments.get("filler").await?;
        let ru = rolling_update(&d);
        Ok(if ru == ("0".to_string(), "1".to_string()) { Poll::Ready(ru) } else { Poll::pending(format!("{ru:?}")) })
    })
    .await
    .expect("strategy");
    assert_eq!(strategy, ("0".to_string(), "1".to_string()));

    let patch = json!({"spec": {"model": {"uri": "file:///models/minilm-v2/model.onnx"}}});
    api.patch("filler", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let done = wait_condition(
        &api,
        "filler",
        ConditionType::Progressing,
        "False",
        Some("RolloutComplete"),
    )
    .await
    .expect("the rollout finishes instead of deadlocking on a Pending surge pod");
    assert_eq!(done.status.and_then(|s| s.ready_replicas), Some(2));
}

#[tokio::test]
async fn cel_violation_is_rejected_by_the_apiserver() {
    let cluster = setup().await;
    let Scene { ns: _ns, api, .. } = scene(cluster, "cel").await;
    let mut spec = embedder(1);
    spec["scaling"] = json!({"provider": "hpa", "minReplicas": 5, "maxReplicas": 2});
    let err = create(&api, &isvc("bad", spec))
        .await
        .expect_err("rejected");
    let text = format!("{err:#}");
    assert!(
        text.contains(
            "spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas"
        ),
        "{text}"
    );
    // The type's kind is what the apiserver names in its error.
    assert!(
        text.contains(&InferenceService::kind(&()).to_string())
            || text.contains("inferenceservices"),
        "{text}"
    );
}
