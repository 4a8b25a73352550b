//! The in-process layer extractor on hand-built tar streams: metadata kept
//! as containerd keeps it, whiteouts in both forms, replacements, and
//! hostile layers that try to write outside their directory, hand-built
//! and generated (proptest). Needs root
//! (owners, device nodes, `trusted.` xattrs), as the other integration
//! tests do. `tests/unpack.rs` compares it with containerd's own apply.

use prewarm::extract::{apply, ExtractError, Target, Whiteouts};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use testbed::tarball::{Layer, MTIME};

fn target(root: &Path, parents: &[&Path], whiteouts: Whiteouts) -> Target {
    std::fs::create_dir_all(root).unwrap();
    Target {
        root: root.to_path_buf(),
        parents: parents.iter().map(|p| p.to_path_buf()).collect(),
        whiteouts,
        parents_later: false,
    }
}

fn meta(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn xattr(p: &Path, key: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("getfattr")
        .args(["--absolute-names", "--only-values", "-h", "-n", key])
        .arg(p)
        .output()
        .expect("getfattr (Debian's attr package)");
    out.status.success().then_some(out.stdout)
}

#[test]
fn metadata_is_kept_as_containerd_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let long = testbed::tarball::long_name();
    let tar = Layer::new().corners().bytes();
    let applied = apply(&target(&root, &[], Whiteouts::Remove), &tar[..], &|_| {}).unwrap();
    assert_eq!(applied.diff_id, prewarm::digest::sha256(&tar));
    assert_eq!(applied.entries, 12);

    let m = meta(&root.join("tmp"));
    assert_eq!(m.mode() & 0o7777, 0o1777, "sticky");
    let m = meta(&root.join("srv"));
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (0o2750, 1000, 1001),
        "setgid, owner"
    );
    assert_eq!(
        m.mtime(),
        MTIME as i64,
        "a directory's time survives its files"
    );
    let m = meta(&root.join("usr/bin/su"));
    assert_eq!(m.mode() & 0o7777, 0o4755, "setuid after chown");
    let m = meta(&root.join("usr/bin/wall"));
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o2755, 5), "setgid, group");
    let m = meta(&root.join("srv/data"));
    assert_eq!((m.uid(), m.gid(), m.mtime()), (1000, 1001, MTIME as i64));
    let ping = root.join("usr/bin/ping");
    assert_eq!(
        xattr(&ping, "user.origin").as_deref(),
        Some(&b"layer-1"[..])
    );
    assert!(xattr(&ping, "security.capability").is_some());
    let m = meta(&ping);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 123_456_789));
    assert_eq!(
        std::fs::read_link(root.join("usr/bin/sh")).unwrap(),
        PathBuf::from("dash")
    );
    assert_eq!(
        meta(&root.join("usr/bin/su2")).ino(),
        meta(&root.join("usr/bin/su")).ino()
    );
    let m = meta(&root.join("dev/null"));
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
    assert!(meta(&root.join("run/fifo")).file_type().is_fifo());
    assert_eq!(std::fs::read(root.join(&long)).unwrap(), b"long");
    assert_eq!(
        std::fs::read(root.join("usr/share/ünïcødé/名前.txt")).unwrap(),
        b"names"
    );
    // Implicit parents with no lower layer: 0755, root's.
    let m = meta(&root.join("usr/bin"));
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0));
}

#[test]
fn whiteouts_on_a_first_layer_remove() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let t = target(&root, &[], Whiteouts::Remove);
    let one = Layer::new()
        .file("etc/gone", 0o644, (0, 0), b"x")
        .file("etc/kept", 0o644, (0, 0), b"x")
        .file("opt/app/old", 0o644, (0, 0), b"x")
        .bytes();
    apply(&t, &one[..], &|_| {}).unwrap();
    let two = Layer::new()
        .file("etc/.wh.gone", 0o644, (0, 0), b"")
        .file("opt/app/new", 0o644, (0, 0), b"y")
        .file("opt/app/.wh..wh..opq", 0o644, (0, 0), b"")
        .bytes();
    apply(&t, &two[..], &|_| {}).unwrap();
    assert!(!root.join("etc/gone").exists());
    assert!(root.join("etc/kept").exists());
    assert!(!root.join("etc/.wh.gone").exists());
    assert!(!root.join("opt/app/old").exists(), "opaque clears the rest");
    assert!(
        root.join("opt/app/new").exists(),
        "but keeps what the layer brought"
    );
}

#[test]
fn whiteouts_on_an_overlay_upper_and_parents_from_the_lower() {
    overlay_upper(false);
}

/// The same layer staged before its lower exists: the directories made on
/// the way are listed, and adopted from the lower once it is there.
#[test]
fn a_staged_layer_adopts_its_parents_later() {
    overlay_upper(true);
}

fn overlay_upper(staged: bool) {
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    let upper = dir.path().join("upper");
    let base = Layer::new()
        .dir("opt", 0o750, (7, 8))
        .dir("opt/app", 0o711, (7, 8))
        .file("opt/app/bin", 0o755, (7, 8), b"x")
        .bytes();
    let top = Layer::new()
        .file("opt/app/.wh.bin", 0o644, (0, 0), b"")
        .file("opt/.wh..wh..opq", 0o644, (0, 0), b"")
        .file("opt/app/conf", 0o600, (0, 0), b"new")
        .dir("srv", 0o700, (3, 3))
        .file("srv/x/y", 0o600, (0, 0), b"y")
        .bytes();
    if staged {
        let mut t = target(&upper, &[], Whiteouts::Overlay);
        t.parents_later = true;
        let applied = apply(&t, &top[..], &|_| {}).unwrap();
        let mut implicit = applied.implicit.clone();
        implicit.sort();
        // srv has its own entry; srv/x does not, but no lower has it.
        let want: Vec<PathBuf> = ["opt", "opt/app", "srv/x"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(implicit, want);
        assert_eq!(meta(&upper.join("opt")).mode() & 0o7777, 0o755, "not yet");
        apply(&target(&lower, &[], Whiteouts::Remove), &base[..], &|_| {}).unwrap();
        prewarm::extract::adopt_parents(&upper, &applied.implicit, std::slice::from_ref(&lower))
            .unwrap();
    } else {
        apply(&target(&lower, &[], Whiteouts::Remove), &base[..], &|_| {}).unwrap();
        let t = target(&upper, &[&lower], Whiteouts::Overlay);
        let applied = apply(&t, &top[..], &|_| {}).unwrap();
        assert!(applied.implicit.is_empty());
    }
    let m = meta(&upper.join("srv"));
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o700, 3), "its own entry");
    assert_eq!(meta(&upper.join("srv/x")).mode() & 0o7777, 0o755);
    let wh = meta(&upper.join("opt/app/bin"));
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "0:0 char device"
    );
    assert_eq!(
        xattr(&upper.join("opt"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    // opt and opt/app came only implicitly: they take the lower's mode and
    // owner, and no overlay xattr is copied up.
    for (d, mode) in [("opt", 0o750), ("opt/app", 0o711)] {
        let m = meta(&upper.join(d));
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (mode, 7, 8), "{d}");
    }
    assert_eq!(
        xattr(&upper.join("opt/app"), "trusted.overlay.opaque"),
        None
    );
}

#[test]
fn later_entries_replace_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let t = target(&root, &[], Whiteouts::Remove);
    let one = Layer::new()
        .file("a", 0o644, (0, 0), b"file")
        .dir("b", 0o755, (0, 0))
        .file("b/inside", 0o644, (0, 0), b"x")
        .dir("c", 0o700, (0, 0))
        .file("c/kept", 0o644, (0, 0), b"x")
        .bytes();
    apply(&t, &one[..], &|_| {}).unwrap();
    let two = Layer::new()
        .dir("a", 0o750, (0, 0))
        .link(tar::EntryType::Symlink, "b", "c")
        .dir("c", 0o755, (0, 0))
        .bytes();
    apply(&t, &two[..], &|_| {}).unwrap();
    assert!(
        meta(&root.join("a")).is_dir(),
        "a file replaced by a directory"
    );
    assert!(
        meta(&root.join("b")).is_symlink(),
        "a directory replaced by a symlink"
    );
    assert!(
        root.join("c/kept").exists(),
        "a directory over a directory merges"
    );
    assert_eq!(meta(&root.join("c")).mode() & 0o7777, 0o755);
}

/// Every way out is contained, as containerd contains it: the entries land
/// inside the root, and the directory around it stays as it was.
#[test]
fn hostile_entries_stay_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jail/root");
    let t = target(&root, &[], Whiteouts::Remove);
    let outside = dir.path().join("jail");
    let tar = Layer::new()
        .escapes()
        .raw(tar::EntryType::Regular, "/abs/escape-abs", "", b"x")
        .raw(tar::EntryType::Symlink, "loop", "loop", b"")
        .raw(tar::EntryType::Symlink, "host-etc", "/etc", b"")
        .raw(tar::EntryType::Regular, "host-etc/escape-etc", "", b"x")
        .raw(tar::EntryType::Regular, "..", "", b"x")
        .bytes();
    apply(&t, &tar[..], &|_| {}).unwrap();
    for inside in [
        "escape-dotdot",
        "abs/escape-abs",
        "escape-abs-link",
        "escape-rel-link",
        "etc/escape-etc",
    ] {
        assert!(root.join(inside).is_file(), "{inside} landed inside");
    }
    assert!(!Path::new("/etc/escape-etc").exists());
    let around: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(around, ["root"], "nothing written beside the root");

    // A hardlink that points out resolves inside; where nothing is there,
    // the layer is refused, naming the entry.
    let secret = dir.path().join("jail/secret");
    std::fs::write(&secret, b"s").unwrap();
    let tar = Layer::new()
        .raw(tar::EntryType::Link, "stolen", "../secret", b"")
        .bytes();
    match apply(&t, &tar[..], &|_| {}) {
        Err(ExtractError::Entry { entry, .. }) => assert_eq!(entry, "stolen"),
        other => panic!("{other:?}"),
    }
    assert_eq!(meta(&secret).nlink(), 1);
    // A symlink loop in a parent is an error, not a hang.
    let tar = Layer::new().file("loop/x", 0o644, (0, 0), b"x").bytes();
    assert!(apply(&t, &tar[..], &|_| {}).is_err());
}

#[test]
fn a_broken_stream_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let t = target(&dir.path().join("root"), &[], Whiteouts::Remove);
    let tar = Layer::new()
        .file("big", 0o644, (0, 0), &vec![7u8; 100_000])
        .bytes();
    // Cut inside the file's data: the entry is named.
    match apply(&t, &tar[..50_000], &|_| {}) {
        Err(ExtractError::Entry { entry, .. }) => assert_eq!(entry, "big"),
        other => panic!("{other:?}"),
    }
    // Cut inside a header: the stream is at fault.
    let two = Layer::new()
        .file("a", 0o644, (0, 0), b"a")
        .file("b", 0o644, (0, 0), b"b")
        .bytes();
    let t2 = target(&dir.path().join("root2"), &[], Whiteouts::Remove);
    assert!(matches!(
        apply(&t2, &two[..1024 + 100], &|_| {}),
        Err(ExtractError::Read(_))
    ));
}

mod generated {
    //! Layers made of random entries (directories, files, symlinks and
    //! hardlinks, with `..`, absolute names, whiteouts and links that lead
    //! out): whatever the extractor makes of them, it writes nothing
    //! outside the root, and never links to a file outside it.
    use super::*;
    use proptest::prelude::*;

    const COMPONENTS: &[&str] = &["a", "b", "..", ".", "x", ".wh.a", ".wh..wh..opq"];

    fn name() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            prop::collection::vec(prop::sample::select(COMPONENTS), 1..4),
        )
            .prop_map(|(absolute, c)| format!("{}{}", if absolute { "/" } else { "" }, c.join("/")))
    }

    /// Link targets: relative and absolute ways out, and the way to the
    /// sentinel beside the root, by its absolute path too.
    fn link(outside: String) -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "..".to_string(),
                "../..".into(),
                "../../../..".into(),
                "../outside/sentinel".into(),
                "a".into(),
                "a/../../..".into(),
                "/".into(),
                "/a/../../outside".into(),
            ]),
            Just(outside.clone()),
            Just(format!("{outside}/sentinel")),
        ]
    }

    fn entries(outside: String) -> impl Strategy<Value = Vec<(u8, String, String)>> {
        prop::collection::vec((0u8..4, name(), link(outside)), 1..12)
    }

    /// The directories around the root hold only what the test put there.
    fn assert_untouched(base: &Path) {
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(base), ["g"]);
        assert_eq!(names(&base.join("g")), ["g"]);
        assert_eq!(names(&base.join("g/g")), ["jail"]);
        let jail = base.join("g/g/jail");
        assert_eq!(names(&jail), ["outside", "root"]);
        assert_eq!(names(&jail.join("outside")), ["sentinel"]);
        let sentinel = jail.join("outside/sentinel");
        assert_eq!(std::fs::read(&sentinel).unwrap(), b"s");
        assert_eq!(meta(&sentinel).nlink(), 1, "no hardlink to it");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn nothing_is_written_outside_the_root(
            overlay in any::<bool>(),
            seed in entries("/OUTSIDE".into()),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let jail = dir.path().join("g/g/jail");
            let outside = jail.join("outside");
            std::fs::create_dir_all(&outside).unwrap();
            std::fs::write(outside.join("sentinel"), b"s").unwrap();
            let whiteouts = if overlay { Whiteouts::Overlay } else { Whiteouts::Remove };
            let t = target(&jail.join("root"), &[], whiteouts);
            let out = outside.display().to_string();
            let mut layer = Layer::new();
            for (kind, name, link) in &seed {
                let link = link.replace("/OUTSIDE", &out);
                let (kind, link, data): (tar::EntryType, &str, &[u8]) = match kind {
                    0 => (tar::EntryType::Directory, "", b""),
                    1 => (tar::EntryType::Regular, "", b"x"),
                    2 => (tar::EntryType::Symlink, &link, b""),
                    _ => (tar::EntryType::Link, &link, b""),
                };
                layer = layer.raw(kind, name, link, data);
            }
            let tar = layer.bytes();
            // Refusing the layer is allowed; writing outside is not.
            let _ = apply(&t, &tar[..], &|_| {});
            assert_untouched(dir.path());
        }
    }
}
