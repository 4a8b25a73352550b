//! Applying a layer's tar stream to a directory, the way containerd's own
//! apply does, so that a snapshot prewarm fills is the snapshot containerd
//! would have made.
//!
//! What it keeps from containerd (`archive.Apply`, Linux):
//!
//! - Every entry name is cleaned lexically, with `..` stopping at the root;
//!   its parent directories are resolved inside the root, following
//!   symlinks as if the root were `/` (absolute targets start at the root,
//!   `..` never leaves it). Nothing is written outside the root, and the
//!   last component is never followed: an entry replaces what is there
//!   (a directory over a directory is merged).
//! - A hardlink's target is resolved the same way.
//! - Missing parent directories are created. Where a lower layer
//!   (`parents`, topmost first) has that directory, the new one takes its
//!   mode, owner, times and non-`trusted.` xattrs, as `WithParents` does;
//!   otherwise it is 0755.
//! - Whiteouts: on a first layer (applied to a plain directory) `.wh.name`
//!   removes `name` and `.wh..wh..opq` removes what the layer did not
//!   bring; on an overlay upper directory they become a 0:0 character
//!   device and the `trusted.overlay.opaque=y` xattr.
//! - Each entry gets its owner, then its xattrs (`SCHILY.xattr.*`), then
//!   its mode (setuid, setgid and sticky included; never on a symlink),
//!   then its times. Directory times are set last, once nothing more is
//!   written into them. Times outside the Unix epoch's range become 0.
//!
//! One difference, on purpose: containerd decides whether to chmod a
//! hardlink by looking its target name up relative to its own working
//! directory, on the host. Here the target inside the root decides. Tar
//! writers give a hardlink its target's mode, so both end the same.
//!
//! The diff ID is the SHA-256 of the whole uncompressed stream, trailing
//! blocks included, as containerd computes it.

use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";
/// Symlinks followed while resolving one path, as containerd allows.
const MAX_LINKS: usize = 255;

/// How whiteouts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// A plain directory (a first layer): remove what they name.
    Remove,
    /// An overlay upper directory: character devices and the opaque xattr.
    Overlay,
}

/// Where a layer goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The directory the layer is written into.
    pub root: PathBuf,
    /// The lower layers' directories, topmost first.
    pub parents: Vec<PathBuf>,
    pub whiteouts: Whiteouts,
    /// The lower layers are not written yet (a layer staged while its
    /// parents still arrive): the directories this layer creates on the
    /// way are listed in [`Applied::implicit`], for [`adopt_parents`] once
    /// the lowers are there. `parents` is then not read.
    pub parents_later: bool,
}

/// What an applied layer was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:…` of the uncompressed stream.
    pub diff_id: String,
    /// Bytes of file content in it.
    pub size: u64,
    /// Entries read.
    pub entries: u64,
    /// With [`Target::parents_later`]: the directories created only
    /// because an entry lay below them, relative to the root.
    pub implicit: Vec<PathBuf>,
}

/// Why a layer could not be applied. The caller names the image and layer.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The stream itself: the decompressor, the network, a broken tar.
    #[error("reading the layer")]
    Read(#[source] io::Error),
    /// One entry could not be written.
    #[error("entry {entry:?}: {message}")]
    Entry { entry: String, message: String },
}

/// Applies the tar stream `tar` to `target`. `pace` is told of every
/// chunk of file content about to be written, and may block to hold a
/// write rate.
pub fn apply(
    target: &Target,
    tar: impl Read,
    pace: &(dyn Fn(u64) + Sync),
) -> Result<Applied, ExtractError> {
    let mut hashed = Hashing {
        inner: tar,
        hash: Sha256::new(),
    };
    let mut applier = Applier {
        target,
        pace,
        unpacked: HashSet::new(),
        plain_dirs: HashSet::new(),
        implicit: HashSet::new(),
        dirs: Vec::new(),
        size: 0,
        entries: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut hashed);
        for entry in archive.entries().map_err(ExtractError::Read)? {
            let mut entry = entry.map_err(ExtractError::Read)?;
            applier.entry(&mut entry)?;
        }
    }
    applier.finish()?;
    // The digest covers what follows the last entry too.
    io::copy(&mut hashed, &mut io::sink()).map_err(ExtractError::Read)?;
    Ok(Applied {
        diff_id: crate::digest::finish(hashed.hash),
        size: applier.size,
        entries: applier.entries,
        implicit: applier
            .implicit
            .into_iter()
            .map(PathBuf::from_iter)
            .collect(),
    })
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that asks `pace` before each write.
struct Paced<'a, W> {
    inner: W,
    pace: &'a (dyn Fn(u64) + Sync),
}

impl<W: io::Write> io::Write for Paced<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (self.pace)(buf.len() as u64);
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An entry's times, as containerd sets them.
#[derive(Debug, Clone, Copy)]
struct Times {
    atime: (i64, i64),
    mtime: (i64, i64),
}

struct Applier<'a> {
    target: &'a Target,
    pace: &'a (dyn Fn(u64) + Sync),
    /// Paths this layer wrote, which an opaque whiteout keeps.
    unpacked: HashSet<PathBuf>,
    /// Parent paths already resolved to themselves: directories all the
    /// way down, no symlink on the way. Forgotten whenever something is
    /// removed.
    plain_dirs: HashSet<Vec<OsString>>,
    /// Directories made on the way, while the lowers are not there yet.
    implicit: HashSet<Vec<OsString>>,
    /// Directories whose times are set at the end.
    dirs: Vec<(Vec<OsString>, Times, String)>,
    size: u64,
    entries: u64,
}

impl Applier<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), ExtractError> {
        self.entries += 1;
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let err = |message: String| ExtractError::Entry {
            entry: shown.clone(),
            message,
        };
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let meta = Meta::of(entry).map_err(|e| err(format!("reading its header: {e}")))?;
        self.size = self.size.saturating_add(meta.size);
        let root = &self.target.root;
        let mut comps = clean(&raw_name);
        let Some(base) = comps.pop() else {
            // The root itself: containerd leaves it alone.
            return Ok(());
        };
        let parent_comps = if self.plain_dirs.contains(&comps) {
            comps
        } else {
            let resolved =
                resolve(root, comps.clone()).map_err(|e| err(format!("resolving: {e}")))?;
            if !resolved.is_empty() {
                let made = self.target.parents_later.then_some(&mut self.implicit);
                mkparent(root, &resolved, &self.target.parents, made)
                    .map_err(|e| err(format!("creating its parent directories: {e}")))?;
            }
            if resolved == comps {
                self.plain_dirs.insert(comps);
            }
            resolved
        };
        let ppath = join(root, &parent_comps);
        let path = ppath.join(&base);
        let base_bytes = base.as_bytes();

        // Whiteouts.
        if let Some(name) = base_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if base_bytes == WHITEOUT_OPAQUE {
                match self.target.whiteouts {
                    Whiteouts::Overlay => lsetxattr(&ppath, OPAQUE_XATTR, b"y", 0)
                        .map_err(|e| err(format!("marking {} opaque: {e}", ppath.display())))?,
                    Whiteouts::Remove => self
                        .forget_dirs()
                        .remove_not_unpacked(&ppath)
                        .map_err(|e| err(format!("clearing {}: {e}", ppath.display())))?,
                }
                return Ok(());
            }
            if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
                return Err(err("invalid whiteout name".into()));
            }
            let original = ppath.join(OsStr::from_bytes(name));
            match self.target.whiteouts {
                Whiteouts::Overlay => {
                    nix::sys::stat::mknod(
                        &original,
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::empty(),
                        0,
                    )
                    .map_err(|e| {
                        err(format!("writing the whiteout {}: {e}", original.display()))
                    })?;
                    lchown(&original, meta.uid, meta.gid).map_err(|e| err(e.to_string()))?;
                }
                Whiteouts::Remove => {
                    self.forget_dirs();
                    remove_all(&original)
                        .map_err(|e| err(format!("removing {}: {e}", original.display())))?
                }
            }
            return Ok(());
        }

        // Replace what is there, unless a directory meets a directory.
        if let Ok(existing) = std::fs::symlink_metadata(&path) {
            if !(existing.is_dir() && kind.is_dir()) {
                self.forget_dirs();
                remove_all(&path).map_err(|e| err(format!("replacing {}: {e}", path.display())))?;
            }
        }
        self.create(entry, &path, &meta, kind)
            .map_err(|e| err(e.to_string()))?;
        if kind.is_dir() {
            let mut full = parent_comps;
            full.push(base);
            // Its own entry says what it is.
            self.implicit.remove(&full);
            self.dirs.push((full, meta.times, shown.clone()));
        }
        if self.target.whiteouts == Whiteouts::Remove {
            self.unpacked.insert(path);
        }
        Ok(())
    }

    fn create<R: Read>(
        &self,
        entry: &mut tar::Entry<R>,
        path: &Path,
        meta: &Meta,
        kind: tar::EntryType,
    ) -> io::Result<()> {
        use tar::EntryType as T;
        let perm = meta.mode & 0o7777;
        let mut chmod = true;
        match kind {
            T::Directory => {
                if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                    std::fs::create_dir(path)?;
                }
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)?;
                let n = io::copy(
                    entry,
                    &mut Paced {
                        inner: &mut f,
                        pace: self.pace,
                    },
                )?;
                if n < meta.size && kind != T::GNUSparse {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the stream ended after {n} of its {} bytes", meta.size),
                    ));
                }
            }
            T::Char | T::Block | T::Fifo => {
                let flag = match kind {
                    T::Char => nix::sys::stat::SFlag::S_IFCHR,
                    T::Block => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                let dev = nix::sys::stat::makedev(meta.dev_major, meta.dev_minor);
                nix::sys::stat::mknod(
                    path,
                    flag,
                    nix::sys::stat::Mode::from_bits_truncate(perm as _),
                    dev,
                )?;
            }
            T::Link => {
                let link = meta.link.as_deref().unwrap_or_default();
                let target = self.hardlink_target(link)?;
                std::fs::hard_link(&target, path)?;
                chmod = !std::fs::symlink_metadata(&target)?.is_symlink();
            }
            T::Symlink => {
                let link = meta.link.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(OsStr::from_bytes(link), path)?;
                chmod = false;
            }
            other => {
                return Err(io::Error::other(format!(
                    "unhandled tar entry type {:?}",
                    other.as_byte() as char
                )))
            }
        }
        lchown(path, meta.uid, meta.gid)?;
        for (key, value) in &meta.xattrs {
            if let Err(e) = lsetxattr(path, key, value, 0) {
                // As containerd: a filesystem without xattrs, or a
                // security attribute the kernel refuses, is not fatal.
                let skip = e.raw_os_error() == Some(libc::ENOTSUP)
                    || (e.raw_os_error() == Some(libc::EPERM) && key.starts_with("security."));
                if !skip {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("setting xattr {key}: {e}"),
                    ));
                }
                tracing::debug!(xattr = %key, path = %path.display(), error = %e, "xattr not kept");
            }
        }
        if chmod {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm))?;
        }
        set_times(path, meta.times)
    }

    /// Drops what is known of the tree, before something is removed.
    fn forget_dirs(&mut self) -> &mut Self {
        self.plain_dirs.clear();
        self
    }

    /// A hardlink's target inside the root.
    fn hardlink_target(&self, link: &[u8]) -> io::Result<PathBuf> {
        let root = &self.target.root;
        let mut comps = clean(link);
        let Some(base) = comps.pop() else {
            return Ok(root.clone());
        };
        let parent = resolve(root, comps)?;
        Ok(join(root, &parent).join(base))
    }

    /// A first layer's opaque whiteout: removes what this layer did not
    /// write under `dir`.
    fn remove_not_unpacked(&self, dir: &Path) -> io::Result<()> {
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            let list = match std::fs::read_dir(&d) {
                Ok(l) => l,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for child in list {
                let p = child?.path();
                if self.unpacked.contains(&p) {
                    if std::fs::symlink_metadata(&p)?.is_dir() {
                        todo.push(p);
                    }
                } else {
                    remove_all(&p)?;
                }
            }
        }
        Ok(())
    }

    /// Directory times, once nothing more is written into them.
    fn finish(&mut self) -> Result<(), ExtractError> {
        for (comps, times, shown) in std::mem::take(&mut self.dirs) {
            let err = |message: String| ExtractError::Entry {
                entry: shown.clone(),
                message,
            };
            let resolved =
                resolve(&self.target.root, comps).map_err(|e| err(format!("resolving: {e}")))?;
            let path = join(&self.target.root, &resolved);
            set_times(&path, times).map_err(|e| err(format!("setting its times: {e}")))?;
        }
        Ok(())
    }
}

/// What an entry's header says, PAX records included.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    times: Times,
    link: Option<Vec<u8>>,
    dev_major: u64,
    dev_minor: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Meta> {
        let h = entry.header();
        let old = h.as_old();
        let mut uid = or_zero(h.uid(), &old.uid)?;
        let mut gid = or_zero(h.gid(), &old.gid)?;
        let mut mtime = (or_zero(h.mtime(), &old.mtime)? as i64, 0i64);
        let mut atime: Option<(i64, i64)> = None;
        let size = entry.size();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        // Empty or missing fields read as 0, as Go's tar reader has them.
        let (dev_major, dev_minor) = (
            h.device_major().ok().flatten().unwrap_or(0) as u64,
            h.device_minor().ok().flatten().unwrap_or(0) as u64,
        );
        let mode = or_zero(h.mode().map(u64::from), &old.mode)? as u32;
        if let Some(gnu) = h.as_gnu() {
            if let Ok(a) = gnu.atime() {
                if a != 0 {
                    atime = Some((a as i64, 0));
                }
            }
        }
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let text = std::str::from_utf8(value).unwrap_or_default();
                match key {
                    "uid" => uid = text.parse().unwrap_or(uid),
                    "gid" => gid = text.parse().unwrap_or(gid),
                    "mtime" => mtime = parse_pax_time(text).unwrap_or(mtime),
                    "atime" => atime = parse_pax_time(text).or(atime),
                    _ => {
                        if let Some(name) = key.strip_prefix(PAX_XATTR) {
                            xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        // containerd: atime is the later of atime and mtime.
        let atime = atime.filter(|a| *a > mtime).unwrap_or(mtime);
        Ok(Meta {
            mode,
            uid: uid as u32,
            gid: gid as u32,
            size,
            times: Times {
                atime: bound(atime),
                mtime: bound(mtime),
            },
            link,
            dev_major,
            dev_minor,
            xattrs,
        })
    }
}

/// A numeric header field; an empty one (all NULs or spaces, as some
/// writers leave uid, gid or mtime) reads as 0, as Go's tar reader, and so
/// containerd, has it.
fn or_zero(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

/// `seconds[.fraction]`, possibly negative, as PAX writes times.
fn parse_pax_time(s: &str) -> Option<(i64, i64)> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = whole.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(if neg {
        if nanos == 0 {
            (-secs, 0)
        } else {
            (-secs - 1, 1_000_000_000 - nanos)
        }
    } else {
        (secs, nanos)
    })
}

/// containerd's `boundTime`: times before the epoch become the epoch.
fn bound(t: (i64, i64)) -> (i64, i64) {
    if t.0 < 0 {
        (0, 0)
    } else {
        t
    }
}

/// The name's components, cleaned lexically: `.` and empty ones dropped,
/// `..` taking one back and never going above the root.
fn clean(name: &[u8]) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    out
}

fn join(root: &Path, comps: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(comps);
    p
}

/// Resolves `comps` inside `root` as if `root` were `/`: symlinks are
/// followed, absolute targets start at `root`, and `..` stops there.
/// Components that do not exist are taken as they are.
fn resolve(root: &Path, mut comps: Vec<OsString>) -> io::Result<Vec<OsString>> {
    let mut links = 0;
    'again: loop {
        let mut cur = root.to_path_buf();
        for i in 0..comps.len() {
            cur.push(&comps[i]);
            let meta = match std::fs::symlink_metadata(&cur) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(comps),
                Err(e) => return Err(e),
            };
            if !meta.is_symlink() {
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::other("too many levels of symbolic links"));
            }
            let target = std::fs::read_link(&cur)?;
            let mut joined: Vec<u8> = Vec::new();
            if !target.is_absolute() {
                for c in &comps[..i] {
                    joined.extend_from_slice(c.as_bytes());
                    joined.push(b'/');
                }
            }
            joined.extend_from_slice(target.as_os_str().as_bytes());
            for c in &comps[i + 1..] {
                joined.push(b'/');
                joined.extend_from_slice(c.as_bytes());
            }
            comps = clean(&joined);
            continue 'again;
        }
        return Ok(comps);
    }
}

/// Creates the missing directories of `comps` under `root`, each taking
/// the mode, owner, times and xattrs of the same directory in the topmost
/// parent layer that has one (a non-directory there stops the search).
/// With `made`, the lowers are not there yet: the new directories are
/// listed in it instead, and keep 0755 until [`adopt_parents`].
fn mkparent(
    root: &Path,
    comps: &[OsString],
    parents: &[PathBuf],
    mut made: Option<&mut HashSet<Vec<OsString>>>,
) -> io::Result<()> {
    let mut path = root.to_path_buf();
    for (depth, c) in comps.iter().enumerate() {
        path.push(c);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        match made.as_deref_mut() {
            Some(made) => {
                made.insert(comps[..=depth].to_vec());
            }
            None => {
                adopt(&path, &comps[..=depth], parents, true)?;
            }
        }
    }
    Ok(())
}

/// Gives the directories a staged layer created on the way (`implicit`,
/// relative to `root`) what [`mkparent`] would have given them had the
/// lowers been there: the mode, owner and xattrs of the topmost lower
/// directory at that path. One no lower has takes its parent's group when
/// that parent is setgid, as the kernel would have given it at `mkdir`.
/// Their times are left as they are: in containerd's apply too, the files
/// written into them move them on.
pub fn adopt_parents(root: &Path, implicit: &[PathBuf], parents: &[PathBuf]) -> io::Result<()> {
    // Parents first: a child's group can follow its parent's.
    let mut implicit: Vec<&PathBuf> = implicit.iter().collect();
    implicit.sort_by_key(|p| p.components().count());
    for rel in implicit {
        let path = root.join(rel);
        // Removed again, or replaced, later in the layer: nothing to adopt.
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let comps: Vec<OsString> = rel.iter().map(OsStr::to_os_string).collect();
        if !adopt(&path, &comps, parents, false)? {
            let parent = std::fs::symlink_metadata(path.parent().unwrap_or(root))?;
            if parent.mode() & libc::S_ISGID != 0 {
                let own = std::fs::symlink_metadata(&path)?;
                lchown(&path, own.uid(), parent.gid())?;
            }
        }
    }
    Ok(())
}

/// Copies the topmost lower directory at `comps` onto the new directory
/// `path`: owner, mode, xattrs, and with `times` its times. False when no
/// lower has a directory there.
fn adopt(path: &Path, comps: &[OsString], parents: &[PathBuf], times: bool) -> io::Result<bool> {
    for lower in parents {
        let Ok(rel) = resolve(lower, comps.to_vec()) else {
            break;
        };
        let lower_path = join(lower, &rel);
        match std::fs::symlink_metadata(&lower_path) {
            Ok(m) if m.is_dir() => {
                copy_dir_info(&m, path, times)?;
                copy_up_xattrs(&lower_path, path)?;
                return Ok(true);
            }
            // Replaced in that layer: nothing to copy.
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

fn copy_dir_info(from: &std::fs::Metadata, to: &Path, times: bool) -> io::Result<()> {
    lchown(to, from.uid(), from.gid())?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(from.mode() & 0o7777))?;
    if !times {
        return Ok(());
    }
    set_times(
        to,
        Times {
            atime: (from.atime(), from.atime_nsec()),
            mtime: (from.mtime(), from.mtime_nsec()),
        },
    )
}

/// The lower directory's xattrs, except the `trusted.` ones (overlay's
/// own among them), as containerd copies them up.
fn copy_up_xattrs(from: &Path, to: &Path) -> io::Result<()> {
    for key in llistxattr(from)? {
        if key.starts_with("trusted.") {
            continue;
        }
        let Some(value) = lgetxattr(from, &key)? else {
            continue;
        };
        if let Err(e) = lsetxattr(to, &key, &value, libc::XATTR_CREATE) {
            if !matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EEXIST)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Removes a file, or a directory and everything in it; nothing there is
/// fine. Never follows a symlink.
fn remove_all(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

pub(crate) fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| io::Error::new(e.kind(), format!("chown {uid}:{gid}: {e}")))
}

fn set_times(path: &Path, t: Times) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let spec = |(s, ns): (i64, i64)| TimeSpec::new(s, ns);
    utimensat(
        None,
        path,
        &spec(t.atime),
        &spec(t.mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io::Error::other(format!("setting times: {e}")))
}

fn lsetxattr(path: &Path, key: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let p = cpath(path)?;
    let k = CString::new(key).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and live across the call;
    // the value pointer and length describe one live slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lgetxattr(path: &Path, key: &str) -> io::Result<Option<Vec<u8>>> {
    let p = cpath(path)?;
    let k = CString::new(key).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the buffer pointer and length describe one live Vec.
        let n =
            unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            _ => return Err(e),
        }
    }
}

fn llistxattr(path: &Path) -> io::Result<Vec<String>> {
    let p = cpath(path)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: the buffer pointer and length describe one live Vec.
        let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|k| !k.is_empty())
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
}
