//! Scenarios run on every containerd version (`tests/versions.rs`) as on
//! the installed one: each takes a ready [`Env`].

use super::*;
use prewarm::report::ImageStatus;
use std::path::Path;
use std::time::Duration;
use testbed::{Compression::Gzip, FaultProxy, Format};

pub fn proxied(env: &Env) -> FaultProxy {
    FaultProxy::start(env.registry.addr).expect("starting fault proxy")
}

/// The reference as seen through the proxy.
pub fn via(proxy: &FaultProxy, pushed: &testbed::PushedImage) -> String {
    let (_, rest) = pushed.reference.split_once('/').unwrap();
    format!("{}/{rest}", proxy.host())
}

/// A pull killed (SIGKILL) with part of a 12 MiB layer in containerd's
/// ingest: the re-run resumes the layer with a Range request from where
/// the ingest stopped, downloads nothing twice, and ends visible.
pub async fn resume_after_kill_9(env: &Env) {
    let size = 12 << 20;
    let img = push(
        &env.registry.host(),
        "big/resume:1",
        &[linux("amd64", None, layers(100, &[Gzip], size))],
        Format::Oci,
        &env.path("images"),
    );
    let layer = img.manifests[0].layer_digests[0].clone();
    let proxy = proxied(env);
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

/// An OCI archive on disk, the registry stopped: the image is imported
/// from the archive, nothing downloaded, and CRI sees it.
pub async fn import_from_an_archive(env: &mut Env) {
    let host = env.registry.host();
    let archives = env.path("baked");
    std::fs::create_dir_all(&archives).unwrap();
    let reference = format!("{host}/ml/archived:1");
    let img = testbed::write_oci_layout(
        &reference,
        &[linux("amd64", None, layers(700, &[Gzip, Gzip], 128 << 10))],
        &env.path("layout-archived"),
    )
    .unwrap();
    testbed::write_oci_archive(&env.path("layout-archived"), &archives.join("archived.tar"))
        .unwrap();
    env.registry.stop();
    let source = format!("[[sources]]\nkind = \"archive\"\npath = {archives:?}\nrequired = true\n");
    let config = env.config(&[], &source);
    let report = env.pull_ok(&config);
    assert_eq!(report.images.len(), 1, "{report:#?}");
    assert_eq!(report.images[0].status, ImageStatus::Pulled);
    assert!(report.images[0]
        .origin
        .as_deref()
        .unwrap_or("")
        .starts_with("archive:"));
    assert_eq!(report.images[0].bytes, 0, "nothing downloaded");
    env.assert_visible(&img, 0).await;
    env.registry.restart().unwrap();
}

/// kubelet pulls the same image through CRI while prewarm pulls it (a
/// unit restarted over a running pull, or the `alongside` drop-in): both
/// finish, one correct image is left, visible by tag and by digest, and no
/// ingest is left half-written. On containerd 2.x, CRI's pull goes through
/// the transfer service.
pub async fn cri_pull_at_the_same_time(env: &Env) {
    let img = push(
        &env.registry.host(),
        "race/app:1",
        &[linux(
            "amd64",
            None,
            layers(600, &[Gzip, Gzip, Gzip], 2 << 20),
        )],
        Format::Oci,
        &env.path("images"),
    );
    // Both through a slow proxy, so that the pulls overlap: prewarm takes
    // its layers one at a time, a second or more each.
    let proxy = proxied(env);
    proxy.throttle(Some(2 << 20));
    env.containerd
        .write_hosts_toml(&proxy.host(), &format!("http://{}", proxy.host()), None)
        .unwrap();
    let reference = via(&proxy, &img);
    let config = env.config(&[(&reference, true)], "");
    let mut child = env.spawn_prewarm(&["pull", "--config", config.to_str().unwrap()]);
    let pulled = cri_pull(env, &reference).await;
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "prewarm: {status}: {:#?}", env.report());
    assert_race_ended_well(env, &reference, &img, &pulled).await;
}

/// After pullers raced for one image: the report (written last) says it
/// is there, kubelet's pull got the same image, CRI sees it by tag and by
/// digest, and no ingest is left.
pub async fn assert_race_ended_well(
    env: &Env,
    reference: &str,
    img: &testbed::PushedImage,
    cri_pulled: &str,
) {
    let report = env.report();
    assert!(
        matches!(
            report.images[0].status,
            ImageStatus::Pulled | ImageStatus::Present
        ),
        "{report:#?}"
    );
    assert_eq!(cri_pulled, img.manifests[0].config_digest);
    env.assert_visible_as(reference, img, 0).await;
    assert_no_ingest_left(env);
}

/// kubelet's pull through CRI (`PullImage`); returns the image ID.
pub async fn cri_pull(env: &Env, reference: &str) -> String {
    use k8s_cri::v1::{image_service_client::ImageServiceClient, ImageSpec, PullImageRequest};
    let client = env.client().await;
    ImageServiceClient::new(client.channel())
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "CRI PullImage {reference}: {e}\n{}",
                env.containerd.log_tail()
            )
        })
        .into_inner()
        .image_ref
}

/// containerd's own `discard_unpacked_layers`: kubelet pulled the image
/// first, and CRI dropped its manifest's hold on the layers' blobs. Listed
/// for prewarm, it ends recorded under every name, pinned, its blobs held
/// again; a re-run finds it present.
pub async fn after_a_discarding_cri_pull(binary: &Path) {
    let env = Env::start_configured(binary, true);
    let img = env.push_layers("discard/app:1", layers(800, &[Gzip, Gzip], 256 << 10));
    let id = cri_pull(&env, &img.reference).await;
    assert_eq!(id, img.manifests[0].config_digest);
    let client = env.client().await;
    let held = |labels: &std::collections::HashMap<String, String>| {
        labels
            .keys()
            .filter(|k| k.starts_with("containerd.io/gc.ref.content.l."))
            .count()
    };
    let manifest = &img.manifests[0].digest;
    let info = client.content_info(manifest).await.unwrap().unwrap();
    assert_eq!(held(&info.labels), 0, "CRI discarded: {:?}", info.labels);

    let config = env.config(&[(img.reference.as_str(), true)], "");
    let report = env.pull_ok(&config);
    assert_eq!(
        report.images[0].status,
        ImageStatus::Pulled,
        "not pinned yet"
    );
    env.assert_visible(&img, 0).await;
    let info = client.content_info(manifest).await.unwrap().unwrap();
    assert_eq!(held(&info.labels), 2, "{:?}", info.labels);
    let report = env.pull_ok(&config);
    assert_eq!(report.images[0].status, ImageStatus::Present);
}
