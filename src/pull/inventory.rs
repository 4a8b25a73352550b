//! What the node already holds: image records, blobs in the content store,
//! and unpacked layers. Read through an [`ImageStore`], so the planner's
//! callers can be tested without containerd.

use super::resolve::{Resolved, Stored};
use crate::containerd::{Containerd, ContainerdError};
use crate::labels::PINNED_LABEL;
use crate::reference::Reference;
use futures_util::future::BoxFuture;
use std::collections::HashMap;

/// An image record: the digest it points at, and its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub target: Option<String>,
    pub labels: HashMap<String, String>,
}

/// The reads the inventory makes of the image store.
pub trait ImageStore: Send + Sync {
    /// The record named `name`, if there is one.
    fn record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Record>, ContainerdError>>;
    /// Is the blob in the content store (committed)?
    fn has_blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, ContainerdError>>;
    /// Is the layer with this chain ID unpacked (a committed snapshot)?
    fn has_snapshot<'a>(&'a self, chain: &'a str) -> BoxFuture<'a, Result<bool, ContainerdError>>;
    /// A small blob (a manifest or a config) the store holds, at most
    /// `limit` bytes, checked against `digest`; `None` when it is not there
    /// (or not as it should be), so that it is fetched.
    fn small_blob<'a>(
        &'a self,
        _digest: &'a str,
        _limit: u64,
    ) -> BoxFuture<'a, Option<bytes::Bytes>> {
        Box::pin(async { None })
    }
}

/// containerd, with the snapshotter the images are unpacked into.
#[derive(Clone)]
pub struct ContainerdStore {
    pub containerd: Containerd,
    pub snapshotter: String,
}

impl ImageStore for ContainerdStore {
    fn record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Record>, ContainerdError>> {
        Box::pin(async move {
            Ok(self.containerd.image_get(name).await?.map(|i| Record {
                target: i.target.map(|t| t.digest),
                labels: i.labels,
            }))
        })
    }

    fn has_blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, ContainerdError>> {
        Box::pin(async move { Ok(self.containerd.content_info(digest).await?.is_some()) })
    }

    fn has_snapshot<'a>(&'a self, chain: &'a str) -> BoxFuture<'a, Result<bool, ContainerdError>> {
        Box::pin(self.containerd.snapshot_exists(&self.snapshotter, chain))
    }

    fn small_blob<'a>(
        &'a self,
        digest: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, Option<bytes::Bytes>> {
        Box::pin(async move {
            use futures_util::StreamExt;
            let info = self.containerd.content_info(digest).await.ok()??;
            if info.size < 0 || info.size as u64 > limit {
                return None;
            }
            let mut stream = self.containerd.content_read(digest).await.ok()?;
            let mut buf = Vec::with_capacity(info.size as usize);
            while let Some(chunk) = stream.next().await {
                buf.extend_from_slice(&chunk.ok()?);
                if buf.len() as u64 > limit {
                    return None;
                }
            }
            (crate::digest::sha256(&buf) == digest).then(|| bytes::Bytes::from(buf))
        })
    }
}

/// Is the image complete in the store and recorded under every name
/// (pinned too, when `pin`)?
pub async fn is_present(
    store: &dyn ImageStore,
    r: &Resolved,
    pin: bool,
) -> Result<bool, ContainerdError> {
    let top = &r.top().desc.digest;
    for name in r.record_names() {
        match store.record(&name).await? {
            Some(rec) if rec.target.as_ref() == Some(top) => {
                if pin && rec.labels.get(PINNED_LABEL).map(String::as_str) != Some("pinned") {
                    return Ok(false);
                }
            }
            _ => return Ok(false),
        }
    }
    match r.chain_ids.last() {
        Some(top_chain) => store.has_snapshot(top_chain).await,
        None => Ok(true),
    }
}

/// The digest the node's `repo:tag` record points at, if any.
pub async fn held_digest(
    store: &dyn ImageStore,
    r: &Reference,
) -> Result<Option<String>, ContainerdError> {
    let Some(tag) = r.tag_name() else {
        return Ok(None);
    };
    Ok(store.record(&tag).await?.and_then(|rec| rec.target))
}

/// Finds which layers of a not yet present image the store already holds,
/// as blobs and unpacked, so that the plan charges only the rest.
pub async fn take_stock(store: &dyn ImageStore, r: &mut Resolved) -> Result<(), ContainerdError> {
    let mut stored = Vec::with_capacity(r.layers.len());
    for (layer, chain) in r.layers.iter().zip(&r.chain_ids) {
        stored.push(Stored {
            content: store.has_blob(&layer.digest).await?,
            snapshot: store.has_snapshot(chain).await?,
        });
    }
    r.stored = stored;
    Ok(())
}
