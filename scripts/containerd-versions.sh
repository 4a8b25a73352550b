#!/usr/bin/env bash
# Fetches the containerd of other Debian suites for the tests, without
# installing anything: `apt-get download` against a private sources list
# (the machine's own Debian mirror and keyring), then `dpkg-deb -x` into a
# cache outside the repository, reused between runs.
#
#   scripts/containerd-versions.sh [SUITE ...]     default: trixie sid
#
# Leaves $PREWARM_CONTAINERD_CACHE/<suite>/usr/bin/containerd (default
# cache: /var/cache/prewarm-containerd) and prints each one's version.
# trixie ships containerd 1.7, sid 2.x. Fails naming the suite when one
# cannot be fetched.
set -euo pipefail
cache=${PREWARM_CONTAINERD_CACHE:-/var/cache/prewarm-containerd}
suites=("$@")
((${#suites[@]})) || suites=(trixie sid)

mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
if [[ -z $mirror ]]; then
  echo "containerd-versions: no Debian mirror in /etc/apt/sources.list.d/*.sources" >&2
  exit 1
fi

apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/parts"
opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/parts"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")

missing=()
for suite in "${suites[@]}"; do
  [[ -x $cache/$suite/usr/bin/containerd ]] || missing+=("$suite")
done
if ((${#missing[@]})); then
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" "${missing[*]}" >"$apt_dir/parts/prewarm.sources"
  apt-get "${opts[@]}" update -qq
  for suite in "${missing[@]}"; do
    work=$(mktemp -d "$cache/.fetch-$suite.XXXXXX")
    # apt's own messages go to a file, shown only when the fetch fails.
    (cd "$work" && apt-get "${opts[@]}" download -qq "containerd/$suite") >"$work/apt.log" 2>&1 || true
    deb=$(ls "$work"/containerd_*.deb 2>/dev/null | head -1)
    if [[ -z $deb ]]; then
      echo "containerd-versions: could not fetch containerd from Debian $suite:" >&2
      cat "$work/apt.log" >&2
      rm -rf "$work"
      exit 1
    fi
    dpkg-deb -x "$deb" "$work/root"
    rm -rf "${cache:?}/$suite"
    mv "$work/root" "$cache/$suite"
    rm -rf "$work"
  done
fi

for suite in "${suites[@]}"; do
  echo "containerd-versions: $suite: $("$cache/$suite/usr/bin/containerd" --version)"
done
