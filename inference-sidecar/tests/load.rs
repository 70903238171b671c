//! Batching, overload and shutdown, against the real process. Outcomes are asserted (shared batches,
//! 429s, no failed in-flight request, exit 0), never durations.

mod common;

use std::time::Duration;

use common::http::metric_value;
use common::onnx_embed_args;
use common::sidecar::Sidecar;
use serde_json::json;

fn args(extra: &[&str]) -> Vec<String> {
    let mut args = onnx_embed_args();
    args.extend(["--threads", "1"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test]
async fn concurrent_requests_share_batches() {
    // A generous queue delay makes the first text wait for company; the cap ends the wait early.
    let (sidecar, client) = Sidecar::start_ready(&args(&[
        "--max-queue-delay",
        "500ms",
        "--max-batch-requests",
        "16",
    ]))
    .await;
    let requests = (0..16).map(|i| {
        let client = client.clone();
        let url = sidecar.url("/embed");
        async move {
            client
                .post(url)
                .json(&json!({"texts": [format!("sentence number {i} about batching")]}))
                .send()
                .await
                .map(|r| r.status())
        }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(s) if *s == 200)),
        "{statuses:?}"
    );
    let text = sidecar.metrics(&client).await;
    // The warm-up runs outside the queue, so every observed batch is from these 16 texts.
    let batches = metric_value(&text, "lexserve_batch_size_count").unwrap();
    let texts = metric_value(&text, "lexserve_batch_size_sum").unwrap();
    assert_eq!(texts, 16.0);
    assert!(
        batches < 16.0,
        "16 concurrent texts ran in {batches} batches; expected shared batches"
    );
}

#[tokio::test]
async fn overload_is_refused_with_429_and_the_server_survives() {
    let (sidecar, client) = Sidecar::start_ready(&args(&[
        "--max-queue-size",
        "4",
        "--max-batch-requests",
        "1",
    ]))
    .await;
    let long = "a rather long sentence that keeps the encoder busy for a while ".repeat(6);
    let requests = (0..48).map(|_| {
        let client = client.clone();
        let url = sidecar.url("/embed");
        let body = json!({"texts": [long.clone(), long.clone(), long.clone(), long.clone()]});
        async move {
            let response = client.post(url).json(&body).send().await.expect("request");
            (
                response.status(),
                response.headers().get("retry-after").cloned(),
            )
        }
    });
    let outcomes = futures::future::join_all(requests).await;
    let ok = outcomes.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(
        ok + refused.len(),
        outcomes.len(),
        "only 200 or 429 expected: {outcomes:?}"
    );
    assert!(ok >= 1, "some requests are served");
    assert!(
        !refused.is_empty(),
        "a queue of 4 texts cannot hold 48 requests of 4 texts"
    );
    assert!(
        refused.iter().all(|(_, retry)| retry.is_some()),
        "429 carries Retry-After"
    );
    // A request that can never fit is 413, not 429.
    let response = client
        .post(sidecar.url("/embed"))
        .json(&json!({"texts": ["a", "b", "c", "d", "e"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = client.get(sidecar.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = sidecar.metrics(&client).await;
    assert!(text.contains("lexserve_requests_total{route=\"/embed\",code=\"429\"}"));
    assert_eq!(metric_value(&text, "lexserve_queue_size"), Some(0.0));
    assert_eq!(metric_value(&text, "lexserve_requests_running"), Some(0.0));
}

#[tokio::test]
async fn sigterm_finishes_work_in_flight_then_exits_zero() {
    // No shutdown delay: the drain (new work refused) begins at SIGTERM.
    let (mut sidecar, client) = Sidecar::start_ready(&args(&[
        "--max-batch-requests",
        "4",
        "--max-queue-size",
        "1024",
        "--shutdown-delay",
        "0s",
    ]))
    .await;
    let long = "the server must finish every admitted request before it exits ".repeat(8);
    const REQUESTS: usize = 24;
    const TEXTS: usize = 8;
    let in_flight: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let client = client.clone();
            let url = sidecar.url("/embed");
            let body = json!({"texts": vec![long.clone(); TEXTS]});
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    // Wait until every request has been admitted (each admitted text is counted in input_tokens).
    let admitted_all = loop {
        let text = sidecar.metrics(&client).await;
        let admitted = metric_value(&text, "lexserve_input_tokens_count").unwrap_or(0.0);
        let served = metric_value(&text, "lexserve_batch_size_sum").unwrap_or(0.0);
        if admitted >= (REQUESTS * TEXTS) as f64 {
            break served < admitted;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    sidecar.sigterm();
    // While draining, readiness is false and new work is refused with 503; once drained, the
    // listener closes (connection errors are the other acceptable answer).
    loop {
        match client.get(sidecar.url("/ready")).send().await {
            Ok(response) if response.status() == 200 => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(response) => {
                assert_eq!(response.status(), 503);
                if let Ok(late) = client
                    .post(sidecar.url("/embed"))
                    .json(&json!({"texts": ["late"]}))
                    .send()
                    .await
                {
                    assert_eq!(late.status(), 503);
                    assert!(late.headers().contains_key("retry-after"));
                }
                break;
            }
            Err(_) => break,
        }
    }
    for task in in_flight {
        let status = task
            .await
            .expect("join")
            .expect("in-flight request must not fail");
        assert_eq!(status, 200);
    }
    let code = tokio::task::spawn_blocking(move || sidecar.wait_exit(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "clean exit after draining");
    // Informational: whether SIGTERM really arrived with work queued (it almost always does).
    eprintln!("work was still queued at SIGTERM: {admitted_all}");
}

/// Polls `/ready` until it stops answering 200.
async fn wait_not_ready(sidecar: &Sidecar, client: &reqwest::Client) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = client.get(sidecar.url("/ready")).send().await.unwrap();
        if response.status() != 200 {
            assert_eq!(response.status(), 503);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sigterm_keeps_serving_through_the_shutdown_delay_then_drains() {
    let (mut sidecar, client) = Sidecar::start_ready(&args(&["--shutdown-delay", "4s"])).await;
    sidecar.sigterm();
    // Readiness turns false at once, so that the endpoint is removed...
    wait_not_ready(&sidecar, &client).await;
    // ...but clients still routed here (the removal has not reached them yet) are answered.
    let embed = || {
        client
            .post(sidecar.url("/embed"))
            .json(&json!({"texts": ["routed here before the endpoint was removed"]}))
            .send()
    };
    let response = embed().await.expect("served during the delay");
    assert_eq!(response.status(), 200, "work is taken during the delay");
    // Then the drain refuses new work (503), and the process exits cleanly.
    let refused = loop {
        match embed().await {
            Ok(response) if response.status() == 200 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(response) => break Some(response.status()),
            Err(_) => break None,
        }
    };
    assert!(
        matches!(refused, Some(s) if s == 503) || refused.is_none(),
        "after the delay: 503 or a closed listener, got {refused:?}"
    );
    let code = tokio::task::spawn_blocking(move || sidecar.wait_exit(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn a_second_sigterm_skips_the_shutdown_delay() {
    // A delay far longer than the wait below: only the second signal can end it in time.
    let (mut sidecar, client) = Sidecar::start_ready(&args(&["--shutdown-delay", "2m"])).await;
    sidecar.sigterm();
    wait_not_ready(&sidecar, &client).await;
    sidecar.sigterm();
    let code = tokio::task::spawn_blocking(move || sidecar.wait_exit(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "exits after the second signal, not after 2m");
}

/// Issue 13, item 6: a request takes a permit before its body is read. With the only permit held
/// by a client whose body never completes, others get 429 at once (probes and /metrics still
/// answer); the stalled body gets 408 at the body deadline and frees the permit; headers dribbled
/// byte by byte get the connection closed at the header deadline, and an idle kept-alive
/// connection is closed after it too.
#[tokio::test]
async fn admission_comes_before_the_body_and_slow_clients_time_out() {
    use common::raw::{dribble, post_head, read_until_closed};
    use tokio::io::AsyncWriteExt;

    let (sidecar, client) = Sidecar::start_ready(&args(&[
        "--max-concurrent-requests",
        "1",
        "--header-read-timeout",
        "1s",
        "--body-read-timeout",
        "1s",
    ]))
    .await;
    let body = json!({"texts": ["a sentence that never arrives whole"]}).to_string();
    let stall = || async {
        let mut stream = tokio::net::TcpStream::connect(common::raw::addr(&sidecar.base))
            .await
            .unwrap();
        let mut request = post_head("/embed", body.len());
        request.extend_from_slice(&body.as_bytes()[..10]);
        stream.write_all(&request).await.unwrap();
        stream
    };
    let mut stalled = stall().await;

    // Once the stalled request holds the permit, others are refused at once, with Retry-After
    // and a JSON error.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let refused = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was refused while a stalled body held the only permit"
        );
        // A stalled request that was answered holds no permit (it came while a request below
        // held it, or its body deadline passed before the next one): stall another.
        let mut probe = [0u8; 1];
        if !matches!(stalled.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        {
            stalled = stall().await;
        }
        let response = client
            .post(sidecar.url("/embed"))
            .json(&json!({"texts": ["hello"]}))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: serde_json::Value = refused.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("in flight"),
        "{error}"
    );
    for probe in ["/health", "/ready", "/metrics", "/v1/models"] {
        let response = client.get(sidecar.url(probe)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{probe} is never refused");
    }

    let ended = read_until_closed(&mut stalled, Duration::from_secs(60)).await;
    assert_eq!(ended.status(), Some(408), "{}", ended.text());
    assert!(ended.text().contains("\"error\""), "{}", ended.text());
    let response = client
        .post(sidecar.url("/embed"))
        .json(&json!({"texts": ["hello"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the permit came back");

    // Slowloris: headers one byte every 100 ms never finish; the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(common::raw::addr(&sidecar.base))
        .await
        .unwrap();
    let endless_headers = b"GET /ready HTTP/1.1\r\nHost: sidecar\r\nX-Slow: ".repeat(20);
    assert!(
        dribble(&mut slow, &endless_headers, Duration::from_millis(100)).await,
        "the server never closed a connection whose headers did not arrive"
    );

    // A kept-alive connection that sends nothing more is closed too.
    let mut idle = tokio::net::TcpStream::connect(common::raw::addr(&sidecar.base))
        .await
        .unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        .await
        .unwrap();
    let ended = read_until_closed(&mut idle, Duration::from_secs(60)).await;
    assert!(ended.closed, "an idle connection stays open");
    assert_eq!(ended.status(), Some(200), "{}", ended.text());

    let text = sidecar.metrics(&client).await;
    assert!(text.contains("lexserve_requests_total{route=\"/embed\",code=\"408\"}"));
}
