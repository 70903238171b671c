//! `fetch` as the init container runs it, and `serve` configured from a spec-shaped file with env and
//! flag overrides.

mod common;

use std::path::Path;
use std::process::Command;

use common::fetch::{Outcome, fetch, fetch_into, scratch};
use common::http::{client, post};
use common::sidecar::Sidecar;
use common::{minilm_dir, minilm_int8_onnx, ort_dylib};
use lexserve_contract::digest::path_sha256;
use serde_json::json;

#[test]
fn fetch_copies_a_directory_and_verifies_its_digest() {
    let source = scratch("fetch-src");
    std::fs::create_dir_all(source.join("1_Pooling")).unwrap();
    std::fs::copy(
        minilm_dir().join("tokenizer.json"),
        source.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::copy(
        minilm_dir().join("1_Pooling/config.json"),
        source.join("1_Pooling/config.json"),
    )
    .unwrap();
    let digest = path_sha256(&source).unwrap();
    let dest = scratch("fetch-dest");

    let uri = format!("file://{}", source.display());
    let Outcome {
        code, stderr: logs, ..
    } = fetch_into(&uri, &dest, Some(&digest), &[]);
    assert_eq!(code, Some(0), "{logs}");
    assert!(dest.join("1_Pooling/config.json").is_file());
    assert_eq!(path_sha256(&dest).unwrap(), digest);

    // pvc:// reads under the mount root.
    let root = source.parent().unwrap();
    let claim_uri = format!("pvc://{}/", source.file_name().unwrap().to_str().unwrap());
    let dest2 = scratch("fetch-dest2");
    let Outcome {
        code, stderr: logs, ..
    } = fetch(
        &[
            "--uri",
            &claim_uri,
            "--dest",
            dest2.to_str().unwrap(),
            "--pvc-root",
            root.to_str().unwrap(),
            "--sha256",
            &digest,
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{logs}");

    // A wrong digest fails, says so, and leaves nothing half-trusted behind.
    let dest3 = scratch("fetch-dest3");
    let Outcome {
        code, stderr: logs, ..
    } = fetch_into(&uri, &dest3, Some(&"0".repeat(64)), &[]);
    assert_eq!(code, Some(1));
    assert!(logs.contains("sha256 mismatch"), "{logs}");
    assert!(!dest3.join("tokenizer.json").exists());

    for dir in [source, dest, dest2, dest3] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn fetch_copies_a_single_file() {
    let volume = scratch("fetch-file");
    let dest = volume.join("model");
    let source = minilm_dir().join("tokenizer.json");
    let digest = path_sha256(&source).unwrap();
    let uri = format!("file://{}", source.display());
    let Outcome {
        code, stderr: logs, ..
    } = fetch_into(&uri, &dest, Some(&digest), &[]);
    assert_eq!(code, Some(0), "{logs}");
    // The destination is the file itself: what serve is pointed at, and what the pin covers.
    assert!(dest.is_file());
    assert_eq!(path_sha256(&dest).unwrap(), digest);
    let _ = std::fs::remove_dir_all(volume);
}

#[test]
fn fetch_rejects_what_it_cannot_do() {
    let dest = scratch("fetch-unsupported");
    for (uri, message) in [
        (
            "s3://bucket/model",
            "needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        ("file:///does/not/exist", "does not exist"),
        ("relative/path", "invalid model uri"),
    ] {
        let Outcome {
            code, stderr: logs, ..
        } = fetch_into(uri, &dest, None, &[]);
        assert_eq!(code, Some(1), "{uri}");
        assert!(logs.contains(message), "{uri}: {logs}");
    }
    let _ = std::fs::remove_dir_all(dest);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn serve_reads_the_spec_shaped_file_and_flags_override_it() {
    let dir = scratch("config");
    let config = dir.join("sidecar.yaml");
    write(
        &config,
        &format!(
            r#"
model:
  uri: file://{model}
  format: onnx
  task: embed
  tokenizer: file://{tokenizer}
  pooling: mean
  normalize: true
  futureField: ignored
runtime:
  backend: onnx
  threads: 1
  batching: {{maxBatchTokens: 4096, maxBatchRequests: 8, maxQueueDelay: "1ms", maxQueueSize: 64}}
  generation: {{maxConcurrentSequences: 4, kvCacheMemory: "64Mi", blockSize: 16, maxNewTokens: 16}}
  quantize: int8
"#,
            model = minilm_int8_onnx().display(),
            tokenizer = minilm_dir().join("tokenizer.json").display(),
        ),
    );
    let sidecar = Sidecar::start_with_env(
        &[
            "--config".into(),
            config.display().to_string(),
            "--normalize".into(),
            "false".into(),
        ],
        &[
            ("ORT_DYLIB_PATH", ort_dylib().to_str().unwrap()),
            ("LEXSERVE_MODEL_NAME", "from-env"),
        ],
    );
    let client = client();
    sidecar.wait_ready(&client).await;
    let (status, body) = post(
        &client,
        sidecar.url("/v1/embeddings"),
        json!({"input": "hello there", "model": "from-env"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 1e-3,
        "--normalize false overrides the file (norm {norm})"
    );

    // An invalid value in the file is a startup error naming the field, exit code 2.
    write(
        &config,
        "model: {uri: 'file:///m', format: onnx, task: embed}\nruntime: {batching: {maxQueueDelay: soon}}\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_lexserve-sidecar"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("runtime.batching.maxQueueDelay"));
    let _ = std::fs::remove_dir_all(dir);
}
