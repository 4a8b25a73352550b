//! prewarm: pre-pull container images straight into containerd before
//! kubelet joins, so pods land only on nodes whose image cache is warm.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: every required image is present (by tag and by digest) |
//! | 1 | unexpected failure |
//! | 2 | usage or configuration error; nothing was contacted or written |
//! | 3 | a required image is not present after the run |
//! | 4 | containerd or its CRI service could not be reached |

pub mod cli;
pub mod config;
pub mod containerd;
pub mod cri;
pub mod disk;
pub mod estimate;
pub mod iocap;
pub mod manifest;
pub mod plan;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod report;
pub mod retry;
pub mod throttle;

use anyhow::Context;
use cli::{Cli, Command};
use config::{ConfigError, Settings};
use std::time::Instant;

/// An error with its causes, `a: b: c`, each cause once, for reports and
/// log lines.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

/// Documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    Config = 2,
    RequiredMissing = 3,
    Unreachable = 4,
}

/// Maps an error to its exit code.
pub fn exit_for(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if cause.is::<ConfigError>() {
            return Exit::Config;
        }
        if let Some(c) = cause.downcast_ref::<containerd::ContainerdError>() {
            if matches!(c, containerd::ContainerdError::Connect { .. }) {
                return Exit::Unreachable;
            }
        }
        if cause.is::<cri::CriError>() {
            return Exit::Unreachable;
        }
    }
    Exit::Failure
}

/// Loads and validates the configuration the command line points at.
pub fn load_settings(cli: &Cli) -> Result<Settings, ConfigError> {
    let paths = config::fragment_paths(&cli.config_root, cli.config.as_deref())?;
    config::load(&paths, &cli.overrides())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let settings = load_settings(&cli)?;
    match cli.command {
        Command::CheckConfig => {
            println!(
                "configuration ok: {} images from {} fragment(s)",
                settings.images.len(),
                settings.sources.len()
            );
            for p in &settings.sources {
                println!("  {}", p.display());
            }
            Ok(Exit::Ok)
        }
        Command::Plan => plan(settings).await,
        Command::Pull => pull(settings).await,
        Command::Status => status(settings).await,
    }
}

async fn plan(settings: Settings) -> anyhow::Result<Exit> {
    let engine = pull::Engine::connect(settings).await?;
    let budget = engine.budget()?;
    let items = engine.plan().await?;
    println!(
        "disk {}: {} of {} bytes free, may write {} (reserve {}, max {}%)",
        engine.disk_path,
        budget.available,
        budget.total,
        budget.allowance(),
        budget.reserve,
        budget.max_usage_percent
    );
    println!(
        "{:<4} {:<8} {:<9} {:>12}  {:<71}  reference",
        "#", "action", "required", "bytes", "digest"
    );
    for (n, item) in items.iter().enumerate() {
        let (action, why) = match &item.decision {
            Ok(plan::Decision::Pull) => ("pull", String::new()),
            Ok(plan::Decision::Present) => ("present", String::new()),
            Ok(plan::Decision::Skip(_)) => ("skip", "  (disk-budget)".to_string()),
            Err(e) => ("fail", format!("  ({e})")),
        };
        let digest = item
            .resolved
            .as_ref()
            .map(|r| r.top().desc.digest.clone())
            .unwrap_or_default();
        println!(
            "{:<4} {:<8} {:<9} {:>12}  {:<71}  {}{}",
            n + 1,
            action,
            item.entry.required,
            item.need,
            digest,
            item.entry.reference,
            why
        );
    }
    Ok(Exit::Ok)
}

async fn pull(settings: Settings) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let report_path = settings.report.clone();
    let engine = pull::Engine::connect(settings).await?;
    let io_cap = cap_containerd_writes(&engine);
    let mut report = engine.pull(started, stop_signal()).await;
    report.io_cap = match io_cap {
        Ok(None) => None,
        Ok(Some(cap)) => {
            let described = cap.describe(engine.settings.io_limits);
            if let Err(e) = cap.restore() {
                tracing::error!(error = %e, "restoring containerd's IO limits");
            }
            Some(described)
        }
        Err(e) => Some(iocap::IoCapReport {
            cgroup: String::new(),
            device: String::new(),
            write_bps: engine.settings.io_limits.write_bps,
            write_iops: engine.settings.io_limits.write_iops,
            note: Some(format!("not applied: {}", error_chain(&e))),
        }),
    };
    report
        .write(&report_path)
        .with_context(|| format!("writing the report to {}", report_path.display()))?;
    let s = &report.summary;
    tracing::info!(report = %report_path.display(), "{s}");
    Ok(if s.required_missing > 0 {
        Exit::RequiredMissing
    } else {
        Exit::Ok
    })
}

/// Restores limits a killed run left, then caps containerd's writes when
/// configured. The cap is lifted when the returned guard is restored or
/// dropped (also on panic); a cap that cannot be applied is reported, and
/// the preload goes on without it.
fn cap_containerd_writes(engine: &pull::Engine) -> Result<Option<iocap::IoCap>, iocap::IoCapError> {
    let s = &engine.settings;
    let state = iocap_state_path(s);
    iocap::recover(&state)?;
    if s.io_limits.is_empty() {
        return Ok(None);
    }
    let root = std::path::Path::new(&engine.disk_path);
    iocap::IoCap::apply(&s.socket, root, s.io_limits, &state)
        .map(Some)
        .inspect_err(
            |e| tracing::error!(error = %e, "capping containerd's writes; pulling without the cap"),
        )
}

/// Where the limits in force before a run are kept until restored: next
/// to the report, under /run, so a reboot (which resets cgroups) forgets
/// them too.
pub fn iocap_state_path(s: &Settings) -> std::path::PathBuf {
    s.report
        .parent()
        .unwrap_or(std::path::Path::new("/run/prewarm"))
        .join("iocap-state.json")
}

async fn status(settings: Settings) -> anyhow::Result<Exit> {
    let required: Vec<bool> = settings.images.iter().map(|e| e.required).collect();
    let images = settings.images.clone();
    let c = containerd::Containerd::connect(
        &settings.socket,
        &settings.namespace,
        settings.connect_timeout,
    )
    .await?;
    let cri = cri::Cri::new(c.channel());
    let mut missing = 0;
    println!(
        "{:<8} {:<9} {:<6} {:<9} {:<71}  reference",
        "tag", "digest", "pinned", "required", "image id"
    );
    for (entry, required) in images.iter().zip(required) {
        let by_tag = match entry.reference.tag_name() {
            Some(t) => cri.image_status(&t).await?,
            None => None,
        };
        // The digest the tag's record points at, or the pinned one.
        let digest = match &entry.reference.digest {
            Some(d) => Some(d.clone()),
            None => match entry.reference.tag_name() {
                Some(t) => c
                    .image_get(&t)
                    .await?
                    .and_then(|i| i.target)
                    .map(|t| t.digest),
                None => None,
            },
        };
        let by_digest = match &digest {
            Some(d) => cri.image_status(&entry.reference.digest_name(d)).await?,
            None => None,
        };
        let ok = by_digest.is_some() && (entry.reference.tag.is_none() || by_tag.is_some());
        if required && !ok {
            missing += 1;
        }
        let shown = by_digest.as_ref().or(by_tag.as_ref());
        println!(
            "{:<8} {:<9} {:<6} {:<9} {:<71}  {}",
            yes_no(by_tag.is_some() || entry.reference.tag.is_none()),
            yes_no(by_digest.is_some()),
            yes_no(shown.is_some_and(|i| i.pinned)),
            required,
            shown.map(|i| i.id.as_str()).unwrap_or("-"),
            entry.reference
        );
    }
    Ok(if missing > 0 {
        Exit::RequiredMissing
    } else {
        Exit::Ok
    })
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Resolves with a reason when SIGTERM or SIGINT arrives.
async fn stop_signal() -> String {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "stopped by SIGTERM".to_string(),
            _ = int.recv() => "stopped by SIGINT".to_string(),
        },
        _ => std::future::pending().await,
    }
}

/// Sets up logging: stderr without timestamps (journald adds them), plus
/// journald when its socket exists. Never fails because journald is absent.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::prelude::*;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PREWARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer()
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let journald = if std::path::Path::new("/run/systemd/journal/socket").exists() {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(journald)
        .try_init();
}
