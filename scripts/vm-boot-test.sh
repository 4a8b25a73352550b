#!/usr/bin/env bash
# Boots the packaged prewarm on a real Debian bookworm VM (QEMU, TCG) the way
# a node boots, and reads the verdict from the serial console.
#
#   scripts/vm-boot-test.sh [PREWARM.deb]
#   PREWARM_VM_VARIANT=alongside scripts/vm-boot-test.sh [PREWARM.deb]
#   PREWARM_VM_PACKAGE=rpm scripts/vm-boot-test.sh [PREWARM.rpm]
#   PREWARM_VM_EXAMPLE=kubeadm scripts/vm-boot-test.sh [PREWARM.deb]
#
# PREWARM_VM_EXAMPLE picks the cloud-init example the guest boots with:
# cloud-init/kubelet-bootstrap.yaml (default; kubelet.service enabled in the
# image) or cloud-init/kubeadm-join.yaml (kubelet started by `kubeadm join`
# from runcmd, i.e. after multi-user.target; a stand-in kubeadm does what
# the real one does for the kubelet).
#
# The variant "before" (default) boots the units as the package ships them:
# the whole pull before kubelet. "alongside" also installs the package's
# examples/alongside.conf drop-in, as its comment says, so kubelet starts
# once the taint is written while the pull goes on.
#
# PREWARM_VM_PACKAGE=rpm installs the .rpm instead, with `rpm --root` (its
# scriptlets run chrooted in the guest root): it is installed, checked,
# erased, checked again, and installed for the boot.
#
# Without an argument target/packages/prewarm_*_amd64.deb (or
# prewarm-*.x86_64.rpm) is used (build it
# with scripts/build-packages.sh). Needs root, loopback only:
#
# 1. a root file system from `debootstrap --variant=minbase` (systemd,
#    kernel, cloud-init, containerd, runc, ifupdown, dhclient), built once
#    and cached under $PREWARM_VM_CACHE (default /var/cache/prewarm-vm);
# 2. QEMU from the Debian qemu-system-x86, seabios and ipxe-qemu debs,
#    unpacked with dpkg-deb -x into the cache (apt-get install would
#    conflict with qemu-utils);
# 3. per run: the .deb installed with dpkg inside a copy of that root (an
#    overlay), a stand-in kubelet.service, an ext4 image (`mkfs.ext4 -d`);
# 4. a registry on the host's loopback (testbed-registry) holding the images
#    that cloud-init/kubelet-bootstrap.yaml lists, reached from the guest as
#    10.0.2.100:5000 through QEMU's guestfwd and nothing else
#    (restrict=on);
# 5. the fake Kubernetes API server (testbed-kubeapi) on the host's
#    loopback, reached from the guest as k8s-api.example.internal
#    (10.0.2.101:6443) through another guestfwd;
# 6. a NoCloud `cidata` seed carrying that cloud-init example, adapted only
#    where a site fills in its own values: a hosts.toml that sends
#    registry.example.internal to 10.0.2.100:5000 over plain HTTP, an
#    /etc/hosts line for the API server, its CA in place of the CA
#    placeholders, and its tokens in place of the untaint and bootstrap
#    token placeholders; plus one fragment with an IO cap (write-bandwidth
#    8MiB/s, write-iops 4000), which prewarm-vm-iowatch.service watches
#    arrive on containerd's cgroup v2 io.max (through systemd) and leave.
#
# The stand-in kubelet checks, when systemd starts it, that prewarm.service
# has already finished, that the kubelet taint drop-in is in place, that
# CRI sees every listed image (`prewarm status`) and that the journal holds
# prewarm's summary line once; then it registers the Node with the taints
# of kubelet's config and drop-ins, as kubelet does. The package's
# prewarm-untaint.service then runs; prewarm-vm-verdict.service, after it,
# checks that it succeeded and that the Node no longer has the taint, and
# prints PREWARM-VM: PASS or FAIL to the console. The host polls the serial
# log for that line, bounded by $PREWARM_VM_TIMEOUT seconds (default 900),
# stops QEMU by PID, and checks the API server's own record: the Node
# registered with the taint by the kubelet, and the taint removed by the
# untaint principal.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

cache=${PREWARM_VM_CACHE:-/var/cache/prewarm-vm}
timeout=${PREWARM_VM_TIMEOUT:-900}
variant=${PREWARM_VM_VARIANT:-before}
[[ $variant == before || $variant == alongside ]] || { echo "PREWARM_VM_VARIANT must be before or alongside" >&2; exit 2; }
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${PREWARM_VM_MIRROR:-$mirror}
[[ -n $mirror ]] || { echo "vm-boot-test: no Debian mirror in /etc/apt/sources.list.d/debian.sources; set PREWARM_VM_MIRROR" >&2; exit 1; }
suite=bookworm
include=systemd,systemd-sysv,linux-image-amd64,initramfs-tools,cloud-init,python3-cffi-backend,containerd,runc,ifupdown,isc-dhcp-client
case ${PREWARM_VM_EXAMPLE:-bootstrap} in
  bootstrap) example=cloud-init/kubelet-bootstrap.yaml ;;
  kubeadm) example=cloud-init/kubeadm-join.yaml ;;
  *) echo "PREWARM_VM_EXAMPLE must be bootstrap or kubeadm" >&2; exit 2 ;;
esac
flavour=${PREWARM_VM_EXAMPLE:-bootstrap}
t0=$(date +%s)
say() { echo "vm-boot-test: [$(($(date +%s) - t0))s] $*" >&2; }
die() { say "FAIL: $*"; exit 1; }

package=${PREWARM_VM_PACKAGE:-deb}
case $package in
  deb) pkg=${1:-$(ls -t target/packages/prewarm_*_amd64.deb 2>/dev/null | head -1)} ;;
  rpm) pkg=${1:-$(ls -t target/packages/prewarm-*.x86_64.rpm 2>/dev/null | head -1)} ;;
  *) die "PREWARM_VM_PACKAGE must be deb or rpm" ;;
esac
[[ -f $pkg ]] || die "no .$package given and none in target/packages (run scripts/build-packages.sh)"
pkg=$(realpath "$pkg")
[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mounts)"

need=(debootstrap genisoimage socat e2fsprogs python3-yaml)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p "$cache"

# --- QEMU, unpacked from Debian's debs ---------------------------------------
qemu_dir=$cache/qemu
qemu_libs=$qemu_dir/usr/lib/x86_64-linux-gnu:$qemu_dir/lib/x86_64-linux-gnu
if [[ ! -f $qemu_dir/.done ]]; then
  say "unpacking QEMU into $qemu_dir"
  rm -rf "$qemu_dir" "$cache/qemu-debs"
  mkdir -p "$cache/qemu-debs"
  # The emulator, its firmware, and the libraries it links that this machine
  # lacks (found with ldd).
  (cd "$cache/qemu-debs" && apt-get download -qq qemu-system-x86 qemu-system-common \
    qemu-system-data seabios ipxe-qemu libcapstone4 libfdt1 libpmem1 librdmacm1 \
    libibverbs1 libslirp0 libvdeplug2 libndctl6 libdaxctl1 libnl-route-3-200 libnl-3-200 \
    2> >(grep -v 'unsandboxed' >&2))
  for d in "$cache"/qemu-debs/*.deb; do dpkg-deb -x "$d" "$qemu_dir"; done
  touch "$qemu_dir/.done"
fi
qemu=$qemu_dir/usr/bin/qemu-system-x86_64
if LD_LIBRARY_PATH=$qemu_libs ldd "$qemu" | grep 'not found' >&2; then
  die "QEMU is missing shared libraries (above)"
fi

# --- the base root, cached ----------------------------------------------------
key=$(printf '%s\n' "$mirror" "$suite" "$include" "base-v1" | sha256sum | cut -c1-12)
base=$cache/base-$key
if [[ ! -f $base/.done ]]; then
  say "debootstrap $suite from $mirror into $base (once; takes a few minutes)"
  rm -rf "$base"
  mkdir -p "$base"
  debootstrap --variant=minbase --include="$include" "$suite" "$base/root" "$mirror" \
    >"$base/debootstrap.log" 2>&1 || { tail -20 "$base/debootstrap.log" >&2; die "debootstrap failed"; }
  r=$base/root
  echo prewarm-vm >"$r/etc/hostname"
  printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$r/etc/fstab"
  printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n' >"$r/etc/network/interfaces"
  # Only the NoCloud seed: probing cloud metadata services would time out
  # behind restrict=on.
  printf 'datasource_list: [NoCloud, None]\n' >"$r/etc/cloud/cloud.cfg.d/90-prewarm-vm.cfg"
  : >"$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id"
  chroot "$r" apt-get clean
  touch "$base/.done"
fi
kernel=$(ls "$base"/root/boot/vmlinuz-* | sort -V | tail -1)
initrd=$(ls "$base"/root/boot/initrd.img-* | sort -V | tail -1)

# --- per run ------------------------------------------------------------------
work=$(mktemp -d /tmp/prewarm-vm.XXXXXX)
qemu_pid='' registry_pid='' api_pid='' mounted=''
cleanup() {
  set +e
  [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
  [[ -n $registry_pid ]] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
  [[ -n $api_pid ]] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
  [[ -n $mounted ]] && umount "$work/merged"
  if [[ -n ${PREWARM_VM_KEEP:-} ]]; then
    say "kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# The registry on the host's loopback, holding what the example lists.
refs=$(python3 - "$example" <<'EOF'
import sys, tomllib, yaml
doc = yaml.safe_load(open(sys.argv[1]))
site = next(f for f in doc["write_files"] if f["path"] == "/etc/prewarm/config.d/50-site.toml")
for img in tomllib.loads(site["content"])["images"]:
    print(img["ref"])
EOF
)
[[ -n $refs ]] || die "no images in $example"
names=()
for r in $refs; do
  [[ $r == registry.example.internal/* ]] || die "$example lists $r, not under registry.example.internal"
  names+=("${r#registry.example.internal/}")
done
# A field of a testbed helper's ready file.
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# Waits, up to $4 seconds, for helper $1 (PID $2) to write its ready file
# $3; shows its log $1.log on failure.
await_ready() {
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    [[ -f $3 ]] && return 0
    kill -0 "$2" 2>/dev/null || { cat "$work/$1.log" >&2; die "$1 exited"; }
    sleep 0.1
  done
  die "$1 not ready after $4s"
}

say "building testbed-registry and pushing ${names[*]}"
cargo build -q --locked -p testbed --bin testbed-registry --bin testbed-kubeapi
target/debug/testbed-registry "$work/reg" "$work/registry.json" "${names[@]}" 2>"$work/testbed-registry.log" &
registry_pid=$!
await_ready testbed-registry "$registry_pid" "$work/registry.json" 120
reg_addr=$(json_field "$work/registry.json" addr)
say "registry on $reg_addr"

# The API server the example's kubeconfigs name, on the host's loopback.
# The guest's hostname (meta-data below) is the Node's name; the taint key
# is the example's [handoff] taint-key, else prewarm's default.
node_name=prewarm-vm
api_host=k8s-api.example.internal
taint_key=$(python3 - "$example" <<'EOF'
import sys, tomllib, yaml
doc = yaml.safe_load(open(sys.argv[1]))
site = next(f for f in doc["write_files"] if f["path"] == "/etc/prewarm/config.d/50-site.toml")
print(tomllib.loads(site["content"]).get("handoff", {}).get(
    "taint-key", "startup-taint.cluster-autoscaler.kubernetes.io/prewarm"))
EOF
)
target/debug/testbed-kubeapi "$work/api" "$work/api.json" "$work/api-state.json" \
  "$node_name" "$taint_key" "$api_host" 2>"$work/testbed-kubeapi.log" &
api_pid=$!
await_ready testbed-kubeapi "$api_pid" "$work/api.json" 30
api_addr=$(json_field "$work/api.json" addr)
api_ca=$(json_field "$work/api.json" ca)
say "API server on $api_addr, taint key $taint_key"

# The node's disk: the base root plus the package, installed inside by its
# own tool, so that its maintainer scripts run.
mkdir -p "$work/upper" "$work/ovl" "$work/merged"
mount -t overlay overlay -o "lowerdir=$base/root,upperdir=$work/upper,workdir=$work/ovl" "$work/merged"
mounted=1
m=$work/merged
units=(prewarm.service prewarm-untaint.service)
enabled() {
  for u in "${units[@]}"; do
    [[ -L $m/etc/systemd/system/multi-user.target.wants/$u ]] || return 1
  done
  # The refresh timer, from timers.target (its service does nothing until
  # [refresh] enabled = true).
  [[ -L $m/etc/systemd/system/timers.target.wants/prewarm-refresh.timer ]]
}
if [[ $package == deb ]]; then
  cp "$pkg" "$m/tmp/prewarm.deb"
  chroot "$m" dpkg -i /tmp/prewarm.deb >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; die "dpkg -i failed in the guest root"; }
  rm "$m/tmp/prewarm.deb"
  enabled || die "postinst did not enable ${units[*]} and prewarm-refresh.timer"
else
  rpm_in() { rpm --root "$m" --dbpath /var/lib/rpm "$@" >>"$work/install.log" 2>&1; }
  rpm_in --initdb || die "rpm --initdb failed"
  # Debian's root has no rpm database of what it holds: --nodeps.
  rpm_in -i --nodeps "$pkg" || { cat "$work/install.log" >&2; die "rpm -i failed in the guest root"; }
  enabled || die "%post did not enable ${units[*]} and prewarm-refresh.timer"
  [[ -x $m/usr/bin/prewarm && -f $m/etc/prewarm/config.d/40-local.toml ]] || die "rpm -i left files out"
  rpm_in -e prewarm || { cat "$work/install.log" >&2; die "rpm -e failed in the guest root"; }
  for u in "${units[@]}"; do
    [[ ! -e $m/etc/systemd/system/multi-user.target.wants/$u ]] || die "%preun did not disable $u"
    [[ ! -e $m/usr/lib/systemd/system/$u ]] || die "rpm -e left $u"
  done
  [[ ! -e $m/etc/systemd/system/timers.target.wants/prewarm-refresh.timer ]] || die "%preun did not disable prewarm-refresh.timer"
  [[ ! -e $m/usr/bin/prewarm ]] || die "rpm -e left /usr/bin/prewarm"
  for d in etc/prewarm usr/lib/prewarm usr/share/doc/prewarm; do
    [[ ! -e $m/$d ]] || die "rpm -e left /$d"
  done
  rpm_in -i --nodeps "$pkg" || { cat "$work/install.log" >&2; die "rpm -i (again) failed"; }
  enabled || die "%post did not enable ${units[*]} and prewarm-refresh.timer on the second install"
  say "rpm: installed, erased and installed again in the guest root; scriptlets ran"
fi
# The stand-in kubelet: ordered by prewarm.service's Before=kubelet.service
# only, like the real one. The verdict runs after prewarm-untaint.service.
install -m 755 "$repo/scripts/vm/kubelet-standin" "$m/usr/local/sbin/kubelet-standin"
install -m 755 "$repo/scripts/vm/prewarm-vm-verdict" "$m/usr/local/sbin/prewarm-vm-verdict"
install -D -m 644 "$repo/scripts/vm/prewarm-vm-lib.sh" "$m/usr/local/lib/prewarm-vm/lib.sh"
install -d -m 755 "$m/etc/prewarm-vm"
echo "$variant" >"$m/etc/prewarm-vm/variant"
echo "$taint_key" >"$m/etc/prewarm-vm/taint-key"
# What kubeadm would read from the cluster-info ConfigMap.
install -m 644 "$api_ca" "$m/etc/prewarm-vm/cluster-ca.pem"
if [[ $variant == alongside ]]; then
  install -D -m 644 "$m/usr/share/doc/prewarm/examples/alongside.conf" \
    "$m/etc/systemd/system/prewarm.service.d/alongside.conf"
fi
install -m 755 "$repo/scripts/vm/prewarm-vm-iowatch" "$m/usr/local/sbin/prewarm-vm-iowatch"
for u in kubelet.service prewarm-vm-verdict.service prewarm-vm-iowatch.service; do
  install -m 644 "$repo/scripts/vm/$u" "$m/etc/systemd/system/$u"
  ln -sf "/etc/systemd/system/$u" "$m/etc/systemd/system/multi-user.target.wants/$u"
done
if [[ $flavour == kubeadm ]]; then
  # kubeadm join starts kubelet; the image does not.
  rm "$m/etc/systemd/system/multi-user.target.wants/kubelet.service"
  install -m 755 "$repo/scripts/vm/kubeadm-standin" "$m/usr/local/bin/kubeadm"
fi
rm -f "$m/etc/systemd/system/getty.target.wants/getty@tty1.service"
python3 -c 'import uuid; print(uuid.uuid4().hex)' >"$m/etc/machine-id"
sync
# Sparse, and large enough for the package default disk reserve (10GiB)
# plus headroom, so that the example config runs unchanged.
truncate -s 24G "$work/disk.img"
mkfs.ext4 -q -F -L root -d "$m" "$work/disk.img"
umount "$m"
mounted=''

# The NoCloud seed: the example, plus where registry.example.internal and
# the API server are, the API server's CA and its tokens.
mkdir -p "$work/seed"
# kubeadm's discovery pin: the SHA-256 of the CA's public key (DER).
ca_hash=$(openssl x509 -in "$api_ca" -pubkey -noout | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1)
python3 - "$example" "$work/seed/user-data" "$work/api.json" "$api_host" "$ca_hash" <<'EOF'
import base64, json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]).read())
api = json.load(open(sys.argv[3]))
pem = open(api["ca"]).read()
ca_hash = sys.argv[5]
for f in doc["write_files"]:
    f["content"] = (f["content"]
        .replace("REPLACE-WITH-THE-BASE64-CLUSTER-CA", base64.b64encode(pem.encode()).decode())
        .replace("REPLACE-WITH-THE-CA-CERT-HASH", ca_hash)
        .replace("REPLACE-WITH-THE-PREWARM-UNTAINT-SERVICEACCOUNT-TOKEN", api["untaint_token"])
        .replace("REPLACE.WITH-A-BOOTSTRAP-TOKEN", api["kubelet_token"]))
    if f["path"] == "/etc/kubernetes/pki/ca.crt":
        f["content"] = pem
# An IO cap, so that the boot exercises it on cgroup v2 through systemd;
# prewarm-vm-iowatch records what containerd's io.max holds meanwhile.
doc["write_files"].append({
    "path": "/etc/prewarm/config.d/60-vm-io-cap.toml",
    "permissions": "0644",
    "content": 'version = 1\n[throttle]\nwrite-bandwidth = "8MiB/s"\nwrite-iops = 4000\n',
})
doc["write_files"].append({
    "path": "/etc/hosts",
    "append": True,
    "content": f"10.0.2.101 {sys.argv[4]}\n",
})
doc["write_files"].append({
    "path": "/etc/containerd/certs.d/registry.example.internal/hosts.toml",
    "permissions": "0644",
    "content": 'server = "http://10.0.2.100:5000"\n\n[host."http://10.0.2.100:5000"]\n  capabilities = ["pull", "resolve"]\n',
})
with open(sys.argv[2], "w") as f:
    f.write("#cloud-config\n")
    yaml.safe_dump(doc, f, sort_keys=False)
EOF
printf 'instance-id: prewarm-vm-%s\nlocal-hostname: %s\n' "$(date +%s)" "$node_name" >"$work/seed/meta-data"
cloud-init schema --config-file "$work/seed/user-data" >/dev/null || die "adapted user-data is not valid"
genisoimage -quiet -output "$work/seed.iso" -volid cidata -joliet -rock "$work/seed/user-data" "$work/seed/meta-data"

# Boot.
serial=$work/serial.log
say "booting $(basename "$kernel") (TCG): $flavour example, variant $variant, from the .$package"
boot_start=$(date +%s)
LD_LIBRARY_PATH=$qemu_libs "$qemu" \
  -L "$qemu_dir/usr/share/seabios" -L "$qemu_dir/usr/share/qemu" -L "$qemu_dir/usr/lib/ipxe/qemu" \
  -accel tcg,thread=multi -cpu max -smp 2 -m 1024 \
  -nodefaults -no-user-config -display none -vga none \
  -kernel "$kernel" -initrd "$initrd" \
  -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 systemd.show_status=1" \
  -drive "file=$work/disk.img,if=virtio,format=raw" \
  -drive "file=$work/seed.iso,if=virtio,format=raw,readonly=on" \
  -netdev "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:5000-cmd:socat - TCP:$reg_addr,guestfwd=tcp:10.0.2.101:6443-cmd:socat - TCP:$api_addr" \
  -device virtio-net-pci,netdev=n0,romfile= \
  -serial "file:$serial" -no-reboot \
  >"$work/qemu.log" 2>&1 &
qemu_pid=$!

verdict=''
deadline=$((boot_start + timeout))
while (($(date +%s) < deadline)); do
  if ! kill -0 "$qemu_pid" 2>/dev/null; then
    qemu_pid=''
    break
  fi
  verdict=$(grep -a -m1 -o 'PREWARM-VM: \(PASS\|FAIL\).*' "$serial" 2>/dev/null || true)
  [[ -n $verdict ]] && break
  sleep 1
done
boot_secs=$(($(date +%s) - boot_start))
mkdir -p target/vm-boot-test
cp "$serial" "target/vm-boot-test/serial-$flavour-$package-$variant.log"
echo "--- guest report (serial console)" >&2
grep -a 'PREWARM-VM' "$serial" | tr -d '\r' >&2 || true
say "serial log: target/vm-boot-test/serial-$flavour-$package-$variant.log"
# The API server's own record, written when it stops.
api_record() {
  kill "$api_pid" 2>/dev/null
  wait "$api_pid" 2>/dev/null
  api_pid=''
  python3 - "$work/api-state.json" "$node_name" "$taint_key" <<'EOF'
import json, sys
state = json.load(open(sys.argv[1]))
name, key = sys.argv[2], sys.argv[3]
node = state["node"]
reqs = state["requests"]
def show(r): return f'{r["method"]} {r["path"]} {r["user"]} -> {r["status"]}'
for r in reqs:
    print("api log:", show(r), file=sys.stderr)
created = [r for r in reqs if r["method"] == "POST" and r["status"] == 201
           and r["user"] == f"system:node:{name}"
           and any(t.get("key") == key for t in ((r["body"] or {}).get("spec") or {}).get("taints") or [])]
patched = [r for r in reqs if r["method"] == "PATCH" and r["status"] == 200
           and r["path"] == f"/api/v1/nodes/{name}" and "prewarm-untaint" in (r["user"] or "")]
evented = [r for r in reqs if r["method"] == "POST" and r["status"] == 201
           and r["path"].startswith("/apis/events.k8s.io/v1/namespaces/")
           and (r["body"] or {}).get("reason") in ("PreloadComplete", "PreloadDegraded")]
problems = []
if not evented:
    problems.append("no handoff Event (PreloadComplete or PreloadDegraded) was created")
if node is None:
    problems.append(f"no Node {name} was registered")
elif any(t.get("key") == key for t in node.get("spec", {}).get("taints") or []):
    problems.append(f"Node {name} still has {key}")
if not created:
    problems.append(f"the kubelet did not register the Node with {key}")
if not patched:
    problems.append("the untaint principal never patched the Node")
annotations = ((node or {}).get("metadata") or {}).get("annotations") or {}
if not annotations.get("prewarm.io/list-revision") or annotations.get("prewarm.io/list-warm") != "true":
    problems.append("the Node lacks prewarm.io/list-revision, or prewarm.io/list-warm is not true")
for p in problems:
    print("api record:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}

case "$verdict" in
  "PREWARM-VM: PASS"*)
    api_record || die "guest says PASS, but the API server's record disagrees"
    say "PASS after ${boot_secs}s of boot"
    exit 0
    ;;
  "PREWARM-VM: FAIL"*) die "guest says: $verdict" ;;
  *)
    tail -40 "$serial" | tr -d '\r' >&2
    [[ -z $qemu_pid ]] && { cat "$work/qemu.log" >&2; die "QEMU exited without a verdict"; }
    die "no verdict within ${timeout}s"
    ;;
esac
