//! A registry behind TLS (private CA from hosts.toml) and token auth
//! (credentials from docker config.json), as real clusters run them.

mod common;

use common::*;
use prewarm::report::ImageStatus;
use testbed::{Compression::Gzip, Containerd, Format, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_over_tls_with_token_auth() {
    let dir = tempfile::Builder::new()
        .prefix("pw")
        .tempdir_in("/tmp")
        .unwrap();
    let registry = Registry::start_tls_token(&dir.path().join("r")).unwrap();
    let tls = registry.tls.clone().unwrap();
    let img = testbed::push_image(
        &registry.host(),
        "secure/app:1",
        &[linux("amd64", None, layers(500, &[Gzip, Gzip], 128 << 10))],
        Format::Oci,
        &dir.path().join("images"),
        Some(&tls),
    )
    .unwrap();
    let env = Env {
        containerd: Containerd::start(&dir.path().join("c")).unwrap(),
        registry,
        dir,
    };
    env.containerd
        .write_hosts_toml(
            &env.registry.host(),
            &env.registry.url(),
            Some(&tls.ca_cert),
        )
        .unwrap();
    let config = env.config(&[(&img.reference, true)], "");
    let config = config.to_str().unwrap();

    // Wrong password: a clear failure naming the image, nothing recorded.
    write_auth(
        &env.path("auth.json"),
        &env.registry.host(),
        &tls.username,
        "wrong",
    );
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 3);
    let reason = env.report().images[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("secure/app"), "{reason}");
    assert_eq!(
        env.containerd.ctr(&["images", "ls", "-q"]).unwrap().trim(),
        ""
    );

    write_auth(
        &env.path("auth.json"),
        &env.registry.host(),
        &tls.username,
        &tls.password,
    );
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.report().images[0].status, ImageStatus::Pulled);
    let granted: Vec<_> = env
        .registry
        .token_requests()
        .into_iter()
        .filter(|t| t.granted && t.scopes.iter().any(|s| s == "repository:secure/app:pull"))
        .collect();
    assert!(!granted.is_empty(), "a pull-scoped token was issued");
    env.assert_visible(&img, 0).await;
}
