#!/usr/bin/env bash
# The test command: installs what is missing, then runs every check.
# Integration tests start their own containerd and registry on temporary
# paths and free loopback ports; they need root (mounts for unpacking).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# containerd 1.7 and 2.x beside the installed 1.6, for tests/versions.rs,
# and bookworm's arm64 one (run under qemu-user) for tests/arm64.rs:
# fetched from the machine's Debian mirror into a cache, not installed.
scripts/containerd-versions.sh trixie sid bookworm:arm64
# The aarch64 release binary, for tests/arm64.rs.
scripts/build-release.sh aarch64
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace -- --test-threads="${PREWARM_TEST_THREADS:-2}"
# Shipped as operators install it: the static binary, the .deb and .rpm,
# lintian/rpmlint, systemd-analyze verify, cloud-init and Ignition
# validation, the packages unpacked into throwaway roots.
scripts/check-packaging.sh
scripts/check-packaging.sh aarch64
# Real boots in a QEMU VM: the .deb with the units as shipped, with the
# alongside drop-in, and with the kubeadm example; the .rpm (its scriptlets
# run by rpm --root). About 1 minute each with the root image cached in
# /var/cache/prewarm-vm, 6 or more from nothing (debootstrap), which does
# not fit CI's budget on a fresh machine. Opt in with PREWARM_VM_TEST=1.
if [[ ${PREWARM_VM_TEST:-0} == 1 ]]; then
  PREWARM_VM_PACKAGE=deb PREWARM_VM_VARIANT=before scripts/vm-boot-test.sh
  PREWARM_VM_PACKAGE=deb PREWARM_VM_VARIANT=alongside scripts/vm-boot-test.sh
  PREWARM_VM_PACKAGE=deb PREWARM_VM_EXAMPLE=kubeadm scripts/vm-boot-test.sh
  PREWARM_VM_PACKAGE=rpm PREWARM_VM_VARIANT=before scripts/vm-boot-test.sh
else
  echo "test.sh: the four VM boots were NOT run (set PREWARM_VM_TEST=1; .ci/run does)" >&2
fi
