//! Drift monitoring on the local control plane, with the operator as a process, a real sidecar
//! serving a classifier from the ConfigMap the operator wrote, and a real Prometheus scraping it.
//!
//! One InferenceService learns a one-minute baseline from review-like traffic; then:
//! - traffic like the baseline (other draws of the same sentences) gives `DriftDetected=False`
//!   at every check over many intervals: no flapping;
//! - long texts on other topics (weather reports, match reports, contract clauses) give
//!   `DriftDetected=True` naming the input length and the predicted classes, with the scores in
//!   `status.drift`, the operator's `lexserve_operator_drift_score` and a Warning Event;
//! - Prometheus stopped: no verdict (`DriftDetected=Unknown`) and
//!   `DriftMonitoringAvailable=False` saying Prometheus does not answer.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::{create, install_crds, isvc, scene};
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, ListParams};
use lexserve_e2e::classifier::{direction_classifier, draw};
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::prometheus::Prometheus;
use lexserve_e2e::sidecar::{SidecarProcess, free_port};
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::{ConditionType, find_condition, reason};
use lexserve_operator::api::inference_service::InferenceServiceStatus;
use serde_json::json;

const NAME: &str = "monitored";

/// Which traffic the users send.
const BASELINE: u8 = 0;
const DRIFTED: u8 = 1;

/// The baseline's sentences: the sentiment training set's short reviews.
fn reviews() -> Vec<String> {
    let path = lexserve_e2e::repo_root().join("inference-sidecar/data/sentiment/train.tsv");
    std::fs::read_to_string(&path)
        .expect("train.tsv")
        .lines()
        .filter_map(|l| Some(l.split_once('\t')?.1.to_string()))
        .collect()
}

/// Long texts on other topics (the classifier files most of them under one class, where the
/// reviews split about one third to two thirds).
fn other_topics(i: u64) -> String {
    const TEXTS: [&str; 3] = [
        "Heavy rain is expected across the northern valleys tonight, with strong winds and temperatures falling below freezing before dawn, so drivers should expect icy roads and delays on the mountain passes.",
        "The home side equalised in the final minute of stoppage time after a long throw caused chaos in the box, and the match went to penalties where the visiting goalkeeper saved two of the five kicks.",
        "The parties agree that any dispute arising out of or in connection with this agreement shall be referred to and finally resolved by arbitration under the rules in force at the date of the notice.",
    ];
    TEXTS[(i % 3) as usize].replacen(',', &format!(" (report {}),", i % 50), 1)
}

/// Users sending one text per request, about 20 a second, from `kind` until `stop`.
fn users(url: String, kind: Arc<AtomicU8>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let reviews = reviews();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let text = if kind.load(Ordering::Relaxed) == BASELINE {
                reviews[(draw(i) * reviews.len() as f64) as usize].clone()
            } else {
                other_topics(i)
            };
            let _ = http
                .post(format!("{url}/predict"))
                .json(&json!({"texts": [text]}))
                .send()
                .await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn condition(
    status: &InferenceServiceStatus,
    type_: ConditionType,
) -> Option<(String, String, String)> {
    find_condition(&status.conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// One monitored classifier on the local control plane: the operator, reading a Prometheus that
/// scrapes the sidecar this harness runs for its pod from the ConfigMap the operator wrote (with
/// `sidecar_args` added, as the pod's own arguments would add them), and users sending reviews
/// or, once `kind` says so, long texts on other topics.
struct Lab {
    scene: common::Scene,
    services: Api<InferenceService>,
    name: &'static str,
    kind: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    load: Option<tokio::task::JoinHandle<()>>,
    sidecar: SidecarProcess,
    prometheus: Prometheus,
    operator: OperatorProcess,
}

impl Lab {
    /// `drift` is the InferenceService's `spec.monitoring.drift`; `objects` are created in the
    /// namespace first (a reference sample's ConfigMap).
    async fn start(
        prefix: &str,
        name: &'static str,
        drift: serde_json::Value,
        objects: Vec<ConfigMap>,
        sidecar_args: Vec<String>,
    ) -> Lab {
        let cluster = lexserve_e2e::shared_cluster().await.expect("cluster");
        install_crds(cluster).await.expect("CRDs");
        let scene = scene(cluster, prefix).await;
        let ns = scene.ns.to_string();
        let dir = std::env::temp_dir().join(format!("lexserve-e2e-{ns}"));
        std::fs::create_dir_all(&dir).expect("dir");

        let port = free_port().expect("port");
        let prometheus = Prometheus::start_with_jobs(vec![json!({
            "job_name": "sidecar",
            "scrape_interval": "2s",
            "static_configs": [{
                "targets": [format!("127.0.0.1:{port}")],
                "labels": {"namespace": ns, "inference_service": name, "pod": format!("{name}-0")},
            }],
        })])
        .await
        .expect("Prometheus");
        let operator = OperatorProcess::start(
            cluster,
            OperatorOptions {
                identity: prefix.to_string(),
                namespace: Some(ns.clone()),
                prometheus_url: Some(prometheus.url().to_string()),
                ..Default::default()
            },
        )
        .await
        .expect("operator");

        let config_maps: Api<ConfigMap> = Api::namespaced(scene.client.clone(), &ns);
        for object in &objects {
            config_maps
                .create(&Default::default(), object)
                .await
                .expect("a ConfigMap of the test");
        }
        let model = direction_classifier(&dir, false).expect("classifier");
        create(
            &scene.api,
            &isvc(
                name,
                json!({
                    "model": {"uri": format!("file://{}", model.display()), "format": "safetensors",
                              "task": "classify"},
                    "runtime": {"threads": 1},
                    "scaling": {"provider": "none", "minReplicas": 1},
                    "monitoring": {"drift": drift},
                }),
            ),
        )
        .await
        .expect("InferenceService");

        // The pod's sidecar, from the ConfigMap the operator wrote.
        let config = wait::until(
            "the sidecar's ConfigMap",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                Ok(
                    match config_maps
                        .get_opt(&format!("{name}-sidecar"))
                        .await?
                        .and_then(|cm| cm.data)
                        .and_then(|d| d.get("config.yaml").cloned())
                    {
                        Some(yaml) => Poll::Ready(yaml),
                        None => Poll::pending("no config.yaml"),
                    },
                )
            },
        )
        .await
        .expect("config");
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).expect("config");
        let mut args = vec!["--model-name".to_string(), name.to_string()];
        args.extend(sidecar_args);
        let mut sidecar =
            SidecarProcess::start_on(&config_path, 1, &dir.join("sidecar.log"), port, &args)
                .expect("sidecar");
        sidecar
            .wait_ready(Duration::from_secs(120))
            .await
            .expect("sidecar ready");

        let kind = Arc::new(AtomicU8::new(BASELINE));
        let stop = Arc::new(AtomicBool::new(false));
        let load = users(sidecar.url(), kind.clone(), stop.clone());
        Lab {
            services: scene.api.clone(),
            scene,
            name,
            kind,
            stop,
            load: Some(load),
            sidecar,
            prometheus,
            operator,
        }
    }

    async fn status(&self) -> anyhow::Result<InferenceServiceStatus> {
        Ok(self
            .services
            .get(self.name)
            .await?
            .status
            .unwrap_or_default())
    }

    /// Waits until the status satisfies `done`.
    async fn until(
        &self,
        what: &str,
        done: impl Fn(&InferenceServiceStatus) -> bool,
    ) -> InferenceServiceStatus {
        wait::until(
            what,
            Duration::from_secs(180),
            Duration::from_secs(1),
            || async {
                let s = self.status().await?;
                Ok(if done(&s) {
                    Poll::Ready(s)
                } else {
                    Poll::pending(format!(
                        "{:?} {:?}",
                        condition(&s, ConditionType::DriftDetected),
                        condition(&s, ConditionType::DriftMonitoringAvailable)
                    ))
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(load) = self.load.take() {
            let _ = load.await;
        }
        self.sidecar.stop();
    }
}

/// Whether `DriftDetected` has status `want`.
fn detected(want: &'static str) -> impl Fn(&InferenceServiceStatus) -> bool {
    move |s| condition(s, ConditionType::DriftDetected).is_some_and(|(state, _, _)| state == want)
}

#[tokio::test]
async fn drift_is_reported_on_drifted_traffic_only_and_never_without_numbers() {
    let mut lab = Lab::start(
        "drift",
        NAME,
        json!({
            "baseline": {"window": "1m"},
            "window": "1m",
            "interval": "10s",
            "minSamples": 200,
            "features": ["InputTokens", "PredictedClass", "Confidence"],
        }),
        Vec::new(),
        Vec::new(),
    )
    .await;

    // 1. The baseline: one minute of reviews after the rollout, kept in the status.
    let learned = lab
        .until("the baseline learned", |s| {
            s.drift.as_ref().is_some_and(|d| !d.baseline.is_empty())
        })
        .await;
    let baseline = &learned.drift.as_ref().expect("drift status").baseline;
    assert_eq!(baseline.len(), 3, "{baseline:?}");

    // 2. Traffic like the baseline: no drift at any check, over many intervals.
    let mut checks = BTreeSet::new();
    let started = Instant::now();
    while checks.len() < 8 && started.elapsed() < Duration::from_secs(180) {
        let s = lab.status().await.expect("status");
        let detected = condition(&s, ConditionType::DriftDetected);
        if let Some(at) = s.drift.as_ref().and_then(|d| d.last_check_time.clone()) {
            let (state, why, message) = detected.clone().expect("DriftDetected after a check");
            assert_ne!(
                state, "True",
                "drift on baseline-like traffic: {why}: {message}"
            );
            if state == "False" {
                checks.insert(at.0.to_string());
            } else {
                // Only before the window holds enough samples (just after learning).
                assert_eq!(why, reason::NOT_ENOUGH_DATA, "{message}");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        checks.len() >= 8,
        "only {} checks said no drift",
        checks.len()
    );
    let quiet = lab.status().await.expect("status");
    let (_, why, message) = condition(&quiet, ConditionType::DriftDetected).expect("condition");
    assert_eq!(why, reason::NO_DRIFT, "{message}");

    // 3. Long texts on other topics: drift, naming the input length and the predicted classes.
    lab.kind.store(DRIFTED, Ordering::Relaxed);
    let drifted = lab.until("drift detected", detected("True")).await;
    let (_, why, message) = condition(&drifted, ConditionType::DriftDetected).expect("condition");
    assert_eq!(why, reason::FEATURES_DRIFTED);
    for feature in ["input_tokens", "predicted_class"] {
        assert!(message.contains(feature), "{feature} not named: {message}");
    }
    let scores = &drifted.drift.as_ref().expect("drift status").features;
    let input = scores
        .iter()
        .find(|f| f.feature.label() == "input_tokens")
        .expect("input_tokens scored");
    assert!(input.drifted && input.psi.unwrap_or(0.0) > 0.2, "{input:?}");
    let (_, available, _) =
        condition(&drifted, ConditionType::DriftMonitoringAvailable).expect("condition");
    assert_eq!(available, reason::DRIFT_MEASURED);
    let exported = lab.operator.metrics().await.expect("operator metrics");
    let psi_line = exported
        .lines()
        .find(|l| {
            l.starts_with("lexserve_operator_drift_score{")
                && l.contains(r#"feature="input_tokens""#)
                && l.contains(r#"measure="psi""#)
        })
        .unwrap_or_else(|| panic!("no input_tokens psi score:\n{exported}"));
    let psi: f64 = psi_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a value");
    assert!(psi > 0.2, "{psi_line}");
    let events: Api<Event> = Api::namespaced(lab.scene.client.clone(), &lab.scene.ns);
    wait::until(
        "a drift Event",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let listed = events.list(&ListParams::default()).await?;
            Ok(
                match listed
                    .items
                    .iter()
                    .find(|e| e.reason.as_deref() == Some(reason::FEATURES_DRIFTED))
                {
                    Some(e) if e.type_.as_deref() == Some("Warning") => Poll::Ready(()),
                    _ => Poll::pending("no FeaturesDrifted Warning yet"),
                },
            )
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    // 4. Prometheus stopped: no verdict, and a monitoring condition that says why.
    lab.prometheus.pause();
    let blind = lab
        .until("no verdict without Prometheus", |s| {
            condition(s, ConditionType::DriftMonitoringAvailable).is_some_and(|(state, why, _)| {
                state == "False" && why == reason::PROMETHEUS_UNREACHABLE
            })
        })
        .await;
    let (state, why, _) = condition(&blind, ConditionType::DriftDetected).expect("condition");
    assert_eq!(
        (state.as_str(), why.as_str()),
        ("Unknown", reason::PROMETHEUS_UNREACHABLE)
    );
    // The scores of the last check with numbers are kept for people to read.
    assert_eq!(
        blind.drift.as_ref().map(|d| d.features.len()),
        drifted.drift.as_ref().map(|d| d.features.len())
    );
    lab.stop().await;
}

/// A reference sample is the baseline: the operator mounts its ConfigMap and passes it to the
/// sidecar, which exports it before it is ready; checks judge against it from the first one,
/// with no learning window.
#[tokio::test]
async fn a_reference_sample_is_the_baseline_from_the_first_check() {
    const REFERENCED: &str = "referenced";
    let sample_path = std::env::temp_dir().join(format!(
        "lexserve-e2e-drift-sample-{}.txt",
        std::process::id()
    ));
    std::fs::write(&sample_path, reviews().join("\n")).expect("sample");
    let sample: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "reviews"},
        "data": {"sample.txt": reviews().join("\n")},
    }))
    .expect("ConfigMap");
    // The pod gets the mounted sample's path (checked below); this machine passes the same file.
    let lab = Lab::start(
        "drift-ref",
        REFERENCED,
        json!({
            "baseline": {"reference": {"name": "reviews", "key": "sample.txt"}},
            "window": "1m",
            "interval": "10s",
            "minSamples": 100,
            "features": ["InputTokens", "PredictedClass"],
        }),
        vec![sample],
        vec![
            "--drift-reference".to_string(),
            sample_path.display().to_string(),
        ],
    )
    .await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(lab.scene.client.clone(), &lab.scene.ns);
    let args = deployments
        .get(REFERENCED)
        .await
        .expect("the Deployment")
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    let at = args
        .iter()
        .position(|a| a == "--drift-reference")
        .unwrap_or_else(|| panic!("no --drift-reference in {args:?}"));
    assert_eq!(
        args[at + 1],
        format!("{}/sample.txt", lexserve_contract::drift::REFERENCE_DIR)
    );

    // Reviews like the sample: judged at once (no learning), and no drift.
    let quiet = lab.until("no drift", detected("False")).await;
    let drift = quiet.drift.as_ref().expect("drift status");
    assert!(
        drift.baseline.is_empty(),
        "a reference baseline is not copied into the status"
    );
    let input = drift
        .features
        .iter()
        .find(|f| f.feature.label() == "input_tokens")
        .expect("input_tokens scored");
    assert_eq!(input.baseline_samples, reviews().len() as u64, "{input:?}");
    // Long texts on other topics: drift against the sample.
    lab.kind.store(DRIFTED, Ordering::Relaxed);
    let moved = lab.until("drift detected", detected("True")).await;
    let (_, _, message) = condition(&moved, ConditionType::DriftDetected).expect("condition");
    assert!(message.contains("input_tokens"), "{message}");
    lab.stop().await;
    let _ = std::fs::remove_file(&sample_path);
}
