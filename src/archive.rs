//! Image archives baked into the OS image, for nodes without a registry:
//! OCI image layouts (directories), `oci-archive` tarballs (a layout in an
//! uncompressed tar) and `docker-archive` tarballs (`docker save`).
//!
//! Nothing is unpacked here: the engine streams each blob from the file
//! straight into containerd's content store, where it is verified at commit
//! like a download. Manifests, indexes and configs are read into memory
//! and checked against their digests here.
//!
//! Image names come from the layout's `io.containerd.image.name` or
//! `org.opencontainers.image.ref.name` annotation (a full reference such as
//! `registry.example/ml/model:1.2`; a bare tag names no repository and is
//! skipped with a warning), or a docker-archive's `RepoTags`. Each image is
//! listed as `name:tag@digest`: the archive pins the digest.
//!
//! A docker-archive has no manifest blob, so a Docker schema 2 manifest is
//! made from its `manifest.json` entry, as `ctr images import` does; its
//! digest differs from the one a registry serves for the same image.

use crate::containerd::Desc;
use crate::reference::Reference;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// An archive that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("archive {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("archive {}: blob {digest}: {message}", path.display())]
    Blob {
        path: PathBuf,
        digest: String,
        message: String,
    },
}

/// Where a blob's bytes are.
#[derive(Debug, Clone)]
enum Loc {
    /// A file of its own (OCI layout directory).
    File { path: PathBuf, size: u64 },
    /// A member of the tarball.
    Tar { offset: u64, size: u64 },
    /// Made here (a docker-archive's manifest).
    Memory(Bytes),
}

/// One named image in an archive.
#[derive(Debug, Clone)]
pub struct ArchivedImage {
    /// `name:tag@digest`.
    pub reference: Reference,
    /// The index or manifest the name points at.
    pub top: Desc,
    /// Where the name came from, for messages: `index.json manifests[0]`.
    pub name_key: String,
}

/// An opened archive: its images and where each blob is.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    blobs: HashMap<String, Loc>,
    images: Vec<ArchivedImage>,
}

/// Largest manifest, index, config or `manifest.json` read into memory.
const MAX_SMALL: u64 = 8 << 20;
const READ_CHUNK: usize = 1 << 20;

impl Archive {
    /// Opens `path`: an OCI layout directory, a tarball, or a directory
    /// holding layouts and `*.tar` files (read in name order).
    pub fn open_all(path: &Path) -> Result<Vec<Archive>, ArchiveError> {
        let meta = std::fs::metadata(path).map_err(|source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_file() {
            return Ok(vec![Archive::open_tar(path)?]);
        }
        if path.join("oci-layout").exists() {
            return Ok(vec![Archive::open_layout(path)?]);
        }
        let io = |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut children: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        children.sort();
        let mut out = Vec::new();
        for c in children {
            if c.is_dir() && c.join("oci-layout").exists() {
                out.push(Archive::open_layout(&c)?);
            } else if c.is_file() && c.extension().is_some_and(|x| x == "tar") {
                out.push(Archive::open_tar(&c)?);
            } else {
                tracing::debug!(path = %c.display(), "not an image archive; ignored");
            }
        }
        if out.is_empty() {
            tracing::warn!(path = %path.display(), "no OCI layouts or .tar archives here");
        }
        Ok(out)
    }

    /// The file or directory this archive was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The named images in it.
    pub fn images(&self) -> &[ArchivedImage] {
        &self.images
    }

    /// The image `r` names, when this archive has it: same repository, and
    /// the same digest (or, for a tag-only reference, the same tag).
    pub fn find(&self, r: &Reference) -> Option<&ArchivedImage> {
        self.images.iter().find(|i| {
            i.reference.name() == r.name()
                && match &r.digest {
                    Some(d) => i.reference.digest.as_ref() == Some(d),
                    None => i.reference.tag == r.tag,
                }
        })
    }

    /// Does the archive hold this blob?
    pub fn has(&self, digest: &str) -> bool {
        self.blobs.contains_key(digest)
    }

    /// The top descriptor's media type for `digest`, when an image's name
    /// points at it.
    pub fn media_type(&self, digest: &str) -> Option<&str> {
        self.images
            .iter()
            .find(|i| i.top.digest == digest)
            .map(|i| i.top.media_type.as_str())
            .filter(|m| !m.is_empty())
    }

    fn err(&self, digest: &str, message: impl Into<String>) -> ArchiveError {
        ArchiveError::Blob {
            path: self.path.clone(),
            digest: digest.to_string(),
            message: message.into(),
        }
    }

    fn loc(&self, digest: &str) -> Result<&Loc, ArchiveError> {
        self.blobs
            .get(digest)
            .ok_or_else(|| self.err(digest, "not in the archive"))
    }

    /// Reads a small blob whole and checks its digest.
    pub fn read(&self, digest: &str) -> Result<Bytes, ArchiveError> {
        let bytes = match self.loc(digest)? {
            Loc::Memory(b) => b.clone(),
            Loc::File { path, size } => {
                read_section(path, 0, *size, MAX_SMALL).map_err(|e| self.err(digest, e))?
            }
            Loc::Tar { offset, size } => read_section(&self.path, *offset, *size, MAX_SMALL)
                .map_err(|e| self.err(digest, e))?,
        };
        let got = crate::digest::sha256(&bytes);
        if got != digest {
            return Err(self.err(digest, format!("the archive's bytes hash to {got}")));
        }
        Ok(bytes)
    }

    /// `len` bytes at `start`, for size probes; None when out of range.
    pub fn read_range(&self, digest: &str, start: u64, len: u64) -> Option<Bytes> {
        match self.blobs.get(digest)? {
            Loc::Memory(b) => b
                .get(start as usize..(start + len) as usize)
                .map(Bytes::copy_from_slice),
            Loc::File { path, size } if start + len <= *size => {
                read_section(path, start, len, len).ok()
            }
            Loc::Tar { offset, size } if start + len <= *size => {
                read_section(&self.path, offset + start, len, len).ok()
            }
            _ => None,
        }
    }

    /// Streams a blob from `offset` (a resumed ingest): the whole rest of
    /// it, in chunks. The digest is checked by containerd at commit.
    pub async fn open(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, ArchiveError>>, ArchiveError> {
        use futures_util::StreamExt;
        let (file, start, size) = match self.loc(digest)? {
            Loc::Memory(b) => {
                let rest = b.slice((offset as usize).min(b.len())..);
                return Ok(futures_util::stream::once(async move { Ok(rest) }).boxed());
            }
            Loc::File { path, size } => (path.clone(), 0, *size),
            Loc::Tar { offset, size } => (self.path.clone(), *offset, *size),
        };
        if offset > size {
            return Err(self.err(
                digest,
                format!("resume offset {offset} is past its size {size}"),
            ));
        }
        let io = |source| ArchiveError::Io {
            path: file.clone(),
            source,
        };
        let mut f = tokio::fs::File::open(&file).await.map_err(io)?;
        tokio::io::AsyncSeekExt::seek(&mut f, SeekFrom::Start(start + offset))
            .await
            .map_err(io)?;
        let left = size - offset;
        let path = file.clone();
        Ok(
            futures_util::stream::unfold((f, left), move |(mut f, left)| {
                let path = path.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let mut buf = vec![0u8; READ_CHUNK.min(left as usize)];
                    match tokio::io::AsyncReadExt::read(&mut f, &mut buf).await {
                        Ok(0) => Some((
                            Err(ArchiveError::Io {
                                path,
                                source: std::io::ErrorKind::UnexpectedEof.into(),
                            }),
                            (f, 0),
                        )),
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok(Bytes::from(buf)), (f, left - n as u64)))
                        }
                        Err(source) => Some((Err(ArchiveError::Io { path, source }), (f, 0))),
                    }
                }
            })
            .boxed(),
        )
    }

    fn open_layout(dir: &Path) -> Result<Archive, ArchiveError> {
        let blob_dir = dir.join("blobs/sha256");
        let mut blobs = HashMap::new();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ArchiveError::Io { path, source }
        };
        for e in std::fs::read_dir(&blob_dir).map_err(io(&blob_dir))? {
            let e = e.map_err(io(&blob_dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let size = e.metadata().map_err(io(&e.path()))?.len();
            blobs.insert(
                format!("sha256:{name}"),
                Loc::File {
                    path: e.path(),
                    size,
                },
            );
        }
        let index = std::fs::read(dir.join("index.json")).map_err(io(&dir.join("index.json")))?;
        let mut a = Archive {
            path: dir.to_path_buf(),
            blobs,
            images: Vec::new(),
        };
        a.images = a.oci_images(&index)?;
        Ok(a)
    }

    fn open_tar(file: &Path) -> Result<Archive, ArchiveError> {
        let invalid = |message: String| ArchiveError::Invalid {
            path: file.to_path_buf(),
            message,
        };
        let io = |source| ArchiveError::Io {
            path: file.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(file).map_err(io)?;
        let mut members: HashMap<String, (u64, u64)> = HashMap::new();
        let mut tar = tar::Archive::new(f);
        for entry in tar.entries().map_err(io)? {
            let entry = entry.map_err(|e| {
                invalid(format!(
                    "not an uncompressed tar (compressed archives are not supported): {e}"
                ))
            })?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").to_string();
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        let read_member = |name: &str| -> Result<Bytes, ArchiveError> {
            let (offset, size) = members
                .get(name)
                .ok_or_else(|| invalid(format!("no {name} in it")))?;
            read_section(file, *offset, *size, MAX_SMALL)
                .map_err(|m| invalid(format!("{name}: {m}")))
        };
        if members.contains_key("oci-layout") && members.contains_key("index.json") {
            let index = read_member("index.json")?;
            let blobs = members
                .iter()
                .filter_map(|(name, (offset, size))| {
                    let hex = name.strip_prefix("blobs/sha256/")?;
                    Some((
                        format!("sha256:{hex}"),
                        Loc::Tar {
                            offset: *offset,
                            size: *size,
                        },
                    ))
                })
                .collect();
            let mut a = Archive {
                path: file.to_path_buf(),
                blobs,
                images: Vec::new(),
            };
            a.images = a.oci_images(&index)?;
            return Ok(a);
        }
        if members.contains_key("manifest.json") {
            let manifest = read_member("manifest.json")?;
            return Archive::docker(file, &members, &manifest);
        }
        Err(invalid(
            "neither an oci-archive (oci-layout, index.json) nor a docker-archive (manifest.json)"
                .into(),
        ))
    }

    /// The named images of an OCI layout's `index.json`.
    fn oci_images(&self, index: &[u8]) -> Result<Vec<ArchivedImage>, ArchiveError> {
        let index = crate::manifest::Index::parse("index.json", index).map_err(|e| {
            ArchiveError::Invalid {
                path: self.path.clone(),
                message: e.to_string(),
            }
        })?;
        let mut out = Vec::new();
        for (i, d) in index.manifests.iter().enumerate() {
            let key = format!("index.json manifests[{i}]");
            let name = d
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| d.annotations.get("org.opencontainers.image.ref.name"));
            let Some(name) = name else {
                tracing::warn!(archive = %self.path.display(), %key, "an image without a name; skipped");
                continue;
            };
            if !name.contains('/') && !name.contains(':') {
                tracing::warn!(archive = %self.path.display(), %key, %name,
                    "the name is a bare tag without a repository; skipped (write the archive with a full reference)");
                continue;
            }
            let mut reference = Reference::parse(name).map_err(|e| ArchiveError::Invalid {
                path: self.path.clone(),
                message: format!("{key}: {e}"),
            })?;
            reference.digest = Some(d.digest.clone());
            out.push(ArchivedImage {
                reference,
                top: Desc {
                    media_type: d.media_type.clone(),
                    digest: d.digest.clone(),
                    size: d.size,
                },
                name_key: key,
            });
        }
        Ok(out)
    }

    /// A docker-archive: `manifest.json` lists config, layers and tags.
    fn docker(
        file: &Path,
        members: &HashMap<String, (u64, u64)>,
        manifest_json: &[u8],
    ) -> Result<Archive, ArchiveError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Vec<String>,
            layers: Vec<String>,
        }
        let invalid = |message: String| ArchiveError::Invalid {
            path: file.to_path_buf(),
            message,
        };
        let entries: Vec<Entry> = serde_json::from_slice(manifest_json)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
        let member = |name: &str| {
            members
                .get(name.trim_start_matches("./"))
                .copied()
                .ok_or_else(|| invalid(format!("manifest.json names {name}, which is not in it")))
        };
        let mut blobs = HashMap::new();
        let mut images = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let (offset, size) = member(&e.config)?;
            let config = read_section(file, offset, size, MAX_SMALL)
                .map_err(|m| invalid(format!("{}: {m}", e.config)))?;
            let config_digest = crate::digest::sha256(&config);
            let parsed = crate::manifest::ImageConfig::parse(&config_digest, &config)
                .map_err(|err| invalid(err.to_string()))?;
            if parsed.rootfs.diff_ids.len() != e.layers.len() {
                return Err(invalid(format!(
                    "manifest.json entry {i}: {} layers but {} diff_ids in {}",
                    e.layers.len(),
                    parsed.rootfs.diff_ids.len(),
                    e.config
                )));
            }
            blobs.insert(config_digest.clone(), Loc::Tar { offset, size });
            let mut layers = Vec::new();
            for (layer, diff_id) in e.layers.iter().zip(&parsed.rootfs.diff_ids) {
                let (offset, size) = member(layer)?;
                let head = read_section(file, offset, 4.min(size), 4)
                    .map_err(|m| invalid(format!("{layer}: {m}")))?;
                let (media_type, digest) = if head.starts_with(&[0x1f, 0x8b]) {
                    let d = hash_section(file, offset, size)
                        .map_err(|m| invalid(format!("{layer}: {m}")))?;
                    ("application/vnd.docker.image.rootfs.diff.tar.gzip", d)
                } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    let d = hash_section(file, offset, size)
                        .map_err(|m| invalid(format!("{layer}: {m}")))?;
                    ("application/vnd.oci.image.layer.v1.tar+zstd", d)
                } else {
                    // An uncompressed layer is its diff: containerd checks
                    // the bytes against it at commit.
                    (
                        "application/vnd.docker.image.rootfs.diff.tar",
                        diff_id.clone(),
                    )
                };
                blobs.insert(digest.clone(), Loc::Tar { offset, size });
                layers.push(serde_json::json!({
                    "mediaType": media_type, "size": size, "digest": digest,
                }));
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": crate::manifest::DOCKER_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": config.len(),
                    "digest": config_digest,
                },
                "layers": layers,
            });
            let bytes = Bytes::from(manifest.to_string().into_bytes());
            let top = Desc {
                media_type: crate::manifest::DOCKER_MANIFEST.into(),
                digest: crate::digest::sha256(&bytes),
                size: bytes.len() as i64,
            };
            blobs.insert(top.digest.clone(), Loc::Memory(bytes));
            for (t, tag) in e.repo_tags.iter().enumerate() {
                let mut reference = Reference::parse(tag).map_err(|err| {
                    invalid(format!("manifest.json entry {i} RepoTags[{t}]: {err}"))
                })?;
                reference.digest = Some(top.digest.clone());
                images.push(ArchivedImage {
                    reference,
                    top: top.clone(),
                    name_key: format!("manifest.json [{i}] RepoTags[{t}]"),
                });
            }
        }
        Ok(Archive {
            path: file.to_path_buf(),
            blobs,
            images,
        })
    }
}

/// Reads `len` bytes at `offset` of `path`, refusing more than `max`.
fn read_section(path: &Path, offset: u64, len: u64, max: u64) -> Result<Bytes, String> {
    if len > max {
        return Err(format!(
            "{len} bytes is more than the {max} read into memory"
        ));
    }
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Bytes::from(buf))
}

fn hash_section(path: &Path, offset: u64, len: u64) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let n =
        std::io::copy(&mut f.take(len), &mut h).map_err(|e| format!("{}: {e}", path.display()))?;
    if n != len {
        return Err(format!("{}: truncated", path.display()));
    }
    Ok(crate::digest::finish(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn put(dir: &Path, data: &[u8]) -> (String, usize) {
        let d = crate::digest::sha256(data);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
        (d, data.len())
    }

    /// A one-layer OCI layout named `name`; returns (layout dir, manifest
    /// digest, layer digest).
    fn layout(root: &Path, name: Option<&str>) -> (PathBuf, String, String) {
        let dir = root.join("layout");
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let layer = b"not really a tar, but a blob".to_vec();
        let (ld, ls) = put(&dir, &layer);
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#);
        let (cd, cs) = put(&dir, config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{ls}}}]}}"#,
            crate::manifest::OCI_MANIFEST
        );
        let (md, ms) = put(&dir, manifest.as_bytes());
        let ann = name
            .map(|n| format!(r#","annotations":{{"org.opencontainers.image.ref.name":"{n}"}}"#))
            .unwrap_or_default();
        std::fs::write(
            dir.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{md}","size":{ms}{ann}}}]}}"#,
                crate::manifest::OCI_MANIFEST
            ),
        )
        .unwrap();
        (dir, md, ld)
    }

    fn tar_of(dir: &Path, out: &Path) {
        let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
        b.append_dir_all(".", dir).unwrap();
        b.finish().unwrap();
    }

    #[tokio::test]
    async fn layout_and_oci_archive_name_and_stream_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, md, ld) = layout(tmp.path(), Some("registry.example/ml/model:1.2"));
        let tarball = tmp.path().join("model.tar");
        tar_of(&dir, &tarball);
        for path in [&dir, &tarball] {
            let all = Archive::open_all(path).unwrap();
            assert_eq!(all.len(), 1);
            let a = &all[0];
            assert_eq!(a.images().len(), 1);
            let img = &a.images()[0];
            assert_eq!(
                img.reference.to_string(),
                format!("registry.example/ml/model:1.2@{md}")
            );
            let tag_only = Reference::parse("registry.example/ml/model:1.2").unwrap();
            assert!(a.find(&tag_only).is_some());
            assert!(a
                .find(&Reference::parse("registry.example/ml/model:1.3").unwrap())
                .is_none());
            assert!(a.read(&md).is_ok());
            let mut s = a.open(&ld, 4).await.unwrap();
            let mut got = Vec::new();
            while let Some(c) = s.next().await {
                got.extend_from_slice(&c.unwrap());
            }
            assert_eq!(got, b"really a tar, but a blob");
            assert_eq!(a.read_range(&ld, 0, 3).as_deref(), Some(&b"not"[..]));
            assert!(!a.has(&format!("sha256:{}", "0".repeat(64))));
        }
        // A directory of archives finds the layout and the tarball.
        let all = Archive::open_all(tmp.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].path().ends_with("layout") && all[1].path().ends_with("model.tar"));
    }

    #[test]
    fn a_corrupt_blob_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, md, _) = layout(tmp.path(), Some("registry.example/ml/model:1.2"));
        std::fs::write(dir.join("blobs/sha256").join(&md[7..]), b"{}").unwrap();
        let a = &Archive::open_all(&dir).unwrap()[0];
        let err = a.read(&md).unwrap_err().to_string();
        assert!(err.contains("hash to"), "{err}");
    }

    #[test]
    fn bare_tags_and_unnamed_images_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _, _) = layout(tmp.path(), Some("1.2"));
        assert!(Archive::open_all(&dir).unwrap()[0].images().is_empty());
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _, _) = layout(tmp.path(), None);
        assert!(Archive::open_all(&dir).unwrap()[0].images().is_empty());
    }

    #[test]
    fn docker_archive_gets_a_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let layer = b"plain tar bytes".to_vec();
        let diff = crate::digest::sha256(&layer);
        std::fs::write(src.join("layer.tar"), &layer).unwrap();
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#);
        std::fs::write(src.join("config.json"), &config).unwrap();
        std::fs::write(
            src.join("manifest.json"),
            r#"[{"Config":"config.json","RepoTags":["legacy/app:v3"],"Layers":["layer.tar"]}]"#,
        )
        .unwrap();
        let tarball = tmp.path().join("app.tar");
        tar_of(&src, &tarball);
        let a = &Archive::open_all(&tarball).unwrap()[0];
        let img = &a.images()[0];
        assert_eq!(img.reference.name(), "docker.io/legacy/app");
        assert_eq!(img.reference.tag.as_deref(), Some("v3"));
        let m = a.read(&img.top.digest).unwrap();
        let parsed = crate::manifest::Manifest::parse(&img.top.digest, &m).unwrap();
        assert_eq!(parsed.layers[0].digest, diff);
        assert!(a.has(&diff) && a.has(&crate::digest::sha256(config.as_bytes())));

        std::fs::write(tmp.path().join("junk.tar"), b"not a tar at all").unwrap();
        assert!(Archive::open_all(&tmp.path().join("junk.tar")).is_err());
    }
}
