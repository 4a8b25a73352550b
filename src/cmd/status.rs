//! `prewarm status`: the listed images as kubelet sees them (CRI).

use super::yes_no;
use crate::config::Settings;
use crate::Exit;
use crate::{containerd, cri, sources};

pub(super) async fn run(settings: Settings) -> anyhow::Result<Exit> {
    // The whole list: the sources' entries too (cached copies when remote
    // sources are unreachable).
    let lists = sources::load(&settings).await;
    let required: Vec<bool> = lists.images.iter().map(|e| e.required).collect();
    let images = lists.images.clone();
    let c = containerd::Containerd::connect(&settings.containerd).await?;
    let cri = cri::Cri::new(c.channel());
    // Only records are read: the snapshotter is never asked.
    let store = crate::pull::inventory::ContainerdStore {
        containerd: c,
        snapshotter: String::new(),
    };
    let mut missing = 0;
    out!(
        "{:<8} {:<9} {:<6} {:<9} {:<71}  reference",
        "tag",
        "digest",
        "pinned",
        "required",
        "image id"
    );
    for (entry, required) in images.iter().zip(required) {
        let by_tag = match entry.reference.tag_name() {
            Some(t) => cri.image_status(&t).await?,
            None => None,
        };
        // The digest the tag's record points at, or the pinned one.
        let digest = match &entry.reference.digest {
            Some(d) => Some(d.clone()),
            None => crate::pull::inventory::held_digest(&store, &entry.reference).await?,
        };
        let by_digest = match &digest {
            Some(d) => cri.image_status(&entry.reference.digest_name(d)).await?,
            None => None,
        };
        let ok = by_digest.is_some() && (entry.reference.tag.is_none() || by_tag.is_some());
        if required && !ok {
            missing += 1;
        }
        let shown = by_digest.as_ref().or(by_tag.as_ref());
        out!(
            "{:<8} {:<9} {:<6} {:<9} {:<71}  {}",
            yes_no(by_tag.is_some() || entry.reference.tag.is_none()),
            yes_no(by_digest.is_some()),
            yes_no(shown.is_some_and(|i| i.pinned)),
            required,
            shown.map(|i| i.id.as_str()).unwrap_or("-"),
            entry.reference
        );
    }
    Ok(if missing > 0 {
        Exit::RequiredMissing
    } else {
        Exit::Ok
    })
}
