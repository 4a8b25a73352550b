//! Planning a run: resolve every listed image, take stock of what the node
//! holds, then let [`crate::plan`] decide within the disk budget.

use super::blobs::BlobSource;
use super::inventory::{self, ImageStore};
use super::resolve::{Resolved, Resolver};
use crate::config::{ImageEntry, Settings};
use crate::disk::DiskProbe;
use crate::plan::{self, Budget, Candidate, Decision};
use crate::reference::Reference;
use futures_util::StreamExt;
use std::sync::Arc;

/// An image's fate before execution.
enum Prepared {
    Ready {
        r: Box<Resolved>,
        present: bool,
        /// What the node's `repo:tag` record points at now.
        held: Option<String>,
    },
    Failed(String),
    /// The same image as another entry (same repository and digest); it
    /// was merged into that one.
    Same,
}

/// Where each image's blobs come from.
pub type Sources<'a> = dyn Fn(&Reference) -> Arc<dyn BlobSource> + Send + Sync + 'a;

/// Everything planning reads: the list and limits, the image sources, the
/// store and the disk.
pub struct Planner<'a> {
    pub settings: &'a Settings,
    pub resolver: Resolver<'a>,
    pub sources: &'a Sources<'a>,
    pub store: &'a dyn ImageStore,
    pub disk: &'a dyn DiskProbe,
}

impl Planner<'_> {
    /// The disk budget now.
    pub fn budget(&self) -> Result<Budget, crate::disk::DiskError> {
        let u = self.disk.usage()?;
        Ok(Budget {
            total: u.total,
            available: u.available,
            reserve: self.settings.disk.reserve,
            max_usage_percent: self.settings.disk.max_usage_percent,
        })
    }

    /// Resolves every listed image and checks which are present; an image
    /// not prepared by `until` fails with the deadline as its reason.
    async fn prepare(&self, until: Option<tokio::time::Instant>) -> Vec<Prepared> {
        let n = self.settings.pull.concurrency.get() as usize * 2;
        let deadline = self.settings.pull.deadline;
        let prepared = futures_util::stream::iter(self.settings.images.iter())
            .map(|entry| async move {
                let one = self.prepare_one(entry);
                match until {
                    Some(until) => tokio::time::timeout_at(until, one)
                        .await
                        .unwrap_or_else(|_| {
                            Prepared::Failed(format!(
                                "deadline of {deadline:?} passed while resolving"
                            ))
                        }),
                    None => one.await,
                }
            })
            .buffered(n.max(1))
            .collect::<Vec<_>>()
            .await;
        merge_same_images(prepared)
    }

    /// Resolves one listed image and checks whether it is present.
    async fn prepare_one(&self, entry: &crate::config::ImageEntry) -> Prepared {
        let source = (self.sources)(&entry.reference);
        let mut r = match self.resolver.resolve(entry, source, self.store).await {
            Ok(r) => r,
            Err(e) => return Prepared::Failed(crate::error_chain(&e)),
        };
        let held = match inventory::held_digest(self.store, &entry.reference).await {
            Ok(h) => h,
            Err(e) => return Prepared::Failed(crate::error_chain(&e)),
        };
        let present =
            match inventory::is_present(self.store, &r, self.settings.containerd.pin).await {
                Ok(p) => p,
                Err(e) => return Prepared::Failed(crate::error_chain(&e)),
            };
        if !present {
            if let Err(e) = inventory::take_stock(self.store, &mut r).await {
                return Prepared::Failed(crate::error_chain(&e));
            }
            self.resolver.read_unpacked_sizes(&mut r).await;
        }
        Prepared::Ready {
            r: Box::new(r),
            present,
            held,
        }
    }

    /// Resolves, takes stock and plans every listed image, without
    /// writing anything: what `prewarm plan` shows and `prewarm pull` does.
    /// Bounded by `until` (`prewarm plan`: the run's deadline from its
    /// start; `pull` bounds the whole run itself).
    pub async fn plan(
        &self,
        until: Option<tokio::time::Instant>,
    ) -> Result<Vec<PlannedImage>, crate::disk::DiskError> {
        Ok(self.plan_with_budget(until).await?.1)
    }

    /// [`Planner::plan`], with the disk budget it planned against (read
    /// once, so that what `prewarm plan` shows is what it decided on).
    pub async fn plan_with_budget(
        &self,
        until: Option<tokio::time::Instant>,
    ) -> Result<(Budget, Vec<PlannedImage>), crate::disk::DiskError> {
        let prepared = self.prepare(until).await;
        let budget = self.budget()?;
        Ok((budget, self.decide(prepared, budget)))
    }

    fn decide(&self, prepared: Vec<Prepared>, budget: Budget) -> Vec<PlannedImage> {
        let ratio = self.settings.disk.unpack_ratio;
        let candidates: Vec<Candidate> = prepared
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Prepared::Ready { r, present, .. } => Some(Candidate {
                    position: i,
                    priority: r.entry.priority,
                    required: r.entry.required,
                    present: *present,
                    parts: r.parts(ratio, self.settings.pull.keep_layers),
                }),
                Prepared::Failed(_) | Prepared::Same => None,
            })
            .collect();
        let steps = plan::plan(&candidates, budget);
        let mut slots: Vec<Option<Prepared>> = prepared.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(slots.len());
        for step in steps {
            if let Some(Prepared::Ready { r, held, .. }) = slots[step.position].take() {
                out.push(PlannedImage {
                    entry: r.entry.clone(),
                    resolved: Some(r),
                    decision: Ok(step.decision),
                    need: step.need,
                    held,
                });
            }
        }
        for (i, slot) in slots.into_iter().enumerate() {
            if let Some(Prepared::Failed(why)) = slot {
                out.push(PlannedImage {
                    entry: self.settings.images[i].clone(),
                    resolved: None,
                    decision: Err(why),
                    need: 0,
                    held: None,
                });
            }
        }
        out
    }
}

/// Folds an entry into another naming the same image (same repository,
/// same resolved digest) whose record names cover its own: a digest-only
/// entry into a tagged one, or `repo:tag` into `repo:tag@digest`. The image
/// is planned once, with the higher priority, required if either is.
fn merge_same_images(mut prepared: Vec<Prepared>) -> Vec<Prepared> {
    // Tagged entries by (repository, digest), and by tag too, in list
    // order: each entry looks only at the entries naming its image.
    type Key = (String, String, Option<String>);
    let mut tagged: std::collections::HashMap<Key, Vec<usize>> = Default::default();
    for (j, p) in prepared.iter().enumerate() {
        if let Prepared::Ready { r, .. } = p {
            let e = &r.entry.reference;
            if e.tag.is_some() {
                let digest = r.top().desc.digest.clone();
                for tag in [None, e.tag.clone()] {
                    let key = (e.name(), digest.clone(), tag);
                    tagged.entry(key).or_default().push(j);
                }
            }
        }
    }
    for i in 0..prepared.len() {
        let (entry, digest) = match &prepared[i] {
            Prepared::Ready { r, .. } => (r.entry.clone(), r.top().desc.digest.clone()),
            _ => continue,
        };
        // A digest-only entry goes into any tagged one; a tagged one only
        // into one with the same tag.
        let key = (
            entry.reference.name(),
            digest.clone(),
            entry.reference.tag.clone(),
        );
        let target = tagged.get(&key).and_then(|js| {
            js.iter()
                .copied()
                .find(|&j| j != i && matches!(prepared[j], Prepared::Ready { .. }))
        });
        if let Some(j) = target {
            if let Prepared::Ready { r, .. } = &mut prepared[j] {
                tracing::info!(image = %r.entry.reference, %digest, "listed twice (by tag and by digest); planned once");
                r.entry.absorb(&entry);
            }
            prepared[i] = Prepared::Same;
        }
    }
    prepared
}

/// One image with its plan decision (or why it could not be planned).
#[derive(Debug)]
pub struct PlannedImage {
    pub entry: ImageEntry,
    pub resolved: Option<Box<Resolved>>,
    pub decision: Result<Decision, String>,
    pub need: u64,
    /// What the node's `repo:tag` record pointed at before the run.
    pub held: Option<String>,
}

impl PlannedImage {
    /// The digest the tag pointed at on the node, when the registry (or
    /// archive) now resolves it elsewhere: drift.
    pub fn moved_from(&self) -> Option<&str> {
        let now = &self.resolved.as_ref()?.top().desc.digest;
        self.held.as_deref().filter(|h| h != now)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fakes::{FakeRegistry, FakeStore, Pushed, World};
    use super::*;
    use crate::plan::SkipReason;

    const REG: &str = "registry.test";

    /// Plans `images` (TOML `[[images]]` bodies) against `reg` and
    /// `store`, with `free` bytes free.
    async fn plan_with(
        images: &[&str],
        reg: FakeRegistry,
        store: FakeStore,
        free: u64,
    ) -> Vec<PlannedImage> {
        let mut w = World::new(images, reg, free);
        w.store = store;
        let sources = w.sources();
        let planned = w.planner(&sources).plan(None).await;
        planned.expect("a fake disk is always read")
    }

    /// `prewarm plan` against a registry that never answers for one image
    /// ends at the deadline: that image fails with it, the other is planned.
    #[tokio::test(start_paused = true)]
    async fn a_plan_ends_at_its_deadline() {
        let mut reg = FakeRegistry::default();
        reg.push(&format!("{REG}/fast:1"), &[&[1u8; 100]]);
        reg.push(&format!("{REG}/slow:1"), &[&[2u8; 100]]);
        reg.hang.insert(format!("{REG}/slow:1"));
        let w = World::new(
            &[
                &format!("ref = \"{REG}/fast:1\""),
                &format!("ref = \"{REG}/slow:1\""),
            ],
            reg,
            1 << 30,
        );
        let sources = w.sources();
        let t0 = tokio::time::Instant::now();
        let until = t0 + std::time::Duration::from_secs(30);
        let planned = w.planner(&sources).plan(Some(until)).await.unwrap();
        assert_eq!(tokio::time::Instant::now(), until, "not a moment past it");
        let slow = find(&planned, &format!("{REG}/slow:1"));
        let why = slow.decision.clone().unwrap_err();
        assert!(why.contains("passed while resolving"), "{why}");
        let fast = find(&planned, &format!("{REG}/fast:1"));
        assert_eq!(fast.decision, Ok(crate::plan::Decision::Pull));
    }

    fn find<'a>(planned: &'a [PlannedImage], reference: &str) -> &'a PlannedImage {
        planned
            .iter()
            .find(|p| p.entry.reference.to_string() == reference)
            .unwrap_or_else(|| panic!("{reference} not planned: {planned:#?}"))
    }

    fn layer(byte: u8, len: usize) -> Vec<u8> {
        vec![byte; len]
    }

    #[tokio::test]
    async fn a_full_disk_skips_the_lower_priority_image() {
        let mut reg = FakeRegistry::default();
        reg.push(&format!("{REG}/low:1"), &[&layer(1, 100_000)]);
        reg.push(&format!("{REG}/high:1"), &[&layer(2, 100_000)]);
        let s: &[&str] = &[
            &format!("ref = \"{REG}/low:1\"\npriority = 1"),
            &format!("ref = \"{REG}/high:1\"\npriority = 5"),
        ];
        // Each needs its blob and its unpacked layer: about 200 kB.
        let planned = plan_with(s, reg, FakeStore::default(), 300_000).await;
        let high = find(&planned, &format!("{REG}/high:1"));
        let low = find(&planned, &format!("{REG}/low:1"));
        assert_eq!(high.decision, Ok(Decision::Pull));
        assert_eq!(low.decision, Ok(Decision::Skip(SkipReason::DiskBudget)));
        assert!(high.need >= 200_000 && high.need < 201_000, "{}", high.need);
        // With room for both, both are pulled.
        let mut reg = FakeRegistry::default();
        reg.push(&format!("{REG}/low:1"), &[&layer(1, 100_000)]);
        reg.push(&format!("{REG}/high:1"), &[&layer(2, 100_000)]);
        let planned = plan_with(s, reg, FakeStore::default(), 410_000).await;
        assert!(planned.iter().all(|p| p.decision == Ok(Decision::Pull)));
    }

    #[tokio::test]
    async fn a_shared_base_is_counted_once() {
        let base = layer(0, 200_000);
        let mut reg = FakeRegistry::default();
        reg.push(&format!("{REG}/a:1"), &[&base, &layer(1, 10_000)]);
        reg.push(&format!("{REG}/b:1"), &[&base, &layer(2, 10_000)]);
        let s: &[&str] = &[
            &format!("ref = \"{REG}/a:1\""),
            &format!("ref = \"{REG}/b:1\""),
        ];
        // Both fit once the base is charged once (about 440 kB), not
        // twice (about 840 kB).
        let planned = plan_with(s, reg, FakeStore::default(), 500_000).await;
        assert_eq!(planned.len(), 2);
        assert!(
            planned.iter().all(|p| p.decision == Ok(Decision::Pull)),
            "{planned:#?}"
        );
        let needs: Vec<u64> = planned.iter().map(|p| p.need).collect();
        assert!(needs.iter().any(|n| *n >= 420_000), "{needs:?}");
        assert!(needs.iter().any(|n| *n < 30_000), "{needs:?}");
    }

    #[tokio::test]
    async fn layers_the_store_holds_are_not_charged() {
        let base = layer(0, 200_000);
        let mut reg = FakeRegistry::default();
        let old: Pushed = reg.push(&format!("{REG}/old:1"), &[&base]);
        let new = reg.push(&format!("{REG}/app:2"), &[&base, &layer(1, 10_000)]);
        // The node holds the base, blob and unpacked, from another image.
        let mut store = FakeStore::default();
        store.hold(&old, &[format!("{REG}/old:1")]);
        let s: &[&str] = &[&format!("ref = \"{REG}/app:2\"")];
        let planned = plan_with(s, reg, store.clone(), 50_000).await;
        let app = find(&planned, &format!("{REG}/app:2"));
        assert_eq!(app.decision, Ok(Decision::Pull));
        assert!(app.need >= 20_000 && app.need < 30_000, "{}", app.need);
        let r = app.resolved.as_ref().expect("resolved");
        assert_eq!(r.chain_ids, new.chain_ids);
        assert!(r.stored[0].content && r.stored[0].snapshot);
        assert!(!r.stored[1].content && !r.stored[1].snapshot);
    }

    #[tokio::test]
    async fn without_keep_layers_an_unpacked_layer_needs_no_blob() {
        let base = layer(0, 200_000);
        let mut reg = FakeRegistry::default();
        let old = reg.push(&format!("{REG}/old:1"), &[&base]);
        reg.push(&format!("{REG}/app:2"), &[&base, &layer(1, 10_000)]);
        // The node holds the base unpacked, its blob long collected.
        let mut store = FakeStore::default();
        store.snapshots.extend(old.chain_ids.iter().cloned());
        let mut w = World::new(&[&format!("ref = \"{REG}/app:2\"")], reg, 1 << 30);
        w.store = store;
        let sources = w.sources();
        let kept = w.planner(&sources).plan(None).await.unwrap();
        // Kept blobs: the base's blob is fetched again, 200 kB more.
        assert!(kept[0].need >= 220_000, "{}", kept[0].need);
        w.settings.pull.keep_layers = false;
        let discarded = w.planner(&sources).plan(None).await.unwrap();
        assert!(
            discarded[0].need >= 20_000 && discarded[0].need < 30_000,
            "{}",
            discarded[0].need
        );
    }

    #[tokio::test]
    async fn a_present_image_needs_nothing() {
        let mut reg = FakeRegistry::default();
        let p = reg.push(&format!("{REG}/app:1"), &[&layer(1, 100_000)]);
        let mut store = FakeStore::default();
        let names = [
            format!("{REG}/app:1"),
            format!("{REG}/app@{}", p.digest),
            p.config.clone(),
        ];
        // Two of the three records: not present, and charged whole.
        store.hold(&p, &names[..2]);
        let s: &[&str] = &[&format!("ref = \"{REG}/app:1\"")];
        let reg2 = || {
            let mut r = FakeRegistry::default();
            r.push(&format!("{REG}/app:1"), &[&layer(1, 100_000)]);
            r
        };
        let planned = plan_with(s, reg2(), store.clone(), 1 << 30).await;
        assert_eq!(planned[0].decision, Ok(Decision::Pull));
        store.hold(&p, &names);
        let planned = plan_with(s, reg, store.clone(), 0).await;
        assert_eq!(planned[0].decision, Ok(Decision::Present));
        assert_eq!(planned[0].need, 0);
        assert_eq!(planned[0].held.as_deref(), Some(p.digest.as_str()));
        assert_eq!(planned[0].moved_from(), None);
    }

    #[tokio::test]
    async fn an_image_listed_by_tag_and_by_digest_is_planned_once() {
        let mut reg = FakeRegistry::default();
        let p = reg.push(&format!("{REG}/app:1"), &[&layer(1, 1000)]);
        let s: &[&str] = &[
            &format!("ref = \"{REG}/app:1\"\npriority = 1"),
            &format!(
                "ref = \"{REG}/app@{}\"\npriority = 7\nrequired = true",
                p.digest
            ),
        ];
        let planned = plan_with(s, reg, FakeStore::default(), 1 << 30).await;
        assert_eq!(planned.len(), 1, "{planned:#?}");
        let app = &planned[0];
        assert_eq!(app.entry.reference.to_string(), format!("{REG}/app:1"));
        assert_eq!(app.entry.priority, 7);
        assert!(app.entry.required);
        assert_eq!(app.decision, Ok(Decision::Pull));
    }

    #[tokio::test]
    async fn an_image_that_does_not_resolve_fails_alone() {
        let mut reg = FakeRegistry::default();
        reg.push(&format!("{REG}/app:1"), &[&layer(1, 1000)]);
        let s: &[&str] = &[
            &format!("ref = \"{REG}/gone:1\""),
            &format!("ref = \"{REG}/app:1\""),
        ];
        let planned = plan_with(s, reg, FakeStore::default(), 1 << 30).await;
        assert_eq!(
            find(&planned, &format!("{REG}/app:1")).decision,
            Ok(Decision::Pull)
        );
        let gone = find(&planned, &format!("{REG}/gone:1"));
        let why = gone.decision.as_ref().expect_err("not resolvable");
        assert!(why.contains(&format!("{REG}/gone:1")), "{why}");
        assert!(gone.resolved.is_none());
    }
}
