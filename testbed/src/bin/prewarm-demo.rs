//! The demo: a private containerd and registry in a temp dir, three sample
//! images built from local bytes and pushed with skopeo, then a throttled
//! `prewarm plan`, `prewarm pull` and `prewarm status`, as an operator
//! would run them. Everything is torn down at the end.

use anyhow::{bail, Context, Result};
use std::process::Command;
use testbed::scenario::{prewarm_binary, prewarm_config, push_all, sample_image};
use testbed::{Compression, Containerd, Registry};

fn main() {
    if let Err(e) = run() {
        eprintln!("prewarm-demo: {e:#}");
        std::process::exit(1);
    }
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
    println!("containerd socket: {}", containerd.socket.display());
    println!("registry:          {}", registry.url());

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

    let refs: Vec<String> = images.iter().map(|i| i.reference.clone()).collect();
    let report = dir.path().join("report.json");
    let config = dir.path().join("prewarm.toml");
    std::fs::write(
        &config,
        prewarm_config(
            &containerd,
            &refs,
            &report,
            "concurrency = 2",
            "[throttle]\nbandwidth = \"20MiB/s\"\n\n[disk]\nreserve = \"1GiB\"\n# A demo on a shared build disk: only the reserve binds.\nmax-usage-percent = 100\n",
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
    step("prewarm plan (dry run)");
    run(&["plan"])?;
    step("prewarm pull (bandwidth capped at 20 MiB/s)");
    let code = run(&["pull"])?;
    step(&format!("report ({})", report.display()));
    print!("{}", std::fs::read_to_string(&report)?);
    step("prewarm status (kubelet's view through CRI)");
    let status = run(&["status"])?;
    step("prewarm pull again (warm node: nothing to do)");
    let again = run(&["pull"])?;
    if code != 0 || status != 0 || again != 0 {
        bail!("prewarm exited {code}, {status}, {again}");
    }
    println!("\ndemo done; tearing down containerd and the registry");
    Ok(())
}
