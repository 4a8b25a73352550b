//! What `prewarm plan` and `prewarm pull` do, as values: the commands in
//! `cmd/` only print them. Tests call these as the binary does.

use crate::config::Settings;
use crate::plan::Budget;
use crate::pull::{Engine, PlannedImage};
use crate::report::{GcReport, IoCapReport, Report};
use crate::{error_chain, gc, iocap, sources, throttle, Exit};
use anyhow::Context;
use std::time::Instant;

/// What a pull would do, and on which disk.
#[derive(Debug)]
pub struct Plan {
    /// The image lists read, as the report shows them.
    pub lists: Vec<crate::report::SourceReport>,
    /// Where containerd's image filesystem is.
    pub disk_path: String,
    pub budget: Budget,
    /// Every listed image, in plan order.
    pub images: Vec<PlannedImage>,
    /// 0, or 6 when a required list could not be read.
    pub exit: Exit,
}

/// `prewarm plan`: resolves and plans without writing anything.
pub async fn plan(settings: Settings) -> anyhow::Result<Plan> {
    let (engine, lists) = connect_with_lists(settings).await?;
    let budget = engine.budget()?;
    let images = engine.plan().await?;
    Ok(Plan {
        exit: list_exit(&lists, Exit::Ok),
        lists: lists.reports,
        disk_path: engine.reserve.path.clone(),
        budget,
        images,
    })
}

/// How a pull ended.
#[derive(Debug)]
pub struct Outcome {
    /// As written to the report file.
    pub report: Report,
    pub exit: Exit,
}

/// `prewarm pull`: the run, with the IO cap on containerd for its
/// duration, the report written, and the de-listed images unpinned. It ends
/// early, with the reason in the report, when `stop` resolves.
pub async fn pull(
    settings: Settings,
    stop: impl std::future::Future<Output = String>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let report_path = settings.pull.report.clone();
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
        .throttle
        .io_limits
        .write_bps
        .and_then(std::num::NonZeroU64::new)
        .filter(|_| !kernel_caps);
    engine.unpack_pace = throttle::Bandwidth::new(pace);
    let mut report = engine.pull(started, stop).await;
    report.io_cap = match io_cap {
        Ok(None) => None,
        Ok(Some(cap)) => {
            let described = cap.describe(engine.settings.throttle.io_limits);
            if let Err(e) = cap.restore() {
                tracing::error!(error = %e, "restoring containerd's IO limits");
            }
            Some(described)
        }
        Err(e) => Some(IoCapReport {
            cgroup: String::new(),
            device: String::new(),
            write_bps: engine.settings.throttle.io_limits.write_bps,
            write_iops: engine.settings.throttle.io_limits.write_iops,
            note: Some(match pace {
                Some(_) => format!("not applied: {}; {}", error_chain(&e), iocap::PACED_NOTE),
                None => format!("not applied: {}", error_chain(&e)),
            }),
        }),
    };
    if engine.settings.pull.unpack == crate::config::Unpack::Prewarm {
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
    let exit = list_exit(
        &lists,
        if report.summary.required_missing > 0 {
            Exit::RequiredMissing
        } else {
            Exit::Ok
        },
    );
    Ok(Outcome { report, exit })
}

/// Reads the `[[sources]]` lists into `settings.images` and connects the
/// engine, with the archives found.
async fn connect_with_lists(mut settings: Settings) -> anyhow::Result<(Engine, sources::Loaded)> {
    let mut lists = sources::load(&settings).await;
    settings.images = std::mem::take(&mut lists.images);
    let mut engine = Engine::connect(settings).await?;
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

/// After a pull: unpin the images that left the list (and with `[pull] gc`,
/// remove those not in use). Only with a complete list and a finished run.
async fn unpin_delisted(
    engine: &Engine,
    lists: &sources::Loaded,
    report: &Report,
) -> Option<GcReport> {
    if !lists.complete() {
        tracing::warn!("an image list source failed: not unpinning or removing any image");
        return None;
    }
    if report.interrupted.is_some() {
        return None;
    }
    let mode = if engine.settings.pull.gc {
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
fn cap_containerd_writes(engine: &Engine) -> Result<Option<iocap::IoCap>, iocap::IoCapError> {
    let s = &engine.settings;
    let state = iocap_state_path(s);
    iocap::recover(&state)?;
    if s.throttle.io_limits.is_empty() {
        return Ok(None);
    }
    let root = std::path::Path::new(&engine.reserve.path);
    iocap::IoCap::apply(&s.containerd.socket, root, s.throttle.io_limits, &state)
        .map(Some)
        .inspect_err(
            |e| tracing::error!(error = %e, "capping containerd's writes; pulling without the cap"),
        )
}

/// Where the limits in force before a run are kept until restored: next
/// to the report, under /run, so a reboot (which resets cgroups) forgets
/// them too.
pub fn iocap_state_path(s: &Settings) -> std::path::PathBuf {
    s.pull
        .report
        .parent()
        .unwrap_or(std::path::Path::new("/run/prewarm"))
        .join("iocap-state.json")
}
