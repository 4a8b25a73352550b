//! `prewarm untaint`: hand the node over within the deadline.

use super::node_name;
use crate::config::{self, ConfigError, Settings};
use crate::Exit;
use crate::{node, retry};
use anyhow::Context;

pub(super) async fn run(settings: Settings) -> anyhow::Result<Exit> {
    let h = &settings.handoff;
    let name = node_name(&settings)?;
    let tl = node::untaint::Timeline::now(h, &node::clock::SystemClock)?;
    // In condition mode the kubelet's credential appears only after its TLS
    // bootstrap: wait for it, within the same bounds as for the Node.
    let candidates = h.kubeconfig_candidates();
    let wait = retry::Retry {
        retries: u32::MAX,
        ..retry::Retry::new(0)
    };
    let kubeconfig = wait
        .run_until(
            tl.give_up,
            "waiting for the kubeconfig",
            |_: &String| h.mode == config::HandoffMode::Condition,
            |_| {
                let found = candidates.iter().find(|p| p.exists()).cloned();
                let list = candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                async move { found.ok_or(list) }
            },
        )
        .await
        .map_err(|list| ConfigError::Invalid {
            path: h
                .kubeconfig_source
                .clone()
                .unwrap_or_else(|| "built-in default".into()),
            key: "handoff.kubeconfig".into(),
            message: format!("no credential to hand the node over with: none of {list} exists"),
        })?;
    let api = node::api::KubeNodeApi::from_kubeconfig(&kubeconfig, h.request_timeout).await?;
    let run = node::untaint::Untaint {
        api: &api,
        handoff: h,
        node: name,
        report: settings.pull.report.clone(),
        retry: retry::Retry::new(u32::MAX),
        conflict_retries: 10,
    };
    let outcome = run.run(tl).await.context("handing the node over")?;
    let r = &outcome.record;
    let report = crate::report::Report::read(&settings.pull.report).ok();
    if let Some(path) = &settings.pull.metrics_file {
        // The pull's metrics again (from its report), with the handoff.
        crate::metrics::write(path, &crate::metrics::render(report.as_ref(), Some(r)));
    }
    // The list revision the boot pass brought, when its report has one
    // (a refresh also clears a stale one; untaint adds no call for a
    // report without).
    if let Some(report) = report.as_ref().filter(|r| r.list_revision.is_some()) {
        super::annotate_list(&api, &outcome.node, report).await;
    }
    tracing::info!(
        "untaint: node={} result={} action={} images={} required-missing={} seconds={:.1}{}",
        outcome.node,
        r.result,
        r.action.as_str(),
        r.images.as_deref().unwrap_or("-"),
        r.required_missing
            .map_or("-".to_string(), |n| n.to_string()),
        r.seconds,
        r.reason
            .as_ref()
            .map(|w| format!(" reason={w:?}"))
            .unwrap_or_default()
    );
    Ok(Exit::Ok)
}
