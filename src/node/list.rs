//! Which version of the image list a node holds, on its Node, for rollout
//! pipelines: `prewarm.io/list-revision` (the list's revision, see
//! [`crate::sources::revision`]) and `prewarm.io/list-warm` (`true` when
//! every required image of it is present). Written after each refresh and
//! after the boot pass's handoff, only when they change.

use super::api::{ApiError, NodeApi};
use crate::report::Report;
use serde_json::{json, Value};

/// The list revision the node holds.
pub const REVISION_ANNOTATION: &str = "prewarm.io/list-revision";
/// `true` when every required image of that revision is present.
pub const WARM_ANNOTATION: &str = "prewarm.io/list-warm";

/// The two annotations a run's report calls for. A list with a source
/// that could not be read has no revision: the revision annotation is
/// removed, and the node is not warm.
pub fn annotations(report: &Report) -> (Option<String>, bool) {
    let warm = report.list_revision.is_some()
        && report.summary.required_missing == 0
        && report.interrupted.is_none();
    (report.list_revision.clone(), warm)
}

/// The merge patch that sets them.
pub fn patch(revision: Option<&str>, warm: bool) -> Value {
    json!({"metadata": {"annotations": {
        REVISION_ANNOTATION: revision,
        WARM_ANNOTATION: warm.to_string(),
    }}})
}

/// The Node's annotation `key`, if set.
fn annotation<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    node.pointer(&format!(
        "/metadata/annotations/{}",
        super::api::pointer_escape(key)
    ))
    .and_then(Value::as_str)
}

/// Does the Node already say what the report does? A report without a
/// revision has nothing to say to a Node that carries none.
fn carries(node: &Value, revision: Option<&str>, warm: bool) -> bool {
    let held = annotation(node, REVISION_ANNOTATION);
    match revision {
        None => held.is_none(),
        Some(_) => held == revision && annotation(node, WARM_ANNOTATION) == Some(&warm.to_string()),
    }
}

/// What [`annotate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Annotated {
    /// The Node already said so: nothing written.
    Unchanged,
    Written,
    /// No Node by that name (yet).
    NoNode,
}

/// Sets the annotations on `node` from `report`, with a merge patch that
/// touches nothing else (no taint, no other annotation), and only when
/// they differ from what the Node carries. A report without a revision (a
/// source that could not be read, or a report from before revisions) says
/// nothing to a Node that carries none.
pub async fn annotate(
    api: &impl NodeApi,
    node: &str,
    report: &Report,
) -> Result<Annotated, ApiError> {
    let (revision, warm) = annotations(report);
    let Some(current) = api.get(node).await? else {
        return Ok(Annotated::NoNode);
    };
    if carries(&current, revision.as_deref(), warm) {
        return Ok(Annotated::Unchanged);
    }
    api.patch_merge(node, patch(revision.as_deref(), warm))
        .await?;
    Ok(Annotated::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_both_and_a_missing_revision_removes_it() {
        let p = patch(Some("ab12"), true);
        assert_eq!(p["metadata"]["annotations"][REVISION_ANNOTATION], "ab12");
        assert_eq!(p["metadata"]["annotations"][WARM_ANNOTATION], "true");
        let p = patch(None, false);
        assert!(p["metadata"]["annotations"][REVISION_ANNOTATION].is_null());
        assert_eq!(p["metadata"]["annotations"][WARM_ANNOTATION], "false");
        let node = json!({"metadata": {"annotations": {
            REVISION_ANNOTATION: "ab12", WARM_ANNOTATION: "true"}}});
        assert!(carries(&node, Some("ab12"), true));
        assert!(!carries(&node, Some("ab12"), false));
        assert!(!carries(&node, Some("cd34"), true));
        assert!(carries(&json!({}), None, false), "nothing to say");
        assert!(!carries(&node, None, false), "a revision to remove");
    }
}
