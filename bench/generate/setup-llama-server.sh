#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (continuous batching: `--parallel N`, `--cont-batching`) from the
# llama.cpp sources vendored in the llama-cpp-python sdist, cached outside the clone and keyed by version,
# sdist checksum and CPU baseline: a second run is instant. Prints the path of the binary.
#
# CPU baseline: x86-64-v3 (AVX2, FMA, F16C), the same one the sidecar's benchmark build uses. llama.cpp's
# default (GGML_NATIVE) is not used: on these VMs it detects AMX/AVX-512 features the hypervisor does
# not let a process use, and the library dies with SIGILL on its first forward.
#
# Everything is built offline from the sdist: no web UI download (LLAMA_USE_PREBUILT_UI=OFF), no curl,
# no OpenSSL.
set -euo pipefail

VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE="${LEXSERVE_CACHE:-$HOME/.cache/lexserve}"
PREFIX="$CACHE/llama-server-$VERSION-${SHA256:0:12}-x86-64-v3"
BIN="$PREFIX/bin/llama-server"
if [[ -x "$BIN" && -f "$PREFIX/.lexserve-complete" ]]; then
    echo "$BIN"
    exit 0
fi

SDIST_DIR="$CACHE/downloads"
SDIST="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
mkdir -p "$SDIST_DIR"
if [[ ! -f "$SDIST" ]] || ! echo "$SHA256  $SDIST" | sha256sum -c --status; then
    rm -f "$SDIST"
    echo "downloading the llama-cpp-python $VERSION sdist ..." >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        --no-build-isolation "llama-cpp-python==$VERSION" -d "$SDIST_DIR" >&2 ||
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
            "llama-cpp-python==$VERSION" -d "$SDIST_DIR" >&2
    echo "$SHA256  $SDIST" | sha256sum -c --status || {
        echo "checksum mismatch for $SDIST" >&2
        exit 1
    }
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
echo "building llama-server from $SRC (x86-64-v3; about 10-20 minutes on 2 cores) ..." >&2
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
cmake -S "$SRC" -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >"$WORK/cmake.log" 2>&1 || {
    tail -40 "$WORK/cmake.log" >&2
    exit 1
}
cmake --build "$WORK/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    >"$WORK/build.log" 2>&1 || {
    tail -40 "$WORK/build.log" >&2
    exit 1
}
rm -rf "$PREFIX"
mkdir -p "$PREFIX/bin"
cp "$WORK/build/bin/llama-server" "$BIN"
touch "$PREFIX/.lexserve-complete"
echo "$BIN"
