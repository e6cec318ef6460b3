#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test in the workspace and
# closes with one summary line ("tests: N passed, N failed").
# Today the suite needs only a Rust toolchain; cluster tests will add redis-server and
# postgresql here (from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "ops/test.sh: cargo is required (install Rust from https://rustup.rs)" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
