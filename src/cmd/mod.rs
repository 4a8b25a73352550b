//! The commands: one file each, on the library below them. `run` reads
//! the configuration and dispatches; what several commands share is here.

/// `println!`, except that a reader who went away (a closed pipe, as in
/// `prewarm plan | head`) ends the command quietly with exit 0, as
/// ripgrep does, instead of a panic and exit 101.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod boot;
mod gc;
mod plan;
mod pull;
mod refresh;
mod register;
mod status;
mod untaint;

use crate::cli::{Cli, Command};
use crate::config::Settings;
use crate::load_settings;
use crate::Exit;
use crate::{node, sources, taint};
use anyhow::Context;

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let settings = load_settings(&cli)?;
    // register and untaint need no images; the others do.
    // (refresh needs them only once it is enabled.)
    if !matches!(
        cli.command,
        Command::Register | Command::Untaint | Command::Refresh
    ) {
        settings.require_images()?;
    }
    match cli.command {
        Command::Register => register::run(settings).await,
        Command::Boot => boot::run(settings).await,
        Command::Untaint => untaint::run(settings).await,
        Command::CheckConfig => {
            let listed = sources::check_local(&settings)?;
            out!(
                "configuration ok: {} images from {} fragment(s)",
                settings.images.len() + listed,
                settings.sources.len()
            );
            for p in &settings.sources {
                out!("  {}", p.display());
            }
            for w in crate::preload::node_warnings(&settings, None, None).await {
                out!("warning: {w}");
            }
            Ok(Exit::Ok)
        }
        Command::Plan { output } => plan::run(settings, output).await,
        Command::Pull => pull::run(settings).await,
        Command::Refresh => refresh::run(settings).await,
        Command::Status { output } => status::run(settings, output).await,
        Command::Gc { apply } => gc::run(settings, apply).await,
    }
}

/// The node name from `[handoff] node-name`, else the hostname as kubelet
/// derives it.
fn node_name(settings: &Settings) -> anyhow::Result<String> {
    match &settings.handoff.node_name {
        Some(n) => Ok(n.clone()),
        None => {
            let n = node::default_node_name().context("reading the hostname for the node name")?;
            taint::validate_node_name(&n).map_err(|m| {
                anyhow::anyhow!(
                    "the hostname is not a usable node name: {m}; set [handoff] node-name"
                )
            })
        }
    }
}

/// Puts the list revision the run's `report` describes on the Node
/// ([`node::list`]); a failure is logged, never fatal: the images are in
/// either way.
async fn annotate_list(api: &impl node::api::NodeApi, name: &str, report: &crate::report::Report) {
    use node::list::{annotate, Annotated};
    match annotate(api, name, report).await {
        Ok(Annotated::Written) => {
            let (revision, warm) = node::list::annotations(report);
            tracing::info!(
                node = name,
                revision = revision.as_deref().unwrap_or("-"),
                warm,
                "the Node's list annotations updated"
            );
        }
        Ok(Annotated::Unchanged) => {
            tracing::debug!(node = name, "the Node's list annotations are current")
        }
        Ok(Annotated::NoNode) => tracing::warn!(
            node = name,
            "no Node by that name: its list annotations are not written"
        ),
        Err(e) => {
            tracing::warn!(node = name, error = %crate::error_chain(&e), "the Node's list annotations are not updated")
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Resolves with a reason when SIGTERM or SIGINT arrives.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: a signal that arrives in between is kept, not fatal.
fn stop_signal() -> impl std::future::Future<Output = String> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "stopped by SIGTERM".to_string(),
                _ = int.recv() => "stopped by SIGINT".to_string(),
            },
            _ => std::future::pending().await,
        }
    }
}
