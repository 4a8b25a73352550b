//! The planner: which images to pull, in what order, within which disk
//! budget. Pure: values in, values out.

use serde::Serialize;
use std::collections::HashSet;

/// A piece of disk an image needs: a blob in the content store, or one of
/// its layers unpacked into a snapshot. Images that share a base share its
/// parts, and a part is paid for once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What makes two parts the same: a blob's digest, or `snapshot:` and
    /// a layer's chain ID.
    pub key: String,
    pub bytes: u64,
    /// The store already holds it: it costs nothing.
    pub held: bool,
}

/// What the planner knows about one listed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Position in the configured list; ties break on it.
    pub position: usize,
    pub priority: i32,
    pub required: bool,
    /// Already complete in containerd and visible under all its names.
    pub present: bool,
    /// Everything it would write: compressed blobs (layers, config,
    /// manifests) and unpacked layers.
    pub parts: Vec<Part>,
}

impl Candidate {
    /// Disk space the image needs on its own: the parts the store does not
    /// hold yet.
    pub fn need(&self) -> u64 {
        self.parts
            .iter()
            .filter(|p| !p.held)
            .map(|p| p.bytes)
            .fold(0, u64::saturating_add)
    }
}

/// The disk the images land on, and the limits on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub total: u64,
    pub available: u64,
    /// Free space that must remain.
    pub reserve: u64,
    /// Usage must stay under this share of `total` (kubelet's image GC
    /// high threshold, or lower).
    pub max_usage_percent: u8,
}

impl Budget {
    /// Bytes the preload may still write.
    pub fn allowance(&self) -> u64 {
        let by_reserve = self.available.saturating_sub(self.reserve);
        let used = self.total.saturating_sub(self.available);
        let cap = (self.total as u128 * self.max_usage_percent as u128 / 100) as u64;
        by_reserve.min(cap.saturating_sub(used))
    }
}

/// Why an image is not pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// It does not fit within the disk budget.
    DiskBudget,
}

/// What happens to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Pull,
    Present,
    Skip(SkipReason),
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub position: usize,
    pub decision: Decision,
    /// Bytes the step is expected to write.
    pub need: u64,
}

/// Orders and budgets the candidates: present images first (they cost
/// nothing), then required before best-effort, higher priority first,
/// smaller first within a priority, then list order. Each image is charged
/// only for the parts that neither the store nor an image planned before it
/// brings. An image that does not fit is skipped, and the next, smaller
/// ones still get their chance.
pub fn plan(candidates: &[Candidate], budget: Budget) -> Vec<Step> {
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by_key(|c| {
        (
            !c.present,
            !c.required,
            std::cmp::Reverse(c.priority),
            c.need(),
            c.position,
        )
    });
    let mut left = budget.allowance();
    let mut charged: HashSet<&str> = HashSet::new();
    order
        .into_iter()
        .map(|c| {
            let mut new: Vec<&Part> = c
                .parts
                .iter()
                .filter(|p| !p.held && !charged.contains(p.key.as_str()))
                .collect();
            // The same part twice in one image is one part.
            new.sort_by(|a, b| a.key.cmp(&b.key));
            new.dedup_by(|a, b| a.key == b.key);
            let need = new.iter().map(|p| p.bytes).fold(0, u64::saturating_add);
            let decision = if c.present {
                Decision::Present
            } else if need <= left {
                left -= need;
                charged.extend(new.iter().map(|p| p.key.as_str()));
                Decision::Pull
            } else {
                Decision::Skip(SkipReason::DiskBudget)
            };
            Step {
                position: c.position,
                decision,
                need: if c.present { 0 } else { need },
            }
        })
        .collect()
}

/// Estimated unpacked size of a layer from its compressed size, when
/// nothing better is known: uncompressed layers are their own size.
pub fn estimate_unpacked(compressed: u64, is_compressed: bool, ratio: f64) -> u64 {
    if is_compressed {
        (compressed as f64 * ratio) as u64
    } else {
        compressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn part(key: &str, gib: u64, held: bool) -> Part {
        Part {
            key: key.into(),
            bytes: gib * GIB,
            held,
        }
    }

    /// An image of its own: nothing shared with the others.
    fn c(position: usize, priority: i32, required: bool, size_gib: u64) -> Candidate {
        Candidate {
            position,
            priority,
            required,
            present: false,
            parts: vec![part(&format!("own-{position}"), size_gib, false)],
        }
    }

    fn budget(available_gib: u64) -> Budget {
        Budget {
            total: 100 * GIB,
            available: available_gib * GIB,
            reserve: 10 * GIB,
            max_usage_percent: 100,
        }
    }

    fn decisions(steps: &[Step]) -> Vec<(usize, Decision)> {
        steps.iter().map(|s| (s.position, s.decision)).collect()
    }

    #[test]
    fn allowance_takes_the_tighter_limit() {
        // 60 GiB free, 10 reserved → 50; 85% of 100 = 85, 40 used → 45.
        let b = Budget {
            max_usage_percent: 85,
            ..budget(60)
        };
        assert_eq!(b.allowance(), 45 * GIB);
        assert_eq!(budget(60).allowance(), 50 * GIB);
        // 15 GiB free: the reserve binds first.
        assert_eq!(budget(15).allowance(), 5 * GIB);
        // Less free than the reserve: nothing.
        assert_eq!(budget(5).allowance(), 0);
    }

    #[test]
    fn table() {
        use Decision::*;
        let skip = Skip(SkipReason::DiskBudget);
        let present = Candidate {
            present: true,
            ..c(9, 0, false, 50)
        };
        type Case = (&'static str, Vec<Candidate>, u64, Vec<(usize, Decision)>);
        let cases: Vec<Case> = vec![
            (
                "everything fits: required, then priority, then size",
                vec![
                    c(0, 1, false, 2),
                    c(1, 5, false, 3),
                    c(2, 0, true, 1),
                    c(3, 5, false, 1),
                ],
                60,
                vec![(2, Pull), (3, Pull), (1, Pull), (0, Pull)],
            ),
            (
                "required first even when big; the rest skips by priority",
                vec![c(0, 100, false, 3), c(1, 0, true, 4), c(2, 1, false, 2)],
                16,
                vec![(1, Pull), (0, skip), (2, Pull)],
            ),
            (
                "a big image that does not fit leaves room for smaller ones",
                vec![c(0, 5, false, 8), c(1, 5, false, 3), c(2, 1, false, 2)],
                16,
                vec![(1, Pull), (0, skip), (2, Pull)],
            ),
            (
                "present images cost nothing",
                vec![present.clone(), c(1, 0, false, 1)],
                11,
                vec![(9, Present), (1, Pull)],
            ),
            (
                "no room at all",
                vec![c(0, 0, true, 1), c(1, 0, false, 1)],
                10,
                vec![(0, skip), (1, skip)],
            ),
            (
                "ties keep list order",
                vec![c(0, 0, false, 1), c(1, 0, false, 1)],
                60,
                vec![(0, Pull), (1, Pull)],
            ),
        ];
        for (name, cands, avail, want) in cases {
            assert_eq!(decisions(&plan(&cands, budget(avail))), want, "{name}");
        }
    }

    /// Three images on one 6 GiB base (CUDA-like) with 1 GiB of their own
    /// each need 9 GiB together, not 21.
    #[test]
    fn shared_layers_are_counted_once() {
        let on_base = |position, held_base| Candidate {
            position,
            priority: 0,
            required: false,
            present: false,
            parts: vec![
                part("base-content", 2, held_base),
                part("snapshot:base", 4, held_base),
                part(&format!("own-{position}"), 1, false),
            ],
        };
        let three = [on_base(0, false), on_base(1, false), on_base(2, false)];
        let steps = plan(&three, budget(19));
        assert!(
            steps.iter().all(|s| s.decision == Decision::Pull),
            "{steps:?}"
        );
        let needs: Vec<u64> = steps.iter().map(|s| s.need / GIB).collect();
        assert_eq!(needs, [7, 1, 1]);
        // 8 GiB: the first two fit, the third does not.
        let steps = plan(&three, budget(18));
        let skip = Decision::Skip(SkipReason::DiskBudget);
        assert_eq!(
            decisions(&steps),
            [(0, Decision::Pull), (1, Decision::Pull), (2, skip)]
        );
        // A skipped image pays for nothing: the base stays unpaid when the
        // first image does not fit, and a smaller one of its own still does.
        let mixed = [on_base(0, false), c(1, 0, false, 2)];
        let steps = plan(&mixed, budget(13));
        assert_eq!(decisions(&steps), [(1, Decision::Pull), (0, skip)]);
    }

    /// A base already on the node costs nothing: only the image's own parts
    /// count, although the image as a whole is not present.
    #[test]
    fn partial_presence_counts_only_what_is_missing() {
        let img = Candidate {
            position: 0,
            priority: 0,
            required: true,
            present: false,
            parts: vec![
                part("base-content", 2, true),
                part("snapshot:base", 4, true),
                part("own", 1, false),
            ],
        };
        assert_eq!(img.need(), GIB);
        let steps = plan(&[img], budget(11));
        assert_eq!(steps[0].decision, Decision::Pull);
        assert_eq!(steps[0].need, GIB);
    }

    #[test]
    fn estimates() {
        assert_eq!(estimate_unpacked(100, false, 3.0), 100);
        assert_eq!(estimate_unpacked(100, true, 2.5), 250);
    }
}
