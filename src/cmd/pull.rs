//! `prewarm pull`: the run ([`crate::preload::pull`]), ending with the
//! report's summary.

use super::stop_signal;
use crate::config::Settings;
use crate::Exit;

pub(super) async fn run(settings: Settings) -> anyhow::Result<Exit> {
    // Before anything is changed on the node (the IO cap): a SIGTERM from
    // here on ends the run cleanly.
    let stop = stop_signal();
    let report_path = settings.pull.report.clone();
    let outcome = crate::preload::pull(settings, stop).await?;
    let s = &outcome.report.summary;
    tracing::info!(report = %report_path.display(), "{s}");
    Ok(outcome.exit)
}
