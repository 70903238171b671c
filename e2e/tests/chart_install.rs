//! The Helm chart installed the way platform teams install it, on the local control plane, with
//! the real `helm`: the operator then runs **with the chart's identity** (a process acting as the
//! chart's ServiceAccount, with the chart's environment), so a permission the chart forgot fails
//! here. An InferenceService becomes Ready; the chart's APIService becomes Available (the
//! apiserver reaches the operator and trusts the caBundle the operator set with the chart's
//! rights); the admission policy refuses a disallowed image, naming it; `helm upgrade` changes
//! what it says; `helm uninstall` leaves nothing but the CRDs; and the namespace-only mode works
//! with Roles alone. Where the Prometheus Operator's CRDs exist, the chart's monitors are admitted
//! by their schema; the operator writes no field of a user's spec (GitOps sees no drift).
//!
//! A cluster of its own (this test binary's): the chart installs cluster-scoped objects.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, PostParams};
use lexserve_e2e::bins::bin_dir;
use lexserve_e2e::operator::OperatorProcess;
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

/// The operator container's environment as the Deployment gives it, field references resolved
/// the way kubelet would for a pod named `pod`.
async fn deployed_env(
    cluster: &LocalCluster,
    namespace: &str,
    name: &str,
    pod: &str,
) -> Vec<(String, String)> {
    let deployments: Api<Deployment> =
        Api::namespaced(cluster.client().expect("client"), namespace);
    let deployment = deployments.get(name).await.expect("the chart's Deployment");
    let container = &deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
        .containers[0];
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => pod.to_string(),
                        Some("metadata.namespace") => namespace.to_string(),
                        other => panic!("unexpected valueFrom {other:?} in {}", var.name),
                    }
                }
                (None, None) => String::new(),
            };
            (var.name.clone(), value)
        })
        .collect()
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
    let env = deployed_env(cluster, namespace, release, &format!("{release}-0")).await;
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
        ],
    )
    .await
    .expect("helm install (its monitors admitted by the Prometheus Operator's CRDs)");
    for monitor in [
        "podmonitor/lexserve-sidecars",
        "servicemonitor/lexserve-operator",
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

    // Namespace-only: Roles in one namespace, and the operator works there with them alone.
    let team = cluster.namespace("chart-team").await.expect("namespace");
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
            "metricsApi.enabled=false",
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
