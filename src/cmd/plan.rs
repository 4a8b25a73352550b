//! `prewarm plan`: what a pull would do, written as a table. Writes nothing.

use crate::cli::Output;
use crate::config::Settings;
use crate::plan;
use crate::Exit;

pub(super) async fn run(settings: Settings, output: Output) -> anyhow::Result<Exit> {
    let planned = crate::preload::plan(settings).await?;
    if output == Output::Json {
        out!("{}", serde_json::to_string_pretty(&as_json(&planned))?);
        return Ok(planned.exit);
    }
    for s in &planned.lists {
        out!(
            "list {} ({}): {:?}, {} entries{}",
            s.name,
            s.kind,
            s.status,
            s.images,
            s.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    if let Some(rev) = &planned.list_revision {
        out!("list revision {rev}");
    }
    for w in &planned.warnings {
        out!("warning: {w}");
    }
    let budget = &planned.budget;
    out!(
        "disk {}: {} of {} bytes free, may write {} (reserve {}, max {}%)",
        planned.disk_path,
        budget.available,
        budget.total,
        budget.allowance(),
        budget.reserve,
        budget.max_usage_percent
    );
    out!(
        "{:<4} {:<8} {:<9} {:>12}  {:<71}  {:<5}  reference",
        "#",
        "action",
        "required",
        "bytes",
        "digest",
        "moved"
    );
    for (n, item) in planned.images.iter().enumerate() {
        let (action, why) = match &item.decision {
            Ok(plan::Decision::Pull) => ("pull", String::new()),
            Ok(plan::Decision::Present) => ("present", String::new()),
            Ok(plan::Decision::Skip(_)) => ("skip", "  (disk-budget)".to_string()),
            Err(e) => ("fail", format!("  ({e})")),
        };
        let digest = item
            .resolved
            .as_ref()
            .map(|r| r.top().desc.digest.clone())
            .unwrap_or_default();
        // Drift: the node holds another digest under this tag.
        let (moved, held) = match (item.moved_from(), &item.held) {
            (Some(old), _) => ("yes", format!("  (node holds {old} under this tag)")),
            (None, Some(_)) => ("no", String::new()),
            (None, None) => ("-", String::new()),
        };
        out!(
            "{:<4} {:<8} {:<9} {:>12}  {:<71}  {:<5}  {}{}{}",
            n + 1,
            action,
            item.entry.required,
            item.need,
            digest,
            moved,
            item.entry.reference,
            held,
            why
        );
    }
    Ok(planned.exit)
}

/// The plan for `--output json`: what the table shows, by name.
fn as_json(planned: &crate::preload::Plan) -> serde_json::Value {
    let b = &planned.budget;
    let images: Vec<serde_json::Value> = planned
        .images
        .iter()
        .map(|item| {
            let (action, reason) = match &item.decision {
                Ok(plan::Decision::Pull) => ("pull", None),
                Ok(plan::Decision::Present) => ("present", None),
                Ok(plan::Decision::Skip(_)) => ("skip", Some("disk-budget".to_string())),
                Err(e) => ("fail", Some(e.clone())),
            };
            serde_json::json!({
                "ref": item.entry.reference.to_string(),
                "required": item.entry.required,
                "priority": item.entry.priority,
                "action": action,
                "reason": reason,
                "bytes": item.need,
                "digest": item.resolved.as_ref().map(|r| r.top().desc.digest.clone()),
                "moved_from": item.moved_from(),
            })
        })
        .collect();
    serde_json::json!({
        "lists": planned.lists,
        "list_revision": planned.list_revision,
        "disk": {
            "path": planned.disk_path,
            "total": b.total,
            "available": b.available,
            "reserve": b.reserve,
            "max_usage_percent": b.max_usage_percent,
            "allowance": b.allowance(),
        },
        "warnings": planned.warnings,
        "images": images,
    })
}
