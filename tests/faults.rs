//! Faults against the real containerd and registry, through a
//! fault-injecting proxy: a kill -9 mid-blob resumes with a Range request,
//! a registry answering 500 recovers, a corrupted blob is never recorded,
//! and SIGTERM leaves an honest report.

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
