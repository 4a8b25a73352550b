//! The fake Kubernetes API server on a free loopback port, for scripts (the
//! VM boot test) that need one outside a Rust test.
//!
//! Usage: testbed-kubeapi DIR READY_FILE STATE_FILE NODE TAINT_KEY HOST
//!
//! Serves HTTPS with a certificate for 127.0.0.1 and HOST (the name the
//! guest's kubeconfigs use) and knows two principals: the kubelet of NODE
//! (`system:node:NODE`, which may register its own Node) and the untaint
//! principal (get and patch nodes, through the admission policy only for
//! TAINT_KEY). Writes READY_FILE as JSON `{"addr", "ca", "kubelet_token",
//! "untaint_token"}` (temp file and rename). On SIGTERM or SIGINT it writes
//! STATE_FILE as JSON `{"node": <NODE or null>, "requests": [{"method",
//! "path", "user", "status", "body"}]}` the same way, then exits 0.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use std::path::{Path, PathBuf};
use testbed::{KubeApi, Role};

fn main() {
    if let Err(e) = run() {
        eprintln!("testbed-kubeapi: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, ready, state, node, taint_key, host] = args.as_slice() else {
        bail!("usage: testbed-kubeapi DIR READY_FILE STATE_FILE NODE TAINT_KEY HOST");
    };
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().context("blocking SIGTERM and SIGINT")?;

    let api = KubeApi::start_as(Path::new(dir), &[host.as_str()])?;
    let kubelet = api.add_token_user(&format!("system:node:{node}"), Role::Node(node.clone()))?;
    let untaint = api.add_token_user(
        "system:serviceaccount:kube-system:prewarm-untaint",
        Role::Untainter {
            taint_key: taint_key.clone(),
        },
    )?;
    write_json(
        Path::new(ready),
        &serde_json::json!({
            "addr": api.addr.to_string(),
            "ca": api.ca_cert,
            "kubelet_token": kubelet.token,
            "untaint_token": untaint.token,
        }),
    )?;
    eprintln!("testbed-kubeapi: serving on {}", api.url());

    let sig = stop.wait().context("waiting for SIGTERM")?;
    eprintln!("testbed-kubeapi: {sig:?}, writing {state} and stopping");
    let requests: Vec<serde_json::Value> = api
        .requests()
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "method": r.method, "path": r.path, "user": r.user, "status": r.status,
                "body": r.body,
            })
        })
        .collect();
    write_json(
        &PathBuf::from(state),
        &serde_json::json!({ "node": api.node(node), "requests": requests }),
    )
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{value}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
