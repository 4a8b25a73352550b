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
