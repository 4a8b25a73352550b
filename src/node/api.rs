//! The Kubernetes API, as far as prewarm needs it: read one Node and patch
//! it. [`NodeApi`] is the seam: unit tests fake it, integration tests run
//! [`KubeNodeApi`] (kube-rs over rustls) against a fake API server.

use crate::error_chain;
use kube::core::{params::PatchParams, Request};
use kube::Client;
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A failed call to the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error status.
    #[error("node {node:?}: {op} as {principal}: {code} {reason}: {message}")]
    Status {
        node: String,
        op: &'static str,
        principal: String,
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer: connection refused, TLS failure, timeout.
    #[error("node {node:?}: {op} as {principal}: the API server did not answer: {message}")]
    Unreachable {
        node: String,
        op: &'static str,
        principal: String,
        message: String,
    },
    /// The credential could not be loaded.
    #[error("loading the kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
}

impl ApiError {
    /// The HTTP status, if the server answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// 409 Conflict or 422 from a failed JSON-patch `test`: someone else
    /// wrote the Node; GET it again and recompute the patch.
    pub fn is_conflict(&self) -> bool {
        matches!(self.code(), Some(409 | 422))
    }

    /// Worth trying again later: no answer, 429 or a 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Unreachable { .. } => true,
            ApiError::Status { code, .. } => *code == 429 || *code >= 500,
            ApiError::Kubeconfig { .. } => false,
        }
    }
}

/// The calls prewarm makes on one Node. Bodies and answers are the Node as
/// JSON, so that nothing prewarm does not understand is lost or rewritten.
pub trait NodeApi {
    /// Who is calling, for error messages (kubeconfig user and file).
    fn principal(&self) -> String;
    /// The Node, or `None` while it does not exist (404).
    fn get(&self, node: &str) -> impl Future<Output = Result<Option<Value>, ApiError>> + Send;
    /// An RFC 6902 JSON patch (`application/json-patch+json`).
    fn patch_json(
        &self,
        node: &str,
        ops: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;
    /// A JSON merge patch (`application/merge-patch+json`) on the Node.
    fn patch_merge(
        &self,
        node: &str,
        body: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;
    /// A strategic merge patch on the `status` subresource (conditions merge
    /// by `type`).
    fn patch_status(
        &self,
        node: &str,
        body: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;
    /// Creates an `events.k8s.io/v1` Event about `node` in its namespace.
    fn create_event(
        &self,
        node: &str,
        event: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;
}

/// [`NodeApi`] over kube-rs, with a timeout on every call.
#[derive(Clone)]
pub struct KubeNodeApi {
    client: Client,
    principal: String,
    timeout: Duration,
}

/// The field manager prewarm's patches are recorded under.
pub const FIELD_MANAGER: &str = "prewarm";

impl KubeNodeApi {
    /// Loads `kubeconfig` (its current context) and builds a client; no
    /// network traffic yet. Fails on a missing or unusable file.
    pub async fn from_kubeconfig(path: &Path, timeout: Duration) -> Result<Self, ApiError> {
        let err = |message: String| ApiError::Kubeconfig {
            path: path.to_path_buf(),
            message,
        };
        let kubeconfig =
            kube::config::Kubeconfig::read_from(path).map_err(|e| err(error_chain(&e)))?;
        let user = kubeconfig
            .current_context
            .as_ref()
            .and_then(|c| kubeconfig.contexts.iter().find(|n| &n.name == c))
            .and_then(|n| n.context.as_ref())
            .and_then(|c| c.user.clone())
            .unwrap_or_else(|| "?".into());
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| err(error_chain(&e)))?;
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let client = Client::try_from(config).map_err(|e| err(error_chain(&e)))?;
        Ok(KubeNodeApi {
            client,
            principal: format!("kubeconfig user {user:?} ({})", path.display()),
            timeout,
        })
    }

    async fn call(
        &self,
        node: &str,
        op: &'static str,
        req: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Value, ApiError> {
        let unreachable = |message: String| ApiError::Unreachable {
            node: node.to_string(),
            op,
            principal: self.principal.clone(),
            message,
        };
        let req = req.map_err(|e| unreachable(format!("building the request: {e}")))?;
        match tokio::time::timeout(self.timeout, self.client.request::<Value>(req)).await {
            Err(_) => Err(unreachable(format!("no answer within {:?}", self.timeout))),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(e))) => Err(ApiError::Status {
                node: node.to_string(),
                op,
                principal: self.principal.clone(),
                code: e.code,
                reason: e.reason,
                message: e.message,
            }),
            Ok(Err(e)) => Err(unreachable(error_chain(&e))),
        }
    }
}

fn nodes() -> Request {
    Request::new("/api/v1/nodes")
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

impl NodeApi for KubeNodeApi {
    fn principal(&self) -> String {
        self.principal.clone()
    }

    async fn get(&self, node: &str) -> Result<Option<Value>, ApiError> {
        let req = nodes().get(node, &Default::default());
        match self.call(node, "GET", req).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn patch_json(&self, node: &str, ops: Value) -> Result<Value, ApiError> {
        let patch: json_patch::Patch =
            serde_json::from_value(ops).map_err(|e| ApiError::Unreachable {
                node: node.to_string(),
                op: "PATCH",
                principal: self.principal.clone(),
                message: format!("building the JSON patch: {e}"),
            })?;
        let req = nodes().patch(
            node,
            &params(),
            &kube::core::params::Patch::<()>::Json(patch),
        );
        self.call(node, "PATCH (json-patch)", req).await
    }

    async fn patch_merge(&self, node: &str, body: Value) -> Result<Value, ApiError> {
        let req = nodes().patch(node, &params(), &kube::core::params::Patch::Merge(body));
        self.call(node, "PATCH (merge)", req).await
    }

    async fn patch_status(&self, node: &str, body: Value) -> Result<Value, ApiError> {
        let req = nodes().patch_subresource(
            "status",
            node,
            &params(),
            &kube::core::params::Patch::Strategic(body),
        );
        self.call(node, "PATCH status (strategic-merge)", req).await
    }

    async fn create_event(&self, node: &str, event: Value) -> Result<Value, ApiError> {
        let ns = event
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let req = serde_json::to_vec(&event)
            .map_err(kube::core::request::Error::SerializeBody)
            .and_then(|body| {
                Request::new(format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"))
                    .create(&Default::default(), body)
            });
        self.call(node, "POST event", req).await
    }
}

// ---------------------------------------------------------------------------
// Reading a Node

/// `metadata.resourceVersion`.
pub fn resource_version(node: &Value) -> Option<&str> {
    node.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// `spec.taints`, empty when absent.
pub fn taints(node: &Value) -> &[Value] {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// An in-memory [`NodeApi`] for unit tests: one Node, resourceVersion
/// bumps, JSON patch with `test`, and scripted errors.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeApi {
        pub node: Mutex<Option<Value>>,
        /// Status codes the next calls fail with, in order.
        pub errors: Mutex<VecDeque<u16>>,
        pub calls: Mutex<Vec<String>>,
        /// Events created (they take no injected error and no call slot).
        pub events: Mutex<Vec<Value>>,
    }

    impl FakeApi {
        pub fn with(node: Value) -> Self {
            let f = FakeApi::default();
            *f.node.lock().unwrap() = Some(node);
            f
        }

        fn fail(&self, node: &str, op: &'static str) -> Result<(), ApiError> {
            self.calls.lock().unwrap().push(op.to_string());
            match self.errors.lock().unwrap().pop_front() {
                Some(code) => Err(ApiError::Status {
                    node: node.into(),
                    op,
                    principal: self.principal(),
                    code,
                    reason: "Injected".into(),
                    message: "injected".into(),
                }),
                None => Ok(()),
            }
        }

        fn write(
            &self,
            node: &str,
            op: &'static str,
            f: impl FnOnce(&mut Value) -> Result<(), u16>,
        ) -> Result<Value, ApiError> {
            self.fail(node, op)?;
            let mut guard = self.node.lock().unwrap();
            let Some(current) = guard.as_mut() else {
                return Err(ApiError::Status {
                    node: node.into(),
                    op,
                    principal: self.principal(),
                    code: 404,
                    reason: "NotFound".into(),
                    message: String::new(),
                });
            };
            let mut next = current.clone();
            f(&mut next).map_err(|code| ApiError::Status {
                node: node.into(),
                op,
                principal: self.principal(),
                code,
                reason: "Invalid".into(),
                message: "test failed".into(),
            })?;
            let rv: u64 = resource_version(current)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            next["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
            *current = next.clone();
            Ok(next)
        }
    }

    impl NodeApi for FakeApi {
        fn principal(&self) -> String {
            "kubeconfig user \"fake\"".into()
        }

        async fn get(&self, node: &str) -> Result<Option<Value>, ApiError> {
            self.fail(node, "GET")?;
            Ok(self.node.lock().unwrap().clone())
        }

        async fn patch_json(&self, node: &str, ops: Value) -> Result<Value, ApiError> {
            self.write(node, "PATCH json", |n| {
                let p: json_patch::Patch = serde_json::from_value(ops).map_err(|_| 400u16)?;
                json_patch::patch(n, &p).map_err(|_| 422u16)
            })
        }

        async fn patch_merge(&self, node: &str, body: Value) -> Result<Value, ApiError> {
            self.write(node, "PATCH merge", |n| {
                json_patch::merge(n, &body);
                Ok(())
            })
        }

        async fn patch_status(&self, node: &str, body: Value) -> Result<Value, ApiError> {
            self.write(node, "PATCH status", |n| {
                json_patch::merge(n, &body);
                Ok(())
            })
        }

        async fn create_event(&self, _node: &str, event: Value) -> Result<Value, ApiError> {
            self.events.lock().unwrap().push(event.clone());
            Ok(event)
        }
    }
}
