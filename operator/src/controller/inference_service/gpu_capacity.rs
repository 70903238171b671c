//! The GPU capacity of the nodes a pod could land on: allocatable GPUs per matching node,
//! minus what non-terminated pods there already hold. Pure: the nodes and pods come from the
//! watch caches (see `controller::cache::GpuStores`), so a GPU service's reconcile makes no
//! request however large the cluster.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::ResourceExt;

use crate::gpu::NodeGpus;

/// The nodes matching `node_selector`, schedulable, whose NoSchedule/NoExecute taints the
/// pods tolerate, with their GPU use. `pods` are the non-terminated pods (of any node).
pub fn node_gpus<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    pods: impl IntoIterator<Item = &'a Pod>,
    resource: &str,
    node_selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
) -> Vec<NodeGpus> {
    let candidates: Vec<(String, u64)> = nodes
        .into_iter()
        .filter(|node| {
            node_selector
                .iter()
                .all(|(k, v)| node.labels().get(k) == Some(v))
        })
        .filter_map(|node| {
            let spec = node.spec.clone().unwrap_or_default();
            if spec.unschedulable == Some(true)
                || spec
                    .taints
                    .iter()
                    .flatten()
                    .any(|t| !tolerated(t, tolerations))
            {
                return None;
            }
            let allocatable = node
                .status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get(resource))
                .and_then(|q| q.0.parse::<u64>().ok())
                .unwrap_or(0);
            (allocatable > 0).then(|| (node.name_any(), allocatable))
        })
        .collect();
    let mut in_use: HashMap<&str, u64> = candidates.iter().map(|(n, _)| (n.as_str(), 0)).collect();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        if let Some(total) = in_use.get_mut(node) {
            *total += pod_gpus(pod, resource);
        }
    }
    candidates
        .iter()
        .map(|(node, allocatable)| NodeGpus {
            node: node.clone(),
            allocatable: *allocatable,
            in_use: in_use.get(node.as_str()).copied().unwrap_or(0),
        })
        .collect()
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
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value, gpus: u64, taint: Option<&str>) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taint.map(|k| vec![json!({"key": k, "effect": "NoSchedule"})])},
            "status": {"allocatable": {"nvidia.com/gpu": gpus.to_string(), "cpu": "8"}}
        }))
        .expect("valid node")
    }

    fn pod(node: Option<&str>, gpus: u64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": node, "containers": [
                {"name": "a", "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}},
                {"name": "b"}
            ]}
        }))
        .expect("valid pod")
    }

    #[test]
    fn matching_tolerated_nodes_with_what_their_pods_hold() {
        let nodes = [
            node("gpu-0", json!({"gpu": "h100"}), 8, None),
            node("gpu-1", json!({"gpu": "h100"}), 8, Some("nvidia.com/gpu")),
            node("gpu-2", json!({"gpu": "a10"}), 4, None),
            node("cpu-0", json!({"gpu": "h100"}), 0, None),
        ];
        let pods = [
            pod(Some("gpu-0"), 3),
            pod(Some("gpu-0"), 2),
            pod(Some("gpu-2"), 4),
            pod(None, 8),
        ];
        let selector = BTreeMap::from([("gpu".to_string(), "h100".to_string())]);
        let found = node_gpus(&nodes, &pods, "nvidia.com/gpu", &selector, &[]);
        assert_eq!(
            found,
            vec![NodeGpus {
                node: "gpu-0".to_string(),
                allocatable: 8,
                in_use: 5
            }]
        );
        let tolerate = [toleration(Some("nvidia.com/gpu"), "Exists", None, None)];
        let found = node_gpus(&nodes, &pods, "nvidia.com/gpu", &BTreeMap::new(), &tolerate);
        let summary: Vec<_> = found.iter().map(|n| (n.node.as_str(), n.free())).collect();
        assert_eq!(summary, vec![("gpu-0", 3), ("gpu-1", 8), ("gpu-2", 0)]);
    }

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
