//! containerd's root on a small loop-mounted ext4 filesystem: the preload
//! fills up to the reserve and no further, skips what does not fit with a
//! reason, and aborts cleanly when something else eats the space mid-pull.

mod common;

use common::loopfs::{run, small_env, MIB};
use common::*;
use prewarm::report::ImageStatus;
use std::process::Command;
use std::time::Duration;
use testbed::{Compression::Gzip, FaultProxy, Format};

/// Incompressible single-layer images of `mib` MiB each.
fn images(env: &Env, host: &str, count: u64, mib: usize) -> Vec<testbed::PushedImage> {
    (0..count)
        .map(|i| {
            push(
                host,
                &format!("fill/img{i}:1"),
                &[linux(
                    "amd64",
                    None,
                    layers(900 + i * 10, &[Gzip], mib << 20),
                )],
                Format::Oci,
                &env.path("images"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_up_to_the_reserve_and_skips_the_rest() {
    let (env, fs) = small_env(400);
    let pushed = images(&env, &env.registry.host(), 5, 40);
    let refs: Vec<(&str, bool)> = pushed
        .iter()
        .map(|p| (p.reference.as_str(), false))
        .collect();
    let config = env.config(
        &refs,
        "[disk]\nreserve = \"100MiB\"\nmax-usage-percent = 100\n",
    );
    let before = fs.available();
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0, "best-effort images do not fail the run");
    let report = env.report();
    // Each image needs its compressed size plus its unpacked size (read
    // from the gzip trailer), about 85 MiB; as many fit as the space above
    // the reserve holds, smallest first, and not one more.
    let mut needs: Vec<u64> = pushed
        .iter()
        .map(|p| p.manifests[0].compressed_size + p.manifests[0].unpacked_size)
        .collect();
    needs.sort();
    let allowance = before - 100 * MIB;
    let fits = needs
        .iter()
        .scan(0u64, |sum, n| {
            *sum += n;
            Some(*sum)
        })
        // Manifests and configs: a few KiB an image.
        .take_while(|sum| sum + 16 * 1024 <= allowance)
        .count();
    let pulled = report.summary.pulled;
    assert_eq!(pulled, fits, "{report:#?}");
    assert_eq!(report.summary.skipped, 5 - pulled, "{report:#?}");
    for img in &report.images {
        if img.status == ImageStatus::Skipped {
            assert!(
                img.reason
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("disk-budget"),
                "{img:?}"
            );
        }
    }
    let after = fs.available();
    assert!(
        after >= 100 * MIB,
        "the reserve held: {after} bytes free (was {before})"
    );
    // containerd still answers, and what was recorded is complete.
    env.containerd.ctr(&["version"]).unwrap();
    for (img, r) in pushed.iter().zip(&report.images) {
        let _ = r;
        let status = report
            .images
            .iter()
            .find(|i| i.reference == img.reference)
            .unwrap()
            .status;
        if status == ImageStatus::Pulled {
            env.assert_visible(img, 0).await;
        }
    }
    // plan agrees with what was done: the rest still does not fit.
    let out = env.prewarm(&["plan", "--config", config.to_str().unwrap()]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        plan.lines().filter(|l| l.contains(" skip ")).count(),
        5 - pulled,
        "{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_cleanly_when_space_runs_out_mid_pull() {
    let (env, fs) = small_env(300);
    let proxy = FaultProxy::start(env.registry.addr).unwrap();
    let pushed = images(&env, &env.registry.host(), 1, 90);
    let reference = pushed[0]
        .reference
        .replacen(&env.registry.host(), &proxy.host(), 1);
    let config = env.config(
        &[(&reference, true)],
        "[disk]\nreserve = \"60MiB\"\nmax-usage-percent = 100\n",
    );
    proxy.throttle(Some(8 * MIB));
    let root = env.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .arg("--config-root")
        .arg(&root)
        .args(["pull", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the download is under way, something else on the node takes
    // the space the plan counted on.
    testbed::poll_until("the download to start", Duration::from_secs(30), || {
        Ok((proxy.bytes_sent_for("/blobs/") > 4 * MIB).then_some(()))
    })
    .unwrap();
    let filler = fs.mount.join("filler");
    let take = fs.available().saturating_sub(80 * MIB);
    std::fs::File::create(&filler).unwrap().set_len(0).unwrap();
    run(Command::new("fallocate")
        .arg("-l")
        .arg(take.to_string())
        .arg(&filler));
    proxy.throttle(None);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        exit_code(&out),
        3,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = env.report();
    let img = &report.images[0];
    assert_eq!(img.status, ImageStatus::Failed);
    let reason = img.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("disk-full") && reason.contains("reserve"),
        "{reason}"
    );
    assert!(img.bytes > 0, "the report says how much was downloaded");
    // Nothing half-visible: no records, no lease, no ingest left behind.
    assert_eq!(
        env.containerd.ctr(&["images", "ls", "-q"]).unwrap().trim(),
        ""
    );
    assert_eq!(
        env.containerd.ctr(&["leases", "ls", "-q"]).unwrap().trim(),
        ""
    );
    assert_eq!(
        env.containerd
            .ctr(&["content", "active"])
            .unwrap()
            .lines()
            .count(),
        1
    );
    std::fs::remove_file(&filler).unwrap();
}

/// Four images on one 60 MiB base, with 4 MiB of their own each. Counted
/// per image they need 4 × 128 MiB, far over the ~270 MiB above the
/// reserve; counted once, 120 + 4 × 8 MiB fit. A second pass over a node
/// that already holds the base charges only the new image's own layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_shared_between_images_are_counted_once() {
    let (env, fs) = small_env(400);
    let host = env.registry.host();
    let base = layers(700, &[Gzip], 60 << 20).remove(0);
    let image = |i: u64| {
        let own = layers(800 + i, &[Gzip], 4 << 20).remove(0);
        push(
            &host,
            &format!("cuda/app{i}:1"),
            &[linux("amd64", None, vec![base.clone(), own])],
            Format::Oci,
            &env.path("images"),
        )
    };
    let pushed: Vec<_> = (0..5).map(image).collect();
    // The premise: one base blob, shared.
    let bases: std::collections::BTreeSet<&str> = pushed
        .iter()
        .map(|p| p.manifests[0].layer_digests[0].as_str())
        .collect();
    assert_eq!(bases.len(), 1, "{bases:?}");
    let refs: Vec<(&str, bool)> = pushed[..4]
        .iter()
        .map(|p| (p.reference.as_str(), false))
        .collect();
    let extra = "[disk]\nreserve = \"100MiB\"\nmax-usage-percent = 100\n";
    let config = env.config(&refs, extra);
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.summary.pulled, 4, "{report:#?}");
    assert!(fs.available() >= 100 * MIB, "the reserve held");
    for img in &pushed[..4] {
        env.assert_visible(img, 0).await;
    }

    // The fifth image: the base is on the node, so the plan charges only
    // its own layer (4 MiB compressed, about as much unpacked), although
    // the image as a whole is not present.
    let refs: Vec<(&str, bool)> = pushed
        .iter()
        .map(|p| (p.reference.as_str(), false))
        .collect();
    let config = env.config(&refs, extra);
    let out = env.prewarm(&["plan", "--config", config.to_str().unwrap()]);
    let plan = String::from_utf8_lossy(&out.stdout);
    let line = plan
        .lines()
        .find(|l| l.contains("cuda/app4:1"))
        .unwrap_or_else(|| panic!("{plan}"));
    let need: u64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(line.contains(" pull "), "{line}");
    assert!(
        (8 * MIB..12 * MIB).contains(&need),
        "only its own layer is charged: {need} bytes: {line}"
    );
}
