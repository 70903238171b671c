//! The CEL rules (`x-kubernetes-validations`) that involve only the contract's blocks, so that the
//! apiserver refuses at admission what the sidecar would refuse at start.
//!
//! They are schema transforms: [`model_rules`] is attached to [`crate::ModelSpec`] itself;
//! [`add_serving_rules`] is attached by the operator to each object that holds a `model` and a
//! `runtime` side by side (an InferenceService's spec, a ShadowDeployment's candidate). Messages
//! name fields relative to that object (`runtime.backend`), since it is not always `spec`.

use schemars::Schema;
use serde_json::{Value, json};

use crate::runtime::defaults::{MAX_QUEUE_DELAY_BOUND_TEXT, MAX_SHUTDOWN_DELAY_BOUND_TEXT};
use crate::uri::MODEL_URI_REFUSED_PATTERN;

/// Rules on `model` alone.
pub const MODEL_RULES: &[(&str, &str)] = &[
    (
        "self.task != 'generate' || self.format == 'gguf'",
        "model.task generate needs a decoder: model.format must be gguf",
    ),
    (
        "self.format != 'gguf' || self.task == 'generate'",
        "model.format gguf holds a decoder: model.task must be generate",
    ),
    (
        "!has(self.labels) || self.task == 'classify'",
        "model.labels is only valid when model.task is classify",
    ),
    (
        "!has(self.credentialsSecret) || self.uri.startsWith('s3://') || self.uri.startsWith('hf://')",
        "model.credentialsSecret is only used with s3:// and hf:// URIs",
    ),
    (
        "!has(self.tokenizerSha256) || has(self.tokenizer)",
        "model.tokenizerSha256 pins model.tokenizer: set both",
    ),
    (
        "!has(self.pooling) || self.task != 'generate'",
        "model.pooling applies to embed and classify, not generate",
    ),
    (
        "!has(self.normalize) || self.task != 'generate'",
        "model.normalize applies to embed and classify, not generate",
    ),
];

/// Rules across `model` and `runtime`, on the object that holds both.
pub const SERVING_RULES: &[(&str, &str)] = &[
    (
        "!has(self.runtime) || !has(self.runtime.backend) || self.model.format != 'onnx' || self.runtime.backend == 'onnx'",
        "runtime.backend must be onnx when model.format is onnx",
    ),
    (
        "!has(self.runtime) || !has(self.runtime.backend) || self.model.format == 'onnx' || self.runtime.backend == 'candle'",
        "runtime.backend must be candle when model.format is safetensors or gguf",
    ),
    (
        "!has(self.runtime) || !has(self.runtime.generation) || self.model.task == 'generate'",
        "runtime.generation is only valid when model.task is generate",
    ),
    (
        "!has(self.runtime) || !has(self.runtime.batching) || self.model.task != 'generate'",
        "runtime.batching applies to embed and classify; use runtime.generation when model.task is generate",
    ),
    (
        "!has(self.runtime) || !has(self.runtime.quantize) || self.runtime.quantize == 'none' || self.model.format == 'onnx'",
        "runtime.quantize int8 selects an int8 ONNX file and needs model.format onnx (gguf weights are already quantized; safetensors encoders run in fp32)",
    ),
];

/// The rule on `runtime.batching.maxQueueDelay`: CEL's `duration()` reads it as the sidecar does,
/// and a batch that waits longer than this for company is a mistake, not a setting.
pub fn max_queue_delay_rule() -> (String, String) {
    (
        format!("duration(self) <= duration('{MAX_QUEUE_DELAY_BOUND_TEXT}')"),
        format!("runtime.batching.maxQueueDelay must be at most {MAX_QUEUE_DELAY_BOUND_TEXT}"),
    )
}

/// The rule on `runtime.shutdownDelay`: the grace period of every pod grows by it.
pub fn shutdown_delay_rule() -> (String, String) {
    (
        format!("duration(self) <= duration('{MAX_SHUTDOWN_DELAY_BOUND_TEXT}')"),
        format!("runtime.shutdownDelay must be at most {MAX_SHUTDOWN_DELAY_BOUND_TEXT}"),
    )
}

/// Appends rules to a schema's `x-kubernetes-validations`.
fn append(schema: &mut Schema, rules: impl IntoIterator<Item = (String, String)>) {
    let object = schema.ensure_object();
    let list = object
        .entry("x-kubernetes-validations")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        list.extend(
            rules
                .into_iter()
                .map(|(rule, message)| json!({"rule": rule, "message": message})),
        );
    }
}

fn owned(rules: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    rules.iter().map(|(r, m)| (r.to_string(), m.to_string()))
}

/// The part of the model URI grammar an RE2 `pattern` cannot say (an S3 bucket with `..` or in IP
/// address form; see [`MODEL_URI_REFUSED_PATTERN`]), for `uri` and `tokenizer`.
pub fn uri_rules() -> [(String, String); 2] {
    let message = "is an s3:// uri whose bucket is not an S3 bucket name: it must not contain '..' nor be an IP address";
    [
        (
            format!("!self.uri.matches('{MODEL_URI_REFUSED_PATTERN}')"),
            format!("model.uri {message}"),
        ),
        (
            format!(
                "!has(self.tokenizer) || !self.tokenizer.matches('{MODEL_URI_REFUSED_PATTERN}')"
            ),
            format!("model.tokenizer {message}"),
        ),
    ]
}

/// Schema transform for [`crate::ModelSpec`].
pub fn model_rules(schema: &mut Schema) {
    append(schema, owned(MODEL_RULES));
    append(schema, uri_rules());
}

/// Schema transform for an object with `model` and `runtime` fields.
pub fn add_serving_rules(schema: &mut Schema) {
    append(schema, owned(SERVING_RULES));
}

/// Rules on `runtime.generation.speculation`: a draft model exactly when mode `draft` asks for one.
pub const SPECULATION_RULES: &[(&str, &str)] = &[
    (
        "!has(self.mode) || self.mode != 'draft' || has(self.draftModel)",
        "runtime.generation.speculation.mode draft needs runtime.generation.speculation.draftModel",
    ),
    (
        "!has(self.draftModel) || (has(self.mode) && self.mode == 'draft')",
        "runtime.generation.speculation.draftModel is only used when speculation.mode is draft",
    ),
];

/// Schema transform for `runtime.generation.speculation`.
pub fn speculation_rules(schema: &mut Schema) {
    append(schema, owned(SPECULATION_RULES));
}

/// Schema transform for `runtime.generation.speculation.draftModel`: the S3 bucket rule of
/// [`uri_rules`] on its `uri`.
pub fn draft_model_rules(schema: &mut Schema) {
    append(
        schema,
        [(
            format!("!self.uri.matches('{MODEL_URI_REFUSED_PATTERN}')"),
            "runtime.generation.speculation.draftModel.uri is an s3:// uri whose bucket is not an S3 bucket name: it must not contain '..' nor be an IP address".to_string(),
        )],
    );
}

/// Schema transform for `runtime.batching.maxQueueDelay`.
pub fn queue_delay_rules(schema: &mut Schema) {
    append(schema, [max_queue_delay_rule()]);
}

/// Schema transform for `runtime.shutdownDelay`.
pub fn shutdown_delay_rules(schema: &mut Schema) {
    append(schema, [shutdown_delay_rule()]);
}
