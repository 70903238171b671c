#!/usr/bin/env bash
# Installs llama-cpp-python (which compiles llama.cpp from source) and its OpenAI-compatible server into
# a virtualenv cached outside the clone, keyed by version and CPU baseline: a second run is instant.
#
# CPU baseline: x86-64-v3 (AVX2, FMA, F16C), the same one the sidecar's benchmark build uses. llama.cpp's
# default (GGML_NATIVE) is not used: on these VMs it detects AMX/AVX-512 features the hypervisor does
# not let a process use, and the library dies with SIGILL on its first forward.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
VENV="$CACHE/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-x86-64-v3"
STAMP="$VENV/.lexserve-complete"

if [[ -f "$STAMP" ]]; then
    echo "$VENV"
    exit 0
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
CMAKE_ARGS="${CMAKE_ARGS:-$LLAMA_CMAKE_ARGS}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-binary llama-cpp-python --no-cache-dir \
    "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" >&2
touch "$STAMP"
echo "$VENV"
