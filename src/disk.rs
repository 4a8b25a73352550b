//! Free space on the filesystem that holds containerd's content and
//! snapshots.

use std::path::{Path, PathBuf};

/// A statvfs reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub total: u64,
    /// Available to unprivileged writers (what kubelet's eviction sees).
    pub available: u64,
}

/// Reading disk usage failed.
#[derive(Debug, thiserror::Error)]
#[error("statvfs {path}")]
pub struct DiskError {
    pub path: PathBuf,
    pub source: nix::Error,
}

/// Something that can report disk usage (a trait so the planner's callers
/// can be tested without a filesystem).
pub trait DiskProbe: Send + Sync {
    fn usage(&self) -> Result<DiskUsage, DiskError>;
}

/// statvfs on a path.
#[derive(Debug, Clone)]
pub struct Statvfs(pub PathBuf);

impl DiskProbe for Statvfs {
    fn usage(&self) -> Result<DiskUsage, DiskError> {
        statvfs(&self.0)
    }
}

/// statvfs on `path`.
pub fn statvfs(path: &Path) -> Result<DiskUsage, DiskError> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|source| DiskError {
        path: path.to_path_buf(),
        source,
    })?;
    let frag = s.fragment_size() as u64;
    Ok(DiskUsage {
        total: s.blocks() as u64 * frag,
        available: s.blocks_available() as u64 * frag,
    })
}
