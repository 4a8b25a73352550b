//! A private containerd daemon.

use crate::proc::{run, Daemon};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A `containerd` with its own root, state, socket and CRI registry config,
/// all under `dir`. Killed (and its mounts under `dir` detached) on drop.
pub struct Containerd {
    /// Base directory holding everything below.
    pub dir: PathBuf,
    /// The daemon's version, as `containerd --version` prints it
    /// (`1.6.20~ds1`, `2.1.9+unknown`).
    pub version: String,
    /// gRPC socket (`dir/c.sock`).
    pub socket: PathBuf,
    /// containerd root (`dir/root`).
    pub root: PathBuf,
    /// CRI `registry.config_path` (`dir/certs.d`): put `<host>/hosts.toml` here.
    pub config_path_dir: PathBuf,
    /// Daemon log (`dir/containerd.log`).
    pub log: PathBuf,
    /// The daemon binary, for [`Containerd::restart`].
    binary: PathBuf,
    daemon: Daemon,
}

impl Containerd {
    /// Writes `dir/config.toml` and starts `containerd --config` on it; returns
    /// once `ctr version` answers and the CRI plugin has started.
    pub fn start(dir: &Path) -> Result<Containerd> {
        Self::start_binary(dir, Path::new("containerd"))
    }

    /// [`Containerd::start`] with the daemon at `binary`: another version
    /// (see `scripts/containerd-versions.sh`), with the config its major
    /// version reads (`version = 2` for 1.x, `version = 3` for 2.x).
    pub fn start_binary(dir: &Path, binary: &Path) -> Result<Containerd> {
        Self::start_with(dir, binary, false)
    }

    /// [`Containerd::start_binary`], with CRI's `discard_unpacked_layers`
    /// set as given: CRI pulls then drop each layer's blob once unpacked.
    pub fn start_with(
        dir: &Path,
        binary: &Path,
        discard_unpacked_layers: bool,
    ) -> Result<Containerd> {
        let version = daemon_version(binary)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("canonicalizing {}", dir.display()))?;
        let socket = dir.join("c.sock");
        if socket.as_os_str().len() > 100 {
            bail!(
                "socket path {} too long for a unix socket; use a shorter dir",
                socket.display()
            );
        }
        let root = dir.join("root");
        let config_path_dir = dir.join("certs.d");
        for d in [
            &root,
            &config_path_dir,
            &dir.join("state"),
            &dir.join("cni/net.d"),
        ] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let d = dir.display();
        // What every version reads alike; then the CRI plugin's settings,
        // which 2.x splits into an image and a runtime plugin.
        let common = format!(
            r#"root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.ttrpc.sock"

[debug]
  address = "{d}/debug.sock"
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#
        );
        let config = if version.starts_with("1.") {
            format!(
                r#"version = 2
oom_score = 0
{common}
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  discard_unpacked_layers = {discard_unpacked_layers}

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni/bin"
  conf_dir = "{d}/cni/net.d"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{d}/certs.d"
"#
            )
        } else {
            format!(
                r#"version = 3
{common}
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  discard_unpacked_layers = {discard_unpacked_layers}

[plugins."io.containerd.cri.v1.images".registry]
  config_path = "{d}/certs.d"

[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["{d}/cni/bin"]
  conf_dir = "{d}/cni/net.d"
"#
            )
        };
        let config_file = dir.join("config.toml");
        std::fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        let log = dir.join("containerd.log");
        let daemon = launch(binary, &config_file, &log, &socket)?;
        Ok(Containerd {
            dir,
            version,
            socket,
            root,
            config_path_dir,
            log,
            binary: binary.to_path_buf(),
            daemon,
        })
    }

    /// Stops the daemon and starts it again on the same root and socket,
    /// as a node's containerd restarts; returns once it answers again.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.daemon = launch(
            &self.binary,
            &self.dir.join("config.toml"),
            &self.log,
            &self.socket,
        )?;
        Ok(())
    }

    /// Runs `ctr --address <socket> -n k8s.io <args>`; returns stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args))
    }

    /// Writes `config_path_dir/<registry_host>/hosts.toml` pointing at
    /// `server_url` (`http://…` or `https://…`), trusting `ca` if given.
    /// Returns the file's path.
    pub fn write_hosts_toml(
        &self,
        registry_host: &str,
        server_url: &str,
        ca: Option<&Path>,
    ) -> Result<PathBuf> {
        let dir = self.config_path_dir.join(registry_host);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut toml = format!(
            "server = \"{server_url}\"\n\n[host.\"{server_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        if let Some(ca) = ca {
            toml.push_str(&format!("  ca = \"{}\"\n", ca.display()));
        }
        let file = dir.join("hosts.toml");
        std::fs::write(&file, toml).with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The last lines of `containerd.log`.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }

    /// Kills the daemon (SIGTERM, then SIGKILL), reaps it and detaches every
    /// mount below `dir`. Idempotent.
    pub fn stop(&mut self) {
        self.daemon.stop();
        unmount_below(&self.dir);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `binary --config config` and waits until `ctr version` answers
/// on `socket` and the CRI plugin has started (read from the part of `log`
/// this start writes).
fn launch(binary: &Path, config: &Path, log: &Path, socket: &Path) -> Result<Daemon> {
    let from = std::fs::metadata(log)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let mut cmd = Command::new(binary);
    cmd.arg("--config").arg(config);
    let mut daemon = Daemon::spawn("containerd", cmd, log)?;
    let ready = crate::poll_until("containerd to answer", Duration::from_secs(30), || {
        daemon.check_alive()?;
        let ok = Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["--timeout", "2s", "version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        // The CRI service initialises after gRPC starts serving.
        let cri = std::fs::read(log)
            .map(|l| {
                String::from_utf8_lossy(l.get(from..).unwrap_or_default())
                    .contains("Start streaming server")
            })
            .unwrap_or(false);
        Ok((ok && cri).then_some(()))
    });
    if let Err(e) = ready {
        let tail = daemon.log_tail();
        daemon.stop();
        return Err(e.context(format!("containerd did not come up; log tail:\n{tail}")));
    }
    Ok(daemon)
}

/// The version `binary --version` prints: its third word.
fn daemon_version(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .map(str::to_string)
        .with_context(|| format!("{} --version printed {text:?}", binary.display()))
}

/// The containerd of Debian `suite`, as `scripts/containerd-versions.sh`
/// leaves it, or an error that names the suite and says how to get it.
pub fn containerd_of_suite(suite: &str) -> Result<PathBuf> {
    let cache = std::env::var_os("PREWARM_CONTAINERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/prewarm-containerd"));
    // `bookworm:arm64`: another architecture's, started under qemu-user.
    let bin = match suite.split_once(':') {
        Some((s, arch)) => cache.join(format!("{s}-{arch}")).join("containerd"),
        None => cache.join(suite).join("usr/bin/containerd"),
    };
    if !bin.exists() {
        bail!(
            "containerd from Debian {suite} is not at {}: run scripts/containerd-versions.sh {suite}",
            bin.display()
        );
    }
    Ok(bin)
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Undoes the `\ooo` octal escapes of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
