# weir's container image. No container engine runs on the development machines: this
# file is reviewed by hand (README "Container").
#
#   docker build -t weir .
#   docker run --rm -p 8080:8080 -p 8443:8443 -p 127.0.0.1:9900:9900 --stop-timeout 45 weir
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# A stripped binary without debug info (the release profile keeps line tables for perf).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
# Dependencies first, in a layer of their own: a change to weir's sources rebuilds weir
# only. The placeholders stand in for the sources until then.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/routing.rs \
 && cargo build --release --locked --bin weir \
 && rm -rf src benches target/release/.fingerprint/weir-* target/release/deps/weir-* target/release/deps/libweir-*
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin weir

FROM debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="weir" \
      org.opencontainers.image.description="An edge gateway on Pingora: SNI TLS termination, vhost routing, weighted and conditional routes, live reload" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.documentation="/usr/share/doc/weir/README.md"
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin weir
COPY --from=build /src/target/release/weir /usr/bin/weir
COPY conf/weir.yaml /etc/weir/weir.yaml
COPY conf/gateways.d /etc/weir/gateways.d
COPY certs /etc/weir/certs
COPY README.md docs/configuration.md /usr/share/doc/weir/
# Inside a container, loopback is the container's own: the admin listener (metrics,
# /readyz, the API) listens on every address, for the engine's port mapping to decide
# who reaches it. Its API writes still need a token (admin.token_file).
# gateways.d is weir's to write (admin API); /run/weir holds the master's control socket.
RUN sed -i 's/bind: "127.0.0.1:9900"/bind: "0.0.0.0:9900"/' /etc/weir/weir.yaml \
 && mkdir -p /run/weir \
 && chown weir:weir /etc/weir/gateways.d /run/weir \
 && chmod 0750 /etc/weir/gateways.d
ENV WEIR_CONFIG=/etc/weir/weir.yaml WEIR_CONTROL_SOCKET=/run/weir/control.sock
USER weir
EXPOSE 8080 8443 9900
# /readyz through the admin listener; it fails while weir drains on stop.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/bin/weir", "healthcheck"]
# The master (PID 1) reaps its children and passes signals on; `docker stop` sends
# SIGTERM: drain 5s, then up to 30s for in-flight requests (hence --stop-timeout 45).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/weir"]
CMD ["run", "--master"]
