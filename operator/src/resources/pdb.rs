//! A PodDisruptionBudget, so that a node drain never takes more than one replica at once.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::labels::selector_labels;
use super::{child_meta, max_replicas};
use crate::api::InferenceService;

/// The PDB's name.
pub fn pdb_name(isvc_name: &str) -> String {
    isvc_name.to_string()
}

/// Builds the PDB when the service can run more than one replica; a single replica gets none
/// (a budget could only block the drain or allow everything).
pub fn build_pdb(isvc: &InferenceService) -> Option<PodDisruptionBudget> {
    if max_replicas(isvc) <= 1 {
        return None;
    }
    let name = isvc.metadata.name.clone().unwrap_or_default();
    Some(PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(pdb_name(&name)),
            ..child_meta(isvc)
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            // Pods that never became ready may be evicted: they serve nothing, and blocking a
            // drain on them helps no one.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    })
}
