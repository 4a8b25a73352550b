//! Warnings for a node that will undo its own preload: kubelet's image
//! garbage collection and credential checks, read from its configuration
//! file and drop-ins, and a containerd too old for kubelet to see the pin
//! label. `check-config`, `plan` and `pull` say them; none of them stops a
//! run.

use std::path::{Path, PathBuf};

/// kubelet's own default `imageGCHighThresholdPercent`.
const KUBELET_HIGH_THRESHOLD: u32 = 85;

/// What kubelet's configuration says about keeping images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kubelet {
    /// `imageMaximumGCAge`, when set to more than zero.
    pub max_gc_age: Option<String>,
    /// `imageGCHighThresholdPercent`, when set.
    pub high_threshold: Option<u32>,
    /// `imagePullCredentialsVerificationPolicy`, when set.
    pub verify_policy: Option<String>,
    /// `evictionHard` and `evictionSoft` thresholds on the image and node
    /// filesystems (`imagefs.available`, `nodefs.available`), as written:
    /// (`evictionHard.imagefs.available`, `15%`).
    pub eviction: Vec<(String, String)>,
    /// The files read, in order.
    pub read: Vec<PathBuf>,
}

/// kubelet's own `evictionHard` defaults for the filesystems.
const KUBELET_EVICTION_DEFAULTS: [(&str, &str); 2] = [
    ("evictionHard.imagefs.available", "15%"),
    ("evictionHard.nodefs.available", "10%"),
];

/// How full the image filesystem may get before kubelet acts: image GC
/// starts at `imageGCHighThresholdPercent`, and pods are evicted when
/// `imagefs.available` (or `nodefs.available`, on one filesystem) falls
/// below its threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFsLimits {
    /// The highest use, in percent, that starts neither.
    pub max_usage_percent: u8,
    /// Free bytes to keep, where a threshold is a quantity (`10Gi`).
    pub min_free_bytes: u64,
    /// Which settings decided, for the report.
    pub why: String,
}

impl Kubelet {
    /// Reads kubelet's configuration file, then its drop-in directory
    /// (`*.conf`, in name order, a later one winning key by key), as kubelet
    /// does. A file that is missing or that does not parse is left out.
    pub fn read(config: &Path, dropins: &Path) -> Kubelet {
        let mut k = Kubelet::default();
        let mut files = vec![config.to_path_buf()];
        if let Ok(entries) = std::fs::read_dir(dropins) {
            let mut more: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            more.sort();
            files.extend(more);
        }
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            match serde_yaml::from_str::<serde_yaml::Value>(&text) {
                Ok(doc) => {
                    k.merge(&doc);
                    k.read.push(file);
                }
                Err(e) => {
                    tracing::debug!(file = %file.display(), error = %e, "not read for warnings")
                }
            }
        }
        k
    }

    fn merge(&mut self, doc: &serde_yaml::Value) {
        if let Some(age) = doc.get("imageMaximumGCAge").and_then(|v| v.as_str()) {
            let zero = age
                .trim_start_matches(['0', '.'])
                .chars()
                .all(|c| c.is_alphabetic());
            self.max_gc_age = (!zero).then(|| age.to_string());
        }
        if let Some(t) = doc
            .get("imageGCHighThresholdPercent")
            .and_then(|v| v.as_u64())
        {
            self.high_threshold = Some(t.min(100) as u32);
        }
        if let Some(p) = doc
            .get("imagePullCredentialsVerificationPolicy")
            .and_then(|v| v.as_str())
        {
            self.verify_policy = Some(p.to_string());
        }
        for field in ["evictionHard", "evictionSoft"] {
            for signal in ["imagefs.available", "nodefs.available"] {
                if let Some(v) = doc
                    .get(field)
                    .and_then(|m| m.get(signal))
                    .and_then(|v| v.as_str())
                {
                    let key = format!("{field}.{signal}");
                    self.eviction.retain(|(k, _)| *k != key);
                    self.eviction.push((key, v.trim().to_string()));
                }
            }
        }
    }

    /// The limits kubelet's configuration sets on the image filesystem
    /// (its defaults where it sets none: GC at 85%, eviction below 15%
    /// free on imagefs and 10% on nodefs). Conservative: every threshold
    /// on either filesystem counts, soft ones too, and a signal a
    /// configuration leaves out keeps kubelet's default (as kubelet does
    /// unless `mergeDefaultEvictionSettings` is false, which only lowers
    /// them).
    pub fn image_fs_limits(&self) -> ImageFsLimits {
        let high = self.high_threshold.unwrap_or(KUBELET_HIGH_THRESHOLD);
        // GC starts when the use reaches the threshold: stay a point below.
        let mut max = high.saturating_sub(1);
        let mut why = vec![format!(
            "imageGCHighThresholdPercent {high}{}",
            if self.high_threshold.is_none() {
                " (kubelet's default)"
            } else {
                ""
            }
        )];
        let mut min_free = 0u64;
        let mut thresholds: Vec<(String, String, bool)> = self
            .eviction
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), false))
            .collect();
        for (k, v) in KUBELET_EVICTION_DEFAULTS {
            if !thresholds.iter().any(|(t, _, _)| t == k) {
                thresholds.push((k.to_string(), v.to_string(), true));
            }
        }
        for (key, value, default) in thresholds {
            let said = format!(
                "{key} {value}{}",
                if default { " (kubelet's default)" } else { "" }
            );
            match parse_threshold(&value) {
                Some(Threshold::Percent(p)) => {
                    // Eviction when free < p%: keep more than p% free.
                    let cap = 100u32.saturating_sub(p.ceil() as u32).saturating_sub(1);
                    if cap < max {
                        max = cap;
                    }
                    why.push(said);
                }
                Some(Threshold::Bytes(b)) => {
                    min_free = min_free.max(b);
                    why.push(said);
                }
                None => {
                    tracing::warn!(threshold = %key, value = %value, "kubelet's eviction threshold not understood; left out of the refresh's disk budget")
                }
            }
        }
        ImageFsLimits {
            max_usage_percent: max.clamp(1, 100) as u8,
            min_free_bytes: min_free,
            why: why.join(", "),
        }
    }

    /// The warnings, given the image filesystem's use once the plan is
    /// pulled (percent), when known.
    pub fn warnings(&self, planned_use: Option<f64>) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(age) = &self.max_gc_age {
            out.push(format!(
                "kubelet's imageMaximumGCAge is {age}: kubelet removes images unused that long, \
                 preloaded ones too unless containerd reports them pinned (containerd 1.7 or later, \
                 [containerd] pin = true)"
            ));
        }
        let threshold = self.high_threshold.unwrap_or(KUBELET_HIGH_THRESHOLD);
        if let Some(used) = planned_use.filter(|u| *u > threshold as f64) {
            out.push(format!(
                "the plan fills the image filesystem to {used:.0}%, above kubelet's \
                 imageGCHighThresholdPercent ({threshold}): kubelet's image GC starts at once and \
                 removes images that are not pinned"
            ));
        }
        if self.verify_policy.as_deref() == Some("AlwaysVerify") {
            out.push(
                "kubelet's imagePullCredentialsVerificationPolicy is AlwaysVerify: kubelet checks \
                 every preloaded private image against the registry with the pod's credentials \
                 before a pod may use it (KEP-2535)"
                    .to_string(),
            );
        }
        out
    }
}

/// An eviction threshold: a share of the filesystem, or a quantity.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Threshold {
    Percent(f64),
    Bytes(u64),
}

/// Parses `15%` or a Kubernetes quantity (`10Gi`, `500M`, `1.5Gi`, `1024`).
fn parse_threshold(v: &str) -> Option<Threshold> {
    let v = v.trim();
    if let Some(p) = v.strip_suffix('%') {
        let p: f64 = p.trim().parse().ok()?;
        return (0.0..=100.0).contains(&p).then_some(Threshold::Percent(p));
    }
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let n: f64 = v[..split].parse().ok()?;
    let mult: f64 = match &v[split..] {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    let b = n * mult;
    (b.is_finite() && b >= 0.0 && b < u64::MAX as f64).then(|| Threshold::Bytes(b.ceil() as u64))
}

/// A warning when containerd (its `version`, as its Version service says)
/// is older than 1.7: kubelet's image GC does not see the pin label there.
pub fn containerd(version: &str, pin: bool) -> Option<String> {
    let v = version.trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    let old = (major, minor) < (1, 7);
    (old && pin).then(|| {
        format!(
            "containerd {version} does not report the pin label to kubelet (1.7 and later do): \
             kubelet's image GC may remove preloaded images"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_config_and_drop_ins_are_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            "kind: KubeletConfiguration\nimageMaximumGCAge: 24h\nimageGCHighThresholdPercent: 90\n",
        )
        .unwrap();
        let dropins = dir.path().join("conf.d");
        std::fs::create_dir_all(&dropins).unwrap();
        std::fs::write(
            dropins.join("20-b.conf"),
            "imagePullCredentialsVerificationPolicy: AlwaysVerify\n",
        )
        .unwrap();
        std::fs::write(
            dropins.join("10-a.conf"),
            "imageGCHighThresholdPercent: 70\n",
        )
        .unwrap();
        std::fs::write(dropins.join("30-c.conf"), "imageMaximumGCAge: 0s\n").unwrap();
        std::fs::write(dropins.join("40-d.txt"), "imageGCHighThresholdPercent: 5\n").unwrap();
        std::fs::write(dropins.join("50-e.conf"), "{not yaml").unwrap();
        let k = Kubelet::read(&config, &dropins);
        assert_eq!(k.max_gc_age, None, "0s in a later drop-in turns it off");
        assert_eq!(k.high_threshold, Some(70));
        assert_eq!(k.verify_policy.as_deref(), Some("AlwaysVerify"));
        assert_eq!(k.read.len(), 4);
        let w = k.warnings(Some(75.0));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("fills the image filesystem to 75%") && w[0].contains("(70)"));
        assert!(w[1].contains("AlwaysVerify"));
    }

    #[test]
    fn kubelet_defaults_warn_only_above_85_percent() {
        let k = Kubelet::read(Path::new("/nonexistent"), Path::new("/nonexistent"));
        assert_eq!(k, Kubelet::default());
        assert!(k.warnings(Some(85.0)).is_empty());
        assert!(k.warnings(None).is_empty());
        assert_eq!(k.warnings(Some(86.0)).len(), 1);
        let aged = Kubelet {
            max_gc_age: Some("168h".into()),
            ..Kubelet::default()
        };
        assert!(aged.warnings(None)[0].contains("imageMaximumGCAge is 168h"));
    }

    #[test]
    fn image_fs_limits_take_the_strictest_threshold() {
        let k = Kubelet::default();
        let l = k.image_fs_limits();
        assert_eq!(l.max_usage_percent, 84, "{}", l.why);
        assert_eq!(l.min_free_bytes, 0);
        assert!(l
            .why
            .contains("imageGCHighThresholdPercent 85 (kubelet's default)"));
        assert!(l
            .why
            .contains("evictionHard.imagefs.available 15% (kubelet's default)"));

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            "imageGCHighThresholdPercent: 95
evictionHard:
  imagefs.available: \"20%\"
  memory.available: 100Mi
evictionSoft:
  nodefs.available: 12Gi
",
        )
        .unwrap();
        let k = Kubelet::read(&config, Path::new("/nonexistent"));
        let l = k.image_fs_limits();
        // 20% free at least: 79% used at most, below GC's 94.
        assert_eq!(l.max_usage_percent, 79, "{}", l.why);
        assert_eq!(l.min_free_bytes, 12 << 30);
        assert!(
            l.why.contains("evictionSoft.nodefs.available 12Gi"),
            "{}",
            l.why
        );
        // nodefs' hard default still counts: 10% is weaker than 20%.
        assert!(l
            .why
            .contains("evictionHard.nodefs.available 10% (kubelet's default)"));

        assert_eq!(parse_threshold("1.5Gi"), Some(Threshold::Bytes(3 << 29)));
        assert_eq!(parse_threshold("500M"), Some(Threshold::Bytes(500_000_000)));
        assert_eq!(parse_threshold("7.5%"), Some(Threshold::Percent(7.5)));
        assert_eq!(parse_threshold("101%"), None);
        assert_eq!(parse_threshold("10 bananas"), None);
    }

    #[test]
    fn containerd_before_1_7_does_not_show_the_pin() {
        assert!(containerd("1.6.20~ds1", true).is_some());
        assert!(containerd("v1.6.38", true).is_some());
        assert!(containerd("1.6.20", false).is_none(), "no pin asked for");
        assert!(containerd("1.7.24~ds1", true).is_none());
        assert!(containerd("2.1.9", true).is_none());
        assert!(containerd("unknown", true).is_none());
    }
}
