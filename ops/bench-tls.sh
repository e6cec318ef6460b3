#!/usr/bin/env bash
# One `loadtest fanout` run on a fresh local cluster whose Redis and Postgres are started by
# ops/cluster.sh, plain or TLS-only (the only difference), for docs/BENCHMARKS.md §3e.
#
#   ops/bench-tls.sh plain|tls LABEL     report in ops/run/bench-LABEL.txt (and .json)
#
# RATE (messages/s per room, default 20). Alternate the two kinds in one sitting: the box's speed
# drifts. Postgres' CPU (postmaster and backends, from /proc) over the measured window is
# appended to the report. Uses ports 8081-8082, 9091-9093, 6380/6381 and 5433/5434.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?plain or tls}
label=${2:?label}
out=ops/run/bench-$label
ulimit -n 20000
export LOCKSTEP_DB=lockstep_bench
export LOCKSTEP_GATEWAY__CONNECT_RATE_PER_IP=100000 LOCKSTEP_GATEWAY__CONNECT_BURST_PER_IP=100000 \
  LOCKSTEP_GATEWAY__COMMAND_RATE=100000 LOCKSTEP_GATEWAY__COMMAND_BURST=100000 \
  LOCKSTEP_ROOM__CHAT_RATE=100000 LOCKSTEP_ROOM__CHAT_BURST=100000 LOCKSTEP_GATEWAY__MAX_CONNECTIONS=200000
mkdir -p ops/run
case "$kind" in
  tls) TLS=1 ops/cluster.sh up >"$out.up.log" 2>&1 ;;
  plain) REDIS_PORT=6381 PG_PORT=5434 ops/cluster.sh up >"$out.up.log" 2>&1 ;;
  *) echo "usage: ops/bench-tls.sh plain|tls LABEL" >&2; exit 2 ;;
esac
grep -q "worker3 readyz: ready" "$out.up.log" || { cat "$out.up.log"; ops/cluster.sh down; exit 1; }
pg_main=$(head -n 1 "$(cat ops/run/postgres.started)/postmaster.pid")
sleep 3
pids=$(cat ops/run/gateway*.pid ops/run/worker*.pid ops/run/redis.pid | paste -sd,)
target/release/loadtest fanout --url http://127.0.0.1:8081,http://127.0.0.1:8082 --rooms 20 \
  --clients 50 --rate "${RATE:-20}" --warmup 5 --duration 20 --max-seconds 120 --pid "$pids" \
  --json "$out.json" >"$out.txt" 2>&1 &
loadtest=$!
sleep 5 # warm-up: rooms are loaded and the pool's connections open
pg_pids="$pg_main $(pgrep -P "$pg_main" | paste -sd' ')"
pg_ticks() {
  local t=0 p
  for p in $pg_pids; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
before=$(pg_ticks)
sleep 20
after=$(pg_ticks)
wait "$loadtest" || true
echo "postgres cores over the window: $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz / 20}')" >>"$out.txt"
ops/cluster.sh down >/dev/null 2>&1
sleep 6
tail -n 8 "$out.txt"
