//! Benchmark of lexserve-operator on the local control plane. Prints figures; asserts nothing.
//!
//! - create → Deployment latency (p50/p99 over `--latency-objects` InferenceServices created one
//!   after another), beside the same run's reference: kube-controller-manager's Deployment →
//!   ReplicaSet latency for those very Deployments;
//! - the time for `--objects` InferenceServices created at once to all become Ready (kwok pods);
//! - the API requests per reconcile while those objects settle: reads (GET and LIST, as the
//!   apiserver counts them for every client, on the resources a reconcile reads) per
//!   reconcile, and, where the operator counts its own (`lexserve_operator_api_requests`),
//!   its requests per reconcile by verb;
//! - the operator's peak RSS (VmHWM) over the run;
//! - write requests to the operator's resources during `--idle-seconds` with nothing changing.
//!
//! Run: `cargo run --release -p lexserve-e2e --bin lexserve-operator-bench` (see bench/README.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::request_counts::{OPERATOR_WRITTEN, counter, requests, write_requests};
use lexserve_e2e::{ClusterOptions, LocalCluster};
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "Benchmark lexserve-operator on the local control plane")]
struct Args {
    /// InferenceServices for the latency measurement.
    #[arg(long, default_value_t = 200)]
    latency_objects: usize,
    /// InferenceServices reconciled to steady state at once.
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Seconds of idleness over which write requests are counted.
    #[arg(long, default_value_t = 300)]
    idle_seconds: u64,
    /// Simulated CPU nodes (110 pods each).
    #[arg(long, default_value_t = 12)]
    cpu_nodes: u32,
}

fn isvc_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("lexserve.io", "v1alpha1", "InferenceService"),
        "inferenceservices",
    )
}

fn isvc(name: &str) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "file:///models/minilm/model.onnx", "format": "onnx", "task": "embed"},
            "resources": {"cpu": "10m", "memory": "16Mi"},
            "scaling": {"provider": "none", "minReplicas": 1}
        }
    }))?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Peak resident set size of a process, from /proc (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

async fn namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// What a reconcile of an InferenceService reads besides what it writes.
const ONLY_READ: [&str; 3] = ["scaledobjects", "pods", "nodes"];

/// First time each object of kind K was seen in `namespace`, by name.
fn first_seen<K>(client: &Client, namespace: &str) -> Arc<Mutex<HashMap<String, Instant>>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let objects = match event {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => vec![o],
                _ => continue,
            };
            let mut seen = sink.lock().await;
            for o in objects {
                seen.entry(o.name_any()).or_insert(now);
            }
        }
    });
    seen
}

#[tokio::main]
async fn main() -> Result<()> {
    lexserve_e2e::init_crypto();
    let args = Args::parse();
    println!(
        "starting the local cluster ({} CPU nodes)...",
        args.cpu_nodes
    );
    let cluster = LocalCluster::start(ClusterOptions {
        cpu_nodes: args.cpu_nodes,
        ..ClusterOptions::default()
    })
    .await?;
    cluster
        .apply_crds(&lexserve_e2e::repo_root().join("crds"))
        .await?;
    let operator = OperatorProcess::start(&cluster, OperatorOptions::default()).await?;
    let client = cluster.client()?;

    // 1. Create → Deployment latency, against Deployment → ReplicaSet by kube-controller-manager.
    namespace(&client, "bench-latency").await?;
    let deployments_seen = first_seen::<Deployment>(&client, "bench-latency");
    let replica_sets_seen = first_seen::<ReplicaSet>(&client, "bench-latency");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let isvcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "bench-latency", &isvc_resource());
    let mut created = HashMap::new();
    for i in 0..args.latency_objects {
        let name = format!("lat-{i}");
        created.insert(name.clone(), Instant::now());
        isvcs.create(&PostParams::default(), &isvc(&name)?).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (d, r) = (
            deployments_seen.lock().await.len(),
            replica_sets_seen.lock().await.len(),
        );
        if d >= args.latency_objects && r >= args.latency_objects {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {d} Deployments and {r} ReplicaSets appeared");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deployments_seen = deployments_seen.lock().await.clone();
    let replica_sets_seen = replica_sets_seen.lock().await.clone();
    let mut operator_latency: Vec<Duration> = created
        .iter()
        .filter_map(|(name, t0)| {
            deployments_seen
                .get(name)
                .map(|t| t.saturating_duration_since(*t0))
        })
        .collect();
    let mut kcm_latency: Vec<Duration> = replica_sets_seen
        .iter()
        .filter_map(|(rs, t)| {
            // A ReplicaSet is named <deployment>-<hash>.
            let deployment = rs.rsplit_once('-')?.0;
            Some(t.saturating_duration_since(*deployments_seen.get(deployment)?))
        })
        .collect();
    operator_latency.sort();
    kcm_latency.sort();

    // 2. Many objects at once to steady state (every one Ready).
    namespace(&client, "bench-scale").await?;
    let isvcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "bench-scale", &isvc_resource());
    let apiserver_before = cluster.apiserver_metrics().await?;
    let operator_before = operator.metrics().await?;
    let started = Instant::now();
    let names: Vec<String> = (0..args.objects).map(|i| format!("svc-{i}")).collect();
    for chunk in names.chunks(50) {
        let creates = chunk.iter().map(|name| {
            let isvcs = isvcs.clone();
            async move {
                isvcs
                    .create(&PostParams::default(), &isvc(name)?)
                    .await
                    .context("create")
            }
        });
        for result in futures::future::join_all(creates).await {
            result?;
        }
    }
    let created_all = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let steady = loop {
        let list = isvcs.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|o| {
                o.data["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count();
        if ready >= args.objects {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            bail!("only {ready}/{} Ready after 30 minutes", args.objects);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // Requests per reconcile while they settled.
    let apiserver_after = cluster.apiserver_metrics().await?;
    let operator_after = operator.metrics().await?;
    let reconciles = counter(
        &operator_after,
        "lexserve_operator_reconciliations_total",
        "",
    ) - counter(
        &operator_before,
        "lexserve_operator_reconciliations_total",
        "",
    );
    let read: Vec<&str> = OPERATOR_WRITTEN.iter().copied().chain(ONLY_READ).collect();
    let reads = requests(&apiserver_after, &["GET", "LIST"], &read)
        - requests(&apiserver_before, &["GET", "LIST"], &read);
    let own: Vec<(&str, f64)> = ["GET", "LIST", "APPLY", "DELETE", "POST"]
        .into_iter()
        .map(|verb| {
            let filter = format!("verb=\"{verb}\"");
            let name = "lexserve_operator_api_requests_total";
            (
                verb,
                counter(&operator_after, name, &filter) - counter(&operator_before, name, &filter),
            )
        })
        .collect();
    let counts_own = operator_after.contains("lexserve_operator_api_requests_total");

    // 3. Idle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = write_requests(&cluster.apiserver_metrics().await?, OPERATOR_WRITTEN);
    println!("idle for {} s...", args.idle_seconds);
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let after = write_requests(&cluster.apiserver_metrics().await?, OPERATOR_WRITTEN);
    let rss = peak_rss_mib(operator.pid());

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("lexserve-operator on the local control plane (kube-apiserver 1.36, kwok nodes)");
    println!("{}", lexserve_testkit::machine());
    println!(
        "{:<58} {:>10} {:>10} {:>8}",
        "create → child latency", "p50 ms", "p99 ms", "n"
    );
    println!(
        "{:<58} {:>10.1} {:>10.1} {:>8}",
        "InferenceService → Deployment (lexserve-operator)",
        ms(percentile(&operator_latency, 50.0)),
        ms(percentile(&operator_latency, 99.0)),
        operator_latency.len()
    );
    println!(
        "{:<58} {:>10.1} {:>10.1} {:>8}",
        "Deployment → ReplicaSet (kube-controller-manager, reference)",
        ms(percentile(&kcm_latency, 50.0)),
        ms(percentile(&kcm_latency, 99.0)),
        kcm_latency.len()
    );
    let ratio = |a: Duration, b: Duration| {
        if b.is_zero() {
            f64::NAN
        } else {
            a.as_secs_f64() / b.as_secs_f64()
        }
    };
    println!(
        "{:<58} {:>10.2} {:>10.2}",
        "ratio operator / kube-controller-manager",
        ratio(
            percentile(&operator_latency, 50.0),
            percentile(&kcm_latency, 50.0)
        ),
        ratio(
            percentile(&operator_latency, 99.0),
            percentile(&kcm_latency, 99.0)
        )
    );
    println!();
    println!(
        "{} InferenceServices: created in {:.1} s, all Ready after {:.1} s ({:.0} objects/s)",
        args.objects,
        created_all.as_secs_f64(),
        steady.as_secs_f64(),
        args.objects as f64 / steady.as_secs_f64()
    );
    let per = |n: f64| {
        if reconciles > 0.0 {
            n / reconciles
        } else {
            f64::NAN
        }
    };
    println!(
        "while they settled: {reconciles:.0} reconciles; GET+LIST requests on {read:?} (all clients, apiserver-counted): {reads:.0}, {:.2} per reconcile",
        per(reads)
    );
    if counts_own {
        let total: f64 = own.iter().map(|(_, n)| n).sum();
        let by_verb: Vec<String> = own
            .iter()
            .map(|(verb, n)| format!("{verb} {:.3}", per(*n)))
            .collect();
        println!(
            "the operator's own API requests per reconcile: {:.3} ({})",
            per(total),
            by_verb.join(", ")
        );
    } else {
        println!("the operator's own API requests per reconcile: not counted by this operator");
    }
    match rss {
        Some(mib) => println!("operator peak RSS: {mib:.1} MiB"),
        None => println!("operator peak RSS: unavailable"),
    }
    println!(
        "write requests to {:?} during {} idle seconds: {}",
        OPERATOR_WRITTEN,
        args.idle_seconds,
        after - before
    );
    drop(operator);
    cluster.shutdown();
    Ok(())
}
