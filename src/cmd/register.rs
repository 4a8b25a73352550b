//! `prewarm register`: make the Node register with the startup taint.

use super::node_name;
use crate::config::Settings;
use crate::Exit;
use crate::{node, retry};
use anyhow::Context;

pub(super) async fn run(settings: Settings) -> anyhow::Result<Exit> {
    // Nothing is written unless the handoff could remove the taint again.
    let api = node::register::check_credential(&settings).await?;
    let name = node_name(&settings)?;
    let h = &settings.handoff;
    let retry = retry::Retry::new(2);
    let done = node::register::register(
        &settings,
        api.as_ref(),
        &name,
        &node::clock::SystemClock,
        retry,
    )
    .await
    .context("registering the startup taint")?;
    let reference = match done.reference {
        node::clock::Reference::Stamp(d) => {
            format!("start stamp at {:.1}s after boot", d.as_secs_f64())
        }
        node::clock::Reference::Boot => "boot".into(),
    };
    tracing::info!(
        "register: method={} file={} {} taint={} deadline={:?} from {} node={} existing-node={}",
        done.method.name(),
        done.path.display(),
        done.change,
        h.taint,
        h.deadline,
        reference,
        name,
        done.node.as_deref().unwrap_or("not checked")
    );
    Ok(Exit::Ok)
}
