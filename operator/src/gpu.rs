//! GPU capacity arithmetic: whether a surge pod fits, and the numbers an InsufficientGPU
//! condition reports. Pure; the controller gathers the inputs from Nodes and Pods.

use crate::api::inference_service::GpuSpec;

/// The extended resource a GPU spec requests.
pub fn gpu_resource_name(gpu: &GpuSpec) -> String {
    gpu.resource_name.clone()
}

/// How the Deployment rolls out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutPlan {
    /// Start new pods before stopping old ones (maxSurge 25%, maxUnavailable 0).
    Surge,
    /// Stop one old pod, then start its replacement (maxSurge 0, maxUnavailable 1): the only way
    /// forward when no node has room for one more GPU pod.
    InPlace,
}

/// GPUs of one schedulable node that matches the pods' node selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeGpus {
    pub node: String,
    /// `status.allocatable[resource]`.
    pub allocatable: u64,
    /// The sum of that resource over the limits of the node's non-terminated pods.
    pub in_use: u64,
}

impl NodeGpus {
    /// GPUs not claimed by any pod.
    pub fn free(&self) -> u64 {
        self.allocatable.saturating_sub(self.in_use)
    }
}

/// The GPU situation of the nodes an InferenceService may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuFit {
    /// GPUs one pod requests.
    pub requested: u64,
    /// The most GPUs any matching node has in all.
    pub max_allocatable: u64,
    /// The most GPUs free on any matching node.
    pub best_free: u64,
    /// The node with the most free GPUs, if any matches.
    pub best_node: Option<String>,
    /// Matching nodes.
    pub nodes: usize,
}

impl GpuFit {
    /// Whether one more pod fits on some node.
    pub fn one_more_fits(&self) -> bool {
        self.best_free >= self.requested
    }

    /// Whether a pod could ever fit, even on an empty node.
    pub fn can_ever_fit(&self) -> bool {
        self.max_allocatable >= self.requested
    }

    /// A sentence with the numbers, for conditions and events.
    pub fn describe(&self, resource: &str) -> String {
        match &self.best_node {
            None => format!(
                "each pod requests {} {resource}, but no schedulable node matching the pod's node selector offers {resource}",
                self.requested
            ),
            Some(node) => format!(
                "each pod requests {} {resource}; the largest matching node has {} allocatable; the best node {node} has {} free (of {} matching nodes)",
                self.requested, self.max_allocatable, self.best_free, self.nodes
            ),
        }
    }
}

/// Summarises the matching nodes for pods requesting `requested` GPUs.
pub fn gpu_fit(requested: u64, nodes: &[NodeGpus]) -> GpuFit {
    let best = nodes.iter().max_by_key(|n| (n.free(), n.allocatable));
    GpuFit {
        requested,
        max_allocatable: nodes.iter().map(|n| n.allocatable).max().unwrap_or(0),
        best_free: best.map(NodeGpus::free).unwrap_or(0),
        best_node: best.map(|n| n.node.clone()),
        nodes: nodes.len(),
    }
}

/// Surge when one more pod fits somewhere; otherwise replace in place.
pub fn plan_rollout(fit: Option<&GpuFit>) -> RolloutPlan {
    match fit {
        Some(fit) if !fit.one_more_fits() => RolloutPlan::InPlace,
        _ => RolloutPlan::Surge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, allocatable: u64, in_use: u64) -> NodeGpus {
        NodeGpus {
            node: name.to_string(),
            allocatable,
            in_use,
        }
    }

    #[test]
    fn surge_when_a_node_has_room() {
        let fit = gpu_fit(2, &[node("a", 8, 8), node("b", 8, 6)]);
        assert_eq!(fit.best_node.as_deref(), Some("b"));
        assert_eq!(fit.best_free, 2);
        assert!(fit.one_more_fits());
        assert_eq!(plan_rollout(Some(&fit)), RolloutPlan::Surge);
    }

    #[test]
    fn in_place_when_every_node_is_full() {
        let fit = gpu_fit(1, &[node("a", 8, 8), node("b", 8, 8)]);
        assert!(!fit.one_more_fits());
        assert!(fit.can_ever_fit());
        assert_eq!(plan_rollout(Some(&fit)), RolloutPlan::InPlace);
    }

    #[test]
    fn cpu_only_services_always_surge() {
        assert_eq!(plan_rollout(None), RolloutPlan::Surge);
    }

    #[test]
    fn more_than_any_node_has_is_reported_with_numbers() {
        let fit = gpu_fit(16, &[node("gpu-0", 8, 1), node("gpu-1", 8, 0)]);
        assert!(!fit.can_ever_fit());
        let text = fit.describe("nvidia.com/gpu");
        assert!(text.contains("requests 16 nvidia.com/gpu"), "{text}");
        assert!(text.contains("8 allocatable"), "{text}");
        assert!(text.contains("gpu-1 has 8 free"), "{text}");
    }

    #[test]
    fn no_matching_node() {
        let fit = gpu_fit(1, &[]);
        assert!(!fit.can_ever_fit());
        assert!(
            fit.describe("nvidia.com/gpu")
                .contains("no schedulable node")
        );
        assert_eq!(plan_rollout(Some(&fit)), RolloutPlan::InPlace);
    }

    #[test]
    fn overcommitted_node_counts_zero_free() {
        assert_eq!(node("a", 4, 6).free(), 0);
    }
}
