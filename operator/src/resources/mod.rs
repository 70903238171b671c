//! Pure builders: an InferenceService (and the operator's config) in, the children it needs
//! out. No I/O here; the controller applies what these return.

pub mod config_map;
pub mod deployment;
pub mod hash;
pub mod hpa;
pub mod http_route;
pub mod labels;
pub mod load_query;
pub mod model_pin;
pub mod pdb;
pub mod scaled_object;
pub mod service;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use kube::api::{DynamicObject, ObjectMeta};

use crate::api::InferenceService;
use crate::api::inference_service::ScalingProvider;
use crate::config::OperatorConfig;
use crate::gpu::RolloutPlan;

/// Every child of one InferenceService. `None` means "must not exist": the controller deletes
/// a child it owns that is no longer wanted.
#[derive(Clone, Debug)]
pub struct Children {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub pdb: Option<PodDisruptionBudget>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub scaled_object: Option<DynamicObject>,
}

/// Builds every child.
pub fn build_children(
    isvc: &InferenceService,
    config: &OperatorConfig,
    rollout: RolloutPlan,
) -> Children {
    let scaling = isvc.spec.scaling.as_ref();
    let provider = scaling.map(|s| s.provider).unwrap_or_default();
    Children {
        config_map: config_map::build_config_map(isvc, None),
        deployment: deployment::build_deployment(isvc, config, rollout),
        service: service::build_service(isvc),
        pdb: pdb::build_pdb(isvc),
        hpa: match (provider, scaling) {
            (ScalingProvider::Hpa, Some(s)) => Some(hpa::build_hpa(isvc, s)),
            _ => None,
        },
        scaled_object: match (provider, scaling) {
            (ScalingProvider::Keda, Some(s)) => {
                Some(scaled_object::build_scaled_object(isvc, s, config))
            }
            _ => None,
        },
    }
}

/// Metadata every child starts from: namespace, labels and an owner reference to the
/// InferenceService (controller = true), so that deleting it garbage-collects the children.
pub fn child_meta(isvc: &InferenceService) -> ObjectMeta {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    ObjectMeta {
        namespace: isvc.metadata.namespace.clone(),
        labels: Some(labels::common_labels(&name)),
        owner_references: isvc.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// Whether an autoscaler owns the replica count.
pub fn autoscaled(isvc: &InferenceService) -> bool {
    isvc.spec
        .scaling
        .as_ref()
        .is_some_and(|s| s.provider != ScalingProvider::None)
}

/// The replica count when nothing autoscales.
pub fn fixed_replicas(isvc: &InferenceService) -> i32 {
    isvc.spec
        .scaling
        .as_ref()
        .map_or(1, |s| s.min_replicas as i32)
}

/// The most replicas the service may run.
pub fn max_replicas(isvc: &InferenceService) -> u32 {
    match isvc.spec.scaling.as_ref() {
        None => 1,
        Some(s) if s.provider == ScalingProvider::None => s.min_replicas,
        Some(s) => s.max_replicas.unwrap_or(s.min_replicas).max(s.min_replicas),
    }
}

#[cfg(test)]
mod tests;
