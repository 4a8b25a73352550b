# %postun: what %systemd_postun expands to. No restart on upgrade: running
# prewarm.service again would re-register and re-pull on a live node.
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
# On removal (not upgrade): the package cannot own its directories
# (cargo-generate-rpm 0.21 fails on directory assets), so remove the ones
# it created, where empty. An operator's own fragments keep theirs.
if [ "$1" -eq 0 ]; then
    for d in /etc/prewarm/config.d /etc/prewarm /usr/lib/prewarm/config.d /usr/lib/prewarm \
        /usr/share/doc/prewarm/examples /usr/share/doc/prewarm; do
        rmdir "$d" 2>/dev/null || :
    done
fi
