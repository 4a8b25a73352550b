#!/usr/bin/env bash
# Builds the static x86_64 release binary that packages and images ship:
#   target/x86_64-unknown-linux-musl/release/prewarm
# Installs the musl target and Debian's musl-tools when missing, checks that
# the result is static (no ELF interpreter, no shared libraries), and prints
# its size and the build time.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
bin=target/$target/release/prewarm

scripts/setup.sh # protobuf-compiler: containerd-client and k8s-cri run protoc
missing=()
for p in musl-tools file binutils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "build-release: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

start=$(date +%s)
# musl-gcc for the C parts (zstd-sys and the like).
CC_x86_64_unknown_linux_musl=musl-gcc \
  cargo build --release --locked --target "$target" --bin prewarm
secs=$(($(date +%s) - start))

# Static means: no program interpreter and no shared-library dependencies.
# Rust's musl target links static-pie, which `file` reports as "static-pie
# linked"; both that and "statically linked" need no loader.
kind=$(file -b "$bin")
echo "build-release: file: $kind"
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
"$bin" --version >/dev/null
size=$(stat -c %s "$bin")
echo "build-release: $bin: $size bytes ($((size / 1024 / 1024)) MiB), built in ${secs}s"
