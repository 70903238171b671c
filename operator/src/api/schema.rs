//! Schema fragments shared by the kinds: patterns and pass-through objects.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A Go-style duration as Kubernetes CEL's `duration()` parses it ("30s", "10m", "1h30m").
/// Days are not accepted because `duration()` does not accept them either.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A model or tokenizer location: the schemes the `fetch` init container understands.
pub const MODEL_URI_PATTERN: &str = r"^(file|pvc|s3|hf)://.+$";

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
