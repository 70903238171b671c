//! kwok: simulated nodes and pods.
//!
//! kwok watches Nodes and Pods and moves their status along "stages". The kwok binary ships no
//! stages of its own (kwokctl writes them into its config), so this module carries the few
//! this project needs: a node becomes Ready and keeps heartbeating, a scheduled pod becomes
//! Running and Ready, a pod being deleted goes away. Nodes are made by [`node`], with the
//! annotation kwok selects on.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotation that marks a node as kwok's to manage (kwok runs with
/// `--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake`).
pub const NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// The extended resource of NVIDIA's device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The label GPU feature discovery puts on nodes with the product name.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// The taint GPU node pools commonly carry, so that only pods that tolerate it land there.
pub const GPU_TAINT: (&str, &str, &str) = ("nvidia.com/gpu", "present", "NoSchedule");

/// A pod label that keeps kwok's hands off a pod's status: a test that plays kubelet for it
/// ([`crate::kubelet`]) runs its containers and reports their states itself, which kwok's
/// "every pod is Running and Ready" stage would overwrite.
pub const TEST_KUBELET_LABEL: &str = "e2e.lexserve.io/kubelet";

/// The namespace whose pods `lexserve-e2e pods` (the demo's) runs and reports on: kwok leaves
/// the status of every pod there to it, so that a pod is Ready when its server answers, as
/// kubelet's readiness probe would have it (the operator's readiness, an experiment's switch
/// to its router and a shadow's start wait for real servers).
pub const PODS_NAMESPACE: &str = "lexserve-live";

/// kwok's `--config`: the stages, as kwok's Stage resources.
pub const STAGES: &str = r#"
# Nodes: not Ready yet -> Ready, with addresses and capacity (kept when the node has them).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lexserve-node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - type: {{ .type | Quote }}
        status: {{ .status | Quote }}
        reason: {{ .reason | Quote }}
        message: {{ .message | Quote }}
        lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
      {{ end }}
      addresses:
      {{ with NodeIP }}
      - type: InternalIP
        address: {{ . | Quote }}
      {{ end }}
      {{ with NodeName }}
      - type: Hostname
        address: {{ . | Quote }}
      {{ end }}
      {{ with NodePort }}
      daemonEndpoints:
        kubeletEndpoint:
          Port: {{ . }}
      {{ end }}
      capacity:
      {{ with .status.capacity }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: "32"
        memory: 128Gi
        pods: "110"
      {{ end }}
      allocatable:
      {{ with .status.allocatable }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: "32"
        memory: 128Gi
        pods: "110"
      {{ end }}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
        kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
        containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
        kernelVersion: {{ printf "kwok-%s" Version | Quote }}
        osImage: kwok
        machineID: ""
        systemUUID: ""
        bootID: ""
      phase: Running
---
# Nodes: Ready -> heartbeat every ~20-40 s (kwok also renews the node Leases).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lexserve-node-heartbeat
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values: ['True']
  delay:
    durationMilliseconds: 20000
    jitterDurationMilliseconds: 40000
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - type: {{ .type | Quote }}
        status: {{ .status | Quote }}
        reason: {{ .reason | Quote }}
        message: {{ .message | Quote }}
        lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
      {{ end }}
---
# Pods: scheduled and not Ready -> Running and Ready, every container running. Not pods whose
# test plays kubelet (TEST_KUBELET_LABEL), nor those of the namespace lexserve-e2e pods runs
# (PODS_NAMESPACE).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lexserve-pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.metadata.labels["e2e.lexserve.io/kubelet"]'
      operator: 'DoesNotExist'
    - key: '.metadata.namespace'
      operator: 'NotIn'
      values: ['lexserve-live']
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      startTime: {{ $now | Quote }}
      conditions:
      - type: PodReadyToStartContainers
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      - type: Initialized
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      - type: ContainersReady
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      - type: Ready
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      {{ range .spec.readinessGates }}
      - type: {{ .conditionType | Quote }}
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        restartCount: 0
        state:
          terminated:
            exitCode: 0
            reason: Completed
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
      {{ end }}
      {{ with NodeIPsWith .spec.nodeName }}
      hostIP: {{ index . 0 | Quote }}
      hostIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      {{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
---
# Pods: being deleted -> gone (there is no kubelet to confirm termination).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lexserve-pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    delete: true
"#;

/// What kind of simulated node to make.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A GPU node: `count` GPUs of `product`, tainted with [`GPU_TAINT`].
    Gpu { count: u32, product: String },
    /// A node without GPUs.
    Cpu,
}

/// A simulated node for kwok to manage: 32 CPUs, 128 GiB, 110 pods, plus GPUs if asked.
pub fn node(name: &str, kind: &NodeKind) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        (
            "node.kubernetes.io/instance-type".to_string(),
            "kwok".to_string(),
        ),
        ("type".to_string(), "kwok".to_string()),
    ]);
    let mut capacity = BTreeMap::from([
        ("cpu".to_string(), Quantity("32".into())),
        ("memory".to_string(), Quantity("128Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
        ("ephemeral-storage".to_string(), Quantity("1Ti".into())),
    ]);
    let mut taints = Vec::new();
    if let NodeKind::Gpu { count, product } = kind {
        labels.insert(GPU_PRODUCT_LABEL.to_string(), product.clone());
        labels.insert("nvidia.com/gpu.count".to_string(), count.to_string());
        labels.insert("nvidia.com/gpu.present".to_string(), "true".to_string());
        capacity.insert(GPU_RESOURCE.to_string(), Quantity(count.to_string()));
        taints.push(Taint {
            key: GPU_TAINT.0.to_string(),
            value: Some(GPU_TAINT.1.to_string()),
            effect: GPU_TAINT.2.to_string(),
            time_added: None,
        });
    }
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (NODE_ANNOTATION.0.to_string(), NODE_ANNOTATION.1.to_string()),
                // No kubelet will ever post a TTL: say so, as kwokctl does.
                ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(capacity.clone()),
            capacity: Some(capacity),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_stage_leaves_test_kubelet_pods_alone() {
        let expression = format!(".metadata.labels[\"{TEST_KUBELET_LABEL}\"]");
        assert!(STAGES.contains(&expression), "{expression}");
        let namespace = format!(
            "- key: '.metadata.namespace'\n      operator: 'NotIn'\n      values: ['{PODS_NAMESPACE}']"
        );
        assert!(STAGES.contains(&namespace), "{namespace}");
    }
}
