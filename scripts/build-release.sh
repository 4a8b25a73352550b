#!/usr/bin/env bash
# Builds the static release binary that packages and images ship:
#   scripts/build-release.sh            target/x86_64-unknown-linux-musl/release/prewarm
#   scripts/build-release.sh aarch64    target/aarch64-unknown-linux-musl/release/prewarm
# x86_64 builds with Debian's musl-tools (musl-gcc for the C parts);
# aarch64 cross-builds with cargo-zigbuild and Zig from PyPI's `ziglang`
# (scripts/cross-toolchain.sh; docs/packaging.md says why). Installs what
# is missing, checks that the result is static (no ELF interpreter, no
# shared libraries) and for the right machine, runs it (aarch64 under
# Debian's qemu-user-static), and prints its size and the build time.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-x86_64}
case $arch in
  x86_64) machine="x86-64" ;;
  aarch64) machine="ARM aarch64" ;;
  *) echo "build-release: unknown architecture '$arch' (x86_64 or aarch64)" >&2; exit 2 ;;
esac
target=$arch-unknown-linux-musl
bin=target/$target/release/prewarm

scripts/setup.sh # protobuf-compiler: containerd-client and k8s-cri run protoc
need=(file binutils)
if [[ $arch == x86_64 ]]; then need+=(musl-tools); else need+=(qemu-user-static); fi
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "build-release: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

start=$(date +%s)
if [[ $arch == x86_64 ]]; then
  # musl-gcc for the C parts (zstd-sys and the like).
  CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --locked --target "$target" --bin prewarm
  run=()
else
  # Zig's clang and musl for the C parts (zstd-sys, mimalloc, ring) and
  # the link.
  PATH=$(scripts/cross-toolchain.sh):$PATH cargo zigbuild --release --locked --target "$target" --bin prewarm
  run=(qemu-aarch64-static)
fi
secs=$(($(date +%s) - start))

# Static means: no program interpreter and no shared-library dependencies.
# Rust's musl target links static-pie, which `file` reports as "static-pie
# linked"; both that and "statically linked" need no loader.
kind=$(file -b "$bin")
echo "build-release: file: $kind"
[[ $kind == *"$machine"* ]] || { echo "build-release: $bin is not an $machine binary" >&2; exit 1; }
case "$kind" in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) echo "build-release: $bin is not statically linked" >&2; exit 1 ;;
esac
if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
  echo "build-release: $bin has an ELF interpreter" >&2; exit 1
fi
if readelf -dW "$bin" | grep -q '(NEEDED)'; then
  echo "build-release: $bin needs shared libraries:" >&2
  readelf -dW "$bin" | grep '(NEEDED)' >&2
  exit 1
fi
"${run[@]}" "$bin" --version >/dev/null
size=$(stat -c %s "$bin")
echo "build-release: $bin: $size bytes ($((size / 1024 / 1024)) MiB), built in ${secs}s"
