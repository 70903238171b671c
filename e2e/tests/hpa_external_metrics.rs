//! The autoscaling path the operator relies on, with nothing faked but the metric's value:
//! an APIService for external.metrics.k8s.io, reached through the aggregation layer and an
//! ExternalName Service to 127.0.0.1, backed by an HTTPS server inside this test; an
//! autoscaling/v2 HPA on that External metric; kube-controller-manager scaling a Deployment
//! up when the value rises and down when it falls.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, PostParams};
use lexserve_e2e::aggregation::{BackendTrust, ExternalMetricsServer, register_local_apiservice};
use lexserve_e2e::shared_cluster;
use lexserve_e2e::wait::{self, Poll};
use serde_json::json;

const METRIC: &str = "lexserve_load_per_replica";

/// Events with their time since the test started, printed at the end (and on failure).
struct Timeline {
    start: Instant,
    events: Vec<(Duration, String)>,
}

impl Timeline {
    fn new() -> Self {
        Timeline {
            start: Instant::now(),
            events: Vec::new(),
        }
    }
    fn mark(&mut self, event: impl Into<String>) {
        let event = event.into();
        let at = self.start.elapsed();
        eprintln!("[{:>6.1}s] {event}", at.as_secs_f64());
        self.events.push((at, event));
    }
    fn print(&self) {
        eprintln!("timeline:");
        for (at, event) in &self.events {
            eprintln!("  {:>6.1}s  {event}", at.as_secs_f64());
        }
    }
}

#[tokio::test]
async fn hpa_scales_a_deployment_on_an_external_metric_served_through_an_apiservice() {
    let cluster = shared_cluster().await.expect("local cluster");
    let ns = cluster.namespace("hpa-external").await.expect("namespace");
    let client = cluster.client().expect("client");
    let mut timeline = Timeline::new();

    let server = ExternalMetricsServer::start()
        .await
        .expect("metrics server");
    server.set(METRIC, "5");
    timeline.mark(format!(
        "test metrics server on 127.0.0.1:{}, {METRIC}=5",
        server.port()
    ));
    register_local_apiservice(
        cluster,
        "external.metrics.k8s.io",
        "v1beta1",
        ns.name(),
        "test-external-metrics",
        server.port(),
        BackendTrust::InsecureSkipVerify,
        Duration::from_secs(60),
    )
    .await
    .expect("APIService Available");
    timeline.mark("APIService v1beta1.external.metrics.k8s.io Available");

    // The aggregation layer really routes to the test server.
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{METRIC}",
        ns.name()
    );
    let body = cluster
        .get_raw(&path)
        .await
        .expect("external metric through the apiserver");
    let list: serde_json::Value = serde_json::from_str(&body).expect("ExternalMetricValueList");
    assert_eq!(list["items"][0]["value"], "5", "{body}");
    timeline.mark("GET through the apiserver returns the served value");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "model" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "model" } },
            "template": {
                "metadata": { "labels": { "app": "model" } },
                "spec": { "containers": [{ "name": "model", "image": "lexserve/sidecar:test" }] },
            },
        },
    }))
    .expect("deployment JSON");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns.name());
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": { "name": "model" },
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "model" },
            "minReplicas": 1,
            "maxReplicas": 6,
            "metrics": [{
                "type": "External",
                "external": {
                    "metric": { "name": METRIC, "selector": { "matchLabels": { "service": "model" } } },
                    "target": { "type": "AverageValue", "averageValue": "10" },
                },
            }],
        },
    }))
    .expect("HPA JSON");
    hpas.create(&PostParams::default(), &hpa)
        .await
        .expect("create HPA");
    timeline.mark("Deployment (1 replica) and HPA (External, AverageValue 10) created");

    let replicas = |want: i32| {
        let deployments = deployments.clone();
        let hpas = hpas.clone();
        async move {
            wait::until(
                &format!("the Deployment to reach {want} ready replicas"),
                Duration::from_secs(120),
                Duration::from_millis(500),
                || async {
                    let d = deployments.get("model").await?;
                    let spec = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    let ready = d
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0);
                    Ok(if spec == want && ready == want {
                        Poll::Ready(())
                    } else {
                        let h = hpas.get("model").await?;
                        let conditions: Vec<String> = h
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|c| {
                                format!(
                                    "{}={} ({})",
                                    c.type_,
                                    c.status,
                                    c.message.unwrap_or_default()
                                )
                            })
                            .collect();
                        Poll::pending(format!("spec {spec}, ready {ready}; HPA: {conditions:?}"))
                    })
                },
            )
            .await
        }
    };

    // The HPA has read the metric once: 5 / 10 per replica -> stays at 1.
    wait::until(
        "the HPA to read the metric",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let h = hpas.get("model").await?;
            let current = h
                .status
                .and_then(|s| s.current_metrics)
                .and_then(|m| m.into_iter().next())
                .and_then(|m| m.external)
                .and_then(|e| e.current.average_value)
                .map(|q| q.0);
            Ok(match current {
                Some(v) => Poll::Ready(v),
                None => Poll::pending("no current metric yet"),
            })
        },
    )
    .await
    .expect("HPA reads the External metric");
    timeline.mark(format!(
        "HPA read the metric ({} requests served)",
        server.requests()
    ));

    server.set(METRIC, "40");
    timeline.mark(format!("{METRIC}=40 (desired: ceil(40/10) = 4 replicas)"));
    if let Err(err) = replicas(4).await {
        timeline.print();
        panic!("scale up: {err:#}");
    }
    timeline.mark("Deployment scaled up to 4 ready replicas");

    server.set(METRIC, "15");
    timeline.mark(format!(
        "{METRIC}=15 (desired: ceil(15/10) = 2 replicas, after the downscale stabilization)"
    ));
    if let Err(err) = replicas(2).await {
        timeline.print();
        panic!("scale down: {err:#}");
    }
    timeline.mark("Deployment scaled down to 2 ready replicas");
    timeline.print();
}
