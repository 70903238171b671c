//! The external metrics API's HTTP contract, over a real socket: discovery documents, and the
//! errors (metav1.Status bodies) for a wrong metric, a selector that names no service, and an
//! unreachable Prometheus. The whole loop with a real Prometheus and the HPA is the e2e test
//! `e2e/tests/autoscaling.rs`.

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector;
use lexserve_operator::metrics_api::server::router;
use lexserve_operator::metrics_api::signal::LoadSignal;
use lexserve_operator::telemetry::Metrics;
use serde_json::Value;

/// Serves the API (plain HTTP: TLS is the listener's job) with Prometheus at a closed port.
async fn serve() -> (String, Metrics) {
    let (pods, _writer) = reflector::store::<Pod>();
    // Port 1 on loopback refuses connections: Prometheus is "down".
    let signal = LoadSignal::new("http://127.0.0.1:1", pods).expect("signal");
    let metrics = Metrics::default();
    let app = router(signal, metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), metrics)
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
        .expect("response");
    let code = response.status().as_u16();
    (code, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn discovery_lists_the_metric() {
    let (base, _) = serve().await;
    let (code, list) = get(&format!("{base}/apis/external.metrics.k8s.io/v1beta1")).await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "APIResourceList");
    assert_eq!(list["groupVersion"], "external.metrics.k8s.io/v1beta1");
    assert_eq!(list["resources"][0]["name"], "lexserve_inference_load");
    assert_eq!(list["resources"][0]["namespaced"], true);
    let (code, group) = get(&format!("{base}/apis/external.metrics.k8s.io")).await;
    assert_eq!(code, 200);
    assert_eq!(group["preferredVersion"]["version"], "v1beta1");
}

#[tokio::test]
async fn errors_are_statuses_that_say_what_is_wrong() {
    let (base, metrics) = serve().await;
    let values = format!("{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/team-a");

    let (code, status) = get(&format!("{values}/cpu_usage?labelSelector=a%3Db")).await;
    assert_eq!(code, 404);
    assert_eq!(status["kind"], "Status");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("lexserve_inference_load")
    );

    let (code, status) = get(&format!("{values}/lexserve_inference_load")).await;
    assert_eq!(code, 400);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("lexserve.io/inference-service=<name>"),
        "{status}"
    );

    let (code, status) = get(&format!(
        "{values}/lexserve_inference_load?labelSelector=a%20in%20(b"
    ))
    .await;
    assert_eq!(code, 400);
    assert!(
        status["message"].as_str().unwrap().contains("unbalanced"),
        "{status}"
    );

    // Prometheus down: 503, never a zero.
    let (code, status) = get(&format!(
        "{values}/lexserve_inference_load?labelSelector=lexserve.io%2Finference-service%3Dminilm"
    ))
    .await;
    assert_eq!(code, 503, "{status}");
    assert_eq!(status["reason"], "ServiceUnavailable");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("team-a/minilm"), "{message}");
    assert!(message.contains("http://127.0.0.1:1"), "{message}");
    assert!(message.contains("refused"), "{message}");

    let exposition = metrics.encode();
    assert!(
        exposition.contains("lexserve_operator_metrics_api_requests_total{code=\"503\"} 1"),
        "{exposition}"
    );
}
