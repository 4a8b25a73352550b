//! Ready-made scenarios for the demo and the benchmark: sample images,
//! a prewarm config for a private containerd, and running the prewarm
//! binary with its peak memory measured.

use crate::{push_image, random_bytes, Compression, Containerd, Format, ImageSpec, LayerSpec};
use crate::{PushedImage, Registry};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// Bytes that gzip to roughly 40% of their size, like real image layers:
/// each 4 KiB block is 1.5 KiB of noise and 2.5 KiB of repeated text.
pub fn compressible_bytes(seed: u64, len: usize) -> Vec<u8> {
    let noise = random_bytes(seed, len / 4096 * 1536 + 1536);
    let text = b"prewarm keeps GPU nodes busy: layers of libraries, models and tools. ";
    let mut out = Vec::with_capacity(len + 4096);
    let mut n = 0;
    while out.len() < len {
        out.extend_from_slice(&noise[n..n + 1536]);
        n += 1536;
        for i in 0..2560 {
            out.push(text[i % text.len()]);
        }
    }
    out.truncate(len);
    out
}

/// One single-platform linux/amd64 image with `layers` layers of `size`
/// bytes each (before compression).
pub fn sample_image(seed: u64, layers: usize, size: usize, compression: Compression) -> ImageSpec {
    ImageSpec {
        layers: (0..layers)
            .map(|i| LayerSpec {
                files: vec![(
                    format!("opt/sample/{seed}/layer{i}.bin"),
                    compressible_bytes(seed * 100 + i as u64, size),
                )],
                compression,
                ..Default::default()
            })
            .collect(),
        os: "linux".into(),
        arch: "amd64".into(),
        variant: None,
    }
}

/// Pushes `specs` as `<repo>:<tag>` images, one per entry.
pub fn push_all(
    registry: &Registry,
    work: &Path,
    specs: &[(&str, ImageSpec)],
) -> Result<Vec<PushedImage>> {
    specs
        .iter()
        .map(|(name, spec)| {
            push_image(
                &registry.host(),
                name,
                std::slice::from_ref(spec),
                Format::Oci,
                work,
                None,
            )
            .with_context(|| format!("pushing {name}"))
        })
        .collect()
}

/// A layer tarred from directories of this machine (`/usr/share`, say),
/// with their real modes, owners, times and symlinks, under their own
/// paths: an image shaped like a real one, many small files and some big
/// shared libraries.
pub fn host_layer(dirs: &[&Path], compression: Compression) -> Result<LayerSpec> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    for dir in dirs {
        let name = dir.strip_prefix("/").unwrap_or(dir);
        b.append_dir_all(name, dir)
            .with_context(|| format!("tarring {}", dir.display()))?;
    }
    Ok(LayerSpec {
        tar: Some(b.into_inner()?),
        compression,
        ..Default::default()
    })
}

/// A prewarm config fragment for `containerd` listing `images`, with the
/// report at `report` and `extra` lines appended (whole tables).
pub fn prewarm_config(
    containerd: &Containerd,
    images: &[String],
    report: &Path,
    pull: &str,
    extra: &str,
) -> String {
    let mut text = format!(
        "version = 1\n\n[containerd]\nsocket = {:?}\n\n[registry]\nconfig-path = {:?}\nauth-file = \"\"\n\n[pull]\nreport = {:?}\n{pull}\n{extra}\n",
        containerd.socket, containerd.config_path_dir, report
    );
    for (i, r) in images.iter().enumerate() {
        text.push_str(&format!(
            "\n[[images]]\nref = {r:?}\npriority = {}\nrequired = true\n",
            100 - i as i32
        ));
    }
    text
}

/// How a measured run went.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// How the process ended.
    pub status: ExitStatus,
    /// Wall-clock time from spawn to exit.
    pub wall: Duration,
    /// Peak resident set size of the process, in bytes (VmHWM).
    pub max_rss: u64,
    /// CPU time (user + system) of the process, last read before it exited.
    pub cpu: Duration,
}

/// Runs `cmd` to completion and measures wall time and the peak RSS of
/// that one process. The peak is the kernel's high-water mark of the
/// program's own memory (`VmHWM`, reset by exec), read every 5 ms while it
/// runs: wait4's `ru_maxrss` would also count the pages the child shared
/// with this (large) process between fork and exec.
pub fn measure(mut cmd: Command) -> Result<Measured> {
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let status_path = format!("/proc/{}/status", child.id());
    let stat_path = format!("/proc/{}/stat", child.id());
    let mut max_rss = 0u64;
    let mut cpu = Duration::ZERO;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(t) = std::fs::read_to_string(&stat_path)
            .ok()
            .and_then(|t| cpu_time(&t))
        {
            cpu = t;
        }
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            if let Some(kb) = hwm {
                max_rss = max_rss.max(kb * 1024);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Measured {
        status,
        wall: start.elapsed(),
        max_rss,
        cpu,
    })
}

/// User plus system CPU time from a `/proc/<pid>/stat` line.
pub fn cpu_time(stat: &str) -> Option<Duration> {
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 on every
    // architecture this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time used so far by process `pid`.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    cpu_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Reads every blob in the registry's storage once, so that the first
/// measured pull does not pay for cold page cache on the registry side.
pub fn warm_registry_cache(registry: &Registry) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, total)?;
            } else {
                let mut f = std::fs::File::open(&p)?;
                *total += std::io::copy(&mut f, &mut std::io::sink())?;
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(&registry.dir, &mut total)?;
    Ok(total)
}

/// Finds the prewarm binary: `$PREWARM_BIN`, else next to this executable
/// (both live in `target/<profile>/`).
pub fn prewarm_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PREWARM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("prewarm");
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "no prewarm binary at {}; build it or set PREWARM_BIN",
            p.display()
        )
    }
}
