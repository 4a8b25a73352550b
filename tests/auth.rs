//! A registry behind TLS (private CA from hosts.toml) and token auth
//! (credentials from docker config.json), as real clusters run them.

mod common;

use common::*;
use prewarm::report::ImageStatus;
use testbed::{Compression::Gzip, Containerd, Format, PushedImage, Registry, Tls};

/// A registry behind TLS and token auth, and a containerd whose hosts.toml
/// trusts its CA.
fn tls_env() -> (Env, Tls) {
    let dir = tempfile::Builder::new()
        .prefix("pw")
        .tempdir_in("/tmp")
        .unwrap();
    let registry = Registry::start_tls_token(&dir.path().join("r")).unwrap();
    let tls = registry.tls.clone().unwrap();
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
    (env, tls)
}

/// Pushes `name` with gzip layers made from `seed`, through the token
/// server.
fn push_tls(env: &Env, tls: &Tls, name: &str, seed: u64, n: usize, size: usize) -> PushedImage {
    testbed::push_image(
        &env.registry.host(),
        name,
        &[linux("amd64", None, layers(seed, &vec![Gzip; n], size))],
        Format::Oci,
        &env.path("images"),
        Some(tls),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_over_tls_with_token_auth() {
    let (env, tls) = tls_env();
    let img = push_tls(&env, &tls, "secure/app:1", 500, 2, 128 << 10);
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

/// Credentials from a docker credential helper named by `credHelpers`, as
/// ECR and GCR nodes get them: the helper is asked once per registry, with
/// the registry on stdin, and a helper that fails names itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_a_credential_helper() {
    use std::os::unix::fs::PermissionsExt;
    let (env, tls) = tls_env();
    let pushed: Vec<_> = [("helped/a:1", 600), ("helped/b:1", 601)]
        .iter()
        .map(|(name, seed)| push_tls(&env, &tls, name, *seed, 1, 64 << 10))
        .collect();

    // The helper logs what it was asked, and answers only for the registry.
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = env.path("helper-calls");
    let helper = bin.join("docker-credential-prewarmtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread -r server\necho \"$1 $server HOME=$HOME\" >> {calls}\n\
             if [ \"$server\" = \"{host}\" ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{pass}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            calls = calls.display(),
            host = env.registry.host(),
            user = tls.username,
            pass = tls.password,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    std::fs::write(
        env.path("auth.json"),
        format!(
            r#"{{"credHelpers": {{"{}": "prewarmtest"}}}}"#,
            env.registry.host()
        ),
    )
    .unwrap();
    let refs: Vec<(&str, bool)> = pushed
        .iter()
        .map(|p| (p.reference.as_str(), true))
        .collect();
    let config = env.config(&refs, "");
    let root = env.path("root");
    std::fs::create_dir_all(&root).unwrap();

    let out = run_prewarm_env(
        &root,
        &["pull", "--config", config.to_str().unwrap()],
        // As under systemd: no HOME of prewarm's own.
        &[("PATH", path.clone()), ("HOME", "".into())],
    );
    assert_eq!(exit_code(&out), 0);
    for img in &pushed {
        env.assert_visible(img, 0).await;
    }
    let asked = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        asked.lines().collect::<Vec<_>>(),
        vec![format!(
            "get {} HOME={}",
            env.registry.host(),
            passwd_home()
        )],
        "asked once for both images, with the registry on stdin and the \
         user's home from passwd as HOME"
    );
    let granted = env
        .registry
        .token_requests()
        .into_iter()
        .filter(|t| t.granted && t.scopes.iter().any(|s| s == "repository:helped/b:pull"))
        .count();
    assert!(granted > 0, "the helper's credentials got a token");

    // A helper that is not installed: the image fails with a reason naming
    // the helper and the auth file; nothing else is touched.
    std::fs::write(
        env.path("auth.json"),
        format!(
            r#"{{"credHelpers": {{"{}": "prewarm-absent"}}}}"#,
            env.registry.host()
        ),
    )
    .unwrap();
    let other = push_tls(&env, &tls, "helped/c:1", 650, 1, 64 << 10);
    let config = env.config(&[(&other.reference, true)], "");
    let out = run_prewarm_env(
        &root,
        &["pull", "--config", config.to_str().unwrap()],
        &[("PATH", path)],
    );
    assert_eq!(exit_code(&out), 3);
    let reason = env.report().images[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("docker-credential-prewarm-absent") && reason.contains("auth.json"),
        "{reason}"
    );
    // It was said at the start, before any pull.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("credential helper not found on PATH")
            && stderr.contains("docker-credential-prewarm-absent"),
        "{stderr}"
    );
}

/// The test user's home directory in the passwd database.
fn passwd_home() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .dir
        .display()
        .to_string()
}
