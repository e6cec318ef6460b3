#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test in the workspace and
# closes with one summary line ("tests: N passed, N failed").
#
# Needs: a Rust toolchain; redis-server and the PostgreSQL server binaries (initdb, pg_ctl),
# which the tests start privately on free loopback ports; promtool (alert rule tests) and
# libfaketime (a node with a skewed clock), unpacked from Debian's packages. Missing ones are installed from
# Debian's packages when run as root; otherwise set LOCKSTEP_TEST_REDIS_URL and
# LOCKSTEP_TEST_PG_URL to servers the tests may use.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "ops/test.sh: cargo is required (install Rust from https://rustup.rs)" >&2
  exit 1
fi

have_pg_server() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

missing=()
if [ -z "${LOCKSTEP_TEST_REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
  missing+=(redis-server)
fi
if [ -z "${LOCKSTEP_TEST_PG_URL:-}" ] && ! have_pg_server; then
  missing+=(postgresql)
fi
if ! command -v psql >/dev/null 2>&1; then
  missing+=(postgresql-client)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ops/test.sh: installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "ops/test.sh: missing ${missing[*]}: install them, or set LOCKSTEP_TEST_REDIS_URL / LOCKSTEP_TEST_PG_URL" >&2
    exit 1
  fi
fi

# Two tools are taken from Debian's packages without installing them, unpacked into
# target/tools: promtool (from `prometheus`; installing the package would also start a
# Prometheus server) checks the alert rules and runs their unit tests (ops/alerts_test.yml), and
# libfaketime shifts one test node's wall clock (the clock-skew cluster test).
tools="$PWD/target/tools"
unpack() { # package: its files under $tools, fetched and unpacked once
  if [ -e "$tools/.unpacked-$1" ]; then
    return
  fi
  mkdir -p "$tools/deb"
  fetch() { (cd "$tools/deb" && apt-get download "$1" >/dev/null 2>&1); }
  if ! fetch "$1"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && fetch "$1"
    fi
  fi
  deb=$(ls "$tools"/deb/"$1"_*.deb 2>/dev/null | head -n 1)
  if [ -z "$deb" ]; then
    echo "ops/test.sh: Debian's $1 package could not be fetched: install it" >&2
    exit 1
  fi
  dpkg -x "$deb" "$tools"
  touch "$tools/.unpacked-$1"
}
if ! command -v promtool >/dev/null 2>&1; then
  unpack prometheus
  export PATH="$tools/usr/bin:$PATH"
fi
export LOCKSTEP_REQUIRE_PROMTOOL=1
if [ "$(uname -m)" = x86_64 ]; then
  if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]; then
    unpack libfaketime
  fi
  export LOCKSTEP_REQUIRE_FAKETIME=1
fi

# Cluster tests run the real binaries as separate processes.
cargo build --workspace --bins --locked

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
