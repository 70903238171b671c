# lexserve-operator: a static-enough Rust binary on a distroless, non-root base.
#
#   docker build -f deploy/docker/operator.Dockerfile --build-arg TARGET_CPU=x86-64-v3 -t lexserve-operator .
#
# (No Docker engine runs on the project's build machines: e2e/tests/images.rs checks that the
# binary, paths, user and ports named here are those the workspace builds and the chart uses.)
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# The CPU baseline the binary may assume (x86-64-v3: AVX2, FMA, BMI2; x86-64 for any CPU).
ARG TARGET_CPU=x86-64-v3
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-cpu=${TARGET_CPU}" \
    cargo build --release --locked -p lexserve-operator \
 && install -D -m 0755 target/release/lexserve-operator /out/lexserve-operator

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="lexserve-operator" \
      org.opencontainers.image.description="Kubernetes operator for NLP model deployments" \
      org.opencontainers.image.source="https://github.com/lexserve/lexserve" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/lexserve-operator /usr/local/bin/lexserve-operator
# distroless's nonroot user; the chart's securityContext runs as the same uid.
USER 65532:65532
# /metrics, /healthz and /readyz, the external metrics API.
EXPOSE 8080 8081 6443
ENTRYPOINT ["/usr/local/bin/lexserve-operator"]
CMD ["run"]
