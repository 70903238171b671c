//! `compute_status` on the situations a model server goes through.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::status::{Observed, ScalingSignal, compute_status, is_settled, parse_digest};
use crate::api::InferenceService;
use crate::api::conditions::reason;
use crate::api::conditions::{ConditionType, find_condition};
use crate::controller::signal_board::SignalCondition;
use crate::gpu::{NodeGpus, gpu_fit};
use crate::metrics_api::load::SignalMissing;

fn isvc() -> InferenceService {
    serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "minilm", "namespace": "team-a", "generation": 2},
        "spec": {"model": {"uri": "file:///m/model.onnx", "format": "onnx", "task": "embed"}}
    }))
    .expect("valid")
}

fn deployment(replicas: i32, ready: i32, updated: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "minilm", "generation": 4},
        "spec": {"replicas": replicas, "selector": {}, "template": {}},
        "status": {"observedGeneration": 4, "replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated}
    }))
    .expect("valid deployment")
}

fn pod(status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": "minilm-abc"}, "status": status}))
        .expect("valid pod")
}

fn at(s: i64) -> Time {
    Time(Timestamp::from_second(s).expect("valid"))
}

fn observe<'a>(d: Option<&'a Deployment>, pods: &'a [Pod]) -> Observed<'a> {
    Observed {
        deployment: d,
        pods,
        hpa: None,
        gpu_fit: None,
        gpu_resource: None,
        url: "http://minilm.team-a.svc.cluster.local".to_string(),
        reconcile_problem: None,
        child_rejected: None,
        scaling_signal: ScalingSignal::NotAutoscaled,
        now: at(1000),
    }
}

fn condition(
    s: &crate::api::inference_service::InferenceServiceStatus,
    t: ConditionType,
) -> (&str, &str, &str) {
    let c = find_condition(&s.conditions, t).expect("condition present");
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[test]
fn all_replicas_ready_is_ready_and_settled() {
    let d = deployment(2, 2, 2);
    let status = compute_status(&isvc(), &observe(Some(&d), &[]));
    assert_eq!(condition(&status, ConditionType::Ready).0, "True");
    assert_eq!(
        condition(&status, ConditionType::Ready).1,
        reason::AVAILABLE
    );
    assert_eq!(
        condition(&status, ConditionType::Progressing).1,
        reason::ROLLOUT_COMPLETE
    );
    assert_eq!(condition(&status, ConditionType::Degraded).0, "False");
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(
        status.url.as_deref(),
        Some("http://minilm.team-a.svc.cluster.local")
    );
    assert!(is_settled(&status));
    for c in &status.conditions {
        assert_eq!(c.observed_generation, Some(2));
    }
}

#[test]
fn rollout_in_progress_is_progressing() {
    let d = deployment(2, 1, 1);
    let status = compute_status(&isvc(), &observe(Some(&d), &[]));
    assert_eq!(condition(&status, ConditionType::Ready).0, "True");
    assert_eq!(
        condition(&status, ConditionType::Progressing),
        ("True", reason::ROLLING_OUT, "1/2 replicas updated, 1 ready")
    );
    assert!(!is_settled(&status));
}

#[test]
fn no_deployment_yet_is_deploying() {
    let status = compute_status(&isvc(), &observe(None, &[]));
    assert_eq!(condition(&status, ConditionType::Ready).0, "False");
    assert_eq!(
        condition(&status, ConditionType::Ready).1,
        reason::DEPLOYING
    );
}

#[test]
fn crash_looping_model_is_not_ready_and_says_why() {
    let d = deployment(1, 0, 1);
    let pods = [pod(json!({
        "containerStatuses": [{
            "name": "sidecar", "ready": false, "restartCount": 4, "image": "x", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "message": "model load failed: model.onnx: not an ONNX file"}}
        }]
    }))];
    let status = compute_status(&isvc(), &observe(Some(&d), &pods));
    let (s, r, m) = condition(&status, ConditionType::Ready);
    assert_eq!((s, r), ("False", reason::MODEL_LOAD_FAILED));
    assert!(m.contains("not an ONNX file"), "{m}");
    assert_eq!(condition(&status, ConditionType::Degraded).0, "True");
}

#[test]
fn failed_fetch_is_reported_from_the_init_container() {
    let d = deployment(1, 0, 1);
    let pods = [pod(json!({
        "initContainerStatuses": [{
            "name": "fetch-model", "ready": false, "restartCount": 2, "image": "x", "imageID": "",
            "state": {"terminated": {"exitCode": 2, "message": "sha256 mismatch: expected aaaa, got bbbb"}}
        }]
    }))];
    let status = compute_status(&isvc(), &observe(Some(&d), &pods));
    let (s, r, m) = condition(&status, ConditionType::Ready);
    assert_eq!((s, r), ("False", reason::MODEL_FETCH_FAILED));
    assert!(m.contains("sha256 mismatch"), "{m}");
}

#[test]
fn unschedulable_for_gpus_gives_the_numbers() {
    let d = deployment(1, 0, 1);
    let pods = [pod(json!({
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 2 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint."}]
    }))];
    let fit = gpu_fit(
        16,
        &[
            NodeGpus {
                node: "gpu-0".into(),
                allocatable: 8,
                in_use: 0,
            },
            NodeGpus {
                node: "gpu-1".into(),
                allocatable: 8,
                in_use: 2,
            },
        ],
    );
    let mut observed = observe(Some(&d), &pods);
    observed.gpu_fit = Some(&fit);
    observed.gpu_resource = Some("nvidia.com/gpu");
    let status = compute_status(&isvc(), &observed);
    let (s, r, m) = condition(&status, ConditionType::Degraded);
    assert_eq!((s, r), ("True", reason::INSUFFICIENT_GPU));
    assert!(m.contains("requests 16 nvidia.com/gpu"), "{m}");
    assert!(m.contains("8 allocatable"), "{m}");
    assert!(m.contains("gpu-0 has 8 free"), "{m}");
    assert_eq!(
        condition(&status, ConditionType::Ready).1,
        reason::INSUFFICIENT_GPU
    );
}

#[test]
fn unschedulable_for_other_reasons_quotes_the_scheduler() {
    let d = deployment(1, 0, 1);
    let pods = [pod(json!({
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient memory."}]
    }))];
    let status = compute_status(&isvc(), &observe(Some(&d), &pods));
    let (s, r, m) = condition(&status, ConditionType::Degraded);
    assert_eq!((s, r), ("True", reason::UNSCHEDULABLE));
    assert!(m.contains("Insufficient memory"), "{m}");
}

#[test]
fn transition_time_is_kept_when_nothing_changes() {
    let d = deployment(1, 1, 1);
    let mut object = isvc();
    let first = compute_status(&object, &observe(Some(&d), &[]));
    object.status = Some(first.clone());
    let mut later = observe(Some(&d), &[]);
    later.now = at(5000);
    let second = compute_status(&object, &later);
    assert_eq!(
        first, second,
        "an unchanged world gives an identical status, so nothing is written"
    );
}

/// A pod whose init container `container` fetched `uri` and terminated with `message` at
/// second `finished`.
fn fetched_pod(name: &str, container: &str, uri: &str, finished: i64, message: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "sidecar"}],
            "initContainers": [{"name": container, "args": ["fetch", "--uri", uri, "--dest", "/d"]}]
        },
        "status": {"initContainerStatuses": [{
            "name": container, "ready": false, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {
                "exitCode": 0, "message": message,
                "finishedAt": format!("1970-01-01T00:00:{finished:02}Z")
            }}
        }]}
    }))
    .expect("valid pod")
}

fn remote(model: serde_json::Value) -> InferenceService {
    let mut object = isvc();
    object.spec.model = serde_json::from_value(model).expect("model");
    object
}

#[test]
fn digest_is_only_what_a_fetch_verified() {
    let digest = "ab".repeat(32);
    let d = deployment(1, 0, 1);
    // The spec pins a digest, and nothing has fetched yet: status does not claim it.
    let object = remote(json!({
        "uri": "file:///m/model.onnx", "format": "onnx", "task": "embed", "sha256": "cd".repeat(32)
    }));
    let status = compute_status(&object, &observe(Some(&d), &[]));
    let model = status.model.expect("model");
    assert_eq!(model.uri, "file:///m/model.onnx");
    assert_eq!(model.digest, None);
    assert_eq!(model.revision, None);

    let pods = [fetched_pod(
        "minilm-a",
        "fetch-model",
        "file:///m/model.onnx",
        1,
        &format!("fetched 90 MB sha256:{digest}"),
    )];
    let status = compute_status(&isvc(), &observe(Some(&d), &pods));
    assert_eq!(status.model.and_then(|m| m.digest), Some(digest.clone()));
    assert_eq!(parse_digest("sha256:xyz"), None);
    assert_eq!(
        parse_digest(&format!("ok sha256:{}", digest.to_uppercase())),
        Some(digest)
    );
}

#[test]
fn the_first_fetch_pins_the_revision_until_the_model_changes() {
    let (d1, d2) = ("1".repeat(64), "2".repeat(64));
    let (r1, r2) = ("a".repeat(40), "b".repeat(40));
    let uri = "hf://org/minilm";
    let report = |digest: &str, revision: &str| format!("sha256:{digest} revision:{revision}");
    let spec = json!({"uri": uri, "format": "onnx", "task": "embed", "tokenizer": "hf://org/tok"});
    let mut object = remote(spec.clone());
    let d = deployment(2, 2, 2);
    // Two pods raced on the first fetch; the one that finished first decides, for both
    // artifacts independently.
    let pods = [
        fetched_pod("minilm-b", "fetch-model", uri, 20, &report(&d2, &r2)),
        fetched_pod("minilm-a", "fetch-model", uri, 10, &report(&d1, &r1)),
        fetched_pod(
            "minilm-c",
            "fetch-tokenizer",
            "hf://org/tok",
            30,
            &report(&d2, &r2),
        ),
    ];
    let status = compute_status(&object, &observe(Some(&d), &pods));
    let model = status.model.clone().expect("model");
    assert_eq!(
        (model.digest.as_deref(), model.revision.as_deref()),
        (Some(d1.as_str()), Some(r1.as_str()))
    );
    let tokenizer = model.tokenizer.clone().expect("tokenizer");
    assert_eq!(tokenizer.uri, "hf://org/tok");
    assert_eq!(tokenizer.revision.as_deref(), Some(r2.as_str()));

    // Recorded, it stays, whatever later pods (or none) report.
    object.status = Some(status);
    let later = [fetched_pod(
        "minilm-z",
        "fetch-model",
        uri,
        1,
        &report(&d2, &r2),
    )];
    for pods in [&later[..], &[]] {
        let status = compute_status(&object, &observe(Some(&d), pods));
        assert_eq!(status.model.and_then(|m| m.revision), Some(r1.clone()));
    }

    // Another uri: the record goes, and pods still fetching the old uri do not bring it back.
    let mut moved = object.clone();
    moved.spec.model.uri = "hf://org/minilm@v2".into();
    let status = compute_status(&moved, &observe(Some(&d), &pods));
    let model = status.model.expect("model");
    assert_eq!(
        (model.uri.as_str(), model.digest, model.revision),
        ("hf://org/minilm@v2", None, None)
    );
    assert_eq!(model.tokenizer.and_then(|t| t.revision), Some(r2.clone()));

    // A sha256 the record does not have: resolved again (a fetch asked for it reports).
    let mut repinned = object.clone();
    repinned.spec.model.sha256 = Some(d2.clone());
    let status = compute_status(&repinned, &observe(Some(&d), &[]));
    assert_eq!(status.model.and_then(|m| m.revision), None);
    // The same sha256 as recorded: nothing to resolve again.
    let mut confirmed = object.clone();
    confirmed.spec.model.sha256 = Some(d1.clone());
    let status = compute_status(&confirmed, &observe(Some(&d), &[]));
    assert_eq!(status.model.and_then(|m| m.revision), Some(r1));
}

#[test]
fn replica_failure_is_degraded_with_the_controller_message() {
    let mut d = deployment(2, 0, 0);
    d.status.as_mut().expect("status").conditions = Some(vec![serde_json::from_value(json!({
        "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
        "message": "pods \"x\" is forbidden: no PriorityClass with name inference-critical was found"
    })).expect("condition")]);
    let status = compute_status(&isvc(), &observe(Some(&d), &[]));
    let (s, r, m) = condition(&status, ConditionType::Degraded);
    assert_eq!((s, r), ("True", reason::REPLICA_FAILURE));
    assert!(m.contains("no PriorityClass"), "{m}");
    assert_eq!(
        condition(&status, ConditionType::Ready).1,
        reason::REPLICA_FAILURE
    );
}

#[test]
fn reconcile_problem_shows_when_pods_are_fine() {
    let d = deployment(1, 1, 1);
    let mut observed = observe(Some(&d), &[]);
    observed.reconcile_problem = Some((reason::MISSING_DEPENDENCY, "no KEDA".to_string()));
    let status = compute_status(&isvc(), &observed);
    assert_eq!(
        condition(&status, ConditionType::Degraded),
        ("True", reason::MISSING_DEPENDENCY, "no KEDA")
    );
    assert_eq!(condition(&status, ConditionType::Ready).0, "True");
}

#[test]
fn a_missing_scaling_signal_is_a_condition_and_degraded_without_a_fast_requeue() {
    let d = deployment(2, 2, 2);
    let missing = SignalMissing::PrometheusUnavailable {
        url: "http://prom:9090".into(),
        error: "connection refused".into(),
    };
    let mut observed = observe(Some(&d), &[]);
    observed.scaling_signal = ScalingSignal::Known(SignalCondition::Missing(missing));
    let status = compute_status(&isvc(), &observed);
    let (state, why, message) = condition(&status, ConditionType::ScalingSignalAvailable);
    assert_eq!((state, why), ("False", "PrometheusUnavailable"));
    assert!(message.contains("holds its replicas"), "{message}");
    assert!(message.contains("http://prom:9090"), "{message}");
    assert_eq!(
        condition(&status, ConditionType::Degraded).1,
        "PrometheusUnavailable"
    );
    // Still serving: Ready stays True, and the signal checks (not a 10 s requeue) follow it.
    assert_eq!(condition(&status, ConditionType::Ready).0, "True");
    assert!(is_settled(&status));
}

#[test]
fn the_scaling_signal_condition_follows_the_checks() {
    let d = deployment(1, 1, 1);
    let mut observed = observe(Some(&d), &[]);
    observed.scaling_signal = ScalingSignal::Known(SignalCondition::Available);
    let available = compute_status(&isvc(), &observed);
    assert_eq!(
        condition(&available, ConditionType::ScalingSignalAvailable).0,
        "True"
    );
    assert_eq!(condition(&available, ConditionType::Degraded).0, "False");

    // Not checked yet: left as it was.
    let mut stored = isvc();
    stored.status = Some(available.clone());
    observed.scaling_signal = ScalingSignal::Unchecked;
    let kept = compute_status(&stored, &observed);
    assert_eq!(
        condition(&kept, ConditionType::ScalingSignalAvailable).0,
        "True"
    );

    // No replicas ready is not a monitoring problem: the condition says so, Degraded does not.
    observed.scaling_signal =
        ScalingSignal::Known(SignalCondition::Missing(SignalMissing::NoReadyReplicas));
    let starting = compute_status(&stored, &observed);
    assert_eq!(
        condition(&starting, ConditionType::ScalingSignalAvailable).1,
        "NoReadyReplicas"
    );
    assert_eq!(condition(&starting, ConditionType::Degraded).0, "False");

    // provider none: the condition goes.
    observed.scaling_signal = ScalingSignal::NotAutoscaled;
    let none = compute_status(&stored, &observed);
    assert!(find_condition(&none.conditions, ConditionType::ScalingSignalAvailable).is_none());
}

#[test]
fn a_rejected_child_is_degraded_and_named_before_any_other_problem() {
    let message = "the apiserver rejected Deployment minilm: spec.template.spec.volumes[0].name: Invalid value: \"pvc-models.v1\"";
    let mut observed = observe(None, &[]);
    observed.child_rejected = Some(message.to_string());
    observed.reconcile_problem = Some((reason::MISSING_DEPENDENCY, "no KEDA".to_string()));
    let status = compute_status(&isvc(), &observed);
    assert_eq!(
        condition(&status, ConditionType::Degraded),
        ("True", reason::CHILD_REJECTED, message)
    );
    assert_eq!(
        condition(&status, ConditionType::Ready),
        ("False", reason::CHILD_REJECTED, message)
    );
    assert!(!is_settled(&status));
}
