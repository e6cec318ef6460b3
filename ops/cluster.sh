#!/usr/bin/env bash
# A local Lockstep cluster: 2 gateways (127.0.0.1:8081, :8082) and 3 workers (health and
# metrics on 127.0.0.1:9091-9093) over Redis and Postgres.
#
#   ops/cluster.sh up       build, start Redis/Postgres if not reachable, start the nodes
#   ops/cluster.sh status   what runs, and each node's /readyz
#   ops/cluster.sh down     stop only what `up` started (by pid)
#
# Redis (REDIS_PORT, default 6379) and Postgres (PG_PORT, default 5432) are used as found;
# when not reachable they are started here (installed from Debian's packages if missing).
# REDIS_CLUSTER=1 puts the bus on a Redis Cluster instead (sharded pub/sub, as production
# scale-out runs it): three masters on REDIS_CLUSTER_PORTS (default 7001 7002 7003), used as
# found or started and joined here. Logs and pids go to ops/run/.
# TLS=1 runs Redis (or the Redis Cluster, bus included) and Postgres TLS-only, as managed
# services are, with a local CA made here (ops/run/tls/ca.pem): Redis on 6380 (REDIS_PORT),
# Postgres on 5433 (PG_PORT), both started here; the nodes verify them against the CA.
# BIN_DIR=<dir> runs the node binaries found there instead of building them.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=ops/run
TLS=${TLS:-0}
if [ "$TLS" = 1 ]; then
  REDIS_PORT=${REDIS_PORT:-6380}
  PG_PORT=${PG_PORT:-5433}
else
  REDIS_PORT=${REDIS_PORT:-6379}
  PG_PORT=${PG_PORT:-5432}
fi
DB=${LOCKSTEP_DB:-lockstep}
REDIS_CLUSTER=${REDIS_CLUSTER:-0}
read -r -a CLUSTER_PORTS <<<"${REDIS_CLUSTER_PORTS:-7001 7002 7003}"
TLS_DIR=$PWD/$RUN/tls
BIN=${BIN_DIR:-target/release}
# How redis-server listens and how redis-cli reaches it (TLS-only under TLS=1).
redis_listen() { # port
  if [ "$TLS" = 1 ]; then
    echo --port 0 --tls-port "$1" --tls-cert-file "$TLS_DIR/server.pem" --tls-key-file "$TLS_DIR/server.key" \
      --tls-ca-cert-file "$TLS_DIR/ca.pem" --tls-auth-clients no --tls-cluster yes
  else
    echo --port "$1"
  fi
}
rcli() {
  if [ "$TLS" = 1 ]; then redis-cli --tls --cacert "$TLS_DIR/ca.pem" "$@"; else redis-cli "$@"; fi
}
# Redis drops a subscriber whose backlog passes this; the default (pubsub 32mb 8mb 60) is too
# small for a join storm in a big room (worker/src/cluster/pubsub_limit.rs).
PUBSUB_LIMIT="pubsub 256mb 64mb 60"
mkdir -p "$RUN"

make_ca() { # a local CA and a server certificate for localhost / 127.0.0.1
  [ -f "$TLS_DIR/server.pem" ] && return
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=Lockstep local CA" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$TLS_DIR/san.ext"
  openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 30 -extfile "$TLS_DIR/san.ext" -out "$TLS_DIR/server.pem" 2>/dev/null
  chmod 600 "$TLS_DIR/server.key" "$TLS_DIR/ca.key"
  echo "tls: local CA in $TLS_DIR/ca.pem"
}

pg_bin() {
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_if_missing() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ -n "$(pg_bin)" ] || missing+=(postgresql)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

start_redis() {
  if rcli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "redis: using the server on 127.0.0.1:$REDIS_PORT"
    local limit
    limit=$(rcli -p "$REDIS_PORT" config get client-output-buffer-limit 2>/dev/null | tail -n 1)
    case "$limit" in
      *"pubsub 33554432 8388608"*)
        echo "redis: note: client-output-buffer-limit is Redis' default (pubsub 32mb 8mb 60): a join storm"
        echo "       in a big room can get a gateway's subscription dropped. For load tests raise it:"
        echo "       redis-cli -p $REDIS_PORT config set client-output-buffer-limit '$PUBSUB_LIMIT'" ;;
    esac
    return
  fi
  # shellcheck disable=SC2046
  redis-server $(redis_listen "$REDIS_PORT") --bind 127.0.0.1 --save '' --appendonly no \
    --client-output-buffer-limit "$PUBSUB_LIMIT" \
    >"$RUN/redis.log" 2>&1 &
  echo $! >"$RUN/redis.pid"
  for _ in $(seq 50); do rcli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "redis: started on 127.0.0.1:$REDIS_PORT (pid $(cat "$RUN/redis.pid"))"
}

start_redis_cluster() {
  if rcli -p "${CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q cluster_state:ok; then
    echo "redis cluster: using the cluster at 127.0.0.1:${CLUSTER_PORTS[0]}"
    return
  fi
  mkdir -p "$RUN/redis-cluster"
  local port nodes=()
  for port in "${CLUSTER_PORTS[@]}"; do
    # shellcheck disable=SC2046
    redis-server $(redis_listen "$port") --bind 127.0.0.1 --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --dir "$RUN/redis-cluster" \
      --cluster-require-full-coverage no \
      --client-output-buffer-limit "$PUBSUB_LIMIT" >"$RUN/redis-$port.log" 2>&1 &
    echo $! >"$RUN/redis-$port.pid"
    nodes+=("127.0.0.1:$port")
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 50); do rcli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if ! rcli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q 'cluster_known_nodes:[2-9]'; then
    rcli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$RUN/redis-cluster.log"
  fi
  for _ in $(seq 100); do
    rcli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
  done
  echo "redis cluster: started on ${nodes[*]}"
}

start_postgres() {
  if [ "$TLS" != 1 ] && pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
    echo "postgres: using the server on 127.0.0.1:$PG_PORT"
  elif [ "$TLS" = 1 ] && [ -e "$RUN/postgres.started" ]; then
    echo "postgres: using the TLS-only server started here on 127.0.0.1:$PG_PORT"
  else
    local bin data settings=""
    bin=$(pg_bin)
    data="$PWD/$RUN/pgdata"
    [ "$TLS" = 1 ] && data="$PWD/$RUN/pgdata-tls"
    if [ ! -d "$data" ]; then
      mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$RUN" "$data"
      as_postgres "$bin/initdb" -D "$data" -A trust -U postgres >"$RUN/initdb.log" 2>&1
      if [ "$TLS" = 1 ]; then
        cp "$TLS_DIR/server.pem" "$TLS_DIR/server.key" "$data/"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$data/server.pem" "$data/server.key"
        # Local sockets for this script; TCP over TLS only.
        printf 'local all all trust\nhostssl all all 127.0.0.1/32 trust\n' >"$data/pg_hba.conf"
      fi
    fi
    [ "$TLS" = 1 ] && settings="-c ssl=on -c ssl_cert_file=$data/server.pem -c ssl_key_file=$data/server.key"
    as_postgres "$bin/pg_ctl" -D "$data" -l "$PWD/$RUN/postgres.log" \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PWD/$RUN $settings" -w start >/dev/null
    echo "$data" >"$RUN/postgres.started"
    echo "postgres: started on 127.0.0.1:$PG_PORT ($data)"
  fi
  local psql=(psql "host=127.0.0.1 port=$PG_PORT user=postgres")
  "${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
    || "${psql[@]}" -qc "CREATE DATABASE $DB"
}

start_node() { # name binary env...
  local name=$1 bin=$2
  shift 2
  env "$@" "$bin" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

up() {
  install_if_missing
  if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release --workspace --bins --locked
  fi
  local bus scheme=redis pg_params="" tls_env=()
  if [ "$TLS" = 1 ]; then
    make_ca
    scheme=rediss
    pg_params="?sslmode=require"
    tls_env=("LOCKSTEP_CLUSTER__REDIS_CA_FILE=$TLS_DIR/ca.pem"
      "LOCKSTEP_CLUSTER__POSTGRES_CA_FILE=$TLS_DIR/ca.pem")
  fi
  if [ "$REDIS_CLUSTER" = 1 ]; then
    start_redis_cluster
    local seeds=() port
    for port in "${CLUSTER_PORTS[@]}"; do seeds+=("$scheme://127.0.0.1:$port"); done
    bus="LOCKSTEP_CLUSTER__REDIS_CLUSTER_NODES=$(IFS=,; echo "${seeds[*]}")"
  else
    start_redis
    bus="LOCKSTEP_CLUSTER__REDIS_URL=$scheme://127.0.0.1:$REDIS_PORT"
  fi
  start_postgres
  [ -f "$RUN/jwt.secret" ] || head -c 48 /dev/urandom | base64 | tr -d '/+=\n' >"$RUN/jwt.secret"
  local common=(
    "$bus"
    "LOCKSTEP_CLUSTER__POSTGRES_URL=postgres://postgres@127.0.0.1:$PG_PORT/$DB$pg_params"
    "${tls_env[@]}"
    "LOCKSTEP_AUTH__JWT_SECRET=$(cat "$RUN/jwt.secret")"
  )
  for i in 1 2 3; do
    start_node "worker$i" "$BIN/lockstep-worker" "${common[@]}" \
      "LOCKSTEP_CLUSTER__NODE_ID=worker$i" "LOCKSTEP_CLUSTER__WORKER_LISTEN=127.0.0.1:909$i"
  done
  for i in 1 2; do
    start_node "gateway$i" "$BIN/lockstep-gateway" "${common[@]}" \
      "LOCKSTEP_GATEWAY__LISTEN=127.0.0.1:808$i"
  done
  sleep 2
  status
}

status() {
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    local name pid state
    name=$(basename "$f" .pid)
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then state="running (pid $pid)"; else state="not running"; fi
    printf '%-10s %s\n' "$name" "$state"
  done
  for i in 1 2; do printf 'gateway%s readyz: %s\n' "$i" "$(curl -s -m 2 "127.0.0.1:808$i/readyz" || echo unreachable)"; done
  for i in 1 2 3; do printf 'worker%s readyz: %s\n' "$i" "$(curl -s -m 2 "127.0.0.1:909$i/readyz" || echo unreachable)"; done
}

down() {
  for f in "$RUN"/gateway*.pid "$RUN"/worker*.pid "$RUN"/redis.pid "$RUN"/redis-*.pid; do
    [ -e "$f" ] || continue
    local pid
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null && echo "stopped $(basename "$f" .pid) (pid $pid)"
    rm -f "$f"
  done
  if [ -e "$RUN/postgres.started" ]; then
    local data
    data=$(cat "$RUN/postgres.started")
    [ -n "$data" ] || data="$PWD/$RUN/pgdata"
    as_postgres "$(pg_bin)/pg_ctl" -D "$data" -m fast -w stop >/dev/null && echo "stopped postgres"
    rm -f "$RUN/postgres.started"
  fi
  # A cluster's node files name ports that are free now: the next `up` forms it afresh.
  rm -rf "$RUN/redis-cluster"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: ops/cluster.sh up|down|status" >&2; exit 2 ;;
esac
