#!/usr/bin/env bash
# The experiment router's cost: the same closed-loop load sent straight to a sidecar and through
# `lexserve-sidecar route` in front of it, in one run, alternating at each concurrency so that both
# see the same machine state. The router is keyed by header (every request hashed and assigned,
# between two variants that are the same sidecar), so its whole request path is measured.
# Loopback only; every run is bounded in requests and seconds. See bench/route.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
THREADS="${LEXSERVE_BENCH_THREADS:-$(nproc)}"
REQUESTS="${LEXSERVE_BENCH_REQUESTS:-3000}"
SECONDS_PER_RUN="${LEXSERVE_BENCH_SECONDS:-20}"
CONCURRENCY="${LEXSERVE_BENCH_CONCURRENCY:-1 16 64}"
TEXTS="${LEXSERVE_BENCH_TEXTS:-short}"
OUT="${LEXSERVE_BENCH_OUT:-$ROOT/target/bench}"
SIDECAR_PORT="${LEXSERVE_BENCH_SIDECAR_PORT:-18490}"
ROUTER_PORT="${LEXSERVE_BENCH_ROUTER_PORT:-18491}"
BIN="${LEXSERVE_BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"

eval "$("$ROOT/inference-sidecar/scripts/setup-models.sh" | sed 's/^/export /')"
if [ -z "${LEXSERVE_BENCH_NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p lexserve-sidecar --bin lexserve-sidecar --example loadgen)
fi
mkdir -p "$OUT"
STAMP="$(date +%Y%m%d-%H%M%S)"
RESULTS="$OUT/route-$STAMP.jsonl"
CONFIG_DIR="$(mktemp -d)"

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

echo "== machine" >&2
lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core)' >&2 || true
echo "SIMD: $(grep -m1 -o -w -E 'sse4_2|avx|avx2|fma|avx512f|avx512bw|avx512_vnni|avx_vnni|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2

"$BIN/lexserve-sidecar" serve --listen "127.0.0.1:$SIDECAR_PORT" \
    --model-uri "file://$MINILM_INT8_ONNX" --tokenizer "file://$MINILM_DIR/tokenizer.json" \
    --quantize int8 --model-name sentiment --threads "$THREADS" --max-batch-requests 32 \
    --max-queue-size 4096 --ort-dylib-path "$ORT_DYLIB_PATH" 2>"$OUT/route-sidecar.log" &
PIDS+=($!)

# Two variants, both this sidecar (as two Services would be), half the buckets each.
cat >"$CONFIG_DIR/router.yaml" <<YAML
experiment: bench
generation: 1
model: sentiment
assignment: {by: header, key: x-user, seed: 7}
variants:
  - {name: a, url: "http://a.bench.svc:8080", model: sentiment, weight: 1}
  - {name: b, url: "http://b.bench.svc:8080", model: sentiment, weight: 1}
buckets:
  owners:
    - {variant: a, ranges: [[0, 5000]]}
    - {variant: b, ranges: [[5000, 10000]]}
outcomes: [converted]
YAML
"$BIN/lexserve-sidecar" route --listen "127.0.0.1:$ROUTER_PORT" --config "$CONFIG_DIR/router.yaml" \
    --resolve "a.bench.svc:8080=127.0.0.1:$SIDECAR_PORT" \
    --resolve "b.bench.svc:8080=127.0.0.1:$SIDECAR_PORT" 2>"$OUT/route-router.log" &
PIDS+=($!)
wait_for "http://127.0.0.1:$SIDECAR_PORT/ready"
wait_for "http://127.0.0.1:$ROUTER_PORT/ready"

for c in $CONCURRENCY; do
    for target in direct router; do
        if [ "$target" = direct ]; then port=$SIDECAR_PORT; else port=$ROUTER_PORT; fi
        "$BIN/examples/loadgen" --url "http://127.0.0.1:$port/embed" --label "$target" \
            --texts "$TEXTS" --concurrency "$c" --requests "$REQUESTS" \
            --max-seconds "$SECONDS_PER_RUN" --key-header x-user | tee -a "$RESULTS"
    done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["label"], r["concurrency"]): r for r in rows}
print(f"{'conc':>4} {'direct rps':>11} {'router rps':>11} {'ratio':>6} {'p50 direct':>11} {'p50 +ms':>8} {'p99 direct':>11} {'p99 +ms':>8} {'errors':>6}")
for c in sorted({r["concurrency"] for r in rows}):
    d, r = by.get(("direct", c)), by.get(("router", c))
    if not d or not r:
        continue
    print(f"{c:>4} {d['throughput_rps']:>11.1f} {r['throughput_rps']:>11.1f} "
          f"{r['throughput_rps'] / d['throughput_rps']:>6.3f} {d['p50_ms']:>11.2f} "
          f"{r['p50_ms'] - d['p50_ms']:>+8.2f} {d['p99_ms']:>11.2f} {r['p99_ms'] - d['p99_ms']:>+8.2f} "
          f"{d['errors'] + d['refused'] + r['errors'] + r['refused']:>6}")
PY
echo "raw results: $RESULTS" >&2
