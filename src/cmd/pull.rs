//! `prewarm pull`: the run, with the IO cap on containerd for its
//! duration, the report, and the unpinning of de-listed images.

use super::{connect_with_lists, list_exit, stop_signal};
use crate::config::{self, Settings};
use crate::{error_chain, Exit};
use crate::{gc, iocap, pull, report, sources, throttle};
use anyhow::Context;
use std::time::Instant;

pub(super) async fn run(settings: Settings) -> anyhow::Result<Exit> {
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
pub(super) async fn unpin_delisted(
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
pub(super) fn cap_containerd_writes(
    engine: &pull::Engine,
) -> Result<Option<iocap::IoCap>, iocap::IoCapError> {
    let s = &engine.settings;
    let state = iocap_state_path(s);
    iocap::recover(&state)?;
    if s.io_limits.is_empty() {
        return Ok(None);
    }
    let root = std::path::Path::new(&engine.reserve.path);
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
