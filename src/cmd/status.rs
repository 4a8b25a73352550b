//! `prewarm status`: the listed images as kubelet sees them (CRI), from
//! [`crate::preload::status`].

use super::yes_no;
use crate::cli::Output;
use crate::config::Settings;
use crate::Exit;

pub(super) async fn run(settings: Settings, output: Output) -> anyhow::Result<Exit> {
    let status = crate::preload::status(settings).await?;
    if output == Output::Json {
        let images: Vec<serde_json::Value> = status
            .images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "ref": i.entry.reference.to_string(),
                    "required": i.entry.required,
                    "by_tag": i.by_tag,
                    "by_digest": i.by_digest,
                    "pinned": i.pinned,
                    "image_id": i.image_id,
                    "present": i.ok(),
                })
            })
            .collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "images": images }))?
        );
        return Ok(status.exit);
    }
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
