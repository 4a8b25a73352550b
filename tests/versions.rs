//! The core checks on the containerd versions fleets run beside Debian
//! bookworm's 1.6 (which every other test uses): Debian trixie's 1.7 and
//! sid's 2.x, fetched by `scripts/containerd-versions.sh` (which
//! `scripts/test.sh` runs first) into a cache outside the repository. A
//! version that is not there fails its test, naming the suite.
//!
//! On each: a pull visible through CRI by tag and by digest, pinned;
//! `prewarm status`; a re-run that finds everything present; the
//! in-process unpack against that version's own; unpinning once the image
//! leaves the list, and gc removing it; a pull without kept layer blobs;
//! a CRI pull of the same image at the same time; an image kubelet pulled
//! with CRI's `discard_unpacked_layers`; resume after kill -9
//! with a Range request; import from an OCI archive
//! with the registry down. Run on 1.6 only, as before: the rest of the
//! faults, list sources, the disk budget, the IO cap, the node handoff.

mod common;

use common::*;
use testbed::{Compression, Containerd};

async fn core(suite: &str) {
    let binary = testbed::containerd_of_suite(suite).unwrap_or_else(|e| panic!("{e:#}"));
    let mut env = Env::start_with(&binary);
    eprintln!("containerd {} (Debian {suite})", env.containerd.version);
    let pushed = env.push_layers(
        "versions/app:1",
        layers(40, &[Compression::Gzip, Compression::Zstd], 256 << 10),
    );
    let config = env.config(&[(pushed.reference.as_str(), true)], "");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0, "{suite}");
    env.assert_visible(&pushed, 0).await;
    // 1.7 and later report the pin label to kubelet; 1.6 does not.
    let cri = prewarm::cri::Cri::new(env.client().await.channel());
    let seen = cri.image_status(&pushed.reference).await.unwrap().unwrap();
    assert!(seen.pinned, "{suite}: CRI reports the image pinned");

    let out = env.prewarm(&["status", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0, "{suite}");
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0, "{suite}");
    assert_eq!(
        env.report().summary.present,
        1,
        "{suite}: nothing to do the second time"
    );

    // The fidelity pull lists another image only: this one is de-listed
    // and unpinned on the way. containerd 1.7 crashed on that update
    // while prewarm sent it without the record's target.
    let other = Containerd::start_binary(&env.path("c2"), &binary).unwrap();
    common::fidelity::containerd_and_prewarm_agree(
        &env,
        &other,
        "unpack-while-downloading = true\nlayer-concurrency = 4",
    )
    .await;
    let cri = prewarm::cri::Cri::new(env.client().await.channel());
    let seen = cri.image_status(&pushed.reference).await.unwrap().unwrap();
    assert!(!seen.pinned, "{suite}: de-listed, so unpinned");

    // gc removes it, and only it: the listed image stays visible.
    let listed = env.path("prewarm.toml");
    let out = env.prewarm(&["gc", "--apply", "--config", listed.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0, "{suite}");
    let client = env.client().await;
    for name in [
        pushed.reference.clone(),
        pushed.manifests[0].config_digest.clone(),
    ] {
        assert!(
            client.image_get(&name).await.unwrap().is_none(),
            "{suite}: {name} removed"
        );
    }
    let images = env.containerd.ctr(&["images", "ls", "-q"]).unwrap();
    assert!(images.contains("fidelity/app:1"), "{suite}: {images}");

    // Without kept blobs, CRI still shows the image, and a re-run finds
    // it present.
    let lean = env.push_layers(
        "versions/lean:1",
        layers(50, &[Compression::Gzip], 64 << 10),
    );
    let config = env.config_with(
        &[(lean.reference.as_str(), true)],
        "retries = 0\nkeep-layers = false",
        "",
    );
    for _ in 0..2 {
        let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
        assert_eq!(exit_code(&out), 0, "{suite}");
        env.assert_visible_without_blobs(&lean).await;
    }
    assert_eq!(env.report().summary.present, 1, "{suite}: the second run");

    common::core::cri_pull_at_the_same_time(&env).await;
    common::core::after_a_discarding_cri_pull(&binary).await;
    common::core::resume_after_kill_9(&env).await;
    common::core::import_from_an_archive(&mut env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_checks_on_containerd_1_7() {
    core("trixie").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_checks_on_containerd_2() {
    core("sid").await;
}
