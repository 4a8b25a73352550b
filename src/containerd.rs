//! containerd's gRPC API: leases, content, snapshots, diff and images, in
//! kubelet's namespace.
//!
//! Every call carries `containerd-namespace`; calls that create content or
//! snapshots also carry `containerd-lease` so nothing is collected before the
//! image records exist.

use crate::time::rfc3339;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest, UsageRequest,
};
use containerd_client::services::v1::{
    AbortRequest, ApplyRequest, CreateImageRequest, CreateRequest, DeleteImageRequest,
    DeleteRequest, GetImageRequest, Image, Info, InfoRequest, ListContainersRequest,
    ListImagesRequest, ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use containerd_client::types::Descriptor as PbDescriptor;
pub use containerd_client::types::Mount;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// A containerd call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("connecting to containerd at {socket}: {message}")]
    Connect { socket: PathBuf, message: String },
    #[error("containerd {op} {subject}: {status}")]
    Call {
        op: &'static str,
        subject: String,
        status: Status,
    },
    #[error("containerd {op} {subject}: {message}")]
    Protocol {
        op: &'static str,
        subject: String,
        message: String,
    },
}

impl ContainerdError {
    fn call(op: &'static str, subject: impl Into<String>) -> impl FnOnce(Status) -> Self {
        let subject = subject.into();
        move |status| ContainerdError::Call {
            op,
            subject,
            status,
        }
    }

    /// The gRPC code, when containerd answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ContainerdError::Call { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// Worth trying again: a locked ingest, a lost connection, a digest
    /// that did not verify.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code(),
            Some(Code::Unavailable | Code::FailedPrecondition | Code::Aborted | Code::Unknown)
        ) || matches!(self, ContainerdError::Connect { .. })
    }

    /// containerd's answer for an ingest ref another writer holds.
    pub fn is_locked(&self) -> bool {
        matches!(self, ContainerdError::Call { status, .. }
            if status.code() == Code::Unavailable && status.message().contains("locked"))
    }

    /// containerd itself went away mid-call (stopped, restarted, crashed):
    /// the stream closed, or the connection failed. Not an answer it gave.
    pub fn is_gone(&self) -> bool {
        match self {
            ContainerdError::Connect { .. } => true,
            ContainerdError::Protocol { message, .. } => message == CLOSED,
            ContainerdError::Call { status, .. } => match status.code() {
                Code::Unavailable => !self.is_locked(),
                Code::Unknown | Code::Cancelled | Code::Internal => {
                    let m = status.message().to_ascii_lowercase();
                    [
                        "transport",
                        "connection",
                        "broken pipe",
                        "h2 protocol",
                        "stream",
                    ]
                    .iter()
                    .any(|w| m.contains(w))
                }
                _ => false,
            },
        }
    }
}

const CLOSED: &str = "containerd closed the stream";

/// A descriptor as containerd wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

impl From<&Desc> for PbDescriptor {
    fn from(d: &Desc) -> Self {
        PbDescriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            annotations: HashMap::new(),
        }
    }
}

/// What a content writer found when it opened a ref.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteStart {
    /// The blob is already committed.
    Exists,
    /// Continue writing at this offset (0 for a fresh ingest).
    At(u64),
}

/// A connection to containerd in one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
}

/// An open, lock-step `Content.Write` stream for one ref.
pub struct ContentWriter {
    tx: tokio::sync::mpsc::Sender<WriteContentRequest>,
    rx: tonic::Streaming<WriteContentResponse>,
    reference: String,
    expected: String,
    total: i64,
    offset: u64,
    /// A WRITE sent whose answer has not been read yet.
    unanswered: bool,
}

impl Containerd {
    /// Connects as `[containerd]` says.
    pub async fn connect(c: &crate::config::ContainerdSettings) -> Result<Self, ContainerdError> {
        Self::connect_to(&c.socket, &c.namespace, c.connect_timeout).await
    }

    /// Connects to the socket in `namespace`, waiting at most `timeout`.
    pub async fn connect_to(
        socket: &Path,
        namespace: &str,
        timeout: Duration,
    ) -> Result<Self, ContainerdError> {
        let err = |message: String| ContainerdError::Connect {
            socket: socket.to_path_buf(),
            message,
        };
        let channel = tokio::time::timeout(timeout, containerd_client::connect(socket))
            .await
            .map_err(|_| err(format!("no answer within {timeout:?}")))?
            .map_err(|e| err(crate::error_chain(&e)))?;
        let c = Containerd {
            channel,
            namespace: namespace.to_string(),
        };
        // A socket that accepts but does not speak gRPC fails here, bounded.
        let mut v =
            containerd_client::services::v1::version_client::VersionClient::new(c.channel.clone());
        tokio::time::timeout(timeout, v.version(Request::new(())))
            .await
            .map_err(|_| err(format!("version call unanswered within {timeout:?}")))?
            .map_err(|s| err(s.to_string()))?;
        Ok(c)
    }

    /// Does containerd answer (its Version call, within two seconds)? The
    /// channel reconnects by itself once the daemon is back.
    pub async fn answers(&self) -> bool {
        let mut v = containerd_client::services::v1::version_client::VersionClient::new(
            self.channel.clone(),
        );
        matches!(
            tokio::time::timeout(Duration::from_secs(2), v.version(Request::new(()))).await,
            Ok(Ok(_))
        )
    }

    /// The channel, for CRI calls over the same socket.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        if let Ok(v) = self.namespace.parse() {
            md.insert("containerd-namespace", v);
        }
        if let Some(Ok(v)) = lease.map(str::parse) {
            md.insert("containerd-lease", v);
        }
        r
    }

    // ---- leases

    /// Creates lease `id`, or reuses it when it exists (a resumed run).
    /// Returns true when it already existed.
    pub async fn lease_create(&self, id: &str, expire: Duration) -> Result<bool, ContainerdError> {
        let expire_at = std::time::SystemTime::now() + expire;
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), rfc3339(expire_at))]);
        let r = LeasesClient::new(self.channel())
            .create(self.req(
                CreateRequest {
                    id: id.to_string(),
                    labels,
                },
                None,
            ))
            .await;
        match r {
            Ok(_) => Ok(false),
            Err(s) if s.code() == Code::AlreadyExists => Ok(true),
            Err(s) => Err(ContainerdError::call("creating lease", id)(s)),
        }
    }

    /// Deletes lease `id`; a missing lease is fine. With `sync`, containerd
    /// collects garbage before answering.
    pub async fn lease_delete(&self, id: &str, sync: bool) -> Result<(), ContainerdError> {
        match LeasesClient::new(self.channel())
            .delete(self.req(
                DeleteRequest {
                    id: id.to_string(),
                    sync,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::call("deleting lease", id)(s)),
        }
    }

    // ---- content

    /// Content info, or None when the blob is not in the store.
    pub async fn content_info(&self, digest: &str) -> Result<Option<Info>, ContainerdError> {
        match ContentClient::new(self.channel())
            .info(self.req(
                InfoRequest {
                    digest: digest.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::call("reading content info", digest)(s)),
        }
    }

    /// Sets `labels` on a committed blob, leaving its other labels alone.
    pub async fn content_label(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        ContentClient::new(self.channel())
            .update(self.req(
                UpdateRequest {
                    info: Some(Info {
                        digest: digest.to_string(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("labelling content", digest))?;
        Ok(())
    }

    /// Drops an ingest so the next write starts from zero.
    pub async fn content_abort(&self, reference: &str) -> Result<(), ContainerdError> {
        match ContentClient::new(self.channel())
            .abort(self.req(
                AbortRequest {
                    r#ref: reference.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::call("aborting ingest", reference)(s)),
        }
    }

    /// Opens a write for `reference` and sends STAT. On
    /// [`WriteStart::Exists`] there is nothing to write.
    pub async fn content_writer(
        &self,
        reference: &str,
        expected: &Desc,
        lease: &str,
    ) -> Result<(WriteStart, Option<ContentWriter>), ContainerdError> {
        let (tx, rx_req) = tokio::sync::mpsc::channel::<WriteContentRequest>(1);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            total: expected.size,
            expected: expected.digest.clone(),
            ..Default::default()
        };
        tx.send(stat)
            .await
            .map_err(|_| closed("opening write", reference))?;
        let stream = futures_util::stream::unfold(rx_req, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        let resp = ContentClient::new(self.channel())
            .write(self.req(stream, Some(lease)))
            .await;
        let mut rx = match resp {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok((WriteStart::Exists, None)),
            Err(s) => return Err(ContainerdError::call("opening write", reference)(s)),
        };
        let first = match rx.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(closed("stat", reference)),
            Err(s) if s.code() == Code::AlreadyExists => return Ok((WriteStart::Exists, None)),
            Err(s) => return Err(ContainerdError::call("stat", reference)(s)),
        };
        let offset = u64::try_from(first.offset).unwrap_or(0);
        Ok((
            WriteStart::At(offset),
            Some(ContentWriter {
                tx,
                rx,
                reference: reference.to_string(),
                expected: expected.digest.clone(),
                total: expected.size,
                offset,
                unanswered: false,
            }),
        ))
    }

    /// containerd's version, as its Version service tells it.
    pub async fn version(&self) -> Result<String, ContainerdError> {
        let r = containerd_client::services::v1::version_client::VersionClient::new(self.channel())
            .version(Request::new(()))
            .await
            .map_err(ContainerdError::call("asking the version", "containerd"))?;
        Ok(r.into_inner().version)
    }

    // ---- snapshots and diff

    /// Does snapshot `key` exist?
    pub async fn snapshot_exists(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<bool, ContainerdError> {
        Ok(self.snapshot_parent(snapshotter, key).await?.is_some())
    }

    /// The parent of snapshot `key` (empty for a base layer), or `None`
    /// when there is no such snapshot.
    pub async fn snapshot_parent(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<Option<String>, ContainerdError> {
        match SnapshotsClient::new(self.channel())
            .stat(self.req(
                StatSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(Some(
                r.into_inner().info.map(|i| i.parent).unwrap_or_default(),
            )),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::call("stat snapshot", key)(s)),
        }
    }

    /// Disk bytes snapshot `key` holds by itself (not its parents).
    pub async fn snapshot_usage(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<u64, ContainerdError> {
        let r = SnapshotsClient::new(self.channel())
            .usage(self.req(
                UsageRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.to_string(),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("reading snapshot usage", key))?;
        Ok(r.into_inner().size.max(0) as u64)
    }

    /// Unpacks one layer on `parent` into the committed snapshot
    /// `chain_id`: prepares a snapshot, lets `apply` fill it through its
    /// mounts, checks the diff ID `apply` returns against `diff_id`, and
    /// commits. Whatever fails, the prepared snapshot is removed, so nothing
    /// half-written is ever committed. Returns what `apply` said, or `None`
    /// when the layer was already unpacked.
    #[allow(clippy::too_many_arguments)]
    pub async fn unpack_layer<T, E, F, Fut>(
        &self,
        snapshotter: &str,
        layer: &Desc,
        diff_id: &str,
        chain_id: &str,
        parent: &str,
        lease: &str,
        apply: F,
    ) -> Result<Option<T>, E>
    where
        E: From<ContainerdError>,
        F: FnOnce(Vec<Mount>) -> Fut,
        Fut: std::future::Future<Output = Result<(String, T), E>>,
    {
        if self.snapshot_exists(snapshotter, chain_id).await? {
            return Ok(None);
        }
        let key = unique_key("extract", chain_id);
        let labels = HashMap::from([(
            "containerd.io/snapshot.ref".to_string(),
            chain_id.to_string(),
        )]);
        let Some(mounts) = self
            .snapshot_prepare(snapshotter, &key, parent, labels, lease)
            .await?
        else {
            return Ok(None);
        };
        let result = async {
            let (applied, said) = apply(mounts).await?;
            if applied != diff_id {
                return Err(ContainerdError::Protocol {
                    op: "applying layer",
                    subject: layer.digest.clone(),
                    message: format!("unpacked to {applied} but the image config says {diff_id}"),
                }
                .into());
            }
            match SnapshotsClient::new(self.channel())
                .commit(self.req(
                    CommitSnapshotRequest {
                        snapshotter: snapshotter.to_string(),
                        name: chain_id.to_string(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    },
                    Some(lease),
                ))
                .await
            {
                Ok(_) => Ok(Some(said)),
                Err(s) if s.code() == Code::AlreadyExists => Ok(None),
                Err(s) => Err(ContainerdError::call("committing snapshot", chain_id)(s).into()),
            }
        }
        .await;
        if !matches!(result, Ok(Some(_))) {
            let _ = self.snapshot_remove(snapshotter, &key, Some(lease)).await;
        }
        result
    }

    /// Prepares the active snapshot `key` on `parent` (empty: none) under
    /// `lease`, and returns its mounts; `None` when `key` exists already.
    pub async fn snapshot_prepare(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<Option<Vec<Mount>>, ContainerdError> {
        match SnapshotsClient::new(self.channel())
            .prepare(self.req(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels,
                },
                Some(lease),
            ))
            .await
        {
            Ok(r) => Ok(Some(r.into_inner().mounts)),
            Err(s) if s.code() == Code::AlreadyExists => Ok(None),
            Err(s) => Err(ContainerdError::call("preparing snapshot", key)(s)),
        }
    }

    /// Removes snapshot `key`; one that is not there is no error.
    pub async fn snapshot_remove(
        &self,
        snapshotter: &str,
        key: &str,
        lease: Option<&str>,
    ) -> Result<(), ContainerdError> {
        match SnapshotsClient::new(self.channel())
            .remove(self.req(
                RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.to_string(),
                },
                lease,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::call("removing snapshot", key)(s)),
        }
    }

    /// The names (keys) of every snapshot of `snapshotter`.
    pub async fn snapshot_names(&self, snapshotter: &str) -> Result<Vec<String>, ContainerdError> {
        let mut stream = SnapshotsClient::new(self.channel())
            .list(self.req(
                ListSnapshotsRequest {
                    snapshotter: snapshotter.to_string(),
                    filters: Vec::new(),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("listing snapshots", snapshotter))?
            .into_inner();
        let mut names = Vec::new();
        while let Some(page) = stream
            .message()
            .await
            .map_err(ContainerdError::call("listing snapshots", snapshotter))?
        {
            names.extend(page.info.into_iter().map(|i| i.name));
        }
        Ok(names)
    }

    /// Fills prepared snapshot `mounts` with `layer` through containerd's
    /// Diff service. Returns the diff ID containerd computed.
    pub async fn diff_apply(
        &self,
        layer: &Desc,
        mounts: Vec<Mount>,
        lease: &str,
    ) -> Result<String, ContainerdError> {
        let applied = DiffClient::new(self.channel())
            .apply(self.req(
                ApplyRequest {
                    diff: Some(layer.into()),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                Some(lease),
            ))
            .await
            .map_err(ContainerdError::call("applying layer", &layer.digest))?
            .into_inner()
            .applied
            .ok_or_else(|| ContainerdError::Protocol {
                op: "applying layer",
                subject: layer.digest.clone(),
                message: "no descriptor in the answer".into(),
            })?;
        Ok(applied.digest)
    }

    /// Reads a blob from the content store, as a stream of chunks.
    pub async fn content_read(
        &self,
        digest: &str,
    ) -> Result<
        impl futures_util::Stream<Item = Result<bytes::Bytes, ContainerdError>>,
        ContainerdError,
    > {
        use futures_util::StreamExt;
        let stream = ContentClient::new(self.channel())
            .read(self.req(
                ReadContentRequest {
                    digest: digest.to_string(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("reading content", digest))?
            .into_inner();
        let digest = digest.to_string();
        Ok(stream.map(move |m| {
            m.map(|r| bytes::Bytes::from(r.data))
                .map_err(ContainerdError::call("reading content", &digest))
        }))
    }

    // ---- images

    /// The image record `name`, if any.
    pub async fn image_get(&self, name: &str) -> Result<Option<Image>, ContainerdError> {
        match ImagesClient::new(self.channel())
            .get(self.req(
                GetImageRequest {
                    name: name.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::call("reading image", name)(s)),
        }
    }

    /// Creates the image record `name`, or points an existing one at
    /// `target` and sets `labels` on it.
    pub async fn image_put(
        &self,
        name: &str,
        target: &Desc,
        labels: &HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let image = Image {
            name: name.to_string(),
            labels: labels.clone(),
            target: Some(target.into()),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel());
        match images
            .create(self.req(
                CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                None,
            ))
            .await
        {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(ContainerdError::call("creating image", name)(s)),
        }
        let mut paths = vec!["target".to_string()];
        paths.extend(labels.keys().map(|k| format!("labels.{k}")));
        images
            .update(self.req(
                UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask { paths }),
                    source_date_epoch: None,
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("updating image", name))?;
        Ok(())
    }
}

impl Containerd {
    /// Every image record in the namespace.
    pub async fn image_list(&self) -> Result<Vec<Image>, ContainerdError> {
        Ok(ImagesClient::new(self.channel())
            .list(self.req(ListImagesRequest { filters: vec![] }, None))
            .await
            .map_err(ContainerdError::call("listing images", &self.namespace))?
            .into_inner()
            .images)
    }

    /// Deletes the image record `name` (a missing one is fine). With
    /// `sync`, containerd collects garbage before answering.
    pub async fn image_delete(&self, name: &str, sync: bool) -> Result<(), ContainerdError> {
        match ImagesClient::new(self.channel())
            .delete(self.req(
                DeleteImageRequest {
                    name: name.to_string(),
                    sync,
                    target: None,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::call("deleting image", name)(s)),
        }
    }

    /// Removes `keys` from the labels of image record `name`, leaving the
    /// rest alone (an update with a field mask).
    pub async fn image_remove_labels(
        &self,
        name: &str,
        keys: &[&str],
    ) -> Result<(), ContainerdError> {
        let paths = keys.iter().map(|k| format!("labels.{k}")).collect();
        // The record goes back with its target: containerd 1.7 dereferences
        // the target of every update, whatever the mask says, and a request
        // without one crashes the daemon (nil pointer in Images.Update).
        let Some(current) = self.image_get(name).await? else {
            return Ok(());
        };
        ImagesClient::new(self.channel())
            .update(self.req(
                UpdateImageRequest {
                    image: Some(Image {
                        name: name.to_string(),
                        target: current.target,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                    source_date_epoch: None,
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("unlabelling image", name))?;
        Ok(())
    }

    /// (id, image) of every container record in the namespace, running or
    /// not.
    pub async fn container_images(&self) -> Result<Vec<(String, String)>, ContainerdError> {
        Ok(ContainersClient::new(self.channel())
            .list(self.req(ListContainersRequest { filters: vec![] }, None))
            .await
            .map_err(ContainerdError::call("listing containers", &self.namespace))?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| (c.id, c.image))
            .collect())
    }
}

impl ContentWriter {
    /// The offset the next write goes to.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    async fn send(
        &mut self,
        op: &'static str,
        req: WriteContentRequest,
    ) -> Result<(), ContainerdError> {
        self.tx
            .send(req)
            .await
            .map_err(|_| closed(op, &self.reference))
    }

    async fn answer(&mut self, op: &'static str) -> Result<WriteContentResponse, ContainerdError> {
        match self.rx.message().await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(closed(op, &self.reference)),
            Err(s) => Err(ContainerdError::call(op, self.reference.clone())(s)),
        }
    }

    /// Reads the answer to the WRITE still in flight, if any.
    async fn settle(&mut self) -> Result<(), ContainerdError> {
        if self.unanswered {
            self.unanswered = false;
            self.answer("writing content").await?;
        }
        Ok(())
    }

    /// Writes `data` at `offset`. An offset of 0 on a partly written ingest
    /// truncates it (the registry ignored our Range request).
    ///
    /// containerd answers each request in order; one WRITE may be in flight
    /// while the next is sent, so reading the next chunk from the registry
    /// overlaps containerd's write of the last one.
    pub async fn write_at(&mut self, offset: u64, data: Vec<u8>) -> Result<(), ContainerdError> {
        let len = data.len() as u64;
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            offset: offset as i64,
            data,
            ..Default::default()
        };
        self.send("writing content", req).await?;
        let earlier = std::mem::replace(&mut self.unanswered, true);
        if earlier {
            self.answer("writing content").await?;
        }
        self.offset = offset + len;
        Ok(())
    }

    /// Commits: containerd checks size and digest. `labels` are set on the
    /// blob. An `AlreadyExists` answer means someone else committed it.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<(), ContainerdError> {
        let req = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: self.offset as i64,
            labels,
            ..Default::default()
        };
        self.settle().await?;
        self.send("committing content", req).await?;
        match self.answer("committing content").await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(Code::AlreadyExists) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A snapshot key no other run chooses: `prefix`, the time in
/// nanoseconds, and `what`.
pub fn unique_key(prefix: &str, what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{nanos}-{what}")
}

fn closed(op: &'static str, subject: &str) -> ContainerdError {
    ContainerdError::Protocol {
        op,
        subject: subject.to_string(),
        message: CLOSED.into(),
    }
}
