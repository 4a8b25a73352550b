//! OCI and Docker manifests, indexes and configs, and platform selection the
//! way containerd's default platform matcher does it.
//!
//! Only what prewarm needs is parsed; the raw bytes are what gets stored.

use serde::Deserialize;
use std::collections::HashMap;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Why a manifest, index or config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} {digest}: invalid JSON")]
    Json {
        what: &'static str,
        digest: String,
        source: serde_json::Error,
    },
    #[error("manifest {digest}: unsupported media type {media_type:?}")]
    MediaType { digest: String, media_type: String },
    #[error("index {digest}: no manifest for platform {platform}")]
    NoPlatform { digest: String, platform: String },
    #[error("{what} {digest}: {why}")]
    Invalid {
        what: &'static str,
        digest: String,
        why: String,
    },
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// An OS/architecture/variant triple.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Is `media_type` an index (OCI index or Docker manifest list)?
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Is `media_type` a single-platform manifest?
pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Falls back to the JSON `mediaType` field when the registry's
/// Content-Type was generic.
pub fn sniff_media_type(header: &str, bytes: &[u8]) -> String {
    if is_index(header) || is_manifest(header) {
        return header.to_string();
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_string(),
        _ => OCI_MANIFEST.to_string(),
    }
}

#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config prewarm needs.
#[derive(Debug, Deserialize)]
pub struct ImageConfig {
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

fn parse<'a, T: Deserialize<'a>>(
    what: &'static str,
    digest: &str,
    bytes: &'a [u8],
) -> Result<T, ManifestError> {
    serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        what,
        digest: digest.to_string(),
        source,
    })
}

impl Index {
    pub fn parse(digest: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        parse("index", digest, bytes)
    }
}

impl Manifest {
    /// Parses a manifest and checks that its layers are ones containerd
    /// can apply.
    pub fn parse(digest: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = parse("manifest", digest, bytes)?;
        for layer in &m.layers {
            if layer_compression(&layer.media_type).is_none() {
                return Err(ManifestError::MediaType {
                    digest: digest.to_string(),
                    media_type: layer.media_type.clone(),
                });
            }
        }
        Ok(m)
    }
}

impl ImageConfig {
    pub fn parse(digest: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        parse("config", digest, bytes)
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type, or None when it is not a layer
/// containerd can apply.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Normalizes an architecture/variant pair the way containerd's
/// `platforms.Normalize` does.
fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, String) {
    let variant = variant.unwrap_or("").to_ascii_lowercase();
    match arch.to_ascii_lowercase().as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64".into(),
            if variant == "v1" {
                String::new()
            } else {
                variant
            },
        ),
        "aarch64" | "arm64" => (
            "arm64".into(),
            match variant.as_str() {
                "8" | "v8" => String::new(),
                _ => variant,
            },
        ),
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => (
            "arm".into(),
            match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        other => (other.to_string(), variant),
    }
}

/// The platform this binary runs on, in OCI terms.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform {
        os: std::env::consts::OS.to_string(),
        architecture: arch.to_string(),
        // 32-bit arm hosts would need /proc/cpuinfo; containerd reads it too.
        variant: None,
    }
}

/// How well `candidate` suits `want`: `None` when it does not match at
/// all, lower is better otherwise. Follows containerd's `platforms.Only`:
/// an arm/v7 host also runs v6 and v5 images, preferring the closest; an
/// arm64 host also runs arm/v8…v5 images, after native ones.
pub fn platform_rank(want: &Platform, candidate: &Platform) -> Option<u32> {
    if !candidate.os.eq_ignore_ascii_case(&want.os) {
        return None;
    }
    let (want_arch, want_variant) = normalize_arch(&want.architecture, want.variant.as_deref());
    let (arch, variant) = normalize_arch(&candidate.architecture, candidate.variant.as_deref());
    let arm_level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
    if arch == want_arch {
        if variant == want_variant {
            return Some(0);
        }
        if arch == "arm" {
            let (w, c) = (arm_level(&want_variant)?, arm_level(&variant)?);
            return (c < w).then(|| w - c);
        }
        // amd64 and arm64 with a variant the host did not ask for.
        return (want_variant.is_empty() && variant.is_empty()).then_some(0);
    }
    if want_arch == "arm64" && arch == "arm" {
        let c = arm_level(&variant)?;
        return (c <= 8).then(|| 100 + 8 - c);
    }
    None
}

/// Picks the manifest for `want` from an index: best rank first, then the
/// first in index order, like containerd.
pub fn select_manifest<'a>(
    index_digest: &str,
    index: &'a Index,
    want: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    index
        .manifests
        .iter()
        .filter(|d| is_manifest(&d.media_type) || d.media_type.is_empty())
        .filter_map(|d| {
            let p = d.platform.as_ref()?;
            platform_rank(want, p).map(|r| (r, d))
        })
        .min_by_key(|(r, _)| *r)
        .map(|(_, d)| d)
        .ok_or_else(|| ManifestError::NoPlatform {
            digest: index_digest.to_string(),
            platform: want.to_string(),
        })
}

/// Chain IDs from diff IDs, as the OCI image spec defines them.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {diff_id}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn platform_matching_follows_containerd() {
        let amd64 = p("linux", "amd64", None);
        let arm64 = p("linux", "arm64", None);
        let armv7 = p("linux", "arm", Some("v7"));
        let cases = [
            (&amd64, p("linux", "amd64", None), Some(0)),
            (&amd64, p("linux", "x86_64", None), Some(0)),
            (&amd64, p("linux", "arm64", None), None),
            (&amd64, p("windows", "amd64", None), None),
            (&arm64, p("linux", "arm64", Some("v8")), Some(0)),
            (&arm64, p("linux", "aarch64", None), Some(0)),
            (&arm64, p("linux", "arm", Some("v7")), Some(101)),
            (&armv7, p("linux", "arm", None), Some(0)),
            (&armv7, p("linux", "arm", Some("v6")), Some(1)),
            (&armv7, p("linux", "arm", Some("v8")), None),
            (&armv7, p("linux", "armhf", None), Some(0)),
        ];
        for (want, candidate, rank) in cases {
            assert_eq!(
                platform_rank(want, &candidate),
                rank,
                "{want} vs {candidate}"
            );
        }
    }

    #[test]
    fn index_selection_prefers_exact_variant() {
        let index = Index {
            manifests: [("v6", "a"), ("v7", "b"), ("v5", "c")]
                .iter()
                .map(|(v, d)| Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: (*d).into(),
                    size: 1,
                    platform: Some(p("linux", "arm", Some(v))),
                    annotations: HashMap::new(),
                })
                .collect(),
        };
        let got = select_manifest("idx", &index, &p("linux", "arm", Some("v7"))).unwrap();
        assert_eq!(got.digest, "b");
        let got = select_manifest("idx", &index, &p("linux", "arm", Some("v6"))).unwrap();
        assert_eq!(got.digest, "a");
        assert!(select_manifest("idx", &index, &p("linux", "amd64", None)).is_err());
    }

    #[test]
    fn chain_ids_match_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        use sha2::{Digest, Sha256};
        let want = hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(ids[1], format!("sha256:{want}"));
    }

    #[test]
    fn rejects_unknown_layer_types() {
        let json = br#"{"config":{"mediaType":"x","digest":"sha256:1","size":1},
            "layers":[{"mediaType":"application/x-foreign","digest":"sha256:2","size":2}]}"#;
        assert!(matches!(
            Manifest::parse("m", json),
            Err(ManifestError::MediaType { .. })
        ));
    }
}
