//! Faults against the real containerd and registry, through a
//! fault-injecting proxy: a kill -9 mid-blob resumes with a Range request,
//! a registry answering 500 recovers, a 429 or 503's `Retry-After` is
//! kept, a corrupted blob is never recorded,
//! a blob another writer holds is waited for, a second run waits for the
//! first, and SIGTERM leaves an honest report.

mod common;

use common::core::{proxied, via};
use common::*;
use prewarm::report::ImageStatus;
use testbed::{
    Compression::{Gzip, Zstd},
    Format,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_blob_then_rerun_resumes_with_range() {
    core::resume_after_kill_9(&Env::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_500s_then_recovers() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "flaky/app:1",
        &[linux("amd64", None, layers(200, &[Gzip, Zstd], 128 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let proxy = proxied(&env);
    proxy.fail_next("/manifests/", 2, 500);
    proxy.fail_next("/blobs/", 3, 503);
    let config = env.config(&[(&via(&proxy, &img), true)], "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.images[0].status, ImageStatus::Pulled);
    let failed = proxy.requests().iter().filter(|r| r.status >= 500).count();
    assert_eq!(failed, 5, "every injected failure was seen and retried");
}

/// A registry that answers 429 and 503 with `Retry-After` is asked again
/// no sooner than it said, though prewarm's own backoff would be shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_kept() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "busy/app:1",
        &[linux("amd64", None, layers(201, &[Gzip], 64 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let proxy = proxied(&env);
    proxy.fail_next_retry_after("/manifests/", 1, 429, 2);
    proxy.fail_next_retry_after("/blobs/", 1, 503, 3);
    let config = env.config(&[(&via(&proxy, &img), true)], "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.report().images[0].status, ImageStatus::Pulled);
    let log = proxy.requests();
    for (part, status, asked) in [("/manifests/", 429, 2), ("/blobs/", 503, 3)] {
        let refused = log
            .iter()
            .find(|r| r.status == status)
            .unwrap_or_else(|| panic!("no {status}: {log:?}"));
        let again = log
            .iter()
            .find(|r| r.path == refused.path && r.at > refused.at)
            .unwrap_or_else(|| panic!("{} was not asked again", refused.path));
        assert!(refused.path.contains(part), "{}", refused.path);
        let waited = again.at - refused.at;
        assert!(
            waited >= std::time::Duration::from_secs(asked),
            "{} asked again after {waited:?}, not {asked} s",
            refused.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_retried_and_never_recorded() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "bad/bytes:1",
        &[linux("amd64", None, layers(300, &[Gzip], 512 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let layer = img.manifests[0].layer_digests[0].clone();
    let proxy = proxied(&env);
    let reference = via(&proxy, &img);

    // Corrupted every time: the image fails, nothing is visible.
    proxy.corrupt_next(&layer, 100);
    let config = env.config_with(&[(&reference, true)], "retries = 2", "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 3);
    let report = env.report();
    assert_eq!(report.images[0].status, ImageStatus::Failed);
    assert!(
        report.images[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains(&layer),
        "{:?}",
        report.images[0].reason
    );
    assert_eq!(
        env.containerd.ctr(&["images", "ls", "-q"]).unwrap().trim(),
        ""
    );
    // Full downloads (the size probe reads only the gzip trailer).
    let gets = proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains(&layer) && r.range.is_none())
        .count();
    assert_eq!(gets, 3, "first try plus two retries");

    // Corrupted once: the retry succeeds and the image is complete.
    proxy.clear();
    proxy.corrupt_next(&layer, 1);
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.report().images[0].status, ImageStatus::Pulled);
    env.assert_visible_as(&reference, &img, 0).await;
}

/// SIGTERM mid-download: the report says why the run ended, and what the
/// unfinished image had downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_download_reports_what_was_downloaded() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "big/term:1",
        &[linux("amd64", None, layers(200, &[Gzip], 8 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let layer = img.manifests[0].layer_digests[0].clone();
    let proxy = proxied(&env);
    proxy.throttle(Some(2 << 20));
    let config = env.config(&[(&via(&proxy, &img), true)], "");
    let mut child = env.spawn_prewarm(&["pull", "--config", config.to_str().unwrap()]);
    testbed::poll_until(
        "2 MiB of the layer sent",
        std::time::Duration::from_secs(60),
        || Ok((proxy.bytes_sent_for(&layer) >= 2 << 20).then_some(())),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "a required image is missing");
    let report = env.report();
    assert_eq!(report.interrupted.as_deref(), Some("stopped by SIGTERM"));
    let image = &report.images[0];
    assert_eq!(image.status, ImageStatus::Failed);
    assert_eq!(image.reason.as_deref(), Some("stopped by SIGTERM"));
    assert!(
        image.bytes >= 2 << 20 && image.bytes <= proxy.bytes_sent_for(&layer),
        "{} bytes reported, {} sent",
        image.bytes,
        proxy.bytes_sent_for(&layer)
    );
}

/// Another writer holds the layer's ingest ref (kubelet's CRI pull writes
/// under the same refs): prewarm waits for it rather than failing, with no
/// retries at all, and ends with the image once the other writer is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_another_writer_holds_is_waited_for() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "held/app:1",
        &[linux("amd64", None, layers(300, &[Gzip], 1 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let built = &img.manifests[0];
    let layer = prewarm::containerd::Desc {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: built.layer_digests[0].clone(),
        size: built.compressed_size as i64,
    };
    let client = env.client().await;
    client
        .lease_create("other-writer", std::time::Duration::from_secs(600))
        .await
        .unwrap();
    let (_, held) = client
        .content_writer(&format!("layer-{}", layer.digest), &layer, "other-writer")
        .await
        .unwrap();
    assert!(held.is_some(), "the test holds the ingest");

    let config = env.config_with(&[(&img.reference, true)], "retries = 0", "");
    let log = env.path("held.log");
    let mut child = env.spawn_prewarm_logging(
        &["pull", "--config", config.to_str().unwrap()],
        std::fs::File::create(&log).unwrap(),
    );
    testbed::poll_until(
        "prewarm waiting for the other writer",
        std::time::Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text.contains("held by another writer").then_some(()))
        },
    )
    .unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "still waiting, not failed"
    );
    // The other writer goes away without committing.
    drop(held);
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(env.report().images[0].status, ImageStatus::Pulled);
    env.assert_visible(&img, 0).await;
}

/// Two `prewarm pull` runs at once (a unit restarted over a running pull):
/// the second waits for the first, then finds the image present; neither
/// fails, and the report written last describes the node as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pull_waits_for_the_first() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "twice/app:1",
        &[linux("amd64", None, layers(400, &[Gzip, Gzip], 2 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let proxy = proxied(&env);
    proxy.throttle(Some(2 << 20));
    let config = env.config(&[(&via(&proxy, &img), true)], "");
    let args = ["pull", "--config", config.to_str().unwrap()];
    let mut first = env.spawn_prewarm(&args);
    let layer = &img.manifests[0].layer_digests[0];
    testbed::poll_until(
        "the first run downloading",
        std::time::Duration::from_secs(60),
        || Ok((proxy.bytes_sent_for(layer) > 0).then_some(())),
    )
    .unwrap();
    let log = env.path("second.log");
    let mut second = env.spawn_prewarm_logging(&args, std::fs::File::create(&log).unwrap());
    let first = tokio::task::block_in_place(|| first.wait()).unwrap();
    let second = tokio::task::block_in_place(|| second.wait()).unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        first.success() && second.success(),
        "{first} {second}: {text}"
    );
    assert!(text.contains("another prewarm pull is running"), "{text}");
    assert_eq!(env.report().images[0].status, ImageStatus::Present);
    env.assert_visible_as(&via(&proxy, &img), &img, 0).await;
}

/// containerd restarted mid-pull (stopped, then started again on the same
/// root): prewarm waits for it, resumes under the same lease, and ends
/// with the image, downloading nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restarted_mid_pull_is_waited_for() {
    let mut env = Env::start();
    let img = push(
        &env.registry.host(),
        "restart/app:1",
        &[linux("amd64", None, layers(500, &[Gzip, Gzip], 3 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let proxy = proxied(&env);
    proxy.throttle(Some(2 << 20));
    let reference = via(&proxy, &img);
    let config = env.config_with(&[(&reference, true)], "retries = 1", "");
    let log = env.path("restart.log");
    let mut child = env.spawn_prewarm_logging(
        &["pull", "--config", config.to_str().unwrap()],
        std::fs::File::create(&log).unwrap(),
    );
    let layer_digests = img.manifests[0].layer_digests.clone();
    let ingest = env
        .containerd
        .root
        .join("io.containerd.content.v1.content/ingest");
    testbed::poll_until(
        "1 MiB of a layer in containerd's ingest",
        std::time::Duration::from_secs(60),
        || {
            let stored = std::fs::read_dir(&ingest)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|d| std::fs::metadata(d.path().join("data")).ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0);
            Ok((stored >= 1 << 20).then_some(()))
        },
    )
    .unwrap();
    env.containerd.restart().unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}: {text}");
    assert!(text.contains("containerd stopped answering"), "{text}");
    assert_eq!(env.report().images[0].status, ImageStatus::Pulled);
    // Resumed from what containerd had stored (at least 1 MiB of one of
    // the layers, downloaded side by side), not from the start: only what
    // was in flight when it stopped comes twice.
    let from: Vec<u64> = proxy
        .requests()
        .into_iter()
        .filter(|q| layer_digests.iter().any(|l| q.path.contains(l.as_str())) && q.method == "GET")
        .filter_map(|q| q.range)
        .filter_map(|r| {
            r.trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .ok()
        })
        .collect();
    assert!(
        from.iter().any(|&f| f >= 1 << 20),
        "no Range from the stored offset: {:?}",
        proxy.requests()
    );
    env.assert_visible_as(&reference, &img, 0).await;
}

/// containerd stopped mid-pull and not back before the deadline: the run
/// waits for it until then, writes its report, and exits 4 (containerd
/// unreachable), not 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_gone_for_good_exits_4() {
    let mut env = Env::start();
    let img = push(
        &env.registry.host(),
        "gone/app:1",
        &[linux("amd64", None, layers(510, &[Gzip], 3 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let proxy = proxied(&env);
    proxy.throttle(Some(1 << 20));
    let reference = via(&proxy, &img);
    let config = env.config_with(&[(&reference, true)], "retries = 1\ndeadline = \"8s\"", "");
    let log = env.path("gone.log");
    let mut child = env.spawn_prewarm_logging(
        &["pull", "--config", config.to_str().unwrap()],
        std::fs::File::create(&log).unwrap(),
    );
    testbed::poll_until(
        "the layer's download under way",
        std::time::Duration::from_secs(60),
        || Ok((proxy.bytes_sent_for("/blobs/") > 256 << 10).then_some(())),
    )
    .unwrap();
    env.containerd.stop();
    let status = testbed::poll_until("the run to end", std::time::Duration::from_secs(60), || {
        Ok(child.try_wait()?)
    })
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(4), "{text}");
    assert!(text.contains("containerd does not answer"), "{text}");
    let report = env.report();
    assert_eq!(report.images[0].status, ImageStatus::Failed);
    assert_eq!(report.summary.required_missing, 1);
}

/// A registry that stops sending in the middle of a layer and holds the
/// connection open: given up after read-timeout, and the layer resumes
/// from what containerd's ingest holds (Range), while it is unpacked in the
/// same pass; the image ends whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_stalls_mid_body_is_given_up_and_resumed() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "stall/app:1",
        &[linux("amd64", None, layers(520, &[Gzip], 4 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let layer = img.manifests[0].layer_digests[0].clone();
    let proxy = proxied(&env);
    proxy.stall_next(&format!("blobs/{layer}"), 1);
    let dropin = env.path("root/etc/prewarm/config.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("60-timeout.toml"),
        "version = 1\n[registry]\nread-timeout = \"1s\"\n",
    )
    .unwrap();
    let reference = via(&proxy, &img);
    let config = env.config(&[(&reference, true)], "");
    let started = std::time::Instant::now();
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(
        exit_code(&out),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "not the 30 s stall"
    );
    assert_resumed_with_range(&proxy, &layer);
    env.assert_visible_as(&reference, &img, 0).await;
}

/// The layer was asked for again with `Range: bytes=N-`, N > 0.
fn assert_resumed_with_range(proxy: &testbed::FaultProxy, layer: &str) {
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(layer) && r.method == "GET")
        .collect();
    let resumed = gets
        .iter()
        .filter_map(|r| r.range.as_deref())
        .filter(|v| v.ends_with('-'))
        .filter_map(|v| {
            v.trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse::<u64>()
                .ok()
        })
        .any(|from| from > 0);
    assert!(
        resumed,
        "resumed with a Range from the stored offset: {gets:?}"
    );
}

/// A connection reset (RST) mid-body: the same run asks for the rest with
/// `Range` from what the ingest holds, and ends with the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_body_is_resumed_in_the_same_run() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "reset/app:1",
        &[linux("amd64", None, layers(540, &[Gzip, Zstd], 4 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let proxy = proxied(&env);
    let layers = img.manifests[0].layer_digests.clone();
    for layer in &layers {
        proxy.reset_next(&format!("blobs/{layer}"), 1);
    }
    let reference = via(&proxy, &img);
    let config = env.config(&[(&reference, true)], "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(
        exit_code(&out),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A reset, not a clean close, and the log says so.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Connection reset by peer"), "{log}");
    let report = env.report();
    assert_eq!(report.images[0].status, ImageStatus::Pulled);
    for layer in &layers {
        assert_resumed_with_range(&proxy, layer);
    }
    // Each layer's bytes crossed the wire about once: half before the
    // reset, the rest after it.
    let sent: u64 = layers.iter().map(|l| proxy.bytes_sent_for(l)).sum();
    assert!(
        sent < img.manifests[0].compressed_size + (1 << 20),
        "{sent} sent for {} bytes of layers",
        img.manifests[0].compressed_size
    );
    env.assert_visible_as(&reference, &img, 0).await;
}

/// kill -9 while the image records are written (after the tag's record,
/// before the digest's and the image ID's; a debug build's failpoint holds
/// the run there): the re-run finds the image not present, writes every
/// record, and downloads no blob again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_records_then_a_rerun_writes_them_all() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "records/app:1",
        &[linux("amd64", None, layers(530, &[Gzip, Zstd], 1 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let proxy = proxied(&env);
    let reference = via(&proxy, &img);
    let config = env.config(&[(&reference, true)], "");
    let args = ["pull", "--config", config.to_str().unwrap()];
    let marker = env.path("failpoint");
    let mut child = env.spawn_prewarm_env(
        &args,
        &[
            ("PREWARM_FAILPOINT", "between-records".as_ref()),
            ("PREWARM_FAILPOINT_FILE", marker.as_os_str()),
        ],
        std::process::Stdio::null(),
    );
    testbed::poll_until(
        "the run at the failpoint",
        std::time::Duration::from_secs(60),
        || Ok(marker.exists().then_some(())),
    )
    .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let client = env.client().await;
    let parsed = prewarm::reference::Reference::parse(&reference).unwrap();
    let manifest = &img.manifests[0];
    let tag = parsed.tag_name().unwrap();
    let by_digest = parsed.digest_name(&manifest.digest);
    assert!(
        client.image_get(&tag).await.unwrap().is_some(),
        "the tag's record was written"
    );
    assert!(
        client.image_get(&by_digest).await.unwrap().is_none(),
        "killed before the digest's record"
    );
    let layer_gets = || {
        proxy
            .requests()
            .into_iter()
            .filter(|r| {
                r.method == "GET"
                    && manifest
                        .layer_digests
                        .iter()
                        .any(|l| r.path.contains(l.as_str()))
            })
            .count()
    };
    let fetched = layer_gets();
    assert!(fetched >= manifest.layer_digests.len(), "{fetched}");

    let out = env.prewarm(&args);
    assert_eq!(
        exit_code(&out),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not present (two records missing), so pulled: with nothing to
    // download.
    let report = env.report();
    assert_eq!(report.images[0].status, ImageStatus::Pulled);
    assert_eq!(report.images[0].bytes, 0);
    assert_eq!(
        layer_gets(),
        fetched,
        "no blob downloaded again: {:?}",
        proxy.requests()
    );
    env.assert_visible_as(&reference, &img, 0).await;
}

/// The race of the issue that opened the fault matrix (#17): two `prewarm
/// pull` runs of the same list and kubelet's CRI pull of the same image,
/// against one containerd; 25 small layers then 3 big ones, `retries = 2`.
/// Every puller ends well, the report written last says the image is
/// there, kubelet sees it by tag and by digest, and no ingest is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pullers_and_a_cri_pull_of_the_same_image() {
    let env = Env::start();
    let mut specs = layers(900, &[Gzip; 25], 16 << 10);
    specs.extend(layers(950, &[Gzip, Zstd, Gzip], 3 << 20));
    let img = push(
        &env.registry.host(),
        "three/app:1",
        &[linux("amd64", None, specs)],
        Format::Oci,
        &env.path("images"),
    );
    let proxy = proxied(&env);
    proxy.throttle(Some(4 << 20));
    env.containerd
        .write_hosts_toml(&proxy.host(), &format!("http://{}", proxy.host()), None)
        .unwrap();
    let reference = via(&proxy, &img);
    let config = env.config_with(&[(&reference, true)], "retries = 2", "");
    let args = ["pull", "--config", config.to_str().unwrap()];
    let first_log = env.path("first.log");
    let second_log = env.path("second.log");
    let mut first = env.spawn_prewarm_logging(&args, std::fs::File::create(&first_log).unwrap());
    let mut second = env.spawn_prewarm_logging(&args, std::fs::File::create(&second_log).unwrap());
    let pulled = common::core::cri_pull(&env, &reference).await;
    let first = tokio::task::block_in_place(|| first.wait()).unwrap();
    let second = tokio::task::block_in_place(|| second.wait()).unwrap();
    let logs = format!(
        "{}\n---\n{}",
        std::fs::read_to_string(&first_log).unwrap_or_default(),
        std::fs::read_to_string(&second_log).unwrap_or_default()
    );
    assert!(
        first.success() && second.success(),
        "{first} {second}: {logs}"
    );
    assert!(logs.contains("another prewarm pull is running"), "{logs}");
    common::core::assert_race_ended_well(&env, &reference, &img, &pulled).await;
}
