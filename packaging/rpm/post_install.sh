# %post: what the %systemd_post and %tmpfiles_create macros expand to.
# On first install, enable the units as the system's presets say (the
# package ships 80-prewarm.preset, which enables both). Never start them:
# prewarm.service belongs to boot, before kubelet, not to package
# installation on a running node.
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload preset prewarm.service prewarm-untaint.service prewarm-refresh.timer >/dev/null 2>&1 || :
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create prewarm.conf >/dev/null 2>&1 || :
fi
