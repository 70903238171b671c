#!/usr/bin/env bash
# The README's test command: provisions what the tests need (idempotent, cached under
# $HOME/.cache/lexserve), checks formatting and lints, then runs every tier of tests —
# unit, component (the sidecar as a real process with real models) and cluster (a real local
# control plane). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

export LEXSERVE_CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
# Build outputs live outside the clone so that CI's fresh clones reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LEXSERVE_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }
elapsed() { printf '    (%ss)\n' "$(( SECONDS - $1 ))"; }

step "toolchain"
t=$SECONDS
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
cargo --version
elapsed $t

if [ -x e2e/cluster/setup.sh ]; then
  step "local control plane binaries (e2e/cluster/setup.sh)"
  t=$SECONDS
  # The script's last line is `export LEXSERVE_BIN_DIR=...`.
  setup_out="$(e2e/cluster/setup.sh | tee /dev/stderr | tail -n1)"
  eval "$setup_out"
  elapsed $t
fi

if [ -x inference-sidecar/scripts/setup-models.sh ]; then
  step "models and ONNX Runtime (inference-sidecar/scripts/setup-models.sh)"
  t=$SECONDS
  inference-sidecar/scripts/setup-models.sh
  elapsed $t
fi

if [ -x inference-sidecar/scripts/setup-s3-emulator.sh ]; then
  step "S3 emulator for the fetch tests (inference-sidecar/scripts/setup-s3-emulator.sh)"
  t=$SECONDS
  inference-sidecar/scripts/setup-s3-emulator.sh
  elapsed $t
fi

step "cargo fmt --check"
t=$SECONDS
cargo fmt --all -- --check
elapsed $t

step "cargo clippy --all-targets -- -D warnings"
t=$SECONDS
cargo clippy --workspace --all-targets --locked -- -D warnings
elapsed $t

step "cargo build --bins (the cluster tests run the operator and the sidecar as processes)"
t=$SECONDS
cargo build --workspace --bins --locked
elapsed $t

step "cargo test"
t=$SECONDS
cargo test --workspace --locked
elapsed $t
