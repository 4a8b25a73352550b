//! The run: resolve and take stock of every image, plan, then pull each
//! planned image under its lease and write its records.

use super::blobs::{ArchiveSource, BlobSource, RegistrySource};
use super::fetch::{Fetcher, Hosts, Reserve};
use super::inventory::{ContainerdStore, ImageStore};
use super::planner::{PlannedImage, Planner, Sources};
use super::progress::Progress;
use super::resolve::{Resolved, Resolver};
use super::stage::{self, Fetched, Staged, Stager};
use super::PullError;
use crate::config::Unpack;
use crate::config::{ImageEntry, Settings};
use crate::containerd::Containerd;
use crate::cri::Cri;
use crate::disk::Statvfs;
use crate::labels::{self, MANAGED_LABEL, PINNED_LABEL, PREWARM_LABEL, PREWARM_PINNED_LABEL};
use crate::plan::{self, Decision};
use crate::reference::Reference;
use crate::registry::Registries;
use crate::report::{ImageReport, ImageStatus, Report, Summary};
use crate::retry::Retry;
use crate::throttle::Bandwidth;
use crate::unpack::Unpacker;
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a containerd that stopped answering is asked again.
const CONTAINERD_POLL: Duration = Duration::from_millis(500);
/// How long CRI may take to notice new image records.
const CRI_VISIBLE_WITHIN: Duration = Duration::from_secs(10);

/// What one image's pull saw, for its report.
#[derive(Default)]
struct Tally {
    /// Who wrote its layers into their snapshots.
    unpacked_by: Mutex<BTreeSet<Unpack>>,
    /// The registry hosts that served its layers, and served them wrong.
    hosts: Hosts,
}

/// Everything a run needs, shared by the image tasks.
pub struct Engine {
    pub settings: Settings,
    pub containerd: Containerd,
    pub cri: Cri,
    pub registry: RegistrySource,
    /// What the store holds, read through the inventory's seam, and the
    /// snapshotter the layers are unpacked into.
    store: ContainerdStore,
    /// Free space that must stay free, and where it is read.
    pub reserve: Reserve,
    pub bandwidth: Bandwidth,
    pub retry: Retry,
    /// Archives that images are imported from before the registry is asked.
    pub archives: Vec<Arc<crate::archive::Archive>>,
    /// Paces containerd's unpacks to `write-bandwidth` where the kernel
    /// cannot cap their buffered writes (cgroup v1, or no cap applied): a
    /// layer starts only once the bytes unpacked so far are back within
    /// the rate. Unlimited otherwise.
    pub unpack_pace: Bandwidth,
    /// Who fills the snapshots (`[pull] unpack`); prewarm's own writes
    /// are held to `write-bandwidth`.
    unpacker: Box<dyn Unpacker>,
    /// `write-bandwidth`, for prewarm's own file writes.
    write_pace: Arc<Bandwidth>,
    /// One lock per layer (chain ID) being unpacked.
    chain_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Engine {
    /// Connects to containerd and CRI and finds the snapshotter and disk.
    pub async fn connect(settings: Settings) -> Result<Self, anyhow::Error> {
        use anyhow::Context;
        // The registry side is configuration only: check it before any
        // daemon is contacted.
        let registries = Registries::new(crate::registry::RegistryOptions {
            config_path: settings.registry.config_path.clone(),
            auth_file: settings.registry.auth_file.clone(),
            connect_timeout: settings.registry.connect_timeout,
            read_timeout: settings.registry.read_timeout,
            user_agent: format!("prewarm/{}", env!("CARGO_PKG_VERSION")),
        })?;
        registries.check_hosts(settings.images.iter().map(|i| i.reference.domain.as_str()))?;
        let containerd = Containerd::connect(&settings.containerd).await?;
        let cri = Cri::new(containerd.channel());
        let image_fs = cri.image_fs().await.with_context(|| {
            format!(
                "asking CRI on {} for the image filesystem",
                settings.containerd.socket.display()
            )
        })?;
        let snapshotter = settings
            .containerd
            .snapshotter
            .clone()
            .unwrap_or(image_fs.snapshotter.clone());
        let write_pace = Arc::new(Bandwidth::new(
            settings
                .throttle
                .io_limits
                .write_bps
                .and_then(std::num::NonZeroU64::new),
        ));
        Ok(Engine {
            store: ContainerdStore {
                containerd: containerd.clone(),
                snapshotter,
            },
            bandwidth: Bandwidth::new(settings.throttle.bandwidth),
            unpack_pace: Bandwidth::new(None),
            chain_locks: Mutex::new(HashMap::new()),
            unpacker: crate::unpack::unpacker(
                settings.pull.unpack,
                containerd.clone(),
                write_pace.clone(),
            ),
            write_pace,
            retry: Retry::new(settings.pull.retries),
            reserve: Reserve {
                path: image_fs.mountpoint.display().to_string(),
                disk: Arc::new(Statvfs(image_fs.mountpoint)),
                bytes: settings.disk.reserve,
            },
            settings,
            containerd,
            cri,
            registry: RegistrySource(Arc::new(registries)),
            archives: Vec::new(),
        })
    }

    /// Resolves images with this run's retries, platform and ratio.
    pub fn resolver(&self) -> Resolver<'_> {
        Resolver {
            retry: &self.retry,
            platform: &self.settings.pull.platform,
            unpack_ratio: self.settings.disk.unpack_ratio,
        }
    }

    /// Where `reference`'s blobs come from: the first archive that holds
    /// the image, else the registry.
    pub fn source_for(&self, reference: &Reference) -> Arc<dyn BlobSource> {
        match self.archives.iter().find(|a| a.find(reference).is_some()) {
            Some(a) => Arc::new(ArchiveSource {
                archive: a.clone(),
                registry: self.registry.clone(),
            }),
            None => Arc::new(self.registry.clone()),
        }
    }

    /// `prewarm plan`: what a pull would do, without writing anything.
    pub async fn plan(&self) -> Result<(plan::Budget, Vec<PlannedImage>), crate::disk::DiskError> {
        let sources = |r: &Reference| self.source_for(r);
        let until = tokio::time::Instant::now() + self.settings.pull.deadline;
        self.planner(&sources).plan_with_budget(Some(until)).await
    }

    /// The disk budget now.
    pub fn budget(&self) -> Result<plan::Budget, crate::disk::DiskError> {
        let sources = |r: &Reference| self.source_for(r);
        self.planner(&sources).budget()
    }

    fn planner<'a>(&'a self, sources: &'a Sources<'a>) -> Planner<'a> {
        Planner {
            settings: &self.settings,
            resolver: self.resolver(),
            sources,
            store: &self.store,
            disk: self.reserve.disk.as_ref(),
        }
    }

    fn fetcher(&self) -> Fetcher<'_> {
        Fetcher {
            containerd: &self.containerd,
            retry: &self.retry,
            bandwidth: &self.bandwidth,
            reserve: &self.reserve,
            hosts: None,
        }
    }

    /// The lock that one unpack of layer `chain` holds.
    fn chain_lock(&self, chain: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.chain_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(chain.to_string())
            .or_default()
            .clone()
    }

    /// `prewarm pull`: the whole run, bounded by the deadline.
    pub async fn pull(
        &self,
        started: Instant,
        stop: impl std::future::Future<Output = String>,
    ) -> Report {
        let started_at = crate::time::rfc3339(std::time::SystemTime::now());
        self.remove_stale_stages().await;
        let sources = |r: &Reference| self.source_for(r);
        let free = || self.reserve.disk.usage().ok().map(|u| u.available);
        let free_before = free();
        let metrics = self.settings.pull.metrics_file.as_deref();
        // On a terminal, a bar redrawn often; else a line at the interval.
        let bar = super::progress::Bar::on_terminal();
        let show = |p: &Progress| {
            let line = p.to_string();
            match &bar {
                Some(bar) => bar.show(p),
                None => tracing::info!("{line}"),
            }
            crate::systemd::notify(&format!("STATUS={line}"));
            if let Some(path) = metrics {
                let running = crate::metrics::Running {
                    bytes: p.done,
                    planned_bytes: p.total,
                    images: p.images_done,
                    planned_images: p.images_total,
                };
                crate::metrics::write(path, &crate::metrics::render_progress(&running));
            }
        };
        let bounds = Bounds {
            concurrency: self.settings.pull.concurrency.get() as usize,
            deadline: self.settings.pull.deadline,
            progress_every: if bar.is_some() {
                super::progress::BAR_EVERY
            } else {
                self.settings.pull.progress_interval
            },
            progress: &show,
        };
        let (images, interrupted) = run_bounded(&self.planner(&sources), self, &bounds, stop).await;
        if let Some(bar) = &bar {
            bar.finish();
        }
        let summary = Summary::of(&images, started.elapsed().as_secs_f64());
        Report {
            version: 1,
            started_at,
            finished_at: crate::time::rfc3339(std::time::SystemTime::now()),
            platform: self.settings.pull.platform.to_string(),
            snapshotter: self.store.snapshotter.clone(),
            bandwidth: self.settings.throttle.bandwidth.map(|b| b.get()),
            interrupted,
            io_cap: None,
            disk: free_before.zip(free()).map(|(free_before, free_after)| {
                crate::report::DiskReport {
                    path: self.reserve.path.clone(),
                    free_before,
                    free_after,
                }
            }),
            warnings: Vec::new(),
            sources: Vec::new(),
            list_revision: None,
            images,
            gc: None,
            summary,
        }
    }

    /// Does this run unpack layers while they download?
    fn stages(&self) -> bool {
        let p = &self.settings.pull;
        p.unpack_while_downloading
            && p.unpack == Unpack::Prewarm
            && self.store.snapshotter == "overlayfs"
    }

    /// Staging snapshots a killed run left: a re-run unpacks those layers
    /// again, so their space comes back now rather than when their lease
    /// expires.
    async fn remove_stale_stages(&self) {
        if !self.stages() {
            return;
        }
        let names = match self
            .containerd
            .snapshot_names(&self.store.snapshotter)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "listing snapshots for stale stages");
                return;
            }
        };
        for name in names.iter().filter(|n| stage::is_stale(n)) {
            tracing::info!(snapshot = %name, "removing a layer a stopped run left half unpacked");
            if let Err(e) = self
                .containerd
                .snapshot_remove(&self.store.snapshotter, name, None)
                .await
            {
                tracing::warn!(error = %e, snapshot = %name, "removing a stale staging snapshot");
            }
        }
    }

    /// Carries out one planned image, counting the bytes it downloads in
    /// `received` (read for the report even when the run is cut short).
    async fn execute(&self, p: &PlannedImage, received: &AtomicU64) -> ImageReport {
        let t0 = Instant::now();
        let mut report = unfinished(&p.entry, "");
        report.reason = None;
        if let Some(r) = &p.resolved {
            report.digest = Some(r.top().desc.digest.clone());
            report.image_id = Some(r.image_id().to_string());
            report.size = r.compressed_size();
            report.origin = Some(r.source.describe());
            report.previous_digest = p.moved_from().map(str::to_string);
        }
        match (&p.decision, &p.resolved) {
            (Err(why), _) => {
                report.status = ImageStatus::Failed;
                report.reason = Some(why.clone());
            }
            (Ok(Decision::Pull), None) => {
                report.status = ImageStatus::Failed;
                report.reason = Some("not resolved".into());
            }
            (Ok(Decision::Present), _) => report.status = ImageStatus::Present,
            (Ok(Decision::Skip(reason)), _) => {
                report.status = ImageStatus::Skipped;
                let mut why = format!(
                    "{}: needs about {} bytes, more than the disk budget left",
                    serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    p.need
                );
                if let Some(by) = &self.settings.disk.limited_by {
                    why.push_str(&format!(" ({by})"));
                }
                report.reason = Some(why);
            }
            (Ok(Decision::Pull), Some(r)) => {
                let tally = Tally::default();
                let pulled = self.pull_resuming(r, received, &tally).await;
                report.unpacked_by = tally
                    .unpacked_by
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner)
                    .into_iter()
                    .map(|u| u.as_str().to_string())
                    .collect();
                (report.hosts, report.rejected_hosts) = tally.hosts.take();
                match pulled {
                    Ok(()) => report.status = ImageStatus::Pulled,
                    Err(e) => {
                        let why = crate::error_chain(&e);
                        tracing::error!(image = %p.entry.reference, error = %why, "pull failed");
                        report.status = ImageStatus::Failed;
                        report.reason = Some(why);
                    }
                }
                report.bytes = received.load(Ordering::Relaxed);
            }
        }
        report.seconds = t0.elapsed().as_secs_f64();
        tracing::info!(
            image = %p.entry.reference,
            status = ?report.status,
            bytes = report.bytes,
            seconds = report.seconds,
            reason = report.reason.as_deref().unwrap_or(""),
            "image done"
        );
        report
    }

    /// [`Engine::pull_image`], again whenever it failed because containerd
    /// stopped answering (restarted, or upgraded, mid-pull): once it
    /// answers again the pull resumes under the same lease, from what the
    /// ingests and snapshots already hold. The run's deadline bounds the
    /// wait.
    async fn pull_resuming(
        &self,
        r: &Resolved,
        downloaded: &AtomicU64,
        tally: &Tally,
    ) -> Result<(), PullError> {
        loop {
            let result = self.pull_image(r, downloaded, tally).await;
            let gone = match &result {
                Err(PullError::Containerd(c))
                | Err(PullError::Unpack(crate::unpack::UnpackError::Containerd(c))) => c.is_gone(),
                _ => false,
            };
            if !gone {
                return result;
            }
            if let Err(e) = &result {
                tracing::warn!(image = %r.entry.reference, error = %crate::error_chain(e), "containerd stopped answering; waiting for it, then resuming");
            }
            // A daemon shutting down may still answer for a moment.
            tokio::time::sleep(CONTAINERD_POLL).await;
            while !self.containerd.answers().await {
                tokio::time::sleep(CONTAINERD_POLL).await;
            }
            tracing::info!(image = %r.entry.reference, "containerd answers again; resuming");
        }
    }

    /// Pulls one image under its own lease. `downloaded` counts bytes
    /// received from the registry, including those of a failed attempt.
    async fn pull_image(
        &self,
        r: &Resolved,
        downloaded: &AtomicU64,
        tally: &Tally,
    ) -> Result<(), PullError> {
        let name = r.entry.reference.to_string();
        let lease = lease_id(&name, &r.top().desc.digest);
        let resumed = self
            .containerd
            .lease_create(
                &lease,
                self.settings.pull.deadline + Duration::from_secs(3600),
            )
            .await?;
        if resumed {
            tracing::info!(image = %name, %lease, "resuming under an existing lease");
        }
        let result = self.pull_under_lease(r, &lease, downloaded, tally).await;
        if let Err(PullError::DiskFull { .. }) = &result {
            // Give the space back: drop the partial ingests and the lease,
            // and let containerd collect what no record holds. Nothing of
            // this image was recorded, so CRI never saw it.
            for layer in &r.layers {
                let _ = self
                    .containerd
                    .content_abort(&format!("layer-{}", layer.digest))
                    .await;
            }
            if let Err(e) = self.containerd.lease_delete(&lease, true).await {
                tracing::warn!(error = %e, %lease, "dropping the lease after a full disk");
            }
        }
        result
    }

    async fn pull_under_lease(
        &self,
        r: &Resolved,
        lease: &str,
        downloaded: &AtomicU64,
        tally: &Tally,
    ) -> Result<(), PullError> {
        let name = r.entry.reference.to_string();
        let lease = lease.to_string();
        let source = self.source_label(r);

        let fetcher = Fetcher {
            hosts: Some(&tally.hosts),
            ..self.fetcher()
        };
        // Manifests and config, from memory, with their GC references.
        // Without `keep-layers` the manifest does not hold its layers'
        // blobs: once the lease is gone, containerd collects them, and the
        // snapshots (held from the config) stay.
        let keep = self.settings.pull.keep_layers;
        let mut manifest_labels = source.clone();
        manifest_labels.insert(labels::GC_REF_CONFIG.into(), r.config.desc.digest.clone());
        for (i, l) in r.layers.iter().enumerate().filter(|_| keep) {
            manifest_labels.insert(
                format!("{}.l.{i}", labels::GC_REF_CONTENT),
                l.digest.clone(),
            );
        }
        fetcher
            .store_small("config", &r.config, &lease, source.clone())
            .await?;
        fetcher
            .store_small("manifest", &r.manifest, &lease, manifest_labels)
            .await?;
        if let Some(index) = &r.index {
            let mut labels = source.clone();
            labels.insert(
                format!("{}.m.0", labels::GC_REF_CONTENT),
                r.manifest.desc.digest.clone(),
            );
            fetcher.store_small("index", index, &lease, labels).await?;
        }

        // Layers: downloads run ahead (bounded), unpacking follows in order;
        // with staging, each layer is unpacked as it downloads, and only
        // moved into place in order.
        let stager = self.stages().then(|| Stager {
            containerd: &self.containerd,
            snapshotter: &self.store.snapshotter,
            fetcher: &fetcher,
            reserve: &self.reserve,
            pace: &self.write_pace,
            unpack_ratio: self.settings.disk.unpack_ratio,
            made: Mutex::new(Vec::new()),
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel(r.layers.len().max(1));
        let producer = async {
            let mut fetched =
                futures_util::stream::iter(r.layers.iter().zip(&r.chain_ids).enumerate())
                    .map(|(i, (layer, chain))| {
                        let (fetcher, lease, source, stager) =
                            (&fetcher, &lease, source.clone(), stager.as_ref());
                        async move {
                            if self.store.has_snapshot(chain).await? {
                                // A layer already unpacked needs no blob
                                // unless blobs are kept.
                                if !keep {
                                    return Ok(Fetched::Blob);
                                }
                            } else if let Some(stager) = stager {
                                return stager.stage(r, i, lease, source, downloaded).await;
                            }
                            fetcher
                                .fetch_layer(
                                    r.source.as_ref(),
                                    &r.entry.reference,
                                    layer,
                                    lease,
                                    source,
                                    downloaded,
                                    None,
                                )
                                .await?;
                            Ok(Fetched::Blob)
                        }
                    })
                    .buffered(self.settings.pull.layer_concurrency.get() as usize);
            while let Some(result) = fetched.next().await {
                if tx.send(result).await.is_err() {
                    break;
                }
            }
        };
        let consumer = async {
            let mut parent = String::new();
            for (i, layer) in r.layers.iter().enumerate() {
                let fetched: Fetched = rx.recv().await.ok_or_else(|| PullError::Blob {
                    reference: name.clone(),
                    digest: layer.digest.clone(),
                    message: "download stopped".into(),
                })??;
                let staged = match fetched {
                    Fetched::Staged(s) => Some(s),
                    Fetched::Blob => None,
                };
                let chain = &r.chain_ids[i];
                // One unpack per layer at a time, across images: an image
                // on the same base waits for it and finds it done, rather
                // than writing it a second time beside it.
                let chain_lock = self.chain_lock(chain);
                let _unpacking = chain_lock.lock().await;
                let done = self.store.has_snapshot(chain).await?;
                // Check there is room first, and watch free space while the
                // layer is written (a staged layer is written already).
                let estimate = if done || staged.is_some() {
                    0
                } else {
                    r.layer_unpacked(i, self.settings.disk.unpack_ratio)
                };
                if !done && staged.is_none() {
                    self.unpack_pace.take(0).await;
                    self.reserve.check(estimate)?;
                }
                let t0 = Instant::now();
                // Already unpacked (checked above, under the lock): nothing
                // to write.
                let by = if done {
                    None
                } else {
                    let unpack = self.containerd.unpack_layer(
                        &self.store.snapshotter,
                        layer,
                        &r.diff_ids[i],
                        chain,
                        &parent,
                        &lease,
                        |mounts| self.fill(staged.as_ref(), i, layer, mounts, &lease),
                    );
                    tokio::select! {
                        unpacked = unpack => unpacked?,
                        full = self.reserve.watch() => return Err(full),
                    }
                };
                if let (Some(s), Some(stager)) = (&staged, &stager) {
                    // Empty now, or never moved: either way done with.
                    stager.remove(&s.key, &lease).await;
                }
                if let Some(by) = by {
                    tally
                        .unpacked_by
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(by);
                }
                tracing::debug!(layer = %layer.digest, seconds = t0.elapsed().as_secs_f64(), "unpacked");
                // containerd's unpack writes are paid for after the fact;
                // prewarm's own were paced as they were written.
                if self.unpack_pace.rate().is_some() && by == Some(Unpack::Containerd) {
                    // What the layer wrote is paid for by the next unpack.
                    let written = match self
                        .containerd
                        .snapshot_usage(&self.store.snapshotter, chain)
                        .await
                    {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the unpacked size; pacing on the estimate");
                            estimate
                        }
                    };
                    self.unpack_pace.reserve(written, Instant::now());
                }
                // The blob is there to label unless it was never fetched:
                // not kept, and the layer already unpacked.
                if keep || by.is_some() {
                    self.containerd
                        .content_label(
                            &layer.digest,
                            HashMap::from([(labels::UNCOMPRESSED.into(), r.diff_ids[i].clone())]),
                        )
                        .await?;
                }
                parent = chain.clone();
            }
            Ok::<(), PullError>(())
        };
        let layers = {
            tokio::pin!(producer, consumer);
            let mut producer_done = false;
            loop {
                tokio::select! {
                    _ = &mut producer, if !producer_done => producer_done = true,
                    result = &mut consumer => break result,
                }
            }
        };
        // Stages a failure left (the layers after it): their space back now.
        if let Some(stager) = &stager {
            stager.clear(&lease).await;
        }
        layers?;
        if let Some(top_chain) = r.chain_ids.last() {
            self.containerd
                .content_label(
                    &r.config.desc.digest,
                    HashMap::from([(
                        format!("{}{}", labels::GC_REF_SNAPSHOT, self.store.snapshotter),
                        top_chain.clone(),
                    )]),
                )
                .await?;
        }

        // Records last, once everything they point at exists.
        let mut labels = HashMap::from([(MANAGED_LABEL.to_string(), "managed".to_string())]);
        if self.settings.containerd.pin {
            labels.insert(PINNED_LABEL.into(), "pinned".into());
            labels.insert(PREWARM_PINNED_LABEL.into(), "true".into());
        }
        labels.insert(PREWARM_LABEL.into(), "true".into());
        for (i, record) in r.record_names().into_iter().enumerate() {
            if i == 1 {
                crate::failpoint::pause("between-records");
            }
            self.containerd
                .image_put(&record, &r.top().desc, &labels)
                .await?;
        }
        // Without kept blobs, collect them now: the rest of the run gets
        // the space back.
        self.containerd.lease_delete(&lease, !keep).await?;
        self.wait_visible(r).await
    }

    /// Fills the prepared snapshot `mounts` with layer `i`: moves the
    /// staged copy in where the mounts can take it, and otherwise has the
    /// unpacker write it from the content store.
    fn fill<'a>(
        &'a self,
        staged: Option<&'a Staged>,
        i: usize,
        layer: &'a crate::containerd::Desc,
        mounts: Vec<crate::containerd::Mount>,
        lease: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(String, Unpack), crate::unpack::UnpackError>>
    {
        if let Some(s) = staged {
            match stage::place(s, i, &mounts) {
                Ok(true) => {
                    let said = (s.applied.diff_id.clone(), Unpack::Prewarm);
                    return Box::pin(async move { Ok(said) });
                }
                Ok(false) => {
                    tracing::debug!(layer = %layer.digest, ?mounts, "the snapshot cannot take the staged layer: unpacking it again");
                }
                Err(source) => {
                    // Half moved, perhaps: never written over.
                    let layer = layer.digest.clone();
                    return Box::pin(async move {
                        Err(crate::unpack::UnpackError::Place { layer, source })
                    });
                }
            }
        }
        self.unpacker.apply(layer, mounts, lease)
    }

    /// Waits (bounded) until CRI answers for the image by every name.
    async fn wait_visible(&self, r: &Resolved) -> Result<(), PullError> {
        let until = Instant::now() + CRI_VISIBLE_WITHIN;
        for name in r.record_names() {
            loop {
                match self.cri.image_status(&name).await {
                    Ok(Some(img)) if img.id == r.image_id() => break,
                    Ok(_) if Instant::now() < until => {}
                    Err(e) if Instant::now() < until => tracing::debug!(%e, "CRI not ready"),
                    _ => {
                        return Err(PullError::NotVisible {
                            name,
                            within: CRI_VISIBLE_WITHIN,
                        })
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn source_label(&self, r: &Resolved) -> HashMap<String, String> {
        let host = r
            .entry
            .reference
            .domain
            .split(':')
            .next()
            .unwrap_or_default();
        HashMap::from([(
            format!("{}{host}", labels::DISTRIBUTION_SOURCE),
            r.entry.reference.repository.clone(),
        )])
    }
}

/// The last stage of a run, one planned image at a time: the engine's
/// pull, or a stand-in in tests.
pub trait ImageStep {
    /// Runs `p`, adding the bytes it downloads to `received` as they come.
    fn run<'a>(
        &'a self,
        p: &'a PlannedImage,
        received: &'a AtomicU64,
    ) -> LocalBoxFuture<'a, ImageReport>;
}

impl ImageStep for Engine {
    fn run<'a>(
        &'a self,
        p: &'a PlannedImage,
        received: &'a AtomicU64,
    ) -> LocalBoxFuture<'a, ImageReport> {
        Box::pin(self.execute(p, received))
    }
}

/// How a run is bounded and watched.
pub struct Bounds<'a> {
    /// Images pulled side by side.
    pub concurrency: usize,
    pub deadline: Duration,
    /// How often `progress` is told where the run stands.
    pub progress_every: Duration,
    pub progress: &'a dyn Fn(&Progress),
}

/// Plans, then runs `step` on each planned image, `concurrency` at a time,
/// until all are done, the deadline passes or `stop` resolves (with why),
/// telling `progress` where it stands as it goes. Every listed image gets a
/// report: one not finished is failed, with why the run ended, and what is
/// known of it.
pub async fn run_bounded(
    planner: &Planner<'_>,
    step: &dyn ImageStep,
    bounds: &Bounds<'_>,
    stop: impl std::future::Future<Output = String>,
) -> (Vec<ImageReport>, Option<String>) {
    let deadline = bounds.deadline;
    let mut results: Vec<Option<ImageReport>> = Vec::new();
    let mut planned: Vec<PlannedImage> = Vec::new();
    let mut received: Vec<AtomicU64> = Vec::new();
    let interrupted = {
        let work = async {
            planned = match planner.plan(None).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "reading disk usage");
                    return;
                }
            };
            tracing::debug!(images = planned.len(), "planned");
            results = vec![None; planned.len()];
            received = planned.iter().map(|_| AtomicU64::new(0)).collect();
            let keep = planner.settings.pull.keep_layers;
            let total: u64 = planned
                .iter()
                .filter(|p| p.decision == Ok(Decision::Pull))
                .filter_map(|p| p.resolved.as_ref())
                .map(|r| r.to_download(keep))
                .sum();
            let running: Vec<std::sync::atomic::AtomicBool> = planned
                .iter()
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect();
            let finished = std::sync::atomic::AtomicUsize::new(0);
            let results_ref = &std::sync::Mutex::new(&mut results);
            let (received, running, finished, planned) = (&received, &running, &finished, &planned);
            let pulls = futures_util::stream::iter(planned.iter().enumerate()).for_each_concurrent(
                bounds.concurrency.max(1),
                |(i, p)| async move {
                    running[i].store(true, Ordering::Relaxed);
                    let report = step.run(p, &received[i]).await;
                    running[i].store(false, Ordering::Relaxed);
                    finished.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut g) = results_ref.lock() {
                        g[i] = Some(report);
                    }
                },
            );
            let at = || Progress {
                done: received.iter().map(|r| r.load(Ordering::Relaxed)).sum(),
                total,
                rate: 0.0,
                images_done: finished.load(Ordering::Relaxed),
                images_total: planned.len(),
                in_flight: planned
                    .iter()
                    .zip(running)
                    .filter(|(_, r)| r.load(Ordering::Relaxed))
                    .map(|(p, _)| p.entry.reference.to_string())
                    .collect(),
            };
            let ticker = async {
                let mut last = (tokio::time::Instant::now(), 0u64);
                loop {
                    tokio::time::sleep(bounds.progress_every).await;
                    let mut p = at();
                    let now = tokio::time::Instant::now();
                    let secs = now.duration_since(last.0).as_secs_f64();
                    p.rate = p.done.saturating_sub(last.1) as f64 / secs.max(1e-3);
                    last = (now, p.done);
                    (bounds.progress)(&p);
                }
            };
            tokio::select! {
                _ = pulls => {}
                _ = ticker => {}
            }
            (bounds.progress)(&at());
        };
        tokio::select! {
            _ = work => None,
            _ = tokio::time::sleep(deadline) => Some(format!("deadline of {deadline:?} passed")),
            why = stop => Some(why),
        }
    };
    let images = if planned.is_empty() {
        planner
            .settings
            .images
            .iter()
            .map(|e| unfinished(e, interrupted.as_deref().unwrap_or("not started")))
            .collect()
    } else {
        planned
            .iter()
            .zip(results)
            .zip(&received)
            .map(|((p, r), received)| {
                r.unwrap_or_else(|| {
                    let mut u = unfinished(&p.entry, interrupted.as_deref().unwrap_or("not run"));
                    // What an image cut short had downloaded is on the node.
                    u.bytes = received.load(Ordering::Relaxed);
                    if let Some(r) = &p.resolved {
                        u.digest = Some(r.top().desc.digest.clone());
                        u.image_id = Some(r.image_id().to_string());
                        u.size = r.compressed_size();
                    }
                    u
                })
            })
            .collect()
    };
    (images, interrupted)
}

fn unfinished(e: &ImageEntry, why: &str) -> ImageReport {
    ImageReport {
        reference: e.reference.to_string(),
        required: e.required,
        priority: e.priority,
        digest: None,
        image_id: None,
        status: ImageStatus::Failed,
        reason: Some(why.to_string()),
        bytes: 0,
        size: 0,
        seconds: 0.0,
        origin: None,
        previous_digest: None,
        unpacked_by: Vec::new(),
        hosts: Vec::new(),
        rejected_hosts: Vec::new(),
    }
}

/// A deterministic lease id per image, so a re-run finds the lease (and the
/// partial ingests under it) of a run that crashed.
pub fn lease_id(name: &str, top_digest: &str) -> String {
    let h = hex::encode(Sha256::digest(format!("{name}\n{top_digest}").as_bytes()));
    format!("prewarm-{}", &h[..24])
}

#[cfg(test)]
mod tests {
    use super::super::fakes::{FakeRegistry, World};
    use super::*;

    const REG: &str = "registry.test";

    /// Pulls at once (100 bytes), except images whose name has `slow`: they
    /// never end; and `late`: 50 bytes, 12 s, then 50 more.
    struct Step;

    impl ImageStep for Step {
        fn run<'a>(
            &'a self,
            p: &'a PlannedImage,
            received: &'a AtomicU64,
        ) -> LocalBoxFuture<'a, ImageReport> {
            Box::pin(async move {
                let name = &p.entry.reference.repository;
                if name.contains("slow") {
                    // Part of it downloaded, then stuck.
                    received.fetch_add(12345, Ordering::Relaxed);
                    futures_util::future::pending::<()>().await;
                } else if name.contains("late") {
                    received.fetch_add(50, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(12)).await;
                    received.fetch_add(50, Ordering::Relaxed);
                } else {
                    received.fetch_add(100, Ordering::Relaxed);
                }
                let mut r = unfinished(&p.entry, "");
                r.reason = None;
                r.status = ImageStatus::Pulled;
                r
            })
        }
    }

    fn world(hang: Option<&str>) -> World {
        let mut reg = FakeRegistry::default();
        reg.push(&format!("{REG}/fast:1"), &[&[1u8; 100]]);
        reg.push(&format!("{REG}/slow:1"), &[&[2u8; 100]]);
        if let Some(h) = hang {
            reg.hang.insert(h.to_string());
        }
        World::new(
            &[
                &format!("ref = \"{REG}/fast:1\""),
                &format!("ref = \"{REG}/slow:1\""),
            ],
            reg,
            1 << 30,
        )
    }

    async fn run(
        w: &World,
        deadline: Duration,
        stop_after: Option<Duration>,
    ) -> (Vec<ImageReport>, Option<String>) {
        let (images, interrupted, _) = run_watched(w, deadline, stop_after).await;
        (images, interrupted)
    }

    /// [`run`], with the progress lines told.
    async fn run_watched(
        w: &World,
        deadline: Duration,
        stop_after: Option<Duration>,
    ) -> (Vec<ImageReport>, Option<String>, Vec<Progress>) {
        let sources = w.sources();
        let stop = async move {
            match stop_after {
                Some(d) => tokio::time::sleep(d).await,
                None => futures_util::future::pending().await,
            }
            "stopped by SIGTERM".to_string()
        };
        let lines = std::cell::RefCell::new(Vec::new());
        let note = |p: &Progress| lines.borrow_mut().push(p.clone());
        let bounds = Bounds {
            concurrency: 2,
            deadline,
            progress_every: Duration::from_secs(5),
            progress: &note,
        };
        let (images, interrupted) = run_bounded(&w.planner(&sources), &Step, &bounds, stop).await;
        (images, interrupted, lines.into_inner())
    }

    fn by_name<'a>(images: &'a [ImageReport], name: &str) -> &'a ImageReport {
        let full = format!("{REG}/{name}:1");
        images
            .iter()
            .find(|i| i.reference == full)
            .unwrap_or_else(|| panic!("no report for {full}: {images:#?}"))
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_the_run_and_every_image_is_reported() {
        let w = world(None);
        let (images, interrupted) = run(&w, Duration::from_secs(600), None).await;
        assert_eq!(interrupted.as_deref(), Some("deadline of 600s passed"));
        assert_eq!(images.len(), 2);
        assert_eq!(by_name(&images, "fast").status, ImageStatus::Pulled);
        let slow = by_name(&images, "slow");
        assert_eq!(slow.status, ImageStatus::Failed);
        assert_eq!(slow.reason.as_deref(), Some("deadline of 600s passed"));
        assert_eq!(slow.bytes, 12345, "what it downloaded is reported");
        // Resolved before the deadline: what it is, is known.
        assert!(slow.digest.is_some() && slow.image_id.is_some());
        assert!(slow.size > 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_while_resolving_fails_every_listed_image() {
        let w = world(Some(&format!("{REG}/slow:1")));
        let (images, interrupted) = run(&w, Duration::from_secs(60), None).await;
        assert_eq!(interrupted.as_deref(), Some("deadline of 60s passed"));
        assert_eq!(images.len(), 2);
        for i in &images {
            assert_eq!(i.status, ImageStatus::Failed, "{i:?}");
            assert_eq!(i.reason.as_deref(), Some("deadline of 60s passed"));
            assert_eq!(i.digest, None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_run_with_its_reason() {
        let w = world(None);
        let (images, interrupted) =
            run(&w, Duration::from_secs(3600), Some(Duration::from_secs(5))).await;
        assert_eq!(interrupted.as_deref(), Some("stopped by SIGTERM"));
        assert_eq!(by_name(&images, "fast").status, ImageStatus::Pulled);
        let slow = by_name(&images, "slow");
        assert_eq!(slow.reason.as_deref(), Some("stopped by SIGTERM"));
        assert_eq!(slow.bytes, 12345, "what it downloaded is reported");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_is_told_at_the_interval_and_at_the_end() {
        let mut reg = FakeRegistry::default();
        reg.push(&format!("{REG}/fast:1"), &[&[1u8; 100]]);
        reg.push(&format!("{REG}/late:1"), &[&[2u8; 100]]);
        let w = World::new(
            &[
                &format!("ref = \"{REG}/fast:1\""),
                &format!("ref = \"{REG}/late:1\""),
            ],
            reg,
            1 << 30,
        );
        let (_, interrupted, lines) = run_watched(&w, Duration::from_secs(60), None).await;
        assert_eq!(interrupted, None);
        // At 5 s and 10 s, then once more when the run ends (12 s).
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let (first, last) = (&lines[0], &lines[2]);
        assert_eq!((first.done, first.total), (150, 200));
        assert_eq!(first.percent(), 75);
        assert_eq!((first.images_done, first.images_total), (1, 2));
        assert_eq!(first.in_flight, [format!("{REG}/late:1")]);
        // 150 bytes in the first 5 s; nothing since in the next 5.
        assert!((first.rate - 30.0).abs() < 0.01, "{}", first.rate);
        assert_eq!(lines[1].rate, 0.0);
        assert_eq!(lines[1].eta(), None);
        assert_eq!((last.done, last.percent(), last.images_done), (200, 100, 2));
        assert!(last.in_flight.is_empty());
        assert!(lines.windows(2).all(|w| w[0].percent() <= w[1].percent()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_that_ends_in_time_is_not_interrupted() {
        let mut reg = FakeRegistry::default();
        reg.push(&format!("{REG}/fast:1"), &[&[1u8; 100]]);
        let w = World::new(&[&format!("ref = \"{REG}/fast:1\"")], reg, 1 << 30);
        let (images, interrupted) = run(&w, Duration::from_secs(60), None).await;
        assert_eq!(interrupted, None);
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].status, ImageStatus::Pulled);
    }
}
