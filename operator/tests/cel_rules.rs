//! Every CEL rule in the CRDs, evaluated client-side with kube's CEL validator on objects it must
//! accept and objects it must reject. The apiserver runs the same rules at admission (the e2e
//! crate checks that against a real kube-apiserver); here each rule is pinned down cheaply.
//!
//! Cases are JSON merge patches (RFC 7386) over a valid base object of each kind, so a case shows
//! exactly the fields it is about.

use std::collections::BTreeSet;

use kube::CustomResourceExt;
use kube::core::cel::{Validator, compile_schema};
use lexserve_operator::api::{Experiment, InferenceService, ShadowDeployment};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Kind {
    InferenceService,
    Experiment,
    ShadowDeployment,
}

fn schema(kind: Kind) -> Value {
    let crd = match kind {
        Kind::InferenceService => InferenceService::crd(),
        Kind::Experiment => Experiment::crd(),
        Kind::ShadowDeployment => ShadowDeployment::crd(),
    };
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the derived CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

fn base(kind: Kind) -> Value {
    match kind {
        Kind::InferenceService => json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "base", "namespace": "default"},
            "spec": {
                "model": {"uri": "file:///models/minilm/model.onnx", "format": "onnx", "task": "embed"}
            }
        }),
        Kind::Experiment => json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "base", "namespace": "default"},
            "spec": {
                "control": "svc-a",
                "variants": [
                    {"name": "control", "inferenceService": "svc-a", "weight": 50},
                    {"name": "candidate", "inferenceService": "svc-b", "weight": 50}
                ],
                "metrics": [
                    {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"builtin": "clicks"}}
                ]
            }
        }),
        Kind::ShadowDeployment => json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "ShadowDeployment",
            "metadata": {"name": "base", "namespace": "default"},
            "spec": {
                "production": "svc-a",
                "candidate": {"model": {"uri": "pvc://models/minilm", "format": "safetensors", "task": "embed"}},
                "comparison": {"mode": "Cosine", "tolerance": 0.01}
            }
        }),
    }
}

/// RFC 7386 JSON merge patch: objects merge, `null` deletes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// The messages of the rules the object violates.
fn violations(kind: Kind, patch: &Value) -> Vec<String> {
    let mut object = base(kind);
    merge(&mut object, patch);
    match Validator::new().validate(&schema(kind), &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

/// One rule: its message, patches it must accept (exercising the rule's condition) and patches
/// it must reject.
struct RuleCase {
    kind: Kind,
    message: &'static str,
    accept: Vec<Value>,
    reject: Vec<Value>,
}

fn spec(value: Value) -> Value {
    json!({ "spec": value })
}

/// A patch setting `spec.monitoring.drift`.
fn drift(value: Value) -> Value {
    spec(json!({ "monitoring": { "drift": value } }))
}

fn cases() -> Vec<RuleCase> {
    use Kind::*;
    vec![
        // InferenceService: spec-level rules.
        RuleCase {
            kind: InferenceService,
            message: "runtime.backend must be onnx when model.format is onnx",
            accept: vec![spec(json!({"runtime": {"backend": "onnx"}}))],
            reject: vec![spec(json!({"runtime": {"backend": "candle"}}))],
        },
        RuleCase {
            kind: InferenceService,
            message: "runtime.backend must be candle when model.format is safetensors or gguf",
            accept: vec![spec(
                json!({"model": {"format": "safetensors"}, "runtime": {"backend": "candle"}}),
            )],
            reject: vec![spec(
                json!({"model": {"format": "safetensors"}, "runtime": {"backend": "onnx"}}),
            )],
        },
        RuleCase {
            kind: InferenceService,
            message: "runtime.generation is only valid when model.task is generate",
            accept: vec![spec(json!({
                "model": {"format": "gguf", "task": "generate"},
                "runtime": {"generation": {"maxConcurrentSequences": 8}}
            }))],
            reject: vec![spec(
                json!({"runtime": {"generation": {"maxConcurrentSequences": 8}}}),
            )],
        },
        RuleCase {
            kind: InferenceService,
            message: "runtime.batching applies to embed and classify; use runtime.generation when model.task is generate",
            accept: vec![spec(
                json!({"runtime": {"batching": {"maxBatchTokens": 4096}}}),
            )],
            reject: vec![spec(json!({
                "model": {"format": "gguf", "task": "generate"},
                "runtime": {"batching": {"maxBatchTokens": 4096}}
            }))],
        },
        RuleCase {
            kind: InferenceService,
            message: "runtime.quantize int8 selects an int8 ONNX file and needs model.format onnx (gguf weights are already quantized; safetensors encoders run in fp32)",
            accept: vec![
                spec(json!({"runtime": {"quantize": "int8"}})),
                spec(
                    json!({"model": {"format": "gguf", "task": "generate"}, "runtime": {"quantize": "none"}}),
                ),
                spec(json!({"model": {"format": "safetensors"}, "runtime": {"quantize": "none"}})),
            ],
            reject: vec![
                spec(json!({
                    "model": {"format": "gguf", "task": "generate"},
                    "runtime": {"quantize": "int8"}
                })),
                spec(json!({"model": {"format": "safetensors"}, "runtime": {"quantize": "int8"}})),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "runtime.generation.speculation.mode draft needs runtime.generation.speculation.draftModel",
            accept: vec![
                spec(json!({
                    "model": {"format": "gguf", "task": "generate"},
                    "runtime": {"generation": {"speculation": {"mode": "draft", "draftModel": {"uri": "hf://org/draft"}}}}
                })),
                spec(json!({
                    "model": {"format": "gguf", "task": "generate"},
                    "runtime": {"generation": {"speculation": {"mode": "ngram"}}}
                })),
            ],
            reject: vec![spec(json!({
                "model": {"format": "gguf", "task": "generate"},
                "runtime": {"generation": {"speculation": {"mode": "draft"}}}
            }))],
        },
        RuleCase {
            kind: InferenceService,
            message: "runtime.generation.speculation.draftModel is only used when speculation.mode is draft",
            accept: vec![spec(json!({
                "model": {"format": "gguf", "task": "generate"},
                "runtime": {"generation": {"speculation": {"mode": "draft", "draftModel": {"uri": "pvc://models/draft.gguf"}}}}
            }))],
            reject: vec![
                spec(json!({
                    "model": {"format": "gguf", "task": "generate"},
                    "runtime": {"generation": {"speculation": {"mode": "ngram", "draftModel": {"uri": "hf://org/draft"}}}}
                })),
                spec(json!({
                    "model": {"format": "gguf", "task": "generate"},
                    "runtime": {"generation": {"speculation": {"draftModel": {"uri": "hf://org/draft"}}}}
                })),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "runtime.generation.speculation.draftModel.uri is an s3:// uri whose bucket is not an S3 bucket name: it must not contain '..' nor be an IP address",
            accept: vec![spec(json!({
                "model": {"format": "gguf", "task": "generate"},
                "runtime": {"generation": {"speculation": {"mode": "draft", "draftModel": {"uri": "s3://models/draft.gguf"}}}}
            }))],
            reject: vec![
                spec(json!({
                    "model": {"format": "gguf", "task": "generate"},
                    "runtime": {"generation": {"speculation": {"mode": "draft", "draftModel": {"uri": "s3://my..bucket/draft.gguf"}}}}
                })),
                spec(json!({
                    "model": {"format": "gguf", "task": "generate"},
                    "runtime": {"generation": {"speculation": {"mode": "draft", "draftModel": {"uri": "s3://10.0.0.1/draft.gguf"}}}}
                })),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "runtime.batching.maxQueueDelay must be at most 1m",
            accept: vec![
                spec(json!({"runtime": {"batching": {"maxQueueDelay": "2ms"}}})),
                spec(json!({"runtime": {"batching": {"maxQueueDelay": "1m"}}})),
            ],
            reject: vec![
                spec(json!({"runtime": {"batching": {"maxQueueDelay": "1m1s"}}})),
                spec(json!({"runtime": {"batching": {"maxQueueDelay": "2h"}}})),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "runtime.shutdownDelay must be at most 2m",
            accept: vec![
                spec(json!({"runtime": {"shutdownDelay": "0s"}})),
                spec(json!({"runtime": {"shutdownDelay": "2m"}})),
            ],
            reject: vec![
                spec(json!({"runtime": {"shutdownDelay": "2m1s"}})),
                spec(json!({"runtime": {"shutdownDelay": "1h"}})),
            ],
        },
        // InferenceService: model rules.
        RuleCase {
            kind: InferenceService,
            message: "model.task generate needs a decoder: model.format must be gguf",
            accept: vec![spec(
                json!({"model": {"format": "gguf", "task": "generate"}}),
            )],
            reject: vec![spec(json!({"model": {"task": "generate"}}))],
        },
        RuleCase {
            kind: InferenceService,
            message: "model.format gguf holds a decoder: model.task must be generate",
            accept: vec![spec(
                json!({"model": {"format": "gguf", "task": "generate"}}),
            )],
            reject: vec![spec(json!({"model": {"format": "gguf", "task": "embed"}}))],
        },
        RuleCase {
            kind: InferenceService,
            message: "model.labels is only valid when model.task is classify",
            accept: vec![spec(
                json!({"model": {"task": "classify", "labels": ["neg", "pos"]}}),
            )],
            reject: vec![spec(
                json!({"model": {"task": "embed", "labels": ["neg", "pos"]}}),
            )],
        },
        RuleCase {
            kind: InferenceService,
            message: "model.tokenizerSha256 pins model.tokenizer: set both",
            accept: vec![spec(
                json!({"model": {"tokenizer": "hf://org/tok", "tokenizerSha256": "a".repeat(64)}}),
            )],
            reject: vec![spec(json!({"model": {"tokenizerSha256": "a".repeat(64)}}))],
        },
        RuleCase {
            kind: InferenceService,
            message: "model.credentialsSecret is only used with s3:// and hf:// URIs",
            accept: vec![
                spec(
                    json!({"model": {"uri": "s3://bucket/model.onnx", "credentialsSecret": {"name": "s3"}}}),
                ),
                spec(
                    json!({"model": {"uri": "hf://org/model", "credentialsSecret": {"name": "hf"}}}),
                ),
            ],
            reject: vec![spec(
                json!({"model": {"credentialsSecret": {"name": "s3"}}}),
            )],
        },
        RuleCase {
            kind: InferenceService,
            message: "model.uri is an s3:// uri whose bucket is not an S3 bucket name: it must not contain '..' nor be an IP address",
            accept: vec![
                spec(json!({"model": {"uri": "s3://my.bucket-1/a/../b..c"}})),
                spec(json!({"model": {"uri": "s3://1.2.3/model.onnx"}})),
                spec(json!({"model": {"uri": "file:///models/10.0.0.1/x"}})),
            ],
            reject: vec![
                spec(json!({"model": {"uri": "s3://169.254.169.254/latest"}})),
                spec(json!({"model": {"uri": "s3://my..bucket/model.onnx"}})),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "model.tokenizer is an s3:// uri whose bucket is not an S3 bucket name: it must not contain '..' nor be an IP address",
            accept: vec![spec(
                json!({"model": {"tokenizer": "s3://bucket/tokenizer.json"}}),
            )],
            reject: vec![spec(
                json!({"model": {"tokenizer": "s3://10.0.0.1/tokenizer.json"}}),
            )],
        },
        RuleCase {
            kind: InferenceService,
            message: "model.pooling applies to embed and classify, not generate",
            accept: vec![spec(json!({"model": {"pooling": "cls"}}))],
            reject: vec![spec(
                json!({"model": {"format": "gguf", "task": "generate", "pooling": "mean"}}),
            )],
        },
        RuleCase {
            kind: InferenceService,
            message: "model.normalize applies to embed and classify, not generate",
            accept: vec![spec(json!({"model": {"normalize": false}}))],
            reject: vec![spec(
                json!({"model": {"format": "gguf", "task": "generate", "normalize": true}}),
            )],
        },
        // InferenceService: GPUs.
        RuleCase {
            kind: InferenceService,
            message: "spec.resources.gpu.resourceName must be nvidia.com/gpu or nvidia.com/mig-<migProfile> when spec.resources.gpu.migProfile is set",
            accept: vec![
                spec(json!({"resources": {"gpu": {"count": 1, "migProfile": "1g.10gb"}}})),
                spec(
                    json!({"resources": {"gpu": {"count": 2, "migProfile": "3g.40gb", "resourceName": "nvidia.com/mig-3g.40gb"}}}),
                ),
            ],
            reject: vec![spec(json!({"resources": {"gpu": {
                "count": 1, "migProfile": "1g.10gb", "resourceName": "nvidia.com/mig-3g.40gb"
            }}}))],
        },
        RuleCase {
            kind: InferenceService,
            message: "spec.resources.gpu.migProfile is an NVIDIA MIG profile and needs an nvidia.com/ resourceName",
            accept: vec![spec(
                json!({"resources": {"gpu": {"count": 1, "migProfile": "2g.20gb"}}}),
            )],
            reject: vec![spec(json!({"resources": {"gpu": {
                "count": 1, "migProfile": "1g.10gb", "resourceName": "amd.com/gpu"
            }}}))],
        },
        RuleCase {
            kind: InferenceService,
            message: "spec.resources.gpu.product selects nodes by the nvidia.com/gpu.product label and needs an nvidia.com/ resourceName",
            accept: vec![
                spec(
                    json!({"resources": {"gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}}}),
                ),
                spec(json!({"resources": {"gpu": {"count": 1, "resourceName": "amd.com/gpu"}}})),
            ],
            reject: vec![spec(json!({"resources": {"gpu": {
                "count": 1, "product": "NVIDIA-H100-80GB-HBM3", "resourceName": "amd.com/gpu"
            }}}))],
        },
        // InferenceService: scaling.
        RuleCase {
            kind: InferenceService,
            message: "spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas",
            accept: vec![
                spec(json!({"scaling": {"provider": "hpa", "minReplicas": 2, "maxReplicas": 2}})),
                spec(json!({"scaling": {"provider": "none", "minReplicas": 3}})),
            ],
            reject: vec![spec(
                json!({"scaling": {"provider": "hpa", "minReplicas": 5, "maxReplicas": 2}}),
            )],
        },
        RuleCase {
            kind: InferenceService,
            message: "spec.scaling.maxReplicas is required when spec.scaling.provider is hpa or keda",
            accept: vec![spec(
                json!({"scaling": {"provider": "keda", "maxReplicas": 4}}),
            )],
            reject: vec![
                spec(json!({"scaling": {"provider": "hpa"}})),
                spec(json!({"scaling": {"provider": "keda"}})),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "spec.scaling.scaleUp and spec.scaling.scaleDown need spec.scaling.provider hpa or keda",
            accept: vec![spec(json!({"scaling": {
                "provider": "hpa", "maxReplicas": 4, "scaleDown": {"stabilizationWindowSeconds": 60}
            }}))],
            reject: vec![spec(
                json!({"scaling": {"provider": "none", "scaleUp": {"stabilizationWindowSeconds": 0}}}),
            )],
        },
        // InferenceService: drift monitoring.
        RuleCase {
            kind: InferenceService,
            message: "spec.monitoring.drift.baseline needs exactly one of window and reference",
            accept: vec![
                drift(json!({"baseline": {"window": "1h"}})),
                drift(json!({"baseline": {"reference": {"name": "sample", "key": "inputs.txt"}}})),
            ],
            reject: vec![
                drift(json!({"baseline": {}})),
                drift(
                    json!({"baseline": {"window": "1h", "reference": {"name": "s", "key": "k"}}}),
                ),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "spec.monitoring.drift.baseline.window must be between 1m and 168h",
            accept: vec![
                drift(json!({"baseline": {"window": "1m"}})),
                drift(json!({"baseline": {"window": "168h"}})),
            ],
            reject: vec![
                drift(json!({"baseline": {"window": "59s"}})),
                drift(json!({"baseline": {"window": "169h"}})),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "spec.monitoring.drift.window must be between 1m and 168h",
            accept: vec![drift(
                json!({"baseline": {"window": "1h"}, "window": "1m", "interval": "30s"}),
            )],
            reject: vec![
                drift(json!({"baseline": {"window": "1h"}, "window": "30s", "interval": "10s"})),
                drift(json!({"baseline": {"window": "1h"}, "window": "200h"})),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "spec.monitoring.drift.interval must be at least 10s and at most the window",
            accept: vec![drift(
                json!({"baseline": {"window": "1h"}, "window": "5m", "interval": "10s"}),
            )],
            reject: vec![
                drift(json!({"baseline": {"window": "1h"}, "window": "5m", "interval": "5s"})),
                drift(json!({"baseline": {"window": "1h"}, "window": "5m", "interval": "6m"})),
            ],
        },
        RuleCase {
            kind: InferenceService,
            message: "spec.monitoring.drift.measures must not repeat a measure",
            accept: vec![drift(
                json!({"baseline": {"window": "1h"}, "measures": ["PSI", "KolmogorovSmirnov"]}),
            )],
            reject: vec![drift(
                json!({"baseline": {"window": "1h"}, "measures": ["PSI", "PSI"]}),
            )],
        },
        RuleCase {
            kind: InferenceService,
            message: "spec.monitoring.drift.features must not repeat a feature",
            accept: vec![drift(
                json!({"baseline": {"window": "1h"}, "features": ["InputTokens", "EmbeddingNorm"]}),
            )],
            reject: vec![drift(
                json!({"baseline": {"window": "1h"}, "features": ["InputTokens", "InputTokens"]}),
            )],
        },
        // Experiment: spec-level rules.
        RuleCase {
            kind: Experiment,
            message: "spec.variants: at least one weight must be greater than zero",
            accept: vec![spec(json!({"variants": [
                {"name": "control", "inferenceService": "svc-a", "weight": 0},
                {"name": "candidate", "inferenceService": "svc-b", "weight": 1}
            ]}))],
            reject: vec![spec(json!({"variants": [
                {"name": "control", "inferenceService": "svc-a", "weight": 0},
                {"name": "candidate", "inferenceService": "svc-b", "weight": 0}
            ]}))],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.variants: variant names must be unique",
            accept: vec![spec(json!({"variants": [
                {"name": "control", "inferenceService": "svc-a", "weight": 1},
                {"name": "b", "inferenceService": "svc-b", "weight": 1},
                {"name": "c", "inferenceService": "svc-b", "weight": 1}
            ]}))],
            reject: vec![spec(json!({"variants": [
                {"name": "control", "inferenceService": "svc-a", "weight": 1},
                {"name": "control", "inferenceService": "svc-b", "weight": 1}
            ]}))],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.variants must contain exactly one variant whose inferenceService is spec.control",
            accept: vec![spec(json!({"control": "svc-b"}))],
            reject: vec![
                spec(json!({"control": "svc-z"})),
                spec(json!({"variants": [
                    {"name": "a", "inferenceService": "svc-a", "weight": 1},
                    {"name": "b", "inferenceService": "svc-a", "weight": 1}
                ]})),
            ],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.metrics must contain exactly one metric with role Primary",
            accept: vec![spec(json!({"metrics": [
                {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"builtin": "clicks"}},
                {"name": "errors", "kind": "Proportion", "role": "Guardrail", "threshold": 0.01, "source": {"builtin": "errors"}}
            ]}))],
            reject: vec![
                spec(json!({"metrics": [
                    {"name": "errors", "kind": "Proportion", "role": "Guardrail", "threshold": 0.01, "source": {"builtin": "errors"}}
                ]})),
                spec(json!({"metrics": [
                    {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"builtin": "clicks"}},
                    {"name": "buys", "kind": "Proportion", "role": "Primary", "source": {"builtin": "buys"}}
                ]})),
            ],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.metrics: metric names must be unique",
            accept: vec![spec(json!({"metrics": [
                {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"builtin": "clicks"}},
                {"name": "clicks-guard", "kind": "Proportion", "role": "Guardrail", "threshold": 0.1, "source": {"builtin": "clicks"}}
            ]}))],
            reject: vec![spec(json!({"metrics": [
                {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"builtin": "clicks"}},
                {"name": "clicks", "kind": "Proportion", "role": "Guardrail", "threshold": 0.1, "source": {"builtin": "clicks"}}
            ]}))],
        },
        // Experiment: assignment.
        RuleCase {
            kind: Experiment,
            message: "spec.assignment.key is required when spec.assignment.by is header, cookie or jsonField",
            accept: vec![
                spec(json!({"assignment": {"by": "header", "key": "x-user-id"}})),
                spec(json!({"assignment": {"by": "jsonField", "key": "user.id", "seed": 7}})),
            ],
            reject: vec![
                spec(json!({"assignment": {"by": "cookie"}})),
                spec(json!({"assignment": {"by": "header"}})),
            ],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.assignment.key must not be set when spec.assignment.by is random",
            accept: vec![spec(json!({"assignment": {"by": "random", "seed": 3}}))],
            reject: vec![spec(
                json!({"assignment": {"by": "random", "key": "x-user-id"}}),
            )],
        },
        // Experiment: routing.
        RuleCase {
            kind: Experiment,
            message: "spec.routing.gatewayAPI is required when spec.routing.provider is gatewayAPI",
            accept: vec![
                spec(json!({"routing": {"provider": "router"}})),
                spec(json!({"routing": {"provider": "gatewayAPI", "gatewayAPI": {
                    "parentRefs": [{"name": "public"}]
                }}})),
            ],
            reject: vec![spec(json!({"routing": {"provider": "gatewayAPI"}}))],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.routing.gatewayAPI must not be set unless spec.routing.provider is gatewayAPI",
            accept: vec![spec(
                json!({"routing": {"provider": "gatewayAPI", "gatewayAPI": {
                    "parentRefs": [{"name": "public", "namespace": "gateways"}]
                }}}),
            )],
            reject: vec![spec(
                json!({"routing": {"provider": "router", "gatewayAPI": {
                    "parentRefs": [{"name": "public"}]
                }}}),
            )],
        },
        // Experiment: metrics.
        RuleCase {
            kind: Experiment,
            message: "spec.metrics[].threshold is required for a Guardrail metric",
            accept: vec![spec(json!({"metrics": [
                {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"builtin": "clicks"}},
                {"name": "errors", "kind": "Proportion", "role": "Guardrail", "threshold": 0.0, "source": {"builtin": "errors"}}
            ]}))],
            reject: vec![spec(json!({"metrics": [
                {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"builtin": "clicks"}},
                {"name": "errors", "kind": "Proportion", "role": "Guardrail", "source": {"builtin": "errors"}}
            ]}))],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.metrics[].source must set exactly one of builtin and prometheus",
            accept: vec![spec(json!({"metrics": [
                {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"prometheus": {
                    "count": "sum(x{variant=\"{{variant}}\"})", "sum": "sum(y{variant=\"{{variant}}\"})"
                }}}
            ]}))],
            reject: vec![
                spec(json!({"metrics": [
                    {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {}}
                ]})),
                spec(json!({"metrics": [
                    {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"builtin": "clicks", "prometheus": {
                        "count": "sum(x{variant=\"{{variant}}\"})", "sum": "sum(y{variant=\"{{variant}}\"})"
                    }}}
                ]})),
            ],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.metrics[].source.prometheus.sumSquares is required for a Mean metric",
            accept: vec![spec(json!({"metrics": [
                {"name": "latency", "kind": "Mean", "role": "Primary", "source": {"prometheus": {
                    "count": "c{v=\"{{variant}}\"}", "sum": "s{v=\"{{variant}}\"}", "sumSquares": "q{v=\"{{variant}}\"}"
                }}}
            ]}))],
            reject: vec![spec(json!({"metrics": [
                {"name": "latency", "kind": "Mean", "role": "Primary", "source": {"prometheus": {
                    "count": "c{v=\"{{variant}}\"}", "sum": "s{v=\"{{variant}}\"}"
                }}}
            ]}))],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.metrics[].source.prometheus queries must contain the {{variant}} placeholder",
            accept: vec![spec(json!({"metrics": [
                {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"prometheus": {
                    "count": "c{v=\"{{variant}}\"}", "sum": "s{v=\"{{variant}}\"}"
                }}}
            ]}))],
            reject: vec![
                spec(json!({"metrics": [
                    {"name": "clicks", "kind": "Proportion", "role": "Primary", "source": {"prometheus": {
                        "count": "sum(c)", "sum": "s{v=\"{{variant}}\"}"
                    }}}
                ]})),
                spec(json!({"metrics": [
                    {"name": "latency", "kind": "Mean", "role": "Primary", "source": {"prometheus": {
                        "count": "c{v=\"{{variant}}\"}", "sum": "s{v=\"{{variant}}\"}", "sumSquares": "sum(q)"
                    }}}
                ]})),
            ],
        },
        // Experiment: analysis.
        RuleCase {
            kind: Experiment,
            message: "spec.analysis.minDuration must be less than or equal to spec.analysis.maxDuration",
            accept: vec![spec(
                json!({"analysis": {"minDuration": "2h", "maxDuration": "2h"}}),
            )],
            reject: vec![spec(
                json!({"analysis": {"minDuration": "3h", "maxDuration": "90m"}}),
            )],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.analysis.interval must be less than or equal to spec.analysis.maxDuration",
            accept: vec![spec(
                json!({"analysis": {"interval": "30s", "minDuration": "1m", "maxDuration": "10m"}}),
            )],
            reject: vec![spec(
                json!({"analysis": {"interval": "2h", "minDuration": "1m", "maxDuration": "1h"}}),
            )],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.analysis.alpha must be greater than 0 and less than 0.5",
            accept: vec![spec(json!({"analysis": {"alpha": 0.01}}))],
            reject: vec![
                spec(json!({"analysis": {"alpha": 0.0}})),
                spec(json!({"analysis": {"alpha": 0.5}})),
            ],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.analysis.power must be greater than 0.5 and less than 1",
            accept: vec![spec(json!({"analysis": {"power": 0.9}}))],
            reject: vec![
                spec(json!({"analysis": {"power": 1.0}})),
                spec(json!({"analysis": {"power": 0.2}})),
            ],
        },
        RuleCase {
            kind: Experiment,
            message: "spec.analysis.minimumDetectableEffect must be greater than 0",
            accept: vec![spec(json!({"analysis": {"minimumDetectableEffect": 0.01}}))],
            reject: vec![spec(json!({"analysis": {"minimumDetectableEffect": 0.0}}))],
        },
        // ShadowDeployment: spec-level rules.
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.comparison.mode Cosine compares embeddings: spec.candidate.model.task must be embed",
            accept: vec![spec(json!({"comparison": {"mode": "Cosine"}}))],
            reject: vec![spec(json!({
                "candidate": {"model": {"task": "classify"}},
                "comparison": {"mode": "Cosine"}
            }))],
        },
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.comparison.mode Label and TopK compare classifications: spec.candidate.model.task must be classify",
            accept: vec![
                spec(
                    json!({"candidate": {"model": {"task": "classify"}}, "comparison": {"mode": "Label", "tolerance": null}}),
                ),
                spec(
                    json!({"candidate": {"model": {"task": "classify"}}, "comparison": {"mode": "TopK", "k": 3}}),
                ),
            ],
            reject: vec![
                spec(json!({"comparison": {"mode": "Label", "tolerance": null}})),
                spec(json!({"comparison": {"mode": "TopK", "k": 3}})),
            ],
        },
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.comparison.mode Text compares generations: spec.candidate.model.task must be generate",
            accept: vec![spec(json!({
                "candidate": {"model": {"format": "gguf", "task": "generate"}},
                "comparison": {"mode": "Text", "tolerance": 0.1}
            }))],
            reject: vec![spec(json!({"comparison": {"mode": "Text"}}))],
        },
        // ShadowDeployment: comparison.
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.comparison.k is required when spec.comparison.mode is TopK",
            accept: vec![spec(
                json!({"candidate": {"model": {"task": "classify"}}, "comparison": {"mode": "TopK", "k": 5}}),
            )],
            reject: vec![spec(
                json!({"candidate": {"model": {"task": "classify"}}, "comparison": {"mode": "TopK"}}),
            )],
        },
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.comparison.k is only valid when spec.comparison.mode is TopK",
            accept: vec![spec(json!({"comparison": {"mode": "Cosine"}}))],
            reject: vec![spec(json!({"comparison": {"mode": "Cosine", "k": 5}}))],
        },
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.comparison.tolerance must be between 0 and 1",
            accept: vec![
                spec(json!({"comparison": {"tolerance": 0.0}})),
                spec(json!({"comparison": {"tolerance": 1.0}})),
            ],
            reject: vec![
                spec(json!({"comparison": {"tolerance": -0.1}})),
                spec(json!({"comparison": {"tolerance": 1.5}})),
            ],
        },
        // ShadowDeployment: redaction.
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.redaction needs at least one of fields or patterns",
            accept: vec![
                spec(json!({"redaction": {"fields": ["user.email"]}})),
                spec(json!({"redaction": {"patterns": ["[0-9]{3}-[0-9]{4}"]}})),
            ],
            reject: vec![
                spec(json!({"redaction": {}})),
                spec(json!({"redaction": {"fields": [], "patterns": []}})),
            ],
        },
        // ShadowDeployment: criteria.
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.criteria.minAgreement must be between 0 and 1",
            accept: vec![spec(json!({"criteria": {"minAgreement": 0.999}}))],
            reject: vec![spec(json!({"criteria": {"minAgreement": 1.2}}))],
        },
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.criteria.maxLatencyRatio must be greater than 0",
            accept: vec![spec(json!({"criteria": {"maxLatencyRatio": 0.8}}))],
            reject: vec![spec(json!({"criteria": {"maxLatencyRatio": 0.0}}))],
        },
        RuleCase {
            kind: ShadowDeployment,
            message: "spec.criteria.maxErrorRate must be between 0 and 1",
            accept: vec![spec(json!({"criteria": {"maxErrorRate": 0.0}}))],
            reject: vec![spec(json!({"criteria": {"maxErrorRate": 2.0}}))],
        },
    ]
}

#[test]
fn base_objects_are_valid() {
    for kind in [
        Kind::InferenceService,
        Kind::Experiment,
        Kind::ShadowDeployment,
    ] {
        assert_eq!(
            violations(kind, &json!({})),
            Vec::<String>::new(),
            "{kind:?}"
        );
    }
}

#[test]
fn each_rule_accepts_what_it_should() {
    for case in cases() {
        for patch in &case.accept {
            let found = violations(case.kind, patch);
            assert!(
                found.is_empty(),
                "{:?} rule `{}` rejected {patch}: {found:?}",
                case.kind,
                case.message
            );
        }
    }
}

#[test]
fn each_rule_rejects_what_it_should_with_its_message() {
    for case in cases() {
        for patch in &case.reject {
            let found = violations(case.kind, patch);
            assert!(
                found.iter().any(|m| m == case.message),
                "{:?} rule `{}` did not reject {patch}; violations: {found:?}",
                case.kind,
                case.message
            );
        }
    }
}

/// Collects every `x-kubernetes-validations` message in a schema tree.
fn rule_messages(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                for rule in rules {
                    let message = rule["message"].as_str().expect("every rule has a message");
                    out.insert(message.to_string());
                }
            }
            map.values().for_each(|v| rule_messages(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| rule_messages(v, out)),
        _ => {}
    }
}

#[test]
fn every_rule_in_the_crds_has_an_accept_and_a_reject_case() {
    let mut in_crds = BTreeSet::new();
    for kind in [
        Kind::InferenceService,
        Kind::Experiment,
        Kind::ShadowDeployment,
    ] {
        rule_messages(&schema(kind), &mut in_crds);
    }
    let tested: BTreeSet<String> = cases()
        .iter()
        .filter(|c| !c.accept.is_empty() && !c.reject.is_empty())
        .map(|c| c.message.to_string())
        .collect();
    let untested: Vec<_> = in_crds.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "rules without accept and reject cases: {untested:#?}"
    );
    let stale: Vec<_> = tested.difference(&in_crds).collect();
    assert!(
        stale.is_empty(),
        "cases for rules that no longer exist: {stale:#?}"
    );
}

#[test]
fn every_rule_compiles() {
    for kind in [
        Kind::InferenceService,
        Kind::Experiment,
        Kind::ShadowDeployment,
    ] {
        let compiled = compile_schema(&schema(kind));
        let errors = compiled.compilation_errors();
        assert!(errors.is_empty(), "{kind:?}: {errors:?}");
    }
}
