//! `prewarm pull` against a real containerd and a real registry: every
//! image kind lands, kubelet (CRI) sees it by tag and by digest, a re-run
//! changes nothing, and `plan` writes nothing.

mod common;

use common::*;
use prewarm::report::ImageStatus;
use testbed::{
    Compression::{self, Gzip, Zstd},
    Format,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_every_image_kind_and_cri_sees_tag_and_digest() {
    let env = Env::start();
    let host = env.registry.host();
    let work = env.path("images");
    let mixed = push(
        &host,
        "ml/mixed:1.0",
        &[linux(
            "amd64",
            None,
            layers(1, &[Gzip, Zstd, Compression::None, Gzip], 256 << 10),
        )],
        Format::Oci,
        &work,
    );
    let multi = push(
        &host,
        "tools/multi:2",
        &[
            linux("arm64", Some("v8"), layers(10, &[Gzip], 64 << 10)),
            linux("amd64", None, layers(20, &[Gzip, Gzip], 64 << 10)),
            linux("arm", Some("v7"), layers(30, &[Gzip], 64 << 10)),
        ],
        Format::Oci,
        &work,
    );
    let docker = push(
        &host,
        "legacy/app:v3",
        &[linux("amd64", None, layers(40, &[Gzip, Gzip], 128 << 10))],
        Format::DockerV2S2,
        &work,
    );
    let docker_list = push(
        &host,
        "legacy/multi:v1",
        &[
            linux("amd64", None, layers(50, &[Gzip], 64 << 10)),
            linux("arm64", None, layers(60, &[Gzip], 64 << 10)),
        ],
        Format::DockerV2S2,
        &work,
    );
    assert!(multi.is_index && docker_list.is_index && !mixed.is_index);
    let pinned = format!("{host}/legacy/app@{}", docker.top_digest);
    let config = env.config(
        &[
            (&mixed.reference, true),
            (&multi.reference, true),
            (&docker.reference, false),
            (&docker_list.reference, true),
            (&pinned, true),
        ],
        "",
    );
    let config = config.to_str().unwrap();

    // plan writes nothing: no records, no report.
    let out = env.prewarm(&["plan", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let plan = String::from_utf8_lossy(&out.stdout);
    // legacy/app is listed by tag and by the digest the tag resolves to:
    // one image, planned once.
    assert_eq!(
        plan.lines().filter(|l| l.contains(" pull ")).count(),
        4,
        "{plan}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listed twice"),
        "the merge is logged"
    );
    assert!(
        plan.contains(&multi.top_digest),
        "plan names resolved digests: {plan}"
    );
    assert_eq!(
        env.containerd.ctr(&["images", "ls", "-q"]).unwrap().trim(),
        ""
    );
    assert!(!env.path("report.json").exists());

    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.summary.pulled, 4, "{report:#?}");
    assert_eq!(report.summary.failed, 0);
    for img in &report.images {
        assert_eq!(img.status, ImageStatus::Pulled, "{img:?}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("images planned="))
            .count(),
        1,
        "exactly one summary line"
    );

    env.assert_visible(&mixed, 0).await;
    env.assert_visible(&multi, 1).await; // the amd64 entry
    env.assert_visible(&docker, 0).await;
    env.assert_visible(&docker_list, 0).await;

    // Records are labelled the way CRI labels its own pulls.
    let client = env.client().await;
    let rec = client.image_get(&mixed.reference).await.unwrap().unwrap();
    assert_eq!(
        rec.labels
            .get("io.cri-containerd.image")
            .map(String::as_str),
        Some("managed")
    );
    assert_eq!(rec.target.unwrap().digest, mixed.top_digest);
    // The lease is gone: the records are the GC roots now.
    assert_eq!(
        env.containerd.ctr(&["leases", "ls", "-q"]).unwrap().trim(),
        ""
    );

    // A re-run on a warm node changes nothing and downloads nothing.
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let again = env.report();
    assert_eq!(again.summary.present, 4, "{again:#?}");
    assert_eq!(again.summary.bytes, 0);

    // status shows kubelet's view of every listed image.
    let out = env.prewarm(&["status", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let status = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        status
            .lines()
            .filter(|l| l.starts_with("yes      yes"))
            .count(),
        5,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_survives_containerd_gc_after_pull() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "gc/check:1",
        &[linux("amd64", None, layers(70, &[Gzip, Zstd], 64 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let config = env.config(&[(&img.reference, true)], "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    // Deleting a lease with sync=true runs a full garbage collection in
    // containerd: the GC labels alone must keep content and snapshots.
    let client = env.client().await;
    client
        .lease_create("gc-trigger", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    env.containerd
        .ctr(&["leases", "rm", "--sync", "gc-trigger"])
        .unwrap();
    env.assert_visible(&img, 0).await;
}

#[test]
fn missing_required_image_exits_3_and_reports_why() {
    let env = Env::start();
    let missing = format!("{}/nope/absent:1", env.registry.host());
    let config = env.config(&[(&missing, true)], "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 3);
    let report = env.report();
    assert_eq!(report.images[0].status, ImageStatus::Failed);
    let reason = report.images[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("nope/absent"), "{reason}");
}

/// `[pull] keep-layers = false`: once unpacked, the layers' blobs leave
/// the content store (as with containerd's `discard_unpacked_layers`);
/// the image stays visible, a second image on the same base does not fetch
/// the base again, and a re-run finds both present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keep_layers_the_blobs_go_and_the_images_stay() {
    let env = Env::start();
    let base = || testbed::LayerSpec {
        files: vec![("opt/base.bin".into(), testbed::random_bytes(7, 2 << 20))],
        ..Default::default()
    };
    let top = |name: &str| testbed::LayerSpec {
        files: vec![(format!("etc/{name}"), name.as_bytes().to_vec())],
        ..Default::default()
    };
    let a = env.push_layers("keep/a:1", vec![base(), top("a")]);
    let b = env.push_layers("keep/b:1", vec![base(), top("b")]);
    let (a_layers, b_layers) = (&a.manifests[0].layer_digests, &b.manifests[0].layer_digests);
    assert_eq!(a_layers[0], b_layers[0], "the same base blob");

    let config = env.config_with(
        &[(&a.reference, true)],
        "retries = 0\nkeep-layers = false",
        "",
    );
    env.pull_ok(&config);
    env.assert_visible_without_blobs(&a).await;
    // The manifest and config stay: kubelet reads them.
    let client = env.client().await;
    assert!(client
        .content_info(&a.manifests[0].config_digest)
        .await
        .unwrap()
        .is_some());

    // b: only its own top layer is fetched.
    let config = env.config_with(
        &[(&a.reference, true), (&b.reference, true)],
        "retries = 0\nkeep-layers = false",
        "",
    );
    let report = env.pull_ok(&config);
    let statuses: Vec<_> = report.images.iter().map(|i| i.status).collect();
    assert_eq!(statuses, [ImageStatus::Present, ImageStatus::Pulled]);
    let b_bytes = report.images[1].bytes;
    assert!(
        b_bytes > 0 && b_bytes < 64 << 10,
        "b fetched {b_bytes} bytes: the 2 MiB base again?"
    );
    env.assert_visible_without_blobs(&b).await;

    // Nothing to do on a warm node.
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    let statuses: Vec<_> = env.report().images.iter().map(|i| i.status).collect();
    assert_eq!(statuses, [ImageStatus::Present, ImageStatus::Present]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cri_pull_of_the_same_image_at_the_same_time() {
    common::core::cri_pull_at_the_same_time(&Env::start()).await;
}

/// A pull longer than `progress-interval` logs progress lines and sends
/// them to systemd as `STATUS=` (read here from a notify socket of the
/// test's own, as systemd would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_goes_to_the_log_and_to_systemd() {
    let env = Env::start();
    let img = env.push_layers(
        "progress/app:1",
        vec![testbed::LayerSpec {
            files: vec![("opt/blob".into(), testbed::random_bytes(9, 3 << 20))],
            ..Default::default()
        }],
    );
    let proxy = testbed::FaultProxy::start(env.registry.addr).unwrap();
    proxy.throttle(Some(1 << 20));
    let (_, rest) = img.reference.split_once('/').unwrap();
    let reference = format!("{}/{rest}", proxy.host());
    let config = env.config_with(&[(&reference, true)], "progress-interval = \"1s\"", "");
    let notify = env.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket.set_nonblocking(true).unwrap();
    let root = env.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .arg("--config-root")
        .arg(&root)
        .args(["pull", "--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 0, "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("progress ")).collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(
        lines.last().unwrap().contains("progress 100% 3/3 MiB"),
        "{log}"
    );
    let mut sent = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        sent.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        sent.iter()
            .any(|m| m.starts_with("STATUS=progress ") && m.contains("images 0/1")),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_kubelet_pulled_with_discard_unpacked_layers() {
    common::core::after_a_discarding_cri_pull(std::path::Path::new("containerd")).await;
}

/// A node that will undo its preload says so, in check-config, plan and
/// the pull's report: kubelet's imageMaximumGCAge and credential policy,
/// a GC threshold the pulled images pass, and containerd 1.6 (which does
/// not show kubelet the pin label).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_would_undo_the_preload_is_warned_of() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "warn/app:1",
        &[linux("amd64", None, layers(720, &[Gzip], 64 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let kubelet = env.path("kubelet/config.yaml");
    std::fs::create_dir_all(kubelet.parent().unwrap()).unwrap();
    std::fs::write(
        &kubelet,
        "kind: KubeletConfiguration\nimageMaximumGCAge: 72h\n\
         imagePullCredentialsVerificationPolicy: AlwaysVerify\n",
    )
    .unwrap();
    let dropins = env.path("kubelet/conf.d");
    std::fs::create_dir_all(&dropins).unwrap();
    // Any use at all is above 1%.
    std::fs::write(
        dropins.join("10-gc.conf"),
        "imageGCHighThresholdPercent: 1\n",
    )
    .unwrap();
    let config = env.config_with(
        &[(&img.reference, true)],
        "",
        &format!("[register]\nkubelet-config = {kubelet:?}\nkubelet-config-dir = {dropins:?}\n"),
    );
    let said = |args: &[&str]| {
        let out = env.prewarm(args);
        assert_eq!(exit_code(&out), 0, "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let checked = said(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(
        checked.contains("warning: kubelet's imageMaximumGCAge is 72h"),
        "{checked}"
    );
    assert!(checked
        .contains("warning: kubelet's imagePullCredentialsVerificationPolicy is AlwaysVerify"));
    let planned = said(&["plan", "--config", config.to_str().unwrap()]);
    assert!(
        planned.contains("above kubelet's imageGCHighThresholdPercent (1)"),
        "{planned}"
    );
    assert!(planned.contains("warning: containerd 1.6"), "{planned}");
    said(&["pull", "--config", config.to_str().unwrap()]);
    let warnings = env.report().warnings;
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.starts_with("containerd 1.6")));
}

/// `plan` and `status` as JSON, for scripts: the plan says pull, then
/// present after the pull; status says present by tag and by digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_status_as_json() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "json/app:1",
        &[linux("amd64", None, layers(730, &[Gzip], 64 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let config = env.config(&[(&img.reference, true)], "");
    let json = |cmd: &str| -> serde_json::Value {
        let out = env.prewarm(&[
            cmd,
            "--output",
            "json",
            "--config",
            config.to_str().unwrap(),
        ]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{cmd}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let plan = json("plan");
    assert_eq!(plan["images"][0]["ref"], img.reference.as_str());
    assert_eq!(plan["images"][0]["action"], "pull");
    assert_eq!(plan["images"][0]["digest"], img.top_digest.as_str());
    assert!(plan["images"][0]["bytes"].as_u64().unwrap() > 0);
    assert!(plan["disk"]["allowance"].as_u64().unwrap() > 0);
    assert_eq!(json("status")["images"][0]["present"], false);
    env.pull_ok(&config);
    // The revision the plan shows is the one the pull reports.
    let revision = plan["list_revision"].as_str().expect("a list revision");
    assert_eq!(env.report().list_revision.as_deref(), Some(revision));
    assert_eq!(json("plan")["images"][0]["action"], "present");
    let status = json("status");
    let seen = &status["images"][0];
    assert_eq!(
        (&seen["by_tag"], &seen["by_digest"], &seen["present"]),
        (&true.into(), &true.into(), &true.into())
    );
    assert_eq!(seen["image_id"], img.manifests[0].config_digest.as_str());
}

/// On an interactive terminal (a pty, through util-linux's `script`), the
/// pull draws a bar with bytes, rate and images instead of progress lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_gets_a_bar() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "bar/app:1",
        &[linux("amd64", None, layers(740, &[Gzip], 4 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let config = env.config_with(
        &[(&img.reference, true)],
        "",
        "[throttle]\nbandwidth = \"8MiB/s\"\n",
    );
    let root = env.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let line = format!(
        "{} --config-root {} pull --config {}",
        env!("CARGO_BIN_EXE_prewarm"),
        root.display(),
        config.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("script (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("images 1/1") && seen.contains("MiB/s"),
        "{seen}"
    );
    assert!(seen.contains("] 100%"), "{seen}");
    assert!(
        !seen.contains("INFO progress "),
        "no progress lines: {seen}"
    );
    assert_eq!(env.report().images[0].status, ImageStatus::Pulled);
}
