#!/usr/bin/env bash
# Installs the S3 emulator the sidecar's `fetch s3://` tests run against: moto in server mode, from
# PyPI, into a virtual environment cached outside the clone (no real S3 is reachable from CI, and moto
# speaks the real S3 wire protocol, SigV4 and ListObjectsV2 included, so the sidecar's own client is
# exercised end to end). Idempotent: a finished install leaves a stamp naming the pinned version and is
# skipped next time.
#
# Layout (override the root with LEXSERVE_CACHE, or the venv itself with LEXSERVE_S3_EMULATOR_VENV):
#   $LEXSERVE_CACHE/s3-emulator-venv/bin/moto_server
# The tests (inference-sidecar/tests/fetch_remote.rs) look for moto_server there.
set -euo pipefail

MOTO_VERSION="5.2.5"
CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
VENV="${LEXSERVE_S3_EMULATOR_VENV:-$CACHE/s3-emulator-venv}"
STAMP="$VENV/.lexserve-moto-$MOTO_VERSION"

if [[ -f "$STAMP" && -x "$VENV/bin/moto_server" ]]; then
    exit 0
fi

PYTHON="${PYTHON:-python3}"
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
"$VENV/bin/moto_server" --help >/dev/null
touch "$STAMP"
echo "setup-s3-emulator: moto $MOTO_VERSION installed in $VENV" >&2
