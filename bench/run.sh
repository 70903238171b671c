#!/usr/bin/env bash
# lexserve encoder benchmark: (a) the sidecar over HTTP, (b) a raw in-process ONNX Runtime loop at its
# best batch size, (c) a FastAPI + onnxruntime app that runs the model once per request. Same model
# (int8 MiniLM), tokenizer, pooling and thread count everywhere. Loopback only; every run is bounded in
# requests (LEXSERVE_BENCH_REQUESTS) and seconds (LEXSERVE_BENCH_SECONDS).
#
# Built like the generation benchmark: release, RUSTFLAGS="-C target-cpu=x86-64-v3", into its own target
# directory ($LEXSERVE_CACHE/target-bench-x86-64-v3) so the test build's cache is not invalidated.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
THREADS="${LEXSERVE_BENCH_THREADS:-$(nproc)}"
REQUESTS="${LEXSERVE_BENCH_REQUESTS:-3000}"
SECONDS_PER_RUN="${LEXSERVE_BENCH_SECONDS:-20}"
CONCURRENCY="${LEXSERVE_BENCH_CONCURRENCY:-1 16 64}"
TEXTS="${LEXSERVE_BENCH_TEXTS:-short long mixed}"
SERVERS="${LEXSERVE_BENCH_SERVERS:-sidecar fastapi}"
OUT="${LEXSERVE_BENCH_OUT:-$ROOT/target/bench}"
CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
TARGET="$CACHE/target-bench-x86-64-v3"
SIDECAR_PORT="${LEXSERVE_BENCH_SIDECAR_PORT:-18480}"
FASTAPI_PORT="${LEXSERVE_BENCH_FASTAPI_PORT:-18481}"

eval "$("$ROOT/inference-sidecar/scripts/setup-models.sh" | sed 's/^/export /')"
VENV="$("$ROOT/bench/setup-python.sh")"
TOKENIZER="$MINILM_DIR/tokenizer.json"

# LEXSERVE_BENCH_BIN: binaries built already (lexserve-sidecar, examples/loadgen, examples/raw_ort), e.g.
# copied out of the shared target directory, which other worktrees' builds overwrite.
if [[ -n "${LEXSERVE_BENCH_BIN:-}" ]]; then
    BIN="$LEXSERVE_BENCH_BIN"
else
    (cd "$ROOT" && RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR="$TARGET" \
        cargo build --release --quiet -p lexserve-sidecar --bins --examples)
    BIN="$TARGET/release"
fi
# Another sidecar binary (an older build, for before/after figures) against the same load and baselines.
SIDECAR="${LEXSERVE_BENCH_SIDECAR:-$BIN/lexserve-sidecar}"
mkdir -p "$OUT"
RESULTS="$OUT/results-$(date +%Y%m%d-%H%M%S).jsonl"

# The machine, with every figure: the int8 kernels ONNX Runtime picks depend on these flags.
{
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) CPUs), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "simd: $(grep -o -w -E 'avx2|fma|avx512f|avx512bw|avx512_vnni|avx_vnni|avx512_bf16|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "build: release, RUSTFLAGS=-C target-cpu=x86-64-v3; sidecar: $SIDECAR"
    echo "threads $THREADS, ${SECONDS_PER_RUN}s per cell, texts: $TEXTS"
} | tee "$RESULTS.machine" >&2

# The sidecar gets a model folder holding both forms (int8 served, as `quantize: int8` asks), so it
# can time the fp32 form against the int8 one at start-up and say which runs faster on this CPU.
MODEL_DIR="$OUT/minilm-onnx"
mkdir -p "$MODEL_DIR"
ln -sf "$MINILM_INT8_ONNX" "$MODEL_DIR/model_int8.onnx"
ln -sf "$MINILM_FP32_ONNX" "$MODEL_DIR/model.onnx"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_for() { # URL
    for _ in $(seq 1 600); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "bench: $1 never became ready" >&2
    exit 1
}

load() { # LABEL URL
    for texts in $TEXTS; do
        for c in $CONCURRENCY; do
            "$BIN/examples/loadgen" --url "$2" --label "$1" --texts "$texts" --concurrency "$c" \
                --requests "$REQUESTS" --max-seconds "$SECONDS_PER_RUN" | tee -a "$RESULTS"
        done
    done
}

if [[ " $SERVERS " == *" sidecar "* ]]; then
echo "== (a) lexserve-sidecar, onnx int8, $THREADS threads" >&2
"$SIDECAR" serve --listen "127.0.0.1:$SIDECAR_PORT" \
    --model-uri "file://$MODEL_DIR" --model-format onnx --tokenizer "file://$TOKENIZER" --quantize int8 \
    --threads "$THREADS" --max-batch-requests 32 --max-queue-size 4096 --max-texts-per-request 64 \
    --ort-dylib-path "$ORT_DYLIB_PATH" 2>"$OUT/sidecar.log" &
PIDS+=($!)
wait_for "http://127.0.0.1:$SIDECAR_PORT/ready"
grep -h -E 'variant|efficient batch' "$OUT/sidecar.log" >&2 || true
load sidecar "http://127.0.0.1:$SIDECAR_PORT/embed"
curl -sf "http://127.0.0.1:$SIDECAR_PORT/metrics" >"$OUT/sidecar-metrics.txt" || true
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
fi

echo "== (b) raw in-process ONNX Runtime loop" >&2
"$BIN/examples/raw_ort" --model "$MINILM_INT8_ONNX" --tokenizer "$TOKENIZER" \
    --ort-dylib "$ORT_DYLIB_PATH" --threads "$THREADS" | tee -a "$RESULTS"
echo "== (b') the same loop with the fp32 export, for int8-vs-fp32 speed" >&2
"$BIN/examples/raw_ort" --model "$MINILM_FP32_ONNX" --tokenizer "$TOKENIZER" --label raw_ort_fp32 \
    --ort-dylib "$ORT_DYLIB_PATH" --threads "$THREADS" | tee -a "$RESULTS"

if [[ " $SERVERS " == *" fastapi "* ]]; then
echo "== (c) FastAPI + onnxruntime, one run per request" >&2
(cd "$ROOT/bench" && LEXSERVE_BENCH_MODEL="$MINILM_INT8_ONNX" LEXSERVE_BENCH_TOKENIZER="$TOKENIZER" \
    LEXSERVE_BENCH_THREADS="$THREADS" exec "$VENV/bin/uvicorn" fastapi_app:app \
    --host 127.0.0.1 --port "$FASTAPI_PORT" --workers 1 --log-level warning) 2>"$OUT/fastapi.log" &
PIDS+=($!)
wait_for "http://127.0.0.1:$FASTAPI_PORT/health"
load fastapi "http://127.0.0.1:$FASTAPI_PORT/predict"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
fi

cat "$RESULTS.machine"
python3 "$ROOT/bench/summarize.py" "$RESULTS"
echo "raw results: $RESULTS" >&2
