//! Queue-depth autoscaling end to end, with nothing faked: the operator's own
//! `external.metrics.k8s.io` API behind the apiserver's aggregation layer, a real Prometheus
//! that scrapes them with the documented scrape config (`deploy/prometheus/scrape-config.yaml`;
//! see `pod_harness::scrape_job` for the one substitution), real sidecars serving a real model, and
//! kube-controller-manager's HPA scaling the Deployment the operator built.
//!
//! kwok's pods run no containers, so this harness starts one real `lexserve-sidecar` per pod,
//! from the config the operator wrote into the ConfigMap, and points Prometheus at it. A load
//! generator sends requests to the ready sidecars, as the Service would.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::Api;
use lexserve_e2e::aggregation::{BackendTrust, register_local_apiservice};
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::pod_harness::{Pods, run_load, run_pods, scrape_job};
use lexserve_e2e::prometheus::Prometheus;
use lexserve_e2e::sidecar::minilm_int8_uris;
use lexserve_e2e::wait::{self, Poll};
use lexserve_e2e::{LocalCluster, shared_cluster};
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::{ConditionType, find_condition};
use serde_json::json;

const NAME: &str = "minilm";
/// Where the e2e operators run (their lease, their metrics API's Secret and Service).
const OPERATOR_NAMESPACE: &str = "default";
const METRIC: &str = "lexserve_inference_load";
/// Closed-loop clients: the total load stays near this many requests in flight.
const CLIENTS: usize = 12;
const TARGET_PER_REPLICA: u32 = 4;
const MAX_REPLICAS: i32 = 3;
const TEXT: &str = "Autoscaling on queue depth means that the number of model server replicas follows \
    the requests that are waiting and running, so that a burst of traffic adds replicas within \
    seconds and a quiet period removes them after the stabilization window has passed.";

/// One line of the timeline: what the test saw at an instant.
#[derive(Clone, Debug)]
struct Sample {
    load_on: bool,
    prometheus_up: bool,
    /// The external metric through the apiserver: the sum of the items, or the error.
    metric: Result<f64, String>,
    items: usize,
    hpa_desired: i32,
    spec_replicas: i32,
    ready_replicas: i32,
    sidecars_serving: usize,
    requests_per_second: f64,
}

impl Default for Sample {
    fn default() -> Self {
        Sample {
            load_on: false,
            prometheus_up: false,
            metric: Err("not read yet".to_string()),
            items: 0,
            hpa_desired: 0,
            spec_replicas: 0,
            ready_replicas: 0,
            sidecars_serving: 0,
            requests_per_second: 0.0,
        }
    }
}

struct Timeline {
    start: Instant,
    lines: Mutex<Vec<String>>,
}

impl Timeline {
    fn new() -> Arc<Self> {
        Arc::new(Timeline {
            start: Instant::now(),
            lines: Mutex::new(Vec::new()),
        })
    }
    fn at(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    fn mark(&self, event: impl AsRef<str>) {
        let line = format!("{:>6.1}s  == {}", self.at(), event.as_ref());
        eprintln!("{line}");
        self.lines.lock().unwrap().push(line);
    }
    fn sample(&self, s: &Sample) {
        let metric = match &s.metric {
            Ok(v) => format!("{v:>6.2} ({} items)", s.items),
            Err(e) => format!("error: {}", e.chars().take(60).collect::<String>()),
        };
        let line = format!(
            "{:>6.1}s  load {:<3} prom {:<4} metric {:<22} hpa desired {} spec {} ready {} serving {}  {:>6.1} req/s",
            self.at(),
            if s.load_on { "on" } else { "off" },
            if s.prometheus_up { "up" } else { "down" },
            metric,
            s.hpa_desired,
            s.spec_replicas,
            s.ready_replicas,
            s.sidecars_serving,
            s.requests_per_second,
        );
        self.lines.lock().unwrap().push(line);
    }
    fn print(&self) {
        eprintln!("timeline:");
        for line in self.lines.lock().unwrap().iter() {
            eprintln!("  {line}");
        }
    }
}

/// Parses a Kubernetes quantity as the metrics API writes it ("3", "1500m").
fn parse_quantity(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().unwrap_or(f64::NAN) / 1000.0,
        None => q.parse().unwrap_or(f64::NAN),
    }
}

/// The external metric as the HPA reads it: through the apiserver, with kubectl (client-go, as
/// the HPA; kube-rs retries a 503 for minutes, which would stall the timeline).
async fn read_metric(cluster: &LocalCluster, ns: &str) -> (Result<f64, String>, usize) {
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{METRIC}?labelSelector=lexserve.io%2Finference-service%3D{NAME}"
    );
    let out = cluster
        .kubectl(["get", "--raw", &path, "--request-timeout=10s"])
        .await
        .map_err(|e| format!("{e:#}"))
        .and_then(|o| {
            if o.success {
                Ok(o.stdout)
            } else {
                Err(o.stderr.trim().to_string())
            }
        });
    match out {
        Ok(body) => {
            let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let total = items
                .iter()
                .map(|i| parse_quantity(i["value"].as_str().unwrap_or("")))
                .sum();
            (Ok(total), items.len())
        }
        Err(e) => (Err(e), 0),
    }
}

struct Observed {
    hpa_desired: i32,
    spec_replicas: i32,
    ready_replicas: i32,
}

async fn observe(client: &kube::Client, ns: &str) -> Observed {
    let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns)
        .get_opt(NAME)
        .await
        .ok()
        .flatten();
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(NAME)
        .await
        .ok()
        .flatten();
    Observed {
        hpa_desired: hpa
            .and_then(|h| h.status)
            .map(|s| s.desired_replicas)
            .unwrap_or(0),
        spec_replicas: deployment
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(0),
        ready_replicas: deployment
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    }
}

fn condition_of(isvc: &InferenceService, type_: ConditionType) -> Option<(String, String, String)> {
    let status = isvc.status.as_ref()?;
    find_condition(&status.conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hpa_scales_real_sidecars_on_their_load_and_holds_when_prometheus_is_gone() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs");
    let ns = cluster.namespace("autoscale").await.expect("namespace");
    let ns_name = ns.name().to_string();
    let client = cluster.client().expect("client");
    let timeline = Timeline::new();

    let targets_file = cluster
        .log_dir()
        .join(format!("autoscaling-{ns_name}-targets.json"));
    std::fs::write(&targets_file, "[]").expect("targets file");
    let mut prometheus = Prometheus::start_with_jobs(vec![scrape_job(&targets_file)])
        .await
        .expect("Prometheus");
    let prometheus_up = Arc::new(AtomicBool::new(true));
    timeline.mark(format!(
        "Prometheus at {} (documented scrape config)",
        prometheus.url()
    ));

    let operator = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: "autoscaling".to_string(),
            namespace: Some(ns_name.clone()),
            prometheus_url: Some(prometheus.url().to_string()),
            metrics_api: true,
            scaling_signal: Some((2, 6)),
            ..OperatorOptions::default()
        },
    )
    .await
    .expect("operator");
    let api_port = operator.metrics_api_port().expect("metrics API port");
    // The Service in the operator's own namespace (the e2e operators run in `default`), so
    // that the certificate the operator generated for it verifies against the caBundle the
    // operator puts into the APIService: the apiserver checks the backend like any client.
    register_local_apiservice(
        cluster,
        "external.metrics.k8s.io",
        "v1beta1",
        OPERATOR_NAMESPACE,
        "lexserve-operator",
        api_port,
        BackendTrust::CaBundleFromBackend,
        Duration::from_secs(90),
    )
    .await
    .unwrap_or_else(|e| panic!("APIService Available: {e:#}\n{}", operator.log_tail(30)));
    timeline.mark(format!(
        "operator's external metrics API on 127.0.0.1:{api_port} registered and Available"
    ));
    // Only the apiserver's front proxy gets in: a client without its certificate is refused
    // during the TLS handshake, so nothing bypasses the apiserver's authorization.
    let direct = reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let bypass = direct
        .get(format!(
            "https://127.0.0.1:{api_port}/apis/external.metrics.k8s.io/v1beta1"
        ))
        .send()
        .await;
    assert!(
        bypass.is_err(),
        "the metrics API answered a client without the front-proxy certificate: {bypass:?}"
    );

    let (model, tokenizer) = minilm_int8_uris().expect("models");
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns_name);
    create(
        &isvcs,
        &isvc(
            NAME,
            json!({
                "model": {"uri": model, "tokenizer": tokenizer, "format": "onnx", "task": "embed"},
                "runtime": {"threads": 1, "quantize": "int8", "batching": {"maxBatchRequests": 8, "maxQueueSize": 256}},
                "resources": {"cpu": "1", "memory": "1Gi"},
                "scaling": {
                    "provider": "hpa",
                    "minReplicas": 1,
                    "maxReplicas": MAX_REPLICAS,
                    "targetLoadPerReplica": TARGET_PER_REPLICA,
                    "scaleDown": {
                        "stabilizationWindowSeconds": 10,
                        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
                    },
                },
            }),
        ),
    )
    .await
    .expect("create InferenceService");
    timeline.mark(format!(
        "InferenceService {NAME}: hpa, 1..{MAX_REPLICAS} replicas, target load {TARGET_PER_REPLICA} per replica"
    ));

    // The harness: sidecars for the pods, the load generator, the sampler.
    let stop = Arc::new(AtomicBool::new(false));
    let load_on = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let pods = Arc::new(Pods::default());
    let runner = tokio::spawn(run_pods(
        cluster,
        ns_name.clone(),
        NAME.to_string(),
        lexserve_operator::resources::config_map::config_map_name(NAME),
        targets_file.clone(),
        pods.clone(),
        stop.clone(),
    ));
    run_load(
        pods.clone(),
        CLIENTS,
        TEXT,
        load_on.clone(),
        stop.clone(),
        done.clone(),
    );
    let latest = Arc::new(Mutex::new(Sample::default()));
    let sampler = {
        let (timeline, latest, client, ns, stop, load_on, prometheus_up, pods, done) = (
            timeline.clone(),
            latest.clone(),
            client.clone(),
            ns_name.clone(),
            stop.clone(),
            load_on.clone(),
            prometheus_up.clone(),
            pods.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            let mut last = (Instant::now(), done.load(Ordering::Relaxed));
            while !stop.load(Ordering::Relaxed) {
                let (metric, items) = read_metric(cluster, &ns).await;
                let o = observe(&client, &ns).await;
                let now = (Instant::now(), done.load(Ordering::Relaxed));
                let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
                last = now;
                let sample = Sample {
                    load_on: load_on.load(Ordering::Relaxed),
                    prometheus_up: prometheus_up.load(Ordering::Relaxed),
                    metric,
                    items,
                    hpa_desired: o.hpa_desired,
                    spec_replicas: o.spec_replicas,
                    ready_replicas: o.ready_replicas,
                    sidecars_serving: pods.serving.lock().unwrap().len(),
                    requests_per_second: rate,
                };
                timeline.sample(&sample);
                *latest.lock().unwrap() = sample;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let finish = |stop: &AtomicBool| stop.store(true, Ordering::Relaxed);

    let result = async {
        // 1. Idle: one replica, a measured signal of zero (not an error), the condition True.
        wait::until("the idle load to be measured", Duration::from_secs(180), Duration::from_millis(500), || async {
            let s = latest.lock().unwrap().clone();
            Ok(match (&s.metric, s.sidecars_serving) {
                (Ok(v), 1) if *v == 0.0 && s.items == 1 => Poll::Ready(()),
                _ => Poll::pending(format!("{:?}, {} serving", s.metric, s.sidecars_serving)),
            })
        })
        .await?;
        timeline.mark("idle: the metric reads 0 from 1 ready replica");
        wait_condition(&isvcs, NAME, ConditionType::ScalingSignalAvailable, "True", Some("LoadMeasured")).await?;
        timeline.mark("ScalingSignalAvailable=True");

        // 2. Load step: the HPA scales up to the maximum, and the new replicas serve.
        load_on.store(true, Ordering::Relaxed);
        let step = Instant::now();
        timeline.mark(format!("load on: {CLIENTS} closed-loop clients"));
        let decision = wait::until("the HPA to decide to scale up", Duration::from_secs(180), Duration::from_millis(250), || async {
            let s = latest.lock().unwrap().clone();
            let o = observe(&client, &ns_name).await;
            Ok(if o.hpa_desired > 1 || o.spec_replicas > 1 {
                Poll::Ready(step.elapsed())
            } else {
                Poll::pending(format!("metric {:?}, desired {}", s.metric, o.hpa_desired))
            })
        })
        .await?;
        timeline.mark(format!("HPA scale-up decision {:.1}s after the load step", decision.as_secs_f64()));
        let scaled = wait::until("3 replicas ready and serving", Duration::from_secs(240), Duration::from_millis(250), || async {
            let o = observe(&client, &ns_name).await;
            let serving = pods.serving.lock().unwrap().len();
            Ok(if o.spec_replicas == MAX_REPLICAS && o.ready_replicas == MAX_REPLICAS && serving == MAX_REPLICAS as usize {
                Poll::Ready(step.elapsed())
            } else {
                Poll::pending(format!("spec {}, ready {}, serving {serving}", o.spec_replicas, o.ready_replicas))
            })
        })
        .await?;
        timeline.mark(format!("{MAX_REPLICAS} replicas ready and serving {:.1}s after the load step", scaled.as_secs_f64()));
        // The answer is per ready replica: one item per pod once all three report.
        wait::until("one item per ready replica", Duration::from_secs(60), Duration::from_millis(500), || async {
            let s = latest.lock().unwrap().clone();
            Ok(if s.items == MAX_REPLICAS as usize { Poll::Ready(()) } else { Poll::pending(format!("{} items", s.items)) })
        })
        .await?;

        // 3. Prometheus gone: the metric is an error (not zero), the condition appears, and the
        // HPA holds its replicas even though the load has stopped.
        prometheus.pause();
        prometheus_up.store(false, Ordering::Relaxed);
        load_on.store(false, Ordering::Relaxed);
        let paused = Instant::now();
        timeline.mark("Prometheus stopped, load off");
        let missing = wait_condition(&isvcs, NAME, ConditionType::ScalingSignalAvailable, "False", Some("PrometheusUnavailable")).await?;
        let (_, _, message) = condition_of(&missing, ConditionType::ScalingSignalAvailable).expect("condition");
        timeline.mark(format!("ScalingSignalAvailable=False after {:.1}s: {message}", paused.elapsed().as_secs_f64()));
        let degraded = condition_of(&missing, ConditionType::Degraded).expect("Degraded");
        anyhow::ensure!(degraded.0 == "True" && degraded.1 == "PrometheusUnavailable", "Degraded: {degraded:?}");
        let (metric, _) = read_metric(cluster, &ns_name).await;
        anyhow::ensure!(metric.is_err(), "the metric must be an error without Prometheus, got {metric:?}");
        // The replicas the HPA had when its last metric read succeeded: it may have moved on
        // that (noisy, real) data in the sync right before Prometheus went away, so the baseline
        // is taken now, after at least one sync without a signal. From here on only missing
        // data is left, and the load is gone: a made-up zero would scale to 1 within the
        // scale-down window (10 s) plus a sync (5 s). The hold is watched for 30 s.
        let held = observe(&client, &ns_name).await.spec_replicas;
        anyhow::ensure!(held >= 2, "the HPA had already scaled down to {held} before the hold started");
        let hold_until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < hold_until {
            let o = observe(&client, &ns_name).await;
            anyhow::ensure!(o.spec_replicas == held, "the HPA did not hold: {} replicas, was {held}", o.spec_replicas);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns_name).get(NAME).await?;
        let active = hpa
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "ScalingActive")
            .map(|c| (c.status, c.reason.unwrap_or_default()));
        timeline.mark(format!("held {held} replicas for 30s without a signal; HPA ScalingActive {active:?}"));
        anyhow::ensure!(
            matches!(&active, Some((status, reason)) if status == "False" && reason == "FailedGetExternalMetric"),
            "the HPA should report it cannot get the metric: {active:?}"
        );

        // 4. Prometheus back: the condition clears, the idle load is measured, and the HPA
        // scales down after its stabilization window.
        prometheus.resume().await?;
        prometheus_up.store(true, Ordering::Relaxed);
        let resumed = Instant::now();
        timeline.mark("Prometheus started again");
        wait_condition(&isvcs, NAME, ConditionType::ScalingSignalAvailable, "True", Some("LoadMeasured")).await?;
        timeline.mark(format!("ScalingSignalAvailable=True after {:.1}s", resumed.elapsed().as_secs_f64()));
        let down = wait::until("scale down to 1", Duration::from_secs(180), Duration::from_millis(250), || async {
            let o = observe(&client, &ns_name).await;
            Ok(if o.spec_replicas == 1 { Poll::Ready(resumed.elapsed()) } else { Poll::pending(format!("spec {}", o.spec_replicas)) })
        })
        .await?;
        timeline.mark(format!("scaled down to 1 replica {:.1}s after Prometheus came back", down.as_secs_f64()));
        let settled = wait::until("Degraded to clear", Duration::from_secs(60), Duration::from_millis(500), || async {
            let i = isvcs.get(NAME).await?;
            Ok(match condition_of(&i, ConditionType::Degraded) {
                Some((s, _, _)) if s == "False" => Poll::Ready(()),
                other => Poll::pending(format!("{other:?}")),
            })
        })
        .await;
        settled?;
        anyhow::Ok(())
    }
    .await;

    finish(&stop);
    let _ = sampler.await;
    let _ = runner.await;
    timeline.print();
    if let Err(e) = result {
        panic!("{e:#}\noperator log:\n{}", operator.log_tail(40));
    }
}
