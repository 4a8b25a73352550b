//! `prewarm untaint`: wait for the Node, read the preload report, apply the
//! deadline policy, then remove the taint (direct mode) or set the
//! readiness condition (condition mode), and record the outcome in the
//! `prewarm.io/preload` annotation.
//!
//! Timeline, in time since boot (see [`super::clock`]):
//!
//! - `reference` (the start stamp, or boot)
//! - `reference + deadline`: the policy applies. Until then `untaint` waits
//!   for a missing report (pull may still be running).
//! - `reference + deadline + give-up-after`: `untaint` stops waiting for an
//!   unreachable API server or a Node that never appears, and exits 5.
//!
//! A report that says every required image is present hands the node over
//! at once. A missing report (at the deadline), an unreadable one, or one
//! with required images missing is *degraded*: `on-deadline = "untaint"`
//! (the default) hands the node over anyway and says why; `keep` leaves the
//! taint and says why.

use super::api::{pointer_escape, resource_version, taints, ApiError, NodeApi};
use super::clock::{Clock, Reference};
use super::ANNOTATION;
use crate::config::{Handoff, HandoffMode, OnDeadline};
use crate::report::Report;
use crate::retry::Retry;
use crate::taint::Taint;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// Why `untaint` could not apply the outcome.
#[derive(Debug, thiserror::Error)]
pub enum UntaintError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(
        "node {node:?} did not appear within {waited:?} (deadline plus give-up-after); \
         is kubelet running and registering under this name? (set [handoff] node-name)"
    )]
    NeverAppeared { node: String, waited: Duration },
    #[error("reading the time since boot: {0}")]
    Clock(std::io::Error),
}

/// What the report and the clock say.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Remove the taint (or set the condition True).
    pub hand_over: bool,
    /// Every required image is present.
    pub ready: bool,
    /// Why the node is handed over degraded, or kept; or a note.
    pub reason: Option<String>,
}

/// Applies the deadline policy. `late` says why the deadline passed before
/// the node could be handed over, if it did.
pub fn decide(report: &Result<Report, String>, late: Option<&str>, policy: OnDeadline) -> Decision {
    let mut why: Vec<String> = Vec::new();
    let ready = match report {
        Err(e) => {
            why.push(format!("no usable preload report ({e})"));
            false
        }
        Ok(r) if r.summary.required_missing > 0 => {
            let mut s = format!("{} required image(s) missing", r.summary.required_missing);
            if let Some(i) = &r.interrupted {
                s.push_str(&format!(" (preload {i})"));
            }
            why.push(s);
            false
        }
        Ok(_) => true,
    };
    if let Some(l) = late {
        why.push(l.to_string());
    }
    let hand_over = ready || policy == OnDeadline::Untaint;
    let mut reason = (!why.is_empty()).then(|| why.join("; "));
    if !ready {
        let policy_note = match policy {
            OnDeadline::Untaint => "handing over anyway (on-deadline = \"untaint\")",
            OnDeadline::Keep => "keeping the taint (on-deadline = \"keep\")",
        };
        reason = Some(format!("{}; {policy_note}", reason.unwrap_or_default()));
    }
    Decision {
        hand_over,
        ready,
        reason,
    }
}

/// What was done to the Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Direct mode: our taint was removed.
    Untainted,
    /// Direct mode: our taint was not there (already removed, or the node
    /// registered without it).
    TaintAbsent,
    /// Direct mode, `keep`: the taint stays.
    KeptTaint,
    /// Condition mode: the condition is True; the controller removes the
    /// taint.
    ConditionTrue,
    /// Condition mode, `keep`: the condition is False; the taint stays.
    ConditionFalse,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Untainted => "untainted",
            Action::TaintAbsent => "taint-absent",
            Action::KeptTaint => "kept-taint",
            Action::ConditionTrue => "condition-true",
            Action::ConditionFalse => "condition-false",
        }
    }
}

/// The `prewarm.io/preload` annotation (compact JSON).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    /// `ready` or `degraded`.
    pub result: &'static str,
    pub action: Action,
    /// Images present (pulled or already there) / listed, from the report.
    pub images: Option<String>,
    pub required_missing: Option<usize>,
    pub preload_seconds: Option<f64>,
    /// Since the deadline's reference point.
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Record {
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// How long the handoff's Event may take.
const EVENT_WITHIN: Duration = Duration::from_secs(5);

/// `PreloadComplete` or `PreloadDegraded`.
fn event_reason(r: &Record) -> &'static str {
    if r.result == "ready" {
        "PreloadComplete"
    } else {
        "PreloadDegraded"
    }
}

/// The `events.k8s.io/v1` Event on the Node that says how the handoff went:
/// images, seconds and the reason, in `note`.
pub fn event(node: &str, uid: Option<&str>, r: &Record, now: std::time::SystemTime) -> Value {
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut note = format!(
        "preload {}: images {}, {} required missing, {:.1} s since the start stamp, {}",
        r.result,
        r.images.as_deref().unwrap_or("unknown"),
        r.required_missing
            .map_or("unknown".to_string(), |n| n.to_string()),
        r.seconds,
        r.action.as_str()
    );
    if let Some(why) = &r.reason {
        note.push_str(&format!(": {why}"));
    }
    // The API server takes at most 1 kB.
    if note.len() > 1024 {
        let mut cut = 1021;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let mut regarding = serde_json::json!({"apiVersion": "v1", "kind": "Node", "name": node});
    if let Some(uid) = uid {
        regarding["uid"] = uid.into();
    }
    serde_json::json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": format!("{node}.{nanos:x}"), "namespace": "default"},
        "eventTime": crate::time::rfc3339_micros(now),
        "reportingController": "prewarm.io/untaint",
        "reportingInstance": node,
        "action": "Handoff",
        "reason": event_reason(r),
        "type": if r.result == "ready" { "Normal" } else { "Warning" },
        "regarding": regarding,
        "note": note,
    })
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub node: String,
    pub record: Record,
}

/// Deadlines as tokio instants.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub reference: Reference,
    pub deadline: Instant,
    pub give_up: Instant,
    /// Time since the reference when the run started.
    pub elapsed_at_start: Duration,
    pub started: Instant,
}

impl Timeline {
    pub fn new(reference: Reference, since_boot: Duration, h: &Handoff) -> Self {
        let started = Instant::now();
        let elapsed = since_boot.saturating_sub(reference.since_boot());
        let deadline = started + h.deadline.saturating_sub(elapsed);
        Timeline {
            reference,
            deadline,
            give_up: deadline + h.give_up_after,
            elapsed_at_start: elapsed,
            started,
        }
    }

    /// The timeline of a run starting now: from the start stamp `register`
    /// wrote (or boot, without one) and the clock.
    pub fn now(h: &Handoff, clock: &impl Clock) -> Result<Self, UntaintError> {
        let reference = super::clock::read_reference(&h.started_file, clock);
        let since_boot = clock.since_boot().map_err(UntaintError::Clock)?;
        Ok(Timeline::new(reference, since_boot, h))
    }

    fn since_reference(&self) -> Duration {
        self.elapsed_at_start + self.started.elapsed()
    }

    fn passed(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// One untaint run.
pub struct Untaint<'a, A> {
    pub api: &'a A,
    pub handoff: &'a Handoff,
    pub node: String,
    pub report: PathBuf,
    /// Backoff for every wait and retry (zero delays in unit tests).
    pub retry: Retry,
    /// Fresh-GET-and-retry rounds after a 409/422.
    pub conflict_retries: u32,
}

enum Wait {
    Missing,
    Api(ApiError),
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Missing => write!(f, "the Node does not exist yet"),
            Wait::Api(e) => e.fmt(f),
        }
    }
}

impl<A: NodeApi + Sync> Untaint<'_, A> {
    /// Runs to the end: wait, decide, patch.
    pub async fn run(&self, tl: Timeline) -> Result<Outcome, UntaintError> {
        let node = &self.node;
        tracing::info!(
            node,
            deadline_in = ?tl.deadline.saturating_duration_since(Instant::now()),
            reference = ?tl.reference,
            "waiting for the Node"
        );
        let wait = Retry {
            retries: u32::MAX,
            ..self.retry
        };
        let last_error = std::sync::Mutex::new(None::<String>);
        let found = wait
            .run_until(
                tl.give_up,
                "reading the Node",
                |e: &Wait| match e {
                    Wait::Missing => true,
                    Wait::Api(e) => e.is_transient(),
                },
                |_| async {
                    match self.api.get(node).await {
                        Ok(Some(n)) => Ok(n),
                        Ok(None) => Err(Wait::Missing),
                        Err(e) => {
                            if let Ok(mut l) = last_error.lock() {
                                if l.is_none() {
                                    tracing::warn!(%e, "API server not answering; will keep trying");
                                }
                                *l = Some(e.to_string());
                            }
                            Err(Wait::Api(e))
                        }
                    }
                },
            )
            .await;
        let first = match found {
            Ok(n) => n,
            Err(Wait::Missing) => {
                return Err(UntaintError::NeverAppeared {
                    node: node.clone(),
                    waited: tl.started.elapsed(),
                })
            }
            Err(Wait::Api(e)) => return Err(e.into()),
        };
        let mut late = None;
        if tl.passed() {
            late = Some(match last_error.lock().ok().and_then(|l| l.clone()) {
                Some(e) => format!(
                    "deadline {:?} passed before the API server answered (last error: {e})",
                    self.handoff.deadline
                ),
                None => format!(
                    "deadline {:?} passed before the Node registered",
                    self.handoff.deadline
                ),
            });
        }
        let report = self.read_report(&tl).await;
        if late.is_none() && tl.passed() && report.is_err() {
            late = Some(format!(
                "deadline {:?} passed waiting for the report",
                self.handoff.deadline
            ));
        }
        let decision = decide(&report, late.as_deref(), self.handoff.on_deadline);
        let mut record = Record {
            result: if decision.ready { "ready" } else { "degraded" },
            action: Action::TaintAbsent,
            images: report.as_ref().ok().map(|r| {
                format!(
                    "{}/{}",
                    r.summary.pulled + r.summary.present,
                    r.summary.planned
                )
            }),
            required_missing: report.as_ref().ok().map(|r| r.summary.required_missing),
            preload_seconds: report.as_ref().ok().map(|r| r.summary.seconds),
            seconds: (tl.since_reference().as_secs_f64() * 10.0).round() / 10.0,
            reason: decision.reason.clone(),
        };
        if let Some(r) = &decision.reason {
            tracing::warn!(node, reason = %r, "preload degraded or late");
        }
        let uid = first
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        record.action = match self.handoff.mode {
            HandoffMode::Direct => {
                self.apply_direct(&tl, first, &decision, &mut record)
                    .await?
            }
            HandoffMode::Condition => {
                self.apply_condition(&tl, first, &decision, &mut record)
                    .await?
            }
        };
        // Once the outcome is on the Node: an Event for `kubectl describe
        // node`. It never holds the handoff up: one try, bounded, and a
        // failure is only logged.
        let event = event(node, uid.as_deref(), &record, std::time::SystemTime::now());
        match tokio::time::timeout(EVENT_WITHIN, self.api.create_event(node, event)).await {
            Ok(Ok(_)) => tracing::debug!(node, reason = event_reason(&record), "event created"),
            Ok(Err(e)) => {
                tracing::warn!(node, error = %e, "creating the handoff event (the handoff is done)")
            }
            Err(_) => tracing::warn!(
                node,
                "creating the handoff event took too long (the handoff is done)"
            ),
        }
        Ok(Outcome {
            node: node.clone(),
            record,
        })
    }

    /// The report; while it does not exist and the deadline has not passed,
    /// waits for it (pull may run alongside kubelet).
    async fn read_report(&self, tl: &Timeline) -> Result<Report, String> {
        let wait = Retry {
            retries: u32::MAX,
            ..self.retry
        };
        let path = &self.report;
        wait.run_until(
            tl.deadline,
            "reading the report",
            |_: &String| !path.exists(),
            |n| async move {
                if n == 1 {
                    tracing::info!(report = %path.display(), "waiting for the preload report");
                }
                Report::read(path)
            },
        )
        .await
    }

    /// Retries `f` on transient errors until give-up, and on 409/422
    /// (after a fresh GET, which `f` does from its second attempt) up to
    /// `conflict_retries` times.
    async fn with_retries<T, F, Fut>(&self, tl: &Timeline, what: &str, f: F) -> Result<T, ApiError>
    where
        F: Fn(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let conflicts = std::sync::atomic::AtomicU32::new(0);
        let wait = Retry {
            retries: u32::MAX,
            ..self.retry
        };
        wait.run_until(
            tl.give_up,
            what,
            |e: &ApiError| {
                if e.is_conflict() {
                    let n = conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(%e, "someone else wrote the Node; reading it again");
                    n < self.conflict_retries
                } else {
                    e.is_transient()
                }
            },
            f,
        )
        .await
    }

    async fn fresh(&self, attempt: u32, first: &Value) -> Result<Value, ApiError> {
        if attempt == 0 {
            return Ok(first.clone());
        }
        match self.api.get(&self.node).await? {
            Some(n) => Ok(n),
            None => Err(ApiError::Status {
                node: self.node.clone(),
                op: "GET",
                principal: self.api.principal(),
                code: 404,
                reason: "NotFound".into(),
                message: "the Node was deleted while prewarm was handing it over".into(),
            }),
        }
    }

    async fn apply_direct(
        &self,
        tl: &Timeline,
        first: Value,
        decision: &Decision,
        record: &mut Record,
    ) -> Result<Action, ApiError> {
        let taint = &self.handoff.taint;
        let record_for = |action: Action| {
            let mut r = record.clone();
            r.action = action;
            r.to_annotation()
        };
        let action = self
            .with_retries(tl, "patching the Node", |attempt| {
                let first = &first;
                let record_for = &record_for;
                async move {
                    let node = self.fresh(attempt, first).await?;
                    let index = taints(&node).iter().position(|t| taint.matches_json(t));
                    let action = match (decision.hand_over, index) {
                        (true, Some(_)) => Action::Untainted,
                        (true, None) => Action::TaintAbsent,
                        (false, _) => Action::KeptTaint,
                    };
                    let annotation = record_for(action);
                    match (action, index) {
                        (Action::Untainted, Some(i)) => {
                            let mut ops = remove_taint_ops(i, taint);
                            ops.extend(annotation_ops(&node, &annotation));
                            self.api.patch_json(&self.node, Value::Array(ops)).await?;
                        }
                        _ => {
                            self.api
                                .patch_merge(&self.node, annotation_merge(&annotation))
                                .await?;
                        }
                    }
                    Ok(action)
                }
            })
            .await?;
        Ok(action)
    }

    async fn apply_condition(
        &self,
        tl: &Timeline,
        first: Value,
        decision: &Decision,
        record: &mut Record,
    ) -> Result<Action, ApiError> {
        let action = if decision.hand_over {
            Action::ConditionTrue
        } else {
            Action::ConditionFalse
        };
        record.action = action;
        let annotation = record.to_annotation();
        let (reason, status) = match (decision.hand_over, decision.ready) {
            (true, true) => ("ImagesReady", "True"),
            (true, false) => ("PreloadDegraded", "True"),
            (false, _) => ("PreloadIncomplete", "False"),
        };
        let message = condition_message(record);
        let ct = &self.handoff.condition_type;
        self.with_retries(tl, "patching the Node status", |attempt| {
            let first = &first;
            let message = &message;
            async move {
                let node = self.fresh(attempt, first).await?;
                let body = condition_patch(&node, ct, status, reason, message);
                self.api.patch_status(&self.node, body).await
            }
        })
        .await?;
        // The condition is what hands the node over; the annotation only
        // records it, so a failure here is reported but not fatal.
        if let Err(e) = self
            .with_retries(tl, "annotating the Node", |_| {
                self.api
                    .patch_merge(&self.node, annotation_merge(&annotation))
            })
            .await
        {
            tracing::warn!(%e, "the condition is set, but the annotation could not be written");
        }
        Ok(action)
    }
}

/// `test` the key and effect at `index`, then `remove` it.
pub fn remove_taint_ops(index: usize, taint: &Taint) -> Vec<Value> {
    vec![
        json!({"op": "test", "path": format!("/spec/taints/{index}/key"), "value": taint.key}),
        json!({"op": "test", "path": format!("/spec/taints/{index}/effect"), "value": taint.effect.as_str()}),
        json!({"op": "remove", "path": format!("/spec/taints/{index}")}),
    ]
}

/// Sets our annotation. Creating the whole annotations map is guarded by a
/// `test` of the resourceVersion so that it never replaces one that
/// another writer just created.
pub fn annotation_ops(node: &Value, value: &str) -> Vec<Value> {
    if node
        .pointer("/metadata/annotations")
        .is_some_and(Value::is_object)
    {
        vec![json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", pointer_escape(ANNOTATION)),
            "value": value,
        })]
    } else {
        vec![
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version(node)}),
            json!({"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION: value}}),
        ]
    }
}

/// A merge patch that sets only our annotation.
pub fn annotation_merge(value: &str) -> Value {
    json!({"metadata": {"annotations": {ANNOTATION: value}}})
}

fn condition_message(r: &Record) -> String {
    let mut m = match (&r.images, r.required_missing) {
        (Some(i), Some(missing)) => format!("{i} images present, {missing} required missing"),
        _ => "no preload report".to_string(),
    };
    if let Some(s) = r.preload_seconds {
        m.push_str(&format!(", preload {s:.1}s"));
    }
    if let Some(reason) = &r.reason {
        m.push_str(&format!(": {reason}"));
    }
    m
}

/// A strategic merge patch for `status.conditions` (merged by `type`).
/// `lastTransitionTime` moves only when the status changes.
pub fn condition_patch(node: &Value, ct: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = crate::time::rfc3339(std::time::SystemTime::now());
    let existing = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(ct))
        });
    let transition = match existing {
        Some(c) if c.get("status").and_then(Value::as_str) == Some(status) => c
            .get("lastTransitionTime")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| now.clone()),
        _ => now.clone(),
    };
    json!({"status": {"conditions": [{
        "type": ct,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": transition,
    }]}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Summary;

    fn report(required_missing: usize) -> Result<Report, String> {
        // From JSON, so that fields the report gains later need no change.
        let summary = Summary {
            planned: 3,
            pulled: 2,
            present: 1 - required_missing.min(1),
            required_missing,
            ..Default::default()
        };
        Ok(serde_json::from_value(json!({
            "version": 1,
            "started_at": "",
            "finished_at": "",
            "platform": "",
            "snapshotter": "",
            "images": [],
            "summary": summary,
        }))
        .unwrap())
    }

    #[test]
    fn the_policy_table() {
        use OnDeadline::*;
        let missing: Result<Report, String> = Err("reading r.json: not found".into());
        let cases = [
            (report(0), None, Untaint, true, true, None),
            (report(0), None, Keep, true, true, None),
            (report(0), Some("late"), Keep, true, true, Some("late")),
            (
                report(1),
                None,
                Untaint,
                true,
                false,
                Some("1 required image(s) missing"),
            ),
            (
                report(1),
                None,
                Keep,
                false,
                false,
                Some("keeping the taint"),
            ),
            (
                missing.clone(),
                None,
                Untaint,
                true,
                false,
                Some("no usable preload report"),
            ),
            (
                missing,
                Some("deadline"),
                Keep,
                false,
                false,
                Some("deadline"),
            ),
        ];
        for (r, late, policy, hand_over, ready, why) in cases {
            let d = decide(&r, late, policy);
            assert_eq!(
                (d.hand_over, d.ready),
                (hand_over, ready),
                "{r:?} {late:?} {policy:?}"
            );
            match why {
                None => assert_eq!(d.reason, None),
                Some(w) => assert!(d.reason.as_deref().unwrap_or("").contains(w), "{d:?}"),
            }
        }
    }

    fn handoff(policy: OnDeadline) -> Handoff {
        let mut s = crate::config::load_str(&[], &Default::default()).unwrap();
        s.handoff.on_deadline = policy;
        s.handoff.deadline = Duration::from_secs(60);
        s.handoff.give_up_after = Duration::from_secs(60);
        s.handoff
    }

    fn ours() -> Value {
        json!({"key": crate::config::DIRECT_TAINT_KEY, "effect": "NoSchedule"})
    }

    fn run_with(
        api: &(impl NodeApi + Sync),
        h: &Handoff,
        report_path: PathBuf,
    ) -> Result<Outcome, UntaintError> {
        let u = Untaint {
            api,
            handoff: h,
            node: "n1".into(),
            report: report_path,
            retry: Retry {
                retries: 5,
                base: Duration::ZERO,
                ceiling: Duration::ZERO,
            },
            conflict_retries: 3,
        };
        let tl = Timeline::new(
            Reference::Stamp(Duration::from_secs(10)),
            Duration::from_secs(20),
            h,
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(u.run(tl))
    }

    use super::super::api::fake::FakeApi;

    #[test]
    fn conflicts_mean_a_fresh_get_then_success() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        report(0).unwrap().write(&path).unwrap();
        for code in [422, 409] {
            let api = FakeApi::with(json!({
                "metadata": {"name": "n1", "resourceVersion": "5"},
                "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, ours()]},
            }));
            let out = run_with(
                &FailSecond { inner: &api, code },
                &handoff(OnDeadline::Untaint),
                path.clone(),
            )
            .unwrap();
            assert_eq!(out.record.action, Action::Untainted);
            assert_eq!(
                *api.calls.lock().unwrap(),
                ["GET", "PATCH json", "GET", "PATCH json"]
            );
            let node = api.node.lock().unwrap().clone().unwrap();
            assert_eq!(
                node["spec"]["taints"],
                json!([{"key": "a", "effect": "NoSchedule"}])
            );
            let record: Value = serde_json::from_str(
                node["metadata"]["annotations"][ANNOTATION]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(record["result"], "ready");
            assert_eq!(record["images"], "3/3");
        }
    }

    /// Wraps the fake and fails its second call once.
    struct FailSecond<'a> {
        inner: &'a FakeApi,
        code: u16,
    }

    impl NodeApi for FailSecond<'_> {
        fn principal(&self) -> String {
            self.inner.principal()
        }
        async fn get(&self, node: &str) -> Result<Option<Value>, ApiError> {
            self.inner.get(node).await
        }
        async fn patch_json(&self, node: &str, ops: Value) -> Result<Value, ApiError> {
            if self.inner.calls.lock().unwrap().len() == 1 {
                self.inner.calls.lock().unwrap().push("PATCH json".into());
                return Err(ApiError::Status {
                    node: node.into(),
                    op: "PATCH",
                    principal: self.principal(),
                    code: self.code,
                    reason: "Conflict".into(),
                    message: "injected".into(),
                });
            }
            self.inner.patch_json(node, ops).await
        }
        async fn patch_merge(&self, node: &str, body: Value) -> Result<Value, ApiError> {
            self.inner.patch_merge(node, body).await
        }
        async fn patch_status(&self, node: &str, body: Value) -> Result<Value, ApiError> {
            self.inner.patch_status(node, body).await
        }
        async fn create_event(&self, node: &str, event: Value) -> Result<Value, ApiError> {
            self.inner.create_event(node, event).await
        }
    }

    #[test]
    fn keep_writes_only_the_annotation_and_403_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        report(2).unwrap().write(&path).unwrap();
        let api = FakeApi::with(
            json!({"metadata": {"name": "n1", "resourceVersion": "1"}, "spec": {"taints": [ours()]}}),
        );
        let out = run_with(&api, &handoff(OnDeadline::Keep), path.clone()).unwrap();
        assert_eq!(out.record.action, Action::KeptTaint);
        assert_eq!(*api.calls.lock().unwrap(), ["GET", "PATCH merge"]);
        let node = api.node.lock().unwrap().clone().unwrap();
        assert_eq!(node["spec"]["taints"], json!([ours()]));

        api.calls.lock().unwrap().clear();
        api.errors.lock().unwrap().extend([403]);
        let err = run_with(&api, &handoff(OnDeadline::Untaint), path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"n1\"") && err.contains("fake") && err.contains("403"),
            "{err}"
        );
        assert_eq!(api.calls.lock().unwrap().len(), 1, "no retry after a 403");
    }

    #[test]
    fn patches_have_the_documented_shape() {
        let taint = Taint {
            key: "a.io/b".into(),
            value: None,
            effect: crate::taint::Effect::NoSchedule,
        };
        let ops = remove_taint_ops(2, &taint);
        assert_eq!(ops[0]["path"], "/spec/taints/2/key");
        assert_eq!(ops[1]["value"], "NoSchedule");
        assert_eq!(ops[2]["op"], "remove");
        let bare = json!({"metadata": {"resourceVersion": "7"}});
        let ops = annotation_ops(&bare, "x");
        assert_eq!(ops[0]["value"], "7");
        assert_eq!(ops[1]["value"][ANNOTATION], "x");
        let annotated = json!({"metadata": {"annotations": {"a": "b"}}});
        assert_eq!(
            annotation_ops(&annotated, "x")[0]["path"],
            "/metadata/annotations/prewarm.io~1preload"
        );
        let node = json!({"status": {"conditions": [
            {"type": "c", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}});
        let p = condition_patch(&node, "c", "True", "R", "m");
        assert_eq!(
            p["status"]["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        let p = condition_patch(&node, "c", "False", "R", "m");
        assert_ne!(
            p["status"]["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
    }
}
