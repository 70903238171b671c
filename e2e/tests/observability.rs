//! The observability pack (`charts/lexserve/files/`): the alerts pass their promtool unit tests,
//! every alert links a runbook page with its three sections, and every dashboard and alert query
//! runs against a real Prometheus scraping real sidecars under load (an encoder, a classifier, a
//! generator, all started from the ConfigMaps the operator wrote, with the documented scrape
//! config) and the operator: each query parses, each metric it names is exported, and each
//! dashboard panel returns series (a panel showing "No data" on a live system is a bug).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use lexserve_e2e::bins::bin;
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::pod_harness::{Pods, run_load, run_pods, scrape_job};
use lexserve_e2e::prometheus::Prometheus;
use lexserve_e2e::sidecar::minilm_int8_uris;
use lexserve_e2e::wait::{self, Poll};
use lexserve_e2e::{repo_root, shared_cluster};
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::ConditionType;
use serde_json::{Value, json};

fn pack() -> PathBuf {
    repo_root().join("charts/lexserve/files")
}

/// The alerts: (name, expression, runbook_url).
fn alerts() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(pack().join("alerts/lexserve.rules.yaml")).expect("rules");
    let rules: Value = serde_yaml::from_str(&text).expect("rules YAML");
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["alert"].as_str().expect("alert").to_string(),
                r["expr"].as_str().expect("expr").to_string(),
                r["annotations"]["runbook_url"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// The dashboard's panels: (title, expressions).
fn panels() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(pack().join("dashboards/lexserve.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .map(|p| {
            (
                p["title"].as_str().expect("title").to_string(),
                p["targets"]
                    .as_array()
                    .expect("targets")
                    .iter()
                    .map(|t| t["expr"].as_str().expect("expr").to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn the_alerts_pass_their_promtool_unit_tests() {
    let promtool = bin("promtool").expect("promtool (Debian's prometheus package; setup.sh)");
    let dir = pack().join("alerts");
    for args in [
        &["check", "rules", "lexserve.rules.yaml"][..],
        &["test", "rules", "lexserve.rules.test.yaml"][..],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a case in the unit tests.
    let tests = std::fs::read_to_string(dir.join("lexserve.rules.test.yaml")).expect("tests");
    for (name, _, _) in alerts() {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no promtool test"
        );
    }
}

#[test]
fn every_alert_has_a_runbook_page() {
    let alerts = alerts();
    assert!(alerts.len() >= 10, "{} alerts", alerts.len());
    let index = std::fs::read_to_string(repo_root().join("docs/runbooks/README.md"))
        .expect("docs/runbooks/README.md");
    for (name, _, url) in alerts {
        assert!(
            url.ends_with(&format!("/docs/runbooks/{name}.md")),
            "{name}: runbook_url {url}"
        );
        let page = repo_root().join(format!("docs/runbooks/{name}.md"));
        let text =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        for section in ["## What it means", "## What to check", "## What to do"] {
            assert!(text.contains(section), "{name}: no {section:?}");
        }
        assert!(
            index.contains(&format!("({name}.md)")),
            "{name} not indexed"
        );
    }
}

/// The metric names an expression reads (histogram series by their full names).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("lexserve_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Runs `query` now: the result vector, or Prometheus' error (a parse error included).
async fn query(
    http: &reqwest::Client,
    prometheus: &str,
    query: &str,
) -> Result<Vec<Value>, String> {
    let response = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// A dashboard expression with Grafana's variables as the dashboard would fill them for
/// namespace `ns` and every InferenceService.
fn as_grafana_runs_it(expr: &str, ns: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$namespace", ns)
        .replace("$inference_service", ".*")
}

/// One InferenceService's sidecars, scraped with the documented config under a job of its own.
struct Served {
    name: &'static str,
    targets: PathBuf,
}

fn job(served: &Served) -> Value {
    let mut job = scrape_job(&served.targets);
    job["job_name"] = json!(format!("lexserve-sidecars-{}", served.name));
    job
}

async fn send_load(
    http: reqwest::Client,
    pods: Arc<Pods>,
    path: &'static str,
    body: Value,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let target = pods.serving.lock().unwrap().first().cloned();
        let Some(base) = target else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        match http.post(format!("{base}{path}")).json(&body).send().await {
            Ok(r) => {
                let _ = r.bytes().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_and_alert_query_returns_series_on_a_live_system() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs");
    let ns = cluster.namespace("observe").await.expect("namespace");
    let ns_name = ns.name().to_string();
    let client = cluster.client().expect("client");
    let dir = cluster.log_dir().join(format!("observability-{ns_name}"));
    std::fs::create_dir_all(&dir).expect("dir");

    // Prometheus scrapes the sidecars and the operator, which reads it back (load signal, drift).
    let operator_metrics_port = lexserve_e2e::sidecar::free_port().expect("port");
    let served = [
        Served {
            name: "embed",
            targets: dir.join("embed-targets.json"),
        },
        Served {
            name: "classify",
            targets: dir.join("classify-targets.json"),
        },
        Served {
            name: "chat",
            targets: dir.join("chat-targets.json"),
        },
    ];
    for s in &served {
        std::fs::write(&s.targets, "[]").expect("targets");
    }
    let mut jobs: Vec<Value> = served.iter().map(job).collect();
    jobs.push(json!({
        "job_name": "lexserve-operator",
        "scrape_interval": "1s",
        "static_configs": [{"targets": [format!("127.0.0.1:{operator_metrics_port}")]}],
    }));
    let prometheus = Prometheus::start_with_jobs(jobs).await.expect("Prometheus");
    let operator = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: "observability".to_string(),
            namespace: Some(ns_name.clone()),
            prometheus_url: Some(prometheus.url().to_string()),
            scaling_signal: Some((2, 4)),
            metrics_port: Some(operator_metrics_port),
            ..OperatorOptions::default()
        },
    )
    .await
    .expect("operator");

    let (model, tokenizer) = minilm_int8_uris().expect("the int8 MiniLM");
    let classifier =
        lexserve_e2e::classifier::direction_classifier(&dir, false).expect("classifier");
    let gguf = lexserve_testkit::locate(lexserve_testkit::SMOLLM2_GGUF).expect("SmolLM2");
    let isvcs: kube::Api<InferenceService> = kube::Api::namespaced(client.clone(), &ns_name);
    for (name, spec) in [
        (
            "embed",
            json!({
                "model": {"uri": model, "tokenizer": tokenizer, "format": "onnx", "task": "embed"},
                "runtime": {"threads": 1, "quantize": "int8"},
                "scaling": {"provider": "hpa", "minReplicas": 1, "maxReplicas": 1},
            }),
        ),
        (
            "classify",
            // Drift monitored: a baseline from its first minute, then a check every 10s (what
            // the Drift row and LexserveDriftDetected read).
            json!({
                "model": {"uri": format!("file://{}", classifier.display()), "format": "safetensors", "task": "classify"},
                "runtime": {"threads": 1},
                "monitoring": {"drift": {"baseline": {"window": "1m"}, "window": "1m",
                                         "interval": "10s", "minSamples": 20}},
            }),
        ),
        (
            // Autoscaled, but no sidecar runs for its pods: Prometheus has no load series for it
            // (what LexserveScalingSignalMissing reads).
            "unscraped",
            json!({
                "model": {"uri": "file:///models/none.onnx", "format": "onnx", "task": "embed"},
                "scaling": {"provider": "hpa", "minReplicas": 1, "maxReplicas": 2},
            }),
        ),
        (
            "chat",
            json!({
                "model": {"uri": format!("file://{}", gguf.display()), "format": "gguf", "task": "generate"},
                "runtime": {"threads": 1, "generation": {"maxConcurrentSequences": 4, "kvCacheMemory": "16Mi", "maxNewTokens": 32}},
            }),
        ),
    ] {
        create(&isvcs, &isvc(name, spec))
            .await
            .expect("InferenceService");
    }
    // A reconcile that fails for real: a quota forbids the PodDisruptionBudget of a two-replica
    // service (what LexserveReconcileErrors reads).
    cluster
        .kubectl_with_stdin(
            ["apply", "-n", &ns_name, "-f", "-"],
            Some(
                "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: no-pdbs}\nspec:\n  hard: {count/poddisruptionbudgets.policy: \"0\"}\n",
            ),
        )
        .await
        .expect("quota")
        .ok()
        .expect("quota applied");
    create(
        &isvcs,
        &isvc(
            "quota-bound",
            json!({
                "model": {"uri": "file:///models/none.onnx", "format": "onnx", "task": "embed"},
                "scaling": {"provider": "none", "minReplicas": 2},
            }),
        ),
    )
    .await
    .expect("InferenceService");

    // Sidecars for the pods, and traffic: embeddings, classifications, streamed chats, and a few
    // requests the sidecars refuse (422), as clients send them.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut all_pods = Vec::new();
    for s in &served {
        let pods = Arc::new(Pods::default());
        tokio::spawn(run_pods(
            cluster,
            ns_name.clone(),
            s.name.to_string(),
            format!("{}-sidecar", s.name),
            s.targets.clone(),
            pods.clone(),
            stop.clone(),
        ));
        all_pods.push(pods);
    }
    let on = Arc::new(AtomicBool::new(true));
    run_load(
        all_pods[0].clone(),
        3,
        "The dashboard's panels must show data on a live system.",
        on.clone(),
        stop.clone(),
        done.clone(),
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    for (pods, path, body) in [
        (
            all_pods[1].clone(),
            "/predict",
            json!({"texts": ["the service was slow and the staff rude", "a wonderful stay"]}),
        ),
        (
            all_pods[2].clone(),
            "/v1/chat/completions",
            json!({"model": "chat", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12, "stream": true}),
        ),
        (all_pods[0].clone(), "/embed", json!({"not_texts": true})),
    ] {
        tokio::spawn(send_load(
            http.clone(),
            pods,
            path,
            body,
            stop.clone(),
            done.clone(),
        ));
    }

    // Every panel returns series once the scrapes have seen the traffic (polled, bounded).
    let url = prometheus.url().to_string();
    let panels = panels();
    let outcome = wait::until(
        "every dashboard panel returning series",
        Duration::from_secs(240),
        Duration::from_secs(2),
        || async {
            let mut empty = Vec::new();
            for (title, exprs) in &panels {
                let mut any = false;
                for expr in exprs {
                    match query(&http, &url, &as_grafana_runs_it(expr, &ns_name)).await {
                        Ok(series) => any |= !series.is_empty(),
                        Err(e) => return Err(anyhow::anyhow!("{title}: {expr}: {e}")),
                    }
                }
                if !any {
                    empty.push(title.clone());
                }
            }
            Ok(if empty.is_empty() {
                Poll::Ready(())
            } else {
                Poll::pending(format!(
                    "no data yet: {empty:?} ({} requests answered)",
                    done.load(Ordering::Relaxed)
                ))
            })
        },
    )
    .await;
    outcome.unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log_tail(30)));

    // Every metric any dashboard or alert query names is exported (a typo would leave a panel or
    // an alert silently empty), and every alert expression parses.
    let mut names = BTreeSet::new();
    for (_, exprs) in &panels {
        for expr in exprs {
            names.extend(metric_names(expr));
        }
    }
    for (alert, expr, _) in alerts() {
        query(&http, &url, &expr)
            .await
            .unwrap_or_else(|e| panic!("alert {alert}: {e}"));
        names.extend(metric_names(&expr));
    }
    let mut missing = Vec::new();
    for name in &names {
        let series = query(&http, &url, &format!("count({{__name__=\"{name}\"}})"))
            .await
            .expect("query");
        if series.is_empty() {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "no series for {missing:?} (of {names:?})"
    );
    // The dashboard's variables: every namespace and InferenceService is offered.
    let offered = query(
        &http,
        &url,
        &format!(
            "count by (inference_service) (lexserve_requests_running{{namespace=\"{ns_name}\"}})"
        ),
    )
    .await
    .expect("query");
    let offered: BTreeSet<String> = offered
        .iter()
        .filter_map(|s| {
            s["metric"]["inference_service"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        offered,
        BTreeSet::from([
            "chat".to_string(),
            "classify".to_string(),
            "embed".to_string()
        ])
    );
    eprintln!(
        "{} panels with data, {} alerts parsed, {} metrics exported",
        panels.len(),
        alerts().len(),
        names.len()
    );

    stop.store(true, Ordering::Relaxed);
    on.store(false, Ordering::Relaxed);
    for pods in all_pods {
        for (_, mut sidecar) in std::mem::take(&mut *pods.sidecars.lock().unwrap()) {
            sidecar.stop();
        }
    }
    drop(prometheus);

    // The refused child shows on its InferenceService, naming the quota.
    let refused = wait_condition(&isvcs, "quota-bound", ConditionType::Degraded, "True", None)
        .await
        .expect("Degraded");
    let message = lexserve_operator::api::conditions::find_condition(
        &refused.status.expect("status").conditions,
        ConditionType::Degraded,
    )
    .map(|c| c.message.clone())
    .unwrap_or_default();
    assert!(message.contains("no-pdbs"), "{message}");

    // The replica counts come from the InferenceServices themselves: a deleted one's series go.
    let series = "lexserve_operator_inference_service_replicas{namespace=";
    let tagged = format!("{series}\"{ns_name}\",inference_service=\"quota-bound\"");
    assert!(operator.metrics().await.expect("metrics").contains(&tagged));
    isvcs
        .delete("quota-bound", &Default::default())
        .await
        .expect("delete");
    wait::until(
        "the deleted InferenceService's replica series gone",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || async {
            Ok(if operator.metrics().await?.contains(&tagged) {
                Poll::pending("still exported")
            } else {
                Poll::Ready(())
            })
        },
    )
    .await
    .expect("series removed");
}
