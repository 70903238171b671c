//! The sidecar as a real process over HTTP, serving the int8 ONNX MiniLM: every route and every error
//! status. No assertion depends on timing.

mod common;

use common::http::{client, get, metric_value, post};
use common::sidecar::Sidecar;
use common::{cosine, onnx_embed_args};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn start(extra: &[&str]) -> (Sidecar, reqwest::Client) {
    let mut args = onnx_embed_args();
    args.extend(
        [
            "--threads",
            "1",
            "--max-texts-per-request",
            "8",
            "--max-body-bytes",
            "65536",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    Sidecar::start_ready(&args).await
}

#[tokio::test]
async fn every_route_answers() {
    let (sidecar, client) = start(&[]).await;

    let (status, body) = get(&client, sidecar.url("/health")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&client, sidecar.url("/ready")).await;
    assert_eq!((status, &body["ready"]), (StatusCode::OK, &json!(true)));

    let sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "A fast auburn fox leaps over a sleepy hound.",
    ];
    let (status, embed) = post(&client, sidecar.url("/embed"), json!({"texts": sentences})).await;
    assert_eq!(status, 200, "{embed}");
    let vectors: Vec<Vec<f32>> = serde_json::from_value(embed["embeddings"].clone()).unwrap();
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].len(), 384);
    let norm: f32 = vectors[0].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-4,
        "normalized by default, got norm {norm}"
    );
    assert!(
        cosine(&vectors[0], &vectors[1]) > 0.5,
        "paraphrases are close"
    );
    assert_eq!(embed["tokens"], json!([12, 12]));
    assert_eq!(embed["truncated"], json!([false, false]));
    assert!(embed["latency_ms"].as_f64().is_some());

    // The same text alone and in a batch with a longer one: padding must not change the answer.
    let longer =
        "A considerably longer sentence, so that the first one is padded when both share a batch.";
    let (_, padded) = post(
        &client,
        sidecar.url("/embed"),
        json!({"texts": [sentences[0], longer]}),
    )
    .await;
    let padded: Vec<Vec<f32>> = serde_json::from_value(padded["embeddings"].clone()).unwrap();
    assert!(cosine(&padded[0], &vectors[0]) > 0.9999);

    let (status, openai) = post(
        &client,
        sidecar.url("/v1/embeddings"),
        json!({"input": sentences[0], "model": "minilm"}),
    )
    .await;
    assert_eq!(status, 200, "{openai}");
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["data"][0]["object"], "embedding");
    assert_eq!(openai["data"][0]["index"], 0);
    assert_eq!(
        openai["usage"],
        json!({"prompt_tokens": 12, "total_tokens": 12})
    );
    let v: Vec<f32> = serde_json::from_value(openai["data"][0]["embedding"].clone()).unwrap();
    assert!(cosine(&v, &vectors[0]) > 0.9999);
    let (status, b64) = post(
        &client,
        sidecar.url("/v1/embeddings"),
        json!({"input": [sentences[0]], "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        b64["data"][0]["embedding"].as_str().map(str::len),
        Some(2048)
    );

    let (status, models) = get(&client, sidecar.url("/v1/models")).await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "minilm");

    let (status, server) = get(&client, sidecar.url("/v2")).await;
    assert_eq!(
        (status, &server["name"]),
        (StatusCode::OK, &json!("lexserve"))
    );
    let (status, live) = get(&client, sidecar.url("/v2/health/live")).await;
    assert_eq!((status, &live["live"]), (StatusCode::OK, &json!(true)));
    let (status, _) = get(&client, sidecar.url("/v2/health/ready")).await;
    assert_eq!(status, 200);
    let (status, meta) = get(&client, sidecar.url("/v2/models/minilm")).await;
    assert_eq!(status, 200);
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 384]));
    assert_eq!(meta["platform"], "lexserve_onnx");
    let (status, _) = get(&client, sidecar.url("/v2/models/minilm/ready")).await;
    assert_eq!(status, 200);
    let (status, infer) = post(
        &client,
        sidecar.url("/v2/models/minilm/infer"),
        json!({"id": "r1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": sentences}]}),
    )
    .await;
    assert_eq!(status, 200, "{infer}");
    assert_eq!(infer["id"], "r1");
    assert_eq!(infer["outputs"][0]["shape"], json!([2, 384]));
    assert_eq!(
        infer["outputs"][0]["data"].as_array().map(Vec::len),
        Some(768)
    );

    let metrics = client.get(sidecar.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for name in [
        "lexserve_queue_size ",
        "lexserve_requests_running ",
        "lexserve_requests_total{route=\"/embed\",code=\"200\"}",
        "lexserve_request_duration_seconds_count",
        "lexserve_queue_duration_seconds_count",
        "lexserve_inference_duration_seconds_count",
        "lexserve_batch_size_count",
        "lexserve_batch_tokens_count",
        "lexserve_input_tokens_count",
        "lexserve_model_loaded{model=\"minilm\",version=\"1\"} 1",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
}

#[tokio::test]
async fn every_error_has_its_status_and_names_the_field() {
    let (sidecar, client) = start(&[]).await;
    let embed = sidecar.url("/embed");

    // 400: not JSON at all / truncated JSON.
    for body in ["not json", "{\"texts\": [\"a\"", ""] {
        let response = client
            .post(&embed)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body:?}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // 415: not JSON content.
    let response = client
        .post(&embed)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // 422 with the field.
    let cases = [
        (json!({"texts": ["ok", 3]}), "texts[1]"),
        (json!({"texts": []}), "texts"),
        (json!({"texts": ["fine", "   "]}), "texts[1]"),
        (json!({"texts": "a single string"}), "texts"),
        (json!({"text": ["wrong key"]}), ""),
    ];
    for (body, field) in cases {
        let (status, error) = post(&client, embed.clone(), body.clone()).await;
        assert_eq!(status, 422, "{body} → {error}");
        if field.is_empty() {
            assert!(
                error["error"].as_str().unwrap().contains("texts"),
                "{error}"
            );
        } else {
            assert_eq!(error["field"], field, "{body} → {error}");
        }
    }

    // 413: too many texts, too big a body.
    let (status, error) = post(&client, embed.clone(), json!({"texts": vec!["x"; 9]})).await;
    assert_eq!(
        (status, &error["field"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("texts"))
    );
    let huge = "word ".repeat(20_000);
    let (status, _) = post(&client, embed.clone(), json!({"texts": [huge]})).await;
    assert_eq!(status, 413);

    // Long inputs are truncated to the model's limit (256 for MiniLM), and say so.
    let long = "word ".repeat(1000);
    let (status, body) = post(&client, embed.clone(), json!({"texts": [long, "short"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tokens"], json!([256, 3]));
    assert_eq!(body["truncated"], json!([true, false]));

    // 400: classification on an embedding model.
    let (status, _) = post(&client, sidecar.url("/predict"), json!({"texts": ["a"]})).await;
    assert_eq!(status, 400);

    // 404: unknown model and route; 422: bad tensors; 404 for another model name on OpenAI.
    // The sidecar answers only to its served name, and the 404 says which name it did not know
    // (vLLM's behaviour; an experiment's router relies on it).
    let (status, error) = post(
        &client,
        sidecar.url("/v2/models/other/infer"),
        json!({"inputs": []}),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        error["error"].as_str().unwrap().contains("\"other\""),
        "{error}"
    );
    let (status, error) = get(&client, sidecar.url("/v2/models/other")).await;
    assert_eq!(status, 404);
    assert!(
        error["error"].as_str().unwrap().contains("\"other\""),
        "{error}"
    );
    let (status, _) = get(&client, sidecar.url("/nope")).await;
    assert_eq!(status, 404);
    let (status, error) = post(
        &client,
        sidecar.url("/v2/models/minilm/infer"),
        json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["one"]}]}),
    )
    .await;
    assert_eq!(
        (status, &error["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("inputs[0].shape"))
    );
    // A shape whose product overflows (2^32 · 2^32 wraps to 0, as many elements as `data`
    // holds) is refused by field, not a panic that drops the connection.
    let (status, error) = post(
        &client,
        sidecar.url("/v2/models/minilm/infer"),
        json!({"inputs": [{"name": "text", "shape": [4_294_967_296_i64, 4_294_967_296_i64], "datatype": "BYTES", "data": []}]}),
    )
    .await;
    assert_eq!(
        (status, &error["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("inputs[0].shape"))
    );
    let (status, error) = post(
        &client,
        sidecar.url("/v1/embeddings"),
        json!({"input": "a", "model": "gpt"}),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        error["error"].as_str().unwrap().contains("\"gpt\""),
        "{error}"
    );
    let (status, error) = post(
        &client,
        sidecar.url("/v1/embeddings"),
        json!({"input": "a", "encoding_format": "hex"}),
    )
    .await;
    assert_eq!(
        (status, &error["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("encoding_format"))
    );
    let (status, error) = post(
        &client,
        sidecar.url("/v1/embeddings"),
        json!({"input": [1, 2, 3]}),
    )
    .await;
    assert_eq!(
        (status, &error["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("input"))
    );

    // The server survived all of it.
    let (status, _) = get(&client, sidecar.url("/ready")).await;
    assert_eq!(status, 200);
    let text = sidecar.metrics(&client).await;
    assert!(text.contains("lexserve_requests_total{route=\"/embed\",code=\"422\"}"));
}

#[tokio::test]
async fn a_missing_runtime_library_means_not_ready_with_the_reason() {
    let mut args = onnx_embed_args();
    let position = args.iter().position(|a| a == "--ort-dylib-path").unwrap();
    args[position + 1] = "/nonexistent/libonnxruntime.so".into();
    let sidecar = Sidecar::start(&args);
    let client = client();
    let reason = sidecar.load_failure(&client).await;
    assert!(
        reason.contains("ONNX Runtime") && reason.contains("/nonexistent"),
        "{reason}"
    );
    let response = client
        .post(sidecar.url("/embed"))
        .json(&json!({"texts": ["a"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let (status, _) = get(&client, sidecar.url("/health")).await;
    assert_eq!(status, 200, "alive even though not ready");
    let text = sidecar.metrics(&client).await;
    assert!(
        !text.contains("lexserve_model_loaded{"),
        "no model is reported loaded:\n{text}"
    );
}

/// The encoder's batch worker dying: the texts it held and those queued get an answer (no
/// request hangs), and liveness fails so that the kubelet restarts the process (the crash is
/// injected: `LEXSERVE_FAULT`, debug builds only).
#[tokio::test]
async fn a_crashed_batch_worker_fails_liveness_and_answers_what_waited() {
    let mut args = onnx_embed_args();
    args.extend(["--threads", "1"].map(String::from));
    let sidecar = Sidecar::start_with_env(&args, &[("LEXSERVE_FAULT", "batch-worker")]);
    let client = client();
    sidecar.wait_ready(&client).await;
    let (status, _) = get(&client, sidecar.url("/health")).await;
    assert_eq!(status, 200, "alive before the crash");
    let (status, answer) = post(&client, sidecar.url("/embed"), json!({"texts": ["hello"]})).await;
    assert!(status.is_server_error(), "{status}: {answer}");
    for path in ["/health", "/v2/health/live"] {
        let body = sidecar.wait_status(&client, path, 503).await;
        assert!(
            body.to_string().contains("batch worker crashed"),
            "{path}: {body}"
        );
    }
    // New work is refused at once, not queued for a worker that is gone.
    let (status, _) = post(&client, sidecar.url("/embed"), json!({"texts": ["again"]})).await;
    assert_eq!(status, 503);
}

/// Texts whose client went away before a batch ran them are dropped, not run: with a long
/// batching delay, clients that give up first leave a queue that empties without any batch.
#[tokio::test]
async fn texts_whose_client_went_away_are_not_run() {
    let (sidecar, client) = start(&["--max-queue-delay", "3s", "--max-batch-requests", "64"]).await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(200))
        .build()
        .expect("client");
    let gave_up = futures::future::join_all((0..5).map(|i| {
        impatient
            .post(sidecar.url("/embed"))
            .json(&json!({"texts": [format!("text number {i}")]}))
            .send()
    }))
    .await;
    assert!(gave_up.iter().all(|r| r.is_err()), "{gave_up:?}");
    let queued = sidecar.metrics(&client).await;
    assert_eq!(
        metric_value(&queued, "lexserve_queue_size"),
        Some(5.0),
        "their texts wait for the batching delay"
    );
    // The worker wakes when the oldest text's delay is up and finds nobody waiting.
    let metrics = loop {
        let text = sidecar.metrics(&client).await;
        if metric_value(&text, "lexserve_queue_size") == Some(0.0) {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        metric_value(&metrics, "lexserve_batch_size_count"),
        Some(0.0),
        "no batch ran for clients that were gone"
    );
    // The server still answers a client that waits.
    let (status, _) = post(&client, sidecar.url("/embed"), json!({"texts": ["hello"]})).await;
    assert_eq!(status, 200);
}
