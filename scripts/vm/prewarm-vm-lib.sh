# Shared by the VM boot test's guest scripts (kubelet-standin,
# prewarm-vm-verdict); installed as /usr/local/lib/prewarm-vm/lib.sh.
# Every check is bounded: nothing here waits without a limit.

# "before" (the package's units as shipped) or "alongside" (with the
# package's alongside.conf drop-in): set by the host in the guest's root.
variant=$(cat /etc/prewarm-vm/variant 2>/dev/null || echo before)
say() { echo "PREWARM-VM: $*"; }
bad() { say "check failed: $*"; fails=$((fails + 1)); }
unit() { systemctl show -p "$2" --value "$1"; }

# prewarm.service ran to the end and succeeded.
check_prewarm_done() {
  state=$(unit prewarm.service ActiveState)/$(unit prewarm.service SubState)
  result=$(unit prewarm.service Result)
  code=$(unit prewarm.service ExecMainStatus)
  start=$(unit prewarm.service ExecMainStartTimestampMonotonic)
  end=$(unit prewarm.service ExecMainExitTimestampMonotonic)
  say "prewarm.service: $state result=$result exit=$code ran $(((end - start) / 1000))ms"
  case "$state" in
    active/exited | failed/*) ;;
    *) bad "prewarm.service is $state $1" ;;
  esac
  [ "$result" = success ] && [ "$code" = 0 ] || bad "prewarm.service result=$result exit=$code"
}

# kubelet's view: CRI ImageStatus by tag and by digest, on containerd's own
# socket; and one summary line in the journal (stderr already goes there
# under the unit, so prewarm must not also log natively).
check_images_and_journal() {
  if prewarm status >/tmp/status.out 2>&1; then
    while IFS= read -r l; do say "status: $l"; done </tmp/status.out
  else
    rc=$?
    while IFS= read -r l; do say "status: $l"; done </tmp/status.out
    bad "prewarm status exited $rc"
  fi
  n=$(journalctl -b -u prewarm.service -o cat --no-pager | grep -c 'images planned=' || true)
  say "summary lines in the journal for prewarm.service: $n"
  [ "$n" = 1 ] || bad "expected exactly one summary line in the journal, found $n"
  journalctl -b -u prewarm.service -o cat --no-pager | tail -5 | while IFS= read -r l; do say "journal: $l"; done
}

# The IO cap the host's config fragment asks for (60-vm-io-cap.toml,
# write-bandwidth 8MiB/s, write-iops 4000): on containerd's cgroup v2
# io.max, for the root disk, while prewarm ran (prewarm-vm-iowatch), and
# gone again afterwards, from the cgroup and from the unit's properties.
# What containerd wrote meanwhile is printed, not judged: under TCG the pull
# writes too slowly for a rate check to tell a cap from no cap.
check_io_cap() {
  if python3 - /run/prewarm-vm/io-max.log >/tmp/iocap.out 2>&1 <<'PY'
import os, sys
rows = [l.split() for l in open(sys.argv[1]) if " capped " in l]
if not rows:
    sys.exit("containerd's io.max never held a limit while prewarm ran")
line = " ".join(rows[0][2:-1])
print(f"io.max while prewarm ran: {line}")
root = os.stat("/").st_dev
disk = open(f"/sys/dev/block/{os.major(root)}:{os.minor(root)}/../dev").read().strip() \
    if os.path.exists(f"/sys/dev/block/{os.major(root)}:{os.minor(root)}/partition") \
    else f"{os.major(root)}:{os.minor(root)}"
want = f"{disk} rbps=max wbps=8388608 riops=max wiops=4000"
if line != want:
    sys.exit(f"io.max held {line!r}, not {want!r}")
(t0, w0), (t1, w1) = [(float(r[0]), int(r[-1].split("=")[1])) for r in (rows[0], rows[-1])]
print(f"capped {t1 - t0:.1f} s, in which containerd wrote {w1 - w0} bytes")
PY
  then
    while IFS= read -r l; do say "io cap: $l"; done </tmp/iocap.out
  else
    while IFS= read -r l; do say "io cap: $l"; done </tmp/iocap.out
    bad "the IO cap was not on containerd's cgroup as configured"
  fi
  now=$(cat /sys/fs/cgroup/system.slice/containerd.service/io.max 2>/dev/null)
  # systemctl show prints nothing for an empty list property.
  props=$(systemctl show -p IOWriteBandwidthMax -p IOWriteIOPSMax containerd.service | grep '=.' | tr '\n' ' ')
  say "after the run: io.max '${now}', unit properties '${props}'"
  [ -z "$now" ] || bad "containerd's io.max still holds '$now'"
  [ -z "$props" ] || bad "containerd.service still has $props"
}
