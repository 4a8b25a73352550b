#!/usr/bin/env bash
# Builds the .deb and the .rpm from the static release binary and the files
# under packaging/, into target/packages/:
#   scripts/build-packages.sh           prewarm_<version>-1_amd64.deb, prewarm-<version>-1.x86_64.rpm
#   scripts/build-packages.sh aarch64   prewarm_<version>-1_arm64.deb, prewarm-<version>-1.aarch64.rpm
# Both take their asset lists from Cargo.toml ([package.metadata.deb] and
# [package.metadata.generate-rpm]), for every architecture; tests/packaging.rs
# keeps the two equal. Packages of the other architecture in
# target/packages/ are left alone.
# Installs cargo-deb and cargo-generate-rpm from the Rust crate registry when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-x86_64}
case $arch in
  x86_64) deb_arch=amd64 run=() ;;
  aarch64) deb_arch=arm64 run=(qemu-aarch64-static) ;;
  *) echo "build-packages: unknown architecture '$arch' (x86_64 or aarch64)" >&2; exit 2 ;;
esac
target=$arch-unknown-linux-musl
out=target/packages

scripts/build-release.sh "$arch"

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

# The manual page, from --help plus packaging/man/prewarm.h2m. help2man runs
# the program: another architecture's through qemu-user, by a wrapper
# named prewarm.
mkdir -p target/packaging
prog=$PWD/target/$target/release/prewarm
if ((${#run[@]})); then
  mkdir -p "target/packaging/$arch"
  printf '#!/bin/sh\nexec %s %s "$@"\n' "${run[*]}" "$prog" >"target/packaging/$arch/prewarm"
  chmod 755 "target/packaging/$arch/prewarm"
  prog=target/packaging/$arch/prewarm
fi
help2man --no-info --section 8 --include packaging/man/prewarm.h2m \
  --name "preload container images into containerd before kubelet joins" \
  --output target/packaging/prewarm.8 "$prog"
gzip -9nf target/packaging/prewarm.8

mkdir -p "$out"
rm -f "$out"/prewarm_*_"$deb_arch".deb "$out"/prewarm-*."$arch".rpm
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
ls "$out"/prewarm_*_"$deb_arch".deb "$out"/prewarm-*."$arch".rpm >/dev/null
