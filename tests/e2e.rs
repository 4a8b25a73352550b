//! End to end on the host, the way a node boots: the package's default
//! config fragments and the site fragment from the repo's cloud-init example
//! (cloud-init/kubelet-bootstrap.yaml), byte for byte, then `prewarm boot`
//! against a real containerd and registry, the kubelet drop-in it leaves,
//! "kubelet" registering the Node with those taints on the fake API server,
//! `prewarm untaint`, and the images as kubelet sees them through CRI.
//!
//! Only what a test cannot have is redirected, by one `--config` fragment
//! read last: the containerd socket, where `registry.example.internal`
//! lives (a hosts.toml mirror to the test registry, as a site with a pull
//! mirror has), the kubelet and prewarm state paths, and the untaint
//! credential (the fake API server's).

mod common;

use common::{exit_code, layers, linux, push, untainter_kubeconfig, Env};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use testbed::{Compression, Format, KubeApi};

const EXAMPLE: &str = "cloud-init/kubelet-bootstrap.yaml";
const SITE_FRAGMENT: &str = "/etc/prewarm/config.d/50-site.toml";
const NODE: &str = "e2e-node-1";
const HOST: &str = "registry.example.internal";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The `write_files` entries of the example, path → content.
fn example_files() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo(EXAMPLE)).expect("reading the example");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("the example is YAML");
    doc["write_files"]
        .as_sequence()
        .expect("write_files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_string(),
                f["content"].as_str().expect("content").to_string(),
            )
        })
        .collect()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn prewarm(root: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec![std::ffi::OsStr::new("--config"), config.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    common::run_prewarm(root, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_then_untaint_as_a_node_does() {
    let env = Env::start();
    let api = KubeApi::start(&env.path("api")).expect("starting the fake API server");

    // The node's configuration root: the package's files, then the site's.
    let root = env.path("root");
    for (src, dest) in [
        (
            "packaging/config.d/00-defaults.toml",
            "usr/lib/prewarm/config.d/00-defaults.toml",
        ),
        (
            "packaging/etc/config.d/40-local.toml",
            "etc/prewarm/config.d/40-local.toml",
        ),
    ] {
        write(
            &root.join(dest),
            &std::fs::read_to_string(repo(src)).unwrap(),
        );
    }
    let files = example_files();
    let site = &files
        .iter()
        .find(|(p, _)| p == SITE_FRAGMENT)
        .expect("the example writes the site fragment")
        .1;
    write(&root.join(&SITE_FRAGMENT[1..]), site);
    // kubelet's own config, as the example writes it.
    let kubelet_config = &files
        .iter()
        .find(|(p, _)| p == "/var/lib/kubelet/config.yaml")
        .expect("the example writes kubelet's config")
        .1;
    write(&root.join("var/lib/kubelet/config.yaml"), kubelet_config);

    // The images the example lists, in the test registry under the same
    // repository names.
    let fragment: toml::Table = site.parse().expect("the site fragment is TOML");
    let refs: Vec<String> = fragment["images"]
        .as_array()
        .expect("[[images]]")
        .iter()
        .map(|i| i["ref"].as_str().unwrap().to_string())
        .collect();
    assert!(refs.len() >= 2, "{refs:?}");
    let mut pushed = Vec::new();
    for (n, r) in refs.iter().enumerate() {
        let name = r
            .strip_prefix(&format!("{HOST}/"))
            .unwrap_or_else(|| panic!("{r} is not under {HOST}"));
        let kinds = [Compression::Gzip, Compression::Zstd];
        let spec = linux(
            "amd64",
            None,
            layers(7000 + n as u64 * 10, &kinds, 256 << 10),
        );
        pushed.push(push(
            &env.registry.host(),
            name,
            &[spec],
            Format::Oci,
            &env.path("work"),
        ));
    }
    let certs = env.path("certs.d");
    let server = env.registry.url();
    write(
        &certs.join(HOST).join("hosts.toml"),
        &format!("server = \"{server}\"\n\n[host.\"{server}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    );

    // What a test cannot have: everything else comes from the files above.
    let untainter = untainter_kubeconfig(&api);
    let test = env.path("test.toml");
    std::fs::write(
        &test,
        format!(
            "version = 1\n\
             [containerd]\nsocket = {:?}\n\
             [registry]\nconfig-path = {certs:?}\nauth-file = \"\"\n\
             [pull]\nreport = {:?}\n\
             [disk]\nreserve = \"256MiB\"\nmax-usage-percent = 100\n\
             [register]\nkubelet-config-dir = {:?}\nkubelet-config = {:?}\n\
             [handoff]\nkubeconfig = {untainter:?}\nnode-name = \"{NODE}\"\n\
             started-file = {:?}\nrequest-timeout = \"5s\"\n",
            env.containerd.socket,
            env.path("report.json"),
            root.join("etc/kubernetes/kubelet.conf.d"),
            root.join("var/lib/kubelet/config.yaml"),
            env.path("started"),
        ),
    )
    .unwrap();

    let out = prewarm(&root, &test, &["check-config"]);
    assert_eq!(exit_code(&out), 0);
    let listed = String::from_utf8_lossy(&out.stdout);
    for f in [
        "usr/lib/prewarm/config.d/00-defaults.toml",
        "etc/prewarm/config.d/40-local.toml",
        "etc/prewarm/config.d/50-site.toml",
    ] {
        assert!(
            listed.contains(f),
            "check-config did not read {f}: {listed}"
        );
    }

    // Boot: register, then pull.
    let out = prewarm(&root, &test, &["boot"]);
    assert_eq!(exit_code(&out), 0, "prewarm boot");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("images planned=").count(),
        1,
        "one summary line: {stderr}"
    );
    let dropin = root.join("etc/kubernetes/kubelet.conf.d/99-prewarm.conf");
    let text = std::fs::read_to_string(&dropin).expect("register wrote the kubelet drop-in");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(doc["kind"].as_str(), Some("KubeletConfiguration"), "{text}");
    let taints: Value = serde_json::to_value(&doc["registerWithTaints"]).unwrap();
    assert!(
        taints.as_array().is_some_and(|t| t.iter().any(|t| t["key"]
            == "startup-taint.cluster-autoscaler.kubernetes.io/prewarm"
            && t["effect"] == "NoSchedule")),
        "{text}"
    );
    let report = env.report();
    assert_eq!(report.summary.required_missing, 0, "{:?}", report.summary);
    assert_eq!(report.summary.failed, 0, "{:?}", report.summary);

    // kubelet's view, through CRI, under the names the example lists.
    for (r, img) in refs.iter().zip(&pushed) {
        env.assert_visible_as(r, img, 0).await;
    }
    let out = prewarm(&root, &test, &["status"]);
    assert_eq!(exit_code(&out), 0, "prewarm status");

    // kubelet registers the Node with the drop-in's taints; untaint hands
    // the node over.
    api.create_node(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap();
    let out = prewarm(&root, &test, &["untaint"]);
    assert_eq!(exit_code(&out), 0, "prewarm untaint");
    let node = api.node(NODE).expect("the node");
    let left: Vec<&Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .map(|t| t.iter().collect())
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|t| t["key"] == "startup-taint.cluster-autoscaler.kubernetes.io/prewarm"),
        "the taint is gone: {node}"
    );
    assert!(
        node.pointer("/metadata/annotations/prewarm.io~1preload")
            .is_some(),
        "untaint records the outcome: {node}"
    );
    // And the list revision the boot pass brought, warm.
    let report = prewarm::report::Report::read(&env.path("report.json")).ok();
    let revision = report
        .and_then(|r| r.list_revision)
        .expect("the report's list revision");
    assert_eq!(
        node.pointer("/metadata/annotations/prewarm.io~1list-revision")
            .and_then(Value::as_str),
        Some(revision.as_str()),
        "{node}"
    );
    assert_eq!(
        node.pointer("/metadata/annotations/prewarm.io~1list-warm")
            .and_then(Value::as_str),
        Some("true"),
        "{node}"
    );
}

/// The kubeadm example: `register` adds the taint to the JoinConfiguration
/// the example writes, keeping the rest, so `kubeadm join` registers the
/// Node with it.
#[test]
fn register_taints_the_kubeadm_example_join_config() {
    let text = std::fs::read_to_string(repo("cloud-init/kubeadm-join.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let file = |path: &str| -> String {
        doc["write_files"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("the example writes {path}"))["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let dir = tempfile::Builder::new()
        .prefix("pwkadm")
        .tempdir_in("/tmp")
        .unwrap();
    let api = KubeApi::start(&dir.path().join("api")).expect("starting the fake API server");
    let root = dir.path().join("root");
    write(&root.join(&SITE_FRAGMENT[1..]), &file(SITE_FRAGMENT));
    let join = root.join("run/kubeadm/kubeadm-join-config.yaml");
    let original = file("/run/kubeadm/kubeadm-join-config.yaml");
    write(&join, &original);
    let untainter = untainter_kubeconfig(&api);
    let test = dir.path().join("test.toml");
    std::fs::write(
        &test,
        format!(
            "version = 1\n[register]\nkubeadm-config = {join:?}\n\
             [handoff]\nkubeconfig = {untainter:?}\nnode-name = \"{NODE}\"\n\
             started-file = {:?}\nrequest-timeout = \"5s\"\n",
            dir.path().join("started"),
        ),
    )
    .unwrap();
    let out = prewarm(&root, &test, &["register"]);
    assert_eq!(exit_code(&out), 0, "prewarm register");
    let after: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&join).unwrap()).unwrap();
    let before: serde_yaml::Value = serde_yaml::from_str(&original).unwrap();
    let taints = serde_json::to_value(&after["nodeRegistration"]["taints"]).unwrap();
    assert_eq!(
        taints,
        json!([{"key": "startup-taint.cluster-autoscaler.kubernetes.io/prewarm", "effect": "NoSchedule"}]),
        "{after:?}"
    );
    assert_eq!(after["discovery"], before["discovery"]);
    assert_eq!(
        after["nodeRegistration"]["kubeletExtraArgs"],
        before["nodeRegistration"]["kubeletExtraArgs"]
    );
    // Idempotent: a second boot leaves the file as it is.
    let once = std::fs::read_to_string(&join).unwrap();
    let out = prewarm(&root, &test, &["register"]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(std::fs::read_to_string(&join).unwrap(), once);
}
