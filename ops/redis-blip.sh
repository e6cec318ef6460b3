#!/usr/bin/env bash
# A Redis restart under load, for docs/BENCHMARKS.md §3h/§3i: a local cluster (ops/cluster.sh)
# over a Redis this script starts on 6390, `loadtest failover` traffic, Redis killed (kill -9)
# 10 s in and started again, empty, 0.5 s later.
#
#   ops/redis-blip.sh LABEL [resp3|resp2]    report in ops/run/blip-LABEL.{out,json,metrics}
#
# resp2 starts Redis with HELLO renamed away, as behind a proxy that refuses it: every node then
# speaks RESP2. BIN_DIR (default target/release) picks the build, so builds can be alternated.
# Uses ports 8081-8082, 9091-9093, 6390 and ops/cluster.sh's Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:?label}
mode=${2:-resp3}
bin=${BIN_DIR:-target/release}
out=ops/run/blip-$label
ulimit -n 20000
export REDIS_PORT=6390 BIN_DIR=$bin
export LOCKSTEP_GATEWAY__CONNECT_RATE_PER_IP=100000 LOCKSTEP_GATEWAY__CONNECT_BURST_PER_IP=100000 \
  LOCKSTEP_GATEWAY__COMMAND_RATE=100000 LOCKSTEP_GATEWAY__COMMAND_BURST=100000 \
  LOCKSTEP_ROOM__CHAT_RATE=100000 LOCKSTEP_ROOM__CHAT_BURST=100000 LOCKSTEP_GATEWAY__MAX_CONNECTIONS=200000
extra=()
case "$mode" in
  resp3) ;;
  resp2) extra=(--rename-command HELLO "") ;;
  *) echo "usage: ops/redis-blip.sh LABEL [resp3|resp2]" >&2; exit 2 ;;
esac
mkdir -p ops/run
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --client-output-buffer-limit "pubsub 256mb 64mb 60" "${extra[@]}" >>"$out.redis.log" 2>&1 &
  echo $! >"$out.redis.pid"
  for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis did not start: $out.redis.log" >&2
  exit 1
}
stop_all() {
  ops/cluster.sh down >/dev/null 2>&1 || true
  kill "$(cat "$out.redis.pid")" 2>/dev/null || true
}
trap stop_all EXIT
start_redis
ops/cluster.sh up >"$out.up.log" 2>&1
"$bin/loadtest" failover --url http://127.0.0.1:8081,http://127.0.0.1:8082 --rate 10 --duration 20 \
  --max-seconds 90 --json "$out.json" >"$out.out" 2>&1 &
load=$!
sleep 10
kill -9 "$(cat "$out.redis.pid")"
sleep 0.5
start_redis
wait "$load" || true
{
  for port in 8081 8082; do
    curl -s "127.0.0.1:$port/metrics" | grep -E "^lockstep_gateway_(reply_timeouts|room_resyncs|connections_closed)" || true
  done
  for port in 9091 9092 9093; do
    curl -s "127.0.0.1:$port/metrics" | grep -E "^lockstep_bus_(publish_retries|dropped)" || true
  done
  grep -h "replies due at the bus gap" ops/run/*.log || true
} >"$out.metrics"
tail -n 12 "$out.out"
