# syntax=docker/dockerfile:1
# thinkgate on a distroless base (glibc, CA certificates, no shell, non-root).
# With the default `tools` feature the binary also carries the simulated engine
# and the load generator (the Helm chart's `sim.enabled` runs `thinkgate sim`);
# a gateway-only image leaves them out:
#   docker build -t thinkgate .
#   docker build --build-arg FEATURES= -t thinkgate-gateway .
#   docker run --rm -p 8080:8080 -p 9090:9090 thinkgate serve --upstream http://vllm:8000
# `tests/dockerfile.rs` checks this file against the workspace.

FROM rust:1-bookworm AS build
ARG FEATURES=tools
WORKDIR /src
COPY . .
# BuildKit cache mounts keep the crates and the build between builds, so a code
# change rebuilds only the workspace (no stub step to fall out of step with it).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin thinkgate --no-default-features --features "$FEATURES" \
 && cp target/release/thinkgate /thinkgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /thinkgate /thinkgate
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/thinkgate"]
CMD ["serve", "--config", "/etc/thinkgate/thinkgate.toml"]
