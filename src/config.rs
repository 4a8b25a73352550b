//! Configuration: TOML fragments, merged in order, then validated into
//! strong types before anything touches the network or a daemon.
//!
//! Sources, a later one winning key by key:
//! `/usr/lib/prewarm/config.d/*.toml` (package defaults), then
//! `/run/prewarm/config.d/*.toml`, then `/etc/prewarm/config.d/*.toml`, each
//! directory in file-name order, then `--config FILE`, then flags.
//! `[[images]]` entries accumulate across fragments; an entry naming the
//! same reference again replaces the earlier one.

use crate::reference::Reference;
use serde::{de, Deserialize, Deserializer};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Directories read in this order, relative to the configuration root.
pub const FRAGMENT_DIRS: [&str; 3] = [
    "usr/lib/prewarm/config.d",
    "run/prewarm/config.d",
    "etc/prewarm/config.d",
];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "no images configured: add [[images]] entries with a `ref` key to a fragment in {searched}"
    )]
    NoImages { searched: String },
}

// ---------------------------------------------------------------------------
// Raw fragments, exactly as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFragment {
    version: Option<u32>,
    #[serde(default)]
    containerd: RawContainerd,
    #[serde(default)]
    registry: RawRegistry,
    #[serde(default)]
    pull: RawPull,
    #[serde(default)]
    throttle: RawThrottle,
    #[serde(default)]
    disk: RawDisk,
    #[serde(default)]
    images: Vec<RawImage>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawContainerd {
    socket: Option<PathBuf>,
    namespace: Option<String>,
    snapshotter: Option<String>,
    pin: Option<bool>,
    connect_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRegistry {
    config_path: Option<PathBuf>,
    auth_file: Option<PathBuf>,
    connect_timeout: Option<HumanDuration>,
    read_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPull {
    concurrency: Option<NonZeroU32>,
    layer_concurrency: Option<NonZeroU32>,
    retries: Option<u32>,
    deadline: Option<HumanDuration>,
    platform: Option<String>,
    report: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawThrottle {
    bandwidth: Option<Rate>,
    write_bandwidth: Option<Rate>,
    write_iops: Option<NonZeroU64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDisk {
    reserve: Option<ByteSize>,
    max_usage_percent: Option<u8>,
    unpack_ratio: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawImage {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    required: bool,
}

// ---------------------------------------------------------------------------
// Value types with human syntax.

/// A byte count: `512`, `"10GiB"`, `"500MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A rate in bytes per second: `"50MiB/s"`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub NonZeroU64);

/// A duration: `"15m"`, `"90s"`, `"1h30m"`, `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Parses `10GiB`, `1.5 GB`, `512k`, `100` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = (s[..split].trim(), s[split..].trim());
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"10GiB\" or \"500MB\""))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ))
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

/// Parses `90s`, `15m`, `1h30m`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration like \"90s\", \"15m\" or \"1h30m\"");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(err()),
        };
    }
    Ok(total)
}

/// Parses `50MiB/s` or a plain number of bytes per second.
pub fn parse_rate(s: &str) -> Result<NonZeroU64, String> {
    let bytes = parse_bytes(s.trim().trim_end_matches("/s"))?;
    NonZeroU64::new(bytes).ok_or_else(|| format!("{s:?}: a rate must be above zero"))
}

/// Accepts a TOML string or integer and parses it with `f`.
fn de_human<'de, D, T>(d: D, f: fn(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StrOrInt {
        S(String),
        I(u64),
    }
    match StrOrInt::deserialize(d)? {
        StrOrInt::S(s) => f(&s),
        StrOrInt::I(i) => f(&i.to_string()),
    }
    .map_err(de::Error::custom)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_human(d, parse_bytes).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_human(d, parse_rate).map(Rate)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_human(d, |s| {
            let v = parse_duration(s)?;
            if v.is_zero() {
                return Err(format!("{s:?}: must be above zero"));
            }
            Ok(v)
        })
        .map(HumanDuration)
    }
}

// ---------------------------------------------------------------------------
// Validated settings.

/// One image to preload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub reference: Reference,
    /// Higher first.
    pub priority: i32,
    /// A required image that is not present fails the run.
    pub required: bool,
    /// The fragment that listed it.
    pub source: PathBuf,
}

/// Validated settings for a run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub namespace: String,
    pub snapshotter: Option<String>,
    pub pin: bool,
    pub connect_timeout: Duration,
    pub registry_config_path: Option<PathBuf>,
    pub auth_file: Option<PathBuf>,
    pub registry_connect_timeout: Duration,
    pub registry_read_timeout: Duration,
    pub concurrency: NonZeroU32,
    pub layer_concurrency: NonZeroU32,
    pub retries: u32,
    pub deadline: Duration,
    pub platform: crate::manifest::Platform,
    pub report: PathBuf,
    pub bandwidth: Option<NonZeroU64>,
    /// Cap on containerd's disk writes during the run.
    pub io_limits: crate::iocap::IoLimits,
    pub reserve: u64,
    pub max_usage_percent: u8,
    pub unpack_ratio: f64,
    pub images: Vec<ImageEntry>,
    /// Every fragment read, in order.
    pub sources: Vec<PathBuf>,
}

/// Overrides from the command line, applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub bandwidth: Option<String>,
    pub concurrency: Option<NonZeroU32>,
    pub images: Vec<String>,
}

/// Lists the fragment files under `root` (normally `/`), in merge order,
/// then `extra` if given.
pub fn fragment_paths(root: &Path, extra: Option<&Path>) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out = Vec::new();
    for dir in FRAGMENT_DIRS {
        let dir = root.join(dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ConfigError::Read { path: dir, source }),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        out.extend(files);
    }
    out.extend(extra.map(Path::to_path_buf));
    Ok(out)
}

/// Reads, merges and validates the fragments at `paths`, then `overrides`.
pub fn load(paths: &[PathBuf], overrides: &Overrides) -> Result<Settings, ConfigError> {
    let mut fragments = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        fragments.push((path.clone(), text));
    }
    load_str(&fragments, overrides)
}

/// Like [`load`], with the fragment texts given.
pub fn load_str(
    fragments: &[(PathBuf, String)],
    overrides: &Overrides,
) -> Result<Settings, ConfigError> {
    let mut s = Settings::defaults();
    for (path, text) in fragments {
        let raw: RawFragment = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        s.apply(path, raw)?;
        s.sources.push(path.clone());
    }
    s.apply_overrides(overrides)?;
    if s.images.is_empty() {
        let searched = if s.sources.is_empty() {
            FRAGMENT_DIRS.map(|d| format!("/{d}")).join(", ")
        } else {
            s.sources
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(ConfigError::NoImages { searched });
    }
    Ok(s)
}

fn invalid(path: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Parses `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> Result<crate::manifest::Platform, String> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => {
            Ok(crate::manifest::Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
            })
        }
        _ => Err(format!(
            "{s:?} is not a platform like \"linux/amd64\" or \"linux/arm/v7\""
        )),
    }
}

impl Settings {
    fn defaults() -> Self {
        Settings {
            socket: "/run/containerd/containerd.sock".into(),
            namespace: "k8s.io".into(),
            snapshotter: None,
            pin: false,
            connect_timeout: Duration::from_secs(10),
            registry_config_path: Some("/etc/containerd/certs.d".into()),
            auth_file: Some("/root/.docker/config.json".into()),
            registry_connect_timeout: Duration::from_secs(10),
            registry_read_timeout: Duration::from_secs(60),
            concurrency: NonZeroU32::new(2).expect("2 is not zero"),
            layer_concurrency: NonZeroU32::new(3).expect("3 is not zero"),
            retries: 5,
            deadline: Duration::from_secs(20 * 60),
            platform: crate::manifest::host_platform(),
            report: "/run/prewarm/report.json".into(),
            bandwidth: None,
            io_limits: Default::default(),
            reserve: 10 << 30,
            max_usage_percent: 80,
            unpack_ratio: 2.5,
            images: Vec::new(),
            sources: Vec::new(),
        }
    }

    fn apply(&mut self, path: &Path, raw: RawFragment) -> Result<(), ConfigError> {
        match raw.version {
            Some(1) => {}
            Some(v) => {
                return Err(invalid(
                    path,
                    "version",
                    format!("version {v} is not supported; this prewarm reads version = 1"),
                ))
            }
            None => {
                return Err(invalid(
                    path,
                    "version",
                    "missing; every fragment starts with `version = 1`",
                ))
            }
        }
        let c = raw.containerd;
        if let Some(v) = c.socket {
            self.socket = v;
        }
        if let Some(v) = c.namespace {
            if v.is_empty() {
                return Err(invalid(
                    path,
                    "containerd.namespace",
                    "must not be empty (kubelet uses \"k8s.io\")",
                ));
            }
            self.namespace = v;
        }
        if let Some(v) = c.snapshotter {
            self.snapshotter = Some(v);
        }
        if let Some(v) = c.pin {
            self.pin = v;
        }
        if let Some(v) = c.connect_timeout {
            self.connect_timeout = v.0;
        }
        let r = raw.registry;
        if let Some(v) = r.config_path {
            self.registry_config_path = (!v.as_os_str().is_empty()).then_some(v);
        }
        if let Some(v) = r.auth_file {
            self.auth_file = (!v.as_os_str().is_empty()).then_some(v);
        }
        if let Some(v) = r.connect_timeout {
            self.registry_connect_timeout = v.0;
        }
        if let Some(v) = r.read_timeout {
            self.registry_read_timeout = v.0;
        }
        let p = raw.pull;
        if let Some(v) = p.concurrency {
            self.concurrency = v;
        }
        if let Some(v) = p.layer_concurrency {
            self.layer_concurrency = v;
        }
        if let Some(v) = p.retries {
            self.retries = v;
        }
        if let Some(v) = p.deadline {
            self.deadline = v.0;
        }
        if let Some(v) = p.platform {
            self.platform = parse_platform(&v).map_err(|m| invalid(path, "pull.platform", m))?;
        }
        if let Some(v) = p.report {
            self.report = v;
        }
        if let Some(v) = raw.throttle.bandwidth {
            self.bandwidth = Some(v.0);
        }
        if let Some(v) = raw.throttle.write_bandwidth {
            self.io_limits.write_bps = Some(v.0.get());
        }
        if let Some(v) = raw.throttle.write_iops {
            self.io_limits.write_iops = Some(v.get());
        }
        let d = raw.disk;
        if let Some(v) = d.reserve {
            self.reserve = v.0;
        }
        if let Some(v) = d.max_usage_percent {
            if !(1..=100).contains(&v) {
                return Err(invalid(
                    path,
                    "disk.max-usage-percent",
                    format!("{v} is not between 1 and 100"),
                ));
            }
            self.max_usage_percent = v;
        }
        if let Some(v) = d.unpack_ratio {
            if !(1.0..=100.0).contains(&v) {
                return Err(invalid(
                    path,
                    "disk.unpack-ratio",
                    format!("{v} is not between 1.0 and 100.0"),
                ));
            }
            self.unpack_ratio = v;
        }
        for (i, img) in raw.images.into_iter().enumerate() {
            let key = format!("images[{i}].ref");
            let reference =
                Reference::parse(&img.reference).map_err(|e| invalid(path, &key, e.to_string()))?;
            self.add_image(ImageEntry {
                reference,
                priority: img.priority,
                required: img.required,
                source: path.to_path_buf(),
            });
        }
        Ok(())
    }

    fn add_image(&mut self, entry: ImageEntry) {
        match self
            .images
            .iter_mut()
            .find(|e| e.reference == entry.reference)
        {
            Some(existing) => *existing = entry,
            None => self.images.push(entry),
        }
    }

    fn apply_overrides(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let flags = Path::new("command line");
        if let Some(v) = &o.socket {
            self.socket = v.clone();
        }
        if let Some(v) = &o.report {
            self.report = v.clone();
        }
        if let Some(v) = &o.bandwidth {
            self.bandwidth = Some(parse_rate(v).map_err(|m| invalid(flags, "--bandwidth", m))?);
        }
        if let Some(v) = o.concurrency {
            self.concurrency = v;
        }
        for r in &o.images {
            let reference =
                Reference::parse(r).map_err(|e| invalid(flags, "--image", e.to_string()))?;
            self.add_image(ImageEntry {
                reference,
                priority: 0,
                required: true,
                source: flags.to_path_buf(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load1(text: &str) -> Result<Settings, ConfigError> {
        load_str(
            &[("/etc/prewarm/config.d/50-site.toml".into(), text.into())],
            &Overrides::default(),
        )
    }

    #[test]
    fn human_units() {
        assert_eq!(parse_bytes("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_bytes("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert_eq!(parse_rate("50MiB/s").unwrap().get(), 50 << 20);
        assert!(parse_rate("0/s").is_err());
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "15", "m", "1x", "1.5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn later_fragments_win_and_images_accumulate() {
        let frags = vec![
            ("/usr/lib/prewarm/config.d/10-defaults.toml".into(), "version = 1\n[pull]\nconcurrency = 1\n[[images]]\nref = \"a\"\n".to_string()),
            ("/etc/prewarm/config.d/50-site.toml".into(), "version = 1\n[pull]\nconcurrency = 4\n[[images]]\nref = \"a\"\npriority = 7\n[[images]]\nref = \"b\"\nrequired = true\n".to_string()),
        ];
        let s = load_str(
            &frags,
            &Overrides {
                bandwidth: Some("20MiB/s".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.concurrency.get(), 4);
        assert_eq!(s.images.len(), 2);
        assert_eq!(s.images[0].priority, 7);
        assert_eq!(
            s.images[0].source,
            PathBuf::from("/etc/prewarm/config.d/50-site.toml")
        );
        assert!(s.images[1].required);
        assert_eq!(s.bandwidth.unwrap().get(), 20 << 20);
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            ("[[images]]\nref = \"a\"\n", "version"),
            (
                "version = 2\n[[images]]\nref = \"a\"\n",
                "version 2 is not supported",
            ),
            (
                "version = 1\n[pull]\nconcurency = 2\n",
                "unknown field `concurency`",
            ),
            (
                "version = 1\n[throttle]\nbandwidth = \"fast\"\n",
                "bandwidth",
            ),
            (
                "version = 1\n[disk]\nmax-usage-percent = 120\n",
                "disk.max-usage-percent",
            ),
            (
                "version = 1\n[[images]]\nref = \"Bad Ref\"\n",
                "images[0].ref",
            ),
            ("version = 1\n[pull]\ndeadline = \"0s\"\n", "deadline"),
            ("version = 1\n", "no images configured"),
        ];
        for (text, want) in cases {
            let err = load1(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            if !want.starts_with("no images") {
                assert!(err.contains("50-site.toml"), "{text:?}: {err}");
            }
        }
    }
}
