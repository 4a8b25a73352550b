//! Resolving an image: its index or manifest, the platform's manifest and
//! the config, all held as raw bytes, plus what the layers' streams say of
//! their unpacked sizes.

use super::blobs::BlobSource;
use super::PullError;
use crate::config::ImageEntry;
use crate::containerd::Desc;
use crate::manifest;
use crate::plan;
use crate::reference::Reference;
use crate::retry::Retry;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;

/// A blob held in memory (manifests, indexes, configs).
#[derive(Debug, Clone)]
pub struct SmallBlob {
    pub desc: Desc,
    pub bytes: Bytes,
}

/// An image resolved against its registry or archive: raw bytes of
/// everything above the layers.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub entry: ImageEntry,
    /// The index or list, when the reference names one.
    pub index: Option<SmallBlob>,
    pub manifest: SmallBlob,
    pub config: SmallBlob,
    pub layers: Vec<Desc>,
    pub diff_ids: Vec<String>,
    pub chain_ids: Vec<String>,
    /// Unpacked size per layer where the stream's metadata told it
    /// (gzip ISIZE, zstd frame content size, or an uncompressed layer).
    pub unpacked_sizes: Vec<Option<u64>>,
    /// Where the blobs come from.
    pub source: Arc<dyn BlobSource>,
    /// What the store already holds of each layer; empty until taken
    /// stock of (then nothing counts as held).
    pub stored: Vec<Stored>,
}

/// What containerd already holds of one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// The compressed blob is in the content store.
    pub content: bool,
    /// The layer is unpacked: its chain ID is a committed snapshot.
    pub snapshot: bool,
}

impl Resolved {
    /// What the image records point at: the index if any, else the manifest.
    pub fn top(&self) -> &SmallBlob {
        self.index.as_ref().unwrap_or(&self.manifest)
    }

    /// Compressed bytes of the whole image.
    pub fn compressed_size(&self) -> u64 {
        let small = self.index.iter().chain([&self.manifest, &self.config]);
        small.map(|b| b.bytes.len() as u64).sum::<u64>()
            + self
                .layers
                .iter()
                .map(|l| l.size.max(0) as u64)
                .sum::<u64>()
    }

    /// Bytes a pull of the image downloads: the layers the store does not
    /// hold (see [`Resolved::parts`]).
    pub fn to_download(&self, keep_layers: bool) -> u64 {
        self.layers
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let s = self.stored.get(*i).copied().unwrap_or_default();
                !(s.content || (s.snapshot && !keep_layers))
            })
            .map(|(_, l)| l.size.max(0) as u64)
            .sum()
    }

    /// Estimated unpacked bytes of layer `i`: the size its stream records,
    /// else `ratio` times its compressed size.
    pub fn layer_unpacked(&self, i: usize, ratio: f64) -> u64 {
        let Some(l) = self.layers.get(i) else {
            return 0;
        };
        self.unpacked_sizes
            .get(i)
            .copied()
            .flatten()
            .unwrap_or_else(|| {
                let compressed = !matches!(
                    manifest::layer_compression(&l.media_type),
                    Some(manifest::Compression::None)
                );
                plan::estimate_unpacked(l.size.max(0) as u64, compressed, ratio)
            })
    }

    /// What the image would write, part by part, and which parts the store
    /// already holds (see [`super::inventory::take_stock`]): the small
    /// blobs, each layer's blob, and each layer unpacked. Without
    /// `keep_layers`, an unpacked layer's blob is not fetched again.
    pub fn parts(&self, ratio: f64, keep_layers: bool) -> Vec<plan::Part> {
        let small = self.index.iter().chain([&self.manifest, &self.config]);
        let mut parts: Vec<plan::Part> = small
            .map(|b| plan::Part {
                key: b.desc.digest.clone(),
                bytes: b.bytes.len() as u64,
                held: false,
            })
            .collect();
        for (i, l) in self.layers.iter().enumerate() {
            let stored = self.stored.get(i).copied().unwrap_or_default();
            parts.push(plan::Part {
                key: l.digest.clone(),
                bytes: l.size.max(0) as u64,
                held: stored.content || (stored.snapshot && !keep_layers),
            });
            parts.push(plan::Part {
                key: format!(
                    "snapshot:{}",
                    self.chain_ids.get(i).map_or("", String::as_str)
                ),
                bytes: self.layer_unpacked(i, ratio),
                held: stored.snapshot,
            });
        }
        parts
    }

    /// The image ID kubelet shows: the config digest.
    pub fn image_id(&self) -> &str {
        &self.config.desc.digest
    }

    /// The three record names: `repo:tag` (when tagged), `repo@digest`,
    /// and the config digest.
    pub fn record_names(&self) -> Vec<String> {
        let r = &self.entry.reference;
        let mut names: Vec<String> = r.tag_name().into_iter().collect();
        names.push(r.digest_name(&self.top().desc.digest));
        names.push(self.image_id().to_string());
        names
    }
}

/// Resolves images against their sources.
pub struct Resolver<'a> {
    pub retry: &'a Retry,
    pub platform: &'a manifest::Platform,
    /// Unpacked bytes per compressed byte, where a stream does not say.
    pub unpack_ratio: f64,
}

impl Resolver<'_> {
    /// Resolves an image: top manifest or index, the platform manifest and
    /// the config, all as raw bytes.
    /// What is addressed by digest below the top (the platform manifest,
    /// the config) is read from `store` when it holds it: a node that has
    /// the image asks the registry only to resolve the tag.
    pub async fn resolve(
        &self,
        entry: &ImageEntry,
        source: Arc<dyn BlobSource>,
        store: &dyn super::inventory::ImageStore,
    ) -> Result<Resolved, PullError> {
        let reference = &entry.reference;
        let limit = crate::registry::MAX_MANIFEST_BYTES as u64;
        let fetch = |what: String| {
            let source = &source;
            async move {
                self.retry
                    .run(
                        &format!("fetching manifest {what} of {reference}"),
                        PullError::again,
                        |_| source.manifest(reference, &what),
                    )
                    .await
            }
        };
        let top = fetch(reference.manifest_reference().to_string()).await?;
        let top_media = top.media_type;
        let small = |media_type: String, digest: String, bytes: Bytes| SmallBlob {
            desc: Desc {
                media_type,
                size: bytes.len() as i64,
                digest,
            },
            bytes,
        };
        let (index, manifest) = if manifest::is_index(&top_media) {
            let idx = manifest::Index::parse(&top.digest, &top.bytes)?;
            let chosen = manifest::select_manifest(&top.digest, &idx, self.platform)?;
            let m = match store.small_blob(&chosen.digest, limit).await {
                Some(bytes) if manifest::is_manifest(&chosen.media_type) => {
                    small(chosen.media_type.clone(), chosen.digest.clone(), bytes)
                }
                _ => {
                    let m = fetch(chosen.digest.clone()).await?;
                    small(m.media_type, m.digest, m.bytes)
                }
            };
            (Some(small(top_media, top.digest, top.bytes)), m)
        } else if manifest::is_manifest(&top_media) {
            (None, small(top_media, top.digest, top.bytes))
        } else {
            return Err(manifest::ManifestError::MediaType {
                digest: top.digest,
                media_type: top_media,
            }
            .into());
        };
        let parsed = manifest::Manifest::parse(&manifest.desc.digest, &manifest.bytes)?;
        let config_bytes = match store.small_blob(&parsed.config.digest, limit).await {
            Some(bytes) if bytes.len() as i64 == parsed.config.size => bytes,
            _ => {
                self.fetch_small(source.as_ref(), reference, &parsed.config)
                    .await?
            }
        };
        let config = manifest::ImageConfig::parse(&parsed.config.digest, &config_bytes)?;
        if config.rootfs.diff_ids.len() != parsed.layers.len() {
            return Err(manifest::ManifestError::Invalid {
                what: "config",
                digest: parsed.config.digest.clone(),
                why: format!(
                    "{} diff_ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    parsed.layers.len()
                ),
            }
            .into());
        }
        let chain_ids = manifest::chain_ids(&config.rootfs.diff_ids);
        Ok(Resolved {
            entry: entry.clone(),
            index,
            manifest,
            config: small(
                parsed.config.media_type.clone(),
                parsed.config.digest.clone(),
                config_bytes,
            ),
            layers: parsed
                .layers
                .iter()
                .map(|l| Desc {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                })
                .collect(),
            diff_ids: config.rootfs.diff_ids,
            chain_ids,
            unpacked_sizes: Vec::new(),
            stored: Vec::new(),
            source,
        })
    }

    /// Reads each layer's unpacked size from its compressed stream with a
    /// small Range request, where the format records it. Failures only
    /// mean falling back to the configured ratio. Layers the store holds
    /// unpacked (after [`super::inventory::take_stock`]) cost nothing and
    /// are not asked about.
    pub async fn read_unpacked_sizes(&self, r: &mut Resolved) {
        let image = &r.entry.reference;
        let source = r.source.as_ref();
        let ratio = self.unpack_ratio;
        let stored = &r.stored;
        let sizes =
            futures_util::future::join_all(r.layers.iter().enumerate().map(|(i, l)| async move {
                if stored.get(i).is_some_and(|s| s.snapshot) {
                    return None;
                }
                let size = l.size.max(0) as u64;
                let fetch = |start: u64, len: u64| source.range(image, &l.digest, start, len);
                match manifest::layer_compression(&l.media_type)? {
                    manifest::Compression::None => Some(size),
                    manifest::Compression::Gzip if size >= 4 => {
                        let guess = plan::estimate_unpacked(size, true, ratio);
                        crate::estimate::gzip_isize(&fetch(size - 4, 4).await?, size, guess)
                    }
                    manifest::Compression::Zstd => {
                        let len = crate::estimate::ZSTD_HEADER_MAX.min(size);
                        crate::estimate::zstd_content_size(&fetch(0, len).await?, size)
                    }
                    manifest::Compression::Gzip => None,
                }
            }))
            .await;
        r.unpacked_sizes = sizes;
    }

    /// Reads a small blob into memory and checks its size and digest.
    async fn fetch_small(
        &self,
        source: &dyn BlobSource,
        reference: &Reference,
        d: &manifest::Descriptor,
    ) -> Result<Bytes, PullError> {
        // A config is JSON of a few KiB; the size comes from the manifest,
        // which anyone can write. Held to the manifests' limit.
        let limit = crate::registry::MAX_MANIFEST_BYTES;
        if !(0..=limit as i64).contains(&d.size) {
            return Err(PullError::Blob {
                reference: reference.to_string(),
                digest: d.digest.clone(),
                message: format!(
                    "the manifest gives it {} bytes; at most {limit} are read",
                    d.size
                ),
            });
        }
        self.retry
            .run(
                &format!("fetching {} of {reference}", d.digest),
                PullError::again,
                |_| async {
                    let mut blob = source.open(reference, &d.digest, 0, &[]).await?;
                    let mut buf = Vec::with_capacity(d.size as usize);
                    while let Some(chunk) = blob.stream.next().await {
                        buf.extend_from_slice(&chunk?);
                        if buf.len() as i64 > d.size {
                            break;
                        }
                    }
                    let got = crate::digest::sha256(&buf);
                    if got != d.digest || buf.len() as i64 != d.size {
                        return Err(PullError::Blob {
                            reference: reference.to_string(),
                            digest: d.digest.clone(),
                            message: format!("received {} bytes hashing to {got}", buf.len()),
                        });
                    }
                    Ok(Bytes::from(buf))
                },
            )
            .await
    }
}
