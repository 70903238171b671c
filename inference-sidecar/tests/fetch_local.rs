//! `fetch` from `file://` and `pvc://` as the init container runs it, then `serve` pointed where the
//! operator points it: a pinned one-file model under any name loads and verifies, a copy is staged
//! and replaces an older version wholesale, and a symlink may not lead out of a claim.

mod common;

use std::path::Path;

use common::fetch::{Outcome, entries, fetch, fetch_into, scratch};
use common::http::post;
use common::sidecar::Sidecar;
use common::{minilm_dir, minilm_int8_onnx, ort_dylib};
use lexserve_contract::digest::path_sha256;
use serde_json::json;

#[tokio::test]
async fn a_pinned_file_under_any_name_is_fetched_then_served() {
    let work = scratch("fetch-serve-file");
    let source = work.join("published/minilm-q8.onnx");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    std::fs::copy(minilm_int8_onnx(), &source).unwrap();
    // The pin is the file's own sha256, as `sha256sum minilm-q8.onnx` prints it.
    let pin = path_sha256(&source).unwrap();
    let volume = work.join("models");
    let dest = volume.join("model");

    let Outcome {
        code,
        stderr,
        termination,
    } = fetch_into(
        &format!("file://{}", source.display()),
        &dest,
        Some(&pin),
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(termination, format!("sha256:{pin}"));
    assert_eq!(entries(&volume), ["model"], "no staging left behind");

    // serve, pointed at the destination with the same pin, loads and verifies that file.
    let args: Vec<String> = [
        "--model-uri",
        &format!("file://{}", dest.display()),
        "--model-sha256",
        &pin,
        "--model-format",
        "onnx",
        "--task",
        "embed",
        "--tokenizer",
        &format!("file://{}", minilm_dir().join("tokenizer.json").display()),
        "--ort-dylib-path",
        &ort_dylib().display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (sidecar, client) = Sidecar::start_ready(&args).await;
    let (status, body) = post(&client, sidecar.url("/embed"), json!({"texts": ["hello"]})).await;
    assert_eq!(status, 200, "{body}");
    drop(sidecar);
    let _ = std::fs::remove_dir_all(work);
}

#[test]
fn a_local_fetch_is_staged_and_replaces_the_older_version() {
    let work = scratch("fetch-local-versions");
    let volume = work.join("models");
    let dest = volume.join("model");
    // What an earlier version left in a reused volume.
    std::fs::create_dir_all(dest.join("onnx")).unwrap();
    std::fs::write(dest.join("model.safetensors"), b"v1 weights").unwrap();
    std::fs::write(dest.join("onnx/model.onnx"), b"v1 onnx").unwrap();

    let source = work.join("v2");
    std::fs::create_dir_all(source.join("1_Pooling")).unwrap();
    for name in ["config.json", "tokenizer.json", "1_Pooling/config.json"] {
        std::fs::copy(minilm_dir().join(name), source.join(name)).unwrap();
    }
    std::fs::write(source.join("model.safetensors"), b"v2 weights").unwrap();
    let pin = path_sha256(&source).unwrap();
    let uri = format!("file://{}", source.display());

    // A wrong pin leaves the older version as it was, and no staging directory.
    let out = fetch_into(&uri, &dest, Some(&"0".repeat(64)), &[]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.termination.contains("sha256 mismatch"),
        "{}",
        out.termination
    );
    assert_eq!(
        std::fs::read(dest.join("model.safetensors")).unwrap(),
        b"v1 weights"
    );
    assert_eq!(entries(&volume), ["model"]);

    // The right pin: the destination holds exactly the new version, nothing of the old one.
    let out = fetch_into(&uri, &dest, Some(&pin), &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        entries(&dest),
        [
            "1_Pooling",
            "config.json",
            "model.safetensors",
            "tokenizer.json"
        ]
    );
    assert_eq!(path_sha256(&dest).unwrap(), pin);
    assert_eq!(entries(&volume), ["model"], "no staging left behind");
    let _ = std::fs::remove_dir_all(work);
}

#[test]
fn a_symlink_out_of_the_claim_is_refused() {
    let work = scratch("fetch-pvc-symlink");
    let root = work.join("pvc");
    let model = root.join("models/minilm");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("model.onnx"), b"weights").unwrap();
    // Inside the claim: allowed, copied as the file it points to.
    std::fs::create_dir_all(root.join("models/shared")).unwrap();
    std::fs::write(root.join("models/shared/tokenizer.json"), b"{}").unwrap();
    std::os::unix::fs::symlink("../shared/tokenizer.json", model.join("tokenizer.json")).unwrap();
    let volume = work.join("volume");
    let run = |uri: &str, dest: &Path| {
        fetch(
            &[
                "--uri",
                uri,
                "--dest",
                dest.to_str().unwrap(),
                "--pvc-root",
                root.to_str().unwrap(),
            ],
            &[],
        )
    };
    let out = run("pvc://models/minilm", &volume.join("ok"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        std::fs::read(volume.join("ok/tokenizer.json")).unwrap(),
        b"{}"
    );

    // Outside the claim (another part of the pod's filesystem): refused, naming the path.
    let secret = work.join("secret.txt");
    std::fs::write(&secret, b"not the user's").unwrap();
    std::os::unix::fs::symlink(&secret, model.join("extra.txt")).unwrap();
    let out = run("pvc://models/minilm", &volume.join("dir"));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.termination
            .contains("outside the volume of claim \"models\"")
            && out.termination.contains("extra.txt"),
        "{}",
        out.termination
    );
    // The model uri itself may not be such a link either.
    std::os::unix::fs::symlink(&secret, root.join("models/escape.onnx")).unwrap();
    let out = run("pvc://models/escape.onnx", &volume.join("file"));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.termination.contains("escape.onnx") && out.termination.contains("outside"),
        "{}",
        out.termination
    );
    assert_eq!(
        entries(&volume),
        ["ok"],
        "nothing copied for a refused fetch"
    );
    let _ = std::fs::remove_dir_all(work);
}
