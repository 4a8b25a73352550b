//! Configuration: TOML fragments, merged in order, then validated into
//! strong types before anything touches the network or a daemon.
//!
//! Sources, a later one winning key by key:
//! `/usr/lib/prewarm/config.d/*.toml` (package defaults), then
//! `/run/prewarm/config.d/*.toml`, then `/etc/prewarm/config.d/*.toml`, each
//! directory in file-name order, then `--config FILE`, then flags.
//! `[[images]]` entries accumulate across fragments; an entry naming the
//! same reference again replaces the earlier one. `[[sources]]` accumulate
//! too; a source with the name of one in an earlier fragment replaces it
//! (two of the same name in one fragment are an error). Their lists are
//! read at run time, by the `sources` module.
//!
//! Loading does not insist on images: `register` and `untaint` need none.
//! The commands that pull or show images call [`Settings::require_images`].
//! `[handoff]` is always validated in full, so `register` never writes a
//! taint that a broken handoff could leave in place.

pub mod source;

use crate::reference::Reference;
use crate::taint::{Effect, Taint};
use serde::{de, Deserialize, Deserializer};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Directories read in this order, relative to the configuration root.
/// Where node_exporter's textfile collector reads by convention.
pub const DEFAULT_METRICS_FILE: &str = "/var/lib/node_exporter/textfile_collector/prewarm.prom";

pub const FRAGMENT_DIRS: [&str; 3] = [
    "usr/lib/prewarm/config.d",
    "run/prewarm/config.d",
    "etc/prewarm/config.d",
];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
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
        "no images configured: add [[images]] entries with a `ref` key, or [[sources]], to a fragment in {searched}"
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
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    handoff: RawHandoff,
    #[serde(default)]
    register: RawRegister,
    #[serde(default)]
    refresh: RawRefresh,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRefresh {
    enabled: Option<bool>,
    bandwidth: Option<Rate>,
    write_bandwidth: Option<Rate>,
    write_iops: Option<NonZeroU64>,
    concurrency: Option<NonZeroU32>,
    deadline: Option<HumanDuration>,
    report: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHandoff {
    mode: Option<String>,
    kubeconfig: Option<PathBuf>,
    node_name: Option<String>,
    deadline: Option<HumanDuration>,
    on_deadline: Option<String>,
    give_up_after: Option<HumanDuration>,
    request_timeout: Option<HumanDuration>,
    taint_key: Option<String>,
    taint_value: Option<String>,
    taint_effect: Option<String>,
    condition_type: Option<String>,
    started_file: Option<PathBuf>,
    pre_taint: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRegister {
    method: Option<String>,
    kubelet_config_dir: Option<PathBuf>,
    kubelet_config: Option<PathBuf>,
    kubeadm_config: Option<PathBuf>,
    kubelet_env: Option<PathBuf>,
    k3s_config: Option<PathBuf>,
    rke2_config: Option<PathBuf>,
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
    require_digest: Option<bool>,
    state_dir: Option<PathBuf>,
    gc: Option<bool>,
    unpack: Option<String>,
    keep_layers: Option<bool>,
    unpack_while_downloading: Option<bool>,
    progress_interval: Option<HumanDuration>,
    metrics_file: Option<PathBuf>,
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

/// A `[[sources]]` entry: where more image list entries come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSource {
    kind: String,
    name: Option<String>,
    path: Option<PathBuf>,
    url: Option<String>,
    sha256: Option<String>,
    checksum_url: Option<String>,
    ca: Option<PathBuf>,
    configmap: Option<String>,
    key: Option<String>,
    kubeconfig: Option<PathBuf>,
    timeout: Option<HumanDuration>,
    priority: Option<i32>,
    required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawImage {
    #[serde(rename = "ref")]
    pub(crate) reference: String,
    pub(crate) priority: Option<i32>,
    pub(crate) required: Option<bool>,
}

// ---------------------------------------------------------------------------
// Value types with human syntax.

/// A byte count with its unit: `"10GiB"`, `"500MB"`, `"512B"` (or `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A rate in bytes per second, with its unit: `"50MiB/s"`.
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
        // A bare number would silently mean bytes: `reserve = 5` is five
        // bytes, not five GiB. Only zero needs no unit.
        "" if n == 0.0 => 1,
        "" => {
            return Err(format!(
                "{s:?} needs a unit, or it means {s} bytes: write \"{s}GiB\", \"{s}MB\" or \"{s}B\""
            ))
        }
        "b" => 1,
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
        let secs_per = match unit {
            "ms" => None,
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            _ => return Err(err()),
        };
        let part = match secs_per {
            None => Some(Duration::from_millis(n)),
            Some(k) => n.checked_mul(k).map(Duration::from_secs),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("{s:?} is out of range"))?;
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
    /// The fragment or list that listed it.
    pub source: PathBuf,
    /// Where in `source`: `images[2]`, `line 7`.
    pub key: String,
}

impl ImageEntry {
    /// Takes in another entry for the same image, from another fragment or
    /// list, or by another name: the higher priority, required if either
    /// is. The first entry's place (source and key) is kept.
    pub fn absorb(&mut self, other: &ImageEntry) {
        self.priority = self.priority.max(other.priority);
        self.required |= other.required;
    }
}

/// Image entries, one per reference, in the order first listed. A second
/// entry for a reference is absorbed ([`ImageEntry::absorb`]), with a
/// warning when it says the image is not required while an earlier entry
/// requires it. Adding is constant time, so lists of any length load in
/// linear time.
#[derive(Debug, Clone, Default)]
pub struct ImageList {
    entries: Vec<ImageEntry>,
    index: std::collections::HashMap<Reference, usize>,
}

impl ImageList {
    pub fn add(&mut self, entry: ImageEntry) {
        match self.index.get(&entry.reference) {
            Some(&i) => {
                let first = &mut self.entries[i];
                if first.required && !entry.required {
                    tracing::warn!(
                        image = %entry.reference,
                        "{} in {} lists the image as not required; it stays required, as {} in {} says",
                        entry.key,
                        entry.source.display(),
                        first.key,
                        first.source.display()
                    );
                }
                first.absorb(&entry);
            }
            None => {
                self.index
                    .insert(entry.reference.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
    }
}

impl std::ops::Deref for ImageList {
    type Target = [ImageEntry];
    fn deref(&self) -> &[ImageEntry] {
        &self.entries
    }
}

impl FromIterator<ImageEntry> for ImageList {
    fn from_iter<I: IntoIterator<Item = ImageEntry>>(iter: I) -> Self {
        let mut list = ImageList::default();
        iter.into_iter().for_each(|e| list.add(e));
        list
    }
}

impl Extend<ImageEntry> for ImageList {
    fn extend<I: IntoIterator<Item = ImageEntry>>(&mut self, iter: I) {
        iter.into_iter().for_each(|e| self.add(e));
    }
}

impl IntoIterator for ImageList {
    type Item = ImageEntry;
    type IntoIter = std::vec::IntoIter<ImageEntry>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// How `untaint` hands the node over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffMode {
    /// Remove the taint with a dedicated credential (JSON patch).
    Direct,
    /// Set a node condition with the kubelet's credential; a cluster-side
    /// controller (node-readiness-controller) removes the taint.
    Condition,
}

/// Who writes a layer into its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unpack {
    /// containerd's Diff service (`Diff.Apply`), on any snapshotter.
    Containerd,
    /// prewarm itself, straight into the snapshot's directory (overlayfs,
    /// native); containerd's Diff service for mounts it does not know. The
    /// default.
    Prewarm,
}

impl Unpack {
    pub fn as_str(self) -> &'static str {
        match self {
            Unpack::Containerd => "containerd",
            Unpack::Prewarm => "prewarm",
        }
    }
}

/// What to do when the deadline passes, the preload failed or the report
/// cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDeadline {
    /// Fail open: hand the node over anyway and say why.
    Untaint,
    /// Leave the taint, with an annotation (and condition) that says why.
    Keep,
}

/// How `register` makes kubelet register with the taint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterMethod {
    /// Detect, in this order: kubeadm join config, k3s, rke2, kubelet
    /// `--config-dir`, kubelet flags env file.
    Auto,
    KubeletConfigDir,
    Kubeadm,
    KubeletEnv,
    K3s,
    Rke2,
}

impl RegisterMethod {
    /// The name used in configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            RegisterMethod::Auto => "auto",
            RegisterMethod::KubeletConfigDir => "kubelet-config-dir",
            RegisterMethod::Kubeadm => "kubeadm",
            RegisterMethod::KubeletEnv => "kubelet-env",
            RegisterMethod::K3s => "k3s",
            RegisterMethod::Rke2 => "rke2",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            RegisterMethod::Auto,
            RegisterMethod::KubeletConfigDir,
            RegisterMethod::Kubeadm,
            RegisterMethod::KubeletEnv,
            RegisterMethod::K3s,
            RegisterMethod::Rke2,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }
}

/// Default taint key in direct mode: counted as upcoming capacity by the
/// Cluster Autoscaler.
pub const DIRECT_TAINT_KEY: &str = "startup-taint.cluster-autoscaler.kubernetes.io/prewarm";
/// Default taint key in condition mode: node-readiness-controller only
/// manages keys under `readiness.k8s.io/`.
pub const CONDITION_TAINT_KEY: &str = "readiness.k8s.io/prewarm-images";
/// Default node condition type set in condition mode.
pub const CONDITION_TYPE: &str = "prewarm.io/ImagesReady";
/// Default dedicated credential for direct mode.
pub const DIRECT_KUBECONFIG: &str = "/etc/prewarm/kubeconfig";
/// Default kubelet credentials for condition mode, the first that exists
/// wins: kubeadm's, k3s's, rke2's.
pub const KUBELET_KUBECONFIGS: [&str; 3] = [
    "/etc/kubernetes/kubelet.conf",
    "/var/lib/rancher/k3s/agent/kubelet.kubeconfig",
    "/var/lib/rancher/rke2/agent/kubelet.kubeconfig",
];

/// Validated `[handoff]` settings.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub mode: HandoffMode,
    pub kubeconfig: PathBuf,
    /// The fragment that set `kubeconfig`, if one did.
    pub kubeconfig_source: Option<PathBuf>,
    /// `None`: the hostname, lowercased, as kubelet does.
    pub node_name: Option<String>,
    /// Counted from the start stamp `register` writes (see `node`).
    pub deadline: Duration,
    pub on_deadline: OnDeadline,
    /// After the deadline, how much longer `untaint` keeps trying to reach
    /// the API server and find the Node before it gives up (exit 5).
    pub give_up_after: Duration,
    pub request_timeout: Duration,
    pub taint: Taint,
    pub condition_type: String,
    pub started_file: PathBuf,
    /// Whether `register` adds the taint to a Node object that survived a
    /// reimage (direct mode only: the kubelet's credential cannot).
    pub pre_taint: bool,
}

impl Handoff {
    /// The credentials to try, in order: the configured one, or in
    /// condition mode without one, the kubelet credentials of kubeadm, k3s
    /// and rke2.
    pub fn kubeconfig_candidates(&self) -> Vec<PathBuf> {
        if self.kubeconfig_source.is_some() || self.mode == HandoffMode::Direct {
            vec![self.kubeconfig.clone()]
        } else {
            KUBELET_KUBECONFIGS.iter().map(PathBuf::from).collect()
        }
    }

    /// The first of [`Handoff::kubeconfig_candidates`] that exists now.
    pub fn existing_kubeconfig(&self) -> Option<PathBuf> {
        self.kubeconfig_candidates()
            .into_iter()
            .find(|p| p.exists())
    }
}

/// Validated `[register]` settings.
#[derive(Debug, Clone)]
pub struct RegisterSettings {
    pub method: RegisterMethod,
    pub kubelet_config_dir: PathBuf,
    pub kubelet_config: PathBuf,
    pub kubeadm_config: PathBuf,
    /// `None`: `/etc/default/kubelet`, or `/etc/sysconfig/kubelet` where that
    /// exists and the first does not.
    pub kubelet_env: Option<PathBuf>,
    pub k3s_config: PathBuf,
    pub rke2_config: PathBuf,
}

/// Validated settings for a run, by section. Each consumer takes only its
/// section.
#[derive(Debug, Clone)]
pub struct Settings {
    pub containerd: ContainerdSettings,
    pub registry: RegistrySettings,
    pub pull: PullSettings,
    pub throttle: ThrottleSettings,
    pub disk: DiskSettings,
    pub images: ImageList,
    /// Where more list entries come from (`[[sources]]`), in order.
    pub list_sources: Vec<source::ListSource>,
    pub handoff: Handoff,
    pub register: RegisterSettings,
    pub refresh: RefreshSettings,
    /// Every fragment read, in order.
    pub sources: Vec<PathBuf>,
    handoff_sources: HandoffSources,
}

/// `[containerd]`: which containerd, and how images are recorded in it.
#[derive(Debug, Clone)]
pub struct ContainerdSettings {
    pub socket: PathBuf,
    pub namespace: String,
    pub snapshotter: Option<String>,
    pub pin: bool,
    pub connect_timeout: Duration,
}

/// `[registry]`: the node's registry files and timeouts.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub config_path: Option<PathBuf>,
    pub auth_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// `[pull]`: how a run pulls, and where it keeps its report and state.
#[derive(Debug, Clone)]
pub struct PullSettings {
    pub concurrency: NonZeroU32,
    pub layer_concurrency: NonZeroU32,
    /// Who writes the layers into the snapshots (`[pull] unpack`).
    pub unpack: Unpack,
    pub retries: u32,
    pub deadline: Duration,
    pub platform: crate::manifest::Platform,
    pub report: PathBuf,
    /// Refuse list entries that name a tag without a digest.
    pub require_digest: bool,
    /// Where prewarm keeps state across runs (cached lists).
    pub state_dir: PathBuf,
    /// Remove de-listed preloaded images at the end of `pull`.
    pub gc: bool,
    /// Keep each layer's compressed blob in the content store once it is
    /// unpacked (`false`: as containerd's `discard_unpacked_layers`).
    pub keep_layers: bool,
    /// With `unpack = "prewarm"` on overlayfs: unpack each layer while it
    /// downloads, layers side by side (`layer-concurrency`), each moved
    /// into place once its parent is committed.
    pub unpack_while_downloading: bool,
    /// How often a progress line is logged and sent to systemd.
    pub progress_interval: Duration,
    /// The Prometheus text file for node_exporter's textfile collector;
    /// `None` (an empty `metrics-file`) writes none.
    pub metrics_file: Option<PathBuf>,
}

/// The longest `[pull] progress-interval`.
pub const MAX_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// `[throttle]`: the caps on the network and on containerd's writes.
#[derive(Debug, Clone)]
pub struct ThrottleSettings {
    pub bandwidth: Option<NonZeroU64>,
    /// Cap on containerd's disk writes during the run.
    pub io_limits: crate::iocap::IoLimits,
}

/// `[disk]`: the disk budget.
#[derive(Debug, Clone)]
pub struct DiskSettings {
    pub reserve: u64,
    pub max_usage_percent: u8,
    pub unpack_ratio: f64,
    /// What set `reserve` and `max_usage_percent` beyond `[disk]` (a
    /// refresh: kubelet's thresholds), for the reason an image is skipped.
    pub limited_by: Option<String>,
}

/// `[refresh]`: `prewarm refresh`, the pass on a serving node. Each cap
/// and limit it leaves unset is the pull's.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// Off unless set: `prewarm refresh` (and its timer) then does nothing.
    pub enabled: bool,
    pub bandwidth: Option<NonZeroU64>,
    pub io_limits: crate::iocap::IoLimits,
    pub concurrency: Option<NonZeroU32>,
    pub deadline: Option<Duration>,
    /// The refresh's own report; `[pull] report` stays the boot pass's,
    /// which `untaint` reads.
    pub report: PathBuf,
}

impl Settings {
    /// The settings a refresh runs with: the `[refresh]` caps where set,
    /// the pull's elsewhere, its own report, and the disk budget held
    /// within `kubelet`'s image GC and eviction thresholds.
    pub fn for_refresh(&self, kubelet: &crate::warnings::ImageFsLimits) -> Settings {
        let mut s = self.clone();
        let r = &self.refresh;
        s.throttle.bandwidth = r.bandwidth.or(self.throttle.bandwidth);
        s.throttle.io_limits.write_bps =
            r.io_limits.write_bps.or(self.throttle.io_limits.write_bps);
        s.throttle.io_limits.write_iops = r
            .io_limits
            .write_iops
            .or(self.throttle.io_limits.write_iops);
        s.pull.concurrency = r.concurrency.unwrap_or(self.pull.concurrency);
        s.pull.deadline = r.deadline.unwrap_or(self.pull.deadline);
        // node_exporter's file is the boot pass's (with the handoff's
        // time to schedulable): a refresh leaves it alone.
        s.pull.metrics_file = None;
        s.disk.max_usage_percent = self.disk.max_usage_percent.min(kubelet.max_usage_percent);
        s.disk.reserve = self.disk.reserve.max(kubelet.min_free_bytes);
        s.disk.limited_by = Some(format!(
            "a refresh keeps the image filesystem at most {}% used and {} bytes free ([disk] \
             max-usage-percent {}, reserve {}; kubelet: {})",
            s.disk.max_usage_percent,
            s.disk.reserve,
            self.disk.max_usage_percent,
            self.disk.reserve,
            kubelet.why
        ));
        s
    }
}

/// Which fragment set the `[handoff]` keys that are checked against each
/// other at the end.
#[derive(Debug, Clone, Default)]
struct HandoffSources {
    taint_key: Option<PathBuf>,
}

/// Overrides from the command line, applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub refresh_report: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    pub bandwidth: Option<String>,
    pub concurrency: Option<NonZeroU32>,
    pub images: Vec<String>,
    pub node_name: Option<String>,
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
    s.check_merged()?;
    s.finish_handoff()?;
    Ok(s)
}

fn invalid(path: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// The message for a tag-only entry under `require-digest`.
pub(crate) fn require_digest_message(r: &Reference) -> String {
    format!(
        "{r} names a tag without a digest, and [pull] require-digest = true; \
         write it as {}@sha256:<digest>",
        r.tag_name().unwrap_or_else(|| r.name())
    )
}

/// Validates one `[[sources]]` entry.
fn validate_source(
    path: &Path,
    key: &str,
    raw: RawSource,
) -> Result<source::ListSource, ConfigError> {
    use source::{Checksum, ListSource, SourceKind};
    let bad = |field: &str, message: String| invalid(path, &format!("{key}.{field}"), message);
    let kind_name = raw.kind.clone();
    let not_for = |field: &str, present: bool| -> Result<(), ConfigError> {
        if present {
            return Err(bad(
                field,
                format!("does not apply to kind = {kind_name:?}"),
            ));
        }
        Ok(())
    };
    let local_path = |p: Option<PathBuf>| -> Result<PathBuf, ConfigError> {
        match p {
            Some(p) if p.is_absolute() => Ok(p),
            Some(p) => Err(bad(
                "path",
                format!("{} is not an absolute path", p.display()),
            )),
            None => Err(bad(
                "path",
                format!("missing; kind = {kind_name:?} needs a `path`"),
            )),
        }
    };
    if raw.kind != "configmap" {
        not_for("configmap", raw.configmap.is_some())?;
        not_for("key", raw.key.is_some())?;
        not_for("kubeconfig", raw.kubeconfig.is_some())?;
    }
    let kind = match raw.kind.as_str() {
        "configmap" => {
            not_for("path", raw.path.is_some())?;
            not_for("url", raw.url.is_some())?;
            not_for("sha256", raw.sha256.is_some())?;
            not_for("checksum-url", raw.checksum_url.is_some())?;
            not_for("ca", raw.ca.is_some())?;
            let (namespace, name) = match raw.configmap.as_deref().map(|c| c.split_once('/')) {
                Some(Some((ns, n)))
                    if crate::taint::is_dns_label(ns) && crate::taint::is_dns_subdomain(n) =>
                {
                    (ns.to_string(), n.to_string())
                }
                Some(_) => {
                    return Err(bad(
                        "configmap",
                        format!(
                            "{:?} is not \"<namespace>/<name>\" with Kubernetes names",
                            raw.configmap.unwrap_or_default()
                        ),
                    ))
                }
                None => {
                    return Err(bad(
                        "configmap",
                        "missing; kind = \"configmap\" needs `configmap = \"<namespace>/<name>\"`"
                            .into(),
                    ))
                }
            };
            let key = raw.key.unwrap_or_else(|| source::DEFAULT_CONFIGMAP_KEY.into());
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(bad(
                    "key",
                    format!("{key:?} is not a ConfigMap key (letters, digits, '-', '_', '.')"),
                ));
            }
            if let Some(k) = &raw.kubeconfig {
                if !k.is_absolute() {
                    return Err(bad(
                        "kubeconfig",
                        format!("{} is not an absolute path", k.display()),
                    ));
                }
            }
            SourceKind::ConfigMap {
                namespace,
                name,
                key,
                kubeconfig: raw.kubeconfig,
            }
        }
        "file" | "archive" => {
            not_for("url", raw.url.is_some())?;
            not_for("sha256", raw.sha256.is_some())?;
            not_for("checksum-url", raw.checksum_url.is_some())?;
            not_for("ca", raw.ca.is_some())?;
            let p = local_path(raw.path)?;
            if raw.kind == "file" {
                SourceKind::File { path: p }
            } else {
                SourceKind::Archive { path: p }
            }
        }
        "url" => {
            not_for("path", raw.path.is_some())?;
            let url = match raw.url {
                Some(u) => source::parse_list_url(&u).map_err(|m| bad("url", m))?,
                None => return Err(bad("url", "missing; kind = \"url\" needs a `url`".into())),
            };
            let checksum = match (raw.sha256, raw.checksum_url) {
                (Some(h), None) => Checksum::Sha256(
                    source::parse_sha256_hex(&h).map_err(|m| bad("sha256", m))?,
                ),
                (None, Some(u)) => Checksum::Url(
                    source::parse_list_url(&u).map_err(|m| bad("checksum-url", m))?,
                ),
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "checksum-url",
                        "give either `sha256` or `checksum-url`, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err(bad(
                        "sha256",
                        "missing; a url source needs `sha256` (the list's SHA-256) or \
                         `checksum-url`, so that a tampered or truncated list is refused"
                            .into(),
                    ))
                }
            };
            if let Some(ca) = &raw.ca {
                if !ca.is_absolute() {
                    return Err(bad(
                        "ca",
                        format!("{} is not an absolute path", ca.display()),
                    ));
                }
            }
            SourceKind::Url {
                url,
                checksum,
                ca: raw.ca,
            }
        }
        other => {
            return Err(bad(
                "kind",
                format!(
                    "{other:?} is not a source kind; use \"file\", \"url\", \"configmap\" or \"archive\""
                ),
            ))
        }
    };
    let name = match raw.name {
        Some(n) if n.trim().is_empty() => return Err(bad("name", "must not be empty".into())),
        Some(n) => n,
        None => match &kind {
            SourceKind::File { path } | SourceKind::Archive { path } => path.display().to_string(),
            SourceKind::Url { url, .. } => url.to_string(),
            SourceKind::ConfigMap {
                namespace,
                name,
                key,
                ..
            } => format!("configmap {namespace}/{name} key {key}"),
        },
    };
    Ok(ListSource {
        name,
        kind,
        timeout: raw.timeout.map_or(source::DEFAULT_TIMEOUT, |t| t.0),
        priority: raw.priority.unwrap_or(0),
        required: raw.required.unwrap_or(false),
        defined_in: path.to_path_buf(),
        key: key.to_string(),
    })
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
    /// Fails unless at least one image is configured. `pull`, `plan`,
    /// `status` and `check-config` call this; `register` and `untaint` do
    /// not need images.
    pub fn require_images(&self) -> Result<(), ConfigError> {
        if !self.images.is_empty() || !self.list_sources.is_empty() {
            return Ok(());
        }
        let searched = if self.sources.is_empty() {
            FRAGMENT_DIRS.map(|d| format!("/{d}")).join(", ")
        } else {
            self.sources
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(ConfigError::NoImages { searched })
    }

    fn defaults() -> Self {
        Settings {
            containerd: ContainerdSettings {
                socket: "/run/containerd/containerd.sock".into(),
                namespace: "k8s.io".into(),
                snapshotter: None,
                pin: true,
                connect_timeout: Duration::from_secs(10),
            },
            registry: RegistrySettings {
                config_path: Some("/etc/containerd/certs.d".into()),
                auth_file: Some("/root/.docker/config.json".into()),
                connect_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(60),
            },
            pull: PullSettings {
                concurrency: NonZeroU32::new(2).expect("2 is not zero"),
                layer_concurrency: NonZeroU32::new(3).expect("3 is not 0"),
                unpack: Unpack::Prewarm,
                retries: 5,
                deadline: Duration::from_secs(20 * 60),
                platform: crate::manifest::host_platform(),
                report: "/run/prewarm/report.json".into(),
                require_digest: false,
                state_dir: "/var/lib/prewarm".into(),
                gc: false,
                keep_layers: true,
                unpack_while_downloading: true,
                progress_interval: Duration::from_secs(5),
                metrics_file: Some(DEFAULT_METRICS_FILE.into()),
            },
            throttle: ThrottleSettings {
                bandwidth: None,
                io_limits: Default::default(),
            },
            disk: DiskSettings {
                reserve: 10 << 30,
                max_usage_percent: 80,
                unpack_ratio: 2.5,
                limited_by: None,
            },
            refresh: RefreshSettings {
                enabled: false,
                bandwidth: None,
                io_limits: Default::default(),
                concurrency: None,
                deadline: None,
                report: "/run/prewarm/refresh-report.json".into(),
            },
            images: ImageList::default(),
            list_sources: Vec::new(),
            handoff: Handoff {
                mode: HandoffMode::Direct,
                kubeconfig: PathBuf::new(),
                kubeconfig_source: None,
                node_name: None,
                deadline: Duration::from_secs(15 * 60),
                on_deadline: OnDeadline::Untaint,
                give_up_after: Duration::from_secs(30 * 60),
                request_timeout: Duration::from_secs(10),
                taint: Taint {
                    key: String::new(),
                    value: None,
                    effect: Effect::NoSchedule,
                },
                condition_type: CONDITION_TYPE.into(),
                started_file: "/run/prewarm/started".into(),
                pre_taint: true,
            },
            register: RegisterSettings {
                method: RegisterMethod::Auto,
                kubelet_config_dir: "/etc/kubernetes/kubelet.conf.d".into(),
                kubelet_config: "/var/lib/kubelet/config.yaml".into(),
                kubeadm_config: "/run/kubeadm/kubeadm-join-config.yaml".into(),
                kubelet_env: None,
                k3s_config: "/etc/rancher/k3s/config.yaml".into(),
                rke2_config: "/etc/rancher/rke2/config.yaml".into(),
            },
            sources: Vec::new(),
            handoff_sources: HandoffSources::default(),
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
            self.containerd.socket = v;
        }
        if let Some(v) = c.namespace {
            if v.is_empty() {
                return Err(invalid(
                    path,
                    "containerd.namespace",
                    "must not be empty (kubelet uses \"k8s.io\")",
                ));
            }
            self.containerd.namespace = v;
        }
        if let Some(v) = c.snapshotter {
            self.containerd.snapshotter = Some(v);
        }
        if let Some(v) = c.pin {
            self.containerd.pin = v;
        }
        if let Some(v) = c.connect_timeout {
            self.containerd.connect_timeout = v.0;
        }
        let r = raw.registry;
        if let Some(v) = r.config_path {
            self.registry.config_path = (!v.as_os_str().is_empty()).then_some(v);
        }
        if let Some(v) = r.auth_file {
            self.registry.auth_file = (!v.as_os_str().is_empty()).then_some(v);
        }
        if let Some(v) = r.connect_timeout {
            self.registry.connect_timeout = v.0;
        }
        if let Some(v) = r.read_timeout {
            self.registry.read_timeout = v.0;
        }
        let p = raw.pull;
        if let Some(v) = p.concurrency {
            self.pull.concurrency = v;
        }
        if let Some(v) = p.layer_concurrency {
            self.pull.layer_concurrency = v;
        }
        if let Some(v) = p.unpack {
            self.pull.unpack = match [Unpack::Containerd, Unpack::Prewarm]
                .into_iter()
                .find(|u| u.as_str() == v)
            {
                Some(u) => u,
                None => {
                    return Err(invalid(
                        path,
                        "pull.unpack",
                        format!("{v:?} is not \"containerd\" or \"prewarm\""),
                    ))
                }
            };
        }
        if let Some(v) = p.retries {
            self.pull.retries = v;
        }
        if let Some(v) = p.deadline {
            self.pull.deadline = v.0;
        }
        if let Some(v) = p.platform {
            self.pull.platform =
                parse_platform(&v).map_err(|m| invalid(path, "pull.platform", m))?;
        }
        if let Some(v) = p.report {
            self.pull.report = v;
        }
        if let Some(v) = p.require_digest {
            self.pull.require_digest = v;
        }
        if let Some(v) = p.state_dir {
            if !v.is_absolute() {
                return Err(invalid(
                    path,
                    "pull.state-dir",
                    format!("{} is not an absolute path", v.display()),
                ));
            }
            self.pull.state_dir = v;
        }
        if let Some(v) = p.gc {
            self.pull.gc = v;
        }
        if let Some(v) = p.keep_layers {
            self.pull.keep_layers = v;
        }
        if let Some(v) = p.unpack_while_downloading {
            self.pull.unpack_while_downloading = v;
        }
        if let Some(v) = &p.metrics_file {
            self.pull.metrics_file = (!v.as_os_str().is_empty()).then(|| v.clone());
        }
        if let Some(v) = p.progress_interval {
            if v.0 > MAX_PROGRESS_INTERVAL {
                return Err(invalid(
                    path,
                    "pull.progress-interval",
                    format!(
                        "{:?} is longer than {MAX_PROGRESS_INTERVAL:?}: the console and `systemctl status` would look stuck",
                        v.0
                    ),
                ));
            }
            self.pull.progress_interval = v.0;
        }
        if let Some(v) = raw.throttle.bandwidth {
            self.throttle.bandwidth = Some(v.0);
        }
        if let Some(v) = raw.throttle.write_bandwidth {
            self.throttle.io_limits.write_bps = Some(v.0.get());
        }
        if let Some(v) = raw.throttle.write_iops {
            self.throttle.io_limits.write_iops = Some(v.get());
        }
        let r = raw.refresh;
        if let Some(v) = r.enabled {
            self.refresh.enabled = v;
        }
        if let Some(v) = r.bandwidth {
            self.refresh.bandwidth = Some(v.0);
        }
        if let Some(v) = r.write_bandwidth {
            self.refresh.io_limits.write_bps = Some(v.0.get());
        }
        if let Some(v) = r.write_iops {
            self.refresh.io_limits.write_iops = Some(v.get());
        }
        if let Some(v) = r.concurrency {
            self.refresh.concurrency = Some(v);
        }
        if let Some(v) = r.deadline {
            self.refresh.deadline = Some(v.0);
        }
        if let Some(v) = r.report {
            if v.as_os_str().is_empty() {
                return Err(invalid(path, "refresh.report", "must not be empty"));
            }
            self.refresh.report = v;
        }
        let d = raw.disk;
        if let Some(v) = d.reserve {
            self.disk.reserve = v.0;
        }
        if let Some(v) = d.max_usage_percent {
            if !(1..=100).contains(&v) {
                return Err(invalid(
                    path,
                    "disk.max-usage-percent",
                    format!("{v} is not between 1 and 100"),
                ));
            }
            self.disk.max_usage_percent = v;
        }
        if let Some(v) = d.unpack_ratio {
            if !(1.0..=100.0).contains(&v) {
                return Err(invalid(
                    path,
                    "disk.unpack-ratio",
                    format!("{v} is not between 1.0 and 100.0"),
                ));
            }
            self.disk.unpack_ratio = v;
        }
        self.apply_handoff(path, raw.handoff)?;
        self.apply_register(path, raw.register)?;
        for (i, img) in raw.images.into_iter().enumerate() {
            let key = format!("images[{i}].ref");
            let reference =
                Reference::parse(&img.reference).map_err(|e| invalid(path, &key, e.to_string()))?;
            self.images.add(ImageEntry {
                reference,
                priority: img.priority.unwrap_or(0),
                required: img.required.unwrap_or(false),
                source: path.to_path_buf(),
                key: format!("images[{i}]"),
            });
        }
        let mut first = self.list_sources.len();
        for (i, src) in raw.sources.into_iter().enumerate() {
            let key = format!("sources[{i}]");
            let source = validate_source(path, &key, src)?;
            if let Some(dup) = self.list_sources[first..]
                .iter()
                .find(|s| s.name == source.name)
            {
                return Err(invalid(
                    path,
                    &format!("{key}.name"),
                    format!(
                        "{:?} is already the name of {} in {}; give each source its own name",
                        source.name,
                        dup.key,
                        dup.defined_in.display()
                    ),
                ));
            }
            match self.list_sources[..first]
                .iter()
                .position(|s| s.name == source.name)
            {
                Some(earlier) => {
                    self.list_sources.remove(earlier);
                    first -= 1;
                    self.list_sources.push(source);
                }
                None => self.list_sources.push(source),
            }
        }
        Ok(())
    }

    /// Checks made once every fragment is merged: `require-digest`
    /// applies to entries listed before the fragment that set it.
    fn check_merged(&self) -> Result<(), ConfigError> {
        if self.refresh.report == self.pull.report {
            return Err(invalid(
                self.sources.last().map_or(Path::new("-"), PathBuf::as_path),
                "refresh.report",
                format!(
                    "{} is [pull] report too: the boot pass's report, which untaint reads, must not be overwritten by a refresh",
                    self.refresh.report.display()
                ),
            ));
        }
        if self.pull.require_digest {
            if let Some(e) = self.images.iter().find(|e| e.reference.digest.is_none()) {
                let key = if e.key.starts_with('-') {
                    e.key.clone()
                } else {
                    format!("{}.ref", e.key)
                };
                return Err(invalid(
                    &e.source,
                    &key,
                    require_digest_message(&e.reference),
                ));
            }
        }
        Ok(())
    }

    fn apply_handoff(&mut self, path: &Path, h: RawHandoff) -> Result<(), ConfigError> {
        let t = &mut self.handoff;
        if let Some(v) = h.mode {
            t.mode = match v.as_str() {
                "direct" => HandoffMode::Direct,
                "condition" => HandoffMode::Condition,
                _ => {
                    return Err(invalid(
                        path,
                        "handoff.mode",
                        format!("{v:?} is not \"direct\" or \"condition\""),
                    ))
                }
            };
        }
        if let Some(v) = h.kubeconfig {
            if v.as_os_str().is_empty() {
                return Err(invalid(path, "handoff.kubeconfig", "must not be empty"));
            }
            t.kubeconfig = v;
            t.kubeconfig_source = Some(path.to_path_buf());
        }
        if let Some(v) = h.node_name {
            t.node_name = Some(
                crate::taint::validate_node_name(&v)
                    .map_err(|m| invalid(path, "handoff.node-name", m))?,
            );
        }
        if let Some(v) = h.deadline {
            t.deadline = v.0;
        }
        if let Some(v) = h.on_deadline {
            t.on_deadline = match v.as_str() {
                "untaint" => OnDeadline::Untaint,
                "keep" => OnDeadline::Keep,
                _ => {
                    return Err(invalid(
                        path,
                        "handoff.on-deadline",
                        format!("{v:?} is not \"untaint\" or \"keep\""),
                    ))
                }
            };
        }
        if let Some(v) = h.give_up_after {
            t.give_up_after = v.0;
        }
        if let Some(v) = h.request_timeout {
            t.request_timeout = v.0;
        }
        if let Some(v) = h.taint_key {
            crate::taint::validate_taint_key(&v)
                .map_err(|m| invalid(path, "handoff.taint-key", m))?;
            t.taint.key = v;
            self.handoff_sources.taint_key = Some(path.to_path_buf());
        }
        if let Some(v) = h.taint_value {
            crate::taint::validate_taint_value(&v)
                .map_err(|m| invalid(path, "handoff.taint-value", m))?;
            t.taint.value = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = h.taint_effect {
            t.taint.effect =
                Effect::parse(&v).map_err(|m| invalid(path, "handoff.taint-effect", m))?;
        }
        if let Some(v) = h.condition_type {
            crate::taint::validate_condition_type(&v)
                .map_err(|m| invalid(path, "handoff.condition-type", m))?;
            t.condition_type = v;
        }
        if let Some(v) = h.started_file {
            if v.as_os_str().is_empty() {
                return Err(invalid(path, "handoff.started-file", "must not be empty"));
            }
            t.started_file = v;
        }
        if let Some(v) = h.pre_taint {
            t.pre_taint = v;
        }
        Ok(())
    }

    fn apply_register(&mut self, path: &Path, r: RawRegister) -> Result<(), ConfigError> {
        let t = &mut self.register;
        if let Some(v) = r.method {
            t.method = RegisterMethod::parse(&v).ok_or_else(|| {
                invalid(
                    path,
                    "register.method",
                    format!(
                        "{v:?} is not one of \"auto\", \"kubelet-config-dir\", \"kubeadm\", \
                         \"kubelet-env\", \"k3s\", \"rke2\""
                    ),
                )
            })?;
        }
        let paths = [
            (
                "register.kubelet-config-dir",
                r.kubelet_config_dir,
                &mut t.kubelet_config_dir,
            ),
            (
                "register.kubelet-config",
                r.kubelet_config,
                &mut t.kubelet_config,
            ),
            (
                "register.kubeadm-config",
                r.kubeadm_config,
                &mut t.kubeadm_config,
            ),
            ("register.k3s-config", r.k3s_config, &mut t.k3s_config),
            ("register.rke2-config", r.rke2_config, &mut t.rke2_config),
        ];
        for (key, value, slot) in paths {
            if let Some(v) = value {
                if v.as_os_str().is_empty() {
                    return Err(invalid(path, key, "must not be empty"));
                }
                *slot = v;
            }
        }
        if let Some(v) = r.kubelet_env {
            if v.as_os_str().is_empty() {
                return Err(invalid(path, "register.kubelet-env", "must not be empty"));
            }
            t.kubelet_env = Some(v);
        }
        Ok(())
    }

    /// Fills in the mode-dependent defaults and checks keys against each
    /// other once every fragment has been read.
    fn finish_handoff(&mut self) -> Result<(), ConfigError> {
        let h = &mut self.handoff;
        if h.kubeconfig.as_os_str().is_empty() {
            h.kubeconfig = match h.mode {
                HandoffMode::Direct => DIRECT_KUBECONFIG,
                HandoffMode::Condition => KUBELET_KUBECONFIGS[0],
            }
            .into();
        }
        if h.taint.key.is_empty() {
            h.taint.key = match h.mode {
                HandoffMode::Direct => DIRECT_TAINT_KEY,
                HandoffMode::Condition => CONDITION_TAINT_KEY,
            }
            .into();
        } else if h.mode == HandoffMode::Condition
            && !h.taint.key.starts_with(crate::taint::READINESS_PREFIX)
        {
            let src = self.handoff_sources.taint_key.clone().unwrap_or_default();
            return Err(invalid(
                &src,
                "handoff.taint-key",
                format!(
                    "{:?}: in condition mode the key must start with {:?}, the only taints \
                     node-readiness-controller removes; otherwise nothing would ever remove it",
                    h.taint.key,
                    crate::taint::READINESS_PREFIX
                ),
            ));
        }
        Ok(())
    }

    fn apply_overrides(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let flags = Path::new("command line");
        if let Some(v) = &o.node_name {
            self.handoff.node_name = Some(
                crate::taint::validate_node_name(v)
                    .map_err(|m| invalid(flags, "--node-name", m))?,
            );
        }
        if let Some(v) = &o.socket {
            self.containerd.socket = v.clone();
        }
        if let Some(v) = &o.refresh_report {
            self.refresh.report = v.clone();
        }
        if let Some(v) = &o.report {
            self.pull.report = v.clone();
        }
        if let Some(v) = &o.metrics_file {
            self.pull.metrics_file = (!v.as_os_str().is_empty()).then(|| v.clone());
        }
        if let Some(v) = &o.bandwidth {
            self.throttle.bandwidth =
                Some(parse_rate(v).map_err(|m| invalid(flags, "--bandwidth", m))?);
        }
        if let Some(v) = o.concurrency {
            self.pull.concurrency = v;
        }
        for r in &o.images {
            let reference =
                Reference::parse(r).map_err(|e| invalid(flags, "--image", e.to_string()))?;
            self.images.add(ImageEntry {
                reference,
                priority: 0,
                required: true,
                source: flags.to_path_buf(),
                key: "--image".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load1(text: &str) -> Result<Settings, ConfigError> {
        let s = load_handoff(text)?;
        s.require_images()?;
        Ok(s)
    }

    /// Loading alone, as `register` and `untaint` do: no images needed.
    fn load_handoff(text: &str) -> Result<Settings, ConfigError> {
        load_str(
            &[("/etc/prewarm/config.d/50-site.toml".into(), text.into())],
            &Overrides::default(),
        )
    }

    #[test]
    fn human_units() {
        assert_eq!(parse_bytes("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_bytes("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("512B").unwrap(), 512);
        assert_eq!(parse_bytes("0").unwrap(), 0);
        let bare = parse_bytes("5").unwrap_err();
        assert!(bare.contains("needs a unit"), "{bare}");
        assert!(parse_rate("1048576").is_err());
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
        assert_eq!(s.pull.concurrency.get(), 4);
        assert_eq!(s.images.len(), 2);
        // One entry for `a`: the higher priority; where it was first listed.
        assert_eq!(s.images[0].priority, 7);
        assert_eq!(
            s.images[0].source,
            PathBuf::from("/usr/lib/prewarm/config.d/10-defaults.toml")
        );
        assert!(s.images[1].required);
        assert_eq!(s.throttle.bandwidth.unwrap().get(), 20 << 20);
    }

    #[test]
    fn handoff_defaults_follow_the_mode() {
        let s = load_handoff("version = 1\n").unwrap();
        assert_eq!(s.handoff.mode, HandoffMode::Direct);
        assert_eq!(s.handoff.taint.key, DIRECT_TAINT_KEY);
        assert_eq!(s.handoff.kubeconfig, PathBuf::from(DIRECT_KUBECONFIG));
        assert_eq!(s.handoff.deadline, Duration::from_secs(900));
        assert_eq!(s.handoff.on_deadline, OnDeadline::Untaint);
        let s = load_handoff(
            "version = 1\n[handoff]\nmode = \"condition\"\non-deadline = \"keep\"\ndeadline = \"5m\"\n\
             taint-value = \"pending\"\n[register]\nmethod = \"k3s\"\n",
        )
        .unwrap();
        assert_eq!(s.handoff.taint.key, CONDITION_TAINT_KEY);
        assert_eq!(s.handoff.taint.value.as_deref(), Some("pending"));
        assert_eq!(s.handoff.kubeconfig_candidates().len(), 3);
        assert_eq!(s.handoff.on_deadline, OnDeadline::Keep);
        assert_eq!(s.register.method, RegisterMethod::K3s);
        // Images are needed only where they are asked for.
        assert!(s.require_images().is_err());
    }

    #[test]
    fn sources_validate_and_replace_by_name() {
        use super::source::{Checksum, SourceKind};
        let frags = vec![
            (
                "/usr/lib/prewarm/config.d/10-defaults.toml".into(),
                "version = 1\n[[sources]]\nkind = \"file\"\nname = \"team\"\npath = \"/usr/share/prewarm/images.list\"\n[[sources]]\nkind = \"archive\"\npath = \"/usr/share/prewarm/images\"\nrequired = true\n".to_string(),
            ),
            (
                "/etc/prewarm/config.d/50-site.toml".into(),
                "version = 1\n[pull]\nrequire-digest = true\n[[sources]]\nkind = \"url\"\nname = \"team\"\nurl = \"https://lists.example/l\"\nchecksum-url = \"https://lists.example/l.sha256\"\ntimeout = \"3s\"\npriority = 5\n[[sources]]\nkind = \"configmap\"\nconfigmap = \"kube-system/prewarm\"\n".to_string(),
            ),
        ];
        let s = load_str(&frags, &Overrides::default()).unwrap();
        assert!(
            s.pull.require_digest && s.containerd.pin,
            "pin is on by default"
        );
        assert_eq!(s.list_sources.len(), 3);
        assert!(matches!(s.list_sources[0].kind, SourceKind::Archive { .. }));
        assert!(s.list_sources[0].required);
        let team = &s.list_sources[1];
        assert_eq!(
            team.name, "team",
            "the site's source replaced the package's"
        );
        assert!(matches!(
            &team.kind,
            SourceKind::Url {
                checksum: Checksum::Url(_),
                ca: None,
                ..
            }
        ));
        assert_eq!((team.priority, team.timeout), (5, Duration::from_secs(3)));
        match &s.list_sources[2].kind {
            SourceKind::ConfigMap {
                namespace,
                name,
                key,
                kubeconfig,
            } => {
                assert_eq!(
                    (namespace.as_str(), name.as_str(), key.as_str()),
                    ("kube-system", "prewarm", "images")
                );
                assert!(kubeconfig.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.list_sources[2].name,
            "configmap kube-system/prewarm key images"
        );
        s.require_images().unwrap();
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
            (
                "version = 1\n[handoff]\nmode = \"both\"\n",
                "key `handoff.mode`",
            ),
            (
                "version = 1\n[handoff]\non-deadline = \"never\"\n",
                "key `handoff.on-deadline`",
            ),
            (
                "version = 1\n[handoff]\ntaint-effect = \"NoScheduleX\"\n",
                "key `handoff.taint-effect`",
            ),
            (
                "version = 1\n[handoff]\nmode = \"condition\"\ntaint-key = \"example.com/warm\"\n",
                "must start with \"readiness.k8s.io/\"",
            ),
            (
                "version = 1\n[register]\nmethod = \"systemd\"\n",
                "key `register.method`",
            ),
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
