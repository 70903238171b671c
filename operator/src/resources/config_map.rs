//! The ConfigMap holding the sidecar's config file: the InferenceService's `model` and `runtime`
//! blocks, unchanged, so that `lexserve-sidecar serve --config` reads exactly what the user wrote.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use serde::Serialize;
use std::collections::BTreeMap;

use super::{child_meta, hash::stable_hash};
use crate::api::InferenceService;
use crate::api::inference_service::{ModelSpec, RuntimeSpec};
use lexserve_contract::mirror::{CONFIG_FILE as MIRROR_FILE, MirrorConfig};

/// The key of the config file in the ConfigMap, and its file name in the pod.
pub use lexserve_contract::names::path::CONFIG_FILE;

/// The sidecar's config file.
#[derive(Serialize)]
struct SidecarConfig<'a> {
    model: &'a ModelSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<&'a RuntimeSpec>,
}

/// The config file's text for an InferenceService.
pub fn sidecar_config_yaml(isvc: &InferenceService) -> String {
    serving_config_yaml(&isvc.spec.model, isvc.spec.runtime.as_ref())
}

/// The config file's text for any object that runs a model (an InferenceService, a shadow's
/// candidate): the two blocks, unchanged.
pub fn serving_config_yaml(model: &ModelSpec, runtime: Option<&RuntimeSpec>) -> String {
    // Serializing plain data with owned strings cannot fail.
    serde_yaml::to_string(&SidecarConfig { model, runtime }).unwrap_or_default()
}

/// The ConfigMap's name for an InferenceService.
pub fn config_map_name(isvc_name: &str) -> String {
    format!("{isvc_name}-sidecar")
}

/// Builds the ConfigMap. `mirror` is the mirror configuration of the shadows that name this
/// service (see `controller::shadow::mirror`): a second key, re-read by the sidecar without a
/// restart and left out of [`config_hash`]; absent when nothing is or was mirrored.
pub fn build_config_map(isvc: &InferenceService, mirror: Option<&MirrorConfig>) -> ConfigMap {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let mut data = BTreeMap::from([(CONFIG_FILE.to_string(), sidecar_config_yaml(isvc))]);
    if let Some(mirror) = mirror {
        // Serializing plain data with owned strings cannot fail.
        data.insert(
            MIRROR_FILE.to_string(),
            serde_yaml::to_string(mirror).unwrap_or_default(),
        );
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&name)),
            ..child_meta(isvc)
        },
        data: Some(data),
        ..Default::default()
    }
}

/// A hash of the config, put on the pod template so that a config change rolls the pods
/// (a mounted ConfigMap changes in place, but the sidecar reads it once at start).
pub fn config_hash(isvc: &InferenceService) -> String {
    stable_hash(&sidecar_config_yaml(isvc))
}
