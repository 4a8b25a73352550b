//! `[pull] unpack = "prewarm"` against containerd's own unpack of the same
//! image, on real containerd: every layer's snapshot directory and the
//! merged root filesystem must come out the same, down to modes, owners,
//! xattrs, device numbers, link targets, times and the overlay whiteouts.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use testbed::tarball::Layer;
use testbed::{Compression, Containerd, Format, ImageSpec, LayerSpec};

const SECURITY_CAPABILITY: &[u8] = &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Four layers (gzip, zstd, none, gzip) with what images carry and the corners
/// of the layer format: special modes and owners, xattrs, links, devices,
/// long and non-ASCII names, sub-second times, whiteouts of files and of
/// directories, opaque directories, replacements, and implicit parents
/// that exist in a lower layer.
fn fidelity_layers() -> Vec<LayerSpec> {
    let long = format!("deep/{}/{}", "d".repeat(120), "f".repeat(140));
    let first = Layer::new()
        .dir("tmp", 0o1777, (0, 0))
        .dir("srv", 0o2750, (1000, 1001))
        .file("srv/data", 0o640, (1000, 1001), b"owned")
        .file("usr/bin/su", 0o4755, (0, 0), b"setuid")
        .file("usr/bin/wall", 0o2755, (0, 5), b"setgid")
        .pax(&[
            ("SCHILY.xattr.user.origin", b"layer-1"),
            ("SCHILY.xattr.security.capability", SECURITY_CAPABILITY),
            ("mtime", b"1700000000.123456789"),
        ])
        .file("usr/bin/ping", 0o755, (0, 0), b"caps")
        .link(tar::EntryType::Symlink, "usr/bin/sh", "dash")
        .link(tar::EntryType::Link, "usr/bin/su2", "usr/bin/su")
        .node(tar::EntryType::Char, "dev/null", 0o666, (1, 3))
        .node(tar::EntryType::Fifo, "run/fifo", 0o600, (0, 0))
        .file(&long, 0o644, (0, 0), b"long")
        .file("usr/share/ünïcødé/名前.txt", 0o644, (0, 0), b"names")
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
fn layer_dirs(c: &Containerd, chain: &str, view: &str) -> (Vec<PathBuf>, serde_json::Value) {
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
fn mount_view(m: &serde_json::Value, target: &Path) {
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

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_unpacks_what_containerd_unpacks() {
    let env = Env::start();
    let other = Containerd::start(&env.path("c2")).expect("starting a second containerd");
    let made_after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    let image = ImageSpec::linux("amd64", fidelity_layers());
    let pushed = push(
        &env.registry.host(),
        "fidelity/app:1",
        &[image],
        Format::Oci,
        &env.path("images"),
    );
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
        .replace("unpack = \"containerd\"", "unpack = \"prewarm\"");
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
    let (ours, our_mounts) = layer_dirs(&other, top, "view-p");
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

/// The env's config with the in-process unpack and `extra`.
fn prewarm_config(env: &Env, reference: &str, pull: &str, extra: &str) -> PathBuf {
    env.config_with(
        &[(reference, true)],
        &format!("unpack = \"prewarm\"\n{pull}"),
        extra,
    )
}

/// A layer whose config claims another diff ID is unpacked, found out and
/// never committed: no snapshot under the chain ID, no half-written
/// snapshot left behind, the image not recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_diff_id_is_never_committed() {
    let env = Env::start();
    let lie = LayerSpec {
        files: vec![("etc/motd".into(), b"hello".to_vec())],
        claimed_diff_id: Some(prewarm::digest::sha256(b"something else")),
        ..Default::default()
    };
    let pushed = push(
        &env.registry.host(),
        "lies/app:1",
        &[ImageSpec::linux("amd64", vec![lie])],
        Format::Oci,
        &env.path("images"),
    );
    let config = prewarm_config(&env, &pushed.reference, "retries = 1", "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 3);
    let report = env.report();
    let reason = report.images[0].reason.as_deref().unwrap_or("");
    assert!(reason.contains("but the image config says"), "{reason}");
    let client = env.client().await;
    let chain = &prewarm::manifest::chain_ids(&pushed.manifests[0].diff_ids)[0];
    assert!(!client.snapshot_exists("overlayfs", chain).await.unwrap());
    let snapshots = env
        .containerd
        .ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])
        .unwrap();
    assert_eq!(snapshots.lines().count(), 1, "only the header: {snapshots}");
    assert_eq!(
        env.containerd.ctr(&["images", "ls", "-q"]).unwrap().trim(),
        ""
    );
}

/// A layer that tries to write outside its snapshot, through a pull: what
/// containerd contains is contained, and every file lands inside the
/// snapshot's own directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_layer_stays_inside_its_snapshot() {
    let env = Env::start();
    let tar = Layer::new().escapes().bytes();
    let hostile = LayerSpec {
        tar: Some(tar),
        ..Default::default()
    };
    let pushed = push(
        &env.registry.host(),
        "hostile/app:1",
        &[ImageSpec::linux("amd64", vec![hostile])],
        Format::Oci,
        &env.path("images"),
    );
    let config = prewarm_config(
        &env,
        &pushed.reference,
        "retries = 0",
        "[throttle]\nwrite-bandwidth = \"64MiB/s\"\n",
    );
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.images[0].unpacked_by, ["prewarm"]);
    let note = report.io_cap.and_then(|c| c.note).unwrap_or_default();
    assert!(
        note.contains("written at write-bandwidth, by prewarm"),
        "{note}"
    );
    let snapshots = env
        .containerd
        .root
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let mut found = Vec::new();
    let mut todo = vec![env.dir.path().to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(p);
            } else if e.file_name().to_string_lossy().starts_with("escape-") {
                found.push(p);
            }
        }
    }
    found.sort();
    assert_eq!(found.len(), 3, "{found:?}");
    for p in &found {
        let rel = p.strip_prefix(&snapshots).expect("inside the snapshots");
        let parts: Vec<_> = rel.components().collect();
        assert_eq!(parts.len(), 3, "directly in snapshots/<id>/fs: {p:?}");
        assert_eq!(parts[1].as_os_str(), "fs");
    }
}

/// kill -9 while a layer is being written: the half-written snapshot is
/// never committed, and a re-run writes the layer again and ends with the
/// image complete and correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_extract_then_a_rerun_is_correct() {
    let env = Env::start();
    let parts: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| {
            (
                format!("big/part-{i:02}"),
                testbed::random_bytes(500 + i, 1 << 20),
            )
        })
        .collect();
    let big = LayerSpec {
        files: parts.clone(),
        ..Default::default()
    };
    let small = LayerSpec {
        files: vec![("etc/app.conf".into(), b"conf".to_vec())],
        ..Default::default()
    };
    let pushed = push(
        &env.registry.host(),
        "big/extract:1",
        &[ImageSpec::linux("amd64", vec![big, small])],
        Format::Oci,
        &env.path("images"),
    );
    // At 4 MiB/s the 24 MiB layer takes about six seconds to write.
    let config = prewarm_config(
        &env,
        &pushed.reference,
        "retries = 0",
        "[throttle]\nwrite-bandwidth = \"4MiB/s\"\n",
    );
    let mut child = env.spawn_prewarm(&["pull", "--config", config.to_str().unwrap()]);
    let snapshots = env
        .containerd
        .root
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    testbed::poll_until(
        "the layer's first files in a snapshot",
        std::time::Duration::from_secs(60),
        || {
            let started = std::fs::read_dir(&snapshots)
                .into_iter()
                .flatten()
                .flatten()
                .any(|d| d.path().join("fs/big/part-02").exists());
            Ok(started.then_some(()))
        },
    )
    .unwrap();
    child.kill().unwrap(); // SIGKILL: no cleanup at all
    child.wait().unwrap();
    let client = env.client().await;
    let chains = prewarm::manifest::chain_ids(&pushed.manifests[0].diff_ids);
    assert!(
        !client
            .snapshot_exists("overlayfs", &chains[0])
            .await
            .unwrap(),
        "killed mid-layer: nothing committed"
    );

    let config = prewarm_config(&env, &pushed.reference, "retries = 0", "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    env.assert_visible(&pushed, 0).await;
    let (_, mounts) = layer_dirs(&env.containerd, chains.last().unwrap(), "view-k");
    let merged = env.path("merged");
    mount_view(&mounts, &merged);
    let _u = Unmount(merged.clone());
    for (path, data) in &parts {
        let got = std::fs::read(merged.join(path)).unwrap();
        assert!(got == *data, "{path} is whole");
    }
    assert_eq!(std::fs::read(merged.join("etc/app.conf")).unwrap(), b"conf");
}
