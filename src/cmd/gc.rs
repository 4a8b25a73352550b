//! `prewarm gc`: de-listed images prewarm preloaded, unpinned or removed.

use crate::config::Settings;
use crate::Exit;
use crate::{containerd, gc, report, sources};

pub(super) async fn run(settings: Settings, apply: bool) -> anyhow::Result<Exit> {
    let lists = sources::load(&settings).await;
    if !lists.complete() {
        // Whatever a failed list names would look de-listed.
        return Err(sources::Incomplete::of(&lists).into());
    }
    let c = containerd::Containerd::connect(&settings.containerd).await?;
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
                    out!("{verb}remove {name}  ({})", g.target);
                }
                continue;
            }
            Some(report::Kept::InUse(ids)) => format!("in use by container {}", ids.join(", ")),
            Some(report::Kept::PinnedByOther(n)) => format!("{n} is pinned, not by prewarm"),
        };
        for name in &g.delisted {
            out!("keep {name}  ({}): {why}", g.target);
        }
        for name in g.unpin() {
            out!("{verb}unpin {name}");
        }
    }
    out!(
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
