//! `prewarm refresh`: one pass over the current list on a serving node
//! ([`crate::preload::refresh`]), then the list revision it holds on the
//! Node.

use super::{annotate_list, node_name, stop_signal};
use crate::config::Settings;
use crate::preload::Refreshed;
use crate::Exit;

pub(super) async fn run(settings: Settings) -> anyhow::Result<Exit> {
    if settings.refresh.enabled {
        settings.require_images()?;
    }
    let stop = stop_signal();
    match crate::preload::refresh(settings.clone(), stop).await? {
        Refreshed::Off => {
            tracing::info!(
                "refresh is off: nothing to do (set `enabled = true` under [refresh] in a fragment of /etc/prewarm/config.d/)"
            );
            Ok(Exit::Ok)
        }
        Refreshed::Busy(lock) => {
            tracing::info!(lock = %lock.display(), "another prewarm pull or refresh is running; this refresh pass is left out");
            Ok(Exit::Ok)
        }
        Refreshed::Ran(outcome) => {
            tracing::info!(report = %settings.refresh.report.display(), "refresh: {}", outcome.report.summary);
            match settings.handoff.existing_kubeconfig() {
                Some(kubeconfig) => {
                    let api = async {
                        let name = node_name(&settings)?;
                        let api = crate::node::api::KubeNodeApi::from_kubeconfig(
                            &kubeconfig,
                            settings.handoff.request_timeout,
                        )
                        .await?;
                        anyhow::Ok((name, api))
                    };
                    match api.await {
                        Ok((name, api)) => annotate_list(&api, &name, &outcome.report).await,
                        Err(e) => tracing::warn!(error = %crate::error_chain(e.as_ref()), "the Node's list annotations are not updated"),
                    }
                }
                None => tracing::warn!(
                    "no kubeconfig ([handoff] kubeconfig): the Node's list annotations are not updated"
                ),
            }
            Ok(outcome.exit)
        }
    }
}
