//! The Helm chart installed the way platform teams install it, on the local control plane, with
//! the real `helm`: the operator then runs **with the chart's identity** (a process acting as the
//! chart's ServiceAccount, with the chart's environment), so a permission the chart forgot fails
//! here. An InferenceService becomes Ready; the chart's APIService becomes Available (the
//! apiserver reaches the operator and trusts the caBundle the operator set with the chart's
//! rights) and an HPA scales an InferenceService whose real sidecars are under load on the metric
//! it reads through it (from a real Prometheus); the admission policy refuses a disallowed image,
//! naming it; `helm upgrade` changes
//! what it says; `helm uninstall` leaves nothing but the CRDs; and the namespace-only mode works
//! with Roles alone, autoscaling included. Where the Prometheus Operator's CRDs exist, the chart's monitors are admitted
//! by their schema; the operator writes no field of a user's spec (GitOps sees no drift).
//!
//! A cluster of its own (this test binary's): the chart installs cluster-scoped objects.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DynamicObject, PostParams};
use lexserve_e2e::bins::bin_dir;
use lexserve_e2e::operator::OperatorProcess;
use lexserve_e2e::pod_harness::{Pods, run_load, run_pods, scrape_job};
use lexserve_e2e::prometheus::Prometheus;
use lexserve_e2e::sidecar::minilm_int8_uris;
use lexserve_e2e::wait::{self, Poll};
use lexserve_e2e::{LocalCluster, repo_root, shared_cluster};
use lexserve_operator::api::conditions::ConditionType;
use lexserve_operator::api::{InferenceService, ShadowDeployment};
use serde_json::{Value, json};

async fn helm(cluster: &LocalCluster, args: &[&str]) -> anyhow::Result<String> {
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    full.extend(["--kubeconfig".to_string(), kubeconfig]);
    let out = tokio::process::Command::new(bin_dir().join("helm"))
        .args(&full)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start_with_chart_identity(
    cluster: &LocalCluster,
    namespace: &str,
    release: &str,
) -> OperatorProcess {
    let kubeconfig = cluster
        .service_account_kubeconfig(namespace, release)
        .await
        .expect("a token of the chart's ServiceAccount");
    let env = lexserve_e2e::chart::deployed_env(
        &cluster.client().expect("client"),
        namespace,
        release,
        &format!("{release}-0"),
    )
    .await
    .expect("the chart's Deployment and its environment");
    OperatorProcess::start_as_deployed(cluster, release, &kubeconfig, &env)
        .await
        .expect("the operator starts with the chart's identity and becomes ready")
}

fn chart() -> String {
    repo_root().join("charts/lexserve").display().to_string()
}

async fn wait_available(cluster: &LocalCluster, name: &str) -> Value {
    let apiservices: Api<DynamicObject> = Api::all_with(
        cluster.client().expect("client"),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService"),
            "apiservices",
        ),
    );
    wait::until(
        "the chart's APIService Available",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            let apiservice = apiservices.get(name).await?;
            let conditions = apiservice.data["status"]["conditions"].clone();
            let available = conditions
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Available")
                .cloned();
            Ok(match available {
                Some(c) if c["status"] == "True" => Poll::Ready(apiservice.data.clone()),
                other => Poll::pending(format!("{other:?}")),
            })
        },
    )
    .await
    .expect("APIService Available")
}

/// Creates `object` until the admission policy's verdict settles (the apiserver loads a new
/// policy and its parameters asynchronously): the error message once refused.
async fn refused_message<K>(api: &Api<K>, object: &K) -> String
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait::until(
        "the admission policy refusing",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            Ok(match api.create(&PostParams::default(), object).await {
                Err(kube::Error::Api(status)) => Poll::Ready(status.message),
                Err(e) => return Err(e.into()),
                Ok(created) => {
                    let name = kube::ResourceExt::name_any(&created);
                    api.delete(&name, &Default::default()).await?;
                    Poll::pending("admitted (policy not active yet)")
                }
            })
        },
    )
    .await
    .expect("refused")
}

/// Creates `object`, which the admission policy allows, once the policy lets anything in: right
/// after an install the apiserver may see the policy before its parameters, and the policy then
/// denies every InferenceService (parameterNotFoundAction Deny: it fails closed).
async fn create_once_admitted(api: &Api<InferenceService>, object: &InferenceService) {
    wait::until(
        "the admission policy admitting an allowed InferenceService",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            Ok(match api.create(&PostParams::default(), object).await {
                Ok(_) => Poll::Ready(()),
                Err(kube::Error::Api(status)) if status.code == 403 || status.code == 422 => {
                    Poll::pending(status.message)
                }
                Err(e) => return Err(e.into()),
            })
        },
    )
    .await
    .expect("an allowed InferenceService is admitted");
}

fn with_image(name: &str, image: &str) -> InferenceService {
    let mut spec = embedder(1);
    spec["runtime"] = json!({"image": image});
    isvc(name, spec)
}

#[tokio::test]
async fn the_chart_installs_an_operator_that_works_with_its_own_identity() {
    let cluster = shared_cluster().await.expect("local cluster");
    let chart = chart();
    // The Prometheus Operator's CRDs (from its Go module): the chart then renders its monitors,
    // and the apiserver checks them against the Prometheus Operator's own schema.
    let monitoring_crds = std::fs::canonicalize(bin_dir().join("prometheus-operator-crds"))
        .expect("prometheus-operator-crds missing: run e2e/cluster/setup.sh");
    cluster
        .apply_crds(&monitoring_crds)
        .await
        .expect("the Prometheus Operator's CRDs are Established");
    // A real Prometheus with the documented scrape config (file discovery standing in for
    // Kubernetes discovery): the chart's operator reads the sidecars' load from it.
    let targets_file = cluster.log_dir().join("chart-install-targets.json");
    std::fs::write(&targets_file, "[]").expect("targets file");
    let prometheus = Prometheus::start_with_jobs(vec![scrape_job(&targets_file)])
        .await
        .expect("Prometheus");
    // The operator runs on this machine: the APIService's Service points here (the test plays the
    // network; the permissions are the chart's).
    let api_port = lexserve_e2e::sidecar::free_port().expect("port");
    let port_value = format!("metricsApi.service.port={api_port}");
    helm(
        cluster,
        &[
            "install",
            "lexserve",
            &chart,
            "--namespace",
            "lexserve-system",
            "--create-namespace",
            "--set",
            "metricsApi.service.externalName=127.0.0.1",
            "--set",
            &port_value,
            "--set",
            &format!("metricsApi.port={api_port}"),
            "--set",
            "monitoring.podMonitor.enabled=true",
            "--set",
            "monitoring.serviceMonitor.enabled=true",
            "--set",
            "monitoring.prometheusRule.enabled=true",
            "--set",
            "monitoring.dashboards.enabled=true",
            "--set",
            &format!("prometheus.url={}", prometheus.url()),
        ],
    )
    .await
    .expect("helm install (its monitors admitted by the Prometheus Operator's CRDs)");
    for monitor in [
        "podmonitor/lexserve-sidecars",
        "servicemonitor/lexserve-operator",
        "prometheusrule/lexserve-alerts",
        "configmap/lexserve-dashboards",
    ] {
        cluster
            .kubectl_ok(["get", monitor, "-n", "lexserve-system"])
            .await
            .unwrap_or_else(|e| panic!("{monitor} rendered where its CRD exists: {e:#}"));
    }
    // The CRDs came from the chart's crds/.
    cluster
        .kubectl_ok([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/inferenceservices.lexserve.io",
            "crd/experiments.lexserve.io",
            "crd/shadowdeployments.lexserve.io",
        ])
        .await
        .expect("the chart's CRDs are served");

    let operator = start_with_chart_identity(cluster, "lexserve-system", "lexserve").await;
    assert!(
        operator.metrics_api_port().is_some(),
        "the chart turns the metrics API on"
    );

    // An InferenceService becomes Ready: every child created with the chart's rights.
    let ns = cluster.namespace("chart-apps").await.expect("namespace");
    let client = cluster.client().expect("client");
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), ns.name());
    create_once_admitted(&isvcs, &isvc("embed", embedder(1))).await;
    wait_condition(&isvcs, "embed", ConditionType::Ready, "True", None)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Ready with the chart's RBAC: {e:#}\n{}",
                operator.log_tail(40)
            )
        });

    // GitOps: the operator never writes a user's spec (Argo CD and Flux would see drift): none of
    // its field-manager entries touches spec, and the spec is what was applied.
    let live = isvcs.get("embed").await.expect("get");
    for entry in live.metadata.managed_fields.iter().flatten() {
        if entry.manager.as_deref() == Some("lexserve-operator") {
            let fields = serde_json::to_string(&entry.fields_v1).expect("fields");
            assert!(
                !fields.contains("\"f:spec\""),
                "the operator owns spec fields: {fields}"
            );
        }
    }
    let live_spec = serde_json::to_value(&live.spec).expect("spec");
    let applied = embedder(1);
    for (block, fields) in applied.as_object().expect("spec object") {
        for (field, value) in fields.as_object().expect("block object") {
            assert_eq!(
                &live_spec[block][field], value,
                "spec.{block}.{field} is what was applied"
            );
        }
    }

    // The chart's APIService: reached, and trusted through the caBundle the operator set.
    let apiservice = wait_available(cluster, "v1beta1.external.metrics.k8s.io").await;
    assert!(
        apiservice["spec"]["caBundle"].is_string(),
        "the operator set the caBundle"
    );
    assert!(
        apiservice["spec"]
            .get("insecureSkipTLSVerify")
            .is_none_or(|v| *v == json!(false))
    );
    cluster
        .kubectl_ok(["get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"])
        .await
        .expect("the external metrics API answers through the apiserver");

    hpa_scales_through_the_apiservice(cluster, ns.name(), &targets_file, &operator).await;

    // The admission policy: a disallowed image is refused, naming it; the sidecar image passes.
    let message = refused_message(&isvcs, &with_image("miner", "evil.example.com/miner:1")).await;
    assert!(
        message.contains("evil.example.com/miner:1") && message.contains("allowedImagePrefixes"),
        "{message}"
    );

    // A ShadowDeployment's candidate runs pods too: the same policy, naming its field.
    let shadows: Api<ShadowDeployment> = Api::namespaced(client.clone(), ns.name());
    let mut candidate = embedder(1);
    candidate["runtime"] = json!({"image": "evil.example.com/miner:1"});
    let shadow: ShadowDeployment = serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "ShadowDeployment",
        "metadata": {"name": "miner"},
        "spec": {"production": "embed", "candidate": candidate, "comparison": {"mode": "Cosine"}},
    }))
    .expect("valid ShadowDeployment");
    let message = refused_message(&shadows, &shadow).await;
    assert!(
        message.contains("spec.candidate.runtime.image evil.example.com/miner:1"),
        "{message}"
    );
    // onPass: CreateExperiment makes an InferenceService and an Experiment: the chart's
    // identity may.
    for resource in ["inferenceservices.lexserve.io", "experiments.lexserve.io"] {
        for verb in ["create", "patch"] {
            let out = cluster
                .kubectl([
                    "auth",
                    "can-i",
                    verb,
                    resource,
                    "-n",
                    ns.name(),
                    "--as",
                    "system:serviceaccount:lexserve-system:lexserve",
                ])
                .await
                .expect("kubectl auth can-i");
            assert_eq!(out.stdout.trim(), "yes", "{verb} {resource}: {out:?}");
        }
    }

    // helm upgrade: a changed value takes effect (the registry is now allowed).
    helm(
        cluster,
        &[
            "upgrade",
            "lexserve",
            &chart,
            "--namespace",
            "lexserve-system",
            "--reuse-values",
            "--set",
            "admissionPolicy.allowedImagePrefixes={ghcr.io/lexserve/,evil.example.com/}",
        ],
    )
    .await
    .expect("helm upgrade");
    wait::until(
        "the upgraded policy admitting the registry",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            Ok(
                match isvcs
                    .create(
                        &PostParams::default(),
                        &with_image("allowed", "evil.example.com/miner:1"),
                    )
                    .await
                {
                    Ok(_) => Poll::Ready(()),
                    Err(e) => Poll::pending(e),
                },
            )
        },
    )
    .await
    .expect("admitted after the upgrade");
    // The operator's Secret survived the upgrade (Helm leaves the data it does not render).
    let secret = cluster
        .kubectl_ok([
            "get",
            "secret",
            "lexserve-metrics-api-tls",
            "-n",
            "lexserve-system",
            "-o",
            "jsonpath={.data}",
        ])
        .await
        .expect("secret");
    assert!(
        secret.contains("tls.crt") || secret.contains("ca.crt"),
        "{secret}"
    );

    // helm uninstall: nothing of the release is left but the CRDs.
    drop(operator);
    drop(ns);
    helm(
        cluster,
        &[
            "uninstall",
            "lexserve",
            "--namespace",
            "lexserve-system",
            "--wait",
        ],
    )
    .await
    .expect("helm uninstall");
    let left = cluster
        .kubectl_ok([
            "get",
            "deployments,services,serviceaccounts,secrets,configmaps,roles,rolebindings,\
             poddisruptionbudgets,clusterroles,clusterrolebindings,apiservices,\
             validatingadmissionpolicies,validatingadmissionpolicybindings",
            "--all-namespaces",
            "-l",
            "app.kubernetes.io/instance=lexserve",
            "-o",
            "name",
        ])
        .await
        .expect("list");
    assert_eq!(left.trim(), "", "left after uninstall: {left}");
    cluster
        .kubectl_ok(["get", "crd", "inferenceservices.lexserve.io"])
        .await
        .expect("the CRDs stay, as Helm does");

    // Namespace-only: Roles in one namespace, and the operator works there with them alone (and
    // the few cluster-scoped grants the metrics API needs: delegated authentication and
    // authorization, its own APIService's caBundle).
    let team = cluster.namespace("chart-team").await.expect("namespace");
    let team_api_port = lexserve_e2e::sidecar::free_port().expect("port");
    helm(
        cluster,
        &[
            "install",
            "team",
            &chart,
            "--namespace",
            "lexserve-team",
            "--create-namespace",
            "--set",
            &format!("watchNamespace={}", team.name()),
            "--set",
            "metricsApi.service.externalName=127.0.0.1",
            "--set",
            &format!("metricsApi.service.port={team_api_port}"),
            "--set",
            &format!("metricsApi.port={team_api_port}"),
            "--set",
            &format!("prometheus.url={}", prometheus.url()),
        ],
    )
    .await
    .expect("helm install, namespace-only");
    let clusterroles = cluster
        .kubectl_ok(["get", "clusterrole", "team-lexserve"])
        .await;
    assert!(clusterroles.is_err(), "no ClusterRole for the kinds");
    let operator = start_with_chart_identity(cluster, "lexserve-team", "team-lexserve").await;
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), team.name());
    create_once_admitted(&isvcs, &isvc("embed", embedder(1))).await;
    wait_condition(&isvcs, "embed", ConditionType::Ready, "True", None)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Ready with the namespace-only Roles: {e:#}\n{}",
                operator.log_tail(40)
            )
        });
    wait_available(cluster, "v1beta1.external.metrics.k8s.io").await;
    hpa_scales_through_the_apiservice(cluster, team.name(), &targets_file, &operator).await;
    drop(operator);
    drop(team);
    helm(
        cluster,
        &[
            "uninstall",
            "team",
            "--namespace",
            "lexserve-team",
            "--wait",
        ],
    )
    .await
    .expect("helm uninstall");
}

/// Autoscaling through the chart's APIService: an InferenceService on `hpa` in `ns` whose
/// sidecars really serve (one per pod, from the operator's ConfigMap) under load, scraped by the
/// Prometheus that reads `targets_file`; kube-controller-manager's HPA reads the load through the
/// chart's APIService (the operator answering with the chart's rights) and adds replicas.
async fn hpa_scales_through_the_apiservice(
    cluster: &'static LocalCluster,
    ns: &str,
    targets_file: &std::path::Path,
    operator: &OperatorProcess,
) {
    let client = cluster.client().expect("client");
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), ns);
    let (model, tokenizer) = minilm_int8_uris().expect("the int8 MiniLM");
    create_once_admitted(
        &isvcs,
        &isvc(
            "scaled",
            json!({
                "model": {"uri": model, "tokenizer": tokenizer, "format": "onnx", "task": "embed"},
                "runtime": {"threads": 1, "quantize": "int8", "batching": {"maxBatchRequests": 8, "maxQueueSize": 256}},
                "resources": {"cpu": "1", "memory": "1Gi"},
                "scaling": {"provider": "hpa", "minReplicas": 1, "maxReplicas": 3, "targetLoadPerReplica": 4},
            }),
        ),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let pods = Arc::new(Pods::default());
    let runner = tokio::spawn(run_pods(
        cluster,
        ns.to_string(),
        "scaled".to_string(),
        "scaled-sidecar".to_string(),
        targets_file.to_path_buf(),
        pods.clone(),
        stop.clone(),
    ));
    let answered = Arc::new(AtomicU64::new(0));
    run_load(
        pods.clone(),
        12,
        "Queue-depth autoscaling through the chart's own APIService.",
        Arc::new(AtomicBool::new(true)),
        stop.clone(),
        answered.clone(),
    );
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let scaled = wait::until(
        "the HPA adding replicas on the load it reads through the chart's APIService",
        Duration::from_secs(240),
        Duration::from_secs(1),
        || async {
            let hpa = hpas.get_opt("scaled").await?;
            let replicas = deployments
                .get_opt("scaled")
                .await?
                .and_then(|d| d.spec)
                .and_then(|s| s.replicas)
                .unwrap_or(0);
            let status = hpa.and_then(|h| h.status);
            let metric = status
                .as_ref()
                .and_then(|s| s.current_metrics.as_ref())
                .and_then(|m| m.iter().find_map(|m| m.external.as_ref()))
                .map(|e| (e.metric.name.clone(), e.current.clone()));
            let desired = status.map_or(0, |s| s.desired_replicas);
            Ok(if desired >= 2 && replicas >= 2 && metric.is_some() {
                Poll::Ready((desired, replicas, metric))
            } else {
                Poll::pending(format!(
                    "desired {desired}, Deployment replicas {replicas}, metric {metric:?}, {} answered",
                    answered.load(Ordering::Relaxed)
                ))
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log_tail(40)));
    eprintln!("scaled through the chart's APIService: {scaled:?}");
    assert_eq!(
        scaled.2.as_ref().map(|(name, _)| name.as_str()),
        Some("lexserve_inference_load")
    );
    stop.store(true, Ordering::Relaxed);
    runner.await.expect("pod harness");
    for (_, mut sidecar) in std::mem::take(&mut *pods.sidecars.lock().unwrap()) {
        sidecar.stop();
    }
}
