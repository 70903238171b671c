//! The children of an InferenceService are kept as built, on a real control plane: an owned
//! child that is no longer built (a renamed one) is removed, a hand edit of a field the
//! operator sets is reverted, and a child the apiserver refuses shows as `Degraded` with the
//! child and the apiserver's message, and as a Warning Event.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use lexserve_e2e::LocalCluster;
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::{ConditionType, find_condition};
use serde_json::json;

/// The cluster, with the CRDs installed and one operator running.
async fn setup() -> &'static LocalCluster {
    cluster_with_operator("children").await
}

/// A child of `owner` as an older operator might have left it, under a name no longer built.
fn old_child(owner: &InferenceService, name: &str, managed: bool) -> serde_json::Value {
    let mut labels = json!({"lexserve.io/inference-service": owner.name_any()});
    if managed {
        labels["app.kubernetes.io/managed-by"] = json!("lexserve-operator");
    }
    json!({
        "metadata": {
            "name": name,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": InferenceService::api_version(&()),
                "kind": InferenceService::kind(&()),
                "name": owner.name_any(),
                "uid": owner.uid().expect("uid"),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        }
    })
}

#[tokio::test]
async fn an_owned_child_no_longer_built_is_removed() {
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "renamed").await;
    create(&api, &isvc("renamed", embedder(1)))
        .await
        .expect("create");
    let owner = wait_condition(&api, "renamed", ConditionType::Ready, "True", None)
        .await
        .expect("Ready");

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    // What a rename leaves behind: a ConfigMap and a Service under their old names.
    let mut old_config: ConfigMap =
        serde_json::from_value(old_child(&owner, "renamed-config", true)).expect("configmap");
    old_config.data = Some([("config.yaml".to_string(), "old".to_string())].into());
    config_maps
        .create(&PostParams::default(), &old_config)
        .await
        .expect("old ConfigMap");
    let mut old_service: Service =
        serde_json::from_value(old_child(&owner, "renamed-old", true)).expect("service");
    old_service.spec =
        Some(serde_json::from_value(json!({"ports": [{"port": 80}]})).expect("spec"));
    services
        .create(&PostParams::default(), &old_service)
        .await
        .expect("old Service");
    // Owned, but without the managed-by label: not something lexserve made; left alone.
    let foreign: ConfigMap =
        serde_json::from_value(old_child(&owner, "renamed-by-hand", false)).expect("configmap");
    config_maps
        .create(&PostParams::default(), &foreign)
        .await
        .expect("unlabelled ConfigMap");

    wait_gone(&config_maps, "renamed-config")
        .await
        .expect("the old ConfigMap is swept");
    wait_gone(&services, "renamed-old")
        .await
        .expect("the old Service is swept");
    // The children it builds stay, and so does what it did not make.
    config_maps
        .get("renamed-sidecar")
        .await
        .expect("the built ConfigMap stays");
    services
        .get("renamed")
        .await
        .expect("the built Service stays");
    config_maps
        .get("renamed-by-hand")
        .await
        .expect("an unlabelled child is never swept");
}

fn sidecar(d: &Deployment) -> k8s_openapi::api::core::v1::Container {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.iter().find(|c| c.name == "sidecar"))
        .cloned()
        .expect("sidecar container")
}

#[tokio::test]
async fn a_hand_edited_deployment_is_restored() {
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "drift").await;
    create(&api, &isvc("edited", embedder(1)))
        .await
        .expect("create");
    wait_condition(&api, "edited", ConditionType::Ready, "True", None)
        .await
        .expect("Ready");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let built = sidecar(&deployments.get("edited").await.expect("deployment"));
    let built_security = built.security_context.clone().expect("securityContext");
    assert_eq!(built_security.allow_privilege_escalation, Some(false));

    // What `kubectl edit deployment` sends: a strategic merge patch under another manager.
    let edit = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "sidecar",
        "image": "example.com/not-the-sidecar:evil",
        "securityContext": {"allowPrivilegeEscalation": true, "readOnlyRootFilesystem": false},
    }]}}}});
    let params = PatchParams {
        field_manager: Some("kubectl-edit".to_string()),
        ..PatchParams::default()
    };
    let edited = deployments
        .patch("edited", &params, &Patch::Strategic(&edit))
        .await
        .expect("hand edit");
    assert_eq!(
        sidecar(&edited).image.as_deref(),
        Some("example.com/not-the-sidecar:evil"),
        "the edit took"
    );

    let restored = wait::until(
        "the hand edit to be reverted",
        TIMEOUT,
        Duration::from_millis(300),
        || async {
            let c = sidecar(&deployments.get("edited").await?);
            Ok(
                if c.image == built.image && c.security_context == built.security_context {
                    Poll::Ready(c)
                } else {
                    Poll::pending(format!(
                        "image {:?}, securityContext {:?}",
                        c.image, c.security_context
                    ))
                },
            )
        },
    )
    .await
    .expect("restored");
    assert_eq!(restored.security_context, Some(built_security));
}

#[tokio::test]
async fn a_child_the_apiserver_rejects_is_a_degraded_condition_and_an_event() {
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "rejected").await;
    // A claim name with dots is a valid PVC name, but the Deployment's volume named after it
    // is not a valid volume name: the apiserver refuses the Deployment (422).
    let mut spec = embedder(1);
    spec["model"]["uri"] = json!("pvc://models.v1/minilm/model.onnx");
    create(&api, &isvc("refused", spec)).await.expect("create");
    let (object, message) = wait_degraded(&api, "refused", "ChildRejected")
        .await
        .expect("the rejection is reported");
    let status = object.status.expect("status");
    assert!(message.contains("Deployment refused"), "{message}");
    assert!(
        message.contains("pvc-models.v1"),
        "the apiserver's message: {message}"
    );
    let ready = find_condition(&status.conditions, ConditionType::Ready).expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ChildRejected")
    );
    // The rest was still applied.
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("refused-sidecar")
        .await
        .expect("the ConfigMap was applied");

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let event = wait::until(
        "a Warning Event ChildRejected",
        TIMEOUT,
        Duration::from_millis(500),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(
                match list.items.into_iter().find(|e| {
                    e.reason.as_deref() == Some("ChildRejected")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("refused")
                }) {
                    Some(e) => Poll::Ready(e),
                    None => Poll::pending("no event yet"),
                },
            )
        },
    )
    .await
    .expect("event");
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .note
            .as_deref()
            .is_some_and(|n| n.contains("Deployment refused")),
        "{:?}",
        event.note
    );
}
