//! `prewarm status`: the listed images as kubelet sees them (CRI), from
//! [`crate::preload::status`].

use super::yes_no;
use crate::config::Settings;
use crate::Exit;

pub(super) async fn run(settings: Settings) -> anyhow::Result<Exit> {
    let status = crate::preload::status(settings).await?;
    out!(
        "{:<8} {:<9} {:<6} {:<9} {:<71}  reference",
        "tag",
        "digest",
        "pinned",
        "required",
        "image id"
    );
    for i in &status.images {
        out!(
            "{:<8} {:<9} {:<6} {:<9} {:<71}  {}",
            yes_no(i.by_tag),
            yes_no(i.by_digest),
            yes_no(i.pinned),
            i.entry.required,
            i.image_id.as_deref().unwrap_or("-"),
            i.entry.reference
        );
    }
    Ok(status.exit)
}
