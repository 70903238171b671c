//! Running the operator the way the Helm chart deploys it, on this machine: with a token of the
//! chart's ServiceAccount (so RBAC is the chart's) and the environment of the chart's Deployment
//! (so the flags are the chart's). Only the listen addresses are the harness's: the network is
//! the machine's to play, the permissions and the configuration are the chart's.
//!
//! Both the tests (`tests/chart_install.rs`) and the demo (`lexserve-e2e operator as-deployed`)
//! start the operator through these functions.

use std::path::Path;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

/// The operator container's environment as the Deployment gives it, field references resolved
/// the way kubelet would for a pod named `pod` (the chart uses `metadata.name` and
/// `metadata.namespace` only; anything else is an error rather than a silent empty value).
pub async fn deployed_env(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    pod: &str,
) -> Result<Vec<(String, String)>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = deployments
        .get(name)
        .await
        .with_context(|| format!("the chart's Deployment {namespace}/{name}"))?;
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .with_context(|| format!("Deployment {namespace}/{name} has no container"))?;
    let mut env = Vec::new();
    for var in container.env.into_iter().flatten() {
        let value = match (var.value, var.value_from) {
            (Some(v), _) => v,
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod.to_string(),
                Some("metadata.namespace") => namespace.to_string(),
                other => bail!("unexpected valueFrom {other:?} in {}", var.name),
            },
            (None, None) => String::new(),
        };
        env.push((var.name, value));
    }
    Ok(env)
}

/// The port the Deployment gives the external metrics API (`LEXSERVE_METRICS_API_ADDR`), which
/// its Service points at; None when the API is disabled.
pub fn metrics_api_port(env: &[(String, String)]) -> Result<Option<u16>> {
    match env
        .iter()
        .find(|(k, _)| k == "LEXSERVE_METRICS_API_ADDR")
        .map(|(_, v)| v.as_str())
    {
        None | Some("") => Ok(None),
        Some(addr) => addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .map(Some)
            .with_context(|| format!("LEXSERVE_METRICS_API_ADDR {addr:?} has no port")),
    }
}

/// `lexserve-operator` arguments for a run as deployed: the kubeconfig and the loopback listen
/// addresses; everything else comes from the Deployment's environment.
pub fn as_deployed_args(
    kubeconfig: &Path,
    metrics_port: u16,
    health_port: u16,
    metrics_api_port: Option<u16>,
) -> Vec<String> {
    vec![
        "run".to_string(),
        "--kubeconfig".to_string(),
        kubeconfig.display().to_string(),
        "--metrics-addr".to_string(),
        format!("127.0.0.1:{metrics_port}"),
        "--health-addr".to_string(),
        format!("127.0.0.1:{health_port}"),
        "--metrics-api-addr".to_string(),
        metrics_api_port.map_or_else(String::new, |p| format!("127.0.0.1:{p}")),
        "--log-format".to_string(),
        "text".to_string(),
    ]
}

/// A kubeconfig acting as `system:serviceaccount:<namespace>:<name>` with `token`, otherwise the
/// admin kubeconfig `admin` (same cluster, same CA).
pub fn token_kubeconfig(admin: &str, namespace: &str, name: &str, token: &str) -> Result<String> {
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(admin).context("parsing the admin kubeconfig")?;
    let user = format!("system:serviceaccount:{namespace}:{name}");
    config["users"] = serde_yaml::to_value(vec![serde_json::json!({
        "name": user,
        "user": {"token": token.trim()},
    })])?;
    config["contexts"][0]["context"]["user"] = serde_yaml::Value::from(user);
    Ok(serde_yaml::to_string(&config)?)
}
