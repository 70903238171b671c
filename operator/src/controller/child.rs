//! A child in kind-neutral form: what the apply, the drift check and the orphan sweep need to
//! know of any child, whatever its kind.

use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::ApiResource;
use kube::core::Resource;
use serde::Serialize;

use crate::resources::hash::stable_hash;
use crate::resources::scaled_object::scaled_object_resource;

/// The kinds of child the operator builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    ConfigMap,
    Service,
    Deployment,
    PodDisruptionBudget,
    HorizontalPodAutoscaler,
    /// KEDA's `keda.sh/v1alpha1` ScaledObject, present only where KEDA's CRD is installed.
    ScaledObject,
    /// Gateway API's `gateway.networking.k8s.io/v1` HTTPRoute (an Experiment with
    /// `routing.provider: gatewayAPI`), present only where Gateway API's CRDs are installed.
    HttpRoute,
}

impl ChildKind {
    /// Every kind, in the order children are applied: what a Deployment mounts and what
    /// selects its pods first, the autoscalers that target it last.
    pub const ALL: [ChildKind; 7] = [
        ChildKind::ConfigMap,
        ChildKind::Service,
        ChildKind::Deployment,
        ChildKind::PodDisruptionBudget,
        ChildKind::HorizontalPodAutoscaler,
        ChildKind::ScaledObject,
        ChildKind::HttpRoute,
    ];

    /// The `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildKind::ConfigMap => "ConfigMap",
            ChildKind::Service => "Service",
            ChildKind::Deployment => "Deployment",
            ChildKind::PodDisruptionBudget => "PodDisruptionBudget",
            ChildKind::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            ChildKind::ScaledObject => "ScaledObject",
            ChildKind::HttpRoute => "HTTPRoute",
        }
    }

    /// Where the apiserver serves the kind.
    pub fn api_resource(self) -> ApiResource {
        match self {
            ChildKind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            ChildKind::Service => ApiResource::erase::<Service>(&()),
            ChildKind::Deployment => ApiResource::erase::<Deployment>(&()),
            ChildKind::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
            ChildKind::HorizontalPodAutoscaler => {
                ApiResource::erase::<HorizontalPodAutoscaler>(&())
            }
            ChildKind::ScaledObject => scaled_object_resource(),
            ChildKind::HttpRoute => crate::resources::http_route::http_route_resource(),
        }
    }
}

impl fmt::Display for ChildKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A child as a builder made it, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredChild {
    pub kind: ChildKind,
    pub name: String,
    /// The object as it is sent to the apiserver.
    pub object: serde_json::Value,
    /// [`stable_hash`] of the typed object, stored on the child: a child whose stored hash
    /// differs was built from another spec.
    pub hash: String,
}

impl DesiredChild {
    /// A typed child, serialized. Kubernetes types always serialize (their maps have string
    /// keys), so a failure is a bug in a builder: it becomes `null`, which the apiserver
    /// rejects, and the rejection is reported on the object.
    pub fn new<K: Resource + Serialize>(kind: ChildKind, object: &K) -> Self {
        Self {
            kind,
            name: object.name_any(),
            object: serde_json::to_value(object).unwrap_or_default(),
            hash: stable_hash(object),
        }
    }
}

/// A child the apiserver refused (422).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: ChildKind,
    pub name: String,
    /// The apiserver's message.
    pub message: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the apiserver rejected {} {}: {}",
            self.kind, self.name, self.message
        )
    }
}
