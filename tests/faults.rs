//! Faults against the real containerd and registry, through a
//! fault-injecting proxy: a kill -9 mid-blob resumes with a Range request,
//! a registry answering 500 recovers, a corrupted blob is never recorded.

mod common;

use common::*;
use prewarm::report::ImageStatus;
use std::time::Duration;
use testbed::{
    Compression::{Gzip, Zstd},
    FaultProxy, Format,
};

fn proxied(env: &Env) -> FaultProxy {
    FaultProxy::start(env.registry.addr).expect("starting fault proxy")
}

/// The reference as seen through the proxy.
fn via(proxy: &FaultProxy, pushed: &testbed::PushedImage) -> String {
    let (_, rest) = pushed.reference.split_once('/').unwrap();
    format!("{}/{rest}", proxy.host())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_blob_then_rerun_resumes_with_range() {
    let env = Env::start();
    let size = 12 << 20;
    let img = push(
        &env.registry.host(),
        "big/resume:1",
        &[linux("amd64", None, layers(100, &[Gzip], size))],
        Format::Oci,
        &env.path("images"),
    );
    let layer = img.manifests[0].layer_digests[0].clone();
    let proxy = proxied(&env);
    proxy.throttle(Some(2 << 20));
    let reference = via(&proxy, &img);
    let config = env.config(&[(&reference, true)], "");

    let mut child = env.spawn_prewarm(&["pull", "--config", config.to_str().unwrap()]);
    // Wait until several MiB of the layer are in containerd's ingest.
    let ingest = env
        .containerd
        .root
        .join("io.containerd.content.v1.content/ingest");
    testbed::poll_until(
        "a partial ingest of at least 4 MiB",
        Duration::from_secs(60),
        || {
            let mut biggest = 0;
            if let Ok(dirs) = std::fs::read_dir(&ingest) {
                for d in dirs.flatten() {
                    if let Ok(m) = std::fs::metadata(d.path().join("data")) {
                        biggest = biggest.max(m.len());
                    }
                }
            }
            Ok((biggest >= 4 << 20).then_some(()))
        },
    )
    .unwrap();
    child.kill().unwrap(); // SIGKILL: no cleanup at all
    child.wait().unwrap();
    let first_run = proxy.bytes_sent_for(&layer);
    assert!(
        first_run < size as u64,
        "killed before the end ({first_run})"
    );

    proxy.throttle(None);
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    let ranged: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(&layer) && r.method == "GET")
        .collect();
    let resumed = ranged.last().unwrap();
    let range = resumed
        .range
        .clone()
        .expect("the re-run sent a Range request");
    let from: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(
        from >= 4 << 20,
        "resumed from the stored offset, not 0: {range}"
    );
    assert_eq!(resumed.status, 206);
    let total = proxy.bytes_sent_for(&layer);
    let compressed = img.manifests[0].compressed_size;
    assert!(
        total < compressed + (2 << 20),
        "bytes were not downloaded twice: {total} sent for a {compressed}-byte image"
    );
    env.assert_visible_as(&reference, &img, 0).await;
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
