//! prewarm's in-process unpack against containerd's own unpack of the same
//! image: every layer's snapshot directory and the merged root filesystem
//! must come out the same, down to modes, owners, xattrs, device numbers,
//! link targets, times and the overlay whiteouts. Used by `tests/unpack.rs`
//! on the installed containerd and by `tests/versions.rs` on others.

use super::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use testbed::tarball::Layer;
use testbed::{Compression, Containerd, LayerSpec};

/// Four layers (gzip, zstd, none, gzip) with what images carry and the corners
/// of the layer format: special modes and owners, xattrs, links, devices,
/// long and non-ASCII names, sub-second times, whiteouts of files and of
/// directories, opaque directories, replacements, and implicit parents
/// that exist in a lower layer.
fn fidelity_layers() -> Vec<LayerSpec> {
    let first = Layer::new()
        .corners()
        .file("etc/gone", 0o644, (0, 0), b"x")
        .file("etc/kept", 0o644, (0, 0), b"x")
        .dir("opt", 0o750, (7, 8))
        .dir("opt/app", 0o711, (7, 8))
        .file("opt/app/old", 0o644, (7, 8), b"x")
        .file("a", 0o644, (0, 0), b"file, then a directory")
        .dir("b", 0o755, (0, 0))
        .file("b/inside", 0o644, (0, 0), b"x")
        .dir("c", 0o700, (0, 0))
        .file("c/kept", 0o644, (0, 0), b"x")
        .dir("gonedir", 0o755, (0, 0))
        .file("gonedir/x", 0o644, (0, 0), b"x")
        .file("early", 0o644, (0, 0), b"x")
        .file(".wh.early", 0o644, (0, 0), b"")
        .bytes();
    let second = Layer::new()
        .file("opt/app/.wh..wh..opq", 0o644, (0, 0), b"")
        .file("opt/app/new", 0o600, (7, 8), b"y")
        .file("opt/app/deeper/x", 0o644, (0, 0), b"x")
        .file("etc/.wh.gone", 0o644, (0, 0), b"")
        .file(".wh.gonedir", 0o644, (0, 0), b"")
        .dir("a", 0o750, (0, 0))
        .link(tar::EntryType::Symlink, "b", "c")
        .dir("c", 0o755, (0, 0))
        .file("srv/sub/file", 0o644, (1000, 1001), b"z")
        .bytes();
    let third = Layer::new()
        .file("a/x", 0o644, (0, 0), b"x")
        .file("usr/bin/newtool", 0o755, (0, 0), b"new")
        .link(tar::EntryType::Link, "usr/bin/newtool2", "usr/bin/newtool")
        .file("srv/sub/file2", 0o644, (0, 0), b"w")
        .bytes();
    [
        (first, Compression::Gzip),
        (second, Compression::Zstd),
        (third, Compression::None),
    ]
    .into_iter()
    .map(|(tar, compression)| LayerSpec {
        files: Vec::new(),
        compression,
        tar: Some(tar),
        ..Default::default()
    })
    // And one as the testbed writes layers, with empty uid, gid and
    // mtime fields (Go's tar reader takes them as 0).
    .chain([LayerSpec {
        files: vec![("usr/lib/libplain.so".into(), vec![9; 3000])],
        ..Default::default()
    }])
    .collect()
}

/// What is compared of one path.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    content: Option<String>,
    link: Option<PathBuf>,
    /// Times that came from the layer (all before the test began); what an
    /// unpacker made on the way (a parent directory, a whiteout) has the
    /// time it was made, which differs.
    mtime: Option<(i64, i64)>,
    xattrs: BTreeMap<String, String>,
    nlink: u64,
}

fn tree(root: &Path, made_after: i64) -> BTreeMap<PathBuf, Node> {
    let xattrs = all_xattrs(root);
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        // S_IFMT: directory, file, link, char/block device, fifo.
        let kind = format!("{:o}", m.mode() >> 12);
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
        let content = ft
            .is_file()
            .then(|| prewarm::digest::sha256(&std::fs::read(&p).unwrap()));
        let link = ft.is_symlink().then(|| std::fs::read_link(&p).unwrap());
        let mtime = (m.mtime() < made_after).then_some((m.mtime(), m.mtime_nsec()));
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        out.insert(
            rel,
            Node {
                kind,
                mode: m.permissions().mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                rdev: m.rdev(),
                content,
                link,
                mtime,
                xattrs: xattrs.get(&p).cloned().unwrap_or_default(),
                nlink: if ft.is_dir() { 0 } else { m.nlink() },
            },
        );
    }
    out
}

/// Every xattr under `root` (trusted.* included), by path.
fn all_xattrs(root: &Path) -> BTreeMap<PathBuf, BTreeMap<String, String>> {
    let out = Command::new("getfattr")
        .args(["-R", "-d", "-h", "-m", "-", "-e", "hex", "--absolute-names"])
        .arg(root)
        .output()
        .expect("getfattr (Debian's attr package)");
    let mut map: BTreeMap<PathBuf, BTreeMap<String, String>> = BTreeMap::new();
    let mut cur = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(f) = line.strip_prefix("# file: ") {
            cur = Some(PathBuf::from(f));
        } else if let (Some(f), Some((k, v))) = (&cur, line.split_once('=')) {
            map.entry(f.clone()).or_default().insert(k.into(), v.into());
        }
    }
    map
}

/// The directories of the layers under snapshot `chain` (topmost first),
/// read from the mounts of a view of it.
pub fn layer_dirs(c: &Containerd, chain: &str, view: &str) -> (Vec<PathBuf>, serde_json::Value) {
    let out = c
        .ctr(&["snapshots", "view", "--mounts", view, chain])
        .unwrap();
    let mounts: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let m = &mounts[0];
    let dirs = match field(m, "type").as_str().unwrap() {
        "bind" => vec![PathBuf::from(field(m, "source").as_str().unwrap())],
        _ => options(m)
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .unwrap()
            .split(':')
            .map(PathBuf::from)
            .collect(),
    };
    (dirs, m.clone())
}

/// A mount's field: ctr prints Go's field names (`Type`), or JSON ones.
fn field<'a>(m: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let mut upper = name.to_string();
    upper[..1].make_ascii_uppercase();
    m.get(name)
        .or_else(|| m.get(&upper))
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

fn options(m: &serde_json::Value) -> Vec<&str> {
    field(m, "options")
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect()
}

/// Mounts a view's mounts at `target` (read-only), for reading the merged
/// root filesystem.
pub fn mount_view(m: &serde_json::Value, target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    let status = Command::new("mount")
        .args(["-t", field(m, "type").as_str().unwrap()])
        .arg(field(m, "source").as_str().unwrap())
        .arg(target)
        .args(["-o", &options(m).join(",")])
        .status()
        .unwrap();
    assert!(status.success(), "mounting {m}");
}

pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Pulls one image shaped to cover the layer format with containerd's
/// unpack into `env`'s containerd, and with prewarm's into `other` (the
/// same version), and asserts both came out the same.
/// `pull` is added to prewarm's `[pull]` section.
pub async fn containerd_and_prewarm_agree(env: &Env, other: &Containerd, pull: &str) {
    let made_after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    let pushed = env.push_layers("fidelity/app:1", fidelity_layers());
    let refs = [(pushed.reference.as_str(), true)];

    // containerd's unpack, into the env's containerd.
    let by_containerd = env.config_with(&refs, "retries = 0\nunpack = \"containerd\"", "");
    let out = env.prewarm(&["pull", "--config", by_containerd.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.report().images[0].unpacked_by, ["containerd"]);
    env.assert_visible(&pushed, 0).await;

    // prewarm's, into the other one.
    let text = std::fs::read_to_string(&by_containerd)
        .unwrap()
        .replace(
            &format!("{:?}", env.containerd.socket),
            &format!("{:?}", other.socket),
        )
        .replace(
            "unpack = \"containerd\"",
            &format!("unpack = \"prewarm\"\n{pull}"),
        );
    let by_prewarm = env.path("by-prewarm.toml");
    std::fs::write(&by_prewarm, text).unwrap();
    let out = env.prewarm(&["pull", "--config", by_prewarm.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.report().images[0].unpacked_by, ["prewarm"]);
    let images = other.ctr(&["images", "ls", "-q"]).unwrap();
    assert!(images.contains(&pushed.reference), "{images}");

    let chains = prewarm::manifest::chain_ids(&pushed.manifests[0].diff_ids);
    let top = chains.last().unwrap();
    let (theirs, their_mounts) = layer_dirs(&env.containerd, top, "view-c");
    let (ours, our_mounts) = layer_dirs(other, top, "view-p");
    assert_eq!((theirs.len(), ours.len()), (4, 4));
    for (n, (t, o)) in theirs.iter().zip(&ours).enumerate() {
        let (t, o) = (tree(t, made_after), tree(o, made_after));
        assert!(t.len() > 2, "layer {n} has entries");
        for (path, node) in &t {
            assert_eq!(o.get(path), Some(node), "layer {} (topmost 0): {path:?}", n);
        }
        assert_eq!(
            o.keys().collect::<Vec<_>>(),
            t.keys().collect::<Vec<_>>(),
            "layer {n}"
        );
    }
    // The whiteouts really are in overlay form on our side.
    let wh = std::fs::symlink_metadata(ours[2].join("etc/gone")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));

    // And the root filesystem a container would see.
    let (mt, mo) = (env.path("merged-c"), env.path("merged-p"));
    mount_view(&their_mounts, &mt);
    let _ut = Unmount(mt.clone());
    mount_view(&our_mounts, &mo);
    let _uo = Unmount(mo.clone());
    let (t, o) = (tree(&mt, made_after), tree(&mo, made_after));
    assert!(!t.contains_key(Path::new("etc/gone")) && t.contains_key(Path::new("etc/kept")));
    assert!(!t.contains_key(Path::new("opt/app/old")));
    assert_eq!(t, o);
}
