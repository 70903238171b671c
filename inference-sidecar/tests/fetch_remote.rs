//! `fetch` of `s3://` and `hf://` models, as the init container runs it: the real binary against real
//! servers. S3 is moto (a real S3 emulator speaking the S3 wire protocol, SigV4 and ListObjectsV2
//! included) started as a process; run `inference-sidecar/scripts/setup-s3-emulator.sh` once to
//! install it. The Hub is a small axum server here that serves the two endpoints `fetch` uses, with
//! the Hub's answers for a missing or refused token.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::fetch::{Outcome, fetch_into, scratch};
use lexserve_contract::digest::{path_sha256, to_hex};
use lexserve_sidecar::fetch::remote::sigv4::{self, Credentials};
use serde_json::json;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Files

/// Every file under `dir` (relative path → bytes).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    lexserve_contract::digest::list_files(dir)
        .unwrap()
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// Writes `files` under `dir`, for the directory digest the fetched copy must match.
fn write_tree(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Deterministic bytes that are not all alike (so a misplaced chunk would show).
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// S3: moto in server mode

/// Where `setup-s3-emulator.sh` installs moto.
fn moto_server_bin() -> PathBuf {
    lexserve_testkit::require(lexserve_testkit::moto_server())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto server on a free port, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
    /// moto's request log, kept only while it runs (a failing assertion can point at it).
    log: PathBuf,
}

impl Moto {
    /// `no_auth_requests`: when set, moto checks credentials after that many requests
    /// (`INITIAL_NO_AUTH_ACTION_COUNT`), so the setup can run unauthenticated and later requests
    /// with an unknown key are refused with a real 403.
    fn start(name: &str, no_auth_requests: Option<u32>) -> Self {
        let bin = moto_server_bin();
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("lexserve-moto-{name}-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(&bin);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        if let Some(count) = no_auth_requests {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", count.to_string());
        }
        let mut child = command.spawn().expect("start moto_server");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "moto_server exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("moto_server did not listen on {addr} within 90s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Signed PUT (bucket creation or object upload) with the sidecar's own SigV4 signer, which
    /// moto verifies the way S3 does once authentication is on.
    fn put(&self, path: &str, body: Vec<u8>) {
        let url = reqwest::Url::parse(&format!(
            "{}/{}",
            self.endpoint,
            sigv4::uri_encode(path, true)
        ))
        .unwrap();
        let credentials = Credentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        };
        let headers = sigv4::sign(
            "PUT",
            &url,
            &[],
            &sha256_hex(&body),
            &credentials,
            "us-east-1",
            SystemTime::now(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = runtime.block_on(async {
            let mut request = reqwest::Client::new().put(url.clone()).body(body);
            for (name, value) in &headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let response = request.send().await.expect("PUT to moto");
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            assert!(status.is_success(), "PUT {url}: {status}: {text}");
            status
        });
        assert!(status.is_success());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn s3_env(moto: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
    ]
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Nothing but the expected entries: in particular no staging directory left behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A directory fetch of `uri` that succeeded: `dest` holds exactly the files of `expected_dir`,
/// its top level is `top` and nothing else (no staging left behind), and the verified digest went
/// to the termination log.
fn assert_fetched_dir(
    uri: &str,
    out: &Outcome,
    dest: &Path,
    expected_dir: &Path,
    top: &[&str],
    digest: &str,
) {
    assert_eq!(out.code, Some(0), "{uri}: {}", out.stderr);
    assert!(tree(dest) == tree(expected_dir), "{:?}", tree(dest).keys());
    assert_eq!(entries(dest), top);
    assert_eq!(out.termination, format!("sha256:{digest}"));
}

#[test]
fn s3_fetches_an_object_and_a_prefix_and_verifies_them() {
    let moto = Moto::start("fetch", None);
    let model = payload(3 << 20, 7); // several chunks on the wire
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("model.onnx", model.clone()),
        ("tokenizer.json", br#"{"version":"1.0"}"#.to_vec()),
        (
            "1_Pooling/config.json",
            br#"{"pooling_mode_mean_tokens":true}"#.to_vec(),
        ),
        ("notes/a name+with=odd&chars.txt", b"kept as named".to_vec()),
    ];
    moto.put("models", Vec::new());
    for (name, bytes) in &files {
        moto.put(&format!("models/minilm/v1/{name}"), bytes.clone());
    }
    // A console-made "folder" marker, and a sibling prefix that must not be fetched.
    moto.put("models/minilm/v1/empty-folder/", Vec::new());
    moto.put("models/minilm/v10/other.onnx", b"other".to_vec());
    let env = s3_env(&moto);
    let env = as_refs(&env);
    let work = scratch("s3-fetch");

    // One object becomes DEST itself (the file serve loads), verified, and its digest goes to
    // the termination log.
    let dest = work.join("single");
    let digest = sha256_hex(&model);
    let out = fetch_into(
        "s3://models/minilm/v1/model.onnx",
        &dest,
        Some(&digest),
        &env,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(std::fs::read(&dest).unwrap() == model);
    assert_eq!(out.termination, format!("sha256:{digest}"));
    assert_eq!(entries(&work), ["single"], "no staging left beside it");

    // A prefix is a directory: every object under it, at its relative path, digested as a directory.
    let expected_dir = work.join("expected");
    write_tree(&expected_dir, &files);
    let dir_digest = path_sha256(&expected_dir).unwrap();
    let dest = work.join("prefix");
    let uri = "s3://models/minilm/v1/";
    let out = fetch_into(uri, &dest, Some(&dir_digest), &env);
    assert_fetched_dir(
        uri,
        &out,
        &dest,
        &expected_dir,
        &["1_Pooling", "model.onnx", "notes", "tokenizer.json"],
        &dir_digest,
    );

    // Without --sha256 the digest is computed and still reported.
    let dest = work.join("unpinned");
    let out = fetch_into("s3://models/minilm/v10/other.onnx", &dest, None, &env);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.termination, format!("sha256:{}", sha256_hex(b"other")));

    // A wrong digest fails, says so, and leaves nothing behind (not even a partial download).
    let dest = work.join("mismatch");
    let out = fetch_into(
        "s3://models/minilm/v1/model.onnx",
        &dest,
        Some(&"0".repeat(64)),
        &env,
    );
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("sha256 mismatch"), "{}", out.stderr);
    assert!(
        out.termination.contains("sha256 mismatch"),
        "{}",
        out.termination
    );
    assert!(entries(&dest).is_empty(), "{:?}", entries(&dest));

    // A missing object or bucket is "not found", with the hint about prefixes.
    for uri in ["s3://models/minilm/v1", "s3://no-such-bucket/model.onnx"] {
        let dest = work.join("missing");
        let out = fetch_into(uri, &dest, None, &env);
        assert_eq!(out.code, Some(1), "{uri}");
        assert!(
            out.stderr.contains(&format!("not found: {uri}")),
            "{}",
            out.stderr
        );
        assert!(
            out.termination.starts_with("not found: "),
            "{}",
            out.termination
        );
        assert!(entries(&dest).is_empty(), "{:?}", entries(&dest));
    }
    let dest = work.join("missing");
    let out = fetch_into("s3://models/nothing/here/", &dest, None, &env);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("has no files to download"),
        "{}",
        out.stderr
    );

    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn s3_without_credentials_names_the_variables() {
    let work = scratch("s3-nocreds");
    let dest = work.join("dest");
    // No server is needed: the check comes before any request.
    let out = fetch_into(
        "s3://models/model.onnx",
        &dest,
        None,
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("s3://models/model.onnx needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{}",
        out.stderr
    );
    assert!(
        out.termination.contains("AWS_SECRET_ACCESS_KEY"),
        "{}",
        out.termination
    );
    assert!(entries(&dest).is_empty());
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn s3_refused_credentials_say_to_check_the_secret() {
    // Two unauthenticated requests (create the bucket, upload), then moto checks every key.
    let moto = Moto::start("auth", Some(2));
    moto.put("secure", Vec::new());
    moto.put("secure/model.onnx", b"weights".to_vec());
    let work = scratch("s3-denied");
    let dest = work.join("dest");
    let mut env = s3_env(&moto);
    env[0].1 = "AKIAUNKNOWNKEY000000".into();
    let out = fetch_into("s3://secure/model.onnx", &dest, None, &as_refs(&env));
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("access denied to s3://secure/model.onnx: check the credentials Secret"),
        "{}",
        out.stderr
    );
    assert!(
        out.termination
            .starts_with("access denied to s3://secure/model.onnx")
    );
    assert!(entries(&dest).is_empty());
    let _ = std::fs::remove_dir_all(&work);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face Hub: the two endpoints `fetch` uses

const HF_TOKEN: &str = "hf_test_token";
const HF_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn hub_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        ("model.safetensors", payload(1 << 20, 42)),
        (
            "1_Pooling/config.json",
            br#"{"pooling_mode_mean_tokens":true}"#.to_vec(),
        ),
    ]
}

/// The Hub's answer when the request's token is missing or wrong; `None` when it is the right one.
fn refused(headers: &HeaderMap) -> Option<Response> {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) if value == format!("Bearer {HF_TOKEN}") => None,
        Some(_) => Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "Invalid credentials in Authorization header"})),
            )
                .into_response(),
        ),
        // The Hub's answer for a private repository without a token.
        None => Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "Repository Not Found for url"})),
            )
                .into_response(),
        ),
    }
}

async fn model_info(
    UrlPath((org, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&headers) {
        return refused;
    }
    if (org.as_str(), name.as_str()) != ("lexserve", "minilm")
        || !["main", "v1.0"].contains(&revision.as_str())
    {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "Repository not found"})),
        )
            .into_response();
    }
    let siblings: Vec<_> = hub_files()
        .iter()
        .map(|(name, _)| json!({"rfilename": name}))
        .collect();
    Json(json!({"id": "lexserve/minilm", "sha": HF_COMMIT, "siblings": siblings})).into_response()
}

async fn resolve(
    UrlPath((org, name, revision, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&headers) {
        return refused;
    }
    // Files must be resolved at the commit the revision named, not at the branch.
    if (org.as_str(), name.as_str(), revision.as_str()) != ("lexserve", "minilm", HF_COMMIT) {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    }
    match hub_files().into_iter().find(|(n, _)| *n == file) {
        Some((_, bytes)) => bytes.into_response(),
        None => (StatusCode::NOT_FOUND, "Entry not found").into_response(),
    }
}

/// The Hub stand-in, started once on a thread of its own (the tests block on child processes).
fn hub() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = Router::new()
                    .route(
                        "/api/models/{org}/{name}/revision/{revision}",
                        get(model_info),
                    )
                    .route("/{org}/{name}/resolve/{revision}/{*file}", get(resolve));
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        endpoint
    })
}

#[test]
fn hf_fetches_a_repository_at_a_revision() {
    let work = scratch("hf-fetch");
    let expected_dir = work.join("expected");
    write_tree(&expected_dir, &hub_files());
    let digest = path_sha256(&expected_dir).unwrap();
    for uri in ["hf://lexserve/minilm", "hf://lexserve/minilm@v1.0"] {
        let dest = work.join("dest");
        let _ = std::fs::remove_dir_all(&dest);
        let out = fetch_into(
            uri,
            &dest,
            Some(&digest),
            &[("HF_ENDPOINT", hub()), ("HF_TOKEN", HF_TOKEN)],
        );
        assert_fetched_dir(
            uri,
            &out,
            &dest,
            &expected_dir,
            &["1_Pooling", "config.json", "model.safetensors"],
            &digest,
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn hf_missing_or_wrong_token_says_to_check_hf_token() {
    let work = scratch("hf-denied");
    let dest = work.join("dest");
    for (env, says) in [
        (vec![("HF_ENDPOINT", hub())], "check HF_TOKEN: none is set"),
        (
            vec![("HF_ENDPOINT", hub()), ("HF_TOKEN", "hf_wrong")],
            "check HF_TOKEN: the token was refused",
        ),
    ] {
        let out = fetch_into("hf://lexserve/minilm", &dest, None, &env);
        assert_eq!(out.code, Some(1));
        assert!(
            out.stderr
                .contains("access denied to hf://lexserve/minilm@main: ")
                && out.stderr.contains(says),
            "{}",
            out.stderr
        );
        assert!(out.termination.contains(says), "{}", out.termination);
        assert!(entries(&dest).is_empty(), "{:?}", entries(&dest));
    }
    // With a good token, an unknown revision is "not found".
    let out = fetch_into(
        "hf://lexserve/minilm@nope",
        &dest,
        None,
        &[("HF_ENDPOINT", hub()), ("HF_TOKEN", HF_TOKEN)],
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("not found: hf://lexserve/minilm@nope"),
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(&work);
}
