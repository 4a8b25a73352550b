#!/usr/bin/env bash
# Builds the static binary and both packages, then checks what the repo
# ships with the real tools:
#   - the .deb and the .rpm contain the same files, modes and config files,
#     which are exactly the Cargo.toml asset list;
#   - lintian and rpmlint report nothing beyond the justified overrides in
#     packaging/debian/lintian-overrides and packaging/rpm/rpmlint.toml;
#   - the .deb unpacked (dpkg -x) and the .rpm installed (rpm --root) into
#     throwaway roots give the same tree, in which every unit's ExecStart
#     binary exists and has the subcommand, tmpfiles.d creates the
#     directories the config points at, and the binary reads its
#     configuration from the directories the package fills;
#   - systemd-analyze verify passes on the units (and the alongside drop-in)
#     inside that root, with stub kubelet.service and containerd.service;
#   - the cloud-init examples pass `cloud-init schema`, the Ignition config
#     is up to date with its sources and passes `ignition-validate`, and
#     the prewarm configuration each of them writes passes `check-config`.
# Prints what it checked; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

need=(lintian rpmlint rpm cloud-init ignition systemd man-db python3 file qemu-user-static)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "check-packaging: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

ok() { echo "check-packaging: ok: $*"; }
die() { echo "check-packaging: FAIL: $*" >&2; exit 1; }

build=1
if [[ ${1:-} == --no-build ]]; then build=0; shift; fi
arch=${1:-x86_64}
case $arch in
  x86_64) deb_arch=amd64 run=() ;;
  # The installed binary runs under Debian's qemu-user-static.
  aarch64) deb_arch=arm64 run=(qemu-aarch64-static) ;;
  *) die "unknown architecture '$arch' (x86_64 or aarch64)" ;;
esac
((build == 0)) || scripts/build-packages.sh "$arch"
deb=$(ls target/packages/prewarm_*_"$deb_arch".deb)
rpm=$(ls target/packages/prewarm-*."$arch".rpm)
echo "check-packaging: $arch: $deb, $rpm"

work=$(mktemp -d /tmp/prewarm-pkg.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- the two packages against the asset list ---------------------------------
python3 - "$deb" "$rpm" "$work" <<'EOF'
import subprocess, sys, tomllib
deb, rpm, work = sys.argv[1:4]
meta = tomllib.load(open("Cargo.toml", "rb"))["package"]["metadata"]

def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

# Files cargo-deb adds by itself.
deb_generated = {"/usr/share/doc/prewarm/copyright", "/usr/share/doc/prewarm/changelog.Debian.gz"}
deb_only = {"/usr/share/lintian/overrides/prewarm"}

want = {}
for src, dest, mode in meta["deb"]["assets"]:
    want["/" + dest] = int(mode, 8)
want_conf = set(meta["deb"]["conf-files"])

got_deb = {}
for line in run("dpkg-deb", "-c", deb).splitlines():
    perms, _, _, _, _, path = line.split(None, 5)
    if perms.startswith("-"):
        mode = sum(1 << (8 - i) for i, c in enumerate(perms[1:10]) if c != "-")
        got_deb[path[1:]] = mode
conffiles = subprocess.run(f"dpkg-deb --ctrl-tarfile {deb} | tar -xO ./conffiles", shell=True,
                           check=True, capture_output=True, text=True).stdout.split()

got_rpm = {}
for line in run("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEMODES:octal}\n]", rpm).splitlines():
    path, mode = line.split()
    got_rpm[path] = int(mode, 8) & 0o7777
rpm_conf = run("rpm", "-qpc", rpm).split()

errors = []
def same(what, a, b):
    if a != b:
        errors.append(f"{what}: only in first {sorted(set(a) - set(b))}, only in second "
                      f"{sorted(set(b) - set(a))}, differing {sorted(k for k in set(a) & set(b) if a[k] != b[k])}")

same("deb vs Cargo.toml deb assets", {k: v for k, v in got_deb.items() if k not in deb_generated}, want)
same("rpm vs deb", got_rpm, {k: v for k, v in got_deb.items() if k not in deb_generated | deb_only})
if set(conffiles) != want_conf:
    errors.append(f"deb conffiles {conffiles} != {sorted(want_conf)}")
if set(rpm_conf) != want_conf:
    errors.append(f"rpm config files {rpm_conf} != {sorted(want_conf)}")
if errors:
    sys.exit("\n".join(errors))
print(f"check-packaging: ok: deb and rpm both ship the {len(got_rpm)} listed files "
      f"(modes equal), config files {sorted(want_conf)}")
EOF

# --- linters --------------------------------------------------------------------
lintian --fail-on error,warning --display-level '>=warning' "$deb" >"$work/lintian.out" 2>&1 ||
  { grep -v 'root privileges' "$work/lintian.out" >&2; die "lintian $deb"; }
grep -v 'root privileges' "$work/lintian.out" && die "lintian printed warnings" || true
ok "lintian: no errors or warnings beyond packaging/debian/lintian-overrides"
rpmlint -c packaging/rpm/rpmlint.toml "$rpm" >"$work/rpmlint.out" 2>&1 || true
grep -q ' 0 errors, 0 warnings' "$work/rpmlint.out" || { cat "$work/rpmlint.out" >&2; die "rpmlint $rpm"; }
ok "rpmlint: 0 errors, 0 warnings with packaging/rpm/rpmlint.toml"

# --- installed roots --------------------------------------------------------------
droot=$work/deb-root rroot=$work/rpm-root
dpkg -x "$deb" "$droot"
mkdir -p "$rroot"
rpm --force-debian --root "$rroot" --dbpath /tmp/rpmdb --noscripts --nodeps --nosignature --ignorearch -i "$rpm"
rm -rf "${rroot:?}/tmp"
# Same tree, apart from what only the deb has.
(cd "$droot" && find . -type f | sort) >"$work/deb.files"
(cd "$rroot" && find . -type f | sort) >"$work/rpm.files"
diff <(grep -v -e '^./usr/share/lintian/' -e '^./usr/share/doc/prewarm/copyright$' \
  -e '^./usr/share/doc/prewarm/changelog.Debian.gz$' "$work/deb.files") "$work/rpm.files" ||
  die "dpkg -x and rpm --root give different trees"
ok "dpkg -x and rpm -i --root install the same $(wc -l <"$work/rpm.files") files"

# The architecture each package says, and the binary's machine in it.
[[ $(dpkg-deb -f "$deb" Architecture) == "$deb_arch" ]] || die "$deb: Architecture is not $deb_arch"
[[ $(rpm -qp --qf '%{ARCH}' "$rpm" 2>/dev/null) == "$arch" ]] || die "$rpm: ARCH is not $arch"
case $arch in x86_64) machine="x86-64" ;; aarch64) machine="ARM aarch64" ;; esac
for r in "$droot" "$rroot"; do
  kind=$(file -b "$r/usr/bin/prewarm")
  [[ $kind == *"$machine"* && ($kind == *"statically linked"* || $kind == *"static-pie linked"*) ]] ||
    die "the packaged binary is not a static $machine one: $kind"
done
ok "both packages are $arch ($deb_arch) and ship a static $machine binary"

root=$droot
units=(prewarm.service prewarm-untaint.service prewarm-refresh.service prewarm-refresh.timer)
for u in "${units[@]}"; do
  f=$root/usr/lib/systemd/system/$u
  [[ -f $f ]] || die "$u not in /usr/lib/systemd/system"
  [[ $u == *.service ]] || continue # a timer runs its service
  grep '^ExecStart=' "$f" | while IFS= read -r line; do
    cmd=${line#ExecStart=}
    bin=${cmd%% *} sub=${cmd#* }
    [[ -x $root$bin ]] || die "$u: ExecStart binary $bin not installed"
    "${run[@]}" "$root$bin" $sub --help >/dev/null || die "$u: '$bin $sub' is not a command of the installed binary"
    ok "$u runs $cmd, installed and answering --help"
  done
done

# tmpfiles.d: the directories the configuration points at.
systemd-tmpfiles --root="$root" --create prewarm.conf
for d in run/prewarm run/prewarm/config.d var/lib/prewarm; do
  [[ -d $root/$d && $(stat -c %a "$root/$d") == 755 ]] || die "tmpfiles.d did not create /$d 0755"
done
# The reports: [pull]'s (untaint reads it) and [refresh]'s.
reports=$(sed -n 's/^report = "\(.*\)"/\1/p' "$root/usr/lib/prewarm/config.d/00-defaults.toml")
[[ $(wc -l <<<"$reports") == 2 ]] || die "expected [pull] and [refresh] report in 00-defaults.toml: $reports"
for report in $reports; do
  [[ -d $root$(dirname "$report") ]] || die "the report's directory $(dirname "$report") is not created by tmpfiles.d"
done
report=$(head -1 <<<"$reports")
ok "systemd-tmpfiles --create makes /run/prewarm, /run/prewarm/config.d, /var/lib/prewarm; report goes to $report"

# The binary reads the directories the package fills (defaults, local
# conffile) plus a site fragment from a cloud-init example.
python3 - cloud-init/kubelet-bootstrap.yaml "$root/etc/prewarm/config.d/50-site.toml" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
f = next(f for f in doc["write_files"] if f["path"] == "/etc/prewarm/config.d/50-site.toml")
open(sys.argv[2], "w").write(f["content"])
EOF
"${run[@]}" "$root/usr/bin/prewarm" --config-root "$root" check-config >"$work/check-config.out" ||
  { cat "$work/check-config.out" >&2; die "check-config in the installed root"; }
for frag in usr/lib/prewarm/config.d/00-defaults.toml etc/prewarm/config.d/40-local.toml etc/prewarm/config.d/50-site.toml; do
  grep -q "$frag" "$work/check-config.out" || { cat "$work/check-config.out" >&2; die "check-config did not read /$frag"; }
done
ok "the installed binary reads /usr/lib, /etc config.d fragments: $(head -1 "$work/check-config.out")"
rm "$root/etc/prewarm/config.d/50-site.toml"
man --warnings -l "$root/usr/share/man/man8/prewarm.8.gz" 2>"$work/man.err" >/dev/null
[[ ! -s $work/man.err ]] || { cat "$work/man.err" >&2; die "man page warnings"; }
ok "man page renders without warnings"

# --- systemd-analyze verify ----------------------------------------------------------
# The installed root, plus the host's units (targets, sockets) and stubs for
# the units prewarm orders itself against, so dependencies resolve.
vroot=$work/verify-root
cp -a "$root" "$vroot"
cp -rn /usr/lib/systemd/system/. "$vroot/usr/lib/systemd/system/"
mkdir -p "$vroot/etc/systemd/system"
for stub in kubelet containerd; do
  printf '[Unit]\nDescription=stub %s\n[Service]\nExecStart=/usr/bin/true\n' "$stub" \
    >"$vroot/etc/systemd/system/$stub.service"
done
mkdir -p "$vroot/usr/bin" && cp /usr/bin/true "$vroot/usr/bin/true"
verify() {
  local out
  out=$(systemd-analyze verify --man=no --root="$vroot" "${@/#/$vroot/usr/lib/systemd/system/}" 2>&1) ||
    { echo "$out" >&2; die "systemd-analyze verify $*"; }
  # verify exits 0 on unknown keys and unparsable values; it only prints them.
  # --man=no: the man page is not on the host; it is checked above.
  [[ -z $out ]] || { echo "$out" >&2; die "systemd-analyze verify printed warnings for $*"; }
}
verify "${units[@]}"
ok "systemd-analyze verify: ${units[*]}"
mkdir -p "$vroot/etc/systemd/system/prewarm.service.d"
cp "$vroot/usr/share/doc/prewarm/examples/alongside.conf" "$vroot/etc/systemd/system/prewarm.service.d/"
verify prewarm.service
[[ $(systemd-analyze --root="$vroot" cat-config systemd/system/prewarm.service.d/alongside.conf 2>/dev/null | grep -c '^Type=notify') == 1 ]] ||
  die "the alongside drop-in was not picked up"
ok "systemd-analyze verify: prewarm.service with the alongside drop-in"

# --- cloud-init ---------------------------------------------------------------------
for f in cloud-init/*.yaml; do
  cloud-init schema --config-file "$f" >/dev/null || die "cloud-init schema $f"
  python3 - "$f" "$work/ci-root/etc/prewarm/config.d/50-site.toml" <<'EOF'
import os, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
f = next(f for f in doc["write_files"] if f["path"] == "/etc/prewarm/config.d/50-site.toml")
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
open(sys.argv[2], "w").write(f["content"])
EOF
  "${run[@]}" "$root/usr/bin/prewarm" --config-root "$work/ci-root" check-config >/dev/null || die "$f: prewarm config"
  ok "cloud-init schema and prewarm check-config: $f"
done

# --- Ignition -------------------------------------------------------------------------
scripts/gen-ignition.sh --check || die "ignition/prewarm.ign is stale: run scripts/gen-ignition.sh"
# ignition-validate exits 0 on unknown keys; it only prints them.
out=$(ignition-validate ignition/prewarm.ign 2>&1) || { echo "$out" >&2; die "ignition-validate ignition/prewarm.ign"; }
[[ -z $out ]] || { echo "$out" >&2; die "ignition-validate printed warnings"; }
python3 - ignition/prewarm.ign "$work/ign-root" <<'EOF'
import json, os, sys, urllib.parse, base64
cfg = json.load(open(sys.argv[1]))
for f in cfg["storage"]["files"]:
    src = f["contents"]["source"]
    head, data = src.split(",", 1)
    body = base64.b64decode(data) if head.endswith(";base64") else urllib.parse.unquote_to_bytes(data)
    path = sys.argv[2] + f["path"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(body)
EOF
"${run[@]}" "$root/usr/bin/prewarm" --config-root "$work/ign-root" check-config >/dev/null || die "ignition: prewarm config"
ok "ignition-validate and prewarm check-config: ignition/prewarm.ign"
echo "check-packaging: all checks passed"
