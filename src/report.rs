//! The run report: one JSON file, written atomically, that the untaint step
//! and operators read; and the one summary line at the end of a run.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageStatus {
    /// Pulled in this run.
    Pulled,
    /// Already complete before this run.
    Present,
    /// Not pulled on purpose; `reason` says why.
    Skipped,
    /// Tried and failed; `reason` says why.
    Failed,
}

/// One image in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageReport {
    #[serde(rename = "ref")]
    pub reference: String,
    pub required: bool,
    pub priority: i32,
    /// The digest the reference resolved to (index or manifest).
    pub digest: Option<String>,
    /// The image ID kubelet reports: the config digest.
    pub image_id: Option<String>,
    pub status: ImageStatus,
    pub reason: Option<String>,
    /// Bytes downloaded in this run.
    pub bytes: u64,
    /// Compressed size of the image.
    pub size: u64,
    pub seconds: f64,
    /// Where the blobs came from: `registry` or `archive:<path>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The digest the node's `repo:tag` record held before, when the tag
    /// has since moved (drift); the record now points at `digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<String>,
    /// Who wrote the layers pulled in this run into their snapshots:
    /// `prewarm` or `containerd` (`[pull] unpack`, and the snapshotter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpacked_by: Vec<String>,
    /// The registry hosts (`host[:port]`, mirrors from hosts.toml among
    /// them) that served its layers in this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts that served one of its layers with the wrong digest; the
    /// layer was fetched again from another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_hosts: Vec<String>,
}

/// Totals over a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub planned: usize,
    pub pulled: usize,
    pub present: usize,
    pub skipped: usize,
    pub failed: usize,
    pub required_missing: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub version: u32,
    pub started_at: String,
    pub finished_at: String,
    pub platform: String,
    pub snapshotter: String,
    /// Configured bandwidth cap in bytes/s, if any.
    pub bandwidth: Option<u64>,
    /// Set when the run stopped early (deadline, signal).
    pub interrupted: Option<String>,
    /// The IO cap put on containerd for the run, if configured.
    #[serde(default)]
    pub io_cap: Option<IoCapReport>,
    /// Free space on the image filesystem before and after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskReport>,
    /// What on this node would undo the preload (kubelet's image GC,
    /// credential checks, containerd's version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The image list sources read (`[[sources]]`), fresh or cached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceReport>,
    /// The list's revision (see `sources::revision`), when every
    /// source was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_revision: Option<String>,
    pub images: Vec<ImageReport>,
    /// Unpinning and removal of de-listed images, when the list was
    /// complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcReport>,
    pub summary: Summary,
}

/// The image filesystem around a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskReport {
    pub path: String,
    pub free_before: u64,
    pub free_after: u64,
}

/// What became of one source in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceStatus {
    /// Read fresh.
    Read,
    /// Unreachable or refused; the last good copy was used.
    Cached,
    /// Unreachable or refused, and nothing to fall back to.
    Failed,
    /// The server answered a conditional GET with 304 Not Modified: the
    /// cached copy, current, was used.
    Unchanged,
}

/// One source in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    pub name: String,
    pub kind: String,
    pub required: bool,
    pub status: SourceStatus,
    /// Entries it contributed.
    pub images: usize,
    /// SHA-256 of the list used (url sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why the cache was used, or why the source failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The version the source said it served: a URL's `ETag`, a
    /// ConfigMap's `resourceVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// What the report says about the cap.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IoCapReport {
    pub cgroup: String,
    pub device: String,
    pub write_bps: Option<u64>,
    pub write_iops: Option<u64>,
    pub note: Option<String>,
    /// The cgroup of prewarm's own writes (the layers it unpacks), when
    /// the cap was put on it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_cgroup: Option<String>,
}

/// Why a de-listed image stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kept {
    /// Container records use it (their ids).
    InUse(Vec<String>),
    /// This record is pinned, and prewarm did not pin it.
    PinnedByOther(String),
}

/// The de-listed records of one image, and what happens to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The digest the records point at.
    pub target: String,
    /// De-listed records prewarm wrote.
    pub delisted: Vec<String>,
    /// Why they stay, if they do.
    pub kept: Option<Kept>,
    /// Of `delisted`, those prewarm pinned.
    pub pinned_by_us: Vec<String>,
    /// Every record pointing at `target` goes, so its content may be freed.
    pub frees_image: bool,
}

/// What a gc pass did or would do, for the report and the command line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GcReport {
    /// False for a dry run.
    pub applied: bool,
    pub removed: Vec<String>,
    pub unpinned: Vec<String>,
    /// De-listed images that stay, and why.
    pub kept: Vec<Group>,
    /// Content bytes referenced only by the removed images.
    pub freed_bytes: u64,
    /// Disk bytes of the unpacked layers (snapshots) only the removed
    /// images use.
    #[serde(default)]
    pub freed_snapshot_bytes: u64,
}

impl Summary {
    /// Totals for `images` over `seconds`.
    pub fn of(images: &[ImageReport], seconds: f64) -> Self {
        let count = |s| images.iter().filter(|i| i.status == s).count();
        Summary {
            planned: images.len(),
            pulled: count(ImageStatus::Pulled),
            present: count(ImageStatus::Present),
            skipped: count(ImageStatus::Skipped),
            failed: count(ImageStatus::Failed),
            required_missing: images
                .iter()
                .filter(|i| {
                    i.required && !matches!(i.status, ImageStatus::Pulled | ImageStatus::Present)
                })
                .count(),
            bytes: images.iter().map(|i| i.bytes).sum(),
            seconds,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "images planned={} pulled={} present={} skipped={} failed={} required-missing={} bytes={} seconds={:.1}",
            self.planned,
            self.pulled,
            self.present,
            self.skipped,
            self.failed,
            self.required_missing,
            self.bytes,
            self.seconds
        )
    }
}

impl Report {
    /// Writes the report as pretty JSON, atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        crate::atomic::write_atomic(path, &json)
    }

    /// Reads a report written by [`Report::write`].
    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("parsing {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(status: ImageStatus, required: bool, bytes: u64) -> ImageReport {
        ImageReport {
            reference: "r".into(),
            required,
            priority: 0,
            digest: None,
            image_id: None,
            status,
            reason: None,
            bytes,
            size: bytes,
            seconds: 0.0,
            origin: None,
            previous_digest: None,
            unpacked_by: Vec::new(),
            hosts: Vec::new(),
            rejected_hosts: Vec::new(),
        }
    }

    #[test]
    fn summary_counts_required_missing() {
        let images = [
            img(ImageStatus::Pulled, true, 10),
            img(ImageStatus::Present, true, 0),
            img(ImageStatus::Skipped, true, 0),
            img(ImageStatus::Failed, false, 3),
        ];
        let s = Summary::of(&images, 1.25);
        assert_eq!((s.pulled, s.present, s.skipped, s.failed), (1, 1, 1, 1));
        assert_eq!(s.required_missing, 1);
        assert_eq!(s.bytes, 13);
        assert_eq!(
            s.to_string(),
            "images planned=4 pulled=1 present=1 skipped=1 failed=1 required-missing=1 bytes=13 seconds=1.2"
        );
    }

    #[test]
    fn atomic_write_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/report.json");
        let r = Report {
            version: 1,
            started_at: "a".into(),
            finished_at: "b".into(),
            platform: "linux/amd64".into(),
            snapshotter: "overlayfs".into(),
            bandwidth: Some(5),
            interrupted: None,
            io_cap: None,
            disk: None,
            warnings: Vec::new(),
            sources: Vec::new(),
            list_revision: None,
            images: vec![img(ImageStatus::Pulled, true, 1)],
            gc: None,
            summary: Summary::default(),
        };
        r.write(&path).unwrap();
        assert_eq!(Report::read(&path).unwrap(), r);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
