# lexserve-sidecar: the model server (`serve`), the experiment router (`route`) and the model
# fetcher (`fetch`), with ONNX Runtime's library at a pinned, checksummed version.
#
#   docker build -f deploy/docker/sidecar.Dockerfile --build-arg TARGET_CPU=x86-64-v3 -t lexserve-sidecar .
#
# (No Docker engine runs on the project's build machines: e2e/tests/images.rs checks that the
# binary, paths, user and ports named here are those the workspace builds and the operator uses.)
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
ARG TARGET_CPU=x86-64-v3
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-cpu=${TARGET_CPU}" \
    cargo build --release --locked -p lexserve-sidecar \
 && install -D -m 0755 target/release/lexserve-sidecar /out/lexserve-sidecar

# ONNX Runtime's shared library, from the same wheel and checksum the tests use
# (inference-sidecar/scripts/setup-models.sh).
FROM python:3.11-slim-bookworm AS onnxruntime
ARG ORT_VERSION=1.31.1
ARG ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
RUN pip download --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
      --abi cp311 --platform manylinux_2_28_x86_64 -d /whl "onnxruntime==${ORT_VERSION}" \
 && echo "${ORT_WHEEL_SHA256}  /whl/onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl" | sha256sum -c - \
 && python -m zipfile -e /whl/onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl /ort \
 && install -D -m 0644 /ort/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION} /out/libonnxruntime.so.${ORT_VERSION}

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG ORT_VERSION=1.31.1
LABEL org.opencontainers.image.title="lexserve-sidecar" \
      org.opencontainers.image.description="lexserve's inference server, experiment router and model fetcher" \
      org.opencontainers.image.source="https://github.com/lexserve/lexserve" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/lexserve-sidecar /usr/local/bin/lexserve-sidecar
COPY --from=onnxruntime /out/ /usr/local/lib/onnxruntime/
ENV ORT_DYLIB_PATH=/usr/local/lib/onnxruntime/libonnxruntime.so.${ORT_VERSION}
USER 65532:65532
# The HTTP port (contract::names::http::PORT): the API, probes and /metrics.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/lexserve-sidecar"]
CMD ["serve", "--config", "/etc/lexserve/config.yaml"]
