#!/usr/bin/env bash
# The cross toolchain for the aarch64 build, from the registries this
# project reaches: Zig from PyPI's `ziglang` wheel, in a virtualenv in a
# cache outside the repository, and cargo-zigbuild from the Rust crate
# registry. Both pinned. Installs what is missing, then prints the
# directory to put first on PATH (the virtualenv's bin, where
# cargo-zigbuild finds `python3 -m ziglang`).
#
#   PATH=$(scripts/cross-toolchain.sh):$PATH cargo zigbuild --target aarch64-unknown-linux-musl
set -euo pipefail
cache=${PREWARM_CROSS_CACHE:-/var/cache/prewarm-cross}
zig_version=0.13.0
zigbuild_version=0.24.1

venv=$cache/zig-$zig_version
if ! "$venv/bin/python3" -m ziglang version 2>/dev/null | grep -qx "$zig_version"; then
  echo "cross-toolchain: installing ziglang==$zig_version into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "ziglang==$zig_version" >&2
fi
cargo-zigbuild --version 2>/dev/null | grep -qx "cargo-zigbuild $zigbuild_version" ||
  cargo install --locked "cargo-zigbuild@$zigbuild_version" >&2
echo "$venv/bin"
