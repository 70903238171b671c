//! Pinned models from `fetch` to `serve` on the local control plane, with the operator running:
//! the harness plays kubelet for each kwok pod ([`lexserve_e2e::kubelet`]), running the init
//! container's and the server's real command lines from the pod spec and the ConfigMap the
//! operator wrote, and reporting their outcomes in the pod's status as kubelet would.
//!
//! One model of each kind, each pinned by `sha256`: the int8 ONNX MiniLM as one file under a
//! name of its own, the safetensors MiniLM as a directory, the SmolLM2 GGUF file. Each becomes
//! Ready with the verified digest in its status and answers a request; a wrong pin stops at
//! the fetch, which the status reports.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use lexserve_contract::digest::path_sha256;
use lexserve_e2e::kubelet::{PodHost, Terminated};
use lexserve_e2e::kwok::TEST_KUBELET_LABEL;
use lexserve_e2e::sidecar::SidecarProcess;
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::{ConditionType, find_condition, reason};
use lexserve_testkit::{MINILM, MINILM_INT8_ONNX, SMOLLM2_GGUF, locate};
use serde_json::{Value, json};

/// Loading a model is not what is tested; the GGUF takes seconds, a slow machine more.
const READY_LIMIT: Duration = Duration::from_secs(240);

fn model_path(model: lexserve_testkit::Model) -> PathBuf {
    locate(model).expect("model provisioned by scripts/setup-models.sh")
}

fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// An InferenceService spec for `model`, one replica, its pods left to this test's kubelet.
fn pinned(model: Value, runtime: Option<Value>) -> Value {
    let mut spec = json!({
        "model": model,
        "resources": {"cpu": "1", "memory": "1Gi"},
        "scaling": {"provider": "none", "minReplicas": 1},
        "podTemplate": {"labels": {TEST_KUBELET_LABEL: "pinned-models"}},
    });
    if let Some(runtime) = runtime {
        spec["runtime"] = runtime;
    }
    spec
}

/// The service's pod, once scheduled.
async fn scheduled_pod(pods: &Api<Pod>, name: &str) -> Result<Pod> {
    let selector = format!("lexserve.io/inference-service={name}");
    wait::until(
        &format!("a scheduled pod of {name}"),
        TIMEOUT,
        Duration::from_millis(300),
        || async {
            let list = pods.list(&ListParams::default().labels(&selector)).await?;
            Ok(
                match list.items.into_iter().find(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                        && p.metadata.deletion_timestamp.is_none()
                }) {
                    Some(pod) => Poll::Ready(pod),
                    None => Poll::pending("no scheduled pod yet"),
                },
            )
        },
    )
    .await
}

/// Plays kubelet for the service's pod: runs its init containers and reports them; when they
/// all succeeded, starts the server and reports the pod Ready once `/ready` answers 200.
async fn run_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    dir: &Path,
) -> Result<(Vec<(String, Terminated)>, Option<SidecarProcess>)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pod = scheduled_pod(&pods, name).await?;
    let host = PodHost::prepare(&config_maps, &pod, &dir.join(name)).await?;
    let outcomes = host.run_init_containers().await?;
    host.report_init(&pods, &outcomes).await?;
    if outcomes.iter().any(|(_, t)| t.exit_code != 0) {
        return Ok((outcomes, None));
    }
    let mut server = host.start_server()?;
    host.report_ready_when_ready(&pods, &mut server, READY_LIMIT)
        .await
        .with_context(|| format!("{name}: serving the fetched model"))?;
    Ok((outcomes, Some(server)))
}

fn digest_in_status(object: &InferenceService) -> Option<String> {
    object.status.as_ref()?.model.as_ref()?.digest.clone()
}

#[tokio::test]
async fn pinned_models_of_each_kind_are_fetched_verified_and_served() {
    let cluster = cluster_with_operator("pinned-models").await;
    let Scene { ns, client, api } = scene(cluster, "pinned").await;
    let dir = cluster
        .log_dir()
        .join(format!("pinned-models-{}", ns.name()));
    std::fs::create_dir_all(&dir).expect("work dir");

    // The int8 ONNX file published under a name of its own (not model.onnx / model_int8.onnx).
    let onnx = dir.join("published/minilm-q8.onnx");
    std::fs::create_dir_all(onnx.parent().unwrap()).unwrap();
    std::fs::copy(model_path(MINILM_INT8_ONNX), &onnx).expect("copy the ONNX model");
    let minilm = model_path(MINILM);
    let gguf = model_path(SMOLLM2_GGUF);
    let pin = |path: &Path| path_sha256(path).expect("digest");
    // A one-file model's pin is the file's sha256; a directory's, its manifest's.
    let (onnx_pin, minilm_pin, gguf_pin) = (pin(&onnx), pin(&minilm), pin(&gguf));
    let onnx_model = |sha256: &str| {
        json!({
            "uri": file_uri(&onnx), "format": "onnx", "task": "embed", "sha256": sha256,
            "tokenizer": file_uri(&minilm.join("tokenizer.json")),
        })
    };
    let services = [
        ("onnx-file", pinned(onnx_model(&onnx_pin), None), &onnx_pin),
        (
            "safetensors-dir",
            pinned(
                json!({"uri": file_uri(&minilm), "format": "safetensors", "task": "embed", "sha256": minilm_pin}),
                None,
            ),
            &minilm_pin,
        ),
        (
            "gguf-file",
            pinned(
                json!({"uri": file_uri(&gguf), "format": "gguf", "task": "generate", "sha256": gguf_pin}),
                Some(json!({"generation": {"maxConcurrentSequences": 2, "kvCacheMemory": "32Mi"}})),
            ),
            &gguf_pin,
        ),
    ];
    for (name, spec, _) in &services {
        create(&api, &isvc(name, spec.clone()))
            .await
            .expect("create");
    }
    // The wrong pin: a real digest, of another model.
    create(
        &api,
        &isvc("wrong-pin", pinned(onnx_model(&gguf_pin), None)),
    )
    .await
    .expect("create");

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut servers = Vec::new();
    for (name, _, expected) in &services {
        let (outcomes, server) = run_pod(&client, &ns, name, &dir)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let fetched = &outcomes[0].1;
        assert_eq!(fetched.message, format!("sha256:{expected}"), "{name}");
        let server = server.unwrap_or_else(|| panic!("{name}: no server: {outcomes:?}"));

        let ready = wait_condition(&api, name, ConditionType::Ready, "True", None)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            digest_in_status(&ready).as_deref(),
            Some(expected.as_str()),
            "{name}: status.model.digest is the verified digest"
        );
        servers.push((*name, server));
    }

    // Each serves.
    for (name, server) in &servers {
        let (path, body) = match *name {
            "gguf-file" => (
                "/generate",
                json!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 4}}),
            ),
            _ => ("/embed", json!({"texts": ["pinned and verified"]})),
        };
        let response = http
            .post(format!("{}{path}", server.url()))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{name}: {answer}");
        match *name {
            "gguf-file" => assert!(answer["generated_text"].is_string(), "{answer}"),
            _ => assert_eq!(
                answer["embeddings"][0].as_array().map(Vec::len),
                Some(384),
                "{name}: {answer}"
            ),
        }
    }

    // The wrong pin: the fetch fails and says why, nothing serves, and the status says so.
    let (outcomes, server) = run_pod(&client, &ns, "wrong-pin", &dir)
        .await
        .expect("wrong-pin");
    assert!(server.is_none(), "a failed fetch must not lead to a server");
    let (container, failed) = &outcomes[0];
    assert_eq!(failed.exit_code, 1, "{container}: {failed:?}");
    assert!(
        failed.message.contains("sha256 mismatch")
            && failed.message.contains(&gguf_pin)
            && failed.message.contains(&onnx_pin),
        "{}",
        failed.message
    );
    let (object, message) = wait_degraded(&api, "wrong-pin", reason::MODEL_FETCH_FAILED)
        .await
        .expect("degraded");
    assert!(message.contains("sha256 mismatch"), "{message}");
    let ready = object
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, ConditionType::Ready))
        .expect("Ready condition");
    assert_eq!(ready.status, "False");
    assert_eq!(
        digest_in_status(&object),
        None,
        "a pin that failed verification is not reported as the model's digest"
    );
    // Nobody made the pod Ready behind the test's back (kwok leaves these pods alone).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = scheduled_pod(&pods, "wrong-pin").await.expect("pod");
    let phase = pod.status.and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Pending"));
    drop(servers);
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
}
