# Multi-stage build of weir. (No Docker engine exists on the development machines, so
# this file is kept simple and reviewed by hand; see README "Container".)
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin weir

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin weir
COPY --from=build /src/target/release/weir /usr/local/bin/weir
COPY conf /etc/weir
COPY certs /etc/weir/certs
# Config and certificates come from the operator: mount over these.
VOLUME ["/etc/weir", "/etc/weir/certs"]
USER weir
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/weir"]
CMD ["run", "-c", "/etc/weir/weir.yaml"]
