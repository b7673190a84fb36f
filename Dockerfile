# thinkgate: the gateway, the simulated engine and the load generator in one
# static-ish binary on a distroless base (glibc, CA certificates, no shell).
#   docker build -t thinkgate .
#   docker run --rm -p 8080:8080 -p 9090:9090 thinkgate serve --upstream http://vllm:8000

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes reuse the cached layer.
COPY Cargo.toml Cargo.lock ./
COPY asu/Cargo.toml asu/
COPY sim/Cargo.toml sim/
COPY loadgen/Cargo.toml loadgen/
COPY policies/Cargo.toml policies/
RUN for d in asu sim loadgen policies; do mkdir -p $d/src && echo '' > $d/src/lib.rs; done \
 && mkdir -p src benches && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && for b in overhead policies budgets; do echo 'fn main() {}' > benches/$b.rs; done \
 && cargo fetch --locked
COPY . .
RUN touch src/main.rs src/lib.rs asu/src/lib.rs sim/src/lib.rs loadgen/src/lib.rs policies/src/lib.rs \
 && cargo build --release --locked --bin thinkgate \
 && cp target/release/thinkgate /thinkgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /thinkgate /thinkgate
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/thinkgate"]
CMD ["serve", "--config", "/etc/thinkgate/thinkgate.toml"]
