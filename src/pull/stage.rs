//! One pass per layer (`[pull] unpack-while-downloading`): each layer is
//! unpacked while it downloads, into a snapshot of its own with no parent
//! (a directory on the snapshotter's filesystem, held by the image's
//! lease), side by side with the other layers. Once its parent is
//! committed, the staged directory is swapped into place as the upper
//! directory of the real snapshot, which is then committed as containerd's
//! own unpack would be: the diff ID checked first, snapshot bookkeeping
//! containerd's.
//!
//! Only overlayfs snapshots can take a directory made elsewhere (a native
//! snapshot is a copy of its parent). Where the download does not pass the
//! whole blob through (it resumed a partial ingest, or another writer had
//! it), the layer is unpacked from the content store as before.

use super::fetch::{Fetcher, Reserve};
use super::resolve::Resolved;
use super::PullError;
use crate::containerd::{unique_key, Containerd, Mount};
use crate::extract::{Applied, Target, Whiteouts};
use crate::throttle::Bandwidth;
use crate::unpack::{extract_stream, target_of, Tap};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The snapshot keys of staged layers begin so.
pub const STAGE_PREFIX: &str = "prewarm-stage";

/// A layer's blob in the content store, and maybe the layer already
/// unpacked beside it.
pub enum Fetched {
    /// Only the blob (or nothing, the layer being unpacked already).
    Blob,
    Staged(Staged),
}

/// A layer unpacked into a snapshot of its own, waiting for its parent.
pub struct Staged {
    /// The staging snapshot's key.
    pub key: String,
    /// Its directory.
    pub root: PathBuf,
    pub applied: Applied,
}

/// Stages layers for one image.
pub struct Stager<'a> {
    pub containerd: &'a Containerd,
    pub snapshotter: &'a str,
    pub fetcher: &'a Fetcher<'a>,
    pub reserve: &'a Reserve,
    /// prewarm's own file writes are held to `write-bandwidth`.
    pub pace: &'a Arc<Bandwidth>,
    pub unpack_ratio: f64,
    /// Staging snapshots made and not yet removed.
    pub made: std::sync::Mutex<Vec<String>>,
}

impl Stager<'_> {
    /// Downloads layer `i` of `r` and unpacks it at the same time into a
    /// new staging snapshot.
    pub async fn stage(
        &self,
        r: &Resolved,
        i: usize,
        lease: &str,
        labels: HashMap<String, String>,
        received: &AtomicU64,
    ) -> Result<Fetched, PullError> {
        let layer = &r.layers[i];
        self.reserve.check(r.layer_unpacked(i, self.unpack_ratio))?;
        let key = stage_key(&r.chain_ids[i]);
        let mounts = self
            .containerd
            .snapshot_prepare(self.snapshotter, &key, "", HashMap::new(), lease)
            .await?
            .unwrap_or_default();
        self.made_list().push(key.clone());
        let root = match target_of(&mounts) {
            Some(t) if t.whiteouts == Whiteouts::Remove => t.root,
            _ => {
                tracing::debug!(
                    ?mounts,
                    "no directory to stage in: the layer is unpacked after"
                );
                self.remove(&key, lease).await;
                self.fetch(r, i, lease, labels, received, None).await?;
                return Ok(Fetched::Blob);
            }
        };
        let target = Target {
            root: root.clone(),
            parents: Vec::new(),
            // What becomes an overlay upper directory writes whiteouts in
            // overlay form; a first layer is a plain directory.
            whiteouts: if i == 0 {
                Whiteouts::Remove
            } else {
                Whiteouts::Overlay
            },
            parents_later: i > 0,
        };
        let (tap, tapped) = Tap::new();
        let download = async {
            let fetched = self.fetch(r, i, lease, labels, received, Some(&tap)).await;
            let whole = tap.close(layer.size.max(0) as u64).await;
            fetched.map(|()| whole)
        };
        let both = async {
            tokio::join!(
                download,
                extract_stream(layer, tapped, target, self.pace.clone())
            )
        };
        let (fetched, applied) = tokio::select! {
            both = both => both,
            full = self.reserve.watch() => {
                self.remove(&key, lease).await;
                return Err(full);
            }
        };
        match (fetched, applied) {
            (Ok(true), Ok(applied)) => Ok(Fetched::Staged(Staged { key, root, applied })),
            (Ok(false), _) => {
                tracing::debug!(layer = %layer.digest, "the download did not pass the whole blob: unpacking it from the store");
                self.remove(&key, lease).await;
                Ok(Fetched::Blob)
            }
            (Ok(true), Err(e)) => {
                self.remove(&key, lease).await;
                Err(e.into())
            }
            (Err(e), _) => {
                self.remove(&key, lease).await;
                Err(e)
            }
        }
    }

    async fn fetch(
        &self,
        r: &Resolved,
        i: usize,
        lease: &str,
        labels: HashMap<String, String>,
        received: &AtomicU64,
        tap: Option<&Tap>,
    ) -> Result<(), PullError> {
        self.fetcher
            .fetch_layer(
                r.source.as_ref(),
                &r.entry.reference,
                &r.layers[i],
                lease,
                labels,
                received,
                tap,
            )
            .await
    }

    fn made_list(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes every staging snapshot not removed yet.
    pub async fn clear(&self, lease: &str) {
        let left = std::mem::take(&mut *self.made_list());
        for key in left {
            self.remove(&key, lease).await;
        }
    }

    /// Removes a staging snapshot; a failure only costs space until the
    /// lease expires.
    pub async fn remove(&self, key: &str, lease: &str) {
        self.made_list().retain(|k| k != key);
        if let Err(e) = self
            .containerd
            .snapshot_remove(self.snapshotter, key, Some(lease))
            .await
        {
            tracing::warn!(error = %e, %key, "removing a staging snapshot");
        }
    }
}

/// Moves staged layer `i` into the prepared snapshot `mounts` in one
/// rename, and gives the directories it made on the way their lower's
/// mode and owner. `false` when the mounts cannot take it (not an overlay
/// upper directory, or not the kind the layer was staged for): the caller
/// unpacks the layer another way.
pub fn place(staged: &Staged, i: usize, mounts: &[Mount]) -> std::io::Result<bool> {
    let Some(t) = target_of(mounts) else {
        return Ok(false);
    };
    let fits = match t.whiteouts {
        Whiteouts::Remove => i == 0,
        Whiteouts::Overlay => i > 0,
    };
    if !fits {
        return Ok(false);
    }
    // The snapshotter chose the upper directory's owner and mode (a
    // parent's root owner, under user namespaces): keep them.
    let made = std::fs::symlink_metadata(&t.root)?;
    exchange(&staged.root, &t.root)?;
    crate::extract::lchown(&t.root, made.uid(), made.gid())?;
    std::fs::set_permissions(
        &t.root,
        std::fs::Permissions::from_mode(made.mode() & 0o7777),
    )?;
    crate::extract::adopt_parents(&t.root, &staged.applied.implicit, &t.parents)?;
    Ok(true)
}

/// Swaps two directories on one filesystem in one step; where the
/// filesystem cannot, moves `from` over the empty `to`.
fn exchange(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call; renameat2
    // reads them and nothing else.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(e);
    }
    std::fs::rename(from, to)?;
    // The staging snapshot's own directory, empty, for its removal.
    std::fs::create_dir(from)
}

/// A staging snapshot key for chain ID `chain`, naming this process.
fn stage_key(chain: &str) -> String {
    unique_key(&format!("{STAGE_PREFIX}-{}", std::process::id()), chain)
}

/// Is `name` a staging snapshot whose run is over (no prewarm process has
/// its PID)?
pub fn is_stale(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(STAGE_PREFIX)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    if pid == std::process::id() {
        return false;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim_end() != "prewarm"
}
