//! A pull-through cache named first in the origin's hosts.toml, as fleets
//! run one (distribution in proxy mode, Harbor's proxy cache): Debian's
//! docker-registry in proxy mode in front of the origin, each behind a
//! counting proxy. The first node fills the cache; the second costs the
//! origin no blob bytes; a mirror that answers 404 or 500 for a blob, or
//! dies in the middle of one, sends the pull on to the origin (resuming
//! with Range); the report names the hosts that served each image.

mod common;

use common::core::via;
use common::*;
use prewarm::report::ImageStatus;
use std::path::PathBuf;
use std::time::Duration;
use testbed::{Compression::Gzip, Containerd, FaultProxy, Format, PushedImage, Registry};

/// The origin (the env's registry) behind `origin`, a pull-through cache
/// of it behind `front`, and hosts.toml naming the cache first.
struct Fleet {
    env: Env,
    origin: FaultProxy,
    mirror: Registry,
    front: FaultProxy,
    image: PushedImage,
    /// The image as listed: by the origin's name.
    reference: String,
}

impl Fleet {
    fn start(layer_size: usize) -> Fleet {
        let env = Env::start();
        let image = push(
            &env.registry.host(),
            "fleet/app:1",
            &[linux(
                "amd64",
                None,
                layers(300, &[Gzip, Gzip, Gzip], layer_size),
            )],
            Format::Oci,
            &env.path("images"),
        );
        let origin = FaultProxy::start(env.registry.addr).expect("starting the origin's proxy");
        let mirror =
            Registry::start_pull_through(&env.path("mirror"), &format!("http://{}", origin.host()))
                .expect("starting the pull-through cache");
        let front = FaultProxy::start(mirror.addr).expect("starting the mirror's proxy");
        let reference = via(&origin, &image);
        let hosts = env
            .containerd
            .config_path_dir
            .join(origin.host())
            .join("hosts.toml");
        std::fs::create_dir_all(hosts.parent().unwrap()).unwrap();
        std::fs::write(
            &hosts,
            format!(
                "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                origin.host(),
                front.host()
            ),
        )
        .unwrap();
        Fleet {
            env,
            origin,
            mirror,
            front,
            image,
            reference,
        }
    }

    /// A node: a fresh containerd, and the config pointing at it.
    fn node(&self, name: &str) -> (Containerd, PathBuf) {
        let c = Containerd::start(&self.env.path(name)).expect("starting a node's containerd");
        let text = std::fs::read_to_string(self.last_node()).unwrap().replace(
            &format!("{:?}", self.env.containerd.socket),
            &format!("{:?}", c.socket),
        );
        let config = self.env.path(&format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        (c, config)
    }

    /// The env's own containerd as a node, whose view of the image
    /// [`Env::assert_visible_as`] checks.
    fn last_node(&self) -> PathBuf {
        self.env
            .config_with(&[(&self.reference, true)], "retries = 3", "")
    }

    /// Pulls on `node` and returns the report.
    fn pull(&self, config: &std::path::Path) -> prewarm::report::Report {
        let out = self
            .env
            .prewarm(&["pull", "--config", config.to_str().unwrap()]);
        assert_eq!(exit_code(&out), 0);
        let report = self.env.report();
        assert_eq!(report.images[0].status, ImageStatus::Pulled);
        report
    }

    /// kubelet's view, on the env's own containerd (the last node).
    async fn assert_visible(&self) {
        self.env
            .assert_visible_as(&self.reference, &self.image, 0)
            .await;
    }

    /// Blob bytes the origin has sent.
    fn origin_blob_bytes(&self) -> u64 {
        self.origin.bytes_sent_for("/blobs/")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_through_cache_spares_the_origin_and_one_that_errs_is_passed_over() {
    let fleet = Fleet::start(1 << 20);
    let size = fleet.image.manifests[0].compressed_size;

    // Node A fills the cache: the origin sends the image once, to the
    // mirror, which serves the node.
    let (a, config_a) = fleet.node("node-a");
    let report = fleet.pull(&config_a);
    assert_eq!(report.images[0].hosts, [fleet.front.host()]);
    let after_a = fleet.origin_blob_bytes();
    // Debian's docker-registry (distribution 2.8) in proxy mode fetches a
    // blob it does not hold twice from the origin: one stream serves it,
    // another stores it. prewarm asks it once per blob.
    assert!(
        after_a >= size && after_a <= 2 * size + (64 << 10),
        "the origin sent {after_a} bytes for a {size}-byte image"
    );
    let asked: Vec<_> = fleet
        .front
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/blobs/") && r.range.is_none())
        .map(|r| r.path)
        .collect();
    let once: std::collections::BTreeSet<_> = asked.iter().collect();
    assert_eq!(
        asked.len(),
        once.len(),
        "each blob asked of the mirror once: {asked:?}"
    );
    drop(a);

    // Node B costs the origin no blob bytes (manifests at most).
    let (b, config_b) = fleet.node("node-b");
    let report = fleet.pull(&config_b);
    assert_eq!(report.images[0].hosts, [fleet.front.host()]);
    assert_eq!(
        fleet.origin_blob_bytes(),
        after_a,
        "node B's blobs came from the cache"
    );
    let layers = &fleet.image.manifests[0].layer_digests;
    assert!(fleet.front.bytes_sent_for(&layers[0]) > 0);
    drop(b);

    // Node C: the mirror answers 404 for one layer and 500 for another
    // (to every request, size probes too); those come from the origin, the
    // third from the mirror.
    let config_c = fleet.last_node();
    fleet.origin.clear();
    fleet.front.fail_next(&layers[0], 100, 404);
    fleet.front.fail_next(&layers[1], 100, 500);
    let report = fleet.pull(&config_c);
    let mut want = vec![fleet.front.host(), fleet.origin.host()];
    want.sort();
    assert_eq!(report.images[0].hosts, want);
    let origin_log = fleet.origin.requests();
    for (layer, from_origin) in [(&layers[0], true), (&layers[1], true), (&layers[2], false)] {
        let served = origin_log
            .iter()
            .any(|r| r.path.contains(layer.as_str()) && r.status == 200);
        assert_eq!(served, from_origin, "{layer}: {origin_log:?}");
    }
    fleet.assert_visible().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_dies_mid_blob_is_left_for_the_origin_with_range() {
    let mut fleet = Fleet::start(6 << 20);
    // Fill the cache first, as a node before would have.
    let (warm, config) = fleet.node("node-a");
    fleet.pull(&config);
    drop(warm);
    fleet.origin.clear();
    fleet.front.clear();

    // The next node reads the mirror slowly; the mirror dies mid-blob.
    fleet.front.throttle(Some(2 << 20));
    let config = fleet.last_node();
    let mut child = fleet
        .env
        .spawn_prewarm(&["pull", "--config", config.to_str().unwrap()]);
    let layers = fleet.image.manifests[0].layer_digests.clone();
    // Past the first MiB of one layer: containerd's ingest holds some of
    // it (prewarm writes it in 1 MiB pieces).
    testbed::poll_until(
        "a blob half through the mirror",
        Duration::from_secs(60),
        || {
            let most = layers.iter().map(|l| fleet.front.bytes_sent_for(l)).max();
            Ok((most > Some(5 << 19)).then_some(()))
        },
    )
    .unwrap();
    fleet.mirror.stop();
    let status = testbed::poll_until("the pull to end", Duration::from_secs(120), || {
        Ok(child.try_wait()?)
    })
    .unwrap();
    assert_eq!(status.code(), Some(0));
    let report = fleet.env.report();
    assert_eq!(report.images[0].status, ImageStatus::Pulled);
    assert!(report.images[0].hosts.contains(&fleet.origin.host()));
    // The origin was asked for the rest of a layer (`bytes=N-`), not all
    // of it again.
    let resumed: Vec<_> = fleet
        .origin
        .requests()
        .into_iter()
        .filter(|r| {
            r.path.contains("/blobs/")
                && r.range
                    .as_deref()
                    .is_some_and(|v| v.ends_with('-') && v != "bytes=0-")
        })
        .collect();
    assert!(!resumed.is_empty(), "{:?}", fleet.origin.requests());
    fleet.assert_visible().await;
}

/// A mirror that serves a layer with the wrong bytes: the blob is rejected
/// at commit, the next host serves it, and the report and the log name
/// the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_serving_a_wrong_digest_is_named_and_passed_over() {
    let fleet = Fleet::start(1 << 20);
    let layer = fleet.image.manifests[0].layer_digests[1].clone();
    fleet.front.corrupt_next(&layer, 100);
    let config = fleet.last_node();
    let out = fleet
        .env
        .prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    let report = fleet.env.report();
    let image = &report.images[0];
    assert_eq!(image.status, ImageStatus::Pulled);
    assert_eq!(image.rejected_hosts, [fleet.front.host()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("digest is wrong") && said.contains(&fleet.front.host()),
        "{said}"
    );
    // Asked of the mirror once (the size probe aside), then of the origin.
    let full_gets = |p: &FaultProxy| {
        p.requests()
            .iter()
            .filter(|r| r.path.contains(layer.as_str()) && r.range.is_none())
            .count()
    };
    assert_eq!(
        (full_gets(&fleet.front), full_gets(&fleet.origin) > 0),
        (1, true)
    );
    fleet.assert_visible().await;
}

/// A mirror that hangs (answers nothing) is given up after the registry's
/// read-timeout, and the origin serves the manifest and the layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_hangs_is_given_up_after_the_read_timeout() {
    let fleet = Fleet::start(1 << 20);
    let dropin = fleet.env.path("root/etc/prewarm/config.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("60-timeout.toml"),
        "version = 1\n[registry]\nread-timeout = \"1s\"\n",
    )
    .unwrap();
    let layer = fleet.image.manifests[0].layer_digests[2].clone();
    fleet.front.hang_next("/manifests/", 1);
    fleet.front.hang_next(&layer, 100);
    let config = fleet.last_node();
    let started = std::time::Instant::now();
    let out = fleet
        .env
        .prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    // Each hang costs the timeout, not the 30 s the mirror would hold it.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    let report = fleet.env.report();
    assert_eq!(report.images[0].status, ImageStatus::Pulled);
    assert!(report.images[0].hosts.contains(&fleet.origin.host()));
    let from_origin = fleet
        .origin
        .requests()
        .iter()
        .any(|r| r.path.contains(layer.as_str()) && r.status == 200 && r.range.is_none());
    assert!(from_origin, "{:?}", fleet.origin.requests());
    fleet.assert_visible().await;
}
