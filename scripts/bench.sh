#!/usr/bin/env bash
# Benchmark: prewarm vs containerd's own pull (ctr) on the same images in
# one run, plus the bandwidth cap over 10 s windows. Prints numbers.
#   scripts/bench.sh [--scale F] [--only set|single|throttle|usr] [--runs N] [--tmpfs]
# It measures the binary that ships: the static musl build of
# scripts/build-release.sh (PREWARM_BIN overrides it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-release.sh
cargo build --release -p testbed --bin prewarm-bench
export PREWARM_BIN="${PREWARM_BIN:-$PWD/target/x86_64-unknown-linux-musl/release/prewarm}"
exec target/release/prewarm-bench "$@"
