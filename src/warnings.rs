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
    /// The files read, in order.
    pub read: Vec<PathBuf>,
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
    fn containerd_before_1_7_does_not_show_the_pin() {
        assert!(containerd("1.6.20~ds1", true).is_some());
        assert!(containerd("v1.6.38", true).is_some());
        assert!(containerd("1.6.20", false).is_none(), "no pin asked for");
        assert!(containerd("1.7.24~ds1", true).is_none());
        assert!(containerd("2.1.9", true).is_none());
        assert!(containerd("unknown", true).is_none());
    }
}
