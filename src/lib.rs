//! prewarm: pre-pull container images straight into containerd before
//! kubelet joins, so pods land only on nodes whose image cache is warm.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: every required image is present (by tag and by digest) |
//! | 1 | unexpected failure |
//! | 2 | usage or configuration error, in prewarm's configuration or in the node's registry files (`hosts.toml`, the CA files it names, docker `config.json`); nothing was contacted or written |
//! | 3 | a required image is not present after the run |
//! | 4 | containerd or its CRI service could not be reached |
//! | 5 | `untaint`: the Kubernetes API refused or never answered, so the outcome could not be written to the Node (401/403), or it or the Node was not there by the deadline plus `give-up-after` |
//! | 6 | an image list source (`[[sources]]`) could not be read and had no cached copy: a `required` one for `pull` and `plan` (which still pull and show the rest), any one for `gc` (which then removes nothing) |
//!
//! `register` exits 2, writing no taint, when any part of the configuration
//! (including `[handoff]`) is invalid, when direct mode's credential does
//! not load, or when it cannot tell how the node joins. `untaint` exits 0
//! once the outcome is on the Node, including when `on-deadline = "keep"`
//! kept the taint (the annotation says why).
//!
//! # Node lifecycle
//!
//! `register` (before kubelet) makes the Node register with the startup
//! taint and writes the start stamp the deadline counts from; `untaint`
//! (after kubelet registered) removes the taint or sets the readiness
//! condition. See [`node`] for the flavours, the detection order and the
//! deadline policy.

pub mod archive;
pub mod atomic;
pub mod cli;
pub mod config;
pub mod containerd;
pub mod cri;
pub mod digest;
pub mod disk;
pub mod estimate;
pub mod extract;
pub mod gc;
pub mod iocap;
pub mod labels;
pub mod manifest;
pub mod node;
pub mod plan;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod report;
pub mod retry;
pub mod sources;
pub mod systemd;
pub mod taint;
pub mod throttle;
pub mod time;
pub mod unpack;

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
    KubeApi = 5,
    ListUnavailable = 6,
}

/// Maps an error to its exit code: the first cause in the chain that has
/// one decides; an error none of them explains is a failure (1).
pub fn exit_for(e: &anyhow::Error) -> Exit {
    e.chain().find_map(exit_of).unwrap_or(Exit::Failure)
}

/// The exit code one cause stands for, if it stands for one.
fn exit_of(cause: &(dyn std::error::Error + 'static)) -> Option<Exit> {
    use containerd::ContainerdError;
    use node::{api::ApiError, register::RegisterError, untaint::UntaintError};
    use registry::RegistryError;
    if cause.is::<ConfigError>() {
        return Some(Exit::Config);
    }
    if let Some(r) = cause.downcast_ref::<RegistryError>() {
        // The node's hosts.toml, CA files and config.json are configuration.
        return match r {
            RegistryError::HostsConfig { .. } | RegistryError::AuthFile { .. } => {
                Some(Exit::Config)
            }
            _ => None,
        };
    }
    if let Some(c) = cause.downcast_ref::<ContainerdError>() {
        // Only a failed connect: containerd answers `Unavailable` for an
        // ingest ref another writer holds, too.
        return matches!(c, ContainerdError::Connect { .. }).then_some(Exit::Unreachable);
    }
    if let Some(c) = cause.downcast_ref::<cri::CriError>() {
        // Only a CRI that is not there: an answer we did not like is a
        // failure like any other.
        return match c {
            cri::CriError::Call { status, .. } if unreachable(status) => Some(Exit::Unreachable),
            _ => None,
        };
    }
    if let Some(r) = cause.downcast_ref::<RegisterError>() {
        return matches!(r, RegisterError::Undetected { .. }).then_some(Exit::Config);
    }
    if let Some(a) = cause.downcast_ref::<ApiError>() {
        return Some(match a {
            ApiError::Kubeconfig { .. } => Exit::Config,
            _ => Exit::KubeApi,
        });
    }
    if let Some(u) = cause.downcast_ref::<UntaintError>() {
        return match u {
            UntaintError::Api(_) | UntaintError::NeverAppeared { .. } => Some(Exit::KubeApi),
            UntaintError::Clock(_) => None,
        };
    }
    if cause.is::<sources::Incomplete>() {
        return Some(Exit::ListUnavailable);
    }
    // Only check-config lets a list's error through: a bad local list.
    if cause.is::<sources::SourceError>() {
        return Some(Exit::Config);
    }
    None
}

/// A gRPC status that means the service is not there to answer: down,
/// not listening, or without the API we call.
fn unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unimplemented
    )
}

/// Loads and validates the configuration the command line points at.
pub fn load_settings(cli: &Cli) -> Result<Settings, ConfigError> {
    let paths = config::fragment_paths(&cli.config_root, cli.config.as_deref())?;
    config::load(&paths, &cli.overrides())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let settings = load_settings(&cli)?;
    // register and untaint need no images; the others do.
    if !matches!(cli.command, Command::Register | Command::Untaint) {
        settings.require_images()?;
    }
    match cli.command {
        Command::Register => register(settings).await,
        Command::Boot => boot(settings).await,
        Command::Untaint => untaint(settings).await,
        Command::CheckConfig => {
            let listed = sources::check_local(&settings)?;
            println!(
                "configuration ok: {} images from {} fragment(s)",
                settings.images.len() + listed,
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
        Command::Gc { apply } => gc(settings, apply).await,
    }
}

/// Reads the `[[sources]]` lists into `settings.images` and connects the
/// engine, with the archives found.
async fn connect_with_lists(
    mut settings: Settings,
) -> anyhow::Result<(pull::Engine, sources::Loaded)> {
    let mut lists = sources::load(&settings).await;
    settings.images = std::mem::take(&mut lists.images);
    let mut engine = pull::Engine::connect(settings).await?;
    engine.archives = std::mem::take(&mut lists.archives);
    Ok((engine, lists))
}

/// Exit 6 when a required list source failed, else `otherwise`.
fn list_exit(lists: &sources::Loaded, otherwise: Exit) -> Exit {
    let failed = lists.failed_required();
    if failed.is_empty() {
        return otherwise;
    }
    for f in failed {
        tracing::error!(source = %f.name, "required image list unavailable: {}", f.note.as_deref().unwrap_or(""));
    }
    Exit::ListUnavailable
}

async fn plan(settings: Settings) -> anyhow::Result<Exit> {
    let (engine, lists) = connect_with_lists(settings).await?;
    for s in &lists.reports {
        println!(
            "list {} ({}): {:?}, {} entries{}",
            s.name,
            s.kind,
            s.status,
            s.images,
            s.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
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
        "{:<4} {:<8} {:<9} {:>12}  {:<71}  {:<5}  reference",
        "#", "action", "required", "bytes", "digest", "moved"
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
        // Drift: the node holds another digest under this tag.
        let (moved, held) = match (item.moved_from(), &item.held) {
            (Some(old), _) => ("yes", format!("  (node holds {old} under this tag)")),
            (None, Some(_)) => ("no", String::new()),
            (None, None) => ("-", String::new()),
        };
        println!(
            "{:<4} {:<8} {:<9} {:>12}  {:<71}  {:<5}  {}{}{}",
            n + 1,
            action,
            item.entry.required,
            item.need,
            digest,
            moved,
            item.entry.reference,
            held,
            why
        );
    }
    Ok(list_exit(&lists, Exit::Ok))
}

async fn gc(settings: Settings, apply: bool) -> anyhow::Result<Exit> {
    let lists = sources::load(&settings).await;
    if !lists.complete() {
        // Whatever a failed list names would look de-listed.
        return Err(sources::Incomplete::of(&lists).into());
    }
    let c = containerd::Containerd::connect(
        &settings.socket,
        &settings.namespace,
        settings.connect_timeout,
    )
    .await?;
    let mode = if apply {
        gc::Mode::Apply
    } else {
        gc::Mode::DryRun
    };
    let (groups, report) = gc::run(&c, &lists.images, mode).await?;
    let verb = if apply { "" } else { "would " };
    for g in &groups {
        let why = match &g.kept {
            None => {
                for name in &g.delisted {
                    println!("{verb}remove {name}  ({})", g.target);
                }
                continue;
            }
            Some(report::Kept::InUse(ids)) => format!("in use by container {}", ids.join(", ")),
            Some(report::Kept::PinnedByOther(n)) => format!("{n} is pinned, not by prewarm"),
        };
        for name in &g.delisted {
            println!("keep {name}  ({}): {why}", g.target);
        }
        for name in g.unpin() {
            println!("{verb}unpin {name}");
        }
    }
    println!(
        "{}: {} image records removed, {} unpinned, {} bytes of content and {} bytes of unpacked layers freed",
        if apply {
            "gc applied"
        } else {
            "gc dry run (--apply to delete)"
        },
        if apply {
            report.removed.len()
        } else {
            groups.iter().map(|g| g.remove().len()).sum()
        },
        report.unpinned.len(),
        report.freed_bytes,
        report.freed_snapshot_bytes
    );
    Ok(Exit::Ok)
}

async fn pull(settings: Settings) -> anyhow::Result<Exit> {
    let started = Instant::now();
    // Before anything is changed on the node (the IO cap): a SIGTERM from
    // here on ends the run cleanly.
    let stop = stop_signal();
    let report_path = settings.report.clone();
    let (mut engine, lists) = connect_with_lists(settings).await?;
    let io_cap = cap_containerd_writes(&engine);
    // Where the kernel cannot hold containerd's unpack writes to the cap
    // (cgroup v1, or the cap could not be applied), pace the unpacks.
    let kernel_caps = match &io_cap {
        Ok(cap) => cap.as_ref().is_none_or(iocap::IoCap::caps_buffered_writes),
        Err(_) => false,
    };
    let pace = engine
        .settings
        .io_limits
        .write_bps
        .and_then(std::num::NonZeroU64::new)
        .filter(|_| !kernel_caps);
    engine.unpack_pace = throttle::Bandwidth::new(pace);
    let mut report = engine.pull(started, stop).await;
    report.io_cap = match io_cap {
        Ok(None) => None,
        Ok(Some(cap)) => {
            let described = cap.describe(engine.settings.io_limits);
            if let Err(e) = cap.restore() {
                tracing::error!(error = %e, "restoring containerd's IO limits");
            }
            Some(described)
        }
        Err(e) => Some(report::IoCapReport {
            cgroup: String::new(),
            device: String::new(),
            write_bps: engine.settings.io_limits.write_bps,
            write_iops: engine.settings.io_limits.write_iops,
            note: Some(match pace {
                Some(_) => format!("not applied: {}; {}", error_chain(&e), iocap::PACED_NOTE),
                None => format!("not applied: {}", error_chain(&e)),
            }),
        }),
    };
    if engine.settings.unpack == config::Unpack::Prewarm {
        // Those writes are prewarm's: no cap on containerd holds them.
        if let Some(cap) = report.io_cap.as_mut().filter(|c| c.write_bps.is_some()) {
            let own = "layers prewarm unpacks itself are written at write-bandwidth, by prewarm \
                       (write-iops is not paced)";
            cap.note = Some(match cap.note.take() {
                Some(n) => format!("{n}; {own}"),
                None => own.to_string(),
            });
        }
    }
    report.sources = lists.reports.clone();
    report.gc = unpin_delisted(&engine, &lists, &report).await;
    report
        .write(&report_path)
        .with_context(|| format!("writing the report to {}", report_path.display()))?;
    let s = &report.summary;
    tracing::info!(report = %report_path.display(), "{s}");
    Ok(list_exit(
        &lists,
        if s.required_missing > 0 {
            Exit::RequiredMissing
        } else {
            Exit::Ok
        },
    ))
}

/// After a pull: unpin the images that left the list (and with `[pull] gc`,
/// remove those not in use). Only with a complete list and a finished run.
async fn unpin_delisted(
    engine: &pull::Engine,
    lists: &sources::Loaded,
    report: &report::Report,
) -> Option<report::GcReport> {
    if !lists.complete() {
        tracing::warn!("an image list source failed: not unpinning or removing any image");
        return None;
    }
    if report.interrupted.is_some() {
        return None;
    }
    let mode = if engine.settings.gc {
        gc::Mode::Apply
    } else {
        gc::Mode::UnpinOnly
    };
    match gc::run(&engine.containerd, &engine.settings.images, mode).await {
        Ok((_, r)) => Some(r),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "unpinning de-listed images");
            None
        }
    }
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
    // The whole list: the sources' entries too (cached copies when remote
    // sources are unreachable).
    let lists = sources::load(&settings).await;
    let required: Vec<bool> = lists.images.iter().map(|e| e.required).collect();
    let images = lists.images.clone();
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

async fn register(settings: Settings) -> anyhow::Result<Exit> {
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

/// `register`, then `pull`. A failed `register` does not stop the pull:
/// the node then joins untainted (fail-open), and warm images still help.
/// The run fails with `register`'s error (and exit code) in that case, so
/// the unit shows it. Once `register` is done, systemd is told READY=1,
/// which lets kubelet start alongside the pull under `Type=notify`
/// (packaging/examples/alongside.conf); the default `Type=oneshot` unit
/// ignores it and keeps kubelet waiting until the pull ends.
async fn boot(settings: Settings) -> anyhow::Result<Exit> {
    let registered = register(settings.clone()).await;
    if let Err(e) = &registered {
        tracing::error!(
            "register failed, pulling anyway (the node joins without the taint): {}",
            error_chain(e.as_ref())
        );
    }
    systemd::notify("READY=1");
    let pulled = pull(settings).await;
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

async fn untaint(settings: Settings) -> anyhow::Result<Exit> {
    let h = &settings.handoff;
    let name = node_name(&settings)?;
    let tl = node::untaint::Timeline::now(h, &node::clock::SystemClock)?;
    // In condition mode the kubelet's credential appears only after its TLS
    // bootstrap: wait for it, within the same bounds as for the Node.
    let candidates = h.kubeconfig_candidates();
    let wait = retry::Retry {
        retries: u32::MAX,
        ..retry::Retry::new(0)
    };
    let kubeconfig = wait
        .run_until(
            tl.give_up,
            "waiting for the kubeconfig",
            |_: &String| h.mode == config::HandoffMode::Condition,
            |_| {
                let found = candidates.iter().find(|p| p.exists()).cloned();
                let list = candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                async move { found.ok_or(list) }
            },
        )
        .await
        .map_err(|list| ConfigError::Invalid {
            path: h
                .kubeconfig_source
                .clone()
                .unwrap_or_else(|| "built-in default".into()),
            key: "handoff.kubeconfig".into(),
            message: format!("no credential to hand the node over with: none of {list} exists"),
        })?;
    let api = node::api::KubeNodeApi::from_kubeconfig(&kubeconfig, h.request_timeout).await?;
    let run = node::untaint::Untaint {
        api: &api,
        handoff: h,
        node: name,
        report: settings.report.clone(),
        retry: retry::Retry::new(u32::MAX),
        conflict_retries: 10,
    };
    let outcome = run.run(tl).await.context("handing the node over")?;
    let r = &outcome.record;
    tracing::info!(
        "untaint: node={} result={} action={} images={} required-missing={} seconds={:.1}{}",
        outcome.node,
        r.result,
        r.action.as_str(),
        r.images.as_deref().unwrap_or("-"),
        r.required_missing
            .map_or("-".to_string(), |n| n.to_string()),
        r.seconds,
        r.reason
            .as_ref()
            .map(|w| format!(" reason={w:?}"))
            .unwrap_or_default()
    );
    Ok(Exit::Ok)
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

/// Sets up logging: stderr without timestamps (journald adds them), plus
/// journald with structured fields when its socket exists. Never fails
/// because journald is absent or refuses the connection.
///
/// Under a unit with `StandardError=journal` or `journal+console`, stderr
/// already reaches the journal (`$JOURNAL_STREAM` names it), so the native
/// journald layer is left out: each line appears once, and `+console` still
/// gets it. Run by hand or from cloud-init's runcmd, prewarm logs both to
/// stderr and to the journal.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::prelude::*;
    // -v and -vv raise prewarm's own level, not that of every library.
    // kube's client logs an ERROR of its own for every request the retry
    // loop repeats; prewarm logs the retry and the final error itself.
    let default = match verbose {
        0 => "info,kube_client=off",
        1 => "info,kube_client=off,prewarm=debug",
        _ => "info,kube_client=off,prewarm=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PREWARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // No timestamps (journald adds them), except seconds since start at -vv,
    // for reading a run's timeline.
    let (plain, timed) = if verbose >= 2 {
        let layer = tracing_subscriber::fmt::layer()
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        (None, Some(layer))
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .without_time()
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        (Some(layer), None)
    };
    let journald = if std::path::Path::new("/run/systemd/journal/socket").exists()
        && !systemd::stderr_is_journal()
    {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(timed)
        .with(journald)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn status(code: tonic::Code) -> tonic::Status {
        tonic::Status::new(code, "x")
    }

    /// Every documented code an error can give, and the errors that must
    /// not give one. Codes 0 and 3 come from a run's outcome, not an error.
    #[test]
    fn exit_codes_follow_the_contract() {
        let config = ConfigError::Invalid {
            path: "/etc/prewarm/config.d/40-local.toml".into(),
            key: "pull.deadline".into(),
            message: "m".into(),
        };
        let hosts = registry::RegistryError::HostsConfig {
            path: "/etc/containerd/certs.d/r/hosts.toml".into(),
            key: "ca".into(),
            message: "m".into(),
        };
        let auth = registry::RegistryError::AuthFile {
            path: "/root/.docker/config.json".into(),
            message: "m".into(),
        };
        let registry_down = registry::RegistryError::NoHosts {
            image: "r/a:1".into(),
            domain: "r".into(),
            capability: "pull",
        };
        let connect = containerd::ContainerdError::Connect {
            socket: PathBuf::from("/run/x.sock"),
            message: "m".into(),
        };
        let locked = containerd::ContainerdError::Call {
            op: "Write",
            subject: "layer-sha256:1".into(),
            status: status(tonic::Code::Unavailable),
        };
        let cri = |code| cri::CriError::Call {
            op: "ImageStatus",
            subject: "r/a:1".into(),
            status: status(code),
        };
        let undetected = node::register::RegisterError::Undetected {
            checked: "c".into(),
        };
        let kubeconfig = node::api::ApiError::Kubeconfig {
            path: "/etc/kubernetes/kubelet.conf".into(),
            message: "m".into(),
        };
        let forbidden = node::api::ApiError::Status {
            node: "n".into(),
            op: "patch",
            principal: "p".into(),
            code: 403,
            reason: "Forbidden".into(),
            message: "m".into(),
        };
        let never = node::untaint::UntaintError::NeverAppeared {
            node: "n".into(),
            waited: std::time::Duration::from_secs(1),
        };
        let clock = node::untaint::UntaintError::Clock(std::io::Error::other("x"));
        let incomplete = sources::Incomplete {
            failed: "team".into(),
        };
        let bad_list = sources::SourceError::Read {
            list: "l".into(),
            message: "m".into(),
        };

        let cases: Vec<(anyhow::Error, Exit)> = vec![
            (anyhow::anyhow!("something else"), Exit::Failure),
            (config.into(), Exit::Config),
            (hosts.into(), Exit::Config),
            (auth.into(), Exit::Config),
            (registry_down.into(), Exit::Failure),
            (undetected.into(), Exit::Config),
            (kubeconfig.into(), Exit::Config),
            (bad_list.into(), Exit::Config),
            (connect.into(), Exit::Unreachable),
            (locked.into(), Exit::Failure),
            (cri(tonic::Code::Unavailable).into(), Exit::Unreachable),
            (cri(tonic::Code::Unimplemented).into(), Exit::Unreachable),
            (cri(tonic::Code::NotFound).into(), Exit::Failure),
            (forbidden.into(), Exit::KubeApi),
            (never.into(), Exit::KubeApi),
            (clock.into(), Exit::Failure),
            (incomplete.into(), Exit::ListUnavailable),
        ];
        for (e, want) in cases {
            let shown = error_chain(e.as_ref());
            assert_eq!(exit_for(&e), want, "{shown}");
            // The code does not depend on context wrapped around the cause.
            let wrapped = e.context("pulling r/a:1");
            assert_eq!(exit_for(&wrapped), want, "{shown}");
        }
        let numbers = [
            Exit::Ok,
            Exit::Failure,
            Exit::Config,
            Exit::RequiredMissing,
            Exit::Unreachable,
            Exit::KubeApi,
            Exit::ListUnavailable,
        ]
        .map(|e| e as i32);
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn error_chain_names_each_cause_once() {
        let e = ConfigError::Read {
            path: "/etc/prewarm/config.d/x.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let e = anyhow::Error::from(e).context("loading the configuration");
        assert_eq!(
            error_chain(e.as_ref()),
            "loading the configuration: reading /etc/prewarm/config.d/x.toml: entity not found"
        );
    }
}
