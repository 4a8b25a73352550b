#!/usr/bin/env bash
# Fetches the containerd of other Debian suites (and architectures) for the
# tests, without installing anything: `apt-get download` against a private
# sources list (the machine's own Debian mirror and keyring), then
# `dpkg-deb -x` into a cache outside the repository, reused between runs.
#
#   scripts/containerd-versions.sh [SUITE[:ARCH] ...]     default: trixie sid
#
# SUITE leaves $PREWARM_CONTAINERD_CACHE/<suite>/usr/bin/containerd (default
# cache: /var/cache/prewarm-containerd). trixie ships containerd 1.7, sid 2.x.
#
# SUITE:ARCH (another architecture, e.g. bookworm:arm64) also fetches that
# architecture's libc6 into the same root, and leaves
# <cache>/<suite>-<arch>/containerd: a script that starts the daemon under
# Debian's qemu-user-static (qemu-<arch>-static -L <root>), so that an arm64
# containerd, CRI and all, runs on this x86_64 machine. It needs
# qemu-user-static installed, not binfmt_misc.
#
# Prints each one's version. Fails naming the suite when one cannot be
# fetched.
set -euo pipefail
cache=${PREWARM_CONTAINERD_CACHE:-/var/cache/prewarm-containerd}
wanted=("$@")
((${#wanted[@]})) || wanted=(trixie sid)

mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
if [[ -z $mirror ]]; then
  echo "containerd-versions: no Debian mirror in /etc/apt/sources.list.d/*.sources" >&2
  exit 1
fi
host_arch=$(dpkg --print-architecture)

# qemu-user's name for a Debian architecture.
qemu_arch() {
  case $1 in
    arm64) echo aarch64 ;;
    armhf | armel) echo arm ;;
    ppc64el) echo ppc64le ;;
    *) echo "$1" ;;
  esac
}

# The directory a wanted SUITE[:ARCH] is unpacked into, and the daemon in it.
dir_of() { local suite=${1%%:*} arch=${1#*:}; [[ $1 == *:* ]] && echo "$cache/$suite-$arch" || echo "$cache/$suite"; }
daemon_of() { [[ $1 == *:* ]] && echo "$(dir_of "$1")/containerd" || echo "$(dir_of "$1")/usr/bin/containerd"; }

# One private apt state per architecture, so lists never mix.
apt_opts() {
  local dir=$cache/apt${1:+-$1}
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/parts"
  opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$dir/parts"
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache")
  if [[ -n ${1:-} ]]; then
    opts+=(-o "APT::Architectures::=$1")
  fi
  apt_dir=$dir
}

# fetch SUITE ARCH(or empty) PACKAGE... : downloads the packages into a
# fresh directory and prints its path.
fetch() {
  local suite=$1 arch=$2 work deb
  shift 2
  work=$(mktemp -d "$cache/.fetch-$suite${arch:+-$arch}.XXXXXX")
  for pkg in "$@"; do
    # apt's own messages go to a file, shown only when the fetch fails.
    (cd "$work" && apt-get "${opts[@]}" download -qq "$pkg${arch:+:$arch}/$suite") >>"$work/apt.log" 2>&1 || true
    deb=$(ls "$work/${pkg}"_*.deb 2>/dev/null | head -1)
    if [[ -z $deb ]]; then
      echo "containerd-versions: could not fetch $pkg${arch:+:$arch} from Debian $suite:" >&2
      cat "$work/apt.log" >&2
      rm -rf "$work"
      exit 1
    fi
  done
  echo "$work"
}

declare -A missing_by_arch=()
for w in "${wanted[@]}"; do
  [[ -x $(daemon_of "$w") ]] && continue
  arch=""
  [[ $w == *:* ]] && arch=${w#*:}
  [[ $arch == "$host_arch" ]] && { echo "containerd-versions: $w: $arch is this machine's architecture; name the suite alone" >&2; exit 1; }
  missing_by_arch[${arch:-host}]+="$w "
done

for key in "${!missing_by_arch[@]}"; do
  arch=""
  [[ $key == host ]] || arch=$key
  read -ra ws <<<"${missing_by_arch[$key]}"
  suites=()
  for w in "${ws[@]}"; do suites+=("${w%%:*}"); done
  apt_opts "$arch"
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nArchitectures: %s\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" "${suites[*]}" "${arch:-$host_arch}" >"$apt_dir/parts/prewarm.sources"
  apt-get "${opts[@]}" update -qq
  for w in "${ws[@]}"; do
    suite=${w%%:*}
    if [[ -z $arch ]]; then
      work=$(fetch "$suite" "" containerd)
    else
      command -v "qemu-$(qemu_arch "$arch")-static" >/dev/null || {
        echo "containerd-versions: $w needs qemu-$(qemu_arch "$arch")-static (Debian's qemu-user-static)" >&2
        exit 1
      }
      work=$(fetch "$suite" "$arch" containerd libc6)
    fi
    mkdir -p "$work/root"
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
    if [[ -n $arch ]]; then
      # Absolute paths: the root is where the packages put their files.
      root=$(dir_of "$w")/root
      printf '#!/bin/sh\n# containerd from Debian %s for %s, under qemu-user (containerd-versions.sh).\nexec qemu-%s-static -L %s %s/usr/bin/containerd "$@"\n' \
        "$suite" "$arch" "$(qemu_arch "$arch")" "$root" "$root" >"$work/containerd"
      chmod 755 "$work/containerd"
      mkdir -p "$work/dir"
      mv "$work/root" "$work/dir/root"
      mv "$work/containerd" "$work/dir/containerd"
      rm -rf "$(dir_of "$w")"
      mv "$work/dir" "$(dir_of "$w")"
    else
      rm -rf "$(dir_of "$w")"
      mv "$work/root" "$(dir_of "$w")"
    fi
    rm -rf "$work"
  done
done

for w in "${wanted[@]}"; do
  echo "containerd-versions: $w: $("$(daemon_of "$w")" --version)"
done
