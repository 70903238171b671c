#!/usr/bin/env bash
# The shadow mirror's cost to production: the same closed-loop load sent to one production
# `lexserve-sidecar serve` (int8 MiniLM) with its mirror off (mirror.yaml with no target) and on
# (every request copied to a healthy candidate: a second sidecar with the same model, compared by
# cosine), in one run, alternating off/on at each concurrency so that both see the same machine
# state. A third state, `refused`, copies every request to a candidate port nothing listens on: the
# mirror's own path (capture, queue, send) without a candidate's inference competing for this
# machine's cores. Production's p50/p99 are printed side by side, with what the mirror did
# (compared pairs, drops). Loopback only; every run is bounded in requests and seconds. See
# bench/mirror.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
THREADS="${LEXSERVE_BENCH_THREADS:-$(nproc)}"
REQUESTS="${LEXSERVE_BENCH_REQUESTS:-2000}"
SECONDS_PER_RUN="${LEXSERVE_BENCH_SECONDS:-20}"
CONCURRENCY="${LEXSERVE_BENCH_CONCURRENCY:-1 16}"
TEXTS="${LEXSERVE_BENCH_TEXTS:-short}"
OUT="${LEXSERVE_BENCH_OUT:-$ROOT/target/bench}"
PRODUCTION_PORT="${LEXSERVE_BENCH_PRODUCTION_PORT:-18590}"
CANDIDATE_PORT="${LEXSERVE_BENCH_CANDIDATE_PORT:-18591}"
REFUSED_PORT="${LEXSERVE_BENCH_REFUSED_PORT:-18592}"
BIN="${LEXSERVE_BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"

eval "$("$ROOT/inference-sidecar/scripts/setup-models.sh" | sed 's/^/export /')"
if [ -z "${LEXSERVE_BENCH_NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p lexserve-sidecar --bin lexserve-sidecar --example loadgen)
fi
mkdir -p "$OUT"
STAMP="$(date +%Y%m%d-%H%M%S)"
RESULTS="$OUT/mirror-$STAMP.jsonl"
CONFIG_DIR="$(mktemp -d)"
: >"$CONFIG_DIR/config.yaml"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$CONFIG_DIR"; }
trap cleanup EXIT

wait_for() { # URL
    for _ in $(seq 1 600); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "bench: $1 never became ready" >&2
    exit 1
}

metric() { # NAME (a whole sample name, labels included)
    curl -sf "http://127.0.0.1:$PRODUCTION_PORT/metrics" | awk -v name="$1" '$1 == name {print $2}'
}

GENERATION=0
mirror() { # off|on|refused: writes mirror.yaml (swapped in whole) and waits until production runs it
    GENERATION=$((GENERATION + 1))
    {
        echo "generation: $GENERATION"
        if [ "$1" != off ]; then
            cat <<YAML
targets:
  - shadow: bench-$1
    url: "http://$1.bench.svc:8080"
    model: minilm-shadow
    percent: 100
    sampling: {by: random, seed: 0}
    comparison: {mode: Cosine, tolerance: 0.001}
    limits: {queue: 64, concurrency: 4, timeoutMs: 10000}
YAML
        else
            echo "targets: []"
        fi
    } >"$CONFIG_DIR/.mirror.yaml.new"
    mv "$CONFIG_DIR/.mirror.yaml.new" "$CONFIG_DIR/mirror.yaml"
    for _ in $(seq 1 200); do
        [ "$(metric lexserve_mirror_config_generation)" = "$GENERATION" ] && return 0
        sleep 0.1
    done
    echo "bench: mirror generation $GENERATION never came into force" >&2
    exit 1
}

echo "== machine" >&2
lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core)' >&2 || true
echo "SIMD: $(grep -o -w -E 'sse4_2|avx|avx2|fma|avx512f|avx512bw|avx512_vnni|avx_vnni|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2

serve() { # PORT NAME LOG [ARGS...]
    local port=$1 name=$2 log=$3
    shift 3
    "$BIN/lexserve-sidecar" serve --listen "127.0.0.1:$port" \
        --model-uri "file://$MINILM_INT8_ONNX" --tokenizer "file://$MINILM_DIR/tokenizer.json" \
        --quantize int8 --model-name "$name" --threads "$THREADS" --max-batch-requests 32 \
        --max-queue-size 4096 --ort-dylib-path "$ORT_DYLIB_PATH" "$@" 2>"$log" &
    PIDS+=($!)
}
serve "$CANDIDATE_PORT" minilm-shadow "$OUT/mirror-candidate.log"
serve "$PRODUCTION_PORT" minilm "$OUT/mirror-production.log" --config "$CONFIG_DIR/config.yaml" \
    --resolve "on.bench.svc:8080=127.0.0.1:$CANDIDATE_PORT" \
    --resolve "refused.bench.svc:8080=127.0.0.1:$REFUSED_PORT"
wait_for "http://127.0.0.1:$CANDIDATE_PORT/ready"
wait_for "http://127.0.0.1:$PRODUCTION_PORT/ready"

for c in $CONCURRENCY; do
    for state in off on refused; do
        mirror "$state"
        "$BIN/examples/loadgen" --url "http://127.0.0.1:$PRODUCTION_PORT/embed" --label "mirror-$state" \
            --texts "$TEXTS" --concurrency "$c" --requests "$REQUESTS" \
            --max-seconds "$SECONDS_PER_RUN" | tee -a "$RESULTS"
    done
done
# What the mirror did over the "on" runs (its copies finish after the load: wait for the queue).
sleep 2
for shadow in bench-on bench-refused; do
    for outcome in agree disagree candidate_error production_error; do
        echo "$shadow compared $outcome: $(metric "lexserve_shadow_comparisons_total{shadow=\"$shadow\",outcome=\"$outcome\"}")"
    done
    for reason in queue_full too_large shutdown; do
        echo "$shadow dropped $reason: $(metric "lexserve_shadow_dropped_total{shadow=\"$shadow\",reason=\"$reason\"}")"
    done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["label"], r["concurrency"]): r for r in rows}
print(f"{'conc':>4} {'mirror':>8} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50 +ms':>8} {'p99 +ms':>8} {'errors':>6}")
for c in sorted({r["concurrency"] for r in rows}):
    off = by.get(("mirror-off", c))
    if not off:
        continue
    for state in ["off", "on", "refused"]:
        r = by.get((f"mirror-{state}", c))
        if not r:
            continue
        print(f"{c:>4} {state:>8} {r['throughput_rps']:>8.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['p50_ms'] - off['p50_ms']:>+8.2f} {r['p99_ms'] - off['p99_ms']:>+8.2f} "
              f"{r['errors'] + r['refused']:>6}")
PY
echo "raw results: $RESULTS" >&2
