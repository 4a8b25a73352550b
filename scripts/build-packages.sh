#!/usr/bin/env bash
# Builds the .deb and the .rpm from the static release binary and the files
# under packaging/, into target/packages/:
#   prewarm_<version>-1_amd64.deb   (cargo-deb)
#   prewarm-<version>-1.x86_64.rpm  (cargo-generate-rpm)
# Both take their asset lists from Cargo.toml ([package.metadata.deb] and
# [package.metadata.generate-rpm]); tests/packaging.rs keeps the two equal.
# Installs cargo-deb and cargo-generate-rpm from the Rust crate registry when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
out=target/packages

scripts/build-release.sh

missing=()
dpkg-query -W -f='${Status}' help2man 2>/dev/null | grep -q "install ok installed" || missing+=(help2man)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Pinned: the asset and systemd-units keys in Cargo.toml are what these
# versions read.
cargo deb --version 2>/dev/null | grep -qx 'cargo-deb 3.8.0' ||
  cargo install --locked cargo-deb@3.8.0
cargo generate-rpm --version 2>/dev/null | grep -qx 'cargo-generate-rpm 0.21.1' ||
  cargo install --locked cargo-generate-rpm@0.21.1

# The manual page, from --help plus packaging/man/prewarm.h2m.
mkdir -p target/packaging
help2man --no-info --section 8 --include packaging/man/prewarm.h2m \
  --name "preload container images into containerd before kubelet joins" \
  --output target/packaging/prewarm.8 "target/$target/release/prewarm"
gzip -9nf target/packaging/prewarm.8

rm -rf "$out"
mkdir -p "$out"
# cargo-deb warns "No usable systemd units found" in packaging/debian: the
# units are listed as assets instead (see Cargo.toml); hide only that line.
if ! cargo deb --no-build --target "$target" --output "$out/" >"$out/cargo-deb.log" 2>&1; then
  cat "$out/cargo-deb.log" >&2
  exit 1
fi
grep -v 'No usable systemd units found' "$out/cargo-deb.log" || true
rm "$out/cargo-deb.log"
cargo generate-rpm --target "$target" --output "$out/"
ls -l "$out"
ls "$out"/*.deb "$out"/*.rpm >/dev/null
