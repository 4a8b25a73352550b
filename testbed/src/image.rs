//! Test images built from local bytes into an OCI layout and pushed with skopeo.

use crate::proc::run;
use crate::registry::Tls;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// `tar+gzip` (Docker: `rootfs.diff.tar.gzip`).
    #[default]
    Gzip,
    /// `tar+zstd` (OCI only).
    Zstd,
    /// Plain tar.
    None,
}

/// One layer: regular files (mode 0644, parent dirs 0755 added) and how to
/// compress the tar.
#[derive(Debug, Clone, Default)]
pub struct LayerSpec {
    /// (path inside the image, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Compression of the layer blob.
    pub compression: Compression,
    /// A ready tar stream, used as it is instead of `files`.
    pub tar: Option<Vec<u8>>,
    /// The diff ID the image config claims, instead of the real one: for
    /// tests of the check.
    pub claimed_diff_id: Option<String>,
}

/// One single-platform image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Layers, bottom first.
    pub layers: Vec<LayerSpec>,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub arch: String,
    /// e.g. `v8` for arm64.
    pub variant: Option<String>,
}

impl ImageSpec {
    /// A `linux/<arch>` image without variant.
    pub fn linux(arch: &str, layers: Vec<LayerSpec>) -> ImageSpec {
        ImageSpec {
            layers,
            os: "linux".into(),
            arch: arch.into(),
            variant: None,
        }
    }
}

/// Manifest format family of a pushed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest / OCI image index.
    Oci,
    /// Docker schema 2 manifest / Docker manifest list.
    DockerV2S2,
}

/// A single-platform manifest as served by the registry.
#[derive(Debug, Clone)]
pub struct BuiltManifest {
    /// `sha256:…` of the manifest bytes the registry serves.
    pub digest: String,
    /// Config blob digest.
    pub config_digest: String,
    /// Layer blob digests, bottom first.
    pub layer_digests: Vec<String>,
    /// Uncompressed layer tar digests (config `rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
    /// Sum of the layer blob sizes.
    pub compressed_size: u64,
    /// Sum of the uncompressed layer tar sizes.
    pub unpacked_size: u64,
    /// (os, architecture, variant).
    pub platform: (String, String, Option<String>),
}

/// Result of [`push_image`].
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `host/repo:tag`.
    pub reference: String,
    /// Digest the registry serves for the tag (manifest, or index/list).
    pub top_digest: String,
    /// One entry per [`ImageSpec`], in order.
    pub manifests: Vec<BuiltManifest>,
    /// Whether the tag points at an OCI index / Docker manifest list.
    pub is_index: bool,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Deterministic, incompressible bytes (xorshift64*), fast enough for large
/// test images.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Writes `data` as a blob named by its hex digest into `blobs`; returns its
/// descriptor.
fn put_blob(blobs: &Path, media_type: &str, data: &[u8]) -> Result<Value> {
    let digest = sha256_digest(data);
    let path = blobs.join(&digest[7..]);
    if !path.exists() {
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(json!({"mediaType": media_type, "digest": digest, "size": data.len()}))
}

/// The uncompressed layer tar.
fn layer_tar(spec: &LayerSpec) -> Result<Vec<u8>> {
    if let Some(tar) = &spec.tar {
        return Ok(tar.clone());
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    for (path, data) in &spec.files {
        let path = path.trim_start_matches("./").trim_start_matches('/');
        ensure!(!path.is_empty(), "empty file path in LayerSpec");
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            parent.push_str(c);
            parent.push('/');
            if dirs.insert(parent.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(0);
                b.append_data(&mut h, &parent, std::io::empty())?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, path, &data[..])?;
    }
    Ok(b.into_inner()?)
}

struct Built {
    manifest_desc: Value,
    manifest: Vec<u8>,
    diff_ids: Vec<String>,
    unpacked_size: u64,
}

/// What a test needs to know of one manifest (`m`, served as `digest`)
/// built from `img`.
fn describe(digest: String, m: &Value, b: &Built, img: &ImageSpec) -> Result<BuiltManifest> {
    let layers = m["layers"].as_array().context("manifest without layers")?;
    Ok(BuiltManifest {
        digest,
        config_digest: m["config"]["digest"]
            .as_str()
            .context("no config digest")?
            .into(),
        layer_digests: layers
            .iter()
            .map(|l| {
                l["digest"]
                    .as_str()
                    .map(str::to_string)
                    .context("layer without digest")
            })
            .collect::<Result<_>>()?,
        diff_ids: b.diff_ids.clone(),
        compressed_size: layers.iter().filter_map(|l| l["size"].as_u64()).sum(),
        unpacked_size: b.unpacked_size,
        platform: (img.os.clone(), img.arch.clone(), img.variant.clone()),
    })
}

/// Writes layers, config and manifest of one image into `layout`.
fn build_image(layout: &Path, img: &ImageSpec, format: Format) -> Result<Built> {
    let docker = format == Format::DockerV2S2;
    let (mut layers, mut diff_ids, mut unpacked_size) = (Vec::new(), Vec::new(), 0u64);
    for l in &img.layers {
        let tar = layer_tar(l)?;
        diff_ids.push(
            l.claimed_diff_id
                .clone()
                .unwrap_or_else(|| sha256_digest(&tar)),
        );
        unpacked_size += tar.len() as u64;
        let (blob, mt) = match (l.compression, docker) {
            (Compression::Gzip, _) => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar)?;
                let mt = if docker {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                };
                (e.finish()?, mt)
            }
            (Compression::Zstd, false) => (
                zstd::encode_all(&tar[..], 3).context("zstd")?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            (Compression::Zstd, true) => bail!("zstd layers need Format::Oci"),
            (Compression::None, true) => (tar, "application/vnd.docker.image.rootfs.diff.tar"),
            (Compression::None, false) => (tar, "application/vnd.oci.image.layer.v1.tar"),
        };
        layers.push(put_blob(layout, mt, &blob)?);
    }
    let mut config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": img.arch,
        "os": img.os,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(v) = &img.variant {
        config["variant"] = json!(v);
    }
    let config_mt = if docker { DOCKER_CONFIG } else { OCI_CONFIG };
    let config_desc = put_blob(layout, config_mt, config.to_string().as_bytes())?;
    let manifest_mt = if docker {
        DOCKER_MANIFEST
    } else {
        OCI_MANIFEST
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_mt,
        "config": config_desc,
        "layers": layers,
    });
    let manifest = manifest.to_string().into_bytes();
    let mut manifest_desc = put_blob(layout, manifest_mt, &manifest)?;
    let mut platform = json!({"architecture": img.arch, "os": img.os});
    if let Some(v) = &img.variant {
        platform["variant"] = json!(v);
    }
    manifest_desc["platform"] = platform;
    Ok(Built {
        manifest_desc,
        manifest,
        diff_ids,
        unpacked_size,
    })
}

/// Builds `images` under `work` and pushes them with
/// `skopeo copy --all --preserve-digests` to `registry_host/repo_tag`
/// (`repo` alone means tag `latest`).
///
/// One image gives a single manifest; several give an OCI index (or a Docker
/// manifest list for [`Format::DockerV2S2`]) with platform entries, in order.
/// OCI images go through an OCI image layout; Docker ones through skopeo's
/// `dir:` layout with Docker media types written directly, so skopeo copies
/// every manifest verbatim. The returned digests are computed from the
/// manifests the registry serves afterwards. `tls` adds the CA and
/// credentials of a [`crate::Registry::start_tls_token`] registry.
pub fn push_image(
    registry_host: &str,
    repo_tag: &str,
    images: &[ImageSpec],
    format: Format,
    work: &Path,
    tls: Option<&Tls>,
) -> Result<PushedImage> {
    ensure!(
        !images.is_empty(),
        "push_image needs at least one ImageSpec"
    );
    let (repo, tag) = match repo_tag.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (repo_tag, "latest"),
    };
    let name: String = repo_tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // OCI: an OCI image layout. Docker: skopeo's `dir:` layout, because the
    // `oci:` transport only accepts OCI media types in index.json and skopeo
    // can convert to Docker types only by rewriting the manifests; `dir:`
    // copies Docker manifests and lists verbatim.
    let docker = format == Format::DockerV2S2;
    let layout = work.join(format!("{}-{name}", if docker { "dir" } else { "oci" }));
    if layout.exists() {
        std::fs::remove_dir_all(&layout)
            .with_context(|| format!("clearing {}", layout.display()))?;
    }
    let blobs = if docker {
        layout.clone()
    } else {
        layout.join("blobs/sha256")
    };
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;

    let built = images
        .iter()
        .map(|i| build_image(&blobs, i, format))
        .collect::<Result<Vec<_>>>()?;
    let is_index = built.len() > 1;
    let (mut top, top_bytes) = if is_index {
        let mt = if docker { DOCKER_LIST } else { OCI_INDEX };
        let entries: Vec<Value> = built.iter().map(|b| b.manifest_desc.clone()).collect();
        let index = json!({"schemaVersion": 2, "mediaType": mt, "manifests": entries}).to_string();
        (put_blob(&blobs, mt, index.as_bytes())?, index.into_bytes())
    } else {
        let mut d = built[0].manifest_desc.clone();
        if let Some(o) = d.as_object_mut() {
            o.remove("platform");
        }
        (d, built[0].manifest.clone())
    };
    let source = if docker {
        std::fs::write(layout.join("version"), "Directory Transport Version: 1.1\n")?;
        std::fs::write(layout.join("manifest.json"), &top_bytes)?;
        if is_index {
            for b in &built {
                let hex = hex::encode(Sha256::digest(&b.manifest));
                std::fs::write(layout.join(format!("{hex}.manifest.json")), &b.manifest)?;
            }
        }
        format!("dir:{}", layout.display())
    } else {
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index_json = json!({"schemaVersion": 2, "manifests": [top]});
        std::fs::write(layout.join("index.json"), index_json.to_string())?;
        format!("oci:{}:{tag}", layout.display())
    };

    // skopeo: own policy, explicit credentials, nothing from the host's config.
    let policy = work.join("skopeo-policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy")
        .arg(&policy)
        .args(["copy", "--all", "--preserve-digests", "-q"]);
    let cert_dir = work.join("skopeo-certs");
    if let Some(t) = tls {
        std::fs::create_dir_all(&cert_dir)?;
        std::fs::copy(&t.ca_cert, cert_dir.join("ca.crt")).context("copying CA cert")?;
        cmd.arg("--dest-cert-dir")
            .arg(&cert_dir)
            .arg("--dest-creds")
            .arg(format!("{}:{}", t.username, t.password));
    } else {
        cmd.args(["--dest-tls-verify=false", "--dest-no-creds"]);
    }
    cmd.arg(source)
        .arg(format!("docker://{registry_host}/{repo}:{tag}"));
    run(&mut cmd).context("skopeo copy")?;

    // Read back what the registry serves.
    let fetch = |reference: &str| -> Result<Vec<u8>> {
        match tls {
            None => fetch_plain(registry_host, repo, reference),
            Some(t) => run(Command::new("skopeo")
                .arg("--policy")
                .arg(&policy)
                .args(["inspect", "--raw", "--cert-dir"])
                .arg(&cert_dir)
                .arg("--creds")
                .arg(format!("{}:{}", t.username, t.password))
                .arg(format!("docker://{registry_host}/{repo}{reference}")))
            .map(String::into_bytes),
        }
    };
    let top_bytes = fetch(&format!(":{tag}"))?;
    let top_digest = sha256_digest(&top_bytes);
    let top_json: Value = serde_json::from_slice(&top_bytes).context("parsing served manifest")?;
    let child_digests: Vec<String> = if is_index {
        let list = top_json["manifests"]
            .as_array()
            .context("index without manifests")?;
        ensure!(
            list.len() == images.len(),
            "served index has {} entries, pushed {}",
            list.len(),
            images.len()
        );
        list.iter()
            .map(|m| {
                m["digest"]
                    .as_str()
                    .map(str::to_string)
                    .context("entry without digest")
            })
            .collect::<Result<_>>()?
    } else {
        vec![top_digest.clone()]
    };
    let mut manifests = Vec::new();
    for ((digest, img), b) in child_digests.iter().zip(images).zip(&built) {
        let m: Value = if is_index {
            let bytes = fetch(&format!("@{digest}"))?;
            ensure!(
                sha256_digest(&bytes) == *digest,
                "registry served {digest} with another digest"
            );
            serde_json::from_slice(&bytes)?
        } else {
            top_json.clone()
        };
        manifests.push(describe(digest.clone(), &m, b, img)?);
    }
    Ok(PushedImage {
        reference: format!("{registry_host}/{repo}:{tag}"),
        top_digest,
        manifests,
        is_index,
    })
}

/// Builds `images` into an OCI image layout at `dir` without pushing: the
/// layout a node image would carry for an air-gapped import. The index.json
/// entry is annotated `org.opencontainers.image.ref.name = <reference>`
/// (a full `host/repo:tag`). One image gives a manifest, several an OCI
/// index. The returned digests are those of the bytes written.
pub fn write_oci_layout(reference: &str, images: &[ImageSpec], dir: &Path) -> Result<PushedImage> {
    ensure!(
        !images.is_empty(),
        "write_oci_layout needs at least one ImageSpec"
    );
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let built = images
        .iter()
        .map(|i| build_image(&blobs, i, Format::Oci))
        .collect::<Result<Vec<_>>>()?;
    let is_index = built.len() > 1;
    let mut top = if is_index {
        let entries: Vec<Value> = built.iter().map(|b| b.manifest_desc.clone()).collect();
        let index =
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).to_string();
        put_blob(&blobs, OCI_INDEX, index.as_bytes())?
    } else {
        let mut d = built[0].manifest_desc.clone();
        if let Some(o) = d.as_object_mut() {
            o.remove("platform");
        }
        d
    };
    let top_digest = top["digest"].as_str().context("top digest")?.to_string();
    top["annotations"] = json!({"org.opencontainers.image.ref.name": reference});
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [top]}).to_string(),
    )?;
    let mut manifests = Vec::new();
    for (b, img) in built.iter().zip(images) {
        let m: Value = serde_json::from_slice(&b.manifest)?;
        let digest = b.manifest_desc["digest"].as_str().context("digest")?;
        manifests.push(describe(digest.to_string(), &m, b, img)?);
    }
    Ok(PushedImage {
        reference: reference.to_string(),
        top_digest,
        manifests,
        is_index,
    })
}

/// Packs an OCI layout directory into an `oci-archive` tarball (plain tar).
pub fn write_oci_archive(layout: &Path, out: &Path) -> Result<()> {
    let f = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", layout)
        .with_context(|| format!("packing {}", layout.display()))?;
    b.finish()?;
    Ok(())
}

/// GET a manifest over plain HTTP, accepting the four schema-2/OCI types.
fn fetch_plain(host: &str, repo: &str, reference: &str) -> Result<Vec<u8>> {
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("{host} is not ip:port"))?;
    let reference = reference.trim_start_matches([':', '@']);
    let path = format!("/v2/{repo}/manifests/{reference}");
    let resp = crate::http::request(addr, "GET", &path, &[("Accept", ACCEPT)], &[])?;
    ensure!(
        resp.head.status() == 200,
        "GET {path}: {} {}",
        resp.head.start,
        String::from_utf8_lossy(&resp.body)
    );
    if let Some(d) = resp.head.get("docker-content-digest") {
        ensure!(
            d == sha256_digest(&resp.body),
            "Docker-Content-Digest {d} does not match body"
        );
    }
    Ok(resp.body)
}
