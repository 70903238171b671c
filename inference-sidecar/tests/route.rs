//! `lexserve-sidecar route` as a real process in front of real sidecars (MiniLM encoders, SmolLM2
//! for streams), reached through `--resolve` as kube-proxy would route a Service: assignment by
//! each key source, the model-name rewrite, streaming pass-through, outcomes, configuration reload
//! under load, a dead or silent variant, overload. No timed assertions: the bounds are hang guards.

mod common;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::http::{client, metric_value};
use common::sidecar::Sidecar;
use common::{onnx_embed_args, smollm2_args};
use futures::StreamExt;
use lexserve_contract::router::{
    AssignmentSource, BucketTable, RouterAssignment, RouterConfig, RouterVariant, bucket_of,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The model name clients of the experiment use (the control's served name).
const SERVED: &str = "sentiment";

/// A directory holding the router's configuration file, replaced the way a ConfigMap volume
/// updates it (a new file swapped in whole).
struct ConfigDir {
    dir: PathBuf,
}

impl ConfigDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("lexserve-route-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("router.yaml")
    }

    fn write_text(&self, text: &str) {
        let staged = self.dir.join(".router.yaml.new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, self.path()).unwrap();
    }

    fn write(&self, config: &RouterConfig) {
        self.write_text(&serde_yaml::to_string(config).unwrap());
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A variant as the operator would name it: its Service URL, the name its sidecar serves, a weight.
struct Arm {
    name: &'static str,
    model: &'static str,
    weight: u32,
}

fn service_url(arm: &str) -> String {
    format!("http://{arm}.team-a.svc:8080")
}

fn router_config(
    generation: u64,
    by: AssignmentSource,
    key: Option<&str>,
    arms: &[Arm],
    outcomes: &[&str],
) -> RouterConfig {
    let weights: Vec<(String, u32)> = arms
        .iter()
        .map(|a| (a.name.to_string(), a.weight))
        .collect();
    RouterConfig {
        experiment: "exp-1".into(),
        generation,
        model: SERVED.into(),
        assignment: RouterAssignment {
            by,
            key: key.map(String::from),
            seed: 42,
        },
        variants: arms
            .iter()
            .map(|a| RouterVariant {
                name: a.name.into(),
                url: service_url(a.name),
                model: a.model.into(),
                weight: a.weight,
            })
            .collect(),
        buckets: BucketTable::initial(&weights).unwrap(),
        outcomes: outcomes.iter().map(|s| s.to_string()).collect(),
    }
}

/// `--resolve` for a variant whose Service is `upstream` here.
fn resolve(arm: &str, upstream: &str) -> String {
    let addr = upstream.trim_start_matches("http://");
    format!("{arm}.team-a.svc:8080={addr}")
}

/// Starts the router on `dir`'s configuration and waits until it is ready.
async fn start_router(dir: &ConfigDir, resolves: &[String], extra: &[&str]) -> Sidecar {
    let mut args = vec![
        "--config".to_string(),
        dir.path().display().to_string(),
        "--shutdown-delay".into(),
        "0s".into(),
    ];
    for r in resolves {
        args.extend(["--resolve".to_string(), r.clone()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let router = Sidecar::start_subcommand("route", &args, &[]);
    router.wait_ready(&client()).await;
    router
}

/// A MiniLM encoder serving under `name`.
async fn encoder(name: &str) -> Sidecar {
    let mut args = onnx_embed_args();
    let at = args.iter().position(|a| a == "--model-name").unwrap();
    args[at + 1] = name.to_string();
    let (sidecar, _) = Sidecar::start_ready(&args).await;
    sidecar
}

/// Two encoders, `a` (the control, serving `sentiment-a`) and `b` (`sentiment-b`).
async fn two_encoders() -> (Sidecar, Sidecar, Vec<String>) {
    let (a, b) = tokio::join!(encoder("sentiment-a"), encoder("sentiment-b"));
    let resolves = vec![resolve("a", &a.base), resolve("b", &b.base)];
    (a, b, resolves)
}

fn arms(weight_a: u32, weight_b: u32) -> [Arm; 2] {
    [
        Arm {
            name: "a",
            model: "sentiment-a",
            weight: weight_a,
        },
        Arm {
            name: "b",
            model: "sentiment-b",
            weight: weight_b,
        },
    ]
}

/// Polls the router's /metrics until `sample` is `value` (bounded: a hang guard).
async fn wait_metric(router: &Sidecar, sample: &str, value: f64) -> String {
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = router.metrics(&client).await;
        if metric_value(&text, sample) == Some(value) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} never became {value}:\n{text}\nlogs: {:?}",
            router.logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn generation_sample() -> String {
    "lexserve_router_config_generation{experiment=\"exp-1\"}".to_string()
}

/// A request through the router: status, the answering variant (header), the JSON.
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Option<String>, Value) {
    let response = request.send().await.expect("request through the router");
    let status = response.status();
    let variant = response
        .headers()
        .get("x-lexserve-variant")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        variant,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn each_key_source_assigns_consistently_by_weight_and_rewrites_the_model_name() {
    let (_a, _b, resolves) = two_encoders().await;
    let dir = ConfigDir::new("keys");
    let sources = [
        (AssignmentSource::Header, Some("x-user")),
        (AssignmentSource::Cookie, Some("session")),
        (AssignmentSource::JsonField, Some("user")),
        (AssignmentSource::Random, None),
    ];
    dir.write(&router_config(
        1,
        sources[0].0,
        sources[0].1,
        &arms(70, 30),
        &[],
    ));
    let router = start_router(&dir, &resolves, &[]).await;
    let client = client();
    let table = router_config(1, sources[0].0, sources[0].1, &arms(70, 30), &[]).buckets;
    const KEYS: usize = 300;

    for (generation, (by, key_name)) in (1..).zip(sources) {
        dir.write(&router_config(generation, by, key_name, &arms(70, 30), &[]));
        wait_metric(&router, &generation_sample(), generation as f64).await;
        let mut to_a = 0;
        for i in 0..KEYS {
            let key = format!("user-{i}");
            let body = json!({"model": SERVED, "input": "a fine day", "user": key});
            let request = client.post(router.url("/v1/embeddings")).json(&body);
            let request = match by {
                AssignmentSource::Header => request.header("x-user", &key),
                AssignmentSource::Cookie => {
                    request.header("cookie", format!("theme=dark; session={key}"))
                }
                AssignmentSource::JsonField | AssignmentSource::Random => request,
            };
            let (status, variant, answer) = send(request).await;
            assert_eq!(status, 200, "{by:?} {key}: {answer}");
            let variant = variant.expect("x-lexserve-variant");
            // The variant's own sidecar answered, under its own name: the name was rewritten.
            assert_eq!(
                answer["model"],
                json!(format!("sentiment-{variant}")),
                "{answer}"
            );
            if by != AssignmentSource::Random {
                let expected = table.owner(bucket_of(42, key.as_bytes())).unwrap();
                assert_eq!(
                    variant, expected,
                    "{by:?}: {key} goes where its bucket says"
                );
            }
            to_a += usize::from(variant == "a");
        }
        // 70% within five standard deviations of a binomial over KEYS draws.
        let share = to_a as f64 / KEYS as f64;
        let sigma = (0.7 * 0.3 / KEYS as f64).sqrt();
        assert!(
            (share - 0.7).abs() < 5.0 * sigma,
            "{by:?}: {to_a} of {KEYS} to a"
        );
        let text = router.metrics(&client).await;
        let assigned: f64 = ["a", "b"]
            .iter()
            .map(|v| {
                metric_value(
                    &text,
                    &format!("lexserve_experiment_assignments_total{{experiment=\"exp-1\",variant=\"{v}\"}}"),
                )
                .unwrap()
            })
            .sum();
        assert_eq!(assigned, (KEYS * generation as usize) as f64, "{text}");
    }

    // The same key, again and again: the same variant.
    dir.write(&router_config(
        5,
        AssignmentSource::Header,
        Some("x-user"),
        &arms(50, 50),
        &[],
    ));
    wait_metric(&router, &generation_sample(), 5.0).await;
    for i in 0..20 {
        let key = format!("sticky-{i}");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let request = client
                .post(router.url("/v1/embeddings"))
                .header("x-user", &key)
                .json(&json!({"input": "x"}));
            seen.push(send(request).await.1.unwrap());
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{key}: {seen:?}");
    }

    // No key: the control, counted apart from the assignments.
    let request = client
        .post(router.url("/v1/embeddings"))
        .json(&json!({"input": "x"}));
    let (status, variant, _) = send(request).await;
    assert_eq!((status, variant.as_deref()), (StatusCode::OK, Some("a")));
    let text = router.metrics(&client).await;
    assert_eq!(
        metric_value(
            &text,
            "lexserve_experiment_unassigned_total{experiment=\"exp-1\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // Another model name: 404 naming it, from the router (no variant answered).
    let request = client
        .post(router.url("/v1/embeddings"))
        .header("x-user", "u")
        .json(&json!({"model": "gpt-4", "input": "x"}));
    let (status, variant, error) = send(request).await;
    assert_eq!((status, variant), (StatusCode::NOT_FOUND, None));
    assert!(
        error["error"].as_str().unwrap().contains("gpt-4"),
        "{error}"
    );
    let request = client
        .post(router.url("/v2/models/other/infer"))
        .json(&json!({"inputs": []}));
    let (status, _, error) = send(request).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        error["error"].as_str().unwrap().contains("other"),
        "{error}"
    );

    // KServe v2: the name in the path is rewritten too.
    let request = client
        .post(router.url(&format!("/v2/models/{SERVED}/infer")))
        .header("x-user", "user-1")
        .json(&json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["one"]}]}));
    let (status, variant, answer) = send(request).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["model_name"],
        json!(format!("sentiment-{}", variant.unwrap()))
    );
}

#[tokio::test]
async fn a_token_stream_passes_through_as_it_is_produced() {
    let mut args = smollm2_args();
    args.extend(["--threads", "2", "--max-new-tokens", "256"].map(String::from));
    let (upstream, client) = Sidecar::start_ready(&args).await;
    let dir = ConfigDir::new("stream");
    let arm = [Arm {
        name: "a",
        model: "smollm2",
        weight: 1,
    }];
    dir.write(&router_config(
        1,
        AssignmentSource::Header,
        Some("x-user"),
        &arm,
        &[],
    ));
    let router = start_router(&dir, &[resolve("a", &upstream.base)], &[]).await;

    let response = client
        .post(router.url("/v1/chat/completions"))
        .header("x-user", "u-1")
        .json(&json!({
            "model": SERVED,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0,
            "max_tokens": 200,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-lexserve-variant"], "a");
    assert_eq!(response.headers()["x-lexserve-request-id"].len(), 32);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.matches("data: ").count() < 3 {
        let chunk = body.next().await.expect("the stream goes on").unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!text.contains("[DONE]"), "{text}");
    // Three events are through the router while the variant is still generating: nothing was
    // held back until the upstream finished.
    let upstream_metrics = upstream.metrics(&client).await;
    assert_eq!(
        metric_value(&upstream_metrics, "lexserve_requests_running"),
        Some(1.0),
        "{upstream_metrics}"
    );
    let router_metrics = router.metrics(&client).await;
    assert_eq!(
        metric_value(&router_metrics, "lexserve_requests_running"),
        Some(1.0),
        "{router_metrics}"
    );
    let first: Value = serde_json::from_str(
        text.split("data: ")
            .nth(1)
            .unwrap()
            .split("\n\n")
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["model"], "smollm2", "{first}");
    drop(body);
    wait_metric(&router, "lexserve_requests_running", 0.0).await;
}

#[tokio::test]
async fn outcomes_by_request_id_and_by_key_are_counted() {
    let (_a, _b, resolves) = two_encoders().await;
    let dir = ConfigDir::new("outcomes");
    let outcomes = ["converted", "latency_ms"];
    let config = router_config(
        1,
        AssignmentSource::Header,
        Some("x-user"),
        &arms(50, 50),
        &outcomes,
    );
    dir.write(&config);
    let router = start_router(&dir, &resolves, &[]).await;
    let client = client();
    let sample = |name: &str, variant: &str, metric: &str| {
        format!("{name}{{experiment=\"exp-1\",variant=\"{variant}\",metric=\"{metric}\"}}")
    };

    // Every series exists at 0 before any outcome.
    let text = router.metrics(&client).await;
    for variant in ["a", "b"] {
        for metric in outcomes {
            for name in [
                "lexserve_experiment_outcome_total",
                "lexserve_experiment_outcome_sum",
                "lexserve_experiment_outcome_sum_squares",
            ] {
                assert_eq!(
                    metric_value(&text, &sample(name, variant, metric)),
                    Some(0.0),
                    "{text}"
                );
            }
        }
        let assignments = format!(
            "lexserve_experiment_assignments_total{{experiment=\"exp-1\",variant=\"{variant}\"}}"
        );
        assert_eq!(metric_value(&text, &assignments), Some(0.0), "{text}");
    }

    let response = client
        .post(router.url("/v1/embeddings"))
        .header("x-user", "user-7")
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    let variant = response.headers()["x-lexserve-variant"]
        .to_str()
        .unwrap()
        .to_string();
    let id = response.headers()["x-lexserve-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let post = |body: Value| client.post(router.url("/outcome")).json(&body).send();
    for value in [1.0, 0.0, 1.0] {
        let answer = post(json!({"requestId": id, "metric": "converted", "value": value}))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let answer: Value = answer.json().await.unwrap();
        assert_eq!(answer["variant"], json!(variant), "{answer}");
    }
    let key_owner = config.buckets.owner(bucket_of(42, b"user-8")).unwrap();
    for value in [2.5, 4.0] {
        let answer = post(json!({"key": "user-8", "metric": "latency_ms", "value": value}))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let text = router.metrics(&client).await;
    let value = |name: &str, variant: &str, metric: &str| {
        metric_value(&text, &sample(name, variant, metric)).unwrap()
    };
    assert_eq!(
        value("lexserve_experiment_outcome_total", &variant, "converted"),
        3.0,
        "{text}"
    );
    assert_eq!(
        value("lexserve_experiment_outcome_sum", &variant, "converted"),
        2.0
    );
    assert_eq!(
        value(
            "lexserve_experiment_outcome_sum_squares",
            &variant,
            "converted"
        ),
        2.0
    );
    assert_eq!(
        value("lexserve_experiment_outcome_total", key_owner, "latency_ms"),
        2.0
    );
    assert_eq!(
        value("lexserve_experiment_outcome_sum", key_owner, "latency_ms"),
        6.5
    );
    assert_eq!(
        value(
            "lexserve_experiment_outcome_sum_squares",
            key_owner,
            "latency_ms"
        ),
        22.25
    );

    // Bad outcomes: a clear error each, nothing counted.
    let cases = [
        (
            json!({"requestId": id, "metric": "clicks", "value": 1}),
            400,
            Some("metric"),
        ),
        (
            json!({"requestId": id, "metric": "converted", "value": -1}),
            422,
            Some("value"),
        ),
        (
            json!({"requestId": id, "metric": "converted", "value": "1"}),
            422,
            Some("value"),
        ),
        (
            json!({"requestId": id, "key": "k", "metric": "converted", "value": 1}),
            422,
            Some("requestId"),
        ),
        (
            json!({"metric": "converted", "value": 1}),
            422,
            Some("requestId"),
        ),
        (
            json!({"requestId": "feedbeef", "metric": "converted", "value": 1}),
            404,
            None,
        ),
    ];
    for (body, status, field) in cases {
        let answer = post(body.clone()).await.unwrap();
        assert_eq!(answer.status(), status, "{body}");
        let error: Value = answer.json().await.unwrap();
        assert!(error["error"].is_string(), "{error}");
        assert_eq!(error["field"].as_str(), field, "{body}: {error}");
    }
    let answer = client
        .post(router.url("/outcome"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let after = router.metrics(&client).await;
    assert_eq!(
        metric_value(
            &after,
            &sample("lexserve_experiment_outcome_total", &variant, "converted")
        ),
        Some(3.0)
    );

    // With random assignment, a key names no variant.
    dir.write(&router_config(
        2,
        AssignmentSource::Random,
        None,
        &arms(50, 50),
        &outcomes,
    ));
    wait_metric(&router, &generation_sample(), 2.0).await;
    let answer = post(json!({"key": "user-8", "metric": "converted", "value": 1}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 422);
}

#[tokio::test]
async fn a_new_configuration_takes_effect_under_load_without_failing_a_request() {
    let (_a, _b, resolves) = two_encoders().await;
    let dir = ConfigDir::new("reload");
    dir.write(&router_config(
        1,
        AssignmentSource::Header,
        Some("x-user"),
        &arms(1, 0),
        &[],
    ));
    let router = Arc::new(start_router(&dir, &resolves, &[]).await);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (router, stop, sent) = (Arc::clone(&router), Arc::clone(&stop), Arc::clone(&sent));
        workers.push(tokio::spawn(async move {
            let client = client();
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let response = client
                    .post(router.url("/v1/embeddings"))
                    .header("x-user", format!("w{worker}-{i}"))
                    .json(&json!({"model": SERVED, "input": "steady load"}))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failures.push(e.to_string()),
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    let client = client();
    let wait_sent = |at_least: usize| {
        let sent = Arc::clone(&sent);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while sent.load(Ordering::SeqCst) < at_least {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_sent(50).await;

    // All to b now.
    dir.write(&router_config(
        2,
        AssignmentSource::Header,
        Some("x-user"),
        &arms(0, 1),
        &[],
    ));
    wait_metric(&router, &generation_sample(), 2.0).await;
    let base = sent.load(Ordering::SeqCst);
    wait_sent(base + 50).await;
    for i in 0..20 {
        let response = client
            .post(router.url("/v1/embeddings"))
            .header("x-user", format!("after-{i}"))
            .json(&json!({"input": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-lexserve-variant"], "b");
    }

    // A broken file: counted, logged, and the configuration in force stays.
    dir.write_text("experiment: exp-1\ngeneration: 3\nvariants: [not a variant]\n");
    wait_metric(&router, "lexserve_router_config_errors_total", 1.0).await;
    let base = sent.load(Ordering::SeqCst);
    wait_sent(base + 50).await;
    let text = router.metrics(&client).await;
    assert_eq!(
        metric_value(&text, &generation_sample()),
        Some(2.0),
        "{text}"
    );

    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "requests failed across reloads: {failures:?}"
    );
    let text = router.metrics(&client).await;
    let to = |v: &str| {
        metric_value(
            &text,
            &format!(
                "lexserve_experiment_assignments_total{{experiment=\"exp-1\",variant=\"{v}\"}}"
            ),
        )
        .unwrap()
    };
    assert!(to("a") >= 50.0 && to("b") >= 100.0, "{text}");
}

#[tokio::test]
async fn a_dead_or_silent_variant_and_overload_get_json_errors() {
    // Nothing listens on `dead` (a port bound and released); `silent` accepts and never answers.
    let dead = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let dir = ConfigDir::new("dead");
    let arms = [
        Arm {
            name: "dead",
            model: "m",
            weight: 1,
        },
        Arm {
            name: "silent",
            model: "m",
            weight: 1,
        },
    ];
    let mut config = router_config(1, AssignmentSource::Header, Some("x-user"), &arms, &[]);
    // Header-less requests go to the control (`dead`); keyed ones are sent to `silent` below.
    config.buckets = BucketTable::initial(&[("dead".into(), 0), ("silent".into(), 1)]).unwrap();
    dir.write(&config);
    let router = start_router(
        &dir,
        &[
            format!("dead.team-a.svc:8080={dead}"),
            format!("silent.team-a.svc:8080={silent_addr}"),
        ],
        &["--max-concurrent-requests", "1", "--request-timeout", "3s"],
    )
    .await;
    let client = client();

    let response = client
        .post(router.url("/v1/embeddings"))
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("\"dead\""),
        "{error}"
    );

    // One request held by the silent variant takes the only permit: the next gets 429 at once.
    let held = {
        let client = client.clone();
        let url = router.url("/v1/embeddings");
        tokio::spawn(async move {
            client
                .post(url)
                .header("x-user", "u")
                .json(&json!({"input": "x"}))
                .send()
                .await
                .unwrap()
        })
    };
    wait_metric(&router, "lexserve_requests_running", 1.0).await;
    let response = client
        .post(router.url("/v1/embeddings"))
        .header("x-user", "v")
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].is_string(), "{error}");

    // The held request ends at the request timeout with 503, not a hang.
    let response = held.await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].is_string(), "{error}");
    holder.abort();
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_and_refuses_new_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A variant that answers when the test says so: the request is in flight for as long as needed.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let variant = tokio::spawn(async move {
        let (mut socket, _) = upstream.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the router closed the connection");
            seen.extend_from_slice(&buffer[..n]);
        }
        let _ = released.await;
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        socket.write_all(answer).await.unwrap();
        socket.flush().await.unwrap();
    });
    let dir = ConfigDir::new("drain");
    let arm = [Arm {
        name: "a",
        model: "m-a",
        weight: 1,
    }];
    dir.write(&router_config(
        1,
        AssignmentSource::Header,
        Some("x-user"),
        &arm,
        &[],
    ));
    let mut router = start_router(
        &dir,
        &[format!("a.team-a.svc:8080={upstream_addr}")],
        &["--drain-timeout", "600s"],
    )
    .await;
    let client = client();
    let held = {
        let (client, url) = (client.clone(), router.url("/v1/embeddings"));
        tokio::spawn(async move {
            client
                .post(url)
                .header("x-user", "u")
                .json(&json!({"model": SERVED, "input": "x"}))
                .send()
                .await
                .unwrap()
        })
    };
    wait_metric(&router, "lexserve_requests_running", 1.0).await;
    router.sigterm();
    router.wait_status(&client, "/ready", 503).await;
    let request = client
        .post(router.url("/v1/embeddings"))
        .json(&json!({"input": "x"}));
    let (status, _, error) = send(request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("draining"),
        "{error}"
    );

    release.send(()).unwrap();
    let response = held.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-lexserve-variant"], "a");
    assert_eq!(response.text().await.unwrap(), "{\"ok\":true}");
    variant.await.unwrap();
    assert_eq!(router.wait_exit(Duration::from_secs(60)), Some(0));
}
