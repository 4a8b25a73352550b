//! Proves the real daemons, images and fault proxy work on this machine.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use testbed::http::request;
use testbed::*;

fn tmp() -> Result<tempfile::TempDir> {
    // Short paths: containerd's unix socket lives inside.
    Ok(tempfile::Builder::new().prefix("tb").tempdir_in("/tmp")?)
}

fn layer(c: Compression, files: &[(&str, &[u8])]) -> LayerSpec {
    LayerSpec {
        files: files
            .iter()
            .map(|(p, d)| (p.to_string(), d.to_vec()))
            .collect(),
        compression: c,
        ..Default::default()
    }
}

fn mounts_under(dir: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let d = dir.to_string_lossy();
    info.lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&*d)))
        .count()
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Containerd>();
    check::<Registry>();
    check::<FaultProxy>();
}

#[test]
fn containerd_starts_answers_and_stops() -> Result<()> {
    let t = tmp()?;
    let mut c = Containerd::start(t.path())?;
    let pid = c.pid();
    let v = c.ctr(&["version"])?;
    ensure!(v.contains("Server:"), "unexpected ctr version output: {v}");
    let ls = c.ctr(&["images", "ls"])?;
    ensure!(ls.starts_with("REF"), "{ls}");
    let plugins = c.ctr(&["plugins", "ls"])?;
    for p in ["overlayfs", "cri"] {
        let line = plugins
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(p));
        ensure!(
            line.is_some_and(|l| l.trim_end().ends_with("ok")),
            "plugin {p} not ok:\n{plugins}"
        );
    }
    c.stop();
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "containerd {pid} still exists"
    );
    ensure!(
        mounts_under(&c.dir) == 0,
        "mounts left under {}",
        c.dir.display()
    );
    c.stop(); // idempotent
    Ok(())
}

#[test]
fn images_push_and_pull_into_containerd() -> Result<()> {
    let t = tmp()?;
    let reg = Registry::start(&t.path().join("reg"))?;
    let c = Containerd::start(&t.path().join("c"))?;
    let work = t.path().join("work");
    std::fs::create_dir_all(&work)?;
    let big = random_bytes(7, 300_000);
    let two_layers = vec![
        layer(
            Compression::Gzip,
            &[("etc/hello", b"hello\n"), ("usr/share/big", &big)],
        ),
        layer(
            Compression::Zstd,
            &[("opt/app/run", b"#!/bin/sh\necho hi\n")],
        ),
    ];

    let single = push_image(
        &reg.host(),
        "test/single:v1",
        &[ImageSpec::linux("amd64", two_layers.clone())],
        Format::Oci,
        &work,
        None,
    )?;
    ensure!(!single.is_index && single.manifests.len() == 1);
    let m = &single.manifests[0];
    ensure!(m.digest == single.top_digest && m.layer_digests.len() == 2 && m.diff_ids.len() == 2);
    ensure!(
        m.compressed_size > 300_000 && m.unpacked_size > 300_000,
        "{m:?}"
    );

    let arm = ImageSpec {
        variant: Some("v8".into()),
        ..ImageSpec::linux(
            "arm64",
            vec![layer(Compression::None, &[("arm/only", b"arm")])],
        )
    };
    let multi = push_image(
        &reg.host(),
        "test/multi:v1",
        &[ImageSpec::linux("amd64", two_layers.clone()), arm.clone()],
        Format::Oci,
        &work,
        None,
    )?;
    ensure!(multi.is_index && multi.manifests.len() == 2);
    ensure!(multi.manifests[1].platform == ("linux".into(), "arm64".into(), Some("v8".into())));
    // Same content, same platform: the amd64 manifest equals the single image.
    ensure!(multi.manifests[0].digest == single.top_digest);

    let gz = |s: &str| layer(Compression::Gzip, &[("d/file", s.as_bytes())]);
    let docker = push_image(
        &reg.host(),
        "test/docker:v1",
        &[ImageSpec::linux(
            "amd64",
            vec![gz("a"), layer(Compression::None, &[("x", b"y")])],
        )],
        Format::DockerV2S2,
        &work,
        None,
    )?;
    let docker_list = push_image(
        &reg.host(),
        "test/dockerlist:v1",
        &[
            ImageSpec::linux("amd64", vec![gz("b")]),
            ImageSpec {
                layers: vec![gz("c")],
                ..arm
            },
        ],
        Format::DockerV2S2,
        &work,
        None,
    )?;
    ensure!(docker_list.is_index);

    // The registry serves exactly those digests with the right media types.
    let addr = reg.addr;
    for (img, mt) in [
        (&single, "application/vnd.oci.image.manifest.v1+json"),
        (&multi, "application/vnd.oci.image.index.v1+json"),
        (
            &docker,
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
        (
            &docker_list,
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ] {
        let (repo, _) = img.reference[reg.host().len() + 1..]
            .split_once(':')
            .context("ref")?;
        let path = format!("/v2/{repo}/manifests/{}", img.top_digest);
        let r = request(addr, "HEAD", &path, &[("Accept", mt)], &[])?;
        ensure!(r.head.status() == 200, "HEAD {path}: {}", r.head.start);
        ensure!(
            r.head.get("content-type") == Some(mt),
            "{path}: {:?}",
            r.head.get("content-type")
        );
    }

    for img in [&single, &multi, &docker, &docker_list] {
        c.ctr(&["images", "pull", "--plain-http", &img.reference])
            .with_context(|| format!("pulling {}", img.reference))?;
    }
    let ls = c.ctr(&["images", "ls"])?;
    for img in [&single, &multi, &docker, &docker_list] {
        ensure!(
            ls.contains(&img.top_digest),
            "{} missing from:\n{ls}",
            img.top_digest
        );
    }
    // Complete and unpacked into overlayfs snapshots.
    let check = c.ctr(&["images", "check"])?;
    // (The CRI plugin adds `sha256:<config>` refs for images in k8s.io.)
    let unpacked = check.lines().filter(|l| {
        l.starts_with(&reg.host()) && l.contains("complete") && l.trim_end().ends_with("true")
    });
    ensure!(unpacked.count() == 4, "{check}");
    let snaps = c.ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])?;
    ensure!(snaps.lines().count() > 4, "{snaps}");
    Ok(())
}

#[test]
fn tls_token_registry_requires_auth_and_accepts_push() -> Result<()> {
    let t = tmp()?;
    let reg = Registry::start_tls_token(&t.path().join("reg"))?;
    let tls = reg.tls.clone().context("tls")?;
    ensure!(reg.url().starts_with("https://"));

    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "--cacert"])
        .arg(&tls.ca_cert)
        .arg(format!("{}/v2/", reg.url()))
        .output()?;
    let head = String::from_utf8_lossy(&out.stdout);
    ensure!(
        head.starts_with("HTTP/1.1 401") || head.starts_with("HTTP/2 401"),
        "{head}"
    );
    let challenge = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .context("no WWW-Authenticate")?;
    ensure!(
        challenge.contains("Bearer realm=\"http://127.0.0.1:"),
        "{challenge}"
    );

    let work = t.path().join("work");
    std::fs::create_dir_all(&work)?;
    let img = ImageSpec::linux("amd64", vec![layer(Compression::Gzip, &[("f", b"tls")])]);
    let pushed = push_image(
        &reg.host(),
        "secure/app:1",
        &[img],
        Format::Oci,
        &work,
        Some(&tls),
    )?;
    let reqs = reg.token_requests();
    ensure!(
        reqs.iter()
            .any(|r| r.granted && r.scopes.iter().any(|s| s.contains("push"))),
        "{reqs:?}"
    );

    // Wrong credentials are refused by the token server.
    let realm = challenge
        .split("realm=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("realm")?;
    let realm_addr: SocketAddr = realm
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .parse()?;
    let bad = request(
        realm_addr,
        "GET",
        "/token?scope=x",
        &[("Authorization", "Basic cHJld2FybTp4")],
        &[],
    )?;
    ensure!(bad.head.status() == 401, "{}", bad.head.start);

    // containerd pulls it through hosts.toml (CA) and the token server.
    let c = Containerd::start(&t.path().join("c"))?;
    c.write_hosts_toml(&reg.host(), &reg.url(), Some(&tls.ca_cert))?;
    let hosts_dir = c.config_path_dir.to_string_lossy().into_owned();
    let user = format!("{}:{}", tls.username, tls.password);
    c.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        &hosts_dir,
        "--user",
        &user,
        &pushed.reference,
    ])?;
    ensure!(c.ctr(&["images", "ls"])?.contains(&pushed.top_digest));
    Ok(())
}

#[test]
fn fault_proxy_fails_corrupts_truncates_and_logs() -> Result<()> {
    let t = tmp()?;
    let mut reg = Registry::start(&t.path().join("reg"))?;
    let blob = random_bytes(1, 100_000);
    let img = ImageSpec::linux("amd64", vec![layer(Compression::None, &[("b", &blob)])]);
    let pushed = push_image(&reg.host(), "f/x:1", &[img], Format::Oci, t.path(), None)?;
    let m = &pushed.manifests[0];
    let (layer_digest, size) = (&m.layer_digests[0], m.compressed_size);
    let proxy = FaultProxy::start(reg.addr)?;
    let blob_path = format!("/v2/f/x/blobs/{layer_digest}");
    let get = |extra: &[(&str, &str)]| request(proxy.addr, "GET", &blob_path, extra, &[]);
    let good = get(&[])?;
    ensure!(good.head.status() == 200 && good.body.len() as u64 == size);

    proxy.fail_next("/blobs/", 2, 503);
    ensure!(get(&[])?.head.status() == 503);
    ensure!(get(&[])?.head.status() == 503);
    ensure!(get(&[])?.head.status() == 200);

    proxy.corrupt_next(&layer_digest[7..], 1);
    let bad = get(&[])?;
    let diff = bad
        .body
        .iter()
        .zip(&good.body)
        .filter(|(a, b)| a != b)
        .count();
    ensure!(
        bad.body.len() == good.body.len() && diff == 1,
        "diff {diff}"
    );

    let part = get(&[("Range", "bytes=10-19")])?;
    ensure!(part.head.status() == 206 && part.body == good.body[10..20]);

    proxy.truncate_next("/blobs/", 1);
    ensure!(get(&[]).is_err(), "truncated body must fail to read fully");

    let log = proxy.requests();
    ensure!(log.len() == 7, "{log:?}");
    ensure!(log[1].status == 503 && log[1].body_bytes_sent == 0);
    ensure!(log[5].range.as_deref() == Some("bytes=10-19") && log[5].body_bytes_sent == 10);
    ensure!(log[6].body_bytes_sent == size / 2, "{:?}", log[6]);
    ensure!(proxy.bytes_sent_for(&layer_digest[7..]) == 3 * size + 10 + size / 2);

    proxy.throttle(Some(400_000));
    let start = std::time::Instant::now();
    ensure!(get(&[])?.body == good.body);
    ensure!(start.elapsed().as_millis() >= 200, "throttle had no effect");
    proxy.throttle(None);

    // Registry gone: the proxy answers 502; back on the same port: 200 again.
    reg.stop();
    ensure!(get(&[])?.head.status() == 502);
    reg.restart()?;
    ensure!(get(&[])?.head.status() == 200);
    let head = request(proxy.addr, "HEAD", &blob_path, &[], &[])?;
    ensure!(head.head.content_length() == Some(size));
    proxy.clear();
    ensure!(proxy.requests().is_empty());
    Ok(())
}
