//! The `/v2` API as KServe and Triton users call it: with Triton's own HTTP client
//! (`tritonclient[http]`, installed by `scripts/setup-triton-client.sh`), which sends BYTES
//! inputs and asks for outputs in the binary tensor data extension by default. The answers it
//! decodes must be the sidecar's own, in every combination of binary and JSON tensors.

mod common;

use std::process::Command;

use common::classifier_training::{TrainedHead, fit_linear_head, write_classifier_dir};
use common::http::post;
use common::sidecar::Sidecar;
use common::{minilm_dir, onnx_embed_args};
use serde_json::{Value, json};

const TEXTS: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé text travels as UTF-8 bytes.",
    "ok",
];

/// Runs the client script against the sidecar; its JSON report.
fn triton_client(sidecar: &Sidecar, model: &str, texts: &[&str]) -> Value {
    let python = lexserve_testkit::require(lexserve_testkit::triton_client_python());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/triton_client_infer.py");
    let address = sidecar
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let output = Command::new(python)
        .arg(script)
        .arg(&address)
        .arg(model)
        .args(texts)
        .output()
        .expect("run the Triton client");
    assert!(
        output.status.success(),
        "the Triton client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client's JSON report")
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .flat_map(|row| match row {
            Value::Array(items) => items.iter().map(|v| v.as_f64().unwrap()).collect(),
            v => vec![v.as_f64().unwrap()],
        })
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    // Binary FP32 is bit-exact; JSON round-trips through decimal text.
    assert!(worst < 1e-6, "{what}: differs by up to {worst}");
}

#[tokio::test]
async fn tritonclient_embeds_with_binary_and_json_tensors() {
    let (sidecar, client) = Sidecar::start_ready(&onnx_embed_args()).await;
    let (status, reference) = post(&client, sidecar.url("/embed"), json!({"texts": TEXTS})).await;
    assert_eq!(status, 200, "{reference}");
    let expected = floats(&reference["embeddings"]);

    let report = triton_client(&sidecar, "minilm", &TEXTS);
    assert_eq!(report["outputs"], json!(["embedding"]));
    for mode in ["default", "json", "binary_in_json_out"] {
        let got = floats(&report[mode]["embedding"]);
        assert_close(&got, &expected, mode);
    }
}

#[tokio::test]
async fn tritonclient_reads_labels_as_binary_bytes_tensors() {
    // A classifier whose head is fitted on two synthetic points: what it predicts matters less
    // than that the label (a BYTES output) and the probabilities decode as the server sent them.
    let out =
        std::env::temp_dir().join(format!("lexserve-triton-classifier-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut a = vec![0.0f32; 384];
    let mut b = vec![0.0f32; 384];
    a[0] = 1.0;
    b[1] = 1.0;
    let head = fit_linear_head(&[a, b], &[0, 1], 2, 50, 1.0, 0.0);
    let trained = TrainedHead {
        head,
        labels: vec!["négatif".to_string(), "positive".to_string()],
        train_accuracy: 1.0,
    };
    write_classifier_dir(&minilm_dir(), &trained, &out).expect("classifier dir");
    let (sidecar, client) = Sidecar::start_ready(&[
        "--model-uri".into(),
        format!("file://{}", out.display()),
        "--model-format".into(),
        "safetensors".into(),
        "--task".into(),
        "classify".into(),
        "--model-name".into(),
        "sentiment".into(),
    ])
    .await;
    let (status, reference) = post(&client, sidecar.url("/predict"), json!({"texts": TEXTS})).await;
    assert_eq!(status, 200, "{reference}");
    let report = triton_client(&sidecar, "sentiment", &TEXTS);
    assert_eq!(report["outputs"], json!(["probabilities", "label"]));
    for mode in ["default", "json", "binary_in_json_out"] {
        assert_eq!(report[mode]["label"], reference["predictions"], "{mode}");
        assert_close(
            &floats(&report[mode]["probabilities"]),
            &floats(&reference["probabilities"]),
            mode,
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
