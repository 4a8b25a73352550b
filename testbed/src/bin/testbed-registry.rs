//! A `docker-registry` on a free loopback port holding small sample images,
//! for scripts (the VM boot test) that need a registry outside a Rust test.
//!
//! Usage: testbed-registry DIR READY_FILE REPO:TAG...
//!
//! Starts the registry with its storage under DIR, pushes one small
//! linux/amd64 image (two gzip layers) per REPO:TAG, then writes READY_FILE
//! as JSON `{"addr", "pid", "images": [{"name", "digest"}]}` (written to a
//! temp file and renamed, so a poller never reads half of it). Runs until
//! SIGTERM or SIGINT, then stops the registry and exits 0.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use std::path::PathBuf;
use testbed::scenario::{push_all, sample_image};
use testbed::{Compression, Registry};

fn main() {
    if let Err(e) = run() {
        eprintln!("testbed-registry: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: testbed-registry DIR READY_FILE REPO:TAG...");
    }
    let (dir, ready) = (PathBuf::from(&args[0]), PathBuf::from(&args[1]));
    // Block the stop signals before any thread starts, then wait for them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().context("blocking SIGTERM and SIGINT")?;

    let registry = Registry::start(&dir.join("registry"))?;
    let specs: Vec<(&str, _)> = args[2..]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name.as_str(),
                sample_image(i as u64 + 1, 2, 4 << 20, Compression::Gzip),
            )
        })
        .collect();
    let pushed = push_all(&registry, &dir.join("images"), &specs)?;
    let images: Vec<serde_json::Value> = pushed
        .iter()
        .zip(&args[2..])
        .map(|(p, name)| serde_json::json!({ "name": name, "digest": p.top_digest }))
        .collect();
    let json = serde_json::json!({
        "addr": registry.host(),
        "pid": registry.pid(),
        "images": images,
    });
    let tmp = ready.with_extension("tmp");
    std::fs::write(&tmp, format!("{json}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &ready).with_context(|| format!("renaming to {}", ready.display()))?;
    eprintln!("testbed-registry: serving on {}", registry.host());

    let sig = stop.wait().context("waiting for SIGTERM")?;
    eprintln!("testbed-registry: {sig:?}, stopping");
    drop(registry);
    Ok(())
}
