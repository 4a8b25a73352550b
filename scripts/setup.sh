#!/usr/bin/env bash
# Installs what prewarm's build, tests, demo and benchmark need on a fresh
# Debian machine. Idempotent: skips what is already there.
set -euo pipefail

# qemu-user-static: the aarch64 build and its tests run arm64 binaries.
packages=(containerd runc docker-registry skopeo protobuf-compiler openssl jq attr qemu-user-static)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }
