#!/usr/bin/env bash
# Creates (once) the virtualenv the FastAPI baseline runs in, outside the clone:
# $HOME/.cache/lexserve/bench-venv (override with LEXSERVE_BENCH_VENV). Versions are pinned so runs
# compare like with like; onnxruntime is the same release the sidecar loads.
set -euo pipefail
VENV="${LEXSERVE_BENCH_VENV:-${LEXSERVE_CACHE:-$HOME/.cache/lexserve}/bench-venv}"
STAMP="$VENV/.lexserve-bench-1"
if [[ -f "$STAMP" ]]; then
    echo "$VENV"
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "onnxruntime==1.31.1" "tokenizers==0.22.1" "numpy>=2,<3" "fastapi==0.121.1" "uvicorn==0.38.0" >&2
touch "$STAMP"
echo "$VENV"
