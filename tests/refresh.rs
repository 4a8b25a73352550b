//! `prewarm refresh` on a serving node, against a real containerd, a real
//! registry (behind a counting proxy), a list served over HTTPS with
//! `ETag`s, and the fake API server holding the Node:
//!
//! - the list moves from v1 to v2 (one tag changed, one image dropped):
//!   after one refresh CRI sees v2 by tag and by digest, the dropped image
//!   is removed as `[pull] gc` says, the Node carries the list revision and
//!   `list-warm`, and no taint changed; the boot pass's report is left
//!   alone;
//! - the list unchanged: a conditional GET answered 304, no blob
//!   downloaded, nothing written to the Node;
//! - a dropped image a container still uses stays;
//! - kubelet's image GC threshold leaves no room for a heavy image: it is
//!   skipped, saying why, and the light one is pulled;
//! - two refreshes at once, or a refresh during a pull: one runs, the
//!   other is left out with a clear message; neither fails;
//! - off by default: nothing read or written.

mod common;

use common::core::{proxied, via};
use common::loopfs::small_env;
use common::*;
use prewarm::report::{ImageStatus, Report, SourceStatus};
use serde_json::{json, Value};
use sha2::Digest;
use std::path::{Path, PathBuf};
use testbed::{Compression::Gzip, FaultProxy, FileServer, Format, KubeApi};

const NODE: &str = "worker-7";
const REVISION: &str = "prewarm.io/list-revision";
const WARM: &str = "prewarm.io/list-warm";

/// A serving node's surroundings: the list server, the API server with
/// the Node (someone else's taint on it), and the shared untaint
/// credential.
struct Node {
    server: FileServer,
    api: KubeApi,
    kubeconfig: PathBuf,
}

impl Node {
    fn start(env: &Env) -> Node {
        let server = FileServer::start(&env.path("https")).expect("the list server");
        let api = KubeApi::start(&env.path("api")).expect("the fake API server");
        api.create_node(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
            "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
        }))
        .unwrap();
        let kubeconfig = untainter_kubeconfig(&api);
        Node {
            server,
            api,
            kubeconfig,
        }
    }

    fn node(&self) -> Value {
        self.api.node(NODE).expect("the Node")
    }

    fn annotation(&self, key: &str) -> Option<String> {
        self.node()["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }

    /// The configuration: the list at `images.list` on the server, the
    /// refresh on, kubelet's configuration at `kubelet` (the machine's own
    /// is never read), and `extra` lines (sections of their own).
    fn config(&self, env: &Env, kubelet: &Path, pull: &str, extra: &str) -> PathBuf {
        let state = env.path("state");
        let source = format!(
            "[[sources]]\nkind = \"url\"\nname = \"fleet\"\nurl = {:?}\nchecksum-url = {:?}\nca = {:?}\ntimeout = \"5s\"\nrequired = true\n\
             [refresh]\nenabled = true\nreport = {:?}\n\
             [handoff]\nnode-name = \"{NODE}\"\nkubeconfig = {:?}\nrequest-timeout = \"5s\"\n\
             [register]\nkubelet-config = {kubelet:?}\nkubelet-config-dir = {:?}\n{extra}",
            self.server.url("images.list"),
            self.server.url("images.list.sha256"),
            self.server.ca_cert,
            env.path("refresh-report.json"),
            self.kubeconfig,
            env.path("kubelet.conf.d"),
        );
        env.config_with(
            &[],
            &format!("state-dir = {state:?}\nretries = 2\n{pull}"),
            &source,
        )
    }

    /// The list and its checksum, served from now on; returns its SHA-256
    /// (the revision).
    fn serve(&self, refs: &[&str]) -> String {
        let body: String = refs.iter().map(|r| format!("{r}\n")).collect();
        let sha = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        self.server.put(
            "images.list.sha256",
            format!("{sha}  images.list\n").as_bytes(),
        );
        self.server.put("images.list", body.as_bytes());
        sha
    }
}

fn refresh_report(env: &Env) -> Report {
    Report::read(&env.path("refresh-report.json")).expect("the refresh report")
}

fn image(env: &Env, host: &str, name: &str, seed: u64, size: usize) -> testbed::PushedImage {
    push(
        host,
        name,
        &[linux("amd64", None, layers(seed, &[Gzip], size))],
        Format::Oci,
        &env.path("images"),
    )
}

/// Runs the jq filter of the README's rollout recipe (the line that pipes
/// `kubectl get nodes -o json` into jq) over `nodes`, with `rev`.
fn readme_recipe_count(nodes: &Value, rev: &str) -> u64 {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("kubectl get nodes -o json | jq"))
        .expect("the recipe in the README");
    let filter = &line[line.find('\'').unwrap() + 1..line.rfind('\'').unwrap()];
    let mut jq = std::process::Command::new("jq")
        .args(["--arg", "rev", rev, filter])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("jq");
    use std::io::Write;
    jq.stdin
        .take()
        .unwrap()
        .write_all(nodes.to_string().as_bytes())
        .unwrap();
    let out = jq.wait_with_output().unwrap();
    assert!(out.status.success(), "jq {filter}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

/// GETs of layer blobs the proxy passed on.
fn blob_gets(proxy: &FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/") && r.range.is_none())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_moves_from_v1_to_v2_and_the_node_says_so() {
    let env = Env::start();
    let node = Node::start(&env);
    let host = env.registry.host();
    let v1 = image(&env, &host, "team/app:1.0", 1100, 256 << 10);
    let v2 = image(&env, &host, "team/app:2.0", 1110, 256 << 10);
    let tool = image(&env, &host, "team/tool:1", 1120, 128 << 10);
    let proxy = proxied(&env);
    let (v1_ref, v2_ref, tool_ref) = (via(&proxy, &v1), via(&proxy, &v2), via(&proxy, &tool));
    node.serve(&[&v1_ref, &tool_ref]);
    let textfile = env.path("textfile");
    std::fs::create_dir_all(&textfile).unwrap();
    let metrics = textfile.join("prewarm.prom");
    let config = node.config(
        &env,
        &env.path("kubelet.yaml"),
        &format!("gc = true\nmetrics-file = {metrics:?}"),
        "",
    );
    let config = config.to_str().unwrap();

    // The boot pass.
    let out = env.prewarm(&["pull", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let boot_report = std::fs::read(env.path("report.json")).unwrap();
    let boot_metrics = std::fs::read(&metrics).expect("the boot pass's metrics");
    env.assert_visible_as(&tool_ref, &tool, 0).await;

    // CI promotes 2.0 and drops the tool.
    let revision = node.serve(&[&v2_ref]);
    let taints = node.node()["spec"]["taints"].clone();
    let api_before = node.api.requests().len();
    let out = env.prewarm(&["refresh", "--config", config]);
    assert_eq!(
        exit_code(&out),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.assert_visible_as(&v2_ref, &v2, 0).await;
    let report = refresh_report(&env);
    assert_eq!(report.images.len(), 1);
    assert_eq!(report.images[0].status, ImageStatus::Pulled);
    assert_eq!(report.list_revision.as_deref(), Some(revision.as_str()));
    // [pull] gc = true: the dropped image is removed.
    let gc = report.gc.expect("gc ran");
    assert!(gc.removed.iter().any(|r| r.contains("team/tool")), "{gc:?}");
    let client = env.client().await;
    let tool_tag = prewarm::reference::Reference::parse(&tool_ref)
        .unwrap()
        .tag_name()
        .unwrap();
    assert!(client.image_get(&tool_tag).await.unwrap().is_none());
    // The Node: the revision and warm, and the taints as they were.
    assert_eq!(
        node.annotation(REVISION).as_deref(),
        Some(revision.as_str())
    );
    assert_eq!(node.annotation(WARM).as_deref(), Some("true"));
    assert_eq!(node.node()["spec"]["taints"], taints);
    let calls: Vec<_> = node.api.requests()[api_before..].to_vec();
    assert!(
        calls
            .iter()
            .all(|c| c.path == format!("/api/v1/nodes/{NODE}")
                && (c.method == "GET"
                    || (c.method == "PATCH"
                        && c.body.as_ref().is_some_and(|b| b.get("spec").is_none())))),
        "only a GET and an annotation patch: {calls:?}"
    );
    // The boot pass's report, which untaint reads, and its metrics are the
    // boot pass's.
    assert_eq!(std::fs::read(env.path("report.json")).unwrap(), boot_report);
    assert_eq!(std::fs::read(&metrics).unwrap(), boot_metrics);
    // The README's rollout recipe counts this node, and not one without
    // the annotations.
    let list = json!({"items": [node.node(), {"metadata": {"name": "other"}}]});
    assert_eq!(readme_recipe_count(&list, &revision), 1);

    // Unchanged: one conditional GET of the list, answered 304; tags
    // resolved, no blob fetched; nothing written to the Node.
    let served_before = node.server.served().len();
    let blobs_before = blob_gets(&proxy);
    let api_before = node.api.requests().len();
    let out = env.prewarm(&["refresh", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let served = node.server.served()[served_before..].to_vec();
    assert_eq!(served.len(), 1, "{served:?}");
    assert!(
        served[0].conditional && served[0].status == 304,
        "{served:?}"
    );
    assert_eq!(blob_gets(&proxy), blobs_before, "no blob downloaded");
    let report = refresh_report(&env);
    assert_eq!(report.sources[0].status, SourceStatus::Unchanged);
    assert_eq!(report.summary.present, 1);
    assert_eq!(report.list_revision.as_deref(), Some(revision.as_str()));
    let calls: Vec<_> = node.api.requests()[api_before..].to_vec();
    assert!(
        calls.iter().all(|c| c.method == "GET"),
        "the Node already says so: {calls:?}"
    );
    // --report on the command line is where a refresh writes.
    let moved = env.path("moved-report.json");
    let out = env.prewarm(&[
        "refresh",
        "--config",
        config,
        "--report",
        moved.to_str().unwrap(),
    ]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(Report::read(&moved).unwrap().summary.present, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_image_a_container_uses_stays() {
    let env = Env::start();
    let node = Node::start(&env);
    let host = env.registry.host();
    let kept = image(&env, &host, "team/api:1", 1200, 128 << 10);
    let used = image(&env, &host, "team/web:1", 1210, 128 << 10);
    node.serve(&[&kept.reference, &used.reference]);
    let config = node.config(&env, &env.path("kubelet.yaml"), "gc = true", "");
    let config = config.to_str().unwrap();
    assert_eq!(exit_code(&env.prewarm(&["pull", "--config", config])), 0);
    env.containerd
        .ctr(&["containers", "create", &used.reference, "web-1"])
        .unwrap();

    node.serve(&[&kept.reference]);
    let out = env.prewarm(&["refresh", "--config", config]);
    assert_eq!(exit_code(&out), 0);
    let gc = refresh_report(&env).gc.expect("gc ran");
    assert!(gc.removed.is_empty(), "{gc:?}");
    assert!(
        gc.kept.iter().any(|g| matches!(
            &g.kept,
            Some(prewarm::report::Kept::InUse(ids)) if ids == &["web-1".to_string()]
        )),
        "{gc:?}"
    );
    env.assert_visible(&used, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_s_gc_threshold_leaves_no_room_for_the_heavy_image() {
    let (env, fs) = small_env(300);
    let node = Node::start(&env);
    let host = env.registry.host();
    let light = image(&env, &host, "team/light:1", 1300, 256 << 10);
    let heavy = image(&env, &host, "team/heavy:1", 1310, 40 << 20);
    node.serve(&[&light.reference, &heavy.reference]);
    // kubelet's image GC starts 4 points above the use now: about 12 MiB of
    // room on this filesystem, less than the heavy image needs.
    let total = prewarm::disk::statvfs(&fs.mount).unwrap().total;
    let used = total - fs.available();
    let percent = (used * 100).div_ceil(total) + 4;
    let kubelet = env.path("kubelet.yaml");
    std::fs::write(
        &kubelet,
        format!("kind: KubeletConfiguration\nimageGCHighThresholdPercent: {percent}\n"),
    )
    .unwrap();
    let config = node.config(
        &env,
        &kubelet,
        "",
        "[disk]\nreserve = \"1MiB\"\nmax-usage-percent = 100\n",
    );
    let out = env.prewarm(&["refresh", "--config", config.to_str().unwrap()]);
    // The heavy image is required: exit 3, and the Node is not warm.
    assert_eq!(
        exit_code(&out),
        3,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = refresh_report(&env);
    let by = |r: &str| report.images.iter().find(|i| i.reference == r).unwrap();
    assert_eq!(by(&light.reference).status, ImageStatus::Pulled);
    let skipped = by(&heavy.reference);
    assert_eq!(skipped.status, ImageStatus::Skipped);
    let why = skipped.reason.clone().unwrap_or_default();
    assert!(
        why.contains(&format!("imageGCHighThresholdPercent {percent}"))
            && why.contains(&format!("at most {}% used", percent - 1)),
        "{why}"
    );
    // Below the threshold, above the reserve.
    let after = total - fs.available();
    assert!(after * 100 / total < percent, "{after} of {total}");
    assert!(fs.available() > 1 << 20);
    assert_eq!(node.annotation(WARM).as_deref(), Some("false"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_passes_at_once_one_runs_and_the_other_is_left_out() {
    let env = Env::start();
    let node = Node::start(&env);
    let img = image(&env, &env.registry.host(), "team/slow:1", 1400, 4 << 20);
    let proxy = proxied(&env);
    proxy.throttle(Some(1 << 20));
    let reference = via(&proxy, &img);
    node.serve(&[&reference]);
    let config = node.config(&env, &env.path("kubelet.yaml"), "", "");
    let config = config.to_str().unwrap();
    for first in ["refresh", "pull"] {
        let layer = &img.manifests[0].layer_digests[0];
        // The proxy counts across rounds: this round's first bytes.
        let before = proxy.bytes_sent_for(layer);
        let mut running = env.spawn_prewarm(&[first, "--config", config]);
        testbed::poll_until(
            "the first pass downloading",
            std::time::Duration::from_secs(60),
            || Ok((proxy.bytes_sent_for(layer) > before).then_some(())),
        )
        .unwrap();
        // `--report` moves the refresh's report, not the run lock beside
        // the boot pass's report.
        let other = env.path("other-report.json");
        let out = env.prewarm(&[
            "refresh",
            "--config",
            config,
            "--report",
            other.to_str().unwrap(),
        ]);
        assert_eq!(exit_code(&out), 0, "{first}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("this refresh pass is left out"),
            "{first}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = tokio::task::block_in_place(|| running.wait()).unwrap();
        assert!(status.success(), "{first}: {status}");
        assert!(!other.exists(), "the pass left out wrote no report");
        // The image away again, for the next round.
        let client = env.client().await;
        for i in client.image_list().await.unwrap() {
            client.image_delete(&i.name, true).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_it_reads_and_writes_nothing() {
    let env = Env::start();
    let node = Node::start(&env);
    let img = image(&env, &env.registry.host(), "team/idle:1", 1500, 64 << 10);
    node.serve(&[&img.reference]);
    let config = node.config(&env, &env.path("kubelet.yaml"), "", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("enabled = true", "enabled = false");
    std::fs::write(&config, text).unwrap();
    let out = env.prewarm(&["refresh", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("refresh is off"));
    assert!(node.server.served().is_empty(), "the list was not read");
    assert!(!env.path("refresh-report.json").exists());
    assert!(node.api.requests().is_empty());
}
