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
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=ops/run
REDIS_PORT=${REDIS_PORT:-6379}
PG_PORT=${PG_PORT:-5432}
DB=${LOCKSTEP_DB:-lockstep}
REDIS_CLUSTER=${REDIS_CLUSTER:-0}
read -r -a CLUSTER_PORTS <<<"${REDIS_CLUSTER_PORTS:-7001 7002 7003}"
# Redis drops a subscriber whose backlog passes this; the default (pubsub 32mb 8mb 60) is too
# small for a join storm in a big room (worker/src/cluster/pubsub_limit.rs).
PUBSUB_LIMIT="pubsub 256mb 64mb 60"
mkdir -p "$RUN"

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
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "redis: using the server on 127.0.0.1:$REDIS_PORT"
    local limit
    limit=$(redis-cli -p "$REDIS_PORT" config get client-output-buffer-limit 2>/dev/null | tail -n 1)
    case "$limit" in
      *"pubsub 33554432 8388608"*)
        echo "redis: note: client-output-buffer-limit is Redis' default (pubsub 32mb 8mb 60): a join storm"
        echo "       in a big room can get a gateway's subscription dropped. For load tests raise it:"
        echo "       redis-cli -p $REDIS_PORT config set client-output-buffer-limit '$PUBSUB_LIMIT'" ;;
    esac
    return
  fi
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --client-output-buffer-limit "$PUBSUB_LIMIT" \
    >"$RUN/redis.log" 2>&1 &
  echo $! >"$RUN/redis.pid"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "redis: started on 127.0.0.1:$REDIS_PORT (pid $(cat "$RUN/redis.pid"))"
}

start_redis_cluster() {
  if redis-cli -p "${CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q cluster_state:ok; then
    echo "redis cluster: using the cluster at 127.0.0.1:${CLUSTER_PORTS[0]}"
    return
  fi
  mkdir -p "$RUN/redis-cluster"
  local port nodes=()
  for port in "${CLUSTER_PORTS[@]}"; do
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --dir "$RUN/redis-cluster" \
      --client-output-buffer-limit "$PUBSUB_LIMIT" >"$RUN/redis-$port.log" 2>&1 &
    echo $! >"$RUN/redis-$port.pid"
    nodes+=("127.0.0.1:$port")
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if ! redis-cli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q 'cluster_known_nodes:[2-9]'; then
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$RUN/redis-cluster.log"
  fi
  for _ in $(seq 100); do
    redis-cli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
  done
  echo "redis cluster: started on ${nodes[*]}"
}

start_postgres() {
  if pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
    echo "postgres: using the server on 127.0.0.1:$PG_PORT"
  else
    local bin data
    bin=$(pg_bin)
    data="$PWD/$RUN/pgdata"
    if [ ! -d "$data" ]; then
      mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$RUN" "$data"
      as_postgres "$bin/initdb" -D "$data" -A trust -U postgres >"$RUN/initdb.log" 2>&1
    fi
    as_postgres "$bin/pg_ctl" -D "$data" -l "$PWD/$RUN/postgres.log" \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PWD/$RUN" -w start >/dev/null
    touch "$RUN/postgres.started"
    echo "postgres: started on 127.0.0.1:$PG_PORT ($data)"
  fi
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
}

start_node() { # name binary env...
  local name=$1 bin=$2
  shift 2
  env "$@" "$bin" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

up() {
  install_if_missing
  cargo build --release --workspace --bins --locked
  local bus
  if [ "$REDIS_CLUSTER" = 1 ]; then
    start_redis_cluster
    local seeds=() port
    for port in "${CLUSTER_PORTS[@]}"; do seeds+=("redis://127.0.0.1:$port"); done
    bus="LOCKSTEP_CLUSTER__REDIS_CLUSTER_NODES=$(IFS=,; echo "${seeds[*]}")"
  else
    start_redis
    bus="LOCKSTEP_CLUSTER__REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
  fi
  start_postgres
  [ -f "$RUN/jwt.secret" ] || head -c 48 /dev/urandom | base64 | tr -d '/+=\n' >"$RUN/jwt.secret"
  local common=(
    "$bus"
    "LOCKSTEP_CLUSTER__POSTGRES_URL=postgres://postgres@127.0.0.1:$PG_PORT/$DB"
    "LOCKSTEP_AUTH__JWT_SECRET=$(cat "$RUN/jwt.secret")"
  )
  for i in 1 2 3; do
    start_node "worker$i" target/release/lockstep-worker "${common[@]}" \
      "LOCKSTEP_CLUSTER__NODE_ID=worker$i" "LOCKSTEP_CLUSTER__WORKER_LISTEN=127.0.0.1:909$i"
  done
  for i in 1 2; do
    start_node "gateway$i" target/release/lockstep-gateway "${common[@]}" \
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
    as_postgres "$(pg_bin)/pg_ctl" -D "$PWD/$RUN/pgdata" -m fast -w stop >/dev/null && echo "stopped postgres"
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
