# %postun: what %systemd_postun expands to. No restart on upgrade: running
# prewarm.service again would re-register and re-pull on a live node.
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
