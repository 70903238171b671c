#!/usr/bin/env bash
# The README's demo command: starts the embedded local control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok with simulated GPU nodes), installs lexserve's
# CRDs the way users do (`kubectl apply`), runs lexserve-operator against it, applies the
# examples and shows what the operator made of them (Deployments on GPU nodes, Services, HPAs,
# PDBs, status conditions), shows the apiserver rejecting invalid objects with their CEL
# messages, and stops everything on Ctrl-C.
#
#   scripts/demo.sh            run, then wait for Ctrl-C
#   scripts/demo.sh --once     run and stop at once (what the tests do)
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
[ "${1:-}" = "--once" ] && once=true

export LEXSERVE_CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LEXSERVE_CACHE/target}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building lexserve-operator and the local control plane tooling"
cargo build --locked -q -p lexserve-operator -p lexserve-e2e
operator="$CARGO_TARGET_DIR/debug/lexserve-operator"
e2e="$CARGO_TARGET_DIR/debug/lexserve-e2e"

say "CRDs generated from the API types (lexserve-operator crd)"
generated="$(mktemp -d)"
trap 'rm -rf "$generated"' EXIT
"$operator" crd --out "$generated"
if diff -r "$generated" crds >/dev/null; then
  echo "crds/ is up to date with the generator"
else
  echo "crds/ differs from the generator: run 'cargo run -p lexserve-operator -- crd'" >&2
  exit 1
fi

say "control plane binaries (cached under $LEXSERVE_CACHE)"
eval "$(e2e/cluster/setup.sh | tail -n1)"

say "starting the local cluster"
"$e2e" cluster up
kubeconfig="$LEXSERVE_CACHE/cluster/kubeconfig"
export KUBECONFIG="$kubeconfig"
operator_pid=""
stop() {
  if [ -n "$operator_pid" ]; then
    say "stopping lexserve-operator"
    kill -TERM "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  say "stopping the local cluster"
  "$e2e" cluster down || true
  rm -rf "$generated"
}
trap stop EXIT
trap 'exit 130' INT TERM

kubectl get nodes -L nvidia.com/gpu.product -o wide
say "GPU capacity of the simulated nodes"
kubectl get nodes -o custom-columns='NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu,PRODUCT:.metadata.labels.nvidia\.com/gpu\.product,TAINTS:.spec.taints[*].key'

say "installing the CRDs with kubectl apply"
kubectl apply -f crds/
kubectl wait --for condition=Established --timeout=60s -f crds/ >/dev/null
# Established comes a moment before the new kinds are in the discovery and OpenAPI documents
# kubectl reads: wait (bounded) until `explain` finds them.
for _ in $(seq 1 60); do
  kubectl explain inferenceservice.spec.scaling >/dev/null 2>&1 && break
  sleep 0.5
done
kubectl explain inferenceservice.spec.scaling

say "starting lexserve-operator (log: $LEXSERVE_CACHE/cluster/operator.log)"
metrics_api_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$operator" run --kubeconfig "$kubeconfig" --log-format text \
  --metrics-addr 127.0.0.1:0 --health-addr 127.0.0.1:0 --lease-namespace default \
  --metrics-api-addr "127.0.0.1:$metrics_api_port" --metrics-api-service lexserve-operator-metrics-api \
  --scaling-signal-interval-seconds 2 --scaling-signal-grace-seconds 5 \
  >"$LEXSERVE_CACHE/cluster/operator.log" 2>&1 &
operator_pid=$!

say "registering the operator's external metrics API (an APIService; here through an ExternalName Service to this machine)"
kubectl apply -f - <<YAML
apiVersion: v1
kind: Service
metadata: {name: lexserve-operator-metrics-api, namespace: default}
spec:
  type: ExternalName
  externalName: 127.0.0.1
  ports: [{name: https, port: $metrics_api_port, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.external.metrics.k8s.io}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  # No caBundle here: the operator generates its certificate (kept in a Secret) for this
  # Service's names and sets the caBundle itself, so the apiserver verifies it (docs/autoscaling.md).
  service: {name: lexserve-operator-metrics-api, namespace: default, port: $metrics_api_port}
YAML
kubectl wait --for=condition=Available --timeout=60s apiservice/v1beta1.external.metrics.k8s.io

say "applying the examples (and what they expect of a cluster: a PriorityClass, a volume claim)"
kubectl create namespace lexserve-demo --dry-run=client -o yaml | kubectl apply -f -
kubectl -n lexserve-demo apply -f examples/cluster/
kubectl -n lexserve-demo apply -f examples/
# A service asking for more GPUs than any node has.
kubectl -n lexserve-demo apply -f - <<'YAML'
apiVersion: lexserve.io/v1alpha1
kind: InferenceService
metadata:
  name: too-many-gpus
spec:
  model: {uri: "file:///models/big.onnx", format: onnx, task: embed}
  resources: {gpu: {count: 16}}
YAML
echo "waiting for the operator and the simulated pods..."
for _ in $(seq 1 30); do
  statuses=$(kubectl -n lexserve-demo get lisvc -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{end}')
  ready=$(tr ' ' '\n' <<<"$statuses" | grep -c '^True$' || true)
  [ "$ready" -ge 3 ] && break
  sleep 1
done

say "what the operator made of them"
kubectl -n lexserve-demo get lexserve
echo
kubectl -n lexserve-demo get deployments,services,hpa,pdb,configmaps -l app.kubernetes.io/managed-by=lexserve-operator
echo
kubectl -n lexserve-demo get pods -o wide

say "status conditions"
kubectl -n lexserve-demo get lisvc -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{range .status.conditions[*]}{"  "}{.type}={.status} {.reason}: {.message}{"\n"}{end}{end}'

say "experiments: what the Experiment controller says of the examples"
# The examples name InferenceServices this demo does not run: the controller says which, in a
# condition, instead of deploying a router for them.
for _ in $(seq 1 30); do
  observed=$(kubectl -n lexserve-demo get lexp -o jsonpath='{range .items[*]}{.status.observedGeneration}{" "}{end}')
  [ -n "${observed// /}" ] && break
  sleep 1
done
kubectl -n lexserve-demo get lexp
kubectl -n lexserve-demo get lexp -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{range .status.conditions[*]}{"  "}{.type}={.status} {.reason}: {.message}{"\n"}{end}{end}'
echo "Real sidecars behind the real router, with Prometheus and simulated users, run end to end in:"
echo "  cargo test -p lexserve-e2e --test experiment -- --nocapture"

say "shadows: what the ShadowDeployment controller says of the example"
# The example's production runs here (on simulated pods): the candidate is deployed, and
# production's ConfigMap gets the mirror target; without real sidecars and Prometheus no sidecar
# reports running it, and the shadow says so.
for _ in $(seq 1 30); do
  reason=$(kubectl -n lexserve-demo get lshadow minilm-fp32-shadow -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')
  [ "$reason" = "MirrorPending" ] && break
  sleep 1
done
kubectl -n lexserve-demo get lshadow
kubectl -n lexserve-demo get lshadow -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{range .status.conditions[*]}{"  "}{.type}={.status} {.reason}: {.message}{"\n"}{end}{end}'
echo "production's mirror configuration (ConfigMap minilm-embed-sidecar, key mirror.yaml):"
kubectl -n lexserve-demo get configmap minilm-embed-sidecar -o jsonpath='{.data.mirror\.yaml}'
echo "Real sidecars mirroring to a real candidate, with Prometheus and a verdict, run end to end in:"
echo "  cargo test -p lexserve-e2e --test shadow -- --nocapture"

say "the apiserver rejects invalid objects with the CEL rule's message"
for f in examples/invalid/*.yaml; do
  echo "--- $f"
  if kubectl -n lexserve-demo apply --dry-run=server -f "$f" 2>&1; then
    echo "unexpectedly accepted: $f" >&2
    exit 1
  fi
done

say "queue-depth autoscaling: the HPA reads lexserve_inference_load from the operator's metrics API"
kubectl get --raw /apis/external.metrics.k8s.io/v1beta1 | python3 -m json.tool
echo "The demo runs no Prometheus, so the signal is missing -- and says so instead of reading 0:"
kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/lexserve-demo/lexserve_inference_load?labelSelector=lexserve.io%2Finference-service%3Dminilm-embed" 2>&1 || true
for _ in $(seq 1 30); do
  signal=$(kubectl -n lexserve-demo get lisvc minilm-embed -o jsonpath='{.status.conditions[?(@.type=="ScalingSignalAvailable")].status}')
  [ "$signal" = "False" ] && break
  sleep 1
done
kubectl -n lexserve-demo get lisvc minilm-embed -o jsonpath='{range .status.conditions[?(@.type=="ScalingSignalAvailable")]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
echo "With Prometheus and real sidecars, the whole loop runs in: cargo test -p lexserve-e2e --test autoscaling -- --nocapture"

say "coming next: the demo installed through the Helm chart, real models answering in it"
if $once; then
  exit 0
fi
echo
echo "KUBECONFIG=$kubeconfig kubectl get lexserve -A   # in another shell"
echo "Ctrl-C stops the cluster."
while true; do sleep 3600; done
