//! The labels and annotations every child carries.

use std::collections::BTreeMap;

/// Names the InferenceService a pod or child belongs to. Prometheus relabels it to the
/// `inference_service` label that the autoscaling queries select on.
pub const INFERENCE_SERVICE_LABEL: &str =
    lexserve_contract::names::label::INFERENCE_SERVICE_POD_LABEL;
/// The component of an InferenceService a child is (`model-server`).
pub const COMPONENT_LABEL: &str = "lexserve.io/component";
/// Hash of the desired child, compared before applying so that an unchanged object causes no
/// write.
pub const SPEC_HASH_ANNOTATION: &str = "lexserve.io/spec-hash";
/// Hash of the sidecar config on the pod template, so that a config change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "lexserve.io/config-hash";
/// The recommended label naming the tool that manages an object; on every child, so that the
/// watches select only children and the orphan sweep touches only what lexserve made.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "lexserve-operator";

/// The labels that select an InferenceService's pods. Stable for the object's life: a
/// Deployment's selector is immutable.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INFERENCE_SERVICE_LABEL.to_string(), name.to_string()),
        (COMPONENT_LABEL.to_string(), "model-server".to_string()),
    ])
}

/// The labels of every child: the selector labels plus the recommended `app.kubernetes.io`
/// ones.
pub fn common_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert(
        "app.kubernetes.io/name".to_string(),
        "lexserve-sidecar".to_string(),
    );
    labels.insert("app.kubernetes.io/instance".to_string(), name.to_string());
    labels.insert(MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string());
    labels
}
