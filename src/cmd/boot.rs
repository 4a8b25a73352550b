//! `prewarm boot`: `register`, then `pull`.

use crate::config::Settings;
use crate::systemd;
use crate::{error_chain, Exit};

/// `register`, then `pull`. A failed `register` does not stop the pull:
/// the node then joins untainted (fail-open), and warm images still help.
/// The run fails with `register`'s error (and exit code) in that case, so
/// the unit shows it. Once `register` is done, systemd is told READY=1,
/// which lets kubelet start alongside the pull under `Type=notify`
/// (packaging/examples/alongside.conf); the default `Type=oneshot` unit
/// ignores it and keeps kubelet waiting until the pull ends.
pub(super) async fn run(settings: Settings) -> anyhow::Result<Exit> {
    let registered = super::register::run(settings.clone()).await;
    if let Err(e) = &registered {
        tracing::error!(
            "register failed, pulling anyway (the node joins without the taint): {}",
            error_chain(e.as_ref())
        );
    }
    systemd::notify("READY=1");
    let pulled = super::pull::run(settings).await;
    match registered {
        Ok(Exit::Ok) => pulled,
        Ok(code) => pulled.map(|p| if p == Exit::Ok { code } else { p }),
        Err(e) => {
            if let Err(p) = pulled {
                tracing::error!("pull: {}", error_chain(p.as_ref()));
            }
            Err(e)
        }
    }
}
