//! Helpers shared by the operator's cluster tests.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, PostParams};
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::wait::{self, Poll};
use lexserve_e2e::{LocalCluster, TestNamespace};
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::{ConditionType, find_condition};
use serde_json::json;

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Installs the CRDs the way users do (`kubectl apply`), and waits until they are served; once
/// per test binary.
pub async fn install_crds(cluster: &LocalCluster) -> Result<()> {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_try_init(|| async {
            cluster
                .apply_crds(&lexserve_e2e::repo_root().join("crds"))
                .await
        })
        .await?;
    Ok(())
}

/// The shared cluster of this test binary with the CRDs installed and one operator, named
/// `identity`, watching every namespace; the operator starts once per binary.
pub async fn cluster_with_operator(identity: &str) -> &'static LocalCluster {
    static OPERATOR: tokio::sync::OnceCell<OperatorProcess> = tokio::sync::OnceCell::const_new();
    let cluster = lexserve_e2e::shared_cluster().await.expect("local cluster");
    OPERATOR
        .get_or_init(|| async {
            install_crds(cluster).await.expect("CRDs install");
            OperatorProcess::start(
                cluster,
                OperatorOptions {
                    identity: identity.to_string(),
                    ..OperatorOptions::default()
                },
            )
            .await
            .expect("operator starts")
        })
        .await;
    cluster
}

/// What a test works in: a namespace of its own, a client, and the InferenceServices there.
/// Keep `ns` bound for the whole test (`ns: _ns` where it is not used): dropping it deletes
/// the namespace.
pub struct Scene {
    pub ns: TestNamespace,
    pub client: Client,
    pub api: Api<InferenceService>,
}

/// A fresh namespace named after `prefix`, with a client and the InferenceService API in it.
pub async fn scene(cluster: &LocalCluster, prefix: &str) -> Scene {
    let ns = cluster.namespace(prefix).await.expect("namespace");
    let client = cluster.client().expect("client");
    let api = Api::namespaced(client.clone(), &ns);
    Scene { ns, client, api }
}

/// An InferenceService from a JSON spec.
pub fn isvc(name: &str, spec: serde_json::Value) -> InferenceService {
    serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("valid InferenceService")
}

/// A CPU embedder spec with a fixed replica count.
pub fn embedder(replicas: u32) -> serde_json::Value {
    json!({
        "model": {"uri": "file:///models/minilm/model.onnx", "format": "onnx", "task": "embed"},
        "resources": {"cpu": "500m", "memory": "512Mi"},
        "scaling": {"provider": "none", "minReplicas": replicas}
    })
}

/// An operator of its own (namespaced to a fresh namespace, resyncing every `resync_seconds`)
/// with three InferenceServices settled in that namespace: fixed replicas, an HPA, and a GPU
/// service. Returns once all three report a complete rollout and the reconciles their last
/// events triggered have had time to finish.
pub async fn settled_services(
    cluster: &LocalCluster,
    identity: &str,
    resync_seconds: u64,
) -> Result<(TestNamespace, OperatorProcess)> {
    install_crds(cluster).await?;
    let ns = cluster.namespace(identity).await?;
    let api: Api<InferenceService> = Api::namespaced(cluster.client()?, &ns);
    let operator = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: identity.to_string(),
            namespace: Some(ns.to_string()),
            resync_seconds,
            ..Default::default()
        },
    )
    .await?;
    let mut hpa = embedder(1);
    hpa["scaling"] = json!({"provider": "hpa", "minReplicas": 1, "maxReplicas": 3});
    let mut gpu = embedder(2);
    gpu["resources"]["gpu"] = json!({"count": 1});
    for (name, spec) in [("fixed", embedder(2)), ("scaled", hpa), ("gpu", gpu)] {
        create(&api, &isvc(name, spec)).await?;
    }
    for name in ["fixed", "scaled", "gpu"] {
        wait_condition(
            &api,
            name,
            ConditionType::Progressing,
            "False",
            Some("RolloutComplete"),
        )
        .await?;
    }
    // Let in-flight reconciles (triggered by the last pod and status events) finish.
    tokio::time::sleep(Duration::from_secs(resync_seconds * 2)).await;
    Ok((ns, operator))
}

/// Waits until the InferenceService is `Degraded=True` for `reason`; returns the object and
/// the condition's message.
pub async fn wait_degraded(
    api: &Api<InferenceService>,
    name: &str,
    reason: &str,
) -> Result<(InferenceService, String)> {
    let object = wait_condition(api, name, ConditionType::Degraded, "True", Some(reason)).await?;
    let message = object
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, ConditionType::Degraded))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    Ok((object, message))
}

pub async fn create(
    api: &Api<InferenceService>,
    object: &InferenceService,
) -> Result<InferenceService> {
    api.create(&PostParams::default(), object)
        .await
        .with_context(|| format!("creating InferenceService {:?}", object.metadata.name))
}

/// Waits until a condition of the InferenceService has the given status (and, if given, reason),
/// for the object's current generation. Returns the object.
pub async fn wait_condition(
    api: &Api<InferenceService>,
    name: &str,
    type_: ConditionType,
    status: &str,
    reason: Option<&str>,
) -> Result<InferenceService> {
    wait::until(
        &format!("InferenceService {name}: {type_}={status} {reason:?}"),
        TIMEOUT,
        Duration::from_millis(500),
        || async {
            let object = api.get(name).await?;
            let Some(st) = object.status.as_ref() else {
                return Ok(Poll::pending("no status yet"));
            };
            if st.observed_generation != object.metadata.generation {
                return Ok(Poll::pending(format!(
                    "status describes generation {:?}, object is at {:?}",
                    st.observed_generation, object.metadata.generation
                )));
            }
            match find_condition(&st.conditions, type_) {
                Some(c) if c.status == status && reason.is_none_or(|r| r == c.reason) => {
                    Ok(Poll::Ready(object.clone()))
                }
                Some(c) => Ok(Poll::pending(format!(
                    "{}={} {}: {}",
                    c.type_, c.status, c.reason, c.message
                ))),
                None => Ok(Poll::pending("condition absent")),
            }
        },
    )
    .await
}

/// Waits until `get` finds the object, returning it.
pub async fn wait_exists<K>(api: &Api<K>, name: &str) -> Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    wait::until(
        &format!("{name} to exist"),
        TIMEOUT,
        Duration::from_millis(300),
        || async {
            Ok(match api.get_opt(name).await? {
                Some(o) => Poll::Ready(o),
                None => Poll::pending("not found"),
            })
        },
    )
    .await
}

/// Waits until `get` no longer finds the object.
pub async fn wait_gone<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    wait::until(
        &format!("{name} to be gone"),
        TIMEOUT,
        Duration::from_millis(300),
        || async {
            Ok(match api.get_opt(name).await? {
                Some(_) => Poll::pending("still there"),
                None => Poll::Ready(()),
            })
        },
    )
    .await
}

/// The Deployment's rolling-update parameters as (maxSurge, maxUnavailable) strings.
pub fn rolling_update(d: &Deployment) -> (String, String) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .cloned()
        .unwrap_or_default();
    let show = |v: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>| match v {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => i.to_string(),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => s,
        None => "unset".to_string(),
    };
    (show(ru.max_surge), show(ru.max_unavailable))
}

#[allow(unused_imports)]
pub use lexserve_e2e::request_counts::{counter, write_requests};
