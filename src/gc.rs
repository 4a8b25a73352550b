//! Keeping preloaded images from piling up: `prewarm gc`, and unpinning
//! images that left the list.
//!
//! Only records prewarm wrote (label `io.prewarm.preloaded=true`) are ever
//! touched. A record is *de-listed* when no list entry names it: for a
//! tagged entry the list keeps `repo:tag` and `repo@<digest the tag's
//! record points at now>`; for a digest entry `repo@<digest>`; and the
//! `sha256:<config>` record of every kept digest. What the list keeps is
//! decided from the node's own records, so gc needs no registry.
//!
//! De-listed records are grouped by the image they point at. A group is
//! left alone when someone else pinned the image (`io.cri-containerd.pinned`
//! without prewarm's `io.prewarm.pinned` marker); it is only unpinned when a
//! container (any containerd container record in the namespace) uses the
//! image; otherwise its records are removed. The deciding is pure
//! ([`plan`]); [`run`] reads the inventory and applies it.

use crate::config::ImageEntry;
use crate::containerd::{Containerd, ContainerdError};
use crate::labels::{self, PINNED_LABEL, PREWARM_LABEL, PREWARM_PINNED_LABEL};
use crate::report::{GcReport, Group, Kept};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// An image record as gc sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    /// The target descriptor's digest.
    pub target: String,
    pub labels: HashMap<String, String>,
}

impl Record {
    fn ours(&self) -> bool {
        self.labels.get(PREWARM_LABEL).map(String::as_str) == Some("true")
    }
    fn pinned(&self) -> bool {
        self.labels.get(PINNED_LABEL).map(String::as_str) == Some("pinned")
    }
    fn pinned_by_us(&self) -> bool {
        self.pinned() && self.labels.get(PREWARM_PINNED_LABEL).map(String::as_str) == Some("true")
    }
}

/// The record names and target digests the list keeps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listed {
    pub names: HashSet<String>,
    pub digests: HashSet<String>,
}

/// What the list keeps, given the records on the node.
pub fn listed(entries: &[ImageEntry], records: &[Record]) -> Listed {
    let by_name: HashMap<&str, &Record> = records.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut l = Listed::default();
    for e in entries {
        let r = &e.reference;
        let mut digests = Vec::new();
        if let Some(tag) = r.tag_name() {
            if let Some(rec) = by_name.get(tag.as_str()) {
                digests.push(rec.target.clone());
            }
            l.names.insert(tag);
        }
        digests.extend(r.digest.clone());
        for d in digests {
            l.names.insert(r.digest_name(&d));
            l.digests.insert(d);
        }
    }
    l
}

impl Group {
    /// Records to delete on `--apply`.
    pub fn remove(&self) -> &[String] {
        if self.kept.is_none() {
            &self.delisted
        } else {
            &[]
        }
    }

    /// Records to unpin when not deleting (or when in use).
    pub fn unpin(&self) -> &[String] {
        match self.kept {
            Some(Kept::PinnedByOther(_)) => &[],
            _ => &self.pinned_by_us,
        }
    }
}

/// Decides, per image, what happens to its de-listed records. Pure.
pub fn plan(records: &[Record], listed: &Listed, containers: &[(String, String)]) -> Vec<Group> {
    let mut by_target: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_target.entry(r.target.as_str()).or_default().push(r);
    }
    let mut out = Vec::new();
    for (target, recs) in by_target {
        let kept_by_list = |r: &Record| {
            if r.name.starts_with("sha256:") {
                listed.digests.contains(target)
            } else {
                listed.names.contains(&r.name)
            }
        };
        let delisted: Vec<&Record> = recs
            .iter()
            .copied()
            .filter(|r| r.ours() && !kept_by_list(r))
            .collect();
        if delisted.is_empty() {
            continue;
        }
        let names: BTreeSet<&str> = recs.iter().map(|r| r.name.as_str()).collect();
        let users: Vec<String> = containers
            .iter()
            .filter(|(_, image)| image == target || names.contains(image.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        let kept = if let Some(r) = recs.iter().find(|r| r.pinned() && !r.pinned_by_us()) {
            Some(Kept::PinnedByOther(r.name.clone()))
        } else if !users.is_empty() {
            Some(Kept::InUse(users))
        } else {
            None
        };
        out.push(Group {
            target: target.to_string(),
            delisted: delisted.iter().map(|r| r.name.clone()).collect(),
            pinned_by_us: delisted
                .iter()
                .filter(|r| r.pinned_by_us())
                .map(|r| r.name.clone())
                .collect(),
            frees_image: kept.is_none() && delisted.len() == recs.len(),
            kept,
        });
    }
    out
}

/// How far a pass goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decide and measure, change nothing.
    DryRun,
    /// Unpin de-listed images prewarm pinned; remove nothing (`pull`
    /// without `[pull] gc`).
    UnpinOnly,
    /// Remove de-listed images, unpin those in use.
    Apply,
}

/// Reads the node's records and containers, decides, and applies `mode`.
pub async fn run(
    c: &Containerd,
    entries: &[ImageEntry],
    mode: Mode,
) -> Result<(Vec<Group>, GcReport), ContainerdError> {
    let records: Vec<Record> = c
        .image_list()
        .await?
        .into_iter()
        .filter_map(|i| {
            Some(Record {
                target: i.target?.digest,
                name: i.name,
                labels: i.labels,
            })
        })
        .collect();
    let containers = c.container_images().await?;
    let groups = plan(&records, &listed(entries, &records), &containers);
    let mut report = GcReport {
        applied: mode == Mode::Apply,
        ..Default::default()
    };
    let going: HashSet<&str> = groups
        .iter()
        .filter(|g| g.frees_image)
        .map(|g| g.target.as_str())
        .collect();
    if mode != Mode::UnpinOnly {
        let staying = records
            .iter()
            .map(|r| r.target.as_str())
            .filter(|t| !going.contains(t))
            .collect::<HashSet<_>>();
        (report.freed_bytes, report.freed_snapshot_bytes) =
            freed_bytes(c, &going, &staying).await?;
    }
    let remove: Vec<&String> = groups.iter().flat_map(|g| g.remove()).collect();
    let unpin: Vec<&String> = groups
        .iter()
        .filter(|g| mode != Mode::Apply || g.kept.is_some())
        .flat_map(|g| g.unpin())
        .collect();
    for g in &groups {
        if g.kept.is_some() {
            report.kept.push(g.clone());
        }
    }
    match mode {
        Mode::DryRun => {
            report.removed = remove.iter().map(|s| s.to_string()).collect();
            report.unpinned = unpin.iter().map(|s| s.to_string()).collect();
        }
        Mode::UnpinOnly | Mode::Apply => {
            for name in &unpin {
                c.image_remove_labels(name, &[PINNED_LABEL, PREWARM_PINNED_LABEL])
                    .await?;
                tracing::info!(image = %name, "unpinned: no longer listed");
                report.unpinned.push(name.to_string());
            }
            if mode == Mode::Apply {
                for (i, name) in remove.iter().enumerate() {
                    // The last delete waits for containerd's collection, so
                    // the space is free when gc returns.
                    c.image_delete(name, i + 1 == remove.len()).await?;
                    tracing::info!(image = %name, "removed: no longer listed, not in use");
                    report.removed.push(name.to_string());
                }
            }
        }
    }
    Ok((groups, report))
}

/// (content bytes, snapshot bytes) reachable from `going` targets and from
/// no `staying` one, as containerd's collector walks them: content through
/// the `containerd.io/gc.ref.content.*` labels, the unpacked layers through
/// a config's `containerd.io/gc.ref.snapshot.<snapshotter>` label and each
/// snapshot's parent.
async fn freed_bytes(
    c: &Containerd,
    going: &HashSet<&str>,
    staying: &HashSet<&str>,
) -> Result<(u64, u64), ContainerdError> {
    if going.is_empty() {
        return Ok((0, 0));
    }
    let mut sizes = HashMap::new();
    let gone = reachable(c, going.iter().copied(), &mut sizes).await?;
    let kept = reachable(c, staying.iter().copied(), &mut sizes).await?;
    let (mut content, mut snapshots) = (0, 0);
    for n in gone.difference(&kept) {
        match n {
            Node::Content(d) => content += sizes.get(d).copied().unwrap_or(0),
            Node::Snapshot(snapshotter, key) => {
                snapshots += c.snapshot_usage(snapshotter, key).await?
            }
        }
    }
    Ok((content, snapshots))
}

/// What containerd's collector follows from an image record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    /// A blob, by digest.
    Content(String),
    /// A snapshot: (snapshotter, key).
    Snapshot(String, String),
}

async fn reachable<'a>(
    c: &Containerd,
    roots: impl Iterator<Item = &'a str>,
    sizes: &mut HashMap<String, u64>,
) -> Result<HashSet<Node>, ContainerdError> {
    let mut seen = HashSet::new();
    let mut todo: Vec<Node> = roots.map(|d| Node::Content(d.to_string())).collect();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        match n {
            Node::Content(d) => {
                let Some(info) = c.content_info(&d).await? else {
                    continue;
                };
                sizes.insert(d, info.size.max(0) as u64);
                for (k, v) in &info.labels {
                    if k.starts_with(labels::GC_REF_CONTENT) {
                        todo.push(Node::Content(v.clone()));
                    } else if let Some(snapshotter) = k.strip_prefix(labels::GC_REF_SNAPSHOT) {
                        todo.push(Node::Snapshot(snapshotter.to_string(), v.clone()));
                    }
                }
            }
            Node::Snapshot(snapshotter, key) => {
                match c.snapshot_parent(&snapshotter, &key).await? {
                    Some(parent) if !parent.is_empty() => {
                        todo.push(Node::Snapshot(snapshotter, parent));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Reference;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn rec(name: &str, target: &str, labels: &[(&str, &str)]) -> Record {
        Record {
            name: name.into(),
            target: target.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
    const OURS: (&str, &str) = (PREWARM_LABEL, "true");
    const PIN: (&str, &str) = (PINNED_LABEL, "pinned");
    const OUR_PIN: (&str, &str) = (PREWARM_PINNED_LABEL, "true");

    fn entry(r: &str) -> ImageEntry {
        ImageEntry {
            reference: Reference::parse(r).unwrap(),
            priority: 0,
            required: false,
            source: "/x".into(),
            key: "images[0]".into(),
        }
    }

    /// Three records per image, as prewarm writes them.
    fn image(repo_tag: &str, target: &str, config: &str, labels: &[(&str, &str)]) -> Vec<Record> {
        let r = Reference::parse(repo_tag).unwrap();
        vec![
            rec(&r.tag_name().unwrap(), target, labels),
            rec(&r.digest_name(target), target, labels),
            rec(config, target, labels),
        ]
    }

    #[test]
    fn listed_follows_the_tag_record() {
        let records = image("r.example/a:1", A, "sha256:c1", &[OURS]);
        let l = listed(&[entry("r.example/a:1")], &records);
        assert!(l.names.contains("r.example/a:1"));
        assert!(l.names.contains(&format!("r.example/a@{A}")));
        assert!(l.digests.contains(A));
        assert!(plan(&records, &l, &[]).is_empty(), "a listed image stays");
    }

    #[test]
    fn delisted_image_goes_unless_used_or_pinned_by_someone_else() {
        let mut records = image("r.example/a:1", A, "sha256:c1", &[OURS, PIN, OUR_PIN]);
        records.extend(image(
            "r.example/b:1",
            B,
            "sha256:c2",
            &[OURS, PIN, OUR_PIN],
        ));
        records.extend(image("r.example/c:1", C, "sha256:c3", &[OURS, PIN]));
        records.push(rec("r.example/other:1", C, &[]));
        let l = listed(&[], &records);
        let containers = vec![("web-1".to_string(), format!("r.example/b@{B}"))];
        let groups = plan(&records, &l, &containers);
        assert_eq!(groups.len(), 3);
        let a = &groups[0];
        assert_eq!(a.remove().len(), 3);
        assert!(a.frees_image);
        let b = &groups[1];
        assert_eq!(b.kept, Some(Kept::InUse(vec!["web-1".into()])));
        assert!(b.remove().is_empty());
        assert_eq!(
            b.unpin().len(),
            3,
            "in use: unpinned so kubelet may collect it later"
        );
        let c = &groups[2];
        assert!(matches!(c.kept, Some(Kept::PinnedByOther(_))));
        assert!(c.remove().is_empty() && c.unpin().is_empty());
    }

    #[test]
    fn a_moved_tag_leaves_the_old_digest_behind() {
        // repo:1 was moved from A to B by the last pull; A's records stay.
        let mut records = vec![
            rec("r.example/a:1", B, &[OURS]),
            rec(&format!("r.example/a@{B}"), B, &[OURS]),
            rec("sha256:c2", B, &[OURS]),
        ];
        records.push(rec(&format!("r.example/a@{A}"), A, &[OURS]));
        records.push(rec("sha256:c1", A, &[OURS]));
        let groups = plan(&records, &listed(&[entry("r.example/a:1")], &records), &[]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].target, A);
        assert_eq!(groups[0].remove().len(), 2);
    }

    #[test]
    fn records_of_others_are_never_touched() {
        let mut records = image("r.example/a:1", A, "sha256:c1", &[]);
        records.push(rec("r.example/mine:1", A, &[OURS]));
        let groups = plan(&records, &Listed::default(), &[]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].remove(), ["r.example/mine:1".to_string()]);
        assert!(!groups[0].frees_image, "others still hold the image");
    }

    #[test]
    fn a_container_using_the_image_id_keeps_it() {
        let records = image("r.example/a:1", A, "sha256:c1", &[OURS]);
        let groups = plan(
            &records,
            &Listed::default(),
            &[("x".into(), "sha256:c1".into())],
        );
        assert!(matches!(groups[0].kept, Some(Kept::InUse(_))));
    }
}
