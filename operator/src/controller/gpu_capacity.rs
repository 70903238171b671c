//! Reads the GPU capacity of the nodes a pod could land on: allocatable GPUs per matching node,
//! minus what non-terminated pods there already hold.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::Error;
use crate::gpu::NodeGpus;

/// The nodes matching `node_selector`, schedulable, whose NoSchedule/NoExecute taints the
/// pods tolerate, with their GPU use.
pub async fn node_gpus(
    client: &Client,
    resource: &str,
    node_selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
) -> Result<Vec<NodeGpus>, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let selector = node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = nodes
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list nodes"))?;
    let pods: Api<Pod> = Api::all(client.clone());
    let mut out = Vec::new();
    for node in list.items {
        let spec = node.spec.clone().unwrap_or_default();
        if spec.unschedulable == Some(true) {
            continue;
        }
        if spec
            .taints
            .iter()
            .flatten()
            .any(|t| !tolerated(t, tolerations))
        {
            continue;
        }
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(resource))
            .and_then(|q| q.0.parse::<u64>().ok())
            .unwrap_or(0);
        if allocatable == 0 {
            continue;
        }
        let name = node.name_any();
        let on_node = pods
            .list(&ListParams::default().fields(&format!(
                "spec.nodeName={name},status.phase!=Succeeded,status.phase!=Failed"
            )))
            .await
            .map_err(Error::kube("list pods"))?;
        let in_use = on_node.items.iter().map(|p| pod_gpus(p, resource)).sum();
        out.push(NodeGpus {
            node: name,
            allocatable,
            in_use,
        });
    }
    Ok(out)
}

/// GPUs a pod holds: the sum over its containers' limits (extended resources are requested
/// through limits).
fn pod_gpus(pod: &Pod, resource: &str) -> u64 {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.resources.as_ref()?.limits.as_ref()?.get(resource))
        .filter_map(|q| q.0.parse::<u64>().ok())
        .sum()
}

/// Whether a toleration lets a pod onto a node with this taint. PreferNoSchedule never blocks.
fn tolerated(taint: &Taint, tolerations: &[Toleration]) -> bool {
    if taint.effect == "PreferNoSchedule" {
        return true;
    }
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(key) => key == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => {
                t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
            }
        };
        effect_ok && key_ok && value_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.to_string(),
            value: value.map(str::to_string),
            effect: effect.to_string(),
            ..Default::default()
        }
    }

    fn toleration(
        key: Option<&str>,
        operator: &str,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(str::to_string),
            operator: Some(operator.to_string()),
            value: value.map(str::to_string),
            effect: effect.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn gpu_taint_is_tolerated_by_exists() {
        let gpu = taint("nvidia.com/gpu", Some("present"), "NoSchedule");
        assert!(tolerated(
            &gpu,
            &[toleration(
                Some("nvidia.com/gpu"),
                "Exists",
                None,
                Some("NoSchedule")
            )]
        ));
        assert!(!tolerated(&gpu, &[]));
        assert!(!tolerated(
            &gpu,
            &[toleration(Some("other"), "Exists", None, None)]
        ));
    }

    #[test]
    fn equal_needs_the_value_and_empty_key_exists_tolerates_all() {
        let t = taint("dedicated", Some("ml"), "NoExecute");
        assert!(tolerated(
            &t,
            &[toleration(Some("dedicated"), "Equal", Some("ml"), None)]
        ));
        assert!(!tolerated(
            &t,
            &[toleration(Some("dedicated"), "Equal", Some("web"), None)]
        ));
        assert!(tolerated(&t, &[toleration(None, "Exists", None, None)]));
        assert!(tolerated(&taint("x", None, "PreferNoSchedule"), &[]));
    }
}
