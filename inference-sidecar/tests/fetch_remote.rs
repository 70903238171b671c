//! `fetch` of `s3://` and `hf://` models, as the init container runs it: the real binary against real
//! servers. S3 is moto (a real S3 emulator speaking the S3 wire protocol, SigV4 and ListObjectsV2
//! included) started as a process; run `inference-sidecar/scripts/setup-s3-emulator.sh` once to
//! install it. The Hub is a small axum server here that serves the two endpoints `fetch` uses, with
//! the Hub's answers for a missing or refused token. The cases a real server cannot be made to
//! produce (a connection cut mid-body, a redirect to another host) put a small proxy or listener
//! of this file's own between `fetch` and moto.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::fetch::{Outcome, entries, fetch_into, scratch};
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
        self.put_query(path, "", body);
    }

    /// [`Self::put`] with a query (`versioning` turns a bucket's versioning on).
    fn put_query(&self, path: &str, query: &str, body: Vec<u8>) {
        let mut url = reqwest::Url::parse(&format!(
            "{}/{}",
            self.endpoint,
            sigv4::uri_encode(path, true)
        ))
        .unwrap();
        if !query.is_empty() {
            url.set_query(Some(query));
        }
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

impl Moto {
    /// An IAM query-API call (`Action=...&...`), signed for the `iam` service so that moto routes
    /// it there.
    fn iam(&self, form: &str) {
        let url = reqwest::Url::parse(&format!("{}/", self.endpoint)).unwrap();
        let credentials = Credentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        };
        let date = sigv4::amz_date(SystemTime::now());
        let payload = sha256_hex(form.as_bytes());
        let headers = vec![
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("host".to_string(), sigv4::host_header(&url)),
            ("x-amz-content-sha256".to_string(), payload.clone()),
            ("x-amz-date".to_string(), date.clone()),
        ];
        let authorization = sigv4::authorization(
            &credentials,
            "us-east-1",
            "iam",
            &date,
            &sigv4::SigningRequest {
                method: "POST",
                path: "/",
                query: &[],
                headers: &headers,
                payload_sha256: &payload,
            },
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut request = reqwest::Client::new()
                .post(url.clone())
                .body(form.to_string())
                .header("authorization", authorization);
            for (name, value) in headers.iter().filter(|(n, _)| n != "host") {
                request = request.header(name.as_str(), value.as_str());
            }
            let response = request.send().await.expect("POST to moto");
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            assert!(status.is_success(), "IAM {form}: {status}: {text}");
        });
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
    assert_eq!(
        out.termination.split(' ').next(),
        Some(format!("sha256:{digest}").as_str()),
        "{}",
        out.termination
    );
}

/// `fetch --uri URI --dest DEST` and `extra` arguments.
fn fetch_with(uri: &str, dest: &Path, extra: &[&str], env: &[(&str, &str)]) -> Outcome {
    let dest = dest.to_str().expect("UTF-8 destination");
    let mut args = vec!["--uri", uri, "--dest", dest];
    args.extend(extra);
    common::fetch::fetch(&args, env)
}

/// The revision a successful fetch reported (`revision:<...>` in its termination message).
fn reported_revision(out: &Outcome) -> String {
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.termination
        .split(' ')
        .find_map(|w| w.strip_prefix("revision:"))
        .unwrap_or_else(|| panic!("no revision in {:?}", out.termination))
        .to_string()
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
    assert!(
        out.termination
            .starts_with(&format!("sha256:{digest} revision:etag:")),
        "{}",
        out.termination
    );
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
    assert!(
        out.termination
            .starts_with(&format!("sha256:{} ", sha256_hex(b"other"))),
        "{}",
        out.termination
    );

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
    // Both ways a pod gets credentials are named: a Secret's keys, or a web identity.
    assert!(
        out.stderr
            .contains("or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN"),
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
// Listeners and a proxy of the test's own, for what moto cannot be made to do

/// Reads an HTTP request head (requests `fetch` sends have no body).
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The value of header `name` in a request head (names compared case-insensitively).
fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A listener that records every request head it receives, then answers with `response`.
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(response: impl Fn(&str) -> String + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let head = read_head(&mut stream);
                // Recorded before answering: once `fetch` has read an answer, the head is here.
                recorded.lock().unwrap().push(head.clone());
                let _ = stream.write_all(response(&head).as_bytes());
                let _ = stream.shutdown(Shutdown::Both);
            }
        });
        Self { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// A proxy in front of moto that records each request head and can cut responses short: the
/// next `cut_next` responses are sent up to `cut_after` bytes of their body, then the connection
/// is closed, as a restarted load balancer or a dropped link would.
struct CuttingProxy {
    endpoint: String,
    heads: Arc<Mutex<Vec<String>>>,
    responses: Arc<Mutex<Vec<String>>>,
}

impl CuttingProxy {
    fn start(upstream: &str, cut_after: usize, cut_next: usize) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("moto listens on an IP address");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let responses = Arc::new(Mutex::new(Vec::new()));
        let answered = responses.clone();
        std::thread::spawn(move || {
            let mut cuts_left = cut_next;
            for stream in listener.incoming() {
                let Ok(mut client) = stream else { continue };
                let head = read_head(&mut client);
                recorded.lock().unwrap().push(head.clone());
                // One request per connection, so that where a response ends is where moto closes.
                let head: String = head
                    .trim_end()
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect::<String>()
                    + "connection: close\r\n\r\n";
                let Ok(mut server) = TcpStream::connect(upstream) else {
                    continue;
                };
                server.write_all(head.as_bytes()).unwrap();
                let mut response = Vec::new();
                let _ = server.read_to_end(&mut response);
                let body_start = response
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(response.len(), |p| p + 4);
                answered
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&response[..body_start]).into_owned());
                let end = if cuts_left > 0 && response.len() > body_start + cut_after {
                    cuts_left -= 1;
                    body_start + cut_after
                } else {
                    response.len()
                };
                let _ = client.write_all(&response[..end]);
                let _ = client.shutdown(Shutdown::Both);
            }
        });
        Self {
            endpoint,
            heads,
            responses,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The head of each response moto gave (before any cut).
    fn responses(&self) -> Vec<String> {
        self.responses.lock().unwrap().clone()
    }
}

/// Whatever the bucket or key of a uri holds, signed requests go to the configured endpoint and
/// nowhere else: a host in the bucket is refused by the grammar, a key full of URL syntax is
/// fetched as the key it is, and dot segments (which a URL parser would resolve, in path style
/// into another bucket) are refused.
#[test]
fn s3_crafted_uris_never_reach_another_host() {
    let moto = Moto::start("crafted", None);
    let trap = Recorder::start(|_| "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntrap".into());
    let odd_key = format!("a?x-id=1&list-type=2#frag%41@{}/model.onnx", trap.addr);
    moto.put("models", Vec::new());
    moto.put(&format!("models/{odd_key}"), b"the real weights".to_vec());
    let mut env = s3_env(&moto);
    env.push(("AWS_SESSION_TOKEN", "session-token".into()));
    let env = as_refs(&env);
    let work = scratch("s3-crafted");

    let dest = work.join("odd");
    let out = fetch_into(&format!("s3://models/{odd_key}"), &dest, None, &env);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(std::fs::read(&dest).unwrap(), b"the real weights");

    for (uri, says) in [
        (format!("s3://{}/model.onnx", trap.addr), "bucket name"),
        (format!("s3://user@{}/model.onnx", trap.addr), "bucket name"),
        ("s3://127.0.0.1/model.onnx".to_string(), "bucket name"),
        ("s3://169.254.169.254/latest".to_string(), "bucket name"),
        ("s3://a..b/model.onnx".to_string(), "bucket name"),
        (
            format!("s3://models/../{}/model.onnx", trap.addr),
            "refusing to write",
        ),
        ("s3://models/x/./y".to_string(), "refusing to write"),
    ] {
        let dest = work.join("refused");
        let out = fetch_into(&uri, &dest, None, &env);
        assert_eq!(out.code, Some(1), "{uri}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{uri}: {}", out.stderr);
        assert!(entries(&dest).is_empty(), "{:?}", entries(&dest));
    }
    assert!(trap.heads().is_empty(), "{:?}", trap.heads());
    let _ = std::fs::remove_dir_all(&work);
}

/// A redirect is not followed with the signature and the session token: it becomes an error that
/// says which setting to fix, and the host it pointed at hears nothing.
#[test]
fn s3_redirects_are_not_followed_with_credentials() {
    let elsewhere = Recorder::start(|_| "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstole".into());
    let location = format!("http://{}/models/model.onnx", elsewhere.addr);
    let redirecting = Recorder::start(move |_| {
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\nx-amz-bucket-region: eu-west-1\r\ncontent-length: 0\r\n\r\n"
        )
    });
    let work = scratch("s3-redirect");
    let dest = work.join("dest");
    let endpoint = format!("http://{}", redirecting.addr);
    let out = fetch_into(
        "s3://models/model.onnx",
        &dest,
        None,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "session-token"),
            ("AWS_ENDPOINT_URL", &endpoint),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    for says in [
        "HTTP 307",
        "redirected",
        "AWS_REGION=eu-west-1",
        "AWS_ENDPOINT_URL_S3",
    ] {
        assert!(out.stderr.contains(says), "{says}: {}", out.stderr);
    }
    let asked = redirecting.heads();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(header_value(&asked[0], "x-amz-security-token").is_some());
    assert!(elsewhere.heads().is_empty(), "{:?}", elsewhere.heads());
    assert!(entries(&dest).is_empty(), "{:?}", entries(&dest));
    let _ = std::fs::remove_dir_all(&work);
}

/// A connection cut mid-body is resumed from the byte it reached, guarded by the object's ETag,
/// and the result is the object, byte for byte (its digest verified). A link that keeps failing
/// is given up after a bounded number of attempts.
#[test]
fn s3_interrupted_downloads_resume_where_they_stopped() {
    let moto = Moto::start("resume", None);
    let model = payload(3 << 20, 11);
    moto.put("models", Vec::new());
    moto.put("models/big/model.onnx", model.clone());
    let work = scratch("s3-resume");
    let digest = sha256_hex(&model);
    let cut_after = (1 << 20) + 7;

    let proxy = CuttingProxy::start(&moto.endpoint, cut_after, 1);
    let mut env = s3_env(&moto);
    env[3].1 = proxy.endpoint.clone();
    let dest = work.join("resumed");
    let out = fetch_into(
        "s3://models/big/model.onnx",
        &dest,
        Some(&digest),
        &as_refs(&env),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(std::fs::read(&dest).unwrap() == model);
    assert!(
        out.termination
            .starts_with(&format!("sha256:{digest} revision:etag:")),
        "{}",
        out.termination
    );
    let heads = proxy.heads();
    assert_eq!(heads.len(), 2, "{heads:#?}");
    assert_eq!(header_value(&heads[0], "range"), None);
    assert_eq!(
        header_value(&heads[1], "range"),
        Some(format!("bytes={cut_after}-"))
    );
    let etag = header_value(&heads[1], "if-match").expect("the resume names the ETag");
    let announced = header_value(&proxy.responses()[0], "etag").expect("moto sends an ETag");
    assert_eq!(etag, announced);

    // Every response cut: bounded attempts, then a clear failure and nothing left behind.
    let proxy = CuttingProxy::start(&moto.endpoint, 1000, usize::MAX);
    env[3].1 = proxy.endpoint.clone();
    let dest = work.join("given-up");
    let out = fetch_into(
        "s3://models/big/model.onnx",
        &dest,
        Some(&digest),
        &as_refs(&env),
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("gave up after 5 resumed attempts"),
        "{}",
        out.stderr
    );
    assert_eq!(proxy.heads().len(), 6, "one request and five resumes");
    assert!(entries(&dest).is_empty(), "{:?}", entries(&dest));
    let _ = std::fs::remove_dir_all(&work);
}

/// The credentials a pod gets from EKS IRSA: a projected service account token and a role, which
/// STS (moto's) exchanges for temporary credentials. Moto checks every S3 request after the
/// setup: its signature with the temporary secret, its session token, and the role's policy.
#[test]
fn s3_web_identity_credentials_come_from_sts() {
    // Four setup actions and the unsigned AssumeRoleWithWebIdentity run before moto checks
    // credentials; every S3 request after them is checked.
    let moto = Moto::start("irsa", Some(5));
    moto.put("private", Vec::new());
    moto.put("private/model.onnx", b"irsa weights".to_vec());
    moto.iam("Action=CreateRole&Version=2010-05-08&RoleName=model-fetcher&AssumeRolePolicyDocument=%7B%7D");
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;
    moto.iam(&format!(
        "Action=PutRolePolicy&Version=2010-05-08&RoleName=model-fetcher&PolicyName=read&PolicyDocument={}",
        sigv4::uri_encode(policy, false)
    ));
    let work = scratch("s3-irsa");
    let token_file = work.join("token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.projected.token\n").unwrap();
    let dest = work.join("dest");
    let token_path = token_file.display().to_string();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path.as_str()),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/model-fetcher",
        ),
        ("AWS_ROLE_SESSION_NAME", "lexserve-test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL_S3", moto.endpoint.as_str()),
        ("AWS_ENDPOINT_URL_STS", moto.endpoint.as_str()),
    ];
    let digest = sha256_hex(b"irsa weights");
    let out = fetch_into("s3://private/model.onnx", &dest, Some(&digest), &env);
    assert_eq!(
        out.code,
        Some(0),
        "{}\nmoto: {}",
        out.stderr,
        std::fs::read_to_string(&moto.log).unwrap_or_default()
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"irsa weights");
    assert!(
        out.stderr
            .contains("assumed the role with the web identity token"),
        "{}",
        out.stderr
    );

    // The same request with static keys moto does not know is refused: the success above was
    // the temporary credentials', not an open door.
    let dest = work.join("static");
    let out = fetch_into(
        "s3://private/model.onnx",
        &dest,
        None,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("access denied"), "{}", out.stderr);

    // An unreadable token file says which setting points at it.
    let missing = work.join("no-token").display().to_string();
    let mut env = env;
    env[0].1 = missing.as_str();
    let out = fetch_into("s3://private/model.onnx", &work.join("none"), None, &env);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("invalid AWS_WEB_IDENTITY_TOKEN_FILE="),
        "{}",
        out.stderr
    );
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

/// `lexserve/moving`'s `main`: which of [`MOVING_COMMITS`] it points at (a push moves it).
static MOVING_HEAD: AtomicUsize = AtomicUsize::new(0);
const MOVING_COMMITS: [&str; 2] = [
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
];
const GGUF_COMMIT: &str = "9999999999999999999999999999999999999999";
const ALL_FORMATS_COMMIT: &str = "5555555555555555555555555555555555555555";

/// `lexserve/moving` at one of its commits: the same files, other weights.
fn moving_files(commit: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        ("model.safetensors", payload(64 << 10, 100 + commit as u8)),
        ("tokenizer.json", br#"{"version":"1.0"}"#.to_vec()),
    ]
}

/// A GGUF repository as they are published: one file per quantization.
fn gguf_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("README.md", b"# quantizations".to_vec()),
        ("model-Q4_K_M.gguf", payload(32 << 10, 1)),
        ("model-Q8_0.gguf", payload(48 << 10, 2)),
        ("model-F16.gguf", payload(64 << 10, 3)),
    ]
}

/// A repository with the model in every format, as sentence-transformers publishes them.
fn all_formats_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("README.md", b"# model".to_vec()),
        ("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        ("model.safetensors", payload(16 << 10, 11)),
        ("pytorch_model.bin", payload(16 << 10, 12)),
        ("onnx/model.onnx", payload(16 << 10, 13)),
        ("onnx/model_quantized.onnx", payload(8 << 10, 14)),
        ("onnx/model_O4.onnx", payload(16 << 10, 15)),
        ("openvino/openvino_model.bin", payload(16 << 10, 16)),
        ("tokenizer.json", br#"{"version":"1.0"}"#.to_vec()),
        ("tokenizer_config.json", br#"{}"#.to_vec()),
        ("vocab.txt", b"[PAD]\n".to_vec()),
        (
            "1_Pooling/config.json",
            br#"{"pooling_mode_mean_tokens":true}"#.to_vec(),
        ),
    ]
}

/// A repository's files: (path, bytes).
type RepoFiles = Vec<(&'static str, Vec<u8>)>;

/// The commit `revision` of `repo` points at, and the files there.
fn hub_repo(repo: &str, revision: &str) -> Option<(String, RepoFiles)> {
    match repo {
        "lexserve/minilm" if ["main", "v1.0", HF_COMMIT].contains(&revision) => {
            Some((HF_COMMIT.into(), hub_files()))
        }
        "lexserve/moving" => {
            let index = if revision == "main" {
                MOVING_HEAD.load(Ordering::SeqCst)
            } else {
                MOVING_COMMITS.iter().position(|c| *c == revision)?
            };
            Some((MOVING_COMMITS[index].into(), moving_files(index)))
        }
        "lexserve/gguf" if ["main", GGUF_COMMIT].contains(&revision) => {
            Some((GGUF_COMMIT.into(), gguf_files()))
        }
        "lexserve/all-formats" if ["main", ALL_FORMATS_COMMIT].contains(&revision) => {
            Some((ALL_FORMATS_COMMIT.into(), all_formats_files()))
        }
        _ => None,
    }
}

/// Every file download the Hub served: `org/name/file`.
fn hub_downloads() -> &'static Mutex<Vec<String>> {
    static DOWNLOADS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    DOWNLOADS.get_or_init(Default::default)
}

/// The files of `repo` downloaded since `from` (an earlier length of [`hub_downloads`]).
fn downloaded_since(repo: &str, from: usize) -> Vec<String> {
    let all = hub_downloads().lock().unwrap();
    let mut files: Vec<String> = all[from..]
        .iter()
        .filter_map(|d| d.strip_prefix(&format!("{repo}/")))
        .map(str::to_string)
        .collect();
    files.sort();
    files
}

fn downloads_so_far() -> usize {
    hub_downloads().lock().unwrap().len()
}

async fn model_info(
    UrlPath((org, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&headers) {
        return refused;
    }
    let repo = format!("{org}/{name}");
    let Some((commit, files)) = hub_repo(&repo, &revision) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "Repository not found"})),
        )
            .into_response();
    };
    let siblings: Vec<_> = files
        .iter()
        .map(|(name, _)| json!({"rfilename": name}))
        .collect();
    Json(json!({"id": repo, "sha": commit, "siblings": siblings})).into_response()
}

async fn resolve(
    UrlPath((org, name, revision, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&headers) {
        return refused;
    }
    let repo = format!("{org}/{name}");
    // Files must be resolved at the commit the revision named, not at a branch.
    let files = match hub_repo(&repo, &revision) {
        Some((commit, files)) if commit == revision => files,
        _ => return (StatusCode::NOT_FOUND, "Entry not found").into_response(),
    };
    match files.into_iter().find(|(n, _)| *n == file) {
        Some((_, bytes)) => {
            hub_downloads()
                .lock()
                .unwrap()
                .push(format!("{repo}/{file}"));
            bytes.into_response()
        }
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
        let out = fetch_with(
            uri,
            &dest,
            &["--sha256", &digest, "--model-format", "safetensors"],
            &[("HF_ENDPOINT", hub()), ("HF_TOKEN", HF_TOKEN)],
        );
        assert_eq!(reported_revision(&out), HF_COMMIT);
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

const HUB_ENV: fn() -> [(&'static str, &'static str); 2] =
    || [("HF_ENDPOINT", hub()), ("HF_TOKEN", HF_TOKEN)];

#[test]
fn hf_later_fetches_get_the_commit_the_first_one_resolved() {
    let work = scratch("hf-pinned");
    let env = HUB_ENV();
    let uri = "hf://lexserve/moving";
    let format = ["--model-format", "safetensors"];
    let digest_of = |commit: usize| {
        let dir = work.join(format!("expected-{commit}"));
        write_tree(&dir, &moving_files(commit));
        path_sha256(&dir).unwrap()
    };

    MOVING_HEAD.store(0, Ordering::SeqCst);
    let first = fetch_with(uri, &work.join("first"), &format, &env);
    let pinned = reported_revision(&first);
    assert_eq!(pinned, MOVING_COMMITS[0]);
    assert!(
        first
            .termination
            .starts_with(&format!("sha256:{} ", digest_of(0)))
    );

    // A push moves main. A replica started now with the reported revision gets the first
    // replica's bytes; without it, it would serve another model.
    MOVING_HEAD.store(1, Ordering::SeqCst);
    let dest = work.join("pinned");
    let mut args = format.to_vec();
    args.extend(["--revision", &pinned]);
    let out = fetch_with(uri, &dest, &args, &env);
    assert_eq!(reported_revision(&out), MOVING_COMMITS[0]);
    assert_eq!(tree(&dest), tree(&work.join("first")));
    assert_eq!(
        out.termination,
        format!("sha256:{} revision:{}", digest_of(0), MOVING_COMMITS[0])
    );

    let unpinned = fetch_with(uri, &work.join("unpinned"), &format, &env);
    assert_eq!(reported_revision(&unpinned), MOVING_COMMITS[1]);
    assert!(
        unpinned
            .termination
            .starts_with(&format!("sha256:{} ", digest_of(1)))
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn hf_fetches_only_the_files_the_model_needs() {
    let work = scratch("hf-select");
    let env = HUB_ENV();
    let repo = "lexserve/all-formats";
    let support = [
        "1_Pooling/config.json",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ];
    let with = |weights: &str| {
        let mut files: Vec<String> = support.iter().map(|s| s.to_string()).collect();
        files.push(weights.to_string());
        files.sort();
        files
    };
    for (args, expected) in [
        (
            vec!["--model-format", "onnx", "--task", "embed"],
            with("onnx/model.onnx"),
        ),
        (
            vec![
                "--model-format",
                "onnx",
                "--task",
                "embed",
                "--quantize",
                "int8",
            ],
            with("onnx/model_quantized.onnx"),
        ),
        (
            vec!["--model-format", "safetensors", "--task", "embed"],
            with("model.safetensors"),
        ),
        (
            vec!["--artifact", "tokenizer"],
            vec![
                "tokenizer.json".to_string(),
                "tokenizer_config.json".to_string(),
                "vocab.txt".to_string(),
            ],
        ),
    ] {
        let dest = work.join("dest");
        let _ = std::fs::remove_dir_all(&dest);
        let before = downloads_so_far();
        let out = fetch_with(&format!("hf://{repo}"), &dest, &args, &env);
        assert_eq!(reported_revision(&out), ALL_FORMATS_COMMIT, "{args:?}");
        assert_eq!(downloaded_since(repo, before), expected, "{args:?}");
        assert_eq!(tree(&dest).into_keys().collect::<Vec<_>>(), expected);
    }

    // A glob picks the files it matches, at their paths.
    let dest = work.join("glob");
    let before = downloads_so_far();
    let out = fetch_with(&format!("hf://{repo}@main/onnx/*.onnx"), &dest, &[], &env);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        downloaded_since(repo, before),
        [
            "onnx/model.onnx",
            "onnx/model_O4.onnx",
            "onnx/model_quantized.onnx"
        ]
    );
    assert_eq!(entries(&dest), ["onnx"]);

    // No file and no format: nothing is downloaded, and the message says how to choose.
    let before = downloads_so_far();
    let out = fetch_with(&format!("hf://{repo}"), &work.join("none"), &[], &env);
    assert_eq!(out.code, Some(1));
    assert!(
        out.termination.contains("--model-format"),
        "{}",
        out.termination
    );
    assert!(downloaded_since(repo, before).is_empty());
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn hf_gguf_repository_fetches_the_one_quantization_named() {
    let work = scratch("hf-gguf");
    let env = HUB_ENV();
    let repo = "lexserve/gguf";
    let gguf = ["--model-format", "gguf", "--task", "generate"];

    // Several quantizations and none named: a clear error that lists them and shows how to
    // name one, before anything is downloaded.
    let before = downloads_so_far();
    let dest = work.join("ambiguous");
    let out = fetch_with(&format!("hf://{repo}"), &dest, &gguf, &env);
    assert_eq!(out.code, Some(1));
    assert!(
        out.termination.contains(
            "hf://lexserve/gguf@main holds 3 .gguf files; name the one to serve in the uri, e.g. hf://lexserve/gguf@main/model-Q4_K_M.gguf: model-Q4_K_M.gguf, model-Q8_0.gguf, model-F16.gguf"
        ),
        "{}",
        out.termination
    );
    assert!(downloaded_since(repo, before).is_empty());
    assert!(entries(&dest).is_empty(), "{:?}", entries(&dest));

    // Named: that file alone, as DEST itself (the file serve loads), its own digest (the Hub's
    // LFS sha256) reported.
    let bytes = gguf_files()[2].1.clone();
    for uri in [
        format!("hf://{repo}@main/model-Q8_0.gguf"),
        format!("hf://{repo}/model-Q8_0.gguf"),
    ] {
        let dest = work.join("named");
        let _ = std::fs::remove_dir_all(&dest);
        let before = downloads_so_far();
        let out = fetch_with(&uri, &dest, &gguf, &env);
        assert_eq!(reported_revision(&out), GGUF_COMMIT);
        assert_eq!(downloaded_since(repo, before), ["model-Q8_0.gguf"]);
        assert!(dest.is_file(), "the named file becomes DEST");
        assert!(std::fs::read(&dest).unwrap() == bytes);
        assert!(
            out.termination
                .starts_with(&format!("sha256:{} ", sha256_hex(&bytes)))
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn s3_later_fetches_get_the_object_the_first_one_got_or_fail() {
    let moto = Moto::start("pinned", None);
    let env = s3_env(&moto);
    let env = as_refs(&env);
    let work = scratch("s3-pinned");
    let (v1, v2) = (payload(200 << 10, 1), payload(200 << 10, 2));

    // Unversioned: the ETag pins the object; once it is overwritten a pinned fetch fails and
    // leaves nothing, rather than serve other bytes than the first replica.
    moto.put("plain", Vec::new());
    moto.put("plain/m/model.onnx", v1.clone());
    moto.put("plain/m/tokenizer.json", b"{}".to_vec());
    let first = fetch_with("s3://plain/m/model.onnx", &work.join("a"), &[], &env);
    let etag = reported_revision(&first);
    assert!(etag.starts_with("etag:"), "{etag}");
    let prefix = fetch_with("s3://plain/m/", &work.join("p"), &[], &env);
    let listing = reported_revision(&prefix);
    assert!(listing.starts_with("listing:"), "{listing}");
    // Unchanged: the pinned fetches succeed and report the same.
    let again = fetch_with(
        "s3://plain/m/model.onnx",
        &work.join("b"),
        &["--revision", &etag],
        &env,
    );
    assert_eq!(reported_revision(&again), etag);
    let again = fetch_with(
        "s3://plain/m/",
        &work.join("q"),
        &["--revision", &listing],
        &env,
    );
    assert_eq!(reported_revision(&again), listing);

    moto.put("plain/m/model.onnx", v2.clone());
    for (uri, revision) in [
        ("s3://plain/m/model.onnx", &etag),
        ("s3://plain/m/", &listing),
    ] {
        let dest = work.join("changed");
        let out = fetch_with(uri, &dest, &["--revision", revision], &env);
        assert_eq!(out.code, Some(1), "{uri}");
        assert!(
            out.termination.contains(&format!(
                "{uri} is no longer what an earlier fetch got ({revision}): refusing to serve different bytes"
            )),
            "{}",
            out.termination
        );
        assert!(entries(&dest).is_empty(), "{:?}", entries(&dest));
    }
    // A revision of the wrong kind is refused by name.
    let out = fetch_with(
        "s3://plain/m/model.onnx",
        &work.join("bad"),
        &["--revision", &listing],
        &env,
    );
    assert!(out.stderr.contains("invalid --revision"), "{}", out.stderr);

    // Versioned: the version pins the bytes themselves, which an overwrite does not change.
    moto.put("versioned", Vec::new());
    moto.put_query(
        "versioned",
        "versioning",
        br#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>"#.to_vec(),
    );
    moto.put("versioned/model.onnx", v1.clone());
    let first = fetch_with("s3://versioned/model.onnx", &work.join("v1"), &[], &env);
    let version = reported_revision(&first);
    assert!(version.starts_with("versionId:"), "{version}");
    moto.put("versioned/model.onnx", v2);
    let dest = work.join("v-pinned");
    let out = fetch_with(
        "s3://versioned/model.onnx",
        &dest,
        &["--revision", &version],
        &env,
    );
    assert_eq!(reported_revision(&out), version);
    assert!(std::fs::read(&dest).unwrap() == v1);
    assert!(
        out.termination
            .starts_with(&format!("sha256:{} ", sha256_hex(&v1)))
    );
    let _ = std::fs::remove_dir_all(&work);
}
