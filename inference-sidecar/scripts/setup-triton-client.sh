#!/usr/bin/env bash
# Installs Triton's own HTTP client (`tritonclient[http]`, what KServe and Triton users call) from
# PyPI into a virtual environment cached outside the clone, for the test that talks to the sidecar's
# /v2 API with it (inference-sidecar/tests/triton_client.rs): the client sends BYTES tensors and asks
# for outputs in the binary tensor data extension by default, so only a real client proves the server
# speaks it. Idempotent: a finished install leaves a stamp naming the pinned version.
#
# Layout (override the root with LEXSERVE_CACHE, or the venv itself with LEXSERVE_TRITON_CLIENT_VENV):
#   $LEXSERVE_CACHE/triton-client-venv/bin/python
#   $LEXSERVE_CACHE/triton-client-venv/.lexserve-tritonclient   (the stamp: the pinned version)
set -euo pipefail

TRITONCLIENT_VERSION="2.73.0"
CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
VENV="${LEXSERVE_TRITON_CLIENT_VENV:-$CACHE/triton-client-venv}"
STAMP="$VENV/.lexserve-tritonclient"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$TRITONCLIENT_VERSION" && -x "$VENV/bin/python" ]]; then
    exit 0
fi

PYTHON="${PYTHON:-python3}"
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "tritonclient[http]==$TRITONCLIENT_VERSION" >&2
"$VENV/bin/python" -c "import tritonclient.http, numpy" >&2
echo "$TRITONCLIENT_VERSION" > "$STAMP"
echo "setup-triton-client: tritonclient $TRITONCLIENT_VERSION installed in $VENV" >&2
