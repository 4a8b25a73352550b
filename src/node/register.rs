//! `prewarm register`: before kubelet starts, make the node register with
//! the startup taint, whichever way it joins.
//!
//! Order of work, so that a failure never leaves a taint without a bound:
//!
//! 1. The whole configuration, `[handoff]` included, was validated when it
//!    was loaded. In direct mode the untaint credential must also load now:
//!    a taint that nothing could remove is never written (exit 2). In
//!    condition mode the kubelet's credential usually appears only after
//!    its TLS bootstrap, so it cannot be checked here.
//! 2. Detect how the node joins (or take `[register] method`).
//! 3. Compute the change to the registration file; parse errors stop here,
//!    before anything is written.
//! 4. Write the start stamp (the deadline's reference point), then the file,
//!    atomically and only if it changes.
//! 5. Direct mode: if the Node object already exists (a reimaged node whose
//!    Node survived), add the taint to it, since `registerWithTaints`
//!    applies only when kubelet creates the Node.
//!
//! Auto-detection order: kubeadm join config present, then k3s, then rke2
//! (their config file or `config.yaml.d` present), then the kubelet
//! `--config-dir` directory present, then a kubelet flags env file present.

use super::api::{resource_version, taints, ApiError, KubeNodeApi, NodeApi};
use super::clock::{Clock, Reference};
use super::kubelet::{self, Change, KubeletError, Source};
use crate::config::{ConfigError, HandoffMode, RegisterMethod, RegisterSettings, Settings};
use crate::retry::Retry;
use crate::taint::Taint;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Why `register` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "cannot tell how this node joins: none of {checked} exists; \
         set [register] method (and its path)"
    )]
    Undetected { checked: String },
    #[error(transparent)]
    File(#[from] KubeletError),
    #[error("writing the start stamp {path}")]
    Stamp {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `register` did.
#[derive(Debug, Clone)]
pub struct Registered {
    pub method: RegisterMethod,
    pub path: PathBuf,
    /// `written`, `unchanged` or `removed` (the taint is configured
    /// elsewhere already).
    pub change: &'static str,
    pub reference: Reference,
    /// What happened to an existing Node object, if it was looked at.
    pub node: Option<String>,
}

fn kubelet_env_path(r: &RegisterSettings) -> PathBuf {
    if let Some(p) = &r.kubelet_env {
        return p.clone();
    }
    let debian = Path::new("/etc/default/kubelet");
    let redhat = Path::new("/etc/sysconfig/kubelet");
    if !debian.exists() && (redhat.exists() || Path::new("/etc/sysconfig").is_dir()) {
        redhat.to_path_buf()
    } else {
        debian.to_path_buf()
    }
}

fn dot_d(config: &Path) -> PathBuf {
    let mut s = config.as_os_str().to_os_string();
    s.push(".d");
    PathBuf::from(s)
}

/// Picks the registration method: the configured one, or the first that
/// this node shows signs of.
pub fn detect(r: &RegisterSettings) -> Result<RegisterMethod, RegisterError> {
    if r.method != RegisterMethod::Auto {
        return Ok(r.method);
    }
    let env = kubelet_env_path(r);
    let candidates: [(RegisterMethod, Vec<PathBuf>); 5] = [
        (RegisterMethod::Kubeadm, vec![r.kubeadm_config.clone()]),
        (
            RegisterMethod::K3s,
            vec![r.k3s_config.clone(), dot_d(&r.k3s_config)],
        ),
        (
            RegisterMethod::Rke2,
            vec![r.rke2_config.clone(), dot_d(&r.rke2_config)],
        ),
        (
            RegisterMethod::KubeletConfigDir,
            vec![r.kubelet_config_dir.clone()],
        ),
        (RegisterMethod::KubeletEnv, vec![env]),
    ];
    for (method, paths) in &candidates {
        if paths.iter().any(|p| p.exists()) {
            return Ok(*method);
        }
    }
    Err(RegisterError::Undetected {
        checked: candidates
            .iter()
            .flat_map(|(_, p)| p.iter().map(|p| p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The file a method writes and the change it needs.
pub fn plan(
    method: RegisterMethod,
    r: &RegisterSettings,
    taint: &Taint,
) -> Result<(PathBuf, Change), RegisterError> {
    let read = |p: &Path| -> Result<Option<Source>, KubeletError> {
        Ok(kubelet::read_optional(p)?.map(|t| (p.to_path_buf(), t)))
    };
    Ok(match method {
        RegisterMethod::Auto => {
            let m = detect(r)?;
            return plan(m, r, taint);
        }
        RegisterMethod::KubeletConfigDir => {
            let path = r.kubelet_config_dir.join(kubelet::KUBELET_DROP_IN);
            let main = read(&r.kubelet_config)?;
            let others = kubelet::read_dir_sorted(
                &r.kubelet_config_dir,
                &[".conf"],
                kubelet::KUBELET_DROP_IN,
            )?;
            let current = kubelet::read_optional(&path)?;
            let change =
                kubelet::config_dir_drop_in(main.as_ref(), &others, current.as_deref(), taint)?;
            (path, change)
        }
        RegisterMethod::Kubeadm => {
            let path = r.kubeadm_config.clone();
            let text = kubelet::read_optional(&path)?.ok_or_else(|| KubeletError::Read {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no kubeadm join config (set [register] kubeadm-config)",
                ),
            })?;
            let change = kubelet::kubeadm_join(&path, &text, taint)?;
            (path, change)
        }
        RegisterMethod::KubeletEnv => {
            let path = kubelet_env_path(r);
            let current = kubelet::read_optional(&path)?;
            (path, kubelet::kubelet_env(current.as_deref(), taint))
        }
        RegisterMethod::K3s | RegisterMethod::Rke2 => {
            let config = if method == RegisterMethod::K3s {
                &r.k3s_config
            } else {
                &r.rke2_config
            };
            let dir = dot_d(config);
            let path = dir.join(kubelet::K3S_DROP_IN);
            let main = read(config)?;
            let others = kubelet::read_dir_sorted(&dir, &[".yaml", ".yml"], kubelet::K3S_DROP_IN)?;
            let current = kubelet::read_optional(&path)?;
            let change = kubelet::k3s_drop_in(main.as_ref(), &others, current.as_deref(), taint)?;
            (path, change)
        }
    })
}

/// Checks that the direct-mode credential loads; an error here means no
/// taint is written.
pub async fn check_credential(settings: &Settings) -> Result<Option<KubeNodeApi>, ConfigError> {
    let h = &settings.handoff;
    if h.mode != HandoffMode::Direct {
        return Ok(None);
    }
    match KubeNodeApi::from_kubeconfig(&h.kubeconfig, h.request_timeout).await {
        Ok(api) => Ok(Some(api)),
        Err(e) => Err(ConfigError::Invalid {
            path: h
                .kubeconfig_source
                .clone()
                .unwrap_or_else(|| PathBuf::from("built-in default")),
            key: "handoff.kubeconfig".into(),
            message: format!(
                "{e}; direct mode removes the taint with this credential, so register \
                 writes no taint without it (or use mode = \"condition\")"
            ),
        }),
    }
}

/// Runs `register` after the configuration and credential checks.
pub async fn register(
    settings: &Settings,
    api: Option<&KubeNodeApi>,
    node_name: &str,
    clock: &impl Clock,
    retry: Retry,
) -> Result<Registered, RegisterError> {
    let h = &settings.handoff;
    let method = detect(&settings.register)?;
    let (path, change) = plan(method, &settings.register, &h.taint)?;
    let reference = super::clock::ensure_stamp(&h.started_file, clock).map_err(|source| {
        RegisterError::Stamp {
            path: h.started_file.clone(),
            source,
        }
    })?;
    kubelet::apply(&path, &change)?;
    let change = match change {
        Change::Unchanged => "unchanged",
        Change::Write(_) => "written",
        Change::Remove => "removed",
    };
    tracing::info!(method = method.name(), path = %path.display(), change, "registration file");
    let node = match api {
        Some(api) if h.pre_taint => Some(
            match tokio::time::timeout(
                // kubelet waits for register: a bounded look, never a long wait.
                h.request_timeout.saturating_mul(2),
                pre_taint(api, node_name, &h.taint, retry),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::Unreachable {
                    node: node_name.into(),
                    op: "GET",
                    principal: api.principal(),
                    message: format!("no answer within {:?}", h.request_timeout.saturating_mul(2)),
                })
            }) {
                Ok(s) => s.to_string(),
                Err(e) => {
                    // Not fatal: the node joins untainted, which is fail-open.
                    tracing::warn!(%e, node = node_name, "could not check for a surviving Node object");
                    format!("not checked ({e})")
                }
            },
        ),
        _ => None,
    };
    Ok(Registered {
        method,
        path,
        change,
        reference,
        node,
    })
}

/// The JSON patch that adds `taint`, guarded against concurrent writers:
/// a `test` of the whole taints list, or of the resourceVersion when there
/// is no list yet.
pub fn add_taint_ops(node: &Value, taint: &Taint) -> Value {
    match node.pointer("/spec/taints") {
        Some(list @ Value::Array(_)) => json!([
            {"op": "test", "path": "/spec/taints", "value": list},
            {"op": "add", "path": "/spec/taints/-", "value": taint.to_json()},
        ]),
        _ => {
            let mut ops = vec![
                json!({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version(node)}),
            ];
            if node.get("spec").is_some_and(Value::is_object) {
                ops.push(json!({"op": "add", "path": "/spec/taints", "value": [taint.to_json()]}));
            } else {
                ops.push(
                    json!({"op": "add", "path": "/spec", "value": {"taints": [taint.to_json()]}}),
                );
            }
            Value::Array(ops)
        }
    }
}

/// Adds the taint to an existing Node that lacks it. Retries after a fresh
/// GET on 409/422, and on transient errors, within `retry`'s cap.
pub async fn pre_taint(
    api: &impl NodeApi,
    node: &str,
    taint: &Taint,
    retry: Retry,
) -> Result<&'static str, ApiError> {
    retry
        .run(
            "adding the taint to the existing Node",
            |e: &ApiError| e.is_conflict() || e.is_transient(),
            |_| async {
                let Some(current) = api.get(node).await? else {
                    return Ok("absent; kubelet will register it with the taint");
                };
                if taints(&current).iter().any(|t| taint.matches_json(t)) {
                    return Ok("exists and already has the taint");
                }
                api.patch_json(node, add_taint_ops(&current, taint)).await?;
                Ok("existed without the taint; taint added")
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::api::fake::FakeApi;
    use crate::taint::Effect;
    use std::time::Duration;

    fn ours() -> Taint {
        Taint {
            key: "startup-taint.cluster-autoscaler.kubernetes.io/prewarm".into(),
            value: None,
            effect: Effect::NoSchedule,
        }
    }

    fn run(api: &FakeApi) -> Result<&'static str, ApiError> {
        let retry = Retry {
            retries: 2,
            base: Duration::ZERO,
            ceiling: Duration::ZERO,
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(pre_taint(api, "n1", &ours(), retry))
    }

    #[test]
    fn pre_taint_adds_once_with_a_guard() {
        // No taints list yet: guarded by the resourceVersion.
        let api = FakeApi::with(json!({"metadata": {"resourceVersion": "3"}, "spec": {}}));
        assert_eq!(run(&api).unwrap(), "existed without the taint; taint added");
        assert_eq!(run(&api).unwrap(), "exists and already has the taint");
        let node = api.node.lock().unwrap().clone().unwrap();
        assert_eq!(node["spec"]["taints"], json!([ours().to_json()]));
        // A list already there: guarded by a test of the whole list.
        let other = json!({"key": "a", "effect": "NoExecute"});
        let api = FakeApi::with(
            json!({"metadata": {"resourceVersion": "3"}, "spec": {"taints": [other]}}),
        );
        let ops = add_taint_ops(&api.node.lock().unwrap().clone().unwrap(), &ours());
        assert_eq!(
            ops[0],
            json!({"op": "test", "path": "/spec/taints", "value": [other]})
        );
        assert_eq!(ops[1]["path"], "/spec/taints/-");
        run(&api).unwrap();
        // No Node: nothing to do.
        assert!(run(&FakeApi::default()).unwrap().starts_with("absent"));
        // A 403 is not retried.
        let api = FakeApi::with(json!({"metadata": {}, "spec": {}}));
        api.errors.lock().unwrap().push_back(403);
        assert_eq!(run(&api).unwrap_err().code(), Some(403));
        assert_eq!(api.calls.lock().unwrap().len(), 1);
    }
}
