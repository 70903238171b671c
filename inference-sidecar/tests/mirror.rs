//! The shadow mirror inside `lexserve-sidecar serve`, as real processes with real models:
//! production sidecars with `mirror.yaml` next to their config, candidates that are real sidecars
//! (behind a recording proxy where the test must see the copies), or a candidate that is slow,
//! dead or never answers. No timed assertions: the bounds are hang guards.

mod common;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use common::http::{client, metric_value};
use common::sidecar::Sidecar;
use common::{SENTENCES, onnx_embed_args, onnx_fp32_embed_args, smollm2_args};
use lexserve_contract::mirror::{
    ComparisonMode, MirrorComparison, MirrorConfig, MirrorLimits, MirrorSampling, MirrorTarget,
    REDACTED, Redaction,
};
use lexserve_contract::router::{AssignmentSource, BUCKETS, bucket_of};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Where every candidate's Service is, for production (`--resolve` sends it to the test's
/// address).
const CANDIDATE_URL: &str = "http://candidate.team-a.svc:8080";

fn resolve_candidate(addr: &str) -> String {
    format!(
        "candidate.team-a.svc:8080={}",
        addr.trim_start_matches("http://")
    )
}

/// A production config directory: `config.yaml` (empty: the flags configure the model) and
/// `mirror.yaml`, replaced whole the way a ConfigMap volume updates.
struct ConfigDir {
    dir: PathBuf,
}

impl ConfigDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("lexserve-mirror-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.yaml"), "").unwrap();
        Self { dir }
    }

    fn config(&self) -> String {
        self.dir.join("config.yaml").display().to_string()
    }

    fn write_text(&self, text: &str) {
        let staged = self.dir.join(".mirror.yaml.new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, self.dir.join("mirror.yaml")).unwrap();
    }

    fn write(&self, generation: u64, targets: Vec<MirrorTarget>) {
        let config = MirrorConfig {
            generation,
            targets,
        };
        self.write_text(&serde_yaml::to_string(&config).unwrap());
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn random() -> MirrorSampling {
    MirrorSampling {
        by: AssignmentSource::Random,
        key: None,
        seed: 0,
    }
}

fn target(shadow: &str, model: &str, mode: ComparisonMode, tolerance: f64) -> MirrorTarget {
    MirrorTarget {
        shadow: shadow.into(),
        url: CANDIDATE_URL.into(),
        model: model.into(),
        percent: 100,
        sampling: random(),
        comparison: MirrorComparison {
            mode,
            tolerance,
            k: None,
        },
        redaction: Redaction::default(),
        limits: MirrorLimits::default(),
    }
}

/// `args` with the model served under `name`.
fn named(mut args: Vec<String>, name: &str) -> Vec<String> {
    match args.iter().position(|a| a == "--model-name") {
        Some(at) => args[at + 1] = name.to_string(),
        None => args.extend(["--model-name".to_string(), name.to_string()]),
    }
    args
}

async fn start(args: Vec<String>) -> Sidecar {
    let (sidecar, _) = Sidecar::start_ready(&args).await;
    sidecar
}

/// Production: `args` with its config in `dir` and candidates resolved to `candidate`.
async fn production(args: Vec<String>, dir: &ConfigDir, candidate: &str) -> Sidecar {
    production_with_delay(args, dir, candidate, "0s").await
}

async fn production_with_delay(
    args: Vec<String>,
    dir: &ConfigDir,
    candidate: &str,
    shutdown_delay: &str,
) -> Sidecar {
    let mut args = args;
    args.extend([
        "--config".to_string(),
        dir.config(),
        "--resolve".into(),
        resolve_candidate(candidate),
        "--shutdown-delay".into(),
        shutdown_delay.into(),
    ]);
    // Why a copy failed is logged at debug: in the failure messages (which print the logs).
    let sidecar = Sidecar::start_with_env(
        &args,
        &[("LEXSERVE_LOG", "info,lexserve_sidecar::mirror=debug")],
    );
    sidecar.wait_ready(&client()).await;
    sidecar
}

/// The value of `sample` in production's /metrics, polled until `done` holds (a hang guard).
async fn wait_metric(sidecar: &Sidecar, sample: &str, done: impl Fn(f64) -> bool) -> f64 {
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = sidecar.metrics(&client).await;
        if let Some(value) = metric_value(&text, sample)
            && done(value)
        {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} never reached the expected value:\n{text}\nlogs: {:?}",
            sidecar.logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sample(sidecar: &Sidecar, sample: &str) -> Option<f64> {
    metric_value(&sidecar.metrics(&client()).await, sample)
}

fn outcome(shadow: &str, outcome: &str) -> String {
    format!("lexserve_shadow_comparisons_total{{shadow=\"{shadow}\",outcome=\"{outcome}\"}}")
}

fn dropped(shadow: &str, reason: &str) -> String {
    format!("lexserve_shadow_dropped_total{{shadow=\"{shadow}\",reason=\"{reason}\"}}")
}

const GENERATION: &str = "lexserve_mirror_config_generation";

/// Every outcome of a shadow, summed.
async fn compared(sidecar: &Sidecar, shadow: &str) -> f64 {
    let text = sidecar.metrics(&client()).await;
    ["agree", "disagree", "candidate_error", "production_error"]
        .iter()
        .filter_map(|o| metric_value(&text, &outcome(shadow, o)))
        .sum()
}

/// A copy as the candidate's side saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    body: Bytes,
    status: u16,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Clone)]
enum Behaviour {
    /// Forwards to a real candidate and records what went by.
    Forward(String),
    /// Answers `{}` after this long (beyond the mirror's timeout).
    Late(Duration),
}

#[derive(Clone)]
struct Proxy {
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Seen>>>,
    client: reqwest::Client,
}

/// A candidate's stand-in on a local port: the address and what it has seen.
async fn proxy(behaviour: Behaviour) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = Proxy {
        behaviour,
        seen: Arc::clone(&seen),
        client: client(),
    };
    let app = axum::Router::new().fallback(relay).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

async fn relay(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let (status, headers, answer) = match &proxy.behaviour {
        Behaviour::Late(delay) => {
            tokio::time::sleep(*delay).await;
            (200, HeaderMap::new(), Bytes::from_static(b"{}"))
        }
        Behaviour::Forward(upstream) => {
            let mut forwarded = proxy
                .client
                .request(parts.method.clone(), format!("{upstream}{path}"))
                .body(body.clone());
            if let Some(content_type) = parts.headers.get("content-type") {
                forwarded = forwarded.header("content-type", content_type.to_str().unwrap());
            }
            let answer = forwarded.send().await.unwrap();
            let status = answer.status().as_u16();
            let mut headers = HeaderMap::new();
            if let Some(content_type) = answer.headers().get("content-type") {
                headers.insert(
                    "content-type",
                    content_type.to_str().unwrap().parse().unwrap(),
                );
            }
            (status, headers, answer.bytes().await.unwrap())
        }
    };
    proxy.seen.lock().unwrap().push(Seen { path, body, status });
    (AxumStatus::from_u16(status).unwrap(), headers, answer).into_response()
}

/// POSTs JSON; the status and the answer's bytes.
async fn post(client: &reqwest::Client, url: String, body: &Value) -> (StatusCode, Bytes) {
    let response = client.post(url).json(body).send().await.expect("request");
    let status = response.status();
    (status, response.bytes().await.expect("answer"))
}

fn embedding(answer: &[u8]) -> Vec<f32> {
    let answer: Value = serde_json::from_slice(answer).unwrap();
    answer["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn v2_infer(text: &str) -> Value {
    json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_candidate_agrees_under_its_own_name_and_the_configuration_reloads() {
    let candidate = start(named(onnx_embed_args(), "minilm-shadow")).await;
    let (proxy_addr, seen) = proxy(Behaviour::Forward(candidate.base.clone())).await;
    let dir = ConfigDir::new("same");
    dir.write(
        1,
        vec![target(
            "same",
            "minilm-shadow",
            ComparisonMode::Cosine,
            1e-3,
        )],
    );
    let production = production(onnx_embed_args(), &dir, &proxy_addr).await;
    wait_metric(&production, GENERATION, |g| g == 1.0).await;
    // Every series of the target is there from the start, at 0.
    for o in ["agree", "disagree", "candidate_error", "production_error"] {
        assert_eq!(sample(&production, &outcome("same", o)).await, Some(0.0));
    }
    let client = client();

    // 1. A candidate identical to production, at 100%: every request compared, all agree.
    let requests = [
        (
            "/v1/embeddings",
            json!({"model": "minilm", "input": "a fine day"}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "minilm", "input": ["x", "y"], "encoding_format": "base64"}),
        ),
        ("/embed", json!({"texts": ["hello", "world"]})),
        ("/v2/models/minilm/infer", v2_infer("hi")),
    ];
    const ROUNDS: usize = 3;
    for _ in 0..ROUNDS {
        for (path, body) in &requests {
            let (status, answer) = post(&client, production.url(path), body).await;
            assert_eq!(status, 200, "{path}: {answer:?}");
        }
    }
    let total = (ROUNDS * requests.len()) as f64;
    wait_metric(&production, &outcome("same", "agree"), |n| n == total).await;
    let text = production.metrics(&client).await;
    for (name, expected) in [
        (outcome("same", "disagree"), 0.0),
        (outcome("same", "candidate_error"), 0.0),
        (outcome("same", "production_error"), 0.0),
        (
            "lexserve_shadow_distance_count{shadow=\"same\"}".to_string(),
            total,
        ),
        (
            "lexserve_shadow_request_duration_seconds_count{shadow=\"same\",side=\"production\"}"
                .to_string(),
            total,
        ),
        (
            "lexserve_shadow_request_duration_seconds_count{shadow=\"same\",side=\"candidate\"}"
                .to_string(),
            total,
        ),
        (dropped("same", "queue_full"), 0.0),
    ] {
        assert_eq!(metric_value(&text, &name), Some(expected), "{name}\n{text}");
    }
    // The copies named the candidate's own name, and it answered them (200, not 404).
    let copies = seen.lock().unwrap().clone();
    assert_eq!(copies.len(), ROUNDS * requests.len());
    for copy in &copies {
        assert_eq!(copy.status, 200, "{copy:?}");
        if copy.path == "/v1/embeddings" {
            assert_eq!(copy.json()["model"], "minilm-shadow", "{copy:?}");
        }
    }
    assert_eq!(
        copies
            .iter()
            .filter(|c| c.path == "/v2/models/minilm-shadow/infer")
            .count(),
        ROUNDS
    );

    // 2. Sampled by a JSON field, half the keys, with redaction: a key's requests are all
    // copied or none are, and the candidate sees the masked request.
    let before = seen.lock().unwrap().len();
    let mut keyed = target("same", "minilm-shadow", ComparisonMode::Cosine, 1e-3);
    keyed.percent = 50;
    keyed.sampling = MirrorSampling {
        by: AssignmentSource::JsonField,
        key: Some("user".into()),
        seed: 7,
    };
    keyed.redaction = Redaction {
        fields: vec!["meta.email".into()],
        patterns: vec![r"\d{3}-\d{4}".into()],
    };
    dir.write(2, vec![keyed.clone()]);
    wait_metric(&production, GENERATION, |g| g == 2.0).await;
    let keys: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let mirrored: Vec<&String> = keys
        .iter()
        .filter(|k| u32::from(bucket_of(7, k.as_bytes())) < 50 * u32::from(BUCKETS) / 100)
        .collect();
    assert!(!mirrored.is_empty() && mirrored.len() < keys.len());
    let request = |key: &str| {
        json!({
            "model": "minilm",
            "input": format!("call {key} at 555-1234"),
            "user": key,
            "meta": {"email": "someone@example.com"}
        })
    };
    let mut production_answers = Vec::new();
    for key in &keys {
        for _ in 0..2 {
            let (status, answer) =
                post(&client, production.url("/v1/embeddings"), &request(key)).await;
            assert_eq!(status, 200);
            production_answers.push((key.clone(), answer));
        }
    }
    let expected = before + 2 * mirrored.len();
    wait_until(
        || seen.lock().unwrap().len() == expected,
        "the keyed copies",
    )
    .await;
    let copies: Vec<Seen> = seen.lock().unwrap()[before..].to_vec();
    for key in &keys {
        let copied = copies
            .iter()
            .filter(|c| c.json()["user"] == json!(key))
            .count();
        let expected = if mirrored.contains(&key) { 2 } else { 0 };
        assert_eq!(copied, expected, "{key}");
    }
    for copy in &copies {
        let body = copy.json();
        assert_eq!(body["meta"]["email"], REDACTED, "{body}");
        let input = body["input"].as_str().unwrap();
        assert!(
            input.ends_with(&format!("at {REDACTED}")) && !input.contains("555"),
            "{input}"
        );
        assert_eq!(body["model"], "minilm-shadow");
    }
    // Production answered the unmasked request: its answer is the candidate's for the unmasked
    // text, not for the masked one.
    let (key, answer) = &production_answers[0];
    let unmasked = post(
        &client,
        candidate.url("/v1/embeddings"),
        &json!({"input": format!("call {key} at 555-1234")}),
    )
    .await
    .1;
    let masked = post(
        &client,
        candidate.url("/v1/embeddings"),
        &json!({"input": format!("call {key} at {REDACTED}")}),
    )
    .await
    .1;
    let production_vector = embedding(answer);
    assert!(common::cosine(&production_vector, &embedding(&unmasked)) > 0.99999);
    assert!(common::cosine(&production_vector, &embedding(&masked)) < 0.999);

    // 3. An invalid file: counted, the configuration in force kept (still mirroring).
    let mut invalid = keyed.clone();
    invalid.percent = 200;
    dir.write(3, vec![invalid]);
    wait_metric(&production, "lexserve_mirror_config_errors_total", |n| {
        n == 1.0
    })
    .await;
    assert_eq!(sample(&production, GENERATION).await, Some(2.0));
    let before = seen.lock().unwrap().len();
    let (status, _) = post(
        &client,
        production.url("/v1/embeddings"),
        &request(mirrored[0]),
    )
    .await;
    assert_eq!(status, 200);
    wait_until(
        || seen.lock().unwrap().len() == before + 1,
        "a copy under the kept configuration",
    )
    .await;

    // 4. The target removed (another in its place): no more copies to it.
    // Every copy so far has been compared: the count can only move if "same" gets another.
    let copies_so_far = seen.lock().unwrap().len() as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while compared(&production, "same").await != copies_so_far {
        assert!(
            Instant::now() < deadline,
            "the copies were never all compared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let same_before = copies_so_far;
    let mut marker = target("marker", "minilm-marker", ComparisonMode::Cosine, 1e-3);
    marker.percent = 100;
    dir.write(4, vec![marker]);
    wait_metric(&production, GENERATION, |g| g == 4.0).await;
    let before = seen.lock().unwrap().len();
    for key in &mirrored {
        let (status, _) = post(&client, production.url("/v1/embeddings"), &request(key)).await;
        assert_eq!(status, 200);
    }
    // Each request goes to the marker (which the candidate answers 404: not its name)...
    wait_until(
        || seen.lock().unwrap().len() >= before + mirrored.len(),
        "the marker's copies",
    )
    .await;
    wait_metric(&production, &outcome("marker", "candidate_error"), |n| {
        n == mirrored.len() as f64
    })
    .await;
    // ...and none to the removed target, whose counts stay where they were.
    let copies: Vec<Seen> = seen.lock().unwrap()[before..].to_vec();
    assert_eq!(copies.len(), mirrored.len(), "{copies:?}");
    assert!(
        copies
            .iter()
            .all(|c| c.json()["model"] == "minilm-marker" && c.status == 404),
        "{copies:?}"
    );
    assert_eq!(compared(&production, "same").await, same_before);
}

/// Polls `done` (a hang guard, not a timing assertion).
async fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_dead_or_overloaded_candidate_never_changes_productions_answers() {
    // `slow` answers long after the mirror's timeout; nothing listens on `dead`; `stuck` accepts
    // connections and never answers.
    let (slow, _) = proxy(Behaviour::Late(Duration::from_secs(30))).await;
    let dead = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stuck.accept().await {
            held.push(socket);
        }
    });
    let dir = ConfigDir::new("bad");
    let mut args = onnx_embed_args();
    args.extend([
        "--resolve".to_string(),
        format!("dead.team-a.svc:8080={dead}"),
        "--resolve".to_string(),
        format!("stuck.team-a.svc:8080={stuck_addr}"),
    ]);
    // A long shutdown delay: /metrics still answers after SIGTERM (a second one skips the rest).
    let mut production = production_with_delay(args, &dir, &slow, "2m").await;
    assert_eq!(sample(&production, GENERATION).await, Some(0.0));
    let client = client();
    let requests: Vec<(&str, Value)> = SENTENCES[..6]
        .iter()
        .flat_map(|s| {
            [
                ("/v1/embeddings", json!({"model": "minilm", "input": s})),
                ("/v2/models/minilm/infer", v2_infer(s)),
            ]
        })
        .collect();
    let answer_all = async || {
        let mut answers = Vec::new();
        for (path, body) in &requests {
            let response = client
                .post(production.url(path))
                .json(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let content_type = response.headers().get("content-type").cloned();
            answers.push((status, content_type, response.bytes().await.unwrap()));
        }
        answers
    };
    let without = answer_all().await;
    assert!(without.iter().all(|(status, _, _)| *status == 200));

    let mut slow_target = target("slow", "minilm", ComparisonMode::Cosine, 1e-3);
    slow_target.limits.timeout_ms = 200;
    let mut dead_target = target("dead", "minilm", ComparisonMode::Cosine, 1e-3);
    dead_target.url = "http://dead.team-a.svc:8080".into();
    let mut stuck_target = target("stuck", "minilm", ComparisonMode::Cosine, 1e-3);
    stuck_target.url = "http://stuck.team-a.svc:8080".into();
    stuck_target.limits = MirrorLimits {
        queue: 1,
        concurrency: 1,
        timeout_ms: 600_000,
    };
    dir.write(1, vec![slow_target, dead_target, stuck_target]);
    wait_metric(&production, GENERATION, |g| g == 1.0).await;
    let with = answer_all().await;
    // Byte for byte what production answered without the mirror, none waiting for a candidate.
    assert_eq!(with, without);

    let n = requests.len() as f64;
    wait_metric(&production, &outcome("slow", "candidate_error"), |c| c == n).await;
    wait_metric(&production, &outcome("dead", "candidate_error"), |c| c == n).await;
    // One copy in flight and one queued, the rest dropped, counted. The mirror's thread runs only
    // when production's do not want the CPU (SCHED_IDLE): on a busy machine it may take its first
    // copy only after the second was refused, so one more may be dropped.
    let full = wait_metric(&production, &dropped("stuck", "queue_full"), |c| {
        c >= n - 2.0
    })
    .await;
    assert!(full <= n - 1.0, "{full} of {n} copies dropped");
    assert_eq!(compared(&production, "stuck").await, 0.0);
    assert_eq!(compared(&production, "slow").await, n);

    // SIGTERM with a copy stuck in flight and what is queued: the queued ones are dropped
    // (counted), and production exits at once anyway. Every copy is accounted for: dropped as
    // queue_full, dropped at shutdown, or the one in flight.
    production.sigterm();
    let shutdown = wait_metric(&production, &dropped("stuck", "shutdown"), |c| {
        full + c >= n - 1.0
    })
    .await;
    assert!(full + shutdown <= n, "{full} + {shutdown} of {n}");
    production.sigterm();
    assert_eq!(
        production.wait_exit(Duration::from_secs(60)),
        Some(0),
        "logs: {:?}",
        production.logs.lock().unwrap()
    );
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int8_against_fp32_minilm_by_cosine_fills_the_distance_histogram() {
    let candidate = start(named(onnx_fp32_embed_args(), "minilm-fp32")).await;
    let dir = ConfigDir::new("cosine");
    let tolerance = 1e-3;
    dir.write(
        1,
        vec![target(
            "fp32",
            "minilm-fp32",
            ComparisonMode::Cosine,
            tolerance,
        )],
    );
    let production = production(onnx_embed_args(), &dir, &candidate.base).await;
    wait_metric(&production, GENERATION, |g| g == 1.0).await;
    let client = client();
    let mut distances = Vec::new();
    for sentence in SENTENCES {
        let (status, int8) = post(
            &client,
            production.url("/v1/embeddings"),
            &json!({"model": "minilm", "input": sentence}),
        )
        .await;
        assert_eq!(status, 200);
        let (_, fp32) = post(
            &client,
            candidate.url("/v1/embeddings"),
            &json!({"input": sentence}),
        )
        .await;
        distances.push(1.0 - common::cosine(&embedding(&int8), &embedding(&fp32)));
    }
    let n = SENTENCES.len() as f64;
    wait_metric(
        &production,
        "lexserve_shadow_distance_count{shadow=\"fp32\"}",
        |c| c == n,
    )
    .await;
    let text = production.metrics(&client).await;
    let agree = metric_value(&text, &outcome("fp32", "agree")).unwrap();
    let disagree = metric_value(&text, &outcome("fp32", "disagree")).unwrap();
    assert_eq!(agree + disagree, n, "{text}");
    // The mirror measured what the test measures directly (int8 is not fp32: above 0).
    let sum = metric_value(&text, "lexserve_shadow_distance_sum{shadow=\"fp32\"}").unwrap();
    let expected: f64 = distances.iter().sum();
    assert!(
        sum > 0.0 && (sum - expected).abs() < 1e-4,
        "{sum} vs {expected}: {distances:?}"
    );
    // And the verdicts are those the tolerance implies (away from its edge, where float noise
    // between two runs of a model could tip a pair).
    if distances.iter().all(|d| (d - tolerance).abs() > 1e-5) {
        let within = distances.iter().filter(|d| **d <= tolerance).count() as f64;
        assert_eq!(agree, within, "{distances:?}");
    }
}

/// The sentiment classifier `tests/classify.rs` trains (MiniLM and a linear head), written to a
/// directory the sidecar serves.
async fn trained_classifier() -> PathBuf {
    use common::classifier_training::{read_examples, train_head, write_classifier_dir};
    let out =
        std::env::temp_dir().join(format!("lexserve-mirror-classifier-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let dir = out.clone();
    tokio::task::spawn_blocking(move || {
        let mut pipeline = lexserve_sidecar::encoder::pipeline::Pipeline::load(
            &common::serve_config(&common::candle_embed_args()),
        )
        .expect("load encoder");
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/sentiment/train.tsv");
        let examples = read_examples(&data).expect("training data");
        let trained = train_head(&mut pipeline, &examples).expect("train");
        write_classifier_dir(&common::minilm_dir(), &trained, &dir).expect("write classifier");
    })
    .await
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classifier_pair_by_label_and_top_k_fills_both_confidence_histograms() {
    let classifier = trained_classifier().await;
    let args = |name: &str| {
        vec![
            "--model-uri".to_string(),
            format!("file://{}", classifier.display()),
            "--model-format".into(),
            "safetensors".into(),
            "--task".into(),
            "classify".into(),
            "--model-name".into(),
            name.into(),
        ]
    };
    let candidate = start(args("sentiment-shadow")).await;
    let dir = ConfigDir::new("classify");
    let mut top_k = target("topk", "sentiment-shadow", ComparisonMode::TopK, 0.0);
    top_k.comparison.k = Some(2);
    dir.write(
        1,
        vec![
            target("label", "sentiment-shadow", ComparisonMode::Label, 0.0),
            top_k,
        ],
    );
    let production = production(args("sentiment"), &dir, &candidate.base).await;
    wait_metric(&production, GENERATION, |g| g == 1.0).await;
    let client = client();
    let mut inputs = 0;
    for pair in SENTENCES.chunks(2) {
        let (status, _) = post(&client, production.url("/predict"), &json!({"texts": pair})).await;
        assert_eq!(status, 200);
        inputs += pair.len();
    }
    for sentence in &SENTENCES[..4] {
        let (status, _) = post(
            &client,
            production.url("/v2/models/sentiment/infer"),
            &v2_infer(sentence),
        )
        .await;
        assert_eq!(status, 200);
        inputs += 1;
    }
    let requests = (SENTENCES.len() / 2 + 4) as f64;
    for shadow in ["label", "topk"] {
        // The same model on both sides: every pair agrees.
        wait_metric(&production, &outcome(shadow, "agree"), |c| c == requests).await;
        for side in ["production", "candidate"] {
            let count = sample(
                &production,
                &format!("lexserve_shadow_confidence_count{{shadow=\"{shadow}\",side=\"{side}\"}}"),
            )
            .await;
            assert_eq!(count, Some(inputs as f64), "{shadow} {side}");
        }
    }
    assert_eq!(
        sample(&production, &outcome("label", "disagree")).await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_pairs_compare_by_text_streamed_or_not() {
    let candidate = start(named(smollm2_args(), "smollm2-shadow")).await;
    let dir = ConfigDir::new("text");
    let mut text = target("text", "smollm2-shadow", ComparisonMode::Text, 0.0);
    // Two decoders share the test machine's cores: a copy may take long, and this test is
    // about the comparison, not the timeout.
    text.limits.timeout_ms = 600_000;
    dir.write(1, vec![text]);
    let production = production(smollm2_args(), &dir, &candidate.base).await;
    wait_metric(&production, GENERATION, |g| g == 1.0).await;
    let client = client();
    let native = json!({"inputs": common::FRANCE_CHATML, "parameters": {"max_new_tokens": 8}});
    let chat = |stream: bool| {
        json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8,
            "temperature": 0,
            "stream": stream,
        })
    };
    let requests = [
        ("/generate", native.clone()),
        ("/generate_stream", native),
        ("/v1/chat/completions", chat(false)),
        ("/v1/chat/completions", chat(true)),
        (
            "/v1/completions",
            json!({"model": "smollm2", "prompt": common::FRANCE_CHATML, "max_tokens": 8, "temperature": 0, "stream": true}),
        ),
    ];
    for (path, body) in &requests {
        let (status, answer) = post(&client, production.url(path), body).await;
        assert_eq!(status, 200, "{path}: {answer:?}");
    }
    let n = requests.len() as f64;
    wait_metric(&production, &outcome("text", "agree"), |c| c == n).await;
    let text = production.metrics(&client).await;
    assert_eq!(
        metric_value(&text, &outcome("text", "disagree")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, &outcome("text", "candidate_error")),
        Some(0.0),
        "{text}"
    );
}
