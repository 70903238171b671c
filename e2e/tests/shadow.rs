//! ShadowDeployments on the local control plane, with the operator as a process, a real
//! Prometheus scraping production's sidecar, and real sidecars for production and the candidate,
//! started from the ConfigMaps the operator wrote. The harness plays kubelet (it copies
//! production's `mirror.yaml` key into the sidecar's config directory) and DNS (`--resolve`, so
//! that production reaches the candidate's Service name).
//!
//! - a candidate identical to production passes, with agreement 1, and `onPass:
//!   CreateExperiment` creates the Experiment it owns;
//! - the fp32 MiniLM against the int8 one, by cosine, gives the verdict its tolerance implies
//!   (two shadows at once: the default tolerance passes, tolerance 0 fails);
//! - a far classifier (the same encoder, its head's classes swapped) fails early;
//! - a deleted shadow stops the mirror: production's ConfigMap loses the target, the sidecar's
//!   generation moves on, the candidate receives no more copies;
//! - a missing production, an incompatible candidate and a redaction pattern that does not
//!   compile are conditions naming them, and nothing is deployed or mirrored for them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TIMEOUT, create, install_crds, isvc, scene};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use lexserve_contract::mirror::MirrorConfig;
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::prometheus::Prometheus;
use lexserve_e2e::request_counts::counter;
use lexserve_e2e::sidecar::{SidecarProcess, free_port, minilm_fp32_uris, minilm_int8_uris};
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::api::conditions::{ConditionType, find_condition, reason};
use lexserve_operator::api::shadow_deployment::{
    ShadowDeploymentStatus, ShadowPhase, ShadowVerdict,
};
use lexserve_operator::api::{Experiment, InferenceService, ShadowDeployment};
use serde_json::json;

/// The production InferenceService of every lab.
const PRODUCTION: &str = "prod";

/// Sentences for the simulated users: `n` distinct ones, the same every run.
fn sentence(i: usize) -> String {
    const WHO: [&str; 8] = [
        "The customer",
        "My neighbour",
        "A tired engineer",
        "The new intern",
        "Our support team",
        "An old friend",
        "The delivery driver",
        "A curious child",
    ];
    const WHAT: [&str; 6] = [
        "loved the quick refund",
        "complained about the late parcel",
        "asked how to reset a password",
        "praised the friendly staff",
        "could not log in this morning",
        "wanted to cancel the subscription",
    ];
    const WHEN: [&str; 5] = [
        "yesterday.",
        "after lunch.",
        "on the phone.",
        "for the third time.",
        "without any reason.",
    ];
    format!(
        "{} {} {}",
        WHO[i % WHO.len()],
        WHAT[(i / WHO.len()) % WHAT.len()],
        WHEN[(i / (WHO.len() * WHAT.len())) % WHEN.len()]
    )
}

/// An embedder InferenceService's (or candidate's) model and runtime: the int8 or the fp32
/// ONNX MiniLM.
fn minilm(int8: bool) -> serde_json::Value {
    let (model, tokenizer) = if int8 {
        minilm_int8_uris().expect("int8 MiniLM")
    } else {
        minilm_fp32_uris().expect("fp32 MiniLM")
    };
    let runtime = if int8 {
        json!({"quantize": "int8", "threads": 1})
    } else {
        json!({"threads": 1})
    };
    json!({
        "model": {"uri": model, "tokenizer": tokenizer, "format": "onnx", "task": "embed"},
        "runtime": runtime,
    })
}

/// A classifier: MiniLM (candle) with a linear head over its pooled embedding, two classes
/// split by a fixed direction (`lexserve_e2e::classifier`). `swapped` swaps the head's rows: the
/// same encoder and labels, every prediction the other class (a far candidate).
fn classifier(dir: &Path, swapped: bool) -> serde_json::Value {
    let model = lexserve_e2e::classifier::direction_classifier(dir, swapped).expect("classifier");
    json!({
        "model": {"uri": format!("file://{}", model.display()), "format": "safetensors",
                  "task": "classify"},
        "runtime": {"threads": 1},
    })
}

fn shadow(name: &str, spec: serde_json::Value) -> ShadowDeployment {
    serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "ShadowDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("valid ShadowDeployment")
}

/// Plays kubelet for production's ConfigMap volume: copies its `mirror.yaml` key into `path`
/// whenever it changes (and removes the file when the key goes), until `stop`.
fn sync_mirror_config(
    config_maps: Api<ConfigMap>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Some(cm)) = config_maps.get_opt(&format!("{PRODUCTION}-sidecar")).await {
                let yaml = cm
                    .data
                    .and_then(|d| d.get(lexserve_contract::mirror::CONFIG_FILE).cloned());
                if yaml != last {
                    let written = match &yaml {
                        Some(yaml) => {
                            let tmp = path.with_extension("tmp");
                            std::fs::write(&tmp, yaml).is_ok()
                                && std::fs::rename(&tmp, &path).is_ok()
                        }
                        None => std::fs::remove_file(&path).is_ok() || !path.exists(),
                    };
                    if written {
                        last = yaml;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Production `prod` in a namespace of its own: its real sidecar started from the config the
/// operator wrote, reading the mirror configuration the harness copies beside it and reaching
/// each named shadow's candidate through `--resolve`; a real Prometheus scraping it with the
/// labels a PodMonitor gives; an operator reading that Prometheus and analysing every second.
struct Lab {
    _scene: common::Scene,
    ns: String,
    dir: PathBuf,
    client: kube::Client,
    http: reqwest::Client,
    shadows: Api<ShadowDeployment>,
    config_maps: Api<ConfigMap>,
    production: SidecarProcess,
    /// The loopback port of each shadow's candidate, as `--resolve` tells production.
    candidate_ports: Vec<(String, u16)>,
    candidates: Vec<SidecarProcess>,
    stop: Arc<AtomicBool>,
    _operator: OperatorProcess,
    _prometheus: Prometheus,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Lab {
    async fn start(prefix: &str, production: serde_json::Value, shadows: &[&str]) -> Lab {
        let cluster = lexserve_e2e::shared_cluster().await.expect("cluster");
        install_crds(cluster).await.expect("CRDs");
        let scene = scene(cluster, prefix).await;
        let ns = scene.ns.to_string();
        let dir = std::env::temp_dir().join(format!("lexserve-e2e-{ns}"));
        std::fs::create_dir_all(dir.join(PRODUCTION)).expect("dir");

        let production_port = free_port().expect("port");
        let prometheus = Prometheus::start_with_jobs(vec![json!({
            "job_name": "production",
            "static_configs": [{
                "targets": [format!("127.0.0.1:{production_port}")],
                "labels": {"namespace": ns, "inference_service": PRODUCTION,
                           "pod": format!("{PRODUCTION}-0")},
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
                shadow_analysis_seconds: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("operator");

        let mut spec = production;
        spec["scaling"] = json!({"provider": "none", "minReplicas": 1});
        create(&scene.api, &isvc(PRODUCTION, spec))
            .await
            .expect("InferenceService");
        let config_maps: Api<ConfigMap> = Api::namespaced(scene.client.clone(), &ns);
        let config = config_yaml(&config_maps, &format!("{PRODUCTION}-sidecar")).await;
        // The pod mounts the ConfigMap as a directory: the mirror file lands beside the config.
        let config_path = dir.join(PRODUCTION).join("config.yaml");
        std::fs::write(&config_path, config).expect("config");
        let stop = Arc::new(AtomicBool::new(false));
        sync_mirror_config(
            config_maps.clone(),
            dir.join(PRODUCTION)
                .join(lexserve_contract::mirror::CONFIG_FILE),
            stop.clone(),
        );
        let candidate_ports: Vec<(String, u16)> = shadows
            .iter()
            .map(|s| (s.to_string(), free_port().expect("port")))
            .collect();
        let resolve = candidate_ports
            .iter()
            .map(|(s, port)| format!("{s}-shadow.{ns}.svc.cluster.local:80=127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut extra = vec!["--model-name".to_string(), PRODUCTION.to_string()];
        if !resolve.is_empty() {
            extra.extend(["--resolve".to_string(), resolve]);
        }
        let mut production = SidecarProcess::start_on(
            &config_path,
            1,
            &dir.join(format!("{PRODUCTION}-0.log")),
            production_port,
            &extra,
        )
        .expect("production sidecar");
        production
            .wait_ready(Duration::from_secs(120))
            .await
            .expect("production ready");
        Lab {
            _scene: scene,
            shadows: Api::namespaced(cluster.client().expect("client"), &ns),
            client: cluster.client().expect("client"),
            ns,
            dir,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            config_maps,
            production,
            candidate_ports,
            candidates: Vec::new(),
            stop,
            _operator: operator,
            _prometheus: prometheus,
        }
    }

    /// Creates shadow `name` and starts its candidate's sidecar as its pod would run, from the
    /// ConfigMap the operator wrote, serving under the candidate's name; waits until the shadow
    /// is Running (production's sidecar runs a mirror generation that includes it).
    async fn shadow(&mut self, name: &str, spec: serde_json::Value) -> ShadowDeploymentStatus {
        self.shadows
            .create(&PostParams::default(), &shadow(name, spec))
            .await
            .expect("ShadowDeployment admitted");
        let candidate = format!("{name}-shadow");
        let config = config_yaml(&self.config_maps, &format!("{candidate}-sidecar")).await;
        std::fs::create_dir_all(self.dir.join(&candidate)).expect("dir");
        let config_path = self.dir.join(&candidate).join("config.yaml");
        std::fs::write(&config_path, config).expect("config");
        let port = self
            .candidate_ports
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, p)| *p)
            .expect("a port for the shadow");
        let mut sidecar = SidecarProcess::start_on(
            &config_path,
            1,
            &self.dir.join(format!("{candidate}-0.log")),
            port,
            &["--model-name".to_string(), candidate.clone()],
        )
        .expect("candidate sidecar");
        sidecar
            .wait_ready(Duration::from_secs(120))
            .await
            .expect("candidate ready");
        self.candidates.push(sidecar);
        self.wait(name, "Running", |s| {
            matches!(s.phase, Some(ShadowPhase::Running | ShadowPhase::Completed))
        })
        .await
    }

    /// `n` requests to production, 4 at a time, each answered 200; `path` and body by task.
    async fn users(&self, n: usize, classify: bool) {
        let (path, key) = if classify {
            ("/predict", "texts")
        } else {
            ("/embed", "texts")
        };
        let url = format!("{}{path}", self.production.url());
        futures::stream::iter(0..n)
            .map(|i| {
                let http = self.http.clone();
                let url = url.clone();
                async move {
                    let response = http
                        .post(&url)
                        .json(&json!({key: [sentence(i)]}))
                        .send()
                        .await
                        .expect("a request to production");
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    assert!(status.is_success(), "{status}: {body}");
                }
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
    }

    /// Waits until shadow `name`'s status satisfies `done`.
    async fn wait(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&ShadowDeploymentStatus) -> bool,
    ) -> ShadowDeploymentStatus {
        wait::until(
            &format!("shadow {name} {what}"),
            Duration::from_secs(180),
            Duration::from_millis(300),
            || async {
                let status = self.shadows.get(name).await?.status.unwrap_or_default();
                Ok(if done(&status) {
                    Poll::Ready(status)
                } else {
                    let ready = find_condition(&status.conditions, ConditionType::Ready)
                        .map(|c| format!("{}: {}", c.reason, c.message));
                    let progressing =
                        find_condition(&status.conditions, ConditionType::Progressing)
                            .map(|c| format!("{}: {}", c.reason, c.message));
                    Poll::pending(format!("{:?} {ready:?} {progressing:?}", status.phase))
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits for the verdict and returns the status.
    async fn verdict(&self, name: &str) -> ShadowDeploymentStatus {
        let status = self
            .wait(name, "Completed", |s| {
                s.phase == Some(ShadowPhase::Completed)
            })
            .await;
        println!(
            "{name}: verdict {:?}, {} pairs, agreement {:?}, latency ratio {:?}, candidate errors {:?}, dropped {}, confidence shift {:?}",
            status.verdict,
            status.samples,
            status.agreement,
            status.latency_ratio,
            status.candidate_error_rate,
            status.dropped,
            status.confidence_shift
        );
        status
    }

    /// Production's mirror configuration as its ConfigMap holds it.
    async fn mirror_config(&self) -> Option<MirrorConfig> {
        let cm = self
            .config_maps
            .get(&format!("{PRODUCTION}-sidecar"))
            .await
            .expect("production ConfigMap");
        cm.data
            .and_then(|d| d.get(lexserve_contract::mirror::CONFIG_FILE).cloned())
            .map(|yaml| serde_yaml::from_str(&yaml).expect("a MirrorConfig"))
    }

    /// Waits until the candidate's Deployment is gone (the shadow finished or went).
    async fn candidate_removed(&self, name: &str) {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        common::wait_gone(&deployments, &format!("{name}-shadow"))
            .await
            .expect("the candidate's Deployment removed");
    }
}

/// The `config.yaml` key of ConfigMap `name`, once the operator wrote it.
async fn config_yaml(config_maps: &Api<ConfigMap>, name: &str) -> String {
    wait::until(
        &format!("ConfigMap {name}"),
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(
                match config_maps
                    .get_opt(name)
                    .await?
                    .and_then(|cm| cm.data)
                    .and_then(|d| d.get(lexserve_contract::names::path::CONFIG_FILE).cloned())
                {
                    Some(yaml) => Poll::Ready(yaml),
                    None => Poll::pending("absent"),
                },
            )
        },
    )
    .await
    .expect("ConfigMap")
}

/// The embeddings a sidecar served (`/embed` answers counted on its `/metrics`).
async fn embeds_served(http: &reqwest::Client, sidecar: &SidecarProcess) -> f64 {
    let text = http
        .get(format!("{}/metrics", sidecar.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    counter(&text, "lexserve_requests_total", "route=\"/embed\"")
}

/// The criteria of the labs: few pairs, and a latency bound loose enough that two sidecars
/// sharing this machine's cores never decide the verdict (agreement is what these tests test).
fn criteria(min_samples: u64) -> serde_json::Value {
    json!({"minSamples": min_samples, "minAgreement": 0.9, "maxLatencyRatio": 20.0,
           "maxErrorRate": 0.05})
}

#[tokio::test]
async fn an_identical_candidate_passes_with_full_agreement_and_starts_its_experiment() {
    let mut lab = Lab::start("shadow-same", minilm(true), &["same"]).await;
    let mut spec = json!({
        "production": PRODUCTION,
        "candidate": minilm(true),
        "mirrorPercent": 100,
        "comparison": {"mode": "Cosine"},
        "criteria": criteria(60),
        "duration": "10m",
        "onPass": "CreateExperiment",
    });
    spec["candidate"]["resources"] = json!({"cpu": "500m", "memory": "512Mi"});
    let running = lab.shadow("same", spec).await;
    assert!(running.start_time.is_some());
    let written = lab.mirror_config().await.expect("a mirror configuration");
    let target = &written.targets[0];
    assert_eq!(target.model, "same-shadow");
    assert_eq!(
        target.url,
        format!("http://same-shadow.{}.svc.cluster.local:80", lab.ns)
    );

    lab.users(120, false).await;
    let status = lab.verdict("same").await;
    assert_eq!(status.verdict, Some(ShadowVerdict::Pass), "{status:?}");
    let agreement = status.agreement.clone().expect("agreement");
    assert_eq!(agreement.rate, 1.0, "{agreement:?}");
    assert!(status.samples >= 60, "{}", status.samples);
    assert_eq!(status.candidate_error_rate, Some(0.0));

    // Finished: the candidate goes, production mirrors to nothing.
    lab.candidate_removed("same").await;
    let emptied = wait::until(
        "production's mirror configuration without the shadow",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(match lab.mirror_config().await {
                Some(c) if c.targets.is_empty() => Poll::Ready(c),
                other => Poll::pending(format!("{other:?}")),
            })
        },
    )
    .await
    .expect("emptied");
    assert!(emptied.generation > written.generation);

    // onPass: CreateExperiment: the candidate as an InferenceService, and the Experiment,
    // both owned by the shadow, named in its status.
    assert_eq!(status.experiment.as_deref(), Some("same-experiment"));
    let experiments: Api<Experiment> = Api::namespaced(lab.client.clone(), &lab.ns);
    let experiment = experiments
        .get("same-experiment")
        .await
        .expect("Experiment");
    assert_eq!(experiment.spec.control, PRODUCTION);
    let owner =
        |refs: &Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.iter()
                .flatten()
                .map(|r| (r.kind.clone(), r.name.clone()))
                .collect::<Vec<_>>()
        };
    assert_eq!(
        owner(&experiment.metadata.owner_references),
        vec![("ShadowDeployment".to_string(), "same".to_string())]
    );
    let isvcs: Api<InferenceService> = Api::namespaced(lab.client.clone(), &lab.ns);
    let candidate = isvcs
        .get("same-candidate")
        .await
        .expect("candidate InferenceService");
    assert_eq!(
        owner(&candidate.metadata.owner_references),
        vec![("ShadowDeployment".to_string(), "same".to_string())]
    );
    assert_eq!(
        experiment
            .spec
            .variants
            .iter()
            .map(|v| v.inference_service.as_str())
            .collect::<Vec<_>>(),
        vec![PRODUCTION, "same-candidate"]
    );
    println!("namespace {} done", lab.ns);
}

#[tokio::test]
async fn the_fp32_model_against_the_int8_one_gets_the_verdict_its_tolerance_implies() {
    let mut lab = Lab::start("shadow-close", minilm(true), &["close", "exact"]).await;
    // Two shadows of the fp32 model on the same production at once: `close` with Cosine's
    // default tolerance (1e-3), `exact` with tolerance 0. The distances between the two models
    // over these sentences are measured below on the real sidecars: here they lie between
    // 2.9e-4 and 6.7e-4 (Xeon, ONNX Runtime 1.31), so every pair of `close` agrees (Pass) and
    // none of `exact` does (Fail).
    for (name, comparison) in [
        ("close", json!({"mode": "Cosine"})),
        ("exact", json!({"mode": "Cosine", "tolerance": 0.0})),
    ] {
        lab.shadow(
            name,
            json!({
                "production": PRODUCTION,
                "candidate": minilm(false),
                "mirrorPercent": 100,
                "comparison": comparison,
                "criteria": criteria(60),
                "duration": "10m",
            }),
        )
        .await;
    }
    let embed = |url: String, i: usize| {
        let http = lab.http.clone();
        async move {
            let answer: serde_json::Value = http
                .post(format!("{url}/embed"))
                .json(&json!({"texts": [sentence(i)]}))
                .send()
                .await
                .expect("embed")
                .json()
                .await
                .expect("json");
            answer["embeddings"][0]
                .as_array()
                .expect("an embedding")
                .iter()
                .map(|x| x.as_f64().expect("a number"))
                .collect::<Vec<_>>()
        }
    };
    let mut distances = Vec::new();
    for i in 0..120 {
        // Production mirrors these too: they are pairs like the users' below.
        let a = embed(lab.production.url(), i).await;
        let b = embed(lab.candidates[0].url(), i).await;
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        distances.push(1.0 - dot / (norm(&a) * norm(&b)));
    }
    distances.sort_by(f64::total_cmp);
    let (smallest, median, largest) = (distances[0], distances[60], distances[119]);
    println!(
        "int8 vs fp32 MiniLM, 1 - cosine over 120 sentences: smallest {smallest:.2e}, median {median:.2e}, largest {largest:.2e}"
    );
    assert!(
        smallest > 0.0 && largest <= 1e-3,
        "the measured distances no longer imply these verdicts: {smallest:e}..{largest:e}"
    );

    lab.users(120, false).await;
    let close = lab.verdict("close").await;
    assert_eq!(close.verdict, Some(ShadowVerdict::Pass), "{close:?}");
    assert_eq!(close.agreement.expect("agreement").rate, 1.0);
    // onPass Recommend: nothing created.
    assert_eq!(close.experiment, None);
    let exact = lab.verdict("exact").await;
    assert_eq!(exact.verdict, Some(ShadowVerdict::Fail), "{exact:?}");
    assert_eq!(exact.agreement.expect("agreement").rate, 0.0);
    println!("namespace {} done", lab.ns);
}

#[tokio::test]
async fn a_far_classifier_fails_early() {
    let dir = std::env::temp_dir().join(format!("lexserve-e2e-classifiers-{}", std::process::id()));
    let production = classifier(&dir, false);
    let swapped = classifier(&dir, true);
    let mut lab = Lab::start("shadow-far", production, &["far"]).await;
    lab.shadow(
        "far",
        json!({
            "production": PRODUCTION,
            "candidate": swapped,
            "mirrorPercent": 100,
            "comparison": {"mode": "Label"},
            "criteria": criteria(1000),
            "duration": "1h",
        }),
    )
    .await;
    lab.users(60, true).await;
    let status = lab.verdict("far").await;
    assert_eq!(status.verdict, Some(ShadowVerdict::Fail), "{status:?}");
    let agreement = status.agreement.clone().expect("agreement");
    assert!(agreement.upper < 0.9, "{agreement:?}");
    // Early: far fewer pairs than minSamples, and long before the hour of `duration`.
    assert!(status.samples < 1000, "{}", status.samples);
    let ran = status
        .last_analysis_time
        .as_ref()
        .zip(status.start_time.as_ref())
        .map(|(end, start)| end.0.duration_since(start.0).as_secs())
        .expect("times");
    assert!(ran < 3600, "{ran}");
    let ready = find_condition(&status.conditions, ConditionType::Ready).expect("Ready");
    assert_eq!(ready.reason, reason::CANDIDATE_FAILED);
    lab.candidate_removed("far").await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("namespace {} done", lab.ns);
}

#[tokio::test]
async fn a_deleted_shadow_stops_the_mirror() {
    let mut lab = Lab::start("shadow-delete", minilm(true), &["gone"]).await;
    lab.shadow(
        "gone",
        json!({
            "production": PRODUCTION,
            "candidate": minilm(true),
            "mirrorPercent": 100,
            "comparison": {"mode": "Cosine"},
            "criteria": criteria(100_000),
            "duration": "1h",
        }),
    )
    .await;
    let with_target = lab.mirror_config().await.expect("a mirror configuration");
    assert_eq!(with_target.targets.len(), 1);
    let before = embeds_served(&lab.http, &lab.candidates[0]).await;
    lab.users(20, false).await;
    wait::until(
        "the candidate receiving copies",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let now = embeds_served(&lab.http, &lab.candidates[0]).await;
            Ok(if now >= before + 20.0 {
                Poll::Ready(())
            } else {
                Poll::pending(format!("{now} requests"))
            })
        },
    )
    .await
    .expect("copies");

    lab.shadows
        .delete("gone", &DeleteParams::default())
        .await
        .expect("delete");
    let emptied = wait::until(
        "production's ConfigMap without the target",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(match lab.mirror_config().await {
                Some(c) if c.targets.is_empty() => Poll::Ready(c),
                other => Poll::pending(format!("{other:?}")),
            })
        },
    )
    .await
    .expect("emptied");
    assert_eq!(emptied.generation, with_target.generation + 1);
    // The sidecar runs the new generation ...
    wait::until(
        "production's sidecar running the emptied generation",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let text = lab
                .http
                .get(format!("{}/metrics", lab.production.url()))
                .send()
                .await?
                .text()
                .await?;
            let live = text
                .lines()
                .find(|l| l.starts_with(lexserve_contract::names::metric::MIRROR_CONFIG_GENERATION))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            Ok(if live >= emptied.generation as f64 {
                Poll::Ready(())
            } else {
                Poll::pending(format!("generation {live}"))
            })
        },
    )
    .await
    .expect("live");
    // ... and the candidate (still running here: its pod would go with the shadow) receives
    // no more copies.
    let settled = embeds_served(&lab.http, &lab.candidates[0]).await;
    lab.users(20, false).await;
    let after = embeds_served(&lab.http, &lab.candidates[0]).await;
    assert_eq!(after, settled, "copies after the shadow was deleted");
    lab.candidate_removed("gone").await;
    println!("namespace {} done", lab.ns);
}

#[tokio::test]
async fn a_missing_production_an_incompatible_candidate_and_a_bad_redaction_are_named() {
    let cluster = lexserve_e2e::shared_cluster().await.expect("cluster");
    install_crds(cluster).await.expect("CRDs");
    let scene = scene(cluster, "shadow-invalid").await;
    let ns = scene.ns.to_string();
    let _operator = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: "shadow-invalid".to_string(),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("operator");
    let shadows: Api<ShadowDeployment> = Api::namespaced(scene.client.clone(), &ns);
    let embed = json!({"model": {"uri": "file:///m/model.onnx", "format": "onnx",
                                 "tokenizer": "file:///m/tokenizer.json", "task": "embed"}});
    let classify = json!({"model": {"uri": "file:///m/model.onnx", "format": "onnx",
                                    "tokenizer": "file:///m/tokenizer.json", "task": "classify"}});
    shadows
        .create(
            &PostParams::default(),
            &shadow(
                "orphan",
                json!({"production": "nowhere", "candidate": embed,
                       "comparison": {"mode": "Cosine"}}),
            ),
        )
        .await
        .expect("admitted");
    create(&scene.api, &isvc("embedder", embed.clone()))
        .await
        .expect("InferenceService");
    shadows
        .create(
            &PostParams::default(),
            &shadow(
                "mismatch",
                json!({"production": "embedder", "candidate": classify,
                       "comparison": {"mode": "Label"}}),
            ),
        )
        .await
        .expect("admitted");
    shadows
        .create(
            &PostParams::default(),
            &shadow(
                "unmasked",
                json!({"production": "embedder", "candidate": embed,
                       "redaction": {"patterns": ["[0-9]{4}", "([a-z]+"]},
                       "comparison": {"mode": "Cosine"}}),
            ),
        )
        .await
        .expect("admitted");
    for (name, want, naming) in [
        (
            "unmasked",
            reason::INVALID_REDACTION,
            "spec.redaction.patterns[1]: \"([a-z]+\" does not compile",
        ),
        (
            "orphan",
            reason::PRODUCTION_NOT_FOUND,
            "no InferenceService nowhere",
        ),
        (
            "mismatch",
            reason::INCOMPATIBLE_CANDIDATE,
            "the candidate has task classify, production embedder has task embed",
        ),
    ] {
        let ready = wait::until(
            &format!("{name}: {want}"),
            TIMEOUT,
            Duration::from_millis(200),
            || async {
                let status = shadows.get(name).await?.status.unwrap_or_default();
                Ok(
                    match find_condition(&status.conditions, ConditionType::Degraded) {
                        Some(c) if c.reason == want && c.status == "True" => Poll::Ready(c.clone()),
                        other => Poll::pending(format!("{other:?}")),
                    },
                )
            },
        )
        .await
        .expect("condition");
        assert!(ready.message.contains(naming), "{}", ready.message);
        // Nothing is deployed for a shadow that cannot run.
        let deployments: Api<Deployment> = Api::namespaced(scene.client.clone(), &ns);
        assert!(
            deployments
                .get_opt(&format!("{name}-shadow"))
                .await
                .expect("get")
                .is_none()
        );
    }
    // Production's ConfigMap is untouched: no mirror key for a shadow that cannot run.
    let config_maps: Api<ConfigMap> = Api::namespaced(scene.client.clone(), &ns);
    let cm = config_maps
        .get("embedder-sidecar")
        .await
        .expect("ConfigMap");
    assert!(
        !cm.data
            .unwrap_or_default()
            .contains_key(lexserve_contract::mirror::CONFIG_FILE)
    );
}
