//! The Service in front of the model server: the stable URL clients use.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::child_meta;
use super::labels::selector_labels;
use crate::api::InferenceService;
use crate::config::OperatorConfig;

/// The port clients use.
pub const SERVICE_PORT: i32 = 80;

/// The Service's name (the same as the InferenceService, so the URL is predictable).
pub fn service_name(isvc_name: &str) -> String {
    isvc_name.to_string()
}

/// The in-cluster URL of an InferenceService.
pub fn service_url(isvc_name: &str, namespace: &str, config: &OperatorConfig) -> String {
    format!(
        "http://{}.{namespace}.svc.{}",
        service_name(isvc_name),
        config.cluster_domain
    )
}

/// Builds the Service.
pub fn build_service(isvc: &InferenceService) -> Service {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(&name)),
            ..child_meta(isvc)
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".to_string())),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
