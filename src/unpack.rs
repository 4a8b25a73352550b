//! Filling a prepared snapshot with a layer: by prewarm itself (`[pull]
//! unpack = "prewarm"`, the default), which decompresses the blob and
//! applies it with [`crate::extract`] straight into the snapshot's
//! directory, as containerd's own apply does; or by containerd's Diff
//! service.
//!
//! The in-process path takes a snapshot whose mounts are one bind mount
//! (overlayfs's first layer, or any native snapshot: the directory itself,
//! whiteouts applied by removal) or one overlay mount (its `upperdir`,
//! with the `lowerdir`s as parents, whiteouts in overlay form). Any other
//! mounts (devmapper, zfs, btrfs, or options it does not know) go to the
//! Diff service, and the report says which one ran. Either way the caller
//! checks the diff ID before the snapshot is committed.

use crate::config::Unpack;
use crate::containerd::{Containerd, ContainerdError, Desc, Mount};
use crate::extract::{self, Applied, ExtractError, Target, Whiteouts};
use crate::manifest::{layer_compression, Compression};
use crate::throttle::Bandwidth;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("unpacking layer {layer}")]
    Extract {
        layer: String,
        #[source]
        source: ExtractError,
    },
    #[error("unpacking layer {layer}: media type {media_type:?} is not a layer prewarm can apply")]
    MediaType { layer: String, media_type: String },
    #[error("moving the unpacked layer {layer} into its snapshot")]
    Place {
        layer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unpacking layer {layer}: the unpacking thread failed: {message}")]
    Thread { layer: String, message: String },
}

impl UnpackError {
    /// Worth another try: a broken stream, or containerd's own retryable
    /// answers. An entry the layer cannot write is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            UnpackError::Containerd(e) => e.is_retryable(),
            UnpackError::Extract { source, .. } => matches!(source, ExtractError::Read(_)),
            _ => false,
        }
    }
}

/// Fills a prepared snapshot with a layer. Returns the diff ID of what was
/// written and who wrote it; the caller checks the diff ID before the
/// snapshot is committed.
pub trait Unpacker: Send + Sync {
    fn apply<'a>(
        &'a self,
        layer: &'a Desc,
        mounts: Vec<Mount>,
        lease: &'a str,
    ) -> BoxFuture<'a, Result<(String, Unpack), UnpackError>>;
}

/// containerd's Diff service (`Diff.Apply`): any snapshotter.
#[derive(Clone)]
pub struct DiffService(pub Containerd);

impl Unpacker for DiffService {
    fn apply<'a>(
        &'a self,
        layer: &'a Desc,
        mounts: Vec<Mount>,
        lease: &'a str,
    ) -> BoxFuture<'a, Result<(String, Unpack), UnpackError>> {
        Box::pin(async move {
            let diff_id = self.0.diff_apply(layer, mounts, lease).await?;
            Ok((diff_id, Unpack::Containerd))
        })
    }
}

/// prewarm's own extractor, where the mounts are ones it knows; the Diff
/// service for any others. Its file writes are held to `pace`.
pub struct InProcess {
    pub diff: DiffService,
    pub pace: Arc<Bandwidth>,
}

impl Unpacker for InProcess {
    fn apply<'a>(
        &'a self,
        layer: &'a Desc,
        mounts: Vec<Mount>,
        lease: &'a str,
    ) -> BoxFuture<'a, Result<(String, Unpack), UnpackError>> {
        let Some(target) = target_of(&mounts) else {
            tracing::debug!(layer = %layer.digest, ?mounts, "not an overlayfs snapshot: containerd unpacks");
            return self.diff.apply(layer, mounts, lease);
        };
        Box::pin(async move {
            let diff_id = in_process(&self.diff.0, layer, target, self.pace.clone()).await?;
            Ok((diff_id, Unpack::Prewarm))
        })
    }
}

/// The unpacker `[pull] unpack` names.
pub fn unpacker(how: Unpack, c: Containerd, pace: Arc<Bandwidth>) -> Box<dyn Unpacker> {
    let diff = DiffService(c);
    match how {
        Unpack::Containerd => Box::new(diff),
        Unpack::Prewarm => Box::new(InProcess { diff, pace }),
    }
}

/// Where the in-process extractor writes, if the mounts are ones it knows.
pub fn target_of(mounts: &[Mount]) -> Option<Target> {
    let [m] = mounts else { return None };
    match m.r#type.as_str() {
        "bind" | "rbind" => {
            // A first layer: the snapshot's directory itself.
            let known = m
                .options
                .iter()
                .all(|o| matches!(o.as_str(), "rbind" | "bind" | "rw"));
            known.then(|| Target {
                root: PathBuf::from(&m.source),
                parents: Vec::new(),
                whiteouts: Whiteouts::Remove,
                parents_later: false,
            })
        }
        "overlay" => {
            let mut upper = None;
            let mut lowers = Vec::new();
            for o in &m.options {
                match o.split_once('=') {
                    Some(("upperdir", v)) => upper = Some(PathBuf::from(v)),
                    Some(("lowerdir", v)) => lowers = v.split(':').map(PathBuf::from).collect(),
                    Some(("workdir", _)) | Some(("index", "off")) => {}
                    // userxattr, idmapped layers, volatile, …: containerd's.
                    _ => return None,
                }
            }
            Some(Target {
                root: upper?,
                parents: lowers,
                whiteouts: Whiteouts::Overlay,
                parents_later: false,
            })
        }
        _ => None,
    }
}

/// Reads the blob from containerd's content store, decompresses it and
/// applies it to `target`, its file writes held to `pace`: these writes
/// are prewarm's, which an IO cap on containerd's cgroup does not hold.
async fn in_process(
    c: &Containerd,
    layer: &Desc,
    target: Target,
    pace: Arc<Bandwidth>,
) -> Result<String, UnpackError> {
    let mut stream = c.content_read(&layer.digest).await?;
    // A few chunks in flight: the network side never waits on the disk for
    // long, and memory stays bounded.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let feed = async move {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| std::io::Error::other(crate::error_chain(&e)));
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    };
    // The store's stream ends where the blob does.
    let input = Tapped {
        rx,
        ended: Arc::new(AtomicBool::new(true)),
    };
    let (_, applied) = tokio::join!(feed, extract_stream(layer, input, target, pace));
    Ok(applied?.diff_id)
}

/// A layer's compressed bytes handed to an extraction while they download:
/// [`Tap::feed`] passes on each chunk at the offset it was written, and
/// [`Tap::close`] ends the stream once the blob is committed. The
/// extraction sees every byte of the blob once and in order, or an error:
/// a gap (a download that resumed past what the tap saw), a rejected blob,
/// or a download that stopped.
pub struct Tap {
    state: tokio::sync::Mutex<TapState>,
    ended: Arc<AtomicBool>,
}

struct TapState {
    tx: Option<tokio::sync::mpsc::Sender<std::io::Result<Bytes>>>,
    /// Bytes of the blob passed on so far.
    pos: u64,
}

/// The receiving end of a [`Tap`], for [`extract_stream`].
pub struct Tapped {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    ended: Arc<AtomicBool>,
}

impl Tap {
    pub fn new() -> (Tap, Tapped) {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let ended = Arc::new(AtomicBool::new(false));
        let tap = Tap {
            state: tokio::sync::Mutex::new(TapState {
                tx: Some(tx),
                pos: 0,
            }),
            ended: ended.clone(),
        };
        (tap, Tapped { rx, ended })
    }

    /// `chunk`, which starts at byte `start` of the blob: what the tap has
    /// not passed on yet goes on; a gap before it closes the tap.
    pub async fn feed(&self, start: u64, chunk: &Bytes) {
        let mut st = self.state.lock().await;
        let Some(tx) = st.tx.clone() else { return };
        let end = start + chunk.len() as u64;
        if start > st.pos {
            tracing::debug!(
                start,
                seen = st.pos,
                "the download skipped what the unpack has not seen"
            );
            st.tx = None;
            return;
        }
        if end <= st.pos {
            return;
        }
        let fresh = chunk.slice((st.pos - start) as usize..);
        if tx.send(Ok(fresh)).await.is_err() {
            // The extraction ended early: it has its own error.
            st.tx = None;
            return;
        }
        st.pos = end;
    }

    /// What was passed on is not the blob (it was rejected at commit):
    /// the extraction fails.
    pub async fn cut(&self) {
        self.state.lock().await.tx = None;
    }

    /// The blob of `size` bytes is committed. Ends the extraction's stream
    /// and returns true when the tap passed on all of it; otherwise the
    /// extraction fails, and the layer must be read from the store.
    pub async fn close(&self, size: u64) -> bool {
        let mut st = self.state.lock().await;
        let whole = st.tx.is_some() && st.pos == size;
        self.ended.store(whole, Ordering::Release);
        st.tx = None;
        whole
    }
}

/// Decompresses `input` and applies it to `target` on two blocking threads
/// (one decompresses, the other hashes and writes files, so that both
/// cores work on a layer), the file writes held to `pace`.
pub async fn extract_stream(
    layer: &Desc,
    input: Tapped,
    target: Target,
    pace: Arc<Bandwidth>,
) -> Result<Applied, UnpackError> {
    let compression =
        layer_compression(&layer.media_type).ok_or_else(|| UnpackError::MediaType {
            layer: layer.digest.clone(),
            media_type: layer.media_type.clone(),
        })?;
    let digest = layer.digest.clone();
    let (plain_tx, plain_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Bytes>>(PLAIN_DEPTH);
    let decompress = tokio::task::spawn_blocking(move || {
        let Tapped { mut rx, ended } = input;
        let blob = ChunkReader::new(move || match rx.blocking_recv() {
            None if !ended.load(Ordering::Acquire) => Some(Err(std::io::Error::other(
                "the download stopped before the layer's end",
            ))),
            next => next,
        });
        let decoder: std::io::Result<Box<dyn Read>> = match compression {
            Compression::None => Ok(Box::new(blob)),
            Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(blob))),
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(blob).map(|d| Box::new(d) as Box<dyn Read>)
            }
        };
        let mut decoder = match decoder {
            Ok(d) => d,
            Err(e) => {
                let _ = plain_tx.send(Err(e));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; PLAIN_CHUNK];
            match read_full(&mut decoder, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if plain_tx.send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = plain_tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let extract = tokio::task::spawn_blocking(move || {
        let tar = ChunkReader::new(move || plain_rx.recv().ok());
        let hold = |bytes: u64| {
            let wait = pace.reserve(bytes, std::time::Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        };
        extract::apply(&target, tar, &hold)
    });
    let applied = extract.await;
    // The decompressor ends once the extractor has dropped its end.
    let _ = decompress.await;
    let applied = applied
        .map_err(|e| UnpackError::Thread {
            layer: digest.clone(),
            message: e.to_string(),
        })?
        .map_err(|source| UnpackError::Extract {
            layer: digest.clone(),
            source,
        })?;
    tracing::debug!(layer = %digest, entries = applied.entries, bytes = applied.size, "unpacked in process");
    Ok(applied)
}

/// The decompressed stream goes to the extracting thread in chunks of this
/// size, at most `PLAIN_DEPTH` of them waiting: what one layer being
/// unpacked holds, times the layers unpacked side by side.
const PLAIN_CHUNK: usize = 256 << 10;
const PLAIN_DEPTH: usize = 4;

/// Reads until `buf` is full or the stream ends.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A blocking reader over chunks that `next` hands over (from the async
/// side, or from the decompressing thread); `None` is the end.
struct ChunkReader<F> {
    next: F,
    chunk: Bytes,
}

impl<F: FnMut() -> Option<std::io::Result<Bytes>>> ChunkReader<F> {
    fn new(next: F) -> Self {
        ChunkReader {
            next,
            chunk: Bytes::new(),
        }
    }
}

impl<F: FnMut() -> Option<std::io::Result<Bytes>>> Read for ChunkReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match (self.next)() {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Everything the receiving end gets, and whether it ended cleanly.
    async fn drain(t: Tapped) -> (Vec<u8>, bool) {
        let Tapped { mut rx, ended } = t;
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        (got, ended.load(Ordering::Acquire))
    }

    #[tokio::test]
    async fn a_tap_passes_each_byte_once_across_a_resumed_download() {
        let (tap, tapped) = Tap::new();
        let reader = tokio::spawn(drain(tapped));
        tap.feed(0, &Bytes::from_static(b"abcd")).await;
        // A retry resumed where the store had it (before what the tap saw).
        tap.feed(2, &Bytes::from_static(b"cdef")).await;
        tap.feed(6, &Bytes::from_static(b"gh")).await;
        assert!(tap.close(8).await);
        assert_eq!(reader.await.unwrap(), (b"abcdefgh".to_vec(), true));
    }

    #[tokio::test]
    async fn a_gap_a_cut_or_a_short_blob_fails_the_extraction() {
        // A download that resumed past what the tap saw.
        let (tap, tapped) = Tap::new();
        let reader = tokio::spawn(drain(tapped));
        tap.feed(4, &Bytes::from_static(b"efgh")).await;
        assert!(!tap.close(8).await);
        assert_eq!(reader.await.unwrap(), (Vec::new(), false));
        // A blob rejected at commit.
        let (tap, tapped) = Tap::new();
        let reader = tokio::spawn(drain(tapped));
        tap.feed(0, &Bytes::from_static(b"abcd")).await;
        tap.cut().await;
        tap.feed(4, &Bytes::from_static(b"efgh")).await;
        assert!(!tap.close(8).await);
        assert_eq!(reader.await.unwrap(), (b"abcd".to_vec(), false));
        // Fewer bytes than the blob has (it already existed, say).
        let (tap, tapped) = Tap::new();
        let reader = tokio::spawn(drain(tapped));
        tap.feed(0, &Bytes::from_static(b"abcd")).await;
        assert!(!tap.close(8).await);
        assert!(!reader.await.unwrap().1);
    }

    #[test]
    fn mounts_the_extractor_can_write_to() {
        let first = target_of(&[mount("bind", "/c/snapshots/1/fs", &["rbind", "rw"])]).unwrap();
        assert_eq!(first.root, PathBuf::from("/c/snapshots/1/fs"));
        assert_eq!(first.whiteouts, Whiteouts::Remove);
        let later = target_of(&[mount(
            "overlay",
            "overlay",
            &[
                "index=off",
                "workdir=/c/snapshots/3/work",
                "upperdir=/c/snapshots/3/fs",
                "lowerdir=/c/snapshots/2/fs:/c/snapshots/1/fs",
            ],
        )])
        .unwrap();
        assert_eq!(later.root, PathBuf::from("/c/snapshots/3/fs"));
        assert_eq!(
            later.parents,
            [
                PathBuf::from("/c/snapshots/2/fs"),
                PathBuf::from("/c/snapshots/1/fs")
            ]
        );
        assert_eq!(later.whiteouts, Whiteouts::Overlay);
        // Anything else is containerd's to apply.
        for other in [
            vec![mount(
                "overlay",
                "overlay",
                &["upperdir=/u", "lowerdir=/l", "userxattr"],
            )],
            vec![mount("overlay", "overlay", &["lowerdir=/l"])],
            vec![mount("ext4", "/dev/mapper/thin-1", &[])],
            vec![mount("bind", "/a", &["rbind", "ro"])],
            vec![],
            vec![mount("bind", "/a", &[]), mount("bind", "/b", &[])],
        ] {
            assert!(target_of(&other).is_none(), "{other:?}");
        }
    }
}
