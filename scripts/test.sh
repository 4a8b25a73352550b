#!/usr/bin/env bash
# The test command: installs what is missing, then runs every check.
# Integration tests start their own containerd and registry on temporary
# paths and free loopback ports; they need root (mounts for unpacking).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace -- --test-threads="${PREWARM_TEST_THREADS:-2}"
