//! The aarch64 release binary (`scripts/build-release.sh aarch64`), run
//! under Debian's qemu-user-static against Debian's arm64 containerd, also
//! under qemu-user (`scripts/containerd-versions.sh bookworm:arm64`; both
//! run before the tests in `scripts/test.sh`). An arm64 containerd is what
//! an arm64 node runs, and only it shows kubelet's view: CRI on an x86_64
//! containerd looks an image up for linux/amd64 and would not see an arm64
//! one.
//!
//! A multi-arch image (amd64, arm64/v8, arm/v7, in that order): prewarm
//! picks arm64 as containerd does (`v8` is arm64's default variant), pulls
//! and unpacks only its layers, and CRI sees the image by tag and by
//! digest. A missing binary or containerd fails the test, saying how to
//! get it.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testbed::{Compression::Gzip, Compression::Zstd, Format};

fn aarch64_binary() -> PathBuf {
    let bin = std::env::var_os("PREWARM_AARCH64_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/aarch64-unknown-linux-musl/release/prewarm")
        });
    assert!(
        bin.exists(),
        "{} is missing: run scripts/build-release.sh aarch64",
        bin.display()
    );
    bin
}

/// The aarch64 prewarm, under qemu-user.
fn run_aarch64(env: &Env, args: &[&str]) -> Output {
    let root = env.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let out = Command::new("qemu-aarch64-static")
        .arg(aarch64_binary())
        .arg("--config-root")
        .arg(&root)
        .args(args)
        .output()
        .expect("running qemu-aarch64-static (Debian's qemu-user-static)");
    eprintln!(
        "prewarm (aarch64) {args:?} → {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aarch64_binary_pulls_the_arm64_image_of_a_multi_arch_index() {
    let binary = testbed::containerd_of_suite("bookworm:arm64").unwrap_or_else(|e| panic!("{e:#}"));
    let env = Env::start_with(&binary);
    let daemon = std::fs::read_link(format!("/proc/{}/exe", env.containerd.pid())).unwrap();
    assert!(
        daemon.ends_with("qemu-aarch64-static"),
        "containerd runs under qemu-user: {}",
        daemon.display()
    );
    let img = push(
        &env.registry.host(),
        "multi/app:1",
        &[
            linux("amd64", None, layers(1000, &[Gzip], 512 << 10)),
            linux("arm64", Some("v8"), layers(1010, &[Gzip, Zstd], 512 << 10)),
            linux("arm", Some("v7"), layers(1020, &[Gzip], 512 << 10)),
        ],
        Format::Oci,
        &env.path("images"),
    );
    let config = env.config(&[(img.reference.as_str(), true)], "");
    let out = run_aarch64(&env, &["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    // kubelet's view on the arm64 containerd: by tag and by digest, the
    // arm64 manifest's config as the image ID, every layer unpacked.
    env.assert_visible(&img, 1).await;
    // Only arm64's layers were fetched.
    let client = env.client().await;
    for (i, m) in img.manifests.iter().enumerate() {
        for layer in &m.layer_digests {
            let held = client.content_info(layer).await.unwrap().is_some();
            assert_eq!(held, i == 1, "manifest {i} layer {layer}");
        }
    }
    // And the binary's own view agrees.
    let out = run_aarch64(&env, &["status", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
}
