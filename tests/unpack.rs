//! `[pull] unpack = "prewarm"` on real containerd: the same snapshots as
//! containerd's own unpack (`common::fidelity`), a wrong diff ID, a
//! hostile layer, kill -9 mid-extract, and containerd's native
//! snapshotter.

mod common;

use common::fidelity::{layer_dirs, mount_view, Unmount};
use common::*;
use std::path::PathBuf;
use testbed::tarball::Layer;
use testbed::{Containerd, LayerSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_unpacks_what_containerd_unpacks() {
    let env = Env::start();
    let other = Containerd::start(&env.path("c2")).expect("starting a second containerd");
    fidelity::containerd_and_prewarm_agree(&env, &other, "unpack-while-downloading = false").await;
}

/// The same with every layer unpacked while it downloads, all four side
/// by side, each moved into place once its parent is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_unpacked_while_downloading_are_what_containerd_unpacks() {
    let env = Env::start();
    let other = Containerd::start(&env.path("c2")).expect("starting a second containerd");
    fidelity::containerd_and_prewarm_agree(
        &env,
        &other,
        "unpack-while-downloading = true\nlayer-concurrency = 4",
    )
    .await;
    no_stage_left(&other);
}

/// The env's config with the in-process unpack (`staged`: while the
/// layers download, side by side) and `extra`.
fn prewarm_config(env: &Env, reference: &str, staged: bool, pull: &str, extra: &str) -> PathBuf {
    env.config_with(
        &[(reference, true)],
        &format!(
            "unpack = \"prewarm\"\nunpack-while-downloading = {staged}\nlayer-concurrency = 3\n{pull}"
        ),
        extra,
    )
}

/// No staging snapshot is left in `c`.
fn no_stage_left(c: &Containerd) {
    let left = c
        .ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])
        .unwrap();
    assert!(!left.contains("prewarm-stage"), "{left}");
}

/// A layer whose config claims another diff ID is unpacked, found out and
/// never committed: no snapshot under the chain ID, no half-written
/// snapshot left behind, the image not recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_diff_id_is_never_committed() {
    wrong_diff_id_is_never_committed_when(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_diff_id_is_never_committed_staged() {
    wrong_diff_id_is_never_committed_when(true).await;
}

async fn wrong_diff_id_is_never_committed_when(staged: bool) {
    let env = Env::start();
    let lie = LayerSpec {
        files: vec![("etc/motd".into(), b"hello".to_vec())],
        claimed_diff_id: Some(prewarm::digest::sha256(b"something else")),
        ..Default::default()
    };
    let pushed = env.push_layers("lies/app:1", vec![lie]);
    let config = prewarm_config(&env, &pushed.reference, staged, "retries = 1", "");
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
    hostile_layer_stays_inside_its_snapshot_when(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_layer_stays_inside_its_snapshot_staged() {
    hostile_layer_stays_inside_its_snapshot_when(true).await;
}

async fn hostile_layer_stays_inside_its_snapshot_when(staged: bool) {
    let env = Env::start();
    let tar = Layer::new().escapes().bytes();
    let hostile = LayerSpec {
        tar: Some(tar),
        ..Default::default()
    };
    let pushed = env.push_layers("hostile/app:1", vec![hostile]);
    let config = prewarm_config(
        &env,
        &pushed.reference,
        staged,
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
    no_stage_left(&env.containerd);
}

/// kill -9 while a layer is being written: the half-written snapshot is
/// never committed, and a re-run writes the layer again and ends with the
/// image complete and correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_extract_then_a_rerun_is_correct() {
    kill_9_mid_extract_then_a_rerun_is_correct_when(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_extract_then_a_rerun_is_correct_staged() {
    kill_9_mid_extract_then_a_rerun_is_correct_when(true).await;
}

async fn kill_9_mid_extract_then_a_rerun_is_correct_when(staged: bool) {
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
    let pushed = env.push_layers("big/extract:1", vec![big, small]);
    // At 4 MiB/s the 24 MiB layer takes about six seconds to write.
    let config = prewarm_config(
        &env,
        &pushed.reference,
        staged,
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
    let snapshots = env
        .containerd
        .ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])
        .unwrap();
    assert_eq!(snapshots.contains("prewarm-stage"), staged, "{snapshots}");

    let config = prewarm_config(&env, &pushed.reference, staged, "retries = 0", "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    if staged {
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("left half unpacked"), "{said}");
    }
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
    no_stage_left(&env.containerd);
}

/// containerd's native snapshotter hands out bind mounts of a full copy
/// of the parent: the in-process path writes there too, removing what a
/// whiteout names, as containerd's apply does on a plain directory.
/// (Mounts it does not know, such as devmapper's block devices, go to
/// containerd's Diff service: see `unpack::target_of`'s unit test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_snapshotter_gets_whole_trees() {
    let env = Env::start();
    let layers = vec![
        LayerSpec {
            files: vec![
                ("etc/motd".into(), b"one".to_vec()),
                ("etc/hostname".into(), b"box".to_vec()),
            ],
            ..Default::default()
        },
        LayerSpec {
            files: vec![("etc/issue".into(), b"two".to_vec())],
            ..Default::default()
        },
        LayerSpec {
            tar: Some(
                Layer::new()
                    .file("etc/.wh.motd", 0o644, (0, 0), b"")
                    .file("etc/hostname", 0o600, (0, 0), b"node")
                    .bytes(),
            ),
            ..Default::default()
        },
    ];
    let pushed = env.push_layers("native/app:1", layers);
    // Staging asked for, but a native snapshot is a copy of its parent:
    // the layers are unpacked in order instead.
    let config = prewarm_config(&env, &pushed.reference, true, "retries = 0", "");
    // A second fragment, as an operator would drop one in.
    let dropin = env.path("root/etc/prewarm/config.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("60-native.toml"),
        "version = 1\n[containerd]\nsnapshotter = \"native\"\n",
    )
    .unwrap();
    let report = env.pull_ok(&config);
    assert_eq!(report.snapshotter, "native");
    assert_eq!(report.images[0].unpacked_by, ["prewarm"]);
    let client = env.client().await;
    let chains = prewarm::manifest::chain_ids(&pushed.manifests[0].diff_ids);
    for chain in &chains {
        assert!(client.snapshot_exists("native", chain).await.unwrap());
        assert!(!client.snapshot_exists("overlayfs", chain).await.unwrap());
    }
    // The top layer's tree, through a view of it.
    let shown = env
        .containerd
        .ctr(&[
            "snapshots",
            "--snapshotter",
            "native",
            "view",
            "--mounts",
            "look",
            &chains[2],
        ])
        .unwrap();
    let mounts: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let m = &mounts[0];
    let source = m.get("source").or_else(|| m.get("Source")).unwrap();
    let etc = PathBuf::from(source.as_str().unwrap()).join("etc");
    let mut names: Vec<String> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["hostname", "issue"], "no motd, no whiteout file");
    assert_eq!(std::fs::read(etc.join("hostname")).unwrap(), b"node");
    assert_eq!(std::fs::read(etc.join("issue")).unwrap(), b"two");
}
