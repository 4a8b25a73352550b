//! In-memory stand-ins for the engine's seams, for unit tests without
//! daemons: a registry of images built from raw layer bytes, an image
//! store, and a disk of a given size.

use super::blobs::{BlobSource, Opened};
use super::inventory::{ImageStore, Record};
use super::PullError;
use crate::containerd::ContainerdError;
use crate::disk::{DiskError, DiskProbe, DiskUsage};
use crate::labels::PINNED_LABEL;
use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::Manifest;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// One image built by [`FakeRegistry::push`].
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The manifest's digest.
    pub digest: String,
    pub config: String,
    pub layers: Vec<String>,
    pub chain_ids: Vec<String>,
}

/// A registry holding manifests by `name:tag` and by digest, and blobs by
/// digest. Layers are uncompressed, so their unpacked size is their size.
#[derive(Debug, Default)]
pub struct FakeRegistry {
    manifests: HashMap<String, (String, Bytes)>,
    blobs: HashMap<String, Bytes>,
    /// Names (`name:tag` or digests) whose fetch never answers.
    pub hang: HashSet<String>,
    /// Every manifest asked for, in order.
    pub asked: Mutex<Vec<String>>,
}

fn digest(bytes: &[u8]) -> String {
    crate::digest::sha256(bytes)
}

impl FakeRegistry {
    /// Stores an image of these layers under `name:tag` (`name` as
    /// [`Reference::name`] gives it).
    pub fn push(&mut self, name_tag: &str, layers: &[&[u8]]) -> Pushed {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap_or_default();
        let config_digest = digest(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": LAYER, "digest": digest(l), "size": l.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap_or_default();
        let manifest_digest = digest(&manifest);
        for l in layers {
            self.blobs.insert(digest(l), Bytes::copy_from_slice(l));
        }
        self.blobs
            .insert(config_digest.clone(), Bytes::from(config.clone()));
        let entry = (OCI_MANIFEST.to_string(), Bytes::from(manifest));
        self.manifests.insert(name_tag.to_string(), entry.clone());
        self.manifests.insert(manifest_digest.clone(), entry);
        Pushed {
            digest: manifest_digest,
            config: config_digest,
            layers: diff_ids.clone(),
            chain_ids: crate::manifest::chain_ids(&diff_ids),
        }
    }

    fn key(image: &Reference, what: &str) -> String {
        if what.starts_with("sha256:") {
            what.to_string()
        } else {
            format!("{}:{what}", image.name())
        }
    }
}

/// Not retried, so a test never waits out a backoff.
fn not_found(image: &Reference, what: &str) -> PullError {
    PullError::Manifest(crate::manifest::ManifestError::Invalid {
        what: "blob",
        digest: what.to_string(),
        why: format!("{image}: not in the fake registry"),
    })
}

impl BlobSource for FakeRegistry {
    fn describe(&self) -> String {
        "registry".into()
    }

    fn manifest<'a>(
        &'a self,
        image: &'a Reference,
        what: &'a str,
    ) -> BoxFuture<'a, Result<Manifest, PullError>> {
        let key = Self::key(image, what);
        if let Ok(mut asked) = self.asked.lock() {
            asked.push(key.clone());
        }
        if self.hang.contains(&key) {
            return Box::pin(futures_util::future::pending());
        }
        let found = self.manifests.get(&key).cloned();
        Box::pin(async move {
            let (media_type, bytes) = found.ok_or_else(|| not_found(image, what))?;
            Ok(Manifest {
                media_type: if media_type.is_empty() {
                    OCI_INDEX.into()
                } else {
                    media_type
                },
                digest: digest(&bytes),
                bytes,
                host: image.domain.clone(),
            })
        })
    }

    fn open<'a>(
        &'a self,
        image: &'a Reference,
        digest: &'a str,
        offset: u64,
        _avoid: &'a [String],
    ) -> BoxFuture<'a, Result<Opened, PullError>> {
        let found = self.blobs.get(digest).cloned();
        Box::pin(async move {
            let b = found.ok_or_else(|| not_found(image, digest))?;
            let rest = b.slice((offset as usize).min(b.len())..);
            Ok(Opened {
                start: offset,
                stream: futures_util::stream::once(async move { Ok(rest) }).boxed(),
                local: false,
                host: None,
            })
        })
    }

    fn range<'a>(
        &'a self,
        _image: &'a Reference,
        digest: &'a str,
        start: u64,
        len: u64,
    ) -> BoxFuture<'a, Option<Bytes>> {
        let got = self
            .blobs
            .get(digest)
            .and_then(|b| b.get(start as usize..(start + len) as usize))
            .map(Bytes::copy_from_slice);
        Box::pin(async move { got })
    }
}

/// An image store: records, blobs and committed snapshots.
#[derive(Debug, Default, Clone)]
pub struct FakeStore {
    pub records: HashMap<String, Record>,
    pub blobs: HashSet<String>,
    pub snapshots: HashSet<String>,
}

impl FakeStore {
    /// Holds `p` whole under these names, pinned, as a finished pull
    /// leaves it.
    pub fn hold(&mut self, p: &Pushed, names: &[String]) {
        for n in names {
            self.records.insert(
                n.clone(),
                Record {
                    target: Some(p.digest.clone()),
                    labels: HashMap::from([(PINNED_LABEL.into(), "pinned".into())]),
                },
            );
        }
        self.blobs.extend(p.layers.iter().cloned());
        self.snapshots.extend(p.chain_ids.iter().cloned());
    }
}

impl ImageStore for FakeStore {
    fn record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Record>, ContainerdError>> {
        Box::pin(async move { Ok(self.records.get(name).cloned()) })
    }

    fn has_blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, ContainerdError>> {
        Box::pin(async move { Ok(self.blobs.contains(digest)) })
    }

    fn has_snapshot<'a>(&'a self, chain: &'a str) -> BoxFuture<'a, Result<bool, ContainerdError>> {
        Box::pin(async move { Ok(self.snapshots.contains(chain)) })
    }
}

/// A disk with this much free.
#[derive(Debug, Clone, Copy)]
pub struct FakeDisk(pub DiskUsage);

impl DiskProbe for FakeDisk {
    fn usage(&self) -> Result<DiskUsage, DiskError> {
        Ok(self.0)
    }
}

/// A node and its registry, for planning and running without daemons.
pub struct World {
    pub settings: crate::config::Settings,
    pub registry: std::sync::Arc<FakeRegistry>,
    pub store: FakeStore,
    pub disk: FakeDisk,
    retry: crate::retry::Retry,
}

impl World {
    /// Settings listing `images` (TOML `[[images]]` bodies), no disk
    /// reserve, no retries; `free` bytes free on a large disk.
    pub fn new(images: &[&str], registry: FakeRegistry, free: u64) -> Self {
        let mut text = String::from(
            "version = 1\n[pull]\nretries = 0\n[disk]\nreserve = 0\nmax-usage-percent = 100\n",
        );
        for i in images {
            text.push_str(&format!("[[images]]\n{i}\n"));
        }
        let settings = crate::config::load_str(
            &[("/etc/prewarm/config.d/50-test.toml".into(), text)],
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("{}", crate::error_chain(&e)));
        World {
            retry: crate::retry::Retry::new(settings.pull.retries),
            settings,
            registry: std::sync::Arc::new(registry),
            store: FakeStore::default(),
            disk: FakeDisk(DiskUsage {
                total: 1 << 40,
                available: free,
            }),
        }
    }

    /// Every image's source: the fake registry.
    pub fn sources(&self) -> impl Fn(&Reference) -> std::sync::Arc<dyn BlobSource> + Send + Sync {
        let registry = self.registry.clone();
        move |_| registry.clone()
    }

    pub fn planner<'a>(
        &'a self,
        sources: &'a super::planner::Sources<'a>,
    ) -> super::planner::Planner<'a> {
        super::planner::Planner {
            settings: &self.settings,
            resolver: super::resolve::Resolver {
                retry: &self.retry,
                platform: &self.settings.pull.platform,
                unpack_ratio: self.settings.disk.unpack_ratio,
            },
            sources,
            store: &self.store,
            disk: &self.disk,
        }
    }
}
