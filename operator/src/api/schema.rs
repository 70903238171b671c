//! Schema fragments shared by the kinds: patterns and pass-through objects.

use schemars::{Schema, SchemaGenerator, json_schema};

pub use lexserve_contract::duration::DURATION_PATTERN;
pub use lexserve_contract::uri::MODEL_URI_PATTERN;

/// A DNS-1123 label: the names that become parts of Kubernetes object names and labels.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// An object whose fields are passed through to Kubernetes unchanged (for example a pod's
/// affinity). Inlining the full upstream schema would add tens of KiB to the CRD for a value the
/// apiserver validates anyway when the operator applies the Deployment.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
