#!/usr/bin/env bash
# The README's test command: provisions what the tests need (idempotent, cached under
# $HOME/.cache/lexserve), checks formatting and lints, then runs every tier of tests —
# unit, component (the sidecar as a real process with real models) and cluster (a real local
# control plane). CI runs exactly this.
#
# One compilation serves the lints, the binaries the cluster tests run and the tests: the workspace
# crates are compiled by clippy-driver (RUSTC_WORKSPACE_WRAPPER, what `cargo clippy` uses, here in
# a full build rather than a check), so clippy's lints run while the real artefacts are produced, and
# the dependencies are compiled once with the feature set of the test build. The Go build of the
# control plane runs beside the Rust build, filling the cores that one waits on the other.
set -euo pipefail
cd "$(dirname "$0")/.."

export LEXSERVE_CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
# Build outputs live outside the clone so that CI's fresh clones reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LEXSERVE_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }
elapsed() { printf '    (%ss)\n' "$(( SECONDS - $1 ))"; }
t_all=$SECONDS

step "toolchain"
t=$SECONDS
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
cargo --version
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$clippy_driver" ] || clippy_driver="$(command -v clippy-driver)"
elapsed $t

step "cargo fmt --check"
t=$SECONDS
cargo fmt --all -- --check
elapsed $t

setup_log="$(mktemp)"
trap 'rm -f "$setup_log"' EXIT
setup_pid=""
if [ -x e2e/cluster/setup.sh ]; then
  step "local control plane binaries (e2e/cluster/setup.sh), in the background"
  e2e/cluster/setup.sh >"$setup_log" 2>&1 &
  setup_pid=$!
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

if [ -x inference-sidecar/scripts/setup-triton-client.sh ]; then
  step "Triton's HTTP client for the /v2 tests (inference-sidecar/scripts/setup-triton-client.sh)"
  t=$SECONDS
  inference-sidecar/scripts/setup-triton-client.sh
  elapsed $t
fi

# What `cargo clippy --workspace --all-targets -- -D warnings` sets, applied to the test build.
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

step "build and lint: cargo test --workspace --all-targets --no-run, clippy -D warnings on the workspace"
t=$SECONDS
cargo test --workspace --all-targets --locked --no-run
elapsed $t

if [ -n "$setup_pid" ]; then
  step "local control plane binaries: waiting for the background setup"
  t=$SECONDS
  setup_rc=0
  wait "$setup_pid" || setup_rc=$?
  cat "$setup_log" >&2
  [ "$setup_rc" = 0 ] || { echo "e2e/cluster/setup.sh failed ($setup_rc)" >&2; exit "$setup_rc"; }
  # The script's last line is `export LEXSERVE_BIN_DIR=...`.
  eval "$(tail -n1 "$setup_log")"
  elapsed $t
fi

step "cargo test"
t=$SECONDS
cargo test --workspace --locked
elapsed $t

printf '\nscripts/test.sh: done in %ss\n' "$(( SECONDS - t_all ))"
