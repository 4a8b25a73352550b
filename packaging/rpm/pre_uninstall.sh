# %preun: what %systemd_preun expands to. On removal (not upgrade), disable
# the units; stopping them only marks the finished oneshots inactive.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable --now prewarm.service prewarm-untaint.service prewarm-refresh.timer prewarm-refresh.service >/dev/null 2>&1 || :
fi
