#!/usr/bin/env bash
# Benchmark: prewarm vs containerd's own pull (ctr) on the same images in
# one run, plus the bandwidth cap over 10 s windows. Prints numbers.
#   scripts/bench.sh [--scale F] [--only set|single|throttle]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --bins
exec target/release/prewarm-bench "$@"
