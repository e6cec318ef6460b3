#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test in the workspace.
# Today the suite needs only a Rust toolchain; cluster tests will add redis-server and
# postgresql here (from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "ops/test.sh: cargo is required (install Rust from https://rustup.rs)" >&2
  exit 1
fi

cargo test --workspace --locked "$@"
