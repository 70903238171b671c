//! The builders' outputs, field by field.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::labels::{CONFIG_HASH_ANNOTATION, INFERENCE_SERVICE_LABEL};
use super::load_query::EXTERNAL_METRIC_NAME;
use super::*;
use crate::api::InferenceService;
use crate::config::OperatorConfig;
use crate::gpu::RolloutPlan;

fn isvc(spec: serde_json::Value) -> InferenceService {
    let mut object: InferenceService = serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "minilm", "namespace": "team-a", "uid": "1234", "generation": 3},
        "spec": spec,
    }))
    .expect("valid InferenceService");
    object.metadata.uid = Some("1234".to_string());
    object
}

fn embedder() -> serde_json::Value {
    json!({"model": {"uri": "pvc://models/minilm/model.onnx", "format": "onnx", "task": "embed"}})
}

fn with(mut base: serde_json::Value, patch: serde_json::Value) -> serde_json::Value {
    for (k, v) in patch.as_object().expect("object patch") {
        base[k] = v.clone();
    }
    base
}

fn children(spec: serde_json::Value) -> Children {
    build_children(&isvc(spec), &OperatorConfig::default(), RolloutPlan::Surge)
}

fn pod_spec(c: &Children) -> &PodSpec {
    c.deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

/// The pod template's metadata.
fn pod_meta(c: &Children) -> &ObjectMeta {
    c.deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .expect("pod template metadata")
}

fn sidecar(c: &Children) -> &Container {
    &pod_spec(c).containers[0]
}

#[test]
fn every_child_is_owned_by_the_inference_service() {
    let c = children(with(
        embedder(),
        json!({"scaling": {"provider": "hpa", "minReplicas": 2, "maxReplicas": 4}}),
    ));
    let metas = [
        &c.config_map.metadata,
        &c.deployment.metadata,
        &c.service.metadata,
        &c.pdb.as_ref().expect("pdb").metadata,
        &c.hpa.as_ref().expect("hpa").metadata,
    ];
    for meta in metas {
        let owners = meta.owner_references.as_ref().expect("owner references");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "InferenceService");
        assert_eq!(owners[0].name, "minilm");
        assert_eq!(owners[0].uid, "1234");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            meta.labels
                .as_ref()
                .and_then(|l| l.get(INFERENCE_SERVICE_LABEL))
                .map(String::as_str),
            Some("minilm")
        );
    }
}

#[test]
fn config_map_holds_model_and_runtime_unchanged() {
    let c = children(with(
        embedder(),
        json!({"runtime": {"threads": 2, "batching": {"maxBatchTokens": 4096, "maxQueueDelay": "2ms"}, "generation": {"prefixCache": false}}}),
    ));
    let text = &c.config_map.data.as_ref().expect("data")["config.yaml"];
    let parsed: serde_json::Value = serde_yaml::from_str(text).expect("YAML");
    assert_eq!(
        parsed,
        json!({
            "model": {"uri": "pvc://models/minilm/model.onnx", "format": "onnx", "task": "embed"},
            "runtime": {"threads": 2, "batching": {"maxBatchTokens": 4096, "maxQueueDelay": "2ms"}, "generation": {"prefixCache": false}}
        })
    );
    assert_eq!(
        c.config_map.metadata.name.as_deref(),
        Some("minilm-sidecar")
    );
}

/// `runtime.generation` reaches the sidecar's config file as written, the KV cache's dtype included.
#[test]
fn the_generation_block_reaches_the_sidecar_unchanged() {
    let generation = json!({"kvCacheMemory": "64Mi", "kvCacheDtype": "f32", "maxNewTokens": 32});
    let model =
        json!({"uri": "pvc://models/smollm2/model.gguf", "format": "gguf", "task": "generate"});
    let c = children(json!({"model": model, "runtime": {"generation": generation}}));
    let text = &c.config_map.data.as_ref().expect("data")["config.yaml"];
    let parsed: serde_json::Value = serde_yaml::from_str(text).expect("YAML");
    assert_eq!(parsed["runtime"]["generation"], generation, "{text}");
}

#[test]
fn generation_speculation_reaches_the_sidecar_config() {
    let generation =
        json!({"maxNewTokens": 64, "speculation": {"mode": "none", "maxDraftTokens": 6}});
    let c = children(json!({
        "model": {"uri": "file:///models/smollm2.gguf", "format": "gguf", "task": "generate"},
        "runtime": {"generation": generation.clone()},
    }));
    let text = &c.config_map.data.as_ref().expect("data")["config.yaml"];
    let parsed: serde_json::Value = serde_yaml::from_str(text).expect("YAML");
    assert_eq!(parsed["runtime"]["generation"], generation, "{text}");
}

/// Speculation mode `draft`: the draft model gets its own fetch init container (its digest checked,
/// an `hf://` repository's GGUF picked, never a pinned revision: the draft changes no answer), the
/// sidecar is pointed at the fetched copy, and the model volume makes room for it. Without mode
/// `draft` nothing of it appears.
#[test]
fn a_draft_model_is_fetched_beside_the_model_and_handed_to_the_sidecar() {
    let draft_sha = "d".repeat(64);
    let spec = |mode: &str, draft_size: Option<&str>| {
        let mut draft = json!({"uri": "hf://org/smollm2-draft", "sha256": draft_sha});
        if let Some(size) = draft_size {
            draft["size"] = json!(size);
        }
        json!({
            "model": {"uri": "hf://org/smollm2", "format": "gguf", "task": "generate", "size": "100Mi"},
            "runtime": {"generation": {"speculation": {"mode": mode, "draftModel": draft}}},
        })
    };
    let status = json!({"model": {
        "uri": "hf://org/smollm2", "digest": "e".repeat(64), "revision": "1111111111111111111111111111111111111111",
    }});
    let mut object = isvc(spec("draft", None));
    object.status = Some(serde_json::from_value(status).expect("status"));
    let c = build_children(&object, &OperatorConfig::default(), RolloutPlan::Surge);
    let args = fetch_args(&c, "fetch-draft-model");
    assert_eq!(
        arg_value(&args, "--uri").as_deref(),
        Some("hf://org/smollm2-draft")
    );
    assert_eq!(
        arg_value(&args, "--dest").as_deref(),
        Some("/var/lib/lexserve/models/draft")
    );
    assert_eq!(
        arg_value(&args, "--sha256").as_deref(),
        Some(draft_sha.as_str())
    );
    assert_eq!(arg_value(&args, "--model-format").as_deref(), Some("gguf"));
    assert_eq!(
        arg_value(&args, "--revision"),
        None,
        "the draft is not pinned"
    );
    assert!(
        arg_value(&fetch_args(&c, "fetch-model"), "--revision").is_some(),
        "the model still is"
    );
    let env = sidecar(&c).env.clone().expect("env");
    assert_eq!(
        env.iter()
            .find(|e| e.name == "LEXSERVE_DRAFT_MODEL_URI")
            .and_then(|e| e.value.clone())
            .as_deref(),
        Some("file:///var/lib/lexserve/models/draft")
    );
    let text = &c.config_map.data.as_ref().expect("data")["config.yaml"];
    let parsed: serde_json::Value = serde_yaml::from_str(text).expect("YAML");
    assert_eq!(
        parsed["runtime"]["generation"]["speculation"]["draftModel"]["sha256"],
        json!(draft_sha),
        "{text}"
    );
    // Twice the model and twice the draft (the model's size when it names none), plus 256Mi.
    assert_eq!(
        models_volume(&c).size_limit.map(|q| q.0).as_deref(),
        Some("656Mi")
    );
    let c = children(spec("draft", Some("20Mi")));
    assert_eq!(
        models_volume(&c).size_limit.map(|q| q.0).as_deref(),
        Some("496Mi")
    );

    let c = children(spec("ngram", Some("20Mi")));
    let inits = pod_spec(&c).init_containers.clone().expect("inits");
    assert!(inits.iter().all(|i| i.name != "fetch-draft-model"));
    assert!(
        sidecar(&c)
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "LEXSERVE_DRAFT_MODEL_URI")
    );
    assert_eq!(
        models_volume(&c).size_limit.map(|q| q.0).as_deref(),
        Some("456Mi")
    );
}

#[test]
fn config_change_changes_the_pod_template_hash() {
    let a = children(embedder());
    let b = children(with(embedder(), json!({"runtime": {"threads": 4}})));
    let hash = |c: &Children| {
        pod_meta(c).annotations.as_ref().expect("annotations")[CONFIG_HASH_ANNOTATION].clone()
    };
    assert_ne!(hash(&a), hash(&b));
    assert_eq!(hash(&a), hash(&children(embedder())));
}

#[test]
fn replicas_are_omitted_when_an_autoscaler_owns_them() {
    let fixed = children(with(
        embedder(),
        json!({"scaling": {"provider": "none", "minReplicas": 3}}),
    ));
    assert_eq!(
        fixed.deployment.spec.as_ref().expect("spec").replicas,
        Some(3)
    );
    let default = children(embedder());
    assert_eq!(
        default.deployment.spec.as_ref().expect("spec").replicas,
        Some(1)
    );
    for provider in ["hpa", "keda"] {
        let scaled = children(with(
            embedder(),
            json!({"scaling": {"provider": provider, "minReplicas": 1, "maxReplicas": 5}}),
        ));
        assert_eq!(
            scaled.deployment.spec.as_ref().expect("spec").replicas,
            None,
            "{provider}"
        );
        // The serialized apply body must not carry the field at all.
        let body = serde_json::to_value(&scaled.deployment).expect("serializes");
        assert!(body["spec"].get("replicas").is_none(), "{provider}");
    }
}

#[test]
fn autoscaler_matches_the_provider() {
    let none = children(embedder());
    assert!(none.hpa.is_none() && none.scaled_object.is_none());

    let hpa = children(with(
        embedder(),
        json!({"scaling": {"provider": "hpa", "minReplicas": 2, "maxReplicas": 6, "targetLoadPerReplica": 8}}),
    ));
    assert!(hpa.scaled_object.is_none());
    let hpa = hpa.hpa.expect("hpa");
    let spec = hpa.spec;
    assert_eq!(spec.min_replicas, Some(2));
    assert_eq!(spec.max_replicas, 6);
    assert_eq!(spec.scale_target_ref.kind, "Deployment");
    assert_eq!(spec.scale_target_ref.name, "minilm");
    let metric = &spec.metrics.expect("metrics")[0];
    let external = metric.external.as_ref().expect("external metric");
    assert_eq!(metric.type_, "External");
    assert_eq!(external.metric.name, EXTERNAL_METRIC_NAME);
    assert_eq!(
        external
            .metric
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .map(|l| l[INFERENCE_SERVICE_LABEL].clone()),
        Some("minilm".to_string())
    );
    assert_eq!(external.target.type_, "AverageValue");
    assert_eq!(
        external.target.average_value.as_ref().map(|q| q.0.as_str()),
        Some("8")
    );
    let behavior = spec.behavior.expect("behavior");
    assert_eq!(
        behavior
            .scale_up
            .and_then(|r| r.stabilization_window_seconds),
        Some(0)
    );
    assert_eq!(
        behavior
            .scale_down
            .and_then(|r| r.stabilization_window_seconds),
        Some(300)
    );

    let keda = children(with(
        embedder(),
        json!({"scaling": {"provider": "keda", "minReplicas": 1, "maxReplicas": 3, "targetLoadPerReplica": 5,
               "scaleDown": {"stabilizationWindowSeconds": 60}}}),
    ));
    assert!(keda.hpa.is_none());
    let so = keda.scaled_object.expect("scaled object");
    assert_eq!(
        so.types.as_ref().map(|t| t.kind.as_str()),
        Some("ScaledObject")
    );
    let spec = &so.data["spec"];
    assert_eq!(spec["minReplicaCount"], 1);
    assert_eq!(spec["maxReplicaCount"], 3);
    assert_eq!(spec["scaleTargetRef"]["name"], "minilm");
    assert_eq!(spec["triggers"][0]["type"], "prometheus");
    assert_eq!(spec["triggers"][0]["metadata"]["threshold"], "5");
    assert_eq!(
        spec["triggers"][0]["metadata"]["query"],
        super::load_query::load_query("team-a", "minilm")
    );
    assert_eq!(
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        60
    );
}

#[test]
fn pdb_only_when_more_than_one_replica_is_possible() {
    assert!(children(embedder()).pdb.is_none());
    assert!(
        children(with(
            embedder(),
            json!({"scaling": {"provider": "none", "minReplicas": 1}})
        ))
        .pdb
        .is_none()
    );
    let pdb = children(with(
        embedder(),
        json!({"scaling": {"provider": "none", "minReplicas": 2}}),
    ))
    .pdb
    .expect("pdb");
    assert_eq!(
        pdb.spec.as_ref().and_then(|s| s.max_unavailable.clone()),
        Some(IntOrString::Int(1))
    );
    assert!(
        children(with(
            embedder(),
            json!({"scaling": {"provider": "hpa", "minReplicas": 1, "maxReplicas": 3}})
        ))
        .pdb
        .is_some()
    );
}

#[test]
fn service_selects_the_pods_on_the_http_port() {
    let c = children(embedder());
    let spec = c.service.spec.as_ref().expect("spec");
    let pod_labels = pod_meta(&c).labels.clone().expect("labels");
    for (k, v) in spec.selector.as_ref().expect("selector") {
        assert_eq!(pod_labels.get(k), Some(v), "pod lacks selector label {k}");
    }
    let port = &spec.ports.as_ref().expect("ports")[0];
    assert_eq!(port.port, 80);
    assert_eq!(
        port.target_port,
        Some(IntOrString::String("http".to_string()))
    );
}

#[test]
fn sidecar_is_restricted_and_probed() {
    let c = children(embedder());
    let pod = pod_spec(&c);
    let psc = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let sc = container
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{}",
            container.name
        );
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{}",
            container.name
        );
        assert_eq!(sc.run_as_non_root, Some(true), "{}", container.name);
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
    }
    let s = sidecar(&c);
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&s.readiness_probe).as_deref(), Some("/ready"));
    assert_eq!(path(&s.liveness_probe).as_deref(), Some("/health"));
    let startup = s.startup_probe.as_ref().expect("startup probe");
    let budget = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert!(
        budget >= 300,
        "slow model loads get at least 5 minutes, got {budget}s"
    );
    let annotations = pod_meta(&c).annotations.clone().expect("annotations");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8080");
    assert_eq!(s.args.as_ref().expect("args")[0], "serve");
}

#[test]
fn fetch_init_container_mounts_the_claim_and_checks_the_digest() {
    let sha = "a".repeat(64);
    let c = children(json!({"model": {
        "uri": "pvc://models/minilm/model.onnx", "format": "onnx", "task": "embed",
        "sha256": sha, "tokenizer": "pvc://models/minilm/tokenizer.json"
    }}));
    let pod = pod_spec(&c);
    let inits = pod.init_containers.as_ref().expect("init containers");
    assert_eq!(inits.len(), 2);
    let fetch = &inits[0];
    let args = fetch.args.as_ref().expect("args");
    assert_eq!(args[0], "fetch");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--uri" && w[1] == "pvc://models/minilm/model.onnx")
    );
    assert!(args.windows(2).any(|w| w[0] == "--sha256" && w[1] == sha));
    let mounts = fetch.volume_mounts.as_ref().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/mnt/pvc/models" && m.read_only == Some(true))
    );
    // One volume per claim, even when model and tokenizer share it.
    let volumes = pod.volumes.as_ref().expect("volumes");
    let claims: Vec<_> = volumes
        .iter()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .collect();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].claim_name, "models");
    // The sidecar reads the fetched copies.
    let env = sidecar(&c).env.clone().expect("env");
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        value("LEXSERVE_MODEL_URI").as_deref(),
        Some("file:///var/lib/lexserve/models/model")
    );
    assert_eq!(
        value("LEXSERVE_TOKENIZER").as_deref(),
        Some("file:///var/lib/lexserve/models/tokenizer")
    );
    let sidecar_mounts = sidecar(&c).volume_mounts.clone().expect("mounts");
    assert!(
        sidecar_mounts
            .iter()
            .any(|m| m.name == "models" && m.read_only == Some(true))
    );
}

/// The model volume (an emptyDir) of the pod template.
fn models_volume(c: &Children) -> k8s_openapi::api::core::v1::EmptyDirVolumeSource {
    pod_spec(c)
        .volumes
        .clone()
        .expect("volumes")
        .into_iter()
        .find(|v| v.name == "models")
        .and_then(|v| v.empty_dir)
        .expect("the models emptyDir")
}

/// The arguments of the init container `name`.
fn fetch_args(c: &Children, name: &str) -> Vec<String> {
    pod_spec(c)
        .init_containers
        .as_ref()
        .expect("init containers")
        .iter()
        .find(|i| i.name == name)
        .and_then(|i| i.args.clone())
        .expect("args")
}

fn arg_value(args: &[String], flag: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone())
}

#[test]
fn later_pods_fetch_what_the_first_fetch_resolved() {
    let digest = "b".repeat(64);
    let model = json!({
        "uri": "hf://org/minilm", "format": "onnx", "task": "classify", "labels": ["a", "b"],
        "tokenizer": "hf://org/tok", "tokenizerSha256": "c".repeat(64)
    });
    let spec = json!({"model": model, "runtime": {"quantize": "int8"}});
    let status = json!({"model": {
        "uri": "hf://org/minilm", "digest": digest, "revision": "1111111111111111111111111111111111111111",
        "tokenizer": {"uri": "hf://org/tok", "digest": "c".repeat(64), "revision": "2222222222222222222222222222222222222222"}
    }});
    let built = |spec: serde_json::Value, status: &serde_json::Value| {
        let mut object = isvc(spec);
        object.status = Some(serde_json::from_value(status.clone()).expect("status"));
        build_children(&object, &OperatorConfig::default(), RolloutPlan::Surge)
    };

    // Nothing recorded yet: no --revision; the model's format, task and quantization pick the
    // files of the repository, the tokenizer fetch takes the tokenizer's files and its digest.
    // Other schemes name exactly what to copy: no selection flags.
    let local = fetch_args(&children(embedder()), "fetch-model");
    assert_eq!(arg_value(&local, "--model-format"), None);
    let c = children(spec.clone());
    let model_args = fetch_args(&c, "fetch-model");
    assert_eq!(arg_value(&model_args, "--revision"), None);
    assert_eq!(
        arg_value(&model_args, "--model-format").as_deref(),
        Some("onnx")
    );
    assert_eq!(
        arg_value(&model_args, "--task").as_deref(),
        Some("classify")
    );
    assert_eq!(
        arg_value(&model_args, "--quantize").as_deref(),
        Some("int8")
    );
    let tokenizer_args = fetch_args(&c, "fetch-tokenizer");
    assert_eq!(
        arg_value(&tokenizer_args, "--artifact").as_deref(),
        Some("tokenizer")
    );
    assert_eq!(arg_value(&tokenizer_args, "--sha256"), Some("c".repeat(64)));
    assert_eq!(arg_value(&tokenizer_args, "--model-format"), None);

    // Recorded: every fetch asks for its revision.
    let c = built(spec.clone(), &status);
    assert_eq!(
        arg_value(&fetch_args(&c, "fetch-model"), "--revision").as_deref(),
        Some("1111111111111111111111111111111111111111")
    );
    assert_eq!(
        arg_value(&fetch_args(&c, "fetch-tokenizer"), "--revision").as_deref(),
        Some("2222222222222222222222222222222222222222")
    );

    // Another model uri, or a sha256 the record does not have: that pin no longer applies.
    let mut moved = spec.clone();
    moved["model"]["uri"] = json!("hf://org/minilm@v2");
    let c = built(moved, &status);
    assert_eq!(
        arg_value(&fetch_args(&c, "fetch-model"), "--revision"),
        None
    );
    assert!(arg_value(&fetch_args(&c, "fetch-tokenizer"), "--revision").is_some());
    let mut repinned = spec.clone();
    repinned["model"]["sha256"] = json!("d".repeat(64));
    let c = built(repinned, &status);
    assert_eq!(
        arg_value(&fetch_args(&c, "fetch-model"), "--revision"),
        None
    );
    let mut same = spec.clone();
    same["model"]["sha256"] = json!(digest);
    let c = built(same, &status);
    assert!(arg_value(&fetch_args(&c, "fetch-model"), "--revision").is_some());
    let mut new_tokenizer = spec;
    new_tokenizer["model"]["tokenizerSha256"] = json!("e".repeat(64));
    let c = built(new_tokenizer, &status);
    assert_eq!(
        arg_value(&fetch_args(&c, "fetch-tokenizer"), "--revision"),
        None
    );
    assert!(arg_value(&fetch_args(&c, "fetch-model"), "--revision").is_some());
}

#[test]
fn serve_reads_the_path_fetch_writes() {
    let c = children(json!({"model": {
        "uri": "s3://models/minilm/minilm-q8.onnx", "format": "onnx", "task": "embed",
        "tokenizer": "s3://models/minilm/tokenizer.json"
    }}));
    let inits = pod_spec(&c)
        .init_containers
        .clone()
        .expect("init containers");
    let env = sidecar(&c).env.clone().expect("env");
    for (init, variable) in [
        (&inits[0], "LEXSERVE_MODEL_URI"),
        (&inits[1], "LEXSERVE_TOKENIZER"),
    ] {
        let args = init.args.clone().expect("args");
        let dest = args
            .windows(2)
            .find(|w| w[0] == "--dest")
            .map(|w| w[1].clone())
            .expect("--dest");
        let uri = env
            .iter()
            .find(|e| e.name == variable)
            .and_then(|e| e.value.clone())
            .expect("the sidecar's uri");
        // The sidecar loads the very path fetch made (a file or a directory), not a folder
        // around it: the same object is digested on both sides.
        assert_eq!(uri, format!("file://{dest}"), "{}", init.name);
    }
}

#[test]
fn fetch_is_bounded_and_the_model_volume_sized_from_the_model() {
    let without_size = children(embedder());
    assert_eq!(models_volume(&without_size).size_limit, None);
    let fetch = pod_spec(&without_size)
        .init_containers
        .clone()
        .expect("inits")[0]
        .clone();
    let resources = fetch.resources.expect("fetch resources");
    let get = |m: &Option<std::collections::BTreeMap<String, Quantity>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
    };
    assert_eq!(get(&resources.requests, "cpu").as_deref(), Some("100m"));
    assert_eq!(get(&resources.requests, "memory").as_deref(), Some("64Mi"));
    assert_eq!(get(&resources.limits, "cpu").as_deref(), Some("1"));
    assert_eq!(get(&resources.limits, "memory").as_deref(), Some("256Mi"));

    // Twice the model (staged copy beside an earlier one) plus 256Mi, in whole MiB.
    for (size, limit) in [
        (json!("500Mi"), "1256Mi"),
        (json!("1Gi"), "2304Mi"),
        (json!("1G"), "2164Mi"),
        (json!(1_000_000), "258Mi"),
    ] {
        let mut spec = embedder();
        spec["model"]["size"] = size.clone();
        let c = children(spec);
        assert_eq!(
            models_volume(&c).size_limit.map(|q| q.0).as_deref(),
            Some(limit),
            "{size}"
        );
        // The sidecar's config carries the field unchanged, as every other model field.
        let config = c.config_map.data.as_ref().expect("data")["config.yaml"].clone();
        assert!(config.contains("size:"), "{config}");
    }
}

#[test]
fn credentials_reach_only_the_fetch_container() {
    let c = children(json!({"model": {
        "uri": "s3://bucket/minilm.onnx", "format": "onnx", "task": "embed",
        "credentialsSecret": {"name": "s3-creds"}
    }}));
    let pod = pod_spec(&c);
    let fetch = &pod.init_containers.as_ref().expect("inits")[0];
    let env_from = fetch.env_from.as_ref().expect("envFrom");
    assert_eq!(
        env_from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
        Some("s3-creds")
    );
    assert!(sidecar(&c).env_from.is_none());
    assert!(
        pod.volumes
            .as_ref()
            .expect("volumes")
            .iter()
            .all(|v| v.persistent_volume_claim.is_none())
    );
}

#[test]
fn gpus_go_in_limits_with_selector_and_toleration() {
    let c = children(with(
        embedder(),
        json!({"resources": {"cpu": "2", "memory": "4Gi", "gpu": {"count": 2, "product": "NVIDIA-H100-80GB-HBM3"}}}),
    ));
    let resources = sidecar(&c).resources.clone().expect("resources");
    let limits = resources.limits.expect("limits");
    assert_eq!(limits["nvidia.com/gpu"].0, "2");
    assert_eq!(limits["cpu"].0, "2");
    assert_eq!(resources.requests.expect("requests")["memory"].0, "4Gi");
    let pod = pod_spec(&c);
    assert_eq!(
        pod.node_selector.as_ref().expect("selector")["nvidia.com/gpu.product"],
        "NVIDIA-H100-80GB-HBM3"
    );
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu")
                && t.operator.as_deref() == Some("Exists"))
    );

    let mig = children(with(
        embedder(),
        json!({"resources": {"gpu": {"count": 1, "migProfile": "1g.10gb", "resourceName": "nvidia.com/mig-1g.10gb"}}}),
    ));
    let limits = sidecar(&mig)
        .resources
        .clone()
        .expect("resources")
        .limits
        .expect("limits");
    assert_eq!(limits["nvidia.com/mig-1g.10gb"].0, "1");
    assert!(!limits.contains_key("nvidia.com/gpu"));

    let cpu_only = children(embedder());
    assert!(pod_spec(&cpu_only).tolerations.is_none());
    assert!(pod_spec(&cpu_only).node_selector.is_none());
}

#[test]
fn pod_template_fragments_are_merged() {
    let c = children(with(
        embedder(),
        json!({
            "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}},
            "podTemplate": {
                "nodeSelector": {"pool": "inference", "nvidia.com/gpu.product": "ignored"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"lexserve.io/inference-service": "minilm"}}}}
                ]}},
                "priorityClassName": "inference-critical",
                "serviceAccountName": "model-reader",
                "imagePullSecrets": [{"name": "registry"}],
                "labels": {"team": "search", "lexserve.io/inference-service": "spoofed"},
                "annotations": {"sidecar.istio.io/inject": "false"}
            }
        }),
    ));
    let pod = pod_spec(&c);
    let selector = pod.node_selector.as_ref().expect("selector");
    assert_eq!(selector["pool"], "inference");
    assert_eq!(selector["nvidia.com/gpu.product"], "NVIDIA-L4");
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert_eq!(tolerations.len(), 2);
    assert!(
        tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("dedicated"))
    );
    assert!(
        pod.affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some()
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("inference-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("model-reader"));
    assert_eq!(
        pod.image_pull_secrets.as_ref().map(|s| s[0].name.clone()),
        Some("registry".to_string())
    );
    let meta = pod_meta(&c).clone();
    let labels = meta.labels.expect("labels");
    assert_eq!(labels["team"], "search");
    assert_eq!(
        labels[INFERENCE_SERVICE_LABEL], "minilm",
        "the operator's labels win"
    );
    assert_eq!(
        meta.annotations.expect("annotations")["sidecar.istio.io/inject"],
        "false"
    );
}

#[test]
fn image_override_and_default() {
    let default = children(embedder());
    assert_eq!(
        sidecar(&default).image.as_deref(),
        Some(crate::config::DEFAULT_SIDECAR_IMAGE)
    );
    let custom = children(with(
        embedder(),
        json!({"runtime": {"image": "registry.local/lexserve-sidecar:dev"}}),
    ));
    assert_eq!(
        sidecar(&custom).image.as_deref(),
        Some("registry.local/lexserve-sidecar:dev")
    );
    let fetch = &pod_spec(&custom).init_containers.as_ref().expect("inits")[0];
    assert_eq!(
        fetch.image.as_deref(),
        Some("registry.local/lexserve-sidecar:dev")
    );
}

#[test]
fn rollout_plan_sets_the_strategy() {
    let object = isvc(embedder());
    let config = OperatorConfig::default();
    let rolling = |plan| {
        build_children(&object, &config, plan)
            .deployment
            .spec
            .and_then(|s| s.strategy)
            .and_then(|s| s.rolling_update)
            .expect("rolling update")
    };
    let surge = rolling(RolloutPlan::Surge);
    assert_eq!(surge.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(
        surge.max_surge,
        Some(IntOrString::String("25%".to_string()))
    );
    let in_place = rolling(RolloutPlan::InPlace);
    assert_eq!(in_place.max_surge, Some(IntOrString::Int(0)));
    assert_eq!(in_place.max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn grace_period_covers_the_shutdown_delay_and_the_drain() {
    let default = children(embedder());
    assert_eq!(
        pod_spec(&default).termination_grace_period_seconds,
        Some(50)
    );
    let longer = children(with(
        embedder(),
        json!({"runtime": {"shutdownDelay": "20s"}}),
    ));
    assert_eq!(pod_spec(&longer).termination_grace_period_seconds, Some(65));
}

#[test]
fn a_drift_reference_sample_is_mounted_and_named_to_the_sidecar() {
    let c = children(with(
        embedder(),
        json!({"monitoring": {"drift": {"baseline": {"reference": {"name": "samples", "key": "inputs.txt"}}}}}),
    ));
    let volume = pod_spec(&c)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "drift-reference")
        .expect("the reference volume");
    let source = volume.config_map.as_ref().expect("a ConfigMap volume");
    assert_eq!(source.name, "samples");
    let items = source.items.as_ref().expect("one key projected");
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("inputs.txt", "inputs.txt")
    );
    let mount = sidecar(&c)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "drift-reference")
        .expect("mounted in the sidecar");
    assert_eq!(mount.mount_path, lexserve_contract::drift::REFERENCE_DIR);
    let args = sidecar(&c).args.clone().unwrap_or_default();
    let at = args
        .iter()
        .position(|a| *a == "--drift-reference")
        .expect("--drift-reference");
    assert_eq!(
        args[at + 1],
        format!("{}/inputs.txt", lexserve_contract::drift::REFERENCE_DIR)
    );
    // A window baseline needs nothing in the pod.
    let plain = children(with(
        embedder(),
        json!({"monitoring": {"drift": {"baseline": {"window": "1h"}}}}),
    ));
    assert!(
        !sidecar(&plain)
            .args
            .iter()
            .flatten()
            .any(|a| a == "--drift-reference")
    );
}
