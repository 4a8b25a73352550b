//! Where an image's bytes come from: its registry, or an archive on disk
//! (which falls back to the registry for a blob it lacks). The rest of the
//! pull asks a [`BlobSource`] and never which kind it is.

use super::PullError;
use crate::archive::Archive;
use crate::reference::Reference;
use crate::registry::{Manifest, Registries};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::sync::Arc;

/// A blob body from a registry or an archive.
pub type BlobStream = BoxStream<'static, Result<Bytes, PullError>>;

/// A blob opened at an offset.
pub struct Opened {
    /// Where the stream starts: the offset asked for, or 0 when a registry
    /// ignored the range.
    pub start: u64,
    pub stream: BlobStream,
    /// Read from local disk: not downloaded, so neither counted nor
    /// throttled.
    pub local: bool,
    /// The registry host that serves it (`host[:port]`); none from disk.
    pub host: Option<String>,
}

/// One place an image's manifests and blobs are read from.
pub trait BlobSource: Send + Sync + std::fmt::Debug {
    /// For the report: `registry`, or `archive:<path>`.
    fn describe(&self) -> String;

    /// A manifest or index of `image`: by the reference's tag or digest
    /// (`what` as [`Reference::manifest_reference`] gives it), or a
    /// platform manifest by digest.
    fn manifest<'a>(
        &'a self,
        image: &'a Reference,
        what: &'a str,
    ) -> BoxFuture<'a, Result<Manifest, PullError>>;

    /// The blob `digest` from `offset` on, from a host not in `avoid`
    /// while another can serve it. Nothing is digest-checked here.
    fn open<'a>(
        &'a self,
        image: &'a Reference,
        digest: &'a str,
        offset: u64,
        avoid: &'a [String],
    ) -> BoxFuture<'a, Result<Opened, PullError>>;

    /// `len` bytes of a blob at `start`, for size probes; `None` when they
    /// cannot be had cheaply.
    fn range<'a>(
        &'a self,
        image: &'a Reference,
        digest: &'a str,
        start: u64,
        len: u64,
    ) -> BoxFuture<'a, Option<Bytes>>;
}

/// The registry: hosts.toml mirrors, then the server.
#[derive(Clone)]
pub struct RegistrySource(pub Arc<Registries>);

impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistrySource")
    }
}

impl BlobSource for RegistrySource {
    fn describe(&self) -> String {
        "registry".into()
    }

    fn manifest<'a>(
        &'a self,
        image: &'a Reference,
        what: &'a str,
    ) -> BoxFuture<'a, Result<Manifest, PullError>> {
        Box::pin(async move { Ok(self.0.fetch_manifest(image, what).await?) })
    }

    fn open<'a>(
        &'a self,
        image: &'a Reference,
        digest: &'a str,
        offset: u64,
        avoid: &'a [String],
    ) -> BoxFuture<'a, Result<Opened, PullError>> {
        Box::pin(async move {
            let blob = self
                .0
                .open_blob_avoiding(image, digest, offset, avoid)
                .await?;
            Ok(Opened {
                start: blob.start,
                stream: blob.stream.map(|c| c.map_err(PullError::from)).boxed(),
                local: false,
                host: Some(blob.host),
            })
        })
    }

    fn range<'a>(
        &'a self,
        image: &'a Reference,
        digest: &'a str,
        start: u64,
        len: u64,
    ) -> BoxFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            self.0
                .fetch_range(image, digest, start, len)
                .await
                .map_err(|e| tracing::debug!(error = %e, %digest, "size probe"))
                .ok()
                .flatten()
        })
    }
}

/// An archive on disk, with the registry behind it for what it lacks.
#[derive(Debug, Clone)]
pub struct ArchiveSource {
    pub archive: Arc<Archive>,
    pub registry: RegistrySource,
}

impl ArchiveSource {
    /// The archive, when it holds `digest`.
    fn holding(&self, digest: &str) -> Option<&Archive> {
        self.archive.has(digest).then_some(self.archive.as_ref())
    }
}

impl BlobSource for ArchiveSource {
    fn describe(&self) -> String {
        format!("archive:{}", self.archive.path().display())
    }

    fn manifest<'a>(
        &'a self,
        image: &'a Reference,
        what: &'a str,
    ) -> BoxFuture<'a, Result<Manifest, PullError>> {
        let a = &self.archive;
        let digest = if what.starts_with("sha256:") {
            if !a.has(what) {
                // A platform manifest the archive left out.
                return self.registry.manifest(image, what);
            }
            what.to_string()
        } else {
            match a.find(image) {
                Some(img) => img.top.digest.clone(),
                None => {
                    let e = crate::archive::ArchiveError::Invalid {
                        path: a.path().to_path_buf(),
                        message: format!("no image named {image}"),
                    };
                    return Box::pin(async move { Err(e.into()) });
                }
            }
        };
        Box::pin(async move {
            let bytes = a.read(&digest)?;
            Ok(Manifest {
                media_type: crate::manifest::sniff_media_type(
                    a.media_type(&digest).unwrap_or(""),
                    &bytes,
                ),
                digest,
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
        avoid: &'a [String],
    ) -> BoxFuture<'a, Result<Opened, PullError>> {
        let Some(a) = self.holding(digest) else {
            return self.registry.open(image, digest, offset, avoid);
        };
        Box::pin(async move {
            let stream = a.open(digest, offset).await?;
            Ok(Opened {
                start: offset,
                stream: stream.map(|c| c.map_err(PullError::from)).boxed(),
                local: true,
                host: None,
            })
        })
    }

    fn range<'a>(
        &'a self,
        image: &'a Reference,
        digest: &'a str,
        start: u64,
        len: u64,
    ) -> BoxFuture<'a, Option<Bytes>> {
        match self.holding(digest) {
            Some(a) => {
                let bytes = a.read_range(digest, start, len);
                Box::pin(async move { bytes })
            }
            None => self.registry.range(image, digest, start, len),
        }
    }
}
