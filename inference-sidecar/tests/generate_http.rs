//! The sidecar serving SmolLM2 as a real process over HTTP: every generation route, their errors,
//! server-sent event framing, cancellation when a client disconnects (blocks freed, read from
//! /metrics), 429 when the queue is full, and SIGTERM draining streams in flight. No timed assertions.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, metric_value, post};
use common::sidecar::Sidecar;
use common::{FRANCE_CHATML, FRANCE_GOLDEN, smollm2_args};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn start(extra: &[&str]) -> (Sidecar, reqwest::Client) {
    let mut args = smollm2_args();
    args.extend(["--threads", "2", "--max-new-tokens", "256"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    Sidecar::start_ready(&args).await
}

/// A chat that SmolLM2 answers at length (its template's default system turn sends it into a long
/// French list), for tests that need a stream still running.
fn long_chat(max_tokens: u64) -> Value {
    json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": true,
    })
}

/// Reads server-sent events (`data:` payloads) from a streaming response.
struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event's data, or None at the end of the stream.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = frame
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                    .collect();
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some(data.join("\n"));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                Some(Err(e)) => panic!("stream broke: {e}"),
                None => {
                    assert!(
                        self.buffer.trim().is_empty(),
                        "trailing bytes: {:?}",
                        self.buffer
                    );
                    return None;
                }
            }
        }
    }

    async fn all(mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(e) = self.next().await {
            events.push(e);
        }
        events
    }

    /// An OpenAI stream's chunks, parsed, once it has ended with `data: [DONE]`.
    async fn openai_chunks(self) -> Vec<Value> {
        let events = self.all().await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }
}

async fn stream(client: &reqwest::Client, url: String, body: Value) -> Events {
    Events::new(client.post(url).json(&body).send().await.expect("request"))
}

/// Polls /metrics until `sample` equals `value` (bounded; the bound is a hang guard, not a timing
/// assertion).
async fn wait_metric(client: &reqwest::Client, sidecar: &Sidecar, sample: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = sidecar.metrics(client).await;
        if metric_value(&text, sample) == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} never became {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn generation_routes_answer_and_errors_name_the_field() {
    let (sidecar, client) = start(&[]).await;

    let (status, body) = post(
        &client,
        sidecar.url("/generate"),
        json!({"inputs": FRANCE_CHATML, "parameters": {"max_new_tokens": 32}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generated_text"], "The capital of France is Paris.");
    assert_eq!(body["details"]["token_ids"], json!(FRANCE_GOLDEN));
    assert_eq!(body["details"]["finish_reason"], "eos_token");
    assert_eq!(body["details"]["generated_tokens"], 8);
    let prompt_tokens = body["details"]["prompt_tokens"].as_u64().unwrap();

    let (status, body) = post(
        &client,
        sidecar.url("/v1/completions"),
        json!({"model": "smollm2", "prompt": FRANCE_CHATML, "temperature": 0, "max_tokens": 32}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(
        body["choices"][0]["text"],
        "The capital of France is Paris."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 8, "total_tokens": prompt_tokens + 8})
    );

    let (status, body) = post(
        &client,
        sidecar.url("/v1/completions"),
        json!({"prompt": [FRANCE_CHATML], "temperature": 0, "max_tokens": 3, "stop": "France"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "The capital of");
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    // The chat route applies the GGUF's template, default system turn included.
    let (status, body) = post(
        &client,
        sidecar.url("/v1/chat/completions"),
        json!({"messages": [{"role": "system", "content": "You are a geography teacher."}, {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}], "temperature": 0, "max_tokens": 24}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    // The same prompt rendered by hand gives the same answer and the same counts.
    let rendered = "<|im_start|>system\nYou are a geography teacher.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let (status, by_hand) = post(
        &client,
        sidecar.url("/v1/completions"),
        json!({"prompt": rendered, "temperature": 0, "max_tokens": 24}),
    )
    .await;
    assert_eq!(status, 200, "{by_hand}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        by_hand["choices"][0]["text"]
    );
    assert_eq!(body["usage"], by_hand["usage"]);

    let (status, models) = post(&client, sidecar.url("/v1/models"), json!({})).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{models}");
    let (status, models) = get(&client, sidecar.url("/v1/models")).await;
    assert_eq!(status, 200, "{models}");
    assert_eq!(models["data"][0]["id"], "smollm2");

    let cases = [
        (
            "/generate",
            json!({"inputs": "hi", "parameters": {"temperature": -1}}),
            422,
            Some("parameters.temperature"),
        ),
        (
            "/generate",
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 100000}}),
            422,
            Some("parameters.max_new_tokens"),
        ),
        (
            "/generate",
            json!({"inputs": "hi", "parameters": {"top_p": 0}}),
            422,
            Some("parameters.top_p"),
        ),
        (
            "/generate",
            json!({"inputs": "hi", "parameters": {"top_k": 0}}),
            422,
            Some("parameters.top_k"),
        ),
        (
            "/generate",
            json!({"inputs": "hi", "parameters": {"stop": [""]}}),
            422,
            Some("parameters.stop[0]"),
        ),
        ("/generate", json!({"inputs": 3}), 422, Some("inputs")),
        ("/generate", json!({"inputs": ""}), 422, Some("inputs")),
        (
            "/generate",
            // More tokens than the model's context (8,192), whatever the KV pool holds.
            json!({"inputs": "word ".repeat(9000)}),
            413,
            Some("inputs"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 100000}),
            422,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "n": 17}),
            422,
            Some("n"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "n": 0}),
            422,
            Some("n"),
        ),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"]}),
            422,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "model": "gpt-4"}),
            404,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            422,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            422,
            Some("messages[0].content[0]"),
        ),
        ("/embed", json!({"texts": ["hi"]}), 400, None),
        // OpenAI fields this server does not implement: 400 naming the field, never ignored.
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"42": 100}}),
            400,
            Some("logit_bias"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "logprobs": 5}),
            400,
            Some("logprobs"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]}),
            400,
            Some("tools"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}),
            400,
            Some("response_format"),
        ),
    ];
    for (route, body, code, field) in cases {
        let (status, answer) = post(&client, sidecar.url(route), body.clone()).await;
        assert_eq!(status.as_u16(), code, "{route} {body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
        if let Some(field) = field {
            assert_eq!(answer["field"], field, "{route} {body}: {answer}");
        }
    }
    let response = client
        .post(sidecar.url("/generate"))
        .header("content-type", "application/json")
        .body("{\"inputs\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// `n` > 1: several samples of one prompt, indexed, the prompt counted once; seeded siblings draw
/// with seed, seed + 1, ...; streams carry each chunk's `index`.
#[tokio::test]
async fn n_choices_share_one_prompt() {
    let (sidecar, client) = start(&[]).await;
    let hits_before = metric_value(
        &sidecar.metrics(&client).await,
        "lexserve_prefix_cache_hit_tokens_total",
    )
    .unwrap();
    let (status, body) = post(
        &client,
        sidecar.url("/v1/completions"),
        json!({"prompt": FRANCE_CHATML, "temperature": 0, "max_tokens": 32, "n": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{body}");
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i, "{body}");
        assert_eq!(choice["text"], "The capital of France is Paris.");
        assert_eq!(choice["finish_reason"], "stop");
    }
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 24, "total_tokens": prompt_tokens + 24}),
        "the prompt once, three completions of 8"
    );
    // The siblings took the prompt's full blocks from the first one's prefill.
    let hits = metric_value(
        &sidecar.metrics(&client).await,
        "lexserve_prefix_cache_hit_tokens_total",
    )
    .unwrap();
    assert!(
        hits - hits_before >= (2 * ((prompt_tokens - 1) / 16 * 16)) as f64,
        "{hits_before} -> {hits}"
    );

    // Seeded sampling: choice i draws as a single request seeded with seed + i.
    let chat = |n: u64, seed: u64| {
        json!({
            "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
            "temperature": 1.0, "max_tokens": 16, "seed": seed, "n": n,
        })
    };
    let url = sidecar.url("/v1/chat/completions");
    let (status, both) = post(&client, url.clone(), chat(2, 7)).await;
    assert_eq!(status, 200, "{both}");
    let content = |body: &Value, i: usize| body["choices"][i]["message"]["content"].clone();
    let (_, seed7) = post(&client, url.clone(), chat(1, 7)).await;
    let (_, seed8) = post(&client, url.clone(), chat(1, 8)).await;
    assert_eq!(content(&both, 0), content(&seed7, 0), "{both} {seed7}");
    assert_eq!(content(&both, 1), content(&seed8, 0), "{both} {seed8}");
    assert_ne!(content(&both, 0), content(&both, 1), "different seeds");

    // Streaming: every chunk names its choice; each choice's text is the whole answer's.
    let chunks = stream(
        &client,
        sidecar.url("/v1/completions"),
        json!({"prompt": FRANCE_CHATML, "temperature": 0, "max_tokens": 32, "n": 2, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await
    .openai_chunks()
    .await;
    let mut texts = [String::new(), String::new()];
    let mut finished = [false, false];
    for chunk in &chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().expect("index") as usize;
            texts[i].push_str(choice["text"].as_str().unwrap());
            finished[i] |= choice["finish_reason"] == "stop";
        }
    }
    assert_eq!(texts, ["The capital of France is Paris."; 2]);
    assert_eq!(finished, [true, true]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 16, "total_tokens": prompt_tokens + 16})
    );
    // The chat stream opens each choice with its role.
    let chunks = stream(
        &client,
        sidecar.url("/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 4, "n": 2, "stream": true}),
    )
    .await
    .openai_chunks()
    .await;
    for i in 0..2 {
        let roles = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap().clone())
            .filter(|c| c["index"] == i && c["delta"]["role"] == "assistant")
            .count();
        assert_eq!(roles, 1, "choice {i}: {chunks:?}");
    }
    drop(sidecar);

    // n sequences count n times against the queue: with room for 2, n = 3 is refused whole.
    let (sidecar, client) = start(&["--max-queue-size", "2"]).await;
    let refused = client
        .post(sidecar.url("/v1/completions"))
        .json(&json!({"prompt": "hi", "max_tokens": 2, "n": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let (status, body) = post(
        &client,
        sidecar.url("/v1/completions"),
        json!({"prompt": "hi", "max_tokens": 2, "n": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn streams_are_framed_as_server_sent_events() {
    let (sidecar, client) = start(&[]).await;

    // Native: one event per token; the last carries the whole text and the details.
    let events = stream(
        &client,
        sidecar.url("/generate_stream"),
        json!({"inputs": FRANCE_CHATML, "parameters": {"max_new_tokens": 32}}),
    )
    .await
    .all()
    .await;
    let events: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(events.len(), FRANCE_GOLDEN.len());
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["token"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, FRANCE_GOLDEN.map(u64::from));
    let text: String = events
        .iter()
        .map(|e| e["token"]["text"].as_str().unwrap())
        .collect();
    let last = events.last().unwrap();
    assert_eq!(last["generated_text"], text);
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(last["details"]["finish_reason"], "eos_token");
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e.get("generated_text").is_none())
    );

    // OpenAI completions: text chunks, a final chunk with the finish reason, usage, then [DONE].
    let chunks = stream(
        &client,
        sidecar.url("/v1/completions"),
        json!({"prompt": FRANCE_CHATML, "temperature": 0, "max_tokens": 32, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await
    .openai_chunks()
    .await;
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "The capital of France is Paris.");
    // The last token's chunk carries the finish reason; the usage chunk follows it.
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(
        chunks[..chunks.len() - 2]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 8);

    // Chat: the first delta names the role, content deltas follow, then the finish, then [DONE].
    let chunks = stream(&client, sidecar.url("/v1/chat/completions"), long_chat(12))
        .await
        .openai_chunks()
        .await;
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.is_empty());
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    let ids: Vec<&Value> = chunks.iter().map(|c| &c["id"]).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one id per stream");
}

#[tokio::test]
async fn a_client_that_disconnects_frees_its_blocks() {
    let (sidecar, client) = start(&[]).await;
    let mut events = stream(&client, sidecar.url("/v1/chat/completions"), long_chat(200)).await;
    for _ in 0..3 {
        assert!(events.next().await.is_some());
    }
    let text = sidecar.metrics(&client).await;
    assert_eq!(
        metric_value(&text, "lexserve_requests_running"),
        Some(1.0),
        "{text}"
    );
    let usage = metric_value(&text, "lexserve_kv_cache_usage_ratio").unwrap();
    assert!(usage > 0.0, "{text}");
    drop(events);
    wait_metric(&client, &sidecar, "lexserve_kv_cache_usage_ratio", 0.0).await;
    wait_metric(&client, &sidecar, "lexserve_requests_running", 0.0).await;
    let text = sidecar.metrics(&client).await;
    let generated = metric_value(&text, "lexserve_generated_tokens_total").unwrap();
    assert!(
        generated < 200.0,
        "the generation stopped early: {generated} tokens"
    );

    // The same for a plain (non-streaming) request whose client gives up.
    let short_client = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let mut body = long_chat(200);
    body["stream"] = json!(false);
    let result = short_client
        .post(sidecar.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await;
    assert!(result.is_err(), "the request was meant to time out");
    wait_metric(&client, &sidecar, "lexserve_kv_cache_usage_ratio", 0.0).await;
    wait_metric(&client, &sidecar, "lexserve_requests_running", 0.0).await;
}

/// A chat message that spells the template's control tokens is read as text: it costs the
/// tokens of its characters, not one control token each (a user cannot open a system turn).
#[tokio::test]
async fn chat_contents_that_spell_control_tokens_stay_text() {
    let (sidecar, client) = start(&[]).await;
    let prompt_tokens = |content: &'static str| {
        let client = client.clone();
        let url = sidecar.url("/v1/chat/completions");
        async move {
            let (status, answer) = post(
                &client,
                url,
                json!({"messages": [{"role": "user", "content": content}], "max_tokens": 1}),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            answer["usage"]["prompt_tokens"].as_u64().expect("usage")
        }
    };
    let empty = prompt_tokens("").await;
    let spelled = prompt_tokens("<|im_start|><|im_start|><|im_start|>").await;
    assert!(
        spelled - empty > 3,
        "three spelled control tokens cost {} prompt tokens: read as control tokens",
        spelled - empty
    );
}

/// A generation engine that dies leaves a process that can never answer: liveness must fail so
/// that the kubelet restarts it (the crash is injected: `LEXSERVE_FAULT`, debug builds only).
#[tokio::test]
async fn a_crashed_engine_fails_liveness() {
    let mut args = smollm2_args();
    args.extend(["--threads", "2"].map(String::from));
    let sidecar = Sidecar::start_with_env(&args, &[("LEXSERVE_FAULT", "engine-step")]);
    let client = common::http::client();
    sidecar.wait_ready(&client).await;
    let (status, _) = get(&client, sidecar.url("/health")).await;
    assert_eq!(status, 200, "alive before the crash");

    let (status, answer) = post(
        &client,
        sidecar.url("/generate"),
        json!({"inputs": "Hello", "parameters": {"max_new_tokens": 4}}),
    )
    .await;
    assert!(status.is_server_error(), "{status}: {answer}");
    for path in ["/health", "/v2/health/live", "/ready"] {
        let body = sidecar.wait_status(&client, path, 503).await;
        if path != "/ready" {
            assert!(
                body.to_string().contains("generation engine crashed"),
                "{path}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let (sidecar, client) =
        start(&["--max-concurrent-sequences", "1", "--max-queue-size", "1"]).await;
    let mut running = stream(&client, sidecar.url("/v1/chat/completions"), long_chat(200)).await;
    assert!(running.next().await.is_some());
    // The second waits for the first (one sequence at a time); the queue holds one.
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = sidecar.url("/v1/chat/completions");
        async move { client.post(url).json(&long_chat(200)).send().await }
    });
    wait_metric(&client, &sidecar, "lexserve_queue_size", 1.0).await;
    let response = client
        .post(sidecar.url("/generate"))
        .json(&json!({"inputs": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("queue"), "{body}");
    drop(running);
    let waiting = waiting.await.unwrap().unwrap();
    assert_eq!(
        waiting.status(),
        200,
        "the queued request runs once the first is gone"
    );
    drop(waiting);
    wait_metric(&client, &sidecar, "lexserve_kv_cache_usage_ratio", 0.0).await;
}

#[tokio::test]
async fn sigterm_lets_streams_in_flight_finish() {
    // A drain limit far above what the stream needs, so that only a bug can cut it; no shutdown
    // delay, so that the drain (refusing new work) begins at once.
    let (mut sidecar, client) = start(&["--drain-timeout", "600s", "--shutdown-delay", "0s"]).await;
    let mut events = stream(&client, sidecar.url("/v1/chat/completions"), long_chat(24)).await;
    assert!(events.next().await.is_some());
    sidecar.sigterm();
    // Readiness turns false and new work is refused while the stream goes on.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = client
            .get(sidecar.url("/ready"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "never stopped being ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = post(&client, sidecar.url("/generate"), json!({"inputs": "hi"})).await;
    assert_eq!(status, 503, "{body}");
    let mut rest = Vec::new();
    while let Some(event) = events.next().await {
        rest.push(event);
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some("[DONE]"),
        "the stream ran to its end"
    );
    let finish: Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(sidecar.wait_exit(Duration::from_secs(60)), Some(0));
}

/// Issue 13, items 6 and 7: a client that stops reading its stream is cut off after the stall
/// timeout, its sequence cancelled and its KV blocks freed, and its connection closed; a client
/// that reads slowly meanwhile gets its whole stream; a whole answer that takes longer than the
/// request timeout is answered 503 (JSON) and its sequence freed.
#[tokio::test]
async fn a_client_that_stops_reading_loses_its_sequence_and_a_slow_one_does_not() {
    use common::raw::{connect_small_window, read_until_closed, send_json};
    use tokio::io::AsyncReadExt;

    let mut args = smollm2_args();
    args.extend(
        [
            "--threads",
            "2",
            "--max-new-tokens",
            "1024",
            "--write-stall-timeout",
            "1s",
            "--send-buffer-bytes",
            "4096",
            "--request-timeout",
            "1s",
        ]
        .map(String::from),
    );
    let (sidecar, client) = Sidecar::start_ready(&args).await;

    // Greedy, SmolLM2 runs on through its French list: the stream outlasts any socket buffer.
    let mut never_reads = connect_small_window(&sidecar.base).await;
    send_json(&mut never_reads, "/v1/chat/completions", &long_chat(1024)).await;
    let mut slow = connect_small_window(&sidecar.base).await;
    send_json(&mut slow, "/v1/chat/completions", &long_chat(200)).await;
    let slow_reader = tokio::spawn(async move {
        // A small read every 200 ms: slower than the engine when it runs at speed, but never
        // idle for the stall timeout.
        let mut received = Vec::new();
        let mut buffer = [0u8; 512];
        loop {
            match slow.read(&mut buffer).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&received).into_owned(),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
            // The end of the chunked body.
            if received.ends_with(b"\r\n0\r\n\r\n") {
                return String::from_utf8_lossy(&received).into_owned();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let slow_text = slow_reader.await.unwrap();
    assert!(
        slow_text.contains("data: [DONE]"),
        "the slow reader was cut: {} bytes, ending {:?}",
        slow_text.len(),
        &slow_text[slow_text.len().saturating_sub(200)..]
    );
    wait_metric(&client, &sidecar, "lexserve_requests_running", 0.0).await;
    wait_metric(&client, &sidecar, "lexserve_kv_cache_usage_ratio", 0.0).await;
    let text = sidecar.metrics(&client).await;
    let generated = metric_value(&text, "lexserve_generated_tokens_total").unwrap();
    let ended = read_until_closed(&mut never_reads, Duration::from_secs(60)).await;
    assert!(
        ended.closed,
        "the connection of a client that stopped reading stays open"
    );
    assert!(
        !ended.text().contains("[DONE]"),
        "the stream ran to its end ({generated} tokens generated in all)"
    );
    assert!(
        generated < 200.0 + 1024.0,
        "the abandoned stream generated to its end: {generated} tokens"
    );

    // A whole answer that cannot be ready within the request timeout.
    let mut body = long_chat(1024);
    body["stream"] = json!(false);
    let (status, error) = post(&client, sidecar.url("/v1/chat/completions"), body).await;
    assert_eq!(status, 503, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("not ready within"),
        "{error}"
    );
    wait_metric(&client, &sidecar, "lexserve_requests_running", 0.0).await;
    wait_metric(&client, &sidecar, "lexserve_kv_cache_usage_ratio", 0.0).await;
}

/// Speculation mode `draft` from the spec-shaped config file: the draft model (here SmolLM2 as its
/// own draft, pinned by its digest) is loaded beside the model, answers are the plain server's,
/// token for token, and every drafted token is accepted (the model drafts what it then samples).
/// A draft whose pinned digest differs keeps the server unready, with the reason.
#[tokio::test]
async fn a_draft_model_from_the_config_file_drafts_and_changes_no_answer() {
    let gguf = common::smollm2_gguf();
    let digest = lexserve_contract::digest::path_sha256(&gguf).unwrap();
    let dir = std::env::temp_dir().join(format!("lexserve-draft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = |sha256: &str| {
        let path = dir.join(format!("{}.yaml", &sha256[..8]));
        std::fs::write(
            &path,
            format!(
                "model: {{uri: 'file://{gguf}', format: gguf, task: generate}}\nruntime:\n  generation:\n    speculation: {{mode: draft, maxDraftTokens: 4, draftModel: {{uri: 'file://{gguf}', sha256: '{sha256}'}}}}\n",
                gguf = gguf.display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let body = |prompt: &str| json!({"prompt": prompt, "temperature": 0, "max_tokens": 40});
    let prompts = [
        FRANCE_CHATML,
        "<|im_start|>user\nName three rivers of Europe.<|im_end|>\n<|im_start|>assistant\n",
    ];
    let (plain, client) = start(&["--speculation", "none"]).await;
    let mut expected = Vec::new();
    for prompt in prompts {
        let (status, answer) = post(&client, plain.url("/v1/completions"), body(prompt)).await;
        assert_eq!(status, 200, "{answer}");
        expected.push(answer["choices"][0]["text"].clone());
    }
    drop(plain);

    let (sidecar, client) = Sidecar::start_ready(&[
        "--config".to_string(),
        config(&digest),
        "--threads".to_string(),
        "2".to_string(),
    ])
    .await;
    for (prompt, expected) in prompts.iter().zip(&expected) {
        let (status, answer) = post(&client, sidecar.url("/v1/completions"), body(prompt)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(&answer["choices"][0]["text"], expected, "{prompt:?}");
    }
    let text = sidecar.metrics(&client).await;
    let drafted = metric_value(&text, "lexserve_speculative_draft_tokens_total").unwrap();
    let accepted = metric_value(&text, "lexserve_speculative_accepted_tokens_total").unwrap();
    assert!(drafted > 0.0, "{text}");
    assert_eq!(accepted, drafted);
    assert!(
        sidecar
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("draft model loaded")),
        "the log says a draft model runs"
    );
    drop(sidecar);

    let wrong = "0".repeat(64);
    let sidecar = Sidecar::start(&["--config".to_string(), config(&wrong)]);
    let reason = sidecar.load_failure(&client).await;
    assert!(
        reason.contains("draft model digest mismatch") && reason.contains(&wrong),
        "{reason}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
