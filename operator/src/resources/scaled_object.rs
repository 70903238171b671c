//! The KEDA ScaledObject for `provider: keda`: a Prometheus trigger on the same load query and
//! threshold as the HPA's external metric, so both providers scale alike.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta};
use serde_json::json;

use super::deployment::deployment_name;
use super::load_query::load_query;
use super::{child_meta, max_replicas};
use crate::api::InferenceService;
use crate::api::inference_service::ScalingSpec;
use crate::config::OperatorConfig;

/// KEDA's ScaledObject kind.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    )
}

/// The ScaledObject's name.
pub fn scaled_object_name(isvc_name: &str) -> String {
    isvc_name.to_string()
}

/// Builds the ScaledObject for an InferenceService whose provider is `keda`.
pub fn build_scaled_object(
    isvc: &InferenceService,
    scaling: &ScalingSpec,
    config: &OperatorConfig,
) -> DynamicObject {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let namespace = isvc.metadata.namespace.clone().unwrap_or_default();
    build_scaled_object_for(
        &name,
        &namespace,
        ObjectMeta {
            name: Some(scaled_object_name(&name)),
            ..child_meta(isvc)
        },
        scaling,
        max_replicas(isvc),
        config,
    )
}

/// The ScaledObject of the Deployment `name` (an InferenceService's, or an experiment
/// router's), on the load of the pods labelled with that name.
pub fn build_scaled_object_for(
    name: &str,
    namespace: &str,
    metadata: ObjectMeta,
    scaling: &ScalingSpec,
    max_replicas: u32,
    config: &OperatorConfig,
) -> DynamicObject {
    let resource = scaled_object_resource();
    let mut object = DynamicObject::new(&scaled_object_name(name), &resource);
    object.metadata = metadata;
    object.data = json!({
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(name),
            },
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": max_replicas,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": super::hpa::behavior(scaling),
                },
            },
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": config.prometheus_url,
                    "query": load_query(namespace, name),
                    "threshold": scaling.target_load_per_replica.to_string(),
                    // No data is not zero load: KEDA keeps the current replicas instead.
                    "ignoreNullValues": "false",
                },
            }],
        },
    });
    object
}
