#!/usr/bin/env bash
# lexserve encoder benchmark: (a) the sidecar over HTTP, (b) a raw in-process ONNX Runtime loop at its
# best batch size, (c) a FastAPI + onnxruntime app that runs the model once per request. Same model
# (int8 MiniLM), tokenizer, pooling and thread count everywhere. Loopback only; every run is bounded in
# requests (LEXSERVE_BENCH_REQUESTS) and seconds (LEXSERVE_BENCH_SECONDS).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
THREADS="${LEXSERVE_BENCH_THREADS:-$(nproc)}"
REQUESTS="${LEXSERVE_BENCH_REQUESTS:-3000}"
SECONDS_PER_RUN="${LEXSERVE_BENCH_SECONDS:-20}"
CONCURRENCY="${LEXSERVE_BENCH_CONCURRENCY:-1 16 64}"
OUT="${LEXSERVE_BENCH_OUT:-$ROOT/target/bench}"
SIDECAR_PORT="${LEXSERVE_BENCH_SIDECAR_PORT:-18480}"
FASTAPI_PORT="${LEXSERVE_BENCH_FASTAPI_PORT:-18481}"

eval "$("$ROOT/inference-sidecar/scripts/setup-models.sh" | sed 's/^/export /')"
VENV="$("$ROOT/bench/setup-python.sh")"
TOKENIZER="$MINILM_DIR/tokenizer.json"

(cd "$ROOT" && cargo build --release -p lexserve-sidecar --bins --examples)
BIN="$ROOT/target/release"
mkdir -p "$OUT"
RESULTS="$OUT/results-$(date +%Y%m%d-%H%M%S).jsonl"

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
    for texts in short long; do
        for c in $CONCURRENCY; do
            "$BIN/examples/loadgen" --url "$2" --label "$1" --texts "$texts" --concurrency "$c" \
                --requests "$REQUESTS" --max-seconds "$SECONDS_PER_RUN" | tee -a "$RESULTS"
        done
    done
}

echo "== (a) lexserve-sidecar, onnx int8, $THREADS threads" >&2
"$BIN/lexserve-sidecar" serve --listen "127.0.0.1:$SIDECAR_PORT" \
    --model-uri "file://$MINILM_INT8_ONNX" --tokenizer "file://$TOKENIZER" --quantize int8 \
    --threads "$THREADS" --max-batch-requests 32 --max-queue-size 4096 --max-texts-per-request 64 \
    --ort-dylib-path "$ORT_DYLIB_PATH" 2>"$OUT/sidecar.log" &
PIDS+=($!)
wait_for "http://127.0.0.1:$SIDECAR_PORT/ready"
load sidecar "http://127.0.0.1:$SIDECAR_PORT/embed"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

echo "== (b) raw in-process ONNX Runtime loop" >&2
"$BIN/examples/raw_ort" --model "$MINILM_INT8_ONNX" --tokenizer "$TOKENIZER" \
    --ort-dylib "$ORT_DYLIB_PATH" --threads "$THREADS" | tee -a "$RESULTS"
echo "== (b') the same loop with the fp32 export, for int8-vs-fp32 speed" >&2
"$BIN/examples/raw_ort" --model "$MINILM_FP32_ONNX" --tokenizer "$TOKENIZER" --label raw_ort_fp32 \
    --ort-dylib "$ORT_DYLIB_PATH" --threads "$THREADS" | tee -a "$RESULTS"

echo "== (c) FastAPI + onnxruntime, one run per request" >&2
(cd "$ROOT/bench" && LEXSERVE_BENCH_MODEL="$MINILM_INT8_ONNX" LEXSERVE_BENCH_TOKENIZER="$TOKENIZER" \
    LEXSERVE_BENCH_THREADS="$THREADS" exec "$VENV/bin/uvicorn" fastapi_app:app \
    --host 127.0.0.1 --port "$FASTAPI_PORT" --workers 1 --log-level warning) 2>"$OUT/fastapi.log" &
PIDS+=($!)
wait_for "http://127.0.0.1:$FASTAPI_PORT/health"
load fastapi "http://127.0.0.1:$FASTAPI_PORT/predict"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

python3 "$ROOT/bench/summarize.py" "$RESULTS"
echo "raw results: $RESULTS" >&2
