//! Keeping the preload list in step with what is deployed, against a real
//! containerd and registry: a list served over HTTPS with a checksum (and
//! its cached fallback), a tag that moves between runs, gc of de-listed
//! images, pinning, and an air-gapped import from an archive on disk.

mod common;

use common::*;
use prewarm::report::ImageStatus;
use prewarm::report::SourceStatus;
use sha2::{Digest, Sha256};
use testbed::{Compression::Gzip, FileServer, Format};

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_list_is_checked_cached_and_falls_back() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "team/web:1",
        &[linux("amd64", None, layers(100, &[Gzip], 64 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let mut server = FileServer::start(&env.path("https")).expect("starting the list server");
    let list = format!("# deployed by CI\n{}\n", img.reference);
    server.put(
        "images.list.sha256",
        format!("{}  images.list\n", sha256_hex(list.as_bytes())).as_bytes(),
    );
    // Truncated: the checksum is of the whole list.
    server.put("images.list", b"# deployed by CI\n");
    let state = env.path("state");
    let source = format!(
        "[[sources]]\nkind = \"url\"\nname = \"team\"\nurl = {:?}\nchecksum-url = {:?}\nca = {:?}\ntimeout = \"5s\"\nrequired = true\n",
        server.url("images.list"),
        server.url("images.list.sha256"),
        server.ca_cert,
    );
    let config = env.config_with(&[], &format!("state-dir = {state:?}\nretries = 2"), &source);
    let config = config.to_str().unwrap();

    // Refused, and nothing to fall back to: exit 6, the source named.
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 6, "a required list that is refused");
    assert!(stderr(&out).contains("team") && stderr(&out).contains("tampered or truncated"));
    let report = env.report();
    assert_eq!(report.sources[0].status, SourceStatus::Failed);
    assert!(report.images.is_empty());

    // The good list: pulled, and cached.
    server.put("images.list", list.as_bytes());
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.sources[0].status, SourceStatus::Read);
    assert_eq!(
        report.sources[0].sha256.as_deref(),
        Some(sha256_hex(list.as_bytes()).as_str())
    );
    assert_eq!(report.summary.pulled, 1, "{report:#?}");
    let cached: Vec<_> = std::fs::read_dir(state.join("sources"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "list"))
        .collect();
    assert_eq!(cached.len(), 1, "one cached list");
    env.assert_visible(&img, 0).await;

    // Unchanged: asked for conditionally (the ETag and Last-Modified of the
    // cached copy), answered 304, and the cached copy is the list; the
    // checksum is not asked for again.
    let before = server.served().len();
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let served = server.served()[before..].to_vec();
    assert_eq!(
        served,
        vec![testbed::Served {
            path: "/images.list".into(),
            status: 304,
            conditional: true,
        }],
        "one conditional GET"
    );
    let report = env.report();
    assert_eq!(report.sources[0].status, SourceStatus::Unchanged);
    assert!(report.sources[0].revision.is_some(), "the ETag");
    assert_eq!(report.summary.present, 1);

    // Tampered now: refused, and the cached copy is used, saying so.
    server.put(
        "images.list",
        format!("{list}evil.example/miner:1\n").as_bytes(),
    );
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.sources[0].status, SourceStatus::Cached);
    let note = report.sources[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("tampered or truncated") && note.contains("last good copy"),
        "{note}"
    );
    assert!(stderr(&out).contains("last good copy"));
    assert_eq!(
        report.images.len(),
        1,
        "the cached list, not the tampered one"
    );
    assert_eq!(report.summary.present, 1);

    // Unreachable: the cached copy again.
    server.stop();
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.sources[0].status, SourceStatus::Cached);
    assert!(stderr(&out).contains("using the last good copy"));

    // Unreachable without a cache: a clear error naming the source.
    std::fs::remove_dir_all(&state).unwrap();
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 6);
    let err = stderr(&out);
    assert!(
        err.contains("image list team") && err.contains("no cached copy"),
        "{err}"
    );
    // An incomplete list never removes anything.
    let out = env.prewarm(&["gc", "--apply", "--config", config]);
    assert_eq!(exit_code(&out), 6);
    assert!(stderr(&out).contains("incomplete"));
    env.assert_visible(&img, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_tag_is_pulled_and_plan_shows_the_drift() {
    let env = Env::start();
    let host = env.registry.host();
    let work = env.path("images");
    let v1 = push(
        &host,
        "team/api:stable",
        &[linux("amd64", None, layers(200, &[Gzip], 64 << 10))],
        Format::Oci,
        &work,
    );
    let config = env.config(&[(&v1.reference, true)], "");
    let config = config.to_str().unwrap();
    assert_eq!(exit_code(&env.prewarm(&["pull", "--config", config])), 0);

    // The plan on a warm node: no drift.
    let out = env.prewarm(&["plan", "--config", config]);
    let line = stdout(&out)
        .lines()
        .find(|l| l.contains("team/api:stable"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains(" present ") && line.contains(" no "),
        "{line}"
    );

    // CI moves the tag.
    let v2 = push(
        &host,
        "team/api:stable",
        &[linux("amd64", None, layers(300, &[Gzip, Gzip], 64 << 10))],
        Format::Oci,
        &work,
    );
    assert_ne!(v1.top_digest, v2.top_digest);
    let out = env.prewarm(&["plan", "--config", config]);
    let line = stdout(&out)
        .lines()
        .find(|l| l.contains("team/api:stable"))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains(" pull ") && line.contains(" yes "), "{line}");
    assert!(
        line.contains(&v2.top_digest),
        "the digest it resolves to now: {line}"
    );
    assert!(
        line.contains(&format!("node holds {}", v1.top_digest)),
        "{line}"
    );

    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.images[0].status, ImageStatus::Pulled);
    assert_eq!(
        report.images[0].digest.as_deref(),
        Some(v2.top_digest.as_str())
    );
    assert_eq!(
        report.images[0].previous_digest.as_deref(),
        Some(v1.top_digest.as_str())
    );
    env.assert_visible(&v2, 0).await;
    let client = env.client().await;
    let tag = client.image_get(&v2.reference).await.unwrap().unwrap();
    assert_eq!(
        tag.target.unwrap().digest,
        v2.top_digest,
        "the tag record moved"
    );

    // The old digest's records are no longer listed: gc removes them, and
    // only them.
    let old_by_digest = format!("{host}/team/api@{}", v1.top_digest);
    let out = env.prewarm(&["gc", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let dry = stdout(&out);
    assert!(
        dry.contains(&format!("would remove {old_by_digest}")),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("would remove {}", v1.manifests[0].config_digest)),
        "{dry}"
    );
    assert!(!dry.contains(&v2.top_digest), "{dry}");
    assert!(
        client.image_get(&old_by_digest).await.unwrap().is_some(),
        "a dry run removes nothing"
    );
    let out = env.prewarm(&["gc", "--apply", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    assert!(client.image_get(&old_by_digest).await.unwrap().is_none());
    assert!(
        client
            .content_info(&v1.manifests[0].layer_digests[0])
            .await
            .unwrap()
            .is_none(),
        "old layers collected"
    );
    env.assert_visible(&v2, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_only_delisted_prewarm_images_and_unpins() {
    let env = Env::start();
    let host = env.registry.host();
    let work = env.path("images");
    let spec = |seed| vec![linux("amd64", None, layers(seed, &[Gzip], 96 << 10))];
    let gone = push(&host, "old/gone:1", &spec(400), Format::Oci, &work);
    let used = push(&host, "old/used:1", &spec(500), Format::Oci, &work);
    let kept = push(&host, "new/kept:1", &spec(600), Format::Oci, &work);
    let theirs = push(&host, "other/theirs:1", &spec(700), Format::Oci, &work);
    let held = push(&host, "old/held:1", &spec(800), Format::Oci, &work);
    let all = [
        (gone.reference.as_str(), true),
        (used.reference.as_str(), true),
        (kept.reference.as_str(), true),
    ];
    let config = env.config(&all, "");
    assert_eq!(
        exit_code(&env.prewarm(&["pull", "--config", config.to_str().unwrap()])),
        0
    );

    // Pinned by default, with prewarm's own marker.
    let client = env.client().await;
    for img in [&gone, &used, &kept] {
        let rec = client.image_get(&img.reference).await.unwrap().unwrap();
        assert_eq!(
            rec.labels
                .get("io.cri-containerd.pinned")
                .map(String::as_str),
            Some("pinned")
        );
        assert_eq!(
            rec.labels.get("io.prewarm.pinned").map(String::as_str),
            Some("true")
        );
    }
    // containerd 1.6's CRI does not report `pinned` (1.7 added it): the
    // label on the record is what counts there.
    let cri = prewarm::cri::Cri::new(client.channel());
    let status = cri.image_status(&kept.reference).await.unwrap().unwrap();
    let version = env.containerd.ctr(&["version"]).unwrap();
    let on_16 = version.contains("Version:  1.6");
    assert_eq!(
        status.pinned, !on_16,
        "CRI ImageStatus pinned={} on {version}",
        status.pinned
    );

    // Someone else pulls an image; a container uses one of ours; an
    // operator pins one that prewarm preloaded unpinned.
    env.containerd
        .ctr(&["images", "pull", "--plain-http", &theirs.reference])
        .unwrap();
    let no_pin = env.path("root/etc/prewarm/config.d/60-no-pin.toml");
    std::fs::create_dir_all(no_pin.parent().unwrap()).unwrap();
    std::fs::write(&no_pin, "version = 1\n[containerd]\npin = false\n").unwrap();
    let mut with_held = all.to_vec();
    with_held.push((held.reference.as_str(), true));
    let config = env.config(&with_held, "");
    assert_eq!(
        exit_code(&env.prewarm(&["pull", "--config", config.to_str().unwrap()])),
        0
    );
    std::fs::remove_file(&no_pin).unwrap();
    env.containerd
        .ctr(&[
            "images",
            "label",
            &held.reference,
            "io.cri-containerd.pinned=pinned",
        ])
        .unwrap();
    env.containerd
        .ctr(&["containers", "create", &used.reference, "web-1"])
        .unwrap();

    // The list moves on: only `kept` stays. pull unpins what left.
    let config = env.config(&[(&kept.reference, true)], "");
    let config = config.to_str().unwrap();
    assert_eq!(exit_code(&env.prewarm(&["pull", "--config", config])), 0);
    let report = env.report();
    let unpinned = report.gc.clone().unwrap().unpinned;
    assert!(
        unpinned.contains(&gone.reference) && unpinned.contains(&used.reference),
        "{unpinned:?}"
    );
    assert!(
        report.gc.unwrap().removed.is_empty(),
        "gc is off in pull by default"
    );
    for img in [&gone, &used] {
        let rec = client.image_get(&img.reference).await.unwrap().unwrap();
        assert!(
            !rec.labels.contains_key("io.cri-containerd.pinned"),
            "{}",
            img.reference
        );
        assert!(!rec.labels.contains_key("io.prewarm.pinned"));
        assert_eq!(
            rec.labels.get("io.prewarm.preloaded").map(String::as_str),
            Some("true")
        );
    }

    // Dry run: says what would go and what it frees; removes nothing.
    let out = env.prewarm(&["gc", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let dry = stdout(&out);
    assert!(
        dry.contains(&format!("would remove {}", gone.reference)),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("keep {}", used.reference))
            && dry.contains("in use by container web-1"),
        "{dry}"
    );
    assert!(
        !dry.contains(&theirs.reference) && !dry.contains(&kept.reference),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("keep {}", held.reference))
            && dry.contains("is pinned, not by prewarm"),
        "{dry}"
    );
    let freed: u64 = dry
        .lines()
        .last()
        .and_then(|l| l.split(", ").last())
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(freed >= gone.manifests[0].compressed_size, "{dry}");
    // The unpacked layer it alone uses: its 96 KiB file and the directories.
    let unpacked: u64 = dry
        .split(" bytes of unpacked layers")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        (96 << 10..4 << 20).contains(&unpacked),
        "unpacked bytes {unpacked}: {dry}"
    );
    assert!(client.image_get(&gone.reference).await.unwrap().is_some());

    let out = env.prewarm(&["gc", "--apply", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    for name in [
        gone.reference.clone(),
        format!("{host}/old/gone@{}", gone.top_digest),
        gone.manifests[0].config_digest.clone(),
    ] {
        assert!(
            client.image_get(&name).await.unwrap().is_none(),
            "{name} removed"
        );
    }
    assert!(client
        .content_info(&gone.manifests[0].layer_digests[0])
        .await
        .unwrap()
        .is_none());
    assert!(
        client.image_get(&used.reference).await.unwrap().is_some(),
        "in use: kept"
    );
    let rec = client.image_get(&held.reference).await.unwrap().unwrap();
    assert_eq!(
        rec.labels
            .get("io.cri-containerd.pinned")
            .map(String::as_str),
        Some("pinned"),
        "pinned by someone else: kept, and still pinned"
    );
    assert!(
        client.image_get(&theirs.reference).await.unwrap().is_some(),
        "not ours: kept"
    );
    env.assert_visible(&kept, 0).await;
    let rec = client.image_get(&kept.reference).await.unwrap().unwrap();
    assert_eq!(
        rec.labels
            .get("io.cri-containerd.pinned")
            .map(String::as_str),
        Some("pinned")
    );

    // Once the container is gone, `[pull] gc = true` removes it in pull.
    env.containerd.ctr(&["containers", "rm", "web-1"]).unwrap();
    let config = env.config_with(&[(&kept.reference, true)], "gc = true", "");
    assert_eq!(
        exit_code(&env.prewarm(&["pull", "--config", config.to_str().unwrap()])),
        0
    );
    let removed = env.report().gc.unwrap().removed;
    assert!(removed.contains(&used.reference), "{removed:?}");
    assert!(client.image_get(&used.reference).await.unwrap().is_none());
    assert!(
        client.image_get(&theirs.reference).await.unwrap().is_some(),
        "not ours: kept"
    );
    env.assert_visible(&kept, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn air_gapped_import_from_an_archive_then_top_up_from_the_registry() {
    let mut env = Env::start();
    let host = env.registry.host();
    let archives = env.path("baked");
    std::fs::create_dir_all(&archives).unwrap();
    // One image as an oci-archive tarball, one as a layout directory.
    let tar_ref = format!("{host}/ml/model:1.2");
    let tar_img = testbed::write_oci_layout(
        &tar_ref,
        &[linux(
            "amd64",
            None,
            layers(800, &[Gzip, testbed::Compression::Zstd], 128 << 10),
        )],
        &env.path("layout-model"),
    )
    .unwrap();
    testbed::write_oci_archive(&env.path("layout-model"), &archives.join("model.tar")).unwrap();
    let dir_ref = format!("{host}/ml/tools:3");
    let dir_img = testbed::write_oci_layout(
        &dir_ref,
        &[
            linux("arm64", Some("v8"), layers(900, &[Gzip], 64 << 10)),
            linux("amd64", None, layers(910, &[Gzip], 64 << 10)),
        ],
        &archives.join("tools"),
    )
    .unwrap();
    // And one as a docker-archive (`docker save` layout, made by skopeo).
    let docker_ref = format!("{host}/legacy/svc:2");
    let docker_layout = env.path("layout-svc");
    let docker_img = testbed::write_oci_layout(
        &docker_ref,
        &[linux("amd64", None, layers(920, &[Gzip, Gzip], 64 << 10))],
        &docker_layout,
    )
    .unwrap();
    let policy = env.path("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let skopeo = std::process::Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .args(["copy", "-q"])
        .arg(format!("oci:{}:{docker_ref}", docker_layout.display()))
        .arg(format!(
            "docker-archive:{}:legacy/svc:2",
            archives.join("svc.tar").display()
        ))
        .output()
        .unwrap();
    assert!(
        skopeo.status.success(),
        "{}",
        String::from_utf8_lossy(&skopeo.stderr)
    );
    let extra = push(
        &host,
        "ml/extra:1",
        &[linux("amd64", None, layers(950, &[Gzip], 64 << 10))],
        Format::Oci,
        &env.path("images"),
    );

    // No registry at all.
    env.registry.stop();
    let source = format!("[[sources]]\nkind = \"archive\"\npath = {archives:?}\nrequired = true\n");
    let config = env.config(&[], &source);
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.summary.pulled, 3, "{report:#?}");
    for i in &report.images {
        assert!(
            i.origin.as_deref().unwrap_or("").starts_with("archive:"),
            "{i:?}"
        );
        assert_eq!(i.bytes, 0, "nothing downloaded");
    }
    env.assert_visible(&tar_img, 0).await;
    env.assert_visible(&dir_img, 1).await;
    // The docker-archive's name is its RepoTag (docker.io/legacy/svc:2);
    // its manifest is made on import, so its digest is the report's.
    let svc = report
        .images
        .iter()
        .find(|i| i.reference.contains("legacy/svc"))
        .unwrap();
    let mut as_imported = docker_img.clone();
    as_imported.top_digest = svc.digest.clone().unwrap();
    as_imported.manifests[0].layer_digests = as_imported.manifests[0].diff_ids.clone();
    env.assert_visible_as("docker.io/legacy/svc:2", &as_imported, 0)
        .await;

    // With the registry back, what the archive lacks comes from there.
    env.registry.restart().unwrap();
    // An archive that lacks one layer: that blob alone comes from the
    // registry.
    let partial_spec = vec![linux("amd64", None, layers(960, &[Gzip, Gzip], 64 << 10))];
    let partial = push(
        &host,
        "ml/partial:1",
        &partial_spec,
        Format::Oci,
        &env.path("images"),
    );
    let local =
        testbed::write_oci_layout(&partial.reference, &partial_spec, &archives.join("partial"))
            .unwrap();
    assert_eq!(local.top_digest, partial.top_digest, "the same image");
    let missing = &partial.manifests[0].layer_digests[1];
    std::fs::remove_file(archives.join("partial/blobs/sha256").join(&missing[7..])).unwrap();
    // The model is also listed inline by tag: the archive holds that tag,
    // so it is the same image, planned once.
    let config = env.config(&[(&extra.reference, true), (&tar_ref, false)], &source);
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    assert!(stderr(&out).contains("listed twice"));
    let report = env.report();
    assert_eq!(report.images.len(), 5, "{report:#?}");
    let by_ref = |r: &str| {
        report
            .images
            .iter()
            .find(|i| i.reference.starts_with(r))
            .unwrap()
            .clone()
    };
    assert_eq!(by_ref(&extra.reference).status, ImageStatus::Pulled);
    assert_eq!(by_ref(&extra.reference).origin.as_deref(), Some("registry"));
    assert_eq!(by_ref(&tar_ref).status, ImageStatus::Present);
    env.assert_visible(&extra, 0).await;
    let p = by_ref(&partial.reference);
    assert_eq!(p.status, ImageStatus::Pulled);
    assert!(
        p.origin.as_deref().unwrap_or("").starts_with("archive:"),
        "{p:?}"
    );
    assert!(
        p.bytes > 0 && p.bytes < p.size,
        "only the missing layer is downloaded: {p:?}"
    );
    env.assert_visible(&partial, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_list_is_read_with_the_kubeconfig_and_cached() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "team/cm:1",
        &[linux("amd64", None, layers(1000, &[Gzip], 64 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let api = testbed::KubeApi::start(&env.path("kube")).expect("starting the fake API server");
    let reader = api
        .add_token_user("list-reader", testbed::Role::Admin)
        .unwrap();
    let kubelet = api
        .add_token_user("system:node:n1", testbed::Role::Node("n1".into()))
        .unwrap();
    api.put_configmap(
        "kube-system",
        "prewarm-images",
        &[("images", &format!("{}\n", img.reference))],
    );
    let state = env.path("state");
    let source = |kubeconfig: &std::path::Path| {
        format!(
            "[[sources]]\nkind = \"configmap\"\nname = \"cluster\"\nconfigmap = \"kube-system/prewarm-images\"\nkubeconfig = {kubeconfig:?}\ntimeout = \"5s\"\nrequired = true\n"
        )
    };
    let pull = |kubeconfig: &std::path::Path| {
        let config = env.config_with(
            &[],
            &format!("state-dir = {state:?}\nretries = 2"),
            &source(kubeconfig),
        );
        env.prewarm(&["pull", "--config", config.to_str().unwrap()])
    };

    // The kubelet's own credential may not read it (Node authorizer), and
    // there is no cached copy yet.
    let out = pull(&kubelet.kubeconfig);
    assert_eq!(exit_code(&out), 6);
    assert!(
        stderr(&out).contains("ConfigMap kube-system/prewarm-images")
            && stderr(&out).contains("403")
    );

    let out = pull(&reader.kubeconfig);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.sources[0].status, SourceStatus::Read);
    assert_eq!(report.summary.pulled, 1);
    // The version read: the ConfigMap's resourceVersion.
    let rv = report.sources[0]
        .revision
        .clone()
        .expect("a resourceVersion");
    assert!(rv.parse::<u64>().is_ok(), "{rv}");
    env.assert_visible(&img, 0).await;

    // The API server is down: the cached copy.
    api.set_outage(testbed::Outage::Refuse);
    let out = pull(&reader.kubeconfig);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    assert_eq!(report.sources[0].status, SourceStatus::Cached);
    assert_eq!(report.summary.present, 1);
}
