#!/usr/bin/env bash
# The demo: installs what is missing, builds, then starts a private
# containerd and registry, pushes sample images and runs a throttled
# preload with prewarm. Needs root (containerd mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --bins --workspace
exec target/debug/prewarm-demo
