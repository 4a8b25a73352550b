//! A stateful fake Kubernetes API server for Nodes, over TLS, on a free
//! loopback port. The real API server cannot run on these machines; this
//! one keeps the semantics prewarm depends on:
//!
//! - `resourceVersion` increases on every write that changes the object; a
//!   patch whose result names another `metadata.resourceVersion` answers
//!   409 Conflict;
//! - JSON patch (`application/json-patch+json`, RFC 6902) with a failing
//!   `test` answers 422; merge patch and strategic merge patch (conditions
//!   and addresses merge by `type`) are supported; `/status` changes only
//!   the status, the main resource never does;
//! - duplicate taints (same key and effect) answer 422, as validation does;
//! - 404 until the "kubelet" creates the Node ([`KubeApi::create_node`]);
//! - 401 without or with a wrong credential; 403 for a principal without
//!   the permission, emulating RBAC, the Node authorizer with the
//!   NodeRestriction plugin (a node may not change `spec.taints`), and
//!   prewarm's ValidatingAdmissionPolicy (the untaint principal may change
//!   only its taint and prewarm's annotations);
//! - TLS from a private CA, bearer tokens and client certificates;
//! - faults on demand: refused connections, error statuses, slow answers,
//!   and a change injected right after a GET.

use crate::http::{read_head, read_request_body};
use crate::proc::run;
use anyhow::{bail, Context, Result};
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The annotation the untaint principal may set.
pub const PRELOAD_ANNOTATION: &str = "prewarm.io/preload";
/// The annotations the untaint principal may set (deploy/admission-policy.yaml).
pub const PREWARM_ANNOTATIONS: [&str; 3] = [
    PRELOAD_ANNOTATION,
    "prewarm.io/list-revision",
    "prewarm.io/list-warm",
];

/// What a principal may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Anything (cluster-admin).
    Admin,
    /// get + patch on nodes (not nodes/status), and through the admission
    /// policy only adding or removing the taint with this key, plus the
    /// `prewarm.io/preload` and list annotations.
    Untainter {
        /// The one taint key this principal may add or remove.
        taint_key: String,
    },
    /// A kubelet (`system:node:<name>`): its own Node and its status; may
    /// not change `spec.taints` (NodeRestriction).
    Node(String),
    /// Authenticated, no permissions at all.
    Nobody,
}

/// A credential for the fake server.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The user name the server knows the principal by.
    pub user: String,
    /// A kubeconfig with the server, the CA and this credential.
    pub kubeconfig: PathBuf,
    /// The bearer token, for a token user.
    pub token: Option<String>,
}

/// What every request gets while it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Normal service.
    None,
    /// Close each connection at once, before TLS: "the API server is down".
    Refuse,
    /// Answer every request with this status.
    Status(u16),
    /// Answer after this delay.
    Delay(Duration),
}

/// One request, as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// `GET`, `PATCH`.
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The request's Content-Type.
    pub content_type: Option<String>,
    /// The request body, parsed, if JSON.
    pub body: Option<Value>,
    /// The status answered.
    pub status: u16,
}

type Hook = Box<dyn FnOnce(&mut Value) + Send>;

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Value>,
    /// (namespace, name) → ConfigMap.
    configmaps: BTreeMap<(String, String), Value>,
    revision: u64,
    tokens: HashMap<String, String>,
    certs: HashMap<Vec<u8>, String>,
    roles: HashMap<String, Role>,
    outage: Option<Outage>,
    fail_next: VecDeque<u16>,
    fail_patch: VecDeque<u16>,
    after_get: HashMap<String, VecDeque<Hook>>,
    log: Vec<Logged>,
    /// When each connection refused under [`Outage::Refuse`] came in.
    refused: Vec<std::time::Instant>,
    /// `events.k8s.io/v1` Events created, by (namespace, name).
    events: BTreeMap<(String, String), Value>,
    /// The status every Event creation fails with, when set.
    refuse_events: Option<u16>,
}

impl State {
    fn bump(&mut self, node: &mut Value) {
        self.revision += 1;
        node["metadata"]["resourceVersion"] = self.revision.to_string().into();
    }
}

/// The running fake API server; stopped on drop.
pub struct KubeApi {
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    /// CA certificate (PEM) the server's certificate chains to.
    pub ca_cert: PathBuf,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KubeApi {
    /// Makes a CA and a server certificate for 127.0.0.1 under `dir`, and
    /// serves HTTPS on a free loopback port.
    pub fn start(dir: &Path) -> Result<KubeApi> {
        Self::start_as(dir, &[])
    }

    /// [`KubeApi::start`] with a certificate that also names `dns_names`,
    /// for clients that reach the loopback port under a cluster's name.
    pub fn start_as(dir: &Path, dns_names: &[&str]) -> Result<KubeApi> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        make_ca(&dir, dns_names)?;
        make_cert(&dir, "server", "127.0.0.1", None, "server")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = CertificateDer::from_pem_file(dir.join("ca.pem")).context("reading ca.pem")?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).context("adding the CA")?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .context("building the client verifier")?;
        let chain = vec![CertificateDer::from_pem_file(dir.join("server.pem"))?];
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .context("building the TLS server config")?;
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the fake API server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(listener, config, state, stop))
        };
        Ok(KubeApi {
            addr,
            ca_cert: dir.join("ca.pem"),
            dir,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A bearer-token user with `role`, and a kubeconfig for it.
    pub fn add_token_user(&self, user: &str, role: Role) -> Result<Credential> {
        let token = format!("{user}-{:x}", crate::registry::unique_seed());
        let token = token.replace([':', '/'], "-");
        {
            let mut s = self.lock();
            s.tokens.insert(token.clone(), user.to_string());
            s.roles.insert(user.to_string(), role);
        }
        let file = format!("{}.kubeconfig", sanitize(user));
        let mut c = self.write_kubeconfig(&file, user, &format!("    token: {token}\n"))?;
        c.token = Some(token);
        Ok(c)
    }

    /// A client-certificate user (CN = `user`, O = `group`) with `role`,
    /// and a kubeconfig that embeds the certificate and key.
    pub fn add_cert_user(&self, user: &str, group: Option<&str>, role: Role) -> Result<Credential> {
        let name = sanitize(user);
        make_cert(&self.dir, &name, user, group, "client")?;
        let der = CertificateDer::from_pem_file(self.dir.join(format!("{name}.pem")))?;
        {
            let mut s = self.lock();
            s.certs.insert(der.as_ref().to_vec(), user.to_string());
            s.roles.insert(user.to_string(), role);
        }
        let b64 = |p: PathBuf| -> Result<String> {
            Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(p)?))
        };
        let user_block = format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(self.dir.join(format!("{name}.pem")))?,
            b64(self.dir.join(format!("{name}.key")))?
        );
        self.write_kubeconfig(&format!("{name}.kubeconfig"), user, &user_block)
    }

    /// A kubeconfig for `user` with a token the server does not know.
    pub fn bogus_kubeconfig(&self) -> Result<Credential> {
        self.write_kubeconfig(
            "bogus.kubeconfig",
            "bogus",
            "    token: not-a-known-token\n",
        )
    }

    fn write_kubeconfig(&self, file: &str, user: &str, user_block: &str) -> Result<Credential> {
        let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&self.ca_cert)?);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: {user:?}\n  user:\n{user_block}\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {user:?}\n\
             current-context: fake\n",
            self.url()
        );
        let path = self.dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(Credential {
            user: user.to_string(),
            kubeconfig: path,
            token: None,
        })
    }

    /// Stores a ConfigMap `namespace/name` with `data`, replacing any.
    /// Only [`Role::Admin`] may read it (a kubelet may not: the Node
    /// authorizer only lets it read ConfigMaps its pods use).
    pub fn put_configmap(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
            "data": data,
        });
        self.lock()
            .configmaps
            .insert((namespace.to_string(), name.to_string()), cm);
    }

    /// The kubelet registers: stores `node` (which needs `metadata.name`),
    /// filling in uid, creationTimestamp and resourceVersion.
    pub fn create_node(&self, mut node: Value) -> Result<()> {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .context("the node has no metadata.name")?
            .to_string();
        let mut s = self.lock();
        if s.nodes.contains_key(&name) {
            bail!("node {name} already exists");
        }
        node["metadata"]["uid"] = format!("uid-{name}").into();
        node["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z".into();
        s.bump(&mut node);
        s.nodes.insert(name, node);
        Ok(())
    }

    /// The stored Node, if any.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.lock().nodes.get(name).cloned()
    }

    /// Another writer changes the Node (the resourceVersion moves).
    pub fn update_node(&self, name: &str, f: impl FnOnce(&mut Value)) -> Result<()> {
        let mut s = self.lock();
        let mut node = s.nodes.get(name).cloned().context("no such node")?;
        f(&mut node);
        s.bump(&mut node);
        s.nodes.insert(name.to_string(), node);
        Ok(())
    }

    /// Right after the server answers the next GET of `name`, another
    /// writer applies `f`: the client's view is stale by the time it
    /// patches.
    pub fn after_next_get(&self, name: &str, f: impl FnOnce(&mut Value) + Send + 'static) {
        self.lock()
            .after_get
            .entry(name.to_string())
            .or_default()
            .push_back(Box::new(f));
    }

    /// Sets (or with [`Outage::None`] ends) an outage.
    pub fn set_outage(&self, o: Outage) {
        self.lock().outage = (o != Outage::None).then_some(o);
    }

    /// The next `n` requests get `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.lock().fail_next.extend(std::iter::repeat_n(status, n));
    }

    /// The next `n` PATCH requests get `status` (GETs are answered).
    pub fn fail_next_patch(&self, n: usize, status: u16) {
        self.lock()
            .fail_patch
            .extend(std::iter::repeat_n(status, n));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// The Events created, in name order.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.values().cloned().collect()
    }

    /// Every Event creation from now on fails with `code` (None: none do).
    pub fn refuse_events(&self, code: Option<u16>) {
        self.lock().refuse_events = code;
    }

    /// Connections refused under [`Outage::Refuse`] at or after `since`.
    pub fn refused_since(&self, since: std::time::Instant) -> usize {
        self.lock().refused.iter().filter(|t| **t >= since).count()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sanitize(user: &str) -> String {
    user.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Certificates (openssl CLI, EC P-256 keys).

const OPENSSL_CNF: &str = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = testbed\n\
    [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
    subjectKeyIdentifier = hash\n\
    [server]\nbasicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n\
    extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\nauthorityKeyIdentifier = keyid\n\
    [client]\nbasicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n\
    extendedKeyUsage = clientAuth\nauthorityKeyIdentifier = keyid\n";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("openssl").current_dir(dir).args(args)).map(|_| ())
}

fn make_ca(dir: &Path, dns_names: &[&str]) -> Result<()> {
    let sans: String = dns_names.iter().map(|n| format!(",DNS:{n}")).collect();
    let cnf = OPENSSL_CNF.replace(
        "subjectAltName = IP:127.0.0.1\n",
        &format!("subjectAltName = IP:127.0.0.1{sans}\n"),
    );
    std::fs::write(dir.join("openssl.cnf"), cnf)?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=testbed-kube-ca",
        ],
    )
}

fn make_cert(dir: &Path, name: &str, cn: &str, group: Option<&str>, ext: &str) -> Result<()> {
    let subj = match group {
        Some(o) => format!("/O={o}/CN={cn}"),
        None => format!("/CN={cn}"),
    };
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-config",
            "openssl.cnf",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subj,
        ],
    )?;
    let serial = format!("{}", crate::registry::unique_seed() % 1_000_000_000);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "30",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            ext,
            "-out",
            &pem,
        ],
    )
}

// ---------------------------------------------------------------------------
// Serving.

fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let refuse = match state.lock() {
                    Ok(mut s) if s.outage == Some(Outage::Refuse) => {
                        s.refused.push(std::time::Instant::now());
                        true
                    }
                    _ => false,
                };
                if refuse {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let (config, state) = (config.clone(), state.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, config, state);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: Arc<Mutex<State>>,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let (head, body) = {
        let mut r = BufReader::new(&mut tls);
        let Some(head) = read_head(&mut r)? else {
            return Ok(());
        };
        let body = read_request_body(&mut r, &head)?;
        (head, body)
    };
    let peer = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    let mut parts = head.start.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let content_type = head.get("content-type").map(str::to_string);
    let bearer = head
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);

    let delay = {
        let s = state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        match s.outage {
            Some(Outage::Delay(d)) => Some(d),
            _ => None,
        }
    };
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
    let (status, answer) = {
        let mut s = state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let user = match (&bearer, &peer) {
            (Some(t), _) => s.tokens.get(t).cloned(),
            (None, Some(der)) => s.certs.get(der).cloned(),
            (None, None) => None,
        };
        let (status, answer) = handle(
            &mut s,
            &method,
            &path,
            user.as_deref(),
            content_type.as_deref(),
            &body,
        );
        let parsed = serde_json::from_slice(&body).ok();
        s.log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            user,
            content_type: content_type.clone(),
            body: parsed,
            status,
        });
        (status, answer)
    };
    let body = serde_json::to_vec(&answer)?;
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    tls.write_all(head.as_bytes())?;
    tls.write_all(&body)?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn status(code: u16, reason: &str, message: String, name: Option<&str>) -> (u16, Value) {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(n) = name {
        v["details"] = json!({"name": n, "kind": "nodes"});
    }
    (code, v)
}

fn handle(
    s: &mut State,
    method: &str,
    path: &str,
    user: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    if let Some(Outage::Status(code)) = s.outage {
        return status(code, "ServiceUnavailable", "injected outage".into(), None);
    }
    if let Some(code) = s.fail_next.pop_front() {
        return status(code, "InternalError", "injected failure".into(), None);
    }
    if method == "PATCH" {
        if let Some(code) = s.fail_patch.pop_front() {
            let msg = format!(
                "Operation cannot be fulfilled on nodes: injected {code}; please apply your \
                 changes to the latest version and try again"
            );
            return status(
                code,
                if code == 409 {
                    "Conflict"
                } else {
                    "InternalError"
                },
                msg,
                None,
            );
        }
    }
    let Some(user) = user else {
        return status(401, "Unauthorized", "Unauthorized".into(), None);
    };
    let role = s.roles.get(user).cloned().unwrap_or(Role::Nobody);
    if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
        return configmap(s, &role, user, method, path, rest);
    }
    if let Some(rest) = path.strip_prefix("/apis/events.k8s.io/v1/namespaces/") {
        return event(s, &role, user, method, rest, body);
    }
    if path == "/api/v1/nodes" && method == "POST" {
        return create(s, &role, user, body);
    }
    let rest = path.strip_prefix("/api/v1/nodes/").unwrap_or_default();
    let (name, sub) = match rest.split_once('/') {
        Some((n, sub)) => (n, Some(sub)),
        None => (rest, None),
    };
    if name.is_empty() || !matches!(sub, None | Some("status")) {
        return status(
            404,
            "NotFound",
            format!("the server could not find {path}"),
            None,
        );
    }
    let resource = if sub.is_some() {
        "nodes/status"
    } else {
        "nodes"
    };
    let verb = match method {
        "GET" => "get",
        "PATCH" => "patch",
        _ => {
            return status(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported here"),
                None,
            )
        }
    };
    if let Some(denied) = authorize(&role, user, verb, resource, name) {
        return status(403, "Forbidden", denied, Some(name));
    }
    let Some(current) = s.nodes.get(name).cloned() else {
        return status(
            404,
            "NotFound",
            format!("nodes \"{name}\" not found"),
            Some(name),
        );
    };
    if verb == "get" {
        if let Some(hook) = s.after_get.get_mut(name).and_then(VecDeque::pop_front) {
            let mut changed = current.clone();
            hook(&mut changed);
            s.bump(&mut changed);
            s.nodes.insert(name.to_string(), changed);
        }
        return (200, current);
    }
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(
            400,
            "BadRequest",
            "the patch is not JSON".into(),
            Some(name),
        );
    };
    let mut patched = current.clone();
    match content_type.map(|c| c.split(';').next().unwrap_or_default().trim()) {
        Some("application/json-patch+json") => {
            let ops: json_patch::Patch = match serde_json::from_value(patch) {
                Ok(p) => p,
                Err(e) => {
                    return status(
                        400,
                        "BadRequest",
                        format!("invalid JSON patch: {e}"),
                        Some(name),
                    )
                }
            };
            if let Err(e) = json_patch::patch(&mut patched, &ops) {
                return status(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                    Some(name),
                );
            }
        }
        Some("application/merge-patch+json") => json_patch::merge(&mut patched, &patch),
        Some("application/strategic-merge-patch+json") => strategic_merge(&mut patched, &patch),
        other => {
            return status(
                415,
                "UnsupportedMediaType",
                format!("unsupported patch type {other:?}"),
                Some(name),
            )
        }
    }
    let want_rv = patched.pointer("/metadata/resourceVersion").cloned();
    let have_rv = current.pointer("/metadata/resourceVersion").cloned();
    if want_rv.is_some() && want_rv != have_rv {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
            Some(name),
        );
    }
    // A subresource writes only its part; the main resource never writes
    // the status.
    let mut next = current.clone();
    if sub == Some("status") {
        next["status"] = patched.get("status").cloned().unwrap_or(Value::Null);
    } else {
        if let Some(m) = patched.get("metadata") {
            next["metadata"] = m.clone();
        }
        next["spec"] = patched.get("spec").cloned().unwrap_or_else(|| json!({}));
        next["metadata"]["resourceVersion"] = have_rv.clone().unwrap_or(Value::Null);
        next["metadata"]["name"] = name.into();
        next["metadata"]["uid"] = current["metadata"]["uid"].clone();
    }
    if let Some(invalid) = validate(name, &next) {
        return status(422, "Invalid", invalid, Some(name));
    }
    if let Some(denied) = admit(&role, user, name, &current, &next) {
        return status(403, "Forbidden", denied, Some(name));
    }
    if next != current {
        s.bump(&mut next);
        s.nodes.insert(name.to_string(), next.clone());
    }
    (200, next)
}

/// POST `/api/v1/nodes`: a kubelet registers its own Node (NodeRestriction
/// lets it set taints only here, at creation); an admin may create any.
fn create(s: &mut State, role: &Role, user: &str, body: &[u8]) -> (u16, Value) {
    let Ok(mut node) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the body is not JSON".into(), None);
    };
    let Some(name) = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return status(
            422,
            "Invalid",
            "Node \"\" is invalid: metadata.name: Required value: name is required".into(),
            None,
        );
    };
    if let Some(denied) = authorize(role, user, "create", "nodes", &name) {
        return status(403, "Forbidden", denied, Some(&name));
    }
    if matches!(role, Role::Untainter { .. }) {
        // Its ClusterRole grants get and patch only.
        return status(
            403,
            "Forbidden",
            format!(
                "nodes is forbidden: User \"{user}\" cannot create resource \"nodes\" in API \
                 group \"\" at the cluster scope"
            ),
            None,
        );
    }
    if s.nodes.contains_key(&name) {
        return status(
            409,
            "AlreadyExists",
            format!("nodes \"{name}\" already exists"),
            Some(&name),
        );
    }
    if let Some(invalid) = validate(&name, &node) {
        return status(422, "Invalid", invalid, Some(&name));
    }
    node["metadata"]["uid"] = format!("uid-{name}").into();
    node["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z".into();
    s.bump(&mut node);
    s.nodes.insert(name, node.clone());
    (201, node)
}

/// RBAC and the Node authorizer.
/// GET `/api/v1/namespaces/<ns>/configmaps/<name>`.
/// `POST /apis/events.k8s.io/v1/namespaces/{ns}/events`, validated as the
/// API server validates an events.k8s.io/v1 Event: a name, the path's
/// namespace, `eventTime` as a MicroTime, `reportingController`,
/// `reportingInstance`, `action` and `reason` present and at most 128
/// characters, `type` Normal or Warning, `note` at most 1 kB. The untaint
/// principal's ClusterRole and a kubelet may create them.
fn event(
    s: &mut State,
    role: &Role,
    user: &str,
    method: &str,
    rest: &str,
    body: &[u8],
) -> (u16, Value) {
    let Some((ns, "events")) = rest.split_once('/') else {
        return status(
            404,
            "NotFound",
            format!("the server could not find {rest}"),
            None,
        );
    };
    if method != "POST" {
        return status(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
            None,
        );
    }
    if matches!(role, Role::Nobody) {
        return status(
            403,
            "Forbidden",
            format!(
                "events.events.k8s.io is forbidden: User \"{user}\" cannot create resource \"events\" \
                 in API group \"events.k8s.io\" in the namespace \"{ns}\""
            ),
            None,
        );
    }
    if let Some(code) = s.refuse_events {
        return status(code, "InternalError", "injected event failure".into(), None);
    }
    let Ok(mut ev) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the body is not JSON".into(), None);
    };
    let text = |p: &str| {
        ev.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let name = text("/metadata/name");
    let mut invalid = Vec::new();
    if name.is_empty() {
        invalid.push("metadata.name: Required value".to_string());
    }
    let declared = text("/metadata/namespace");
    if !declared.is_empty() && declared != ns {
        invalid.push(format!(
            "metadata.namespace: Invalid value: {declared:?}: does not match the request"
        ));
    }
    let time = text("/eventTime");
    let micro = time.len() == 27
        && time.as_bytes()[10] == b'T'
        && time.as_bytes()[19] == b'.'
        && time.ends_with('Z');
    if !micro {
        invalid.push(format!(
            "eventTime: Invalid value: {time:?}: not a MicroTime"
        ));
    }
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        let v = text(&format!("/{field}"));
        if v.is_empty() {
            invalid.push(format!("{field}: Required value"));
        } else if v.len() > 128 {
            invalid.push(format!("{field}: Too long: may not be more than 128 bytes"));
        }
    }
    if !matches!(text("/type").as_str(), "Normal" | "Warning") {
        invalid.push("type: Unsupported value: supported values: \"Normal\", \"Warning\"".into());
    }
    if text("/note").len() > 1024 {
        invalid.push("note: Too long: may not be more than 1024 bytes".into());
    }
    if text("/regarding/kind").is_empty() {
        invalid.push("regarding.kind: Required value".into());
    }
    if !invalid.is_empty() {
        return status(
            422,
            "Invalid",
            format!(
                "Event.events.k8s.io {name:?} is invalid: {}",
                invalid.join(", ")
            ),
            None,
        );
    }
    let key = (ns.to_string(), name.clone());
    if s.events.contains_key(&key) {
        return status(
            409,
            "AlreadyExists",
            format!("events.events.k8s.io {name:?} already exists"),
            None,
        );
    }
    s.revision += 1;
    ev["metadata"]["namespace"] = ns.into();
    ev["metadata"]["uid"] = format!("uid-event-{}", s.revision).into();
    ev["metadata"]["resourceVersion"] = s.revision.to_string().into();
    s.events.insert(key, ev.clone());
    (201, ev)
}

fn configmap(
    s: &State,
    role: &Role,
    user: &str,
    method: &str,
    path: &str,
    rest: &str,
) -> (u16, Value) {
    let parts: Vec<&str> = rest.split('/').collect();
    let [ns, "configmaps", name] = parts.as_slice() else {
        return status(
            404,
            "NotFound",
            format!("the server could not find {path}"),
            None,
        );
    };
    if method != "GET" {
        return status(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
            None,
        );
    }
    if *role != Role::Admin {
        return status(
            403,
            "Forbidden",
            format!(
                "configmaps \"{name}\" is forbidden: User \"{user}\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"{ns}\""
            ),
            None,
        );
    }
    match s.configmaps.get(&(ns.to_string(), name.to_string())) {
        Some(cm) => (200, cm.clone()),
        None => status(
            404,
            "NotFound",
            format!("configmaps \"{name}\" not found"),
            None,
        ),
    }
}

fn authorize(role: &Role, user: &str, verb: &str, resource: &str, name: &str) -> Option<String> {
    let rbac = || {
        format!(
            "nodes \"{name}\" is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" \
             in API group \"\" at the cluster scope"
        )
    };
    match role {
        Role::Admin => None,
        Role::Nobody => Some(rbac()),
        Role::Untainter { .. } => (resource != "nodes").then(rbac),
        Role::Node(own) => (verb != "get" && own != name).then(|| {
            format!("nodes \"{name}\" is forbidden: node \"{own}\" cannot modify node \"{name}\"")
        }),
    }
}

/// Admission: NodeRestriction and prewarm's ValidatingAdmissionPolicy.
fn admit(role: &Role, user: &str, name: &str, old: &Value, new: &Value) -> Option<String> {
    match role {
        Role::Node(own) => {
            (old.pointer("/spec/taints") != new.pointer("/spec/taints")).then(|| {
                format!(
                    "nodes \"{name}\" is forbidden: node \"{own}\" is not allowed to modify taints"
                )
            })
        }
        Role::Untainter { taint_key } => {
            let others = |v: &Value| -> Vec<Value> {
                v.pointer("/spec/taints")
                    .and_then(Value::as_array)
                    .map(|ts| {
                        ts.iter()
                            .filter(|t| t.get("key").and_then(Value::as_str) != Some(taint_key))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let strip = |v: &Value| -> Value {
                let mut v = v.clone();
                if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("taints");
                }
                if let Some(a) = v
                    .pointer_mut("/metadata/annotations")
                    .and_then(Value::as_object_mut)
                {
                    for k in PREWARM_ANNOTATIONS {
                        a.remove(k);
                    }
                    if a.is_empty() {
                        v["metadata"]
                            .as_object_mut()
                            .map(|m| m.remove("annotations"));
                    }
                }
                v
            };
            (others(old) != others(new) || strip(old) != strip(new)).then(|| {
                format!(
                    "nodes \"{name}\" is forbidden: ValidatingAdmissionPolicy \
                     'prewarm-untaint-only' with binding 'prewarm-untaint-only' denied request: \
                     {user} may only add or remove the taint {taint_key}"
                )
            })
        }
        Role::Admin | Role::Nobody => None,
    }
}

/// The validation prewarm could trip: duplicate or malformed taints.
fn validate(name: &str, node: &Value) -> Option<String> {
    let taints = node.pointer("/spec/taints").and_then(Value::as_array)?;
    let mut seen = Vec::new();
    for (i, t) in taints.iter().enumerate() {
        let key = t.get("key").and_then(Value::as_str).unwrap_or_default();
        let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
        if key.is_empty() || !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Some(format!(
                "Node \"{name}\" is invalid: spec.taints[{i}]: Invalid value: {t}"
            ));
        }
        if seen.contains(&(key, effect)) {
            return Some(format!(
                "Node \"{name}\" is invalid: spec.taints[{i}]: Duplicate value: \
                 taints must be unique by key and effect pair"
            ));
        }
        seen.push((key, effect));
    }
    None
}

/// Strategic merge patch for the parts of a Node prewarm touches: maps
/// merge, `null` deletes, `conditions` and `addresses` merge by `type`,
/// other lists are replaced.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let (Value::Object(t), Value::Object(p)) = (&mut *target, patch) else {
        *target = patch.clone();
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (k.as_str(), t.get_mut(k), v) {
            ("conditions" | "addresses", Some(Value::Array(existing)), Value::Array(items)) => {
                for item in items {
                    let ty = item.get("type");
                    match existing.iter_mut().find(|e| e.get("type") == ty) {
                        Some(e) => strategic_merge(e, item),
                        None => existing.push(item.clone()),
                    }
                }
            }
            (_, Some(existing @ Value::Object(_)), Value::Object(_)) => {
                strategic_merge(existing, v)
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}
