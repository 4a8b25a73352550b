//! What `prewarm plan`, `prewarm pull` and `prewarm status` do, as values:
//! the commands in `cmd/` only print them. Tests call these as the binary
//! does.

use crate::config::Settings;
use crate::plan::Budget;
use crate::pull::{Engine, PlannedImage};
use crate::report::{GcReport, IoCapReport, Report};
use crate::{error_chain, gc, iocap, sources, throttle, Exit};
use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use std::time::Instant;

/// What a pull would do, and on which disk.
#[derive(Debug)]
pub struct Plan {
    /// The image lists read, as the report shows them.
    pub lists: Vec<crate::report::SourceReport>,
    /// Their revision, as the Node's `prewarm.io/list-revision` will say.
    pub list_revision: Option<String>,
    /// Where containerd's image filesystem is.
    pub disk_path: String,
    pub budget: Budget,
    /// Every listed image, in plan order.
    pub images: Vec<PlannedImage>,
    /// 0, or 6 when a required list could not be read.
    pub exit: Exit,
    /// What on this node would undo the preload.
    pub warnings: Vec<String>,
}

/// `prewarm plan`: resolves and plans without writing anything.
pub async fn plan(settings: Settings) -> anyhow::Result<Plan> {
    let (engine, lists) = connect_with_lists(settings).await?;
    let (budget, images) = engine.plan().await?;
    let planned: u64 = images
        .iter()
        .filter(|i| matches!(i.decision, Ok(crate::plan::Decision::Pull)))
        .map(|i| i.need)
        .sum();
    let used = budget.total.saturating_sub(budget.available) + planned;
    let warnings = node_warnings(
        &engine.settings,
        Some(&engine.containerd),
        percent(used, budget.total),
    )
    .await;
    Ok(Plan {
        exit: list_exit(&lists, Exit::Ok),
        list_revision: lists.revision,
        lists: lists.reports,
        disk_path: engine.reserve.path.clone(),
        budget,
        images,
        warnings,
    })
}

/// `used` as a share of `total`, in percent.
fn percent(used: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| used as f64 * 100.0 / total as f64)
}

/// What on this node would undo a preload: kubelet's image GC and
/// credential checks (from its configuration), a containerd that does not
/// show kubelet the pin, and the image filesystem's use once the images are
/// in (`use_after`, percent) against kubelet's GC threshold.
pub async fn node_warnings(
    settings: &Settings,
    containerd: Option<&crate::containerd::Containerd>,
    use_after: Option<f64>,
) -> Vec<String> {
    let r = &settings.register;
    let mut out = crate::warnings::Kubelet::read(&r.kubelet_config, &r.kubelet_config_dir)
        .warnings(use_after);
    if let Some(c) = containerd {
        match c.version().await {
            Ok(v) => out.extend(crate::warnings::containerd(&v, settings.containerd.pin)),
            Err(e) => tracing::debug!(error = %e, "containerd's version, for warnings"),
        }
    }
    out
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
    tokio::pin!(stop);
    let one_at_a_time = tokio::select! {
        held = hold_run_lock(&settings) => held?,
        why = &mut stop => anyhow::bail!("{why} while waiting for another prewarm pull"),
    };
    let report_path = settings.pull.report.clone();
    run_locked(settings, stop, report_path, one_at_a_time).await
}

/// How `prewarm refresh` went.
#[derive(Debug)]
pub enum Refreshed {
    /// `[refresh] enabled` is false: nothing was read or written.
    Off,
    /// A pull or another refresh holds the run lock (named): this pass is
    /// left out, nothing read or written.
    Busy(std::path::PathBuf),
    Ran(Box<Outcome>),
}

/// `prewarm refresh`: one pass over the current list on a serving node,
/// with the `[refresh]` caps and a disk budget held within kubelet's image
/// GC and eviction thresholds. It never waits: when a pull or another
/// refresh is running, this pass is left out. It never touches a taint or
/// kubelet's drop-ins; it writes its own report, not the boot pass's.
pub async fn refresh(
    settings: Settings,
    stop: impl std::future::Future<Output = String>,
) -> anyhow::Result<Refreshed> {
    if !settings.refresh.enabled {
        return Ok(Refreshed::Off);
    }
    let Some(one_at_a_time) = try_run_lock(&settings)? else {
        return Ok(Refreshed::Busy(run_dir(&settings).join("pull.lock")));
    };
    let r = &settings.register;
    let kubelet =
        crate::warnings::Kubelet::read(&r.kubelet_config, &r.kubelet_config_dir).image_fs_limits();
    let refreshing = settings.for_refresh(&kubelet);
    tracing::info!(
        "{}",
        refreshing.disk.limited_by.as_deref().unwrap_or_default()
    );
    let report_path = settings.refresh.report.clone();
    let stop = std::pin::pin!(stop);
    run_locked(refreshing, stop, report_path, one_at_a_time)
        .await
        .map(|o| Refreshed::Ran(Box::new(o)))
}

/// A pull or a refresh, holding the run lock: the run, with the IO cap on
/// containerd for its duration, the report written to `report_path`, and
/// the de-listed images unpinned.
async fn run_locked(
    settings: Settings,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = String>>,
    report_path: std::path::PathBuf,
    _one_at_a_time: Flock<std::fs::File>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let (mut engine, lists) = connect_with_lists(settings).await?;
    let io_cap = cap_containerd_writes(&engine);
    // The layers prewarm unpacks itself are its own writes: the same cap on
    // its own cgroup, where it has one of its own (prewarm.service).
    let own_cap = cap_own_writes(&engine, io_cap.as_ref().ok().and_then(Option::as_ref));
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
    let mut report = engine.pull(started, &mut stop).await;
    let use_after = report
        .disk
        .as_ref()
        .zip(engine.budget().ok())
        .and_then(|(d, b)| percent(b.total.saturating_sub(d.free_after), b.total));
    report.warnings = node_warnings(&engine.settings, Some(&engine.containerd), use_after).await;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
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
            own_cgroup: None,
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
        let own_name = own_cap.as_ref().map(iocap::IoCap::name);
        let kernel = own_cap
            .as_ref()
            .is_some_and(iocap::IoCap::caps_buffered_writes);
        if let Some(own) = own_cap {
            if let Err(e) = own.restore() {
                tracing::error!(error = %e, "restoring prewarm's own IO limits");
            }
        }
        if let Some(cap) = report.io_cap.as_mut() {
            cap.own_cgroup = own_name.clone();
            let own = match (&own_name, kernel) {
                (Some(name), true) => Some(format!(
                    "layers prewarm unpacks itself are capped on its own cgroup ({name})"
                )),
                _ if cap.write_bps.is_some() => Some(
                    "layers prewarm unpacks itself are written at write-bandwidth, by prewarm \
                     (write-iops is not paced)"
                        .to_string(),
                ),
                _ => None,
            };
            if let Some(own) = own {
                cap.note = Some(match cap.note.take() {
                    Some(n) => format!("{n}; {own}"),
                    None => own,
                });
            }
        }
    }
    report.sources = lists.reports.clone();
    report.list_revision = lists.revision.clone();
    report.gc = unpin_delisted(&engine, &lists, &report).await;
    report
        .write(&report_path)
        .with_context(|| format!("writing the report to {}", report_path.display()))?;
    if let Some(path) = &engine.settings.pull.metrics_file {
        crate::metrics::write(path, &crate::metrics::render(Some(&report), None));
    }
    let exit = list_exit(
        &lists,
        if report.summary.required_missing == 0 {
            Exit::Ok
        } else if !engine.containerd.answers().await {
            // What is missing is missing because containerd went away and
            // did not come back within the deadline.
            tracing::error!(socket = %engine.settings.containerd.socket.display(), "containerd does not answer");
            Exit::Unreachable
        } else {
            Exit::RequiredMissing
        },
    );
    Ok(Outcome { report, exit })
}

/// One listed image as kubelet sees it.
#[derive(Debug)]
pub struct Seen {
    pub entry: crate::config::ImageEntry,
    /// CRI finds it by `repo:tag` (or the entry names no tag).
    pub by_tag: bool,
    /// CRI finds it by `repo@digest`: the listed digest, or the one the
    /// tag's record points at.
    pub by_digest: bool,
    pub pinned: bool,
    /// The image ID CRI shows.
    pub image_id: Option<String>,
}

impl Seen {
    /// Present as kubelet needs it: by digest, and by tag when it has one.
    pub fn ok(&self) -> bool {
        self.by_digest && self.by_tag
    }
}

/// What `prewarm status` shows.
#[derive(Debug)]
pub struct Status {
    pub images: Vec<Seen>,
    /// 0, or 3 when a required image is not present.
    pub exit: Exit,
}

/// `prewarm status`: every listed image (the lists' too, from cached
/// copies when remote sources are unreachable) as CRI sees it.
pub async fn status(settings: Settings) -> anyhow::Result<Status> {
    let lists = sources::load(&settings).await;
    let c = crate::containerd::Containerd::connect(&settings.containerd).await?;
    let cri = crate::cri::Cri::new(c.channel());
    // Only records are read: the snapshotter is never asked.
    let store = crate::pull::inventory::ContainerdStore {
        containerd: c,
        snapshotter: String::new(),
    };
    let mut images = Vec::with_capacity(lists.images.len());
    for entry in lists.images {
        let by_tag = match entry.reference.tag_name() {
            Some(t) => cri.image_status(&t).await?,
            None => None,
        };
        let digest = match &entry.reference.digest {
            Some(d) => Some(d.clone()),
            None => crate::pull::inventory::held_digest(&store, &entry.reference).await?,
        };
        let by_digest = match &digest {
            Some(d) => cri.image_status(&entry.reference.digest_name(d)).await?,
            None => None,
        };
        let shown = by_digest.as_ref().or(by_tag.as_ref());
        images.push(Seen {
            by_tag: by_tag.is_some() || entry.reference.tag.is_none(),
            by_digest: by_digest.is_some(),
            pinned: shown.is_some_and(|i| i.pinned),
            image_id: shown.map(|i| i.id.clone()),
            entry,
        });
    }
    let missing = images
        .iter()
        .filter(|i| i.entry.required && !i.ok())
        .count();
    Ok(Status {
        images,
        exit: if missing > 0 {
            Exit::RequiredMissing
        } else {
            Exit::Ok
        },
    })
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

/// The IO cap on prewarm's own cgroup, for the layers it unpacks itself:
/// only with `[pull] unpack = "prewarm"`, a cap configured, and a cgroup of
/// its own (not the root one, nor containerd's, which is capped already).
/// Restored as containerd's is, from its own state file after a kill -9.
fn cap_own_writes(engine: &Engine, containerd: Option<&iocap::IoCap>) -> Option<iocap::IoCap> {
    let s = &engine.settings;
    let state = run_dir(s).join("iocap-own-state.json");
    if let Err(e) = iocap::recover(&state) {
        tracing::error!(error = %e, "restoring prewarm's own IO limits left by an earlier run");
    }
    if s.throttle.io_limits.is_empty() || s.pull.unpack != crate::config::Unpack::Prewarm {
        return None;
    }
    let target = match iocap::target_of(std::process::id(), std::path::Path::new("/sys/fs/cgroup"))
    {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(error = %e, "not capping prewarm's own writes on its cgroup; they are paced");
            return None;
        }
    };
    if containerd.is_some_and(|c| *c.target() == target) {
        return None;
    }
    let root = std::path::Path::new(&engine.reserve.path);
    iocap::IoCap::apply_to(target, root, s.throttle.io_limits, &state)
        .inspect_err(|e| tracing::warn!(error = %e, "capping prewarm's own writes; they are paced"))
        .ok()
}

/// Where the limits in force before a run are kept until restored: next
/// to the report, under /run, so a reboot (which resets cgroups) forgets
/// them too.
pub fn iocap_state_path(s: &Settings) -> std::path::PathBuf {
    run_dir(s).join("iocap-state.json")
}

/// Where a run keeps what lives as long as the boot: the report's
/// directory (`/run/prewarm`).
fn run_dir(s: &Settings) -> &std::path::Path {
    s.pull
        .report
        .parent()
        .unwrap_or(std::path::Path::new("/run/prewarm"))
}

/// How often a waiting run tries the lock again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// One pull at a time on a node. A second run (a unit restarted over a
/// running pull, or a pull by hand) waits for the first, for at most its
/// deadline, and then finds the images present. The report is written
/// under the lock, so the last one written describes the node as it is.
async fn hold_run_lock(s: &Settings) -> anyhow::Result<Flock<std::fs::File>> {
    let (path, mut file) = open_run_lock(s)?;
    let until = Instant::now() + s.pull.deadline;
    let mut said = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(held),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                file = f;
                if !said {
                    tracing::info!(lock = %path.display(), "another prewarm pull is running; waiting for it");
                    said = true;
                }
                if Instant::now() >= until {
                    anyhow::bail!(
                        "another prewarm pull held {} for the whole deadline of {:?}",
                        path.display(),
                        s.pull.deadline
                    );
                }
                tokio::time::sleep(LOCK_POLL).await;
            }
            Err((_, e)) => anyhow::bail!("locking {}: {e}", path.display()),
        }
    }
}

/// The run lock if it is free now, `None` when a run holds it.
fn try_run_lock(s: &Settings) -> anyhow::Result<Option<Flock<std::fs::File>>> {
    let (path, file) = open_run_lock(s)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(Some(held)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => anyhow::bail!("locking {}: {e}", path.display()),
    }
}

/// `pull.lock` beside the boot pass's report, which every pull and
/// refresh on the node takes.
fn open_run_lock(s: &Settings) -> anyhow::Result<(std::path::PathBuf, std::fs::File)> {
    let path = run_dir(s).join("pull.lock");
    std::fs::create_dir_all(run_dir(s))
        .with_context(|| format!("creating {}", run_dir(s).display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((path, file))
}
