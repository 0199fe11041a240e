# Images of the project's parts. Build from the repository root:
#   docker build --target control-plane -t pq-edge-tokens/control-plane .
#   docker build --target envoy         -t pq-edge-tokens/envoy .
#   docker build --target demo-upstream -t pq-edge-tokens/demo-upstream .
# (docker-compose.yml builds all three.) Nothing secret is baked in: each control plane
# creates its keys and admin credential in its /data volume on first start.
#
# BINARIES selects where the binaries come from: `build` (default) compiles them in the
# Rust stage below; `prebuilt` takes dist/control-plane and dist/edge_filter.wasm from
# the build context (binaries built on a Debian bookworm host, e.g. by the compose test).
ARG BINARIES=build

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip1 \
 && cargo build --release -p control-plane \
 && cargo build -p edge-filter --target wasm32-wasip1 --profile wasm-release \
 && mkdir -p /dist \
 && cp target/release/control-plane target/wasm32-wasip1/wasm-release/edge_filter.wasm /dist/

FROM scratch AS prebuilt
COPY dist/control-plane dist/edge_filter.wasm /dist/

FROM ${BINARIES} AS binaries

# The control plane: one region; data (SQLite, keys, admin.secret) in the /data volume.
# It runs as an unprivileged user (uid/gid 10001, numeric so no passwd entry is needed)
# that owns /data, mode 0700: the service refuses a data dir others can enter. A named
# volume starts as a copy of the image's /data, owner and mode included; a bind-mounted
# host dir must be made so by hand (chown 10001:10001 DIR && chmod 0700 DIR).
FROM debian:bookworm-slim AS control-plane
COPY --from=binaries /dist/control-plane /usr/local/bin/control-plane
RUN mkdir -m 0700 /data /edge && chown 10001:10001 /data /edge
USER 10001:10001
VOLUME /data
EXPOSE 8000
ENTRYPOINT ["control-plane"]
CMD ["serve", "--listen", "0.0.0.0:8000", "--data-dir", "/data"]

# Envoy 1.40 with the edge filter and its configuration.
FROM envoyproxy/envoy:v1.40-latest AS envoy
COPY --from=binaries /dist/edge_filter.wasm /etc/envoy/edge_filter.wasm
COPY envoy/compose.yaml /etc/envoy/envoy.yaml
COPY envoy/compose-entrypoint.sh /usr/local/bin/compose-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/compose-entrypoint.sh"]
CMD ["envoy", "-c", "/tmp/envoy.yaml"]

# The demo upstream: echoes the claim headers Envoy forwards.
FROM python:3.12-slim AS demo-upstream
COPY scripts/demo-upstream.py /app/demo-upstream.py
EXPOSE 8081
CMD ["python3", "/app/demo-upstream.py", "8081", "0.0.0.0"]
