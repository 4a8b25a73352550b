//! Downloading an image's blobs into containerd's content store: the small
//! ones from memory, layers streamed from their source under the bandwidth
//! cap, resuming a partial ingest with a Range request, and never below
//! the disk reserve.

use super::blobs::{BlobSource, Opened};
use super::resolve::SmallBlob;
use super::PullError;
use crate::containerd::{Containerd, Desc, WriteStart};
use crate::disk::DiskProbe;
use crate::reference::Reference;
use crate::retry::Retry;
use crate::throttle::Bandwidth;
use crate::unpack::Tap;
use futures_util::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Write chunks to containerd in pieces of this size: each layer being
/// downloaded holds about two of them (the buffer, and the message on its
/// way), times the layers side by side.
const CHUNK: usize = 256 << 10;
/// Check free space after this many bytes written.
const DISK_CHECK_EVERY: u64 = 16 << 20;
/// How often free space is read while containerd unpacks.
const DISK_WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// How often a blob another writer holds is looked for.
const LOCK_POLL: Duration = Duration::from_millis(200);

/// The free space a run must leave on the image filesystem.
pub struct Reserve {
    pub disk: Arc<dyn DiskProbe>,
    /// Where the disk probe looks, for messages.
    pub path: String,
    /// Bytes that must stay free.
    pub bytes: u64,
}

impl Reserve {
    /// Fails when writing `more` bytes would leave less free space than
    /// the reserve.
    pub fn check(&self, more: u64) -> Result<(), PullError> {
        let u = self.disk.usage()?;
        if u.available < self.bytes.saturating_add(more) {
            return Err(PullError::DiskFull {
                path: self.path.clone(),
                available: u.available,
                more,
                reserve: self.bytes,
            });
        }
        Ok(())
    }

    /// Resolves with an error once free space drops below the reserve.
    pub async fn watch(&self) -> PullError {
        loop {
            tokio::time::sleep(DISK_WATCH_INTERVAL).await;
            if let Err(e) = self.check(0) {
                return e;
            }
        }
    }
}

/// Writes blobs into the content store.
pub struct Fetcher<'a> {
    pub containerd: &'a Containerd,
    pub retry: &'a Retry,
    pub bandwidth: &'a Bandwidth,
    pub reserve: &'a Reserve,
    /// Where the registry hosts that served layers are noted.
    pub hosts: Option<&'a Hosts>,
}

/// The registry hosts (`host[:port]`) that served one image's layers, and
/// those that served a layer whose digest was wrong.
#[derive(Debug, Default)]
pub struct Hosts {
    pub served: Mutex<BTreeSet<String>>,
    pub rejected: Mutex<BTreeSet<String>>,
}

impl Hosts {
    fn note(set: &Mutex<BTreeSet<String>>, host: &str) {
        set.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host.to_string());
    }

    /// Both sets, sorted, for the report.
    pub fn take(self) -> (Vec<String>, Vec<String>) {
        let list = |m: Mutex<BTreeSet<String>>| {
            m.into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .into_iter()
                .collect()
        };
        (list(self.served), list(self.rejected))
    }
}

impl Fetcher<'_> {
    /// Opens the content writer for `reference`. While another writer
    /// holds it (containerd answers that the ref is locked: kubelet's CRI
    /// pull, or another prewarm, is writing the same blob), waits for that
    /// writer: the blob then exists, or the ref is free. The wait is not a
    /// failed attempt; the run's deadline bounds it.
    async fn writer(
        &self,
        reference: &str,
        desc: &Desc,
        lease: &str,
    ) -> Result<(WriteStart, Option<crate::containerd::ContentWriter>), PullError> {
        let mut said = false;
        loop {
            match self.containerd.content_writer(reference, desc, lease).await {
                Err(e) if e.is_locked() => {
                    if !said {
                        tracing::info!(%reference, "held by another writer; waiting for it");
                        said = true;
                    }
                    if self.containerd.content_info(&desc.digest).await?.is_some() {
                        return Ok((WriteStart::Exists, None));
                    }
                    tokio::time::sleep(LOCK_POLL).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Stores an in-memory blob under its Go-client ref name.
    pub async fn store_small(
        &self,
        kind: &str,
        b: &SmallBlob,
        lease: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), PullError> {
        let reference = format!("{kind}-{}", b.desc.digest);
        self.retry
            .run(&format!("storing {reference}"), PullError::again, |_| {
                let labels = labels.clone();
                let reference = reference.clone();
                async move {
                    match self.writer(&reference, &b.desc, lease).await? {
                        (WriteStart::Exists, _) | (_, None) => {
                            self.containerd
                                .content_label(&b.desc.digest, labels)
                                .await?;
                        }
                        (WriteStart::At(_), Some(mut w)) => {
                            w.write_at(0, b.bytes.to_vec()).await?;
                            if let Err(e) = w.commit(labels).await {
                                self.containerd.content_abort(&reference).await?;
                                return Err(e.into());
                            }
                        }
                    }
                    Ok(())
                }
            })
            .await
    }

    /// Downloads a layer into the content store, resuming a partial ingest
    /// with a Range request. Bytes received are added to `received`, and
    /// passed on to `tap` as they arrive.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_layer(
        &self,
        source: &dyn BlobSource,
        image: &Reference,
        layer: &Desc,
        lease: &str,
        labels: HashMap<String, String>,
        received: &AtomicU64,
        tap: Option<&Tap>,
    ) -> Result<(), PullError> {
        let reference = format!("layer-{}", layer.digest);
        // The hosts whose bytes are in the ingest, and those that served
        // this blob wrong (passed over while another host can serve it).
        let (in_ingest, avoid) = (Mutex::new(Vec::new()), Mutex::new(Vec::<String>::new()));
        let lock =
            |m: &'_ Mutex<Vec<String>>| m.lock().unwrap_or_else(PoisonError::into_inner).clone();
        self.retry
            .run(&format!("fetching {reference}"), PullError::again, |_| {
                let labels = labels.clone();
                let reference = reference.clone();
                let (in_ingest, avoid, lock) = (&in_ingest, &avoid, &lock);
                async move {
                    let (start, writer) = self.writer(&reference, layer, lease).await?;
                    let mut w = match (start, writer) {
                        (WriteStart::Exists, _) | (_, None) => {
                            self.containerd.content_label(&layer.digest, labels).await?;
                            return Ok(());
                        }
                        (WriteStart::At(_), Some(w)) => w,
                    };
                    let offset = w.offset();
                    if offset < layer.size.max(0) as u64 {
                        let Opened {
                            start,
                            mut stream,
                            local,
                            host,
                        } = source
                            .open(image, &layer.digest, offset, &lock(avoid))
                            .await?;
                        if let Some(host) = host {
                            if let Some(hosts) = self.hosts {
                                Hosts::note(&hosts.served, &host);
                            }
                            in_ingest
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(host);
                        }
                        if offset > 0 {
                            tracing::info!(%reference, offset, start, "resuming layer");
                        }
                        let mut pos = start;
                        // Where the next chunk starts in the blob.
                        let mut at = start;
                        let mut since_check = 0u64;
                        let mut buf = Vec::with_capacity(CHUNK);
                        loop {
                            let next = stream.next().await;
                            let done = next.is_none();
                            if let Some(chunk) = next {
                                let chunk = chunk?;
                                if !local {
                                    received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                                    self.bandwidth.take(chunk.len() as u64).await;
                                }
                                if let Some(tap) = tap {
                                    tap.feed(at, &chunk).await;
                                }
                                at += chunk.len() as u64;
                                buf.extend_from_slice(&chunk);
                            }
                            if buf.len() >= CHUNK || (done && !buf.is_empty()) {
                                let len = buf.len() as u64;
                                w.write_at(
                                    pos,
                                    std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)),
                                )
                                .await?;
                                pos += len;
                                since_check += len;
                                if since_check >= DISK_CHECK_EVERY {
                                    since_check = 0;
                                    self.reserve.check(0)?;
                                }
                            }
                            if done {
                                break;
                            }
                        }
                    }
                    tracing::debug!(%reference, "downloaded");
                    if let Err(e) = w.commit(labels).await {
                        // A digest or size mismatch: start that blob over,
                        // from another host while one can serve it.
                        if let Some(tap) = tap {
                            tap.cut().await;
                        }
                        self.containerd.content_abort(&reference).await?;
                        let from = std::mem::take(
                            &mut *in_ingest.lock().unwrap_or_else(PoisonError::into_inner),
                        );
                        for host in &from {
                            tracing::warn!(%host, %reference, "served a blob whose digest is wrong; trying another host");
                            if let Some(hosts) = self.hosts {
                                Hosts::note(&hosts.rejected, host);
                            }
                        }
                        avoid
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .extend(from.iter().cloned());
                        let by = if from.is_empty() {
                            String::new()
                        } else {
                            format!(" (served by {})", from.join(", "))
                        };
                        return Err(PullError::Blob {
                            reference: image.to_string(),
                            digest: layer.digest.clone(),
                            message: format!("rejected at commit{by}, will download again: {e}"),
                        });
                    }
                    Ok(())
                }
            })
            .await
    }
}
