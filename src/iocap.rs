//! The IO cap on containerd: the disk writes of a preload happen inside
//! containerd (ingest files, the fsync at commit, the whole unpack), so the
//! cap goes on containerd's cgroup, on the whole disk behind its root, for
//! the duration of the run. The previous limits are restored on every exit
//! path: by a guard on return, error, signal and panic, and from a state
//! file at the next start after a `kill -9`.
//!
//! - cgroup v2: `io.max` (`MAJ:MIN wbps=… wiops=…`), through
//!   `systemctl set-property --runtime` when containerd is a systemd unit
//!   (systemd's `SetUnitProperties`), else written directly.
//! - cgroup v1: `blkio.throttle.write_{bps,iops}_device`. These only catch
//!   direct IO and fsync, not buffered writeback: the report says so.
//! - Never the root cgroup: it holds every process on the node. A
//!   containerd there runs uncapped, and the report says why.

use crate::report::IoCapReport;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Write limits for containerd's disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimits {
    pub write_bps: Option<u64>,
    pub write_iops: Option<u64>,
}

impl IoLimits {
    pub fn is_empty(&self) -> bool {
        self.write_bps.is_none() && self.write_iops.is_none()
    }
}

/// Setting or restoring the cap failed.
#[derive(Debug, thiserror::Error)]
pub enum IoCapError {
    #[error("finding containerd's process behind {socket}: {message}")]
    Peer { socket: PathBuf, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("systemctl {args}: {message}")]
    Systemctl { args: String, message: String },
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> IoCapError {
    IoCapError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevNum {
    pub major: u64,
    pub minor: u64,
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Where the cap is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// cgroup v1 blkio directory.
    V1 { dir: PathBuf },
    /// cgroup v2 directory, written directly.
    V2 { dir: PathBuf },
    /// cgroup v2 under a systemd unit.
    Systemd { unit: String, dir: PathBuf },
}

/// What was in force before the run, to put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub target: Target,
    pub device: DevNum,
    pub previous: IoLimits,
    /// systemd's previous property values, verbatim.
    #[serde(default)]
    pub systemd_previous: Vec<(String, String)>,
}

/// The PID of the process serving `socket` (SO_PEERCRED).
pub fn peer_pid(socket: &Path) -> Result<u32, IoCapError> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let err = |message: String| IoCapError::Peer {
        socket: socket.to_path_buf(),
        message,
    };
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| err(e.to_string()))?;
    let cred = getsockopt(&stream, PeerCredentials).map_err(|e| err(e.to_string()))?;
    u32::try_from(cred.pid()).map_err(|_| err(format!("bad pid {}", cred.pid())))
}

/// The whole disk behind `path`: its device, or the parent of a partition.
pub fn disk_of(path: &Path) -> Result<DevNum, IoCapError> {
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, e))?;
    let dev = meta.dev();
    let num = DevNum {
        major: nix::sys::stat::major(dev),
        minor: nix::sys::stat::minor(dev),
    };
    whole_disk(Path::new("/sys/dev/block"), num)
}

/// The disk device `num` belongs to, as `sys_dev_block` (sysfs's
/// `/sys/dev/block`) tells: itself, or a partition's parent.
fn whole_disk(sys_dev_block: &Path, num: DevNum) -> Result<DevNum, IoCapError> {
    let sys = sys_dev_block.join(num.to_string());
    if !sys.join("partition").exists() {
        return Ok(num);
    }
    // /sys/dev/block/M:m → …/block/vda/vda1; the parent holds the disk's dev.
    let real = std::fs::canonicalize(&sys).map_err(|e| file_err(&sys, e))?;
    let parent_dev = real
        .parent()
        .map(|p| p.join("dev"))
        .ok_or_else(|| file_err(&real, "no parent device"))?;
    let text = std::fs::read_to_string(&parent_dev).map_err(|e| file_err(&parent_dev, e))?;
    parse_devnum(text.trim()).ok_or_else(|| file_err(&parent_dev, format!("not MAJ:MIN: {text:?}")))
}

fn parse_devnum(s: &str) -> Option<DevNum> {
    let (a, b) = s.split_once(':')?;
    Some(DevNum {
        major: a.parse().ok()?,
        minor: b.parse().ok()?,
    })
}

/// Finds the cgroup of `pid` from `/proc/<pid>/cgroup`, preferring a v1
/// blkio hierarchy, else the v2 one.
pub fn target_of(pid: u32, cgroup_root: &Path) -> Result<Target, IoCapError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
    parse_target(
        &text,
        cgroup_root,
        Path::new("/run/systemd/system").exists(),
    )
    .map_err(|why| file_err(&path, why))
}

/// Why [`parse_target`] found no cgroup to cap.
pub const NO_CGROUP: &str = "neither a blkio (v1) nor an io (v2) cgroup";
/// A containerd started outside a service manager can share the root
/// cgroup with the rest of the node; a cap there would slow every
/// process's writes.
pub const ROOT_CGROUP: &str =
    "containerd is in the root cgroup, where a cap would hold every process on the node";

/// The pure part of [`target_of`].
pub fn parse_target(proc_cgroup: &str, root: &Path, systemd: bool) -> Result<Target, &'static str> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "blkio") {
            let dir = root.join("blkio").join(rel);
            if dir.join("blkio.throttle.write_bps_device").exists() {
                if rel.is_empty() {
                    return Err(ROOT_CGROUP);
                }
                return Ok(Target::V1 { dir });
            }
        }
        if controllers.is_empty() {
            // Unified hierarchy: mounted at the root itself on pure v2, or
            // at root/unified on hybrid systems.
            let base = if root.join("cgroup.controllers").exists() {
                root.to_path_buf()
            } else {
                root.join("unified")
            };
            v2 = Some((base.join(rel), rel.to_string()));
        }
    }
    let (dir, rel) = v2.ok_or(NO_CGROUP)?;
    if rel.is_empty() {
        return Err(ROOT_CGROUP);
    }
    if !dir.join("io.max").exists() && !systemd {
        return Err(NO_CGROUP);
    }
    let unit = rel.rsplit('/').next().filter(|u| u.ends_with(".service"));
    Ok(match (systemd, unit) {
        (true, Some(unit)) => Target::Systemd {
            unit: unit.to_string(),
            dir,
        },
        _ => Target::V2 { dir },
    })
}

/// Reads the value for `dev` from a v1 `blkio.throttle.*_device` file.
pub fn v1_value(text: &str, dev: DevNum) -> Option<u64> {
    text.lines().find_map(|l| {
        let (d, v) = l.split_once(char::is_whitespace)?;
        (parse_devnum(d)? == dev).then(|| v.trim().parse().ok())?
    })
}

/// Reads `wbps` and `wiops` for `dev` from a v2 `io.max` file.
pub fn v2_limits(text: &str, dev: DevNum) -> IoLimits {
    let mut out = IoLimits::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next().and_then(parse_devnum) != Some(dev) {
            continue;
        }
        for f in fields {
            match f.split_once('=') {
                Some(("wbps", v)) => out.write_bps = v.parse().ok(),
                Some(("wiops", v)) => out.write_iops = v.parse().ok(),
                _ => {}
            }
        }
    }
    out
}

/// The `io.max` line that sets `limits` on `dev` (`max` lifts a limit).
pub fn v2_line(dev: DevNum, limits: IoLimits) -> String {
    let v = |x: Option<u64>| x.map_or("max".to_string(), |n| n.to_string());
    format!(
        "{dev} wbps={} wiops={}",
        v(limits.write_bps),
        v(limits.write_iops)
    )
}

fn write(path: &Path, line: &str) -> Result<(), IoCapError> {
    std::fs::write(path, line).map_err(|e| file_err(path, format!("writing {line:?}: {e}")))
}

fn read(path: &Path) -> Result<String, IoCapError> {
    std::fs::read_to_string(path).map_err(|e| file_err(path, e))
}

const V1_BPS: &str = "blkio.throttle.write_bps_device";
const V1_IOPS: &str = "blkio.throttle.write_iops_device";
const SD_BPS: &str = "IOWriteBandwidthMax";
const SD_IOPS: &str = "IOWriteIOPSMax";

fn systemctl(args: &[String]) -> Result<String, IoCapError> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| IoCapError::Systemctl {
            args: args.join(" "),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(IoCapError::Systemctl {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemctl show` output as (property, value) pairs: one line per entry,
/// so a property with limits on two devices comes twice.
fn parse_show(shown: &str) -> Vec<(String, String)> {
    shown
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `systemctl set-property` arguments that put `limits` on `device` of
/// `unit`, lifting a `None` limit on it.
fn set_args(unit: &str, device: DevNum, limits: IoLimits) -> Vec<String> {
    let node = format!("/dev/block/{device}");
    let prop = |name: &str, v: Option<u64>| match v {
        Some(n) => format!("{name}={node} {n}"),
        None => format!("{name}="),
    };
    vec![
        "set-property".into(),
        "--runtime".into(),
        unit.to_string(),
        prop(SD_BPS, limits.write_bps),
        prop(SD_IOPS, limits.write_iops),
    ]
}

/// `systemctl set-property` arguments that put back what `systemctl show`
/// gave: each property reset once (an empty assignment), then each of its
/// entries, for every device.
fn restore_args(unit: &str, previous: &[(String, String)]) -> Vec<String> {
    let mut args = vec!["set-property".into(), "--runtime".into(), unit.to_string()];
    let mut reset = std::collections::BTreeSet::new();
    for (k, _) in previous {
        if reset.insert(k.as_str()) {
            args.push(format!("{k}="));
        }
    }
    for (k, v) in previous {
        for entry in v.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            args.push(format!("{k}={entry}"));
        }
    }
    args
}

/// Reads what is in force now on `target` for `device`.
pub fn read_current(target: &Target, device: DevNum) -> Result<Saved, IoCapError> {
    let (previous, systemd_previous) = match target {
        Target::V1 { dir } => (
            IoLimits {
                write_bps: v1_value(&read(&dir.join(V1_BPS))?, device),
                write_iops: v1_value(&read(&dir.join(V1_IOPS))?, device),
            },
            Vec::new(),
        ),
        Target::V2 { dir } => (v2_limits(&read(&dir.join("io.max"))?, device), Vec::new()),
        Target::Systemd { unit, dir } => {
            let shown = systemctl(&[
                "show".into(),
                format!("--property={SD_BPS}"),
                format!("--property={SD_IOPS}"),
                unit.clone(),
            ])?;
            let props = parse_show(&shown);
            let limits = read(&dir.join("io.max"))
                .map(|t| v2_limits(&t, device))
                .unwrap_or_default();
            (limits, props)
        }
    };
    Ok(Saved {
        target: target.clone(),
        device,
        previous,
        systemd_previous,
    })
}

/// Writes `limits` on `target` for `device`; a `None` limit is lifted.
pub fn write_limits(target: &Target, device: DevNum, limits: IoLimits) -> Result<(), IoCapError> {
    match target {
        Target::V1 { dir } => {
            // Writing 0 removes a v1 rule.
            write(
                &dir.join(V1_BPS),
                &format!("{device} {}", limits.write_bps.unwrap_or(0)),
            )?;
            write(
                &dir.join(V1_IOPS),
                &format!("{device} {}", limits.write_iops.unwrap_or(0)),
            )
        }
        Target::V2 { dir } => write(&dir.join("io.max"), &v2_line(device, limits)),
        Target::Systemd { unit, .. } => systemctl(&set_args(unit, device, limits)).map(drop),
    }
}

/// Puts back what [`read_current`] saw.
pub fn restore(saved: &Saved) -> Result<(), IoCapError> {
    match &saved.target {
        Target::Systemd { unit, .. } if !saved.systemd_previous.is_empty() => {
            systemctl(&restore_args(unit, &saved.systemd_previous)).map(drop)
        }
        t => write_limits(t, saved.device, saved.previous),
    }
}

/// The cap in force for one run; dropping it restores the previous limits
/// and removes the state file.
#[derive(Debug)]
pub struct IoCap {
    saved: Saved,
    state: PathBuf,
    restored: bool,
}

/// The v1 caveat, said plainly in the report.
pub const V1_NOTE: &str =
    "cgroup v1 blkio throttles only direct IO and fsync, not buffered writeback";

/// What prewarm does where the kernel cannot cap the unpack's writes (see
/// `Engine::unpack_pace`).
pub const PACED_NOTE: &str = "containerd's unpacks are paced to write-bandwidth instead";

/// The v1 caveat, and whether the unpacks are paced.
fn v1_note(limits: IoLimits) -> String {
    match limits.write_bps {
        Some(_) => format!(
            "{V1_NOTE}: {PACED_NOTE} (a layer starts once the bytes unpacked so far are within the rate; write-iops is not paced)"
        ),
        None => format!("{V1_NOTE}: containerd's unpack writes are not capped (write-iops is not paced)"),
    }
}

impl IoCap {
    /// Restores the limits a killed run left behind (from `state`), then
    /// caps containerd (found behind `socket`) on the disk holding `root`.
    pub fn apply(
        socket: &Path,
        root: &Path,
        limits: IoLimits,
        state: &Path,
    ) -> Result<IoCap, IoCapError> {
        recover(state)?;
        let pid = peer_pid(socket)?;
        let target = target_of(pid, Path::new("/sys/fs/cgroup"))?;
        Self::apply_to(target, root, limits, state)
    }

    /// Caps the cgroup `target` on the disk holding `root`, keeping what
    /// was there in `state` until it is put back.
    pub fn apply_to(
        target: Target,
        root: &Path,
        limits: IoLimits,
        state: &Path,
    ) -> Result<IoCap, IoCapError> {
        let device = disk_of(root)?;
        let saved = read_current(&target, device)?;
        let json = serde_json::to_vec_pretty(&saved).map_err(|e| file_err(state, e))?;
        crate::atomic::write_atomic(state, &json).map_err(|e| file_err(state, e))?;
        if let Err(e) = write_limits(&target, device, limits) {
            let _ = restore(&saved);
            let _ = std::fs::remove_file(state);
            return Err(e);
        }
        tracing::info!(?target, %device, ?limits, "capped writes");
        Ok(IoCap {
            saved,
            state: state.to_path_buf(),
            restored: false,
        })
    }

    /// The cgroup capped.
    pub fn target(&self) -> &Target {
        &self.saved.target
    }

    /// Whether the kernel caps containerd's buffered writes (the unpack).
    /// cgroup v1 does not: prewarm paces the unpacks itself there.
    pub fn caps_buffered_writes(&self) -> bool {
        !matches!(self.saved.target, Target::V1 { .. })
    }

    /// The capped cgroup, as the report names it.
    pub fn name(&self) -> String {
        match &self.saved.target {
            Target::V1 { dir } | Target::V2 { dir } => dir.display().to_string(),
            Target::Systemd { unit, .. } => format!("systemd unit {unit}"),
        }
    }

    /// For the report.
    pub fn describe(&self, limits: IoLimits) -> IoCapReport {
        let note = matches!(self.saved.target, Target::V1 { .. }).then(|| v1_note(limits));
        IoCapReport {
            cgroup: self.name(),
            device: self.saved.device.to_string(),
            write_bps: limits.write_bps,
            write_iops: limits.write_iops,
            note,
            own_cgroup: None,
        }
    }

    /// Restores now, reporting errors (Drop only logs them).
    pub fn restore(mut self) -> Result<(), IoCapError> {
        self.restored = true;
        restore(&self.saved)?;
        let _ = std::fs::remove_file(&self.state);
        Ok(())
    }
}

impl Drop for IoCap {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        match restore(&self.saved) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.state);
            }
            Err(e) => {
                tracing::error!(error = %e, state = %self.state.display(), "restoring containerd's IO limits; the next run retries from the state file")
            }
        }
    }
}

/// Puts back limits saved by a run that never restored them.
pub fn recover(state: &Path) -> Result<(), IoCapError> {
    let bytes = match std::fs::read(state) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(file_err(state, e)),
    };
    let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| file_err(state, e))?;
    tracing::warn!(state = %state.display(), "restoring IO limits left by an earlier run");
    restore(&saved)?;
    std::fs::remove_file(state).map_err(|e| file_err(state, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v1_note_says_whether_unpacks_are_paced() {
        let paced = v1_note(IoLimits {
            write_bps: Some(1 << 20),
            write_iops: None,
        });
        assert!(paced.contains("paced to write-bandwidth"), "{paced}");
        let iops_only = v1_note(IoLimits {
            write_bps: None,
            write_iops: Some(100),
        });
        assert!(iops_only.contains("not capped"), "{iops_only}");
        assert!(!iops_only.contains("paced to"), "{iops_only}");
    }

    const VDA: DevNum = DevNum {
        major: 254,
        minor: 0,
    };

    #[test]
    fn v1_files() {
        let text = "8:0 1000\n254:0 52428800\n";
        assert_eq!(v1_value(text, VDA), Some(52_428_800));
        assert_eq!(v1_value("8:0 1\n", VDA), None);
        assert_eq!(v1_value("", VDA), None);
    }

    #[test]
    fn v2_io_max() {
        let text = "8:0 rbps=max wbps=1000 riops=max wiops=max\n254:0 rbps=max wbps=104857600 riops=max wiops=500\n";
        assert_eq!(
            v2_limits(text, VDA),
            IoLimits {
                write_bps: Some(104_857_600),
                write_iops: Some(500)
            }
        );
        assert_eq!(v2_limits("8:0 wbps=1\n", VDA), IoLimits::default());
        assert_eq!(
            v2_line(
                VDA,
                IoLimits {
                    write_bps: Some(5),
                    write_iops: None
                }
            ),
            "254:0 wbps=5 wiops=max"
        );
    }

    #[test]
    fn a_v2_cap_is_written_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let io_max = dir.path().join("io.max");
        let before = "8:0 rbps=max wbps=7 riops=max wiops=max\n254:0 rbps=max wbps=1000 riops=max wiops=max\n";
        std::fs::write(&io_max, before).unwrap();
        let target = Target::V2 {
            dir: dir.path().to_path_buf(),
        };
        let saved = read_current(&target, VDA).unwrap();
        assert_eq!(
            saved.previous,
            IoLimits {
                write_bps: Some(1000),
                write_iops: None
            }
        );
        let cap = IoLimits {
            write_bps: Some(5 << 20),
            write_iops: Some(300),
        };
        write_limits(&target, VDA, cap).unwrap();
        // The kernel's io.max takes one device's line per write.
        let written = std::fs::read_to_string(&io_max).unwrap();
        assert_eq!(written, "254:0 wbps=5242880 wiops=300");
        restore(&saved).unwrap();
        assert_eq!(
            std::fs::read_to_string(&io_max).unwrap(),
            "254:0 wbps=1000 wiops=max"
        );
    }

    #[test]
    fn a_cap_left_behind_is_recovered_from_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let io_max = dir.path().join("io.max");
        std::fs::write(&io_max, "254:0 wbps=5 wiops=max").unwrap();
        let state = dir.path().join("iocap-state.json");
        let saved = Saved {
            target: Target::V2 {
                dir: dir.path().to_path_buf(),
            },
            device: VDA,
            previous: IoLimits::default(),
            systemd_previous: Vec::new(),
        };
        std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();
        recover(&state).unwrap();
        assert_eq!(
            std::fs::read_to_string(&io_max).unwrap(),
            "254:0 wbps=max wiops=max"
        );
        assert!(!state.exists());
        // Nothing left to recover: nothing written.
        std::fs::write(&io_max, "untouched").unwrap();
        recover(&state).unwrap();
        assert_eq!(std::fs::read_to_string(&io_max).unwrap(), "untouched");
        // A state file that is not prewarm's is an error naming it.
        std::fs::write(&state, "{").unwrap();
        let e = recover(&state).unwrap_err().to_string();
        assert!(e.contains("iocap-state.json"), "{e}");
    }

    #[test]
    fn systemd_properties_are_set_and_put_back() {
        let unit = "containerd.service";
        assert_eq!(
            set_args(
                unit,
                VDA,
                IoLimits {
                    write_bps: Some(100),
                    write_iops: None
                }
            ),
            [
                "set-property",
                "--runtime",
                unit,
                "IOWriteBandwidthMax=/dev/block/254:0 100",
                "IOWriteIOPSMax=",
            ]
        );
        // systemctl show: one line per device, and an empty one for none.
        let shown = "IOWriteBandwidthMax=/dev/block/8:0 100\nIOWriteBandwidthMax=/dev/block/254:0 200\nIOWriteIOPSMax=\n";
        let previous = parse_show(shown);
        assert_eq!(previous.len(), 3);
        // Both devices' limits come back: each property is reset once.
        assert_eq!(
            restore_args(unit, &previous),
            [
                "set-property",
                "--runtime",
                unit,
                "IOWriteBandwidthMax=",
                "IOWriteIOPSMax=",
                "IOWriteBandwidthMax=/dev/block/8:0 100",
                "IOWriteBandwidthMax=/dev/block/254:0 200",
            ]
        );
    }

    #[test]
    fn cgroup_targets() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Hybrid: v1 blkio present.
        let blkio = root.join("blkio/system.slice/containerd.service");
        std::fs::create_dir_all(&blkio).unwrap();
        std::fs::write(blkio.join(V1_BPS), "").unwrap();
        let proc_cgroup =
            "7:blkio:/system.slice/containerd.service\n0::/system.slice/containerd.service\n";
        assert_eq!(
            parse_target(proc_cgroup, root, true),
            Ok(Target::V1 { dir: blkio })
        );
        // The root blkio cgroup holds the whole node: never capped.
        std::fs::write(root.join("blkio").join(V1_BPS), "").unwrap();
        assert_eq!(
            parse_target(
                "7:blkio:/\n0::/system.slice/containerd.service\n",
                root,
                true
            ),
            Err(ROOT_CGROUP)
        );
        // Pure v2 under systemd.
        let dir2 = tempfile::tempdir().unwrap();
        let root2 = dir2.path();
        std::fs::write(root2.join("cgroup.controllers"), "io memory").unwrap();
        let unit_dir = root2.join("system.slice/containerd.service");
        std::fs::create_dir_all(&unit_dir).unwrap();
        std::fs::write(unit_dir.join("io.max"), "").unwrap();
        assert_eq!(
            parse_target("0::/system.slice/containerd.service\n", root2, true),
            Ok(Target::Systemd {
                unit: "containerd.service".into(),
                dir: unit_dir.clone()
            })
        );
        assert_eq!(
            parse_target("0::/system.slice/containerd.service\n", root2, false),
            Ok(Target::V2 { dir: unit_dir })
        );
        assert_eq!(parse_target("0::/nowhere\n", root2, false), Err(NO_CGROUP));
        assert_eq!(parse_target("0::/\n", root2, true), Err(ROOT_CGROUP));
        assert_eq!(parse_target("", root2, true), Err(NO_CGROUP));
    }

    #[test]
    fn partitions_resolve_to_the_whole_disk() {
        // sysfs as the kernel lays it out for a disk sda (8:0) with a
        // partition sda1 (8:1), and a whole disk vdb (254:16).
        let sys = tempfile::tempdir().unwrap();
        let block = sys.path().join("devices/pci0/block");
        let write = |p: PathBuf, text: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(block.join("sda/dev"), "8:0\n");
        write(block.join("sda/sda1/dev"), "8:1\n");
        write(block.join("sda/sda1/partition"), "1\n");
        write(block.join("vdb/dev"), "254:16\n");
        let dev_block = sys.path().join("dev/block");
        std::fs::create_dir_all(&dev_block).unwrap();
        for (num, target) in [("8:0", "sda"), ("8:1", "sda/sda1"), ("254:16", "vdb")] {
            std::os::unix::fs::symlink(block.join(target), dev_block.join(num)).unwrap();
        }
        let n = |s: &str| parse_devnum(s).unwrap();
        assert_eq!(whole_disk(&dev_block, n("8:1")).unwrap(), n("8:0"));
        assert_eq!(whole_disk(&dev_block, n("8:0")).unwrap(), n("8:0"));
        assert_eq!(whole_disk(&dev_block, n("254:16")).unwrap(), n("254:16"));
        // And on this machine: whatever `/` is on, the answer is a disk.
        let d = disk_of(Path::new("/")).unwrap();
        assert!(!Path::new(&format!("/sys/dev/block/{d}/partition")).exists());
    }
}
