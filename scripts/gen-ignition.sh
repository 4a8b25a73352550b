#!/usr/bin/env bash
# Generates ignition/prewarm.ign (Ignition spec 3.3.0, checked in) from the
# files under ignition/files/, laid out like their destinations:
#   - etc/systemd/system/<unit>.d/*.conf become systemd drop-ins of <unit>;
#   - everything else becomes a storage file (mode 0600 for *.kubeconfig,
#     0644 otherwise), its contents a data: URL;
# and enables prewarm.service and prewarm-untaint.service, which the OS
# image ships (the prewarm package, or its files baked in).
#
#   scripts/gen-ignition.sh          rewrite ignition/prewarm.ign
#   scripts/gen-ignition.sh --check  exit 1 if it is not up to date
#
# Debian has no Butane; ignition-validate (Debian's ignition package) checks
# the result (scripts/check-packaging.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - "${1:-}" <<'PY'
import json, os, sys, urllib.parse

root = "ignition/files"
files, dropins = [], {}
for dirpath, _, names in sorted(os.walk(root)):
    for name in sorted(names):
        src = os.path.join(dirpath, name)
        dest = "/" + os.path.relpath(src, root)
        body = open(src, encoding="utf-8").read()
        parent = os.path.dirname(dest)
        if parent.startswith("/etc/systemd/system/") and parent.endswith(".d"):
            unit = os.path.basename(parent)[:-2]
            dropins.setdefault(unit, []).append({"name": name, "contents": body})
            continue
        files.append({
            "path": dest,
            "mode": 0o600 if name.endswith(".kubeconfig") else 0o644,
            "overwrite": True,
            "contents": {"source": "data:," + urllib.parse.quote(body, safe="")},
        })
units = [{"name": "prewarm.service", "enabled": True},
         {"name": "prewarm-untaint.service", "enabled": True}]
units += [{"name": u, "dropins": d} for u, d in sorted(dropins.items())]
config = {
    "ignition": {"version": "3.3.0"},
    "storage": {"files": files},
    "systemd": {"units": units},
}
text = json.dumps(config, indent=2) + "\n"
out = "ignition/prewarm.ign"
if sys.argv[1] == "--check":
    current = open(out).read() if os.path.exists(out) else ""
    if current != text:
        sys.exit(f"{out} is not what scripts/gen-ignition.sh generates")
else:
    open(out, "w").write(text)
    print(f"wrote {out}")
PY
