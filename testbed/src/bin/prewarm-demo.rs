//! The demo of a node's boot: a private containerd, registry and stand-in
//! Kubernetes API server in a temp dir, and three sample images built from
//! local bytes and pushed with skopeo. Then, as on a node:
//! `prewarm register` (the kubelet drop-in with the startup taint), a
//! throttled `prewarm pull` with its progress lines, a stand-in kubelet
//! registering the Node with the drop-in's taints, and `prewarm untaint`
//! handing it over; with `plan` before and `status` after. Everything is
//! torn down at the end.

use anyhow::{bail, Context, Result};
use std::process::Command;
use testbed::scenario::{prewarm_binary, prewarm_config, push_all, sample_image};
use testbed::{Compression, Containerd, KubeApi, Registry, Role};

/// The node's name, and the taint `register` puts on it.
const NODE: &str = "demo-node";
const TAINT: &str = "startup-taint.cluster-autoscaler.kubernetes.io/prewarm";

fn main() {
    if let Err(e) = run() {
        eprintln!("prewarm-demo: {e:#}");
        std::process::exit(1);
    }
}

/// Prints the Node's taints, as `kubectl describe node` would list them.
fn show_node(api: &KubeApi, what: &str) -> Result<()> {
    let node = api.node(NODE).context("the node")?;
    let taints = node
        .pointer("/spec/taints")
        .and_then(|t| t.as_array())
        .cloned()
        .unwrap_or_default();
    println!("node {NODE} {what}:");
    if taints.is_empty() {
        println!("  (none)");
    }
    for t in taints {
        println!(
            "  {}={}:{}",
            t["key"].as_str().unwrap_or(""),
            t["value"].as_str().unwrap_or(""),
            t["effect"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn step(title: &str) {
    println!("\n=== {title}");
}

fn run() -> Result<()> {
    let prewarm = prewarm_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("prewarm-demo")
        .tempdir_in("/tmp")?;
    step("starting a private containerd and registry");
    let containerd = Containerd::start(&dir.path().join("containerd"))?;
    let registry = Registry::start(&dir.path().join("registry"))?;
    let api = KubeApi::start(&dir.path().join("api"))?;
    println!("containerd socket: {}", containerd.socket.display());
    println!("registry:          {}", registry.url());
    println!("API server:        {} (a stand-in)", api.url());

    step("building and pushing three sample images");
    let images = push_all(
        &registry,
        &dir.path().join("images"),
        &[
            (
                "demo/trainer:1.0",
                sample_image(1, 3, 24 << 20, Compression::Gzip),
            ),
            (
                "demo/server:2.1",
                sample_image(2, 2, 16 << 20, Compression::Zstd),
            ),
            (
                "demo/tools:latest",
                sample_image(3, 2, 8 << 20, Compression::Gzip),
            ),
        ],
    )?;
    for i in &images {
        println!("{}  {}", i.top_digest, i.reference);
    }

    // The node's kubelet files, as a provisioning tool leaves them.
    let node = dir.path().join("node");
    let kubelet_config = node.join("var/lib/kubelet/config.yaml");
    let dropins = node.join("etc/kubernetes/kubelet.conf.d");
    std::fs::create_dir_all(kubelet_config.parent().context("a parent")?)?;
    // kubelet reads drop-ins from here (`--config-dir`).
    std::fs::create_dir_all(&dropins)?;
    std::fs::write(
        &kubelet_config,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n",
    )?;
    // The credential untaint hands over with: get and patch on Nodes, for
    // its own taint only.
    let untainter = api
        .add_token_user(
            "system:serviceaccount:prewarm-system:prewarm-untaint",
            Role::Untainter {
                taint_key: TAINT.into(),
            },
        )?
        .kubeconfig;

    let refs: Vec<String> = images.iter().map(|i| i.reference.clone()).collect();
    let report = dir.path().join("report.json");
    let metrics = dir.path().join("textfile_collector/prewarm.prom");
    std::fs::create_dir_all(dir.path().join("textfile_collector"))?;
    let config = dir.path().join("prewarm.toml");
    std::fs::write(
        &config,
        prewarm_config(
            &containerd,
            &refs,
            &report,
            &format!("concurrency = 2\nprogress-interval = \"1s\"\nmetrics-file = {metrics:?}"),
            &format!(
                "[throttle]\nbandwidth = \"20MiB/s\"\n\n[disk]\nreserve = \"1GiB\"\n# A demo on a shared build disk: only the reserve binds.\nmax-usage-percent = 100\n\n\
                 [register]\nkubelet-config-dir = {dropins:?}\nkubelet-config = {kubelet_config:?}\n\n\
                 [handoff]\nkubeconfig = {untainter:?}\nnode-name = \"{NODE}\"\nstarted-file = {:?}\n",
                dir.path().join("started")
            ),
        ),
    )?;
    step(&format!("configuration ({})", config.display()));
    print!("{}", std::fs::read_to_string(&config)?);

    let empty_root = dir.path().join("no-system-config");
    std::fs::create_dir_all(&empty_root)?;
    let run = |args: &[&str]| -> Result<i32> {
        let status = Command::new(&prewarm)
            .arg("--config-root")
            .arg(&empty_root)
            .arg("--config")
            .arg(&config)
            .args(args)
            .status()
            .with_context(|| format!("running {}", prewarm.display()))?;
        Ok(status.code().unwrap_or(-1))
    };
    step("prewarm register (before kubelet: the startup taint in kubelet's drop-in)");
    // The boot's timeline, from the start stamp register writes.
    let t0 = std::time::Instant::now();
    let mut timeline: Vec<(&str, std::time::Duration)> = Vec::new();
    let registered = run(&["register"])?;
    timeline.push(("register done (the start stamp: 0)", t0.elapsed()));
    let dropin = dropins.join("99-prewarm.conf");
    println!("--- {}", dropin.display());
    print!("{}", std::fs::read_to_string(&dropin).unwrap_or_default());
    step("prewarm plan (dry run)");
    run(&["plan"])?;
    step("prewarm pull (bandwidth capped at 20 MiB/s, a progress line every second)");
    let code = run(&["pull"])?;
    timeline.push(("pull done", t0.elapsed()));
    step(&format!("report ({})", report.display()));
    print!("{}", std::fs::read_to_string(&report)?);
    step("prewarm status (kubelet's view through CRI)");
    let status = run(&["status"])?;

    step("kubelet joins: the Node registers with the drop-in's taints");
    let text = std::fs::read_to_string(&dropin)?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let taints = serde_json::to_value(&doc["registerWithTaints"])?;
    timeline.push(("Node registered", t0.elapsed()));
    api.create_node(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }))?;
    show_node(&api, "taints")?;
    step("prewarm untaint (after kubelet: the node is handed over)");
    let untainted = run(&["untaint"])?;
    timeline.push(("untainted: schedulable", t0.elapsed()));
    show_node(&api, "taints now")?;
    let node = api.node(NODE).context("the node")?;
    if let Some(a) = node.pointer("/metadata/annotations/prewarm.io~1preload") {
        println!("annotation prewarm.io/preload: {a}");
    }
    for e in api.events() {
        println!(
            "event {} {} on {} {}: {}",
            e["type"].as_str().unwrap_or("?"),
            e["reason"].as_str().unwrap_or("?"),
            e["regarding"]["kind"].as_str().unwrap_or("?"),
            e["regarding"]["name"].as_str().unwrap_or("?"),
            e["note"].as_str().unwrap_or("")
        );
    }
    step(&format!(
        "metrics file for node_exporter's textfile collector ({})",
        metrics.display()
    ));
    print!("{}", std::fs::read_to_string(&metrics).unwrap_or_default());
    let left = node
        .pointer("/spec/taints")
        .and_then(|t| t.as_array())
        .is_some_and(|t| t.iter().any(|t| t["key"] == TAINT));

    step("prewarm pull again (warm node: nothing to do)");
    let again = run(&["pull"])?;
    if registered != 0 || code != 0 || status != 0 || untainted != 0 || again != 0 || left {
        bail!(
            "prewarm exited {registered} (register), {code} (pull), {status} (status), \
             {untainted} (untaint), {again} (pull again); taint left: {left}"
        );
    }
    step("the boot's timeline");
    for (what, at) in &timeline {
        println!("  {:>7.2} s  {what}", at.as_secs_f64());
    }
    println!("\ndemo done; tearing down containerd and the registry");
    Ok(())
}
