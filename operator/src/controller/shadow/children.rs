//! The candidate's children: the Deployment, Service and ConfigMap (and an autoscaler when the
//! spec asks for one) that an InferenceService made of `spec.candidate` would have, built by the
//! same builders, owned by the shadow. Pure.
//!
//! The candidate is an InferenceService in all but name: `<shadow>-shadow`, which is also the
//! name it serves under (the mirror addresses it by that name) and the name of its Service. No
//! Service of production changes: the candidate is reached only by production's sidecars.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::inference_service::InferenceServiceSpec;
use crate::api::{InferenceService, ShadowDeployment};
use crate::config::OperatorConfig;
use crate::controller::child::{ChildKind, DesiredChild};
use crate::gpu::plan_rollout;
use crate::resources::{Children, build_children};

/// Names the ShadowDeployment a candidate's child belongs to.
pub const SHADOW_LABEL: &str = "lexserve.io/shadow";

/// The candidate's name: that of its Deployment, Service and served model.
pub fn candidate_name(shadow: &str) -> String {
    format!("{shadow}-shadow")
}

/// The InferenceService the candidate would be: `spec.candidate` under the candidate's name, in
/// the shadow's namespace. Without `candidate.scaling` nothing autoscales and one replica runs.
/// With `name`, it is named so (the InferenceService `onPass: CreateExperiment` creates).
pub fn candidate_inference_service(shadow: &ShadowDeployment, name: &str) -> InferenceService {
    let candidate = &shadow.spec.candidate;
    InferenceService {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: shadow.namespace(),
            ..Default::default()
        },
        spec: InferenceServiceSpec {
            model: candidate.model.clone(),
            runtime: candidate.runtime.clone(),
            resources: candidate.resources.clone(),
            scaling: candidate.scaling.clone(),
            pod_template: None,
            monitoring: None,
        },
        status: None,
    }
}

/// Every child of the candidate, in apply order, owned by the shadow and labelled with its
/// name. Pure.
pub fn build_candidate_children(
    shadow: &ShadowDeployment,
    config: &OperatorConfig,
) -> Vec<DesiredChild> {
    let isvc = candidate_inference_service(shadow, &candidate_name(&shadow.name_any()));
    // The candidate never asks for more than its own GPUs: no capacity-aware rollout plan.
    let Children {
        mut config_map,
        mut deployment,
        mut service,
        pdb,
        hpa,
        scaled_object,
    } = build_children(&isvc, config, plan_rollout(None));
    let mut children = Vec::new();
    own(shadow, &mut config_map.metadata);
    children.push(DesiredChild::new(ChildKind::ConfigMap, &config_map));
    own(shadow, &mut service.metadata);
    children.push(DesiredChild::new(ChildKind::Service, &service));
    own(shadow, &mut deployment.metadata);
    children.push(DesiredChild::new(ChildKind::Deployment, &deployment));
    if let Some(mut pdb) = pdb {
        own(shadow, &mut pdb.metadata);
        children.push(DesiredChild::new(ChildKind::PodDisruptionBudget, &pdb));
    }
    if let Some(mut hpa) = hpa {
        own(shadow, &mut hpa.metadata);
        children.push(DesiredChild::new(ChildKind::HorizontalPodAutoscaler, &hpa));
    }
    if let Some(mut scaled_object) = scaled_object {
        own(shadow, &mut scaled_object.metadata);
        children.push(DesiredChild::new(ChildKind::ScaledObject, &scaled_object));
    }
    children
}

/// The shadow owns the child (controller = true: deleting it garbage-collects the candidate),
/// and the child says which shadow it belongs to.
fn own(shadow: &ShadowDeployment, meta: &mut ObjectMeta) {
    meta.owner_references = shadow.controller_owner_ref(&()).map(|r| vec![r]);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(SHADOW_LABEL.to_string(), shadow.name_any());
}

/// Whether the candidate's Deployment has a ready replica. Pure.
pub fn candidate_ready(deployment: Option<&Deployment>) -> bool {
    deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .is_some_and(|r| r > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn shadow(candidate: serde_json::Value) -> ShadowDeployment {
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "ShadowDeployment",
            "metadata": {"name": "s", "namespace": "ns", "uid": "shadow-uid"},
            "spec": {
                "production": "prod",
                "candidate": candidate,
                "comparison": {"mode": "Cosine"},
            }
        }))
        .expect("valid ShadowDeployment")
    }

    fn embedder() -> serde_json::Value {
        json!({"model": {"uri": "file:///m/model.onnx", "format": "onnx", "task": "embed"},
               "resources": {"cpu": "2", "memory": "1Gi"}})
    }

    #[test]
    fn the_candidate_gets_a_config_map_service_and_one_replica_owned_by_the_shadow() {
        let children = build_candidate_children(&shadow(embedder()), &OperatorConfig::default());
        let kinds: Vec<_> = children.iter().map(|c| (c.kind, c.name.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (ChildKind::ConfigMap, "s-shadow-sidecar"),
                (ChildKind::Service, "s-shadow"),
                (ChildKind::Deployment, "s-shadow"),
            ]
        );
        for child in &children {
            let meta = &child.object["metadata"];
            assert_eq!(meta["ownerReferences"][0]["kind"], "ShadowDeployment");
            assert_eq!(meta["ownerReferences"][0]["uid"], "shadow-uid");
            assert_eq!(meta["ownerReferences"][0]["controller"], true);
            assert_eq!(meta["labels"][SHADOW_LABEL], "s");
            assert_eq!(
                meta["labels"]["app.kubernetes.io/managed-by"],
                "lexserve-operator"
            );
            assert_eq!(meta["namespace"], "ns");
        }
        let deployment = &children[2].object;
        assert_eq!(deployment["spec"]["replicas"], 1);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["resources"]["requests"]["cpu"], "2");
        let env = container["env"].as_array().expect("env");
        assert!(
            env.iter()
                .any(|e| e["name"] == "LEXSERVE_MODEL_NAME" && e["value"] == "s-shadow"),
            "{env:?}"
        );
    }

    #[test]
    fn candidate_scaling_adds_its_autoscaler() {
        let mut candidate = embedder();
        candidate["scaling"] = json!({"provider": "hpa", "minReplicas": 1, "maxReplicas": 3});
        let children = build_candidate_children(&shadow(candidate), &OperatorConfig::default());
        let hpa = children
            .iter()
            .find(|c| c.kind == ChildKind::HorizontalPodAutoscaler)
            .expect("an HPA");
        assert_eq!(
            hpa.object["metadata"]["ownerReferences"][0]["kind"],
            "ShadowDeployment"
        );
        let deployment = children
            .iter()
            .find(|c| c.kind == ChildKind::Deployment)
            .expect("a Deployment");
        assert!(deployment.object["spec"].get("replicas").is_none());
    }
}
