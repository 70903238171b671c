//! The autoscaling/v2 HorizontalPodAutoscaler for `provider: hpa`: it targets the operator's
//! external metric (the load of the InferenceService's pods) with an average per replica.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HPAScalingPolicy, HPAScalingRules,
    HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;

use super::deployment::deployment_name;
use super::labels::INFERENCE_SERVICE_LABEL;
use super::load_query::EXTERNAL_METRIC_NAME;
use super::{child_meta, max_replicas};
use crate::api::InferenceService;
use crate::api::inference_service::ScalingSpec;

/// The HPA's name.
pub fn hpa_name(isvc_name: &str) -> String {
    isvc_name.to_string()
}

/// The selector the HPA sends with its external metric request; the metrics API answers for
/// the InferenceService it names, in the HPA's namespace.
pub fn metric_selector(isvc_name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            INFERENCE_SERVICE_LABEL.to_string(),
            isvc_name.to_string(),
        )])),
        ..Default::default()
    }
}

/// Fast up: react at once, up to doubling (or +4 pods) every 15 seconds.
pub fn default_scale_up() -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: Some(0),
        select_policy: Some("Max".to_string()),
        policies: Some(vec![
            HPAScalingPolicy {
                type_: "Percent".to_string(),
                value: 100,
                period_seconds: 15,
            },
            HPAScalingPolicy {
                type_: "Pods".to_string(),
                value: 4,
                period_seconds: 15,
            },
        ]),
        ..Default::default()
    }
}

/// Stabilized down: only after five minutes of lower load, so bursty traffic does not thrash.
pub fn default_scale_down() -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: Some(300),
        select_policy: Some("Max".to_string()),
        policies: Some(vec![HPAScalingPolicy {
            type_: "Percent".to_string(),
            value: 100,
            period_seconds: 15,
        }]),
        ..Default::default()
    }
}

/// The behaviour both autoscalers get: the spec's rules, else the defaults above.
pub fn behavior(scaling: &ScalingSpec) -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(scaling.scale_up.clone().unwrap_or_else(default_scale_up)),
        scale_down: Some(
            scaling
                .scale_down
                .clone()
                .unwrap_or_else(default_scale_down),
        ),
    }
}

/// Builds the HPA for an InferenceService whose provider is `hpa`.
pub fn build_hpa(isvc: &InferenceService, scaling: &ScalingSpec) -> HorizontalPodAutoscaler {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    build_hpa_for(
        &name,
        ObjectMeta {
            name: Some(hpa_name(&name)),
            ..child_meta(isvc)
        },
        scaling,
        max_replicas(isvc),
    )
}

/// The HPA of the Deployment `name` (an InferenceService's, or an experiment router's), on the
/// load signal of the pods labelled with that name.
pub fn build_hpa_for(
    name: &str,
    metadata: ObjectMeta,
    scaling: &ScalingSpec,
    max_replicas: u32,
) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata,
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "Deployment".to_string(),
                name: deployment_name(name),
            },
            min_replicas: Some(scaling.min_replicas.max(1) as i32),
            max_replicas: max_replicas as i32,
            metrics: Some(vec![MetricSpec {
                type_: "External".to_string(),
                external: Some(ExternalMetricSource {
                    metric: MetricIdentifier {
                        name: EXTERNAL_METRIC_NAME.to_string(),
                        selector: Some(metric_selector(name)),
                    },
                    // AverageValue divides the metric (the total load) by the current replicas:
                    // desired = ceil(total load / target load per replica).
                    target: MetricTarget {
                        type_: "AverageValue".to_string(),
                        average_value: Some(Quantity(scaling.target_load_per_replica.to_string())),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: Some(behavior(scaling)),
        },
        ..Default::default()
    }
}
