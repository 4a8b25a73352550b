//! Registry client: fetches raw manifests and blob streams from the same
//! hosts the node's containerd would use.
//!
//! - Hosts come from containerd's `hosts.toml` under `config_path`
//!   ([`hosts`]): mirrors in file order, then the server. A tag is only
//!   resolved on hosts with the `pull` and `resolve` capabilities; fetching
//!   by digest needs `pull`. A failing host (connection error, any error
//!   status, digest mismatch) passes the request on to the next one.
//! - Credentials come from a docker `config.json` ([`auth`]), looked up by
//!   the host being contacted. A 401 gets one round trip: a bearer token
//!   from the challenge's realm, or Basic credentials. Tokens are cached per
//!   (host, scope) until they expire.
//! - Redirects (to blob storage) are followed by reqwest, which drops the
//!   `Authorization` header when the redirect leaves the host or port.
//! - Nothing here retries: the caller owns retries, backoff and resume.

pub mod auth;
pub mod hosts;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Client, Response, StatusCode, Url};

use crate::reference::{validate_digest, Reference};
use auth::{AuthRequest, Credentials, TokenCache};
use hosts::RegistryHost;

/// Media types asked for when fetching a manifest.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Most a manifest may hold (containerd's limit too).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// containerd's registry `config_path` (e.g. `/etc/containerd/certs.d`);
    /// `None` uses the default hosts only.
    pub config_path: Option<PathBuf>,
    /// A docker `config.json` with credentials; `None` or a missing file
    /// means anonymous pulls.
    pub auth_file: Option<PathBuf>,
    /// Bound on establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Bound on each wait for response headers or the next body bytes.
    pub read_timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
}

/// Registry clients for all hosts. Cheap to clone.
#[derive(Clone)]
pub struct Registries {
    inner: Arc<Inner>,
}

struct Inner {
    opts: RegistryOptions,
    credentials: Credentials,
    tokens: TokenCache,
    /// Resolved hosts per registry domain.
    hosts: Mutex<HashMap<String, Arc<[Endpoint]>>>,
    /// One client per distinct TLS setup.
    clients: Mutex<HashMap<ClientKey, Client>>,
}

#[derive(Clone)]
struct Endpoint {
    host: RegistryHost,
    client: Client,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    ca: Vec<PathBuf>,
    skip_verify: bool,
    /// Loopback hosts bypass any proxy from the environment, as in Go.
    direct: bool,
}

/// A manifest or index, exactly as the registry sent it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// From `Content-Type` when it names a manifest type, else the JSON
    /// `mediaType` field, else guessed from the body
    /// ([`crate::manifest::sniff_media_type`]).
    pub media_type: String,
    /// `sha256:` of `bytes`.
    pub digest: String,
    /// The raw body; never re-serialize it.
    pub bytes: Bytes,
    /// `host[:port]` of the registry host that served it.
    pub host: String,
}

/// A blob body being received.
pub struct Blob {
    /// Where in the blob the stream starts: the requested offset when the
    /// server honoured the range (206), 0 when it sent the whole blob (200).
    pub start: u64,
    /// The whole blob's size, when the server said.
    pub total: Option<u64>,
    /// The body, from `start`. Not digest-checked (containerd does that at
    /// commit).
    pub stream: BoxStream<'static, Result<Bytes, RegistryError>>,
    /// `host[:port]` of the registry host that served it.
    pub host: String,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("start", &self.start)
            .field("total", &self.total)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A `hosts.toml`, certificate directory or CA file is unusable.
    #[error("registry host config {}{}: {message}", path.display(), key_suffix(key))]
    HostsConfig {
        /// The file at fault.
        path: PathBuf,
        /// The TOML key at fault, if any.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The docker `config.json` is unreadable or invalid.
    #[error("registry auth file {}: {message}", path.display())]
    AuthFile {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The HTTP client for a host could not be built.
    #[error("building the HTTP client for {host}")]
    Client {
        /// `host[:port]`.
        host: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// No configured host has the capability the request needs.
    #[error("{image}: no registry host for {domain} has capability {capability}")]
    NoHosts {
        /// The image.
        image: String,
        /// The registry domain.
        domain: String,
        /// `pull` or `resolve`.
        capability: &'static str,
    },
    /// Connecting, sending, or receiving failed (including timeouts). The
    /// message carries the innermost cause (a reset, a refused connect, a
    /// timeout), which is what the operator needs to read in a retry's log.
    #[error("{image}: request to {url} failed: {}", crate::error_chain(source))]
    Http {
        /// The image.
        image: String,
        /// The request URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("{image}: {url} answered HTTP {status}{detail}")]
    Status {
        /// The image.
        image: String,
        /// The request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The registry's error code and message, as ` (CODE: message)`.
        detail: String,
        /// When the registry asked to be tried again (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The registry demanded authentication we cannot give.
    #[error("{image}: {url} requires authentication: {message}")]
    Auth {
        /// The image.
        image: String,
        /// The request URL.
        url: String,
        /// What is missing.
        message: String,
    },
    /// The token realm refused or sent nonsense.
    #[error("{image}: token request to {realm} failed{}: {message}", status.map(|s| format!(" with HTTP {s}")).unwrap_or_default())]
    Token {
        /// The image.
        image: String,
        /// The token realm URL.
        realm: String,
        /// HTTP status, when there was a response.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
    /// The token realm could not be reached.
    #[error(
        "{image}: token request to {realm} failed: {}",
        crate::error_chain(source)
    )]
    TokenHttp {
        /// The image.
        image: String,
        /// The token realm URL.
        realm: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The content does not hash to the digest asked for or announced.
    #[error("{image}: content from {url} has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// The image.
        image: String,
        /// The request URL.
        url: String,
        /// The digest asked for (or announced in `Docker-Content-Digest`).
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The response breaks the protocol (bad `Content-Range`, too large).
    #[error("{image}: invalid response from {url}: {message}")]
    InvalidResponse {
        /// The image.
        image: String,
        /// The request URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The digest to fetch is not `sha256:<64 hex>`.
    #[error("{image}: invalid digest {digest:?}: {why}")]
    InvalidDigest {
        /// The image.
        image: String,
        /// The digest given.
        digest: String,
        /// What is wrong.
        why: &'static str,
    },
}

fn key_suffix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(": key {key}")
    }
}

impl RegistryError {
    /// Whether trying again later may succeed: connection errors, timeouts,
    /// 5xx, 408, 429 and digest mismatches. Authentication, 4xx and
    /// configuration errors are final.
    pub fn is_retryable(&self) -> bool {
        let status_retryable = |s: u16| s >= 500 || s == 408 || s == 429;
        match self {
            RegistryError::Http { .. }
            | RegistryError::TokenHttp { .. }
            | RegistryError::DigestMismatch { .. } => true,
            RegistryError::Status { status, .. } => status_retryable(*status),
            RegistryError::Token { status, .. } => status.is_some_and(status_retryable),
            RegistryError::HostsConfig { .. }
            | RegistryError::AuthFile { .. }
            | RegistryError::Client { .. }
            | RegistryError::NoHosts { .. }
            | RegistryError::Auth { .. }
            | RegistryError::InvalidResponse { .. }
            | RegistryError::InvalidDigest { .. } => false,
        }
    }

    /// Whether and when to try again: as [`RegistryError::is_retryable`],
    /// at the time a 429 or 503 asked for where it said.
    pub fn again(&self) -> crate::retry::Again {
        match self {
            RegistryError::Status {
                retry_after: Some(after),
                ..
            } if self.is_retryable() => crate::retry::Again::After(*after),
            _ => self.is_retryable().into(),
        }
    }
}

/// A `Retry-After` header: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

impl From<hosts::HostsError> for RegistryError {
    fn from(e: hosts::HostsError) -> Self {
        RegistryError::HostsConfig {
            path: e.path,
            key: e.key,
            message: e.message,
        }
    }
}

/// What a request needs of a host.
#[derive(Clone, Copy)]
enum Need {
    /// Fetch by digest: `pull`.
    Pull,
    /// Resolve a tag: `pull` and `resolve`, as containerd requires.
    Resolve,
}

impl Need {
    fn allows(self, caps: &hosts::Capabilities) -> bool {
        match self {
            Need::Pull => caps.pull,
            Need::Resolve => caps.pull && caps.resolve,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Need::Pull => "pull",
            Need::Resolve => "resolve",
        }
    }
}

impl Registries {
    /// Reads the auth file now; `hosts.toml` files are read on first use of
    /// each registry and cached.
    pub fn new(opts: RegistryOptions) -> Result<Self, RegistryError> {
        let credentials = match &opts.auth_file {
            Some(path) => Credentials::load(path)?,
            None => Credentials::default(),
        };
        Ok(Registries {
            inner: Arc::new(Inner {
                opts,
                credentials,
                tokens: TokenCache::default(),
                hosts: Mutex::new(HashMap::new()),
                clients: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// GETs the manifest or index `reference` (a tag or a digest) of
    /// `image`. The bytes are kept raw. When `reference` is a digest the
    /// content must hash to it; for a tag, a `Docker-Content-Digest` header
    /// must match the content. Either mismatch is
    /// [`RegistryError::DigestMismatch`].
    pub async fn fetch_manifest(
        &self,
        image: &Reference,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let expected = if reference.contains(':') {
            check_digest(image, reference)?;
            Some(reference)
        } else {
            None
        };
        let need = if expected.is_some() {
            Need::Pull
        } else {
            Need::Resolve
        };
        self.each_host(image, need, |ep| {
            self.manifest_from(ep, image, reference, expected).boxed()
        })
        .await
    }

    /// GETs blob `digest` from `offset` on (a `Range` request when
    /// `offset > 0`). Check [`Blob::start`]: a server that ignores the range
    /// sends the whole blob and `start` is 0.
    pub async fn open_blob(
        &self,
        image: &Reference,
        digest: &str,
        offset: u64,
    ) -> Result<Blob, RegistryError> {
        self.open_blob_avoiding(image, digest, offset, &[]).await
    }

    /// [`Registries::open_blob`], passing over the hosts in `avoid` (which
    /// served this blob wrong before) while any other can serve it.
    pub async fn open_blob_avoiding(
        &self,
        image: &Reference,
        digest: &str,
        offset: u64,
        avoid: &[String],
    ) -> Result<Blob, RegistryError> {
        check_digest(image, digest)?;
        let endpoints = self.endpoints(&image.domain)?;
        let others = endpoints.iter().any(|e| {
            Need::Pull.allows(&e.host.capabilities) && !avoid.contains(&e.host.authority())
        });
        self.each_host(image, Need::Pull, |ep| {
            if others && avoid.contains(&ep.host.authority()) {
                let host = ep.host.authority();
                return futures_util::future::ready(Err(RegistryError::InvalidResponse {
                    image: image.to_string(),
                    url: host,
                    message: "passed over: it served this blob with the wrong digest".into(),
                }))
                .boxed();
            }
            self.blob_from(ep, image, digest, offset).boxed()
        })
        .await
    }

    /// GETs bytes `start..start+len` of blob `digest` (e.g. a gzip member's
    /// trailing ISIZE: `start = size - 4`, `len = 4`). `None` when the
    /// server ignores ranges; the full body is then not read.
    pub async fn fetch_range(
        &self,
        image: &Reference,
        digest: &str,
        start: u64,
        len: u64,
    ) -> Result<Option<Bytes>, RegistryError> {
        check_digest(image, digest)?;
        if len == 0 {
            return Ok(Some(Bytes::new()));
        }
        self.each_host(image, Need::Pull, |ep| {
            self.range_from(ep, image, digest, start, len).boxed()
        })
        .await
    }

    /// Runs `f` on each host that can serve `need`, in order, until one
    /// succeeds; else returns the last error.
    async fn each_host<'a, T>(
        &'a self,
        image: &'a Reference,
        need: Need,
        mut f: impl FnMut(Endpoint) -> BoxFuture<'a, Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let endpoints = self.endpoints(&image.domain)?;
        let mut last = None;
        for ep in endpoints
            .iter()
            .filter(|e| need.allows(&e.host.capabilities))
        {
            let host = ep.host.authority();
            match f(ep.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::info!(%image, %host, error = %e, "registry host failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::NoHosts {
            image: image.to_string(),
            domain: image.domain.clone(),
            capability: need.name(),
        }))
    }

    async fn manifest_from(
        &self,
        ep: Endpoint,
        image: &Reference,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<Manifest, RegistryError> {
        let url = ep
            .host
            .endpoint(&image.domain, &image.repository, "manifests", reference);
        let accept = HeaderValue::from_str(&MANIFEST_MEDIA_TYPES.join(", "))
            .unwrap_or_else(|_| HeaderValue::from_static("*/*"));
        let resp = self.get(&ep, image, &url, &[(ACCEPT, accept)]).await?;
        let resp = success(resp, image, &url).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type").unwrap_or_default();
        let announced = header("docker-content-digest");
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| e.into_registry(image, &url, MAX_MANIFEST_BYTES))?;
        let digest = crate::digest::sha256(&bytes);
        let expected = match (expected, announced) {
            (Some(asked), _) => Some(asked.to_string()),
            (None, Some(a)) if a.starts_with("sha256:") => Some(a),
            _ => None,
        };
        if let Some(expected) = expected.filter(|e| *e != digest) {
            return Err(RegistryError::DigestMismatch {
                image: image.to_string(),
                url: url.to_string(),
                expected,
                actual: digest,
            });
        }
        Ok(Manifest {
            media_type: media_type(&content_type, &bytes),
            digest,
            bytes,
            host: ep.host.authority(),
        })
    }

    async fn blob_from(
        &self,
        ep: Endpoint,
        image: &Reference,
        digest: &str,
        offset: u64,
    ) -> Result<Blob, RegistryError> {
        let url = ep
            .host
            .endpoint(&image.domain, &image.repository, "blobs", digest);
        let range = (offset > 0).then(|| range_header(offset, None));
        let resp = self.get(&ep, image, &url, range.as_slice()).await?;
        let resp = success(resp, image, &url).await?;
        let (start, total) = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let range = content_range(&resp, image, &url, offset)?;
            (offset, range.and_then(|r| r.total))
        } else {
            (0, resp.content_length())
        };
        let (image_name, url_text) = (image.to_string(), url.to_string());
        let stream = resp
            .bytes_stream()
            .map_err(move |source| RegistryError::Http {
                image: image_name.clone(),
                url: url_text.clone(),
                source: source.without_url(),
            })
            .boxed();
        Ok(Blob {
            start,
            total,
            stream,
            host: ep.host.authority(),
        })
    }

    async fn range_from(
        &self,
        ep: Endpoint,
        image: &Reference,
        digest: &str,
        start: u64,
        len: u64,
    ) -> Result<Option<Bytes>, RegistryError> {
        let url = ep
            .host
            .endpoint(&image.domain, &image.repository, "blobs", digest);
        let range = range_header(start, Some(len));
        let resp = self.get(&ep, image, &url, &[range]).await?;
        let resp = success(resp, image, &url).await?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Ok(None);
        }
        content_range(&resp, image, &url, start)?;
        let limit = usize::try_from(len).unwrap_or(usize::MAX);
        let bytes = read_limited(resp, limit)
            .await
            .map_err(|e| e.into_registry(image, &url, limit))?;
        Ok(Some(bytes))
    }

    /// GETs `url` from `ep`, with the cached authorization if any; on a 401
    /// with a challenge, authorizes once and asks again.
    async fn get(
        &self,
        ep: &Endpoint,
        image: &Reference,
        url: &Url,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Response, RegistryError> {
        let authority = ep.host.authority();
        let scope = format!("repository:{}:pull", image.repository);
        let send = async |authorization: Option<HeaderValue>| {
            let mut req = ep.client.get(url.clone());
            for (name, value) in ep.host.headers.iter().chain(headers) {
                req = req.header(name, value);
            }
            if let Some(value) = authorization {
                req = req.header(AUTHORIZATION, value);
            }
            req.send().await.map_err(|source| RegistryError::Http {
                image: image.to_string(),
                url: url.to_string(),
                source: source.without_url(),
            })
        };
        let resp = send(self.inner.tokens.get(&authority, &scope)).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenges: Vec<auth::Challenge> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(auth::parse_challenges)
            .collect();
        if challenges.is_empty() {
            return Ok(resp);
        }
        drop(resp);
        let image_name = image.to_string();
        let credential = self.inner.credentials.resolve(&authority).await?;
        let request = AuthRequest {
            client: &ep.client,
            image: &image_name,
            url,
            scope: &scope,
            credential: credential.as_ref(),
            headers: &ep.host.headers,
        };
        let authorization = auth::authorize(&request, &challenges).await?;
        self.inner
            .tokens
            .insert(&authority, &scope, authorization.clone());
        send(Some(authorization.header)).await
    }

    /// Reads the `hosts.toml` files and CA certificates of `domains` now,
    /// so that a broken one is a configuration error before anything is
    /// pulled, rather than a failed image later. Touches no network.
    pub fn check_hosts<'a>(
        &self,
        domains: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), RegistryError> {
        for domain in domains {
            self.endpoints(domain)?;
        }
        Ok(())
    }

    /// The hosts for `domain`, loaded on first use.
    fn endpoints(&self, domain: &str) -> Result<Arc<[Endpoint]>, RegistryError> {
        let mut cache = self
            .inner
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = cache.get(domain) {
            return Ok(found.clone());
        }
        let hosts = hosts::load(self.inner.opts.config_path.as_deref(), domain)?;
        let endpoints: Arc<[Endpoint]> = hosts
            .into_iter()
            .map(|host| {
                Ok(Endpoint {
                    client: self.client(&host)?,
                    host,
                })
            })
            .collect::<Result<Vec<_>, RegistryError>>()?
            .into();
        cache.insert(domain.to_string(), endpoints.clone());
        Ok(endpoints)
    }

    /// The client for `host`'s TLS setup, built on first use.
    fn client(&self, host: &RegistryHost) -> Result<Client, RegistryError> {
        let key = ClientKey {
            ca: host.ca.clone(),
            skip_verify: host.skip_verify,
            direct: hosts::is_loopback(&host.authority()),
        };
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let opts = &self.inner.opts;
        let mut builder = Client::builder()
            .user_agent(opts.user_agent.clone())
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .danger_accept_invalid_certs(key.skip_verify);
        if key.direct {
            builder = builder.no_proxy();
        }
        for path in &key.ca {
            let ca_error = |message: String| RegistryError::HostsConfig {
                path: path.clone(),
                key: "ca".to_string(),
                message,
            };
            for cert in read_ca_bundle(path).map_err(ca_error)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|source| RegistryError::Client {
            host: host.authority(),
            source,
        })?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The certificates of a PEM bundle to trust, refusing a file without any.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificates in the file".to_string());
    }
    Ok(certs)
}

/// Passes 2xx responses; turns others into [`RegistryError::Status`] with
/// the registry's error message.
async fn success(resp: Response, image: &Reference, url: &Url) -> Result<Response, RegistryError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let body = read_limited(resp, 64 << 10).await.unwrap_or_default();
    Err(RegistryError::Status {
        image: image.to_string(),
        url: url.to_string(),
        status,
        detail: error_detail(&body),
        retry_after,
    })
}

/// ` (CODE: message)` from a distribution error body, if it is one.
fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) => match e.errors.first() {
            Some(first) => format!(" ({}: {})", first.code, first.message),
            None => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// A manifest's media type: the Content-Type without its parameters, or
/// what the body says when that is generic.
fn media_type(content_type: &str, bytes: &[u8]) -> String {
    let header = content_type.split(';').next().unwrap_or_default().trim();
    crate::manifest::sniff_media_type(header, bytes)
}

fn check_digest(image: &Reference, digest: &str) -> Result<(), RegistryError> {
    validate_digest(digest).map_err(|why| RegistryError::InvalidDigest {
        image: image.to_string(),
        digest: digest.to_string(),
        why,
    })
}

/// `Range: bytes=<start>-` or `bytes=<start>-<start+len-1>`.
fn range_header(start: u64, len: Option<u64>) -> (HeaderName, HeaderValue) {
    let value = match len {
        Some(len) => format!("bytes={start}-{}", start.saturating_add(len - 1)),
        None => format!("bytes={start}-"),
    };
    // Digits and punctuation only: always a valid header value.
    let value = HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""));
    (RANGE, value)
}

/// A parsed `Content-Range: bytes <first>-<last>/<total or *>`.
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    first: u64,
    last: u64,
    total: Option<u64>,
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some(ContentRange {
        first: first.trim().parse().ok()?,
        last: last.trim().parse().ok()?,
        total,
    })
}

/// The `Content-Range` of a 206, checked to start at `offset`. A 206
/// without one is taken at its word.
fn content_range(
    resp: &Response,
    image: &Reference,
    url: &Url,
    offset: u64,
) -> Result<Option<ContentRange>, RegistryError> {
    let Some(value) = resp.headers().get(reqwest::header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    match parse_content_range(text) {
        Some(range) if range.first == offset && range.last >= range.first => Ok(Some(range)),
        _ => Err(RegistryError::InvalidResponse {
            image: image.to_string(),
            url: url.to_string(),
            message: format!("Content-Range {text:?} does not start at byte {offset}"),
        }),
    }
}

/// Why [`read_limited`] failed.
pub(crate) enum ReadError {
    Http(reqwest::Error),
    TooLarge,
}

impl ReadError {
    fn into_registry(self, image: &Reference, url: &Url, limit: usize) -> RegistryError {
        match self {
            ReadError::Http(source) => RegistryError::Http {
                image: image.to_string(),
                url: url.to_string(),
                source: source.without_url(),
            },
            ReadError::TooLarge => RegistryError::InvalidResponse {
                image: image.to_string(),
                url: url.to_string(),
                message: format!("body larger than {limit} bytes"),
            },
        }
    }
}

/// Reads a whole body of at most `limit` bytes.
pub(crate) async fn read_limited(mut resp: Response, limit: usize) -> Result<Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if buf.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A request as the test server saw it.
    #[derive(Debug, Clone)]
    struct Req {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn path(&self) -> &str {
            self.target.split('?').next().unwrap_or_default()
        }
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Resp {
        Resp {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    type Handler = dyn Fn(&Req, SocketAddr) -> Option<Resp> + Send + Sync;

    /// A one-request-per-connection HTTP/1.1 server on 127.0.0.1. A handler
    /// returning `None` leaves the connection open and silent.
    struct Server {
        addr: SocketAddr,
        log: Arc<Mutex<Vec<Req>>>,
    }

    impl Server {
        async fn start(
            handler: impl Fn(&Req, SocketAddr) -> Option<Resp> + Send + Sync + 'static,
        ) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let log = Arc::new(Mutex::new(Vec::new()));
            let handler: Arc<Handler> = Arc::new(handler);
            let server_log = log.clone();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let (handler, log) = (handler.clone(), server_log.clone());
                    tokio::spawn(async move {
                        let Some(req) = read_request(&mut conn).await else {
                            return;
                        };
                        log.lock().unwrap().push(req.clone());
                        let Some(r) = handler(&req, addr) else {
                            std::future::pending::<()>().await;
                            return;
                        };
                        let mut head = format!("HTTP/1.1 {} X\r\n", r.status);
                        for (k, v) in &r.headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str(&format!(
                            "content-length: {}\r\nconnection: close\r\n\r\n",
                            r.body.len()
                        ));
                        let _ = conn.write_all(head.as_bytes()).await;
                        let _ = conn.write_all(&r.body).await;
                        let _ = conn.shutdown().await;
                    });
                }
            });
            Server { addr, log }
        }

        fn host(&self) -> String {
            self.addr.to_string()
        }

        fn requests(&self) -> Vec<Req> {
            self.log.lock().unwrap().clone()
        }
    }

    async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Req> {
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut lines = head.split("\r\n");
        let mut start = lines.next()?.split(' ');
        let (method, target) = (start.next()?.to_string(), start.next()?.to_string());
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[end + 4..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Some(Req {
            method,
            target,
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
        })
    }

    fn opts(config_path: Option<&Path>, auth_file: Option<&Path>) -> RegistryOptions {
        RegistryOptions {
            config_path: config_path.map(Path::to_path_buf),
            auth_file: auth_file.map(Path::to_path_buf),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
            user_agent: "prewarm-test".to_string(),
        }
    }

    fn image(host: &str) -> Reference {
        Reference::parse(&format!("{host}/ml/model:1.0")).unwrap()
    }

    const MANIFEST: &[u8] =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const BLOB: &[u8] = b"0123456789";

    fn blob_digest() -> String {
        crate::digest::sha256(BLOB)
    }

    async fn collect(blob: Blob) -> Vec<u8> {
        let chunks: Vec<Bytes> = blob.stream.try_collect().await.unwrap();
        chunks.concat()
    }

    /// Serves MANIFEST under any manifests path and BLOB under its digest,
    /// honouring `Range` when `ranges` is set.
    fn registry(ranges: bool) -> impl Fn(&Req, SocketAddr) -> Option<Resp> + Send + Sync {
        move |req, _| {
            if req.path().contains("/manifests/") {
                return Some(resp(200, &[("content-type", OCI_MANIFEST)], MANIFEST));
            }
            if !req.path().ends_with(&blob_digest()) {
                return Some(resp(404, &[], ""));
            }
            match req.header("range").and_then(|r| r.strip_prefix("bytes=")) {
                Some(range) if ranges => {
                    let (a, b) = range.split_once('-').unwrap();
                    let a: usize = a.parse().unwrap();
                    let b: usize = if b.is_empty() {
                        BLOB.len() - 1
                    } else {
                        b.parse().unwrap()
                    };
                    let cr = format!("bytes {a}-{b}/{}", BLOB.len());
                    Some(resp(206, &[("content-range", &cr)], &BLOB[a..=b]))
                }
                _ => Some(resp(200, &[], BLOB)),
            }
        }
    }

    #[test]
    fn registries_are_send_sync_and_futures_send() {
        fn send_sync<T: Send + Sync + Clone>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Registries>();
        let r = Registries::new(opts(None, None)).unwrap();
        let i = image("127.0.0.1:1");
        send(&r.fetch_manifest(&i, "1.0"));
        send(&r.open_blob(&i, "sha256:x", 0));
        send(&r.fetch_range(&i, "sha256:x", 0, 4));
    }

    #[tokio::test]
    async fn bearer_token_with_basic_credentials() {
        let server = Server::start(|req, addr| {
            if req.path() == "/token" {
                let ok = req.header("authorization") == Some("Basic dXNlcjpwYXNz");
                return Some(if ok {
                    resp(200, &[], r#"{"token":"tok123","expires_in":300}"#)
                } else {
                    resp(401, &[], "")
                });
            }
            if req.header("authorization") != Some("Bearer tok123") {
                let challenge = format!(
                    r#"Bearer realm="http://{addr}/token",service="test-registry",scope="repository:ml/model:pull""#
                );
                return Some(resp(401, &[("www-authenticate", &challenge)], ""));
            }
            registry(true)(req, addr)
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("config.json");
        let config = format!(
            r#"{{"auths":{{"http://{}":{{"auth":"dXNlcjpwYXNz"}}}}}}"#,
            server.host()
        );
        std::fs::write(&auth, config).unwrap();
        let r = Registries::new(opts(None, Some(&auth))).unwrap();
        let img = image(&server.host());

        let m = r.fetch_manifest(&img, "1.0").await.unwrap();
        assert_eq!(m.bytes.as_ref(), MANIFEST);
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.digest, crate::digest::sha256(MANIFEST));
        assert_eq!(m.host, server.host());

        let reqs = server.requests();
        let targets: Vec<&str> = reqs.iter().map(|r| r.path()).collect();
        assert_eq!(
            targets,
            [
                "/v2/ml/model/manifests/1.0",
                "/token",
                "/v2/ml/model/manifests/1.0"
            ]
        );
        assert_eq!(
            reqs[1].target,
            "/token?service=test-registry&scope=repository%3Aml%2Fmodel%3Apull"
        );
        assert!(reqs[0].header("authorization").is_none());
        assert!(reqs[0].header("accept").unwrap().contains(OCI_MANIFEST));

        // The token is cached: the blob request carries it at once.
        let blob = r.open_blob(&img, &blob_digest(), 0).await.unwrap();
        assert_eq!(collect(blob).await, BLOB);
        let reqs = server.requests();
        assert_eq!(reqs.len(), 4);
        assert_eq!(reqs[3].header("authorization"), Some("Bearer tok123"));
    }

    #[tokio::test]
    async fn identity_token_is_a_refresh_token() {
        let server = Server::start(|req, addr| {
            if req.path() == "/token" {
                return Some(
                    if req.method == "POST" && req.body.contains("grant_type=refresh_token") {
                        resp(200, &[], r#"{"access_token":"acc"}"#)
                    } else {
                        resp(400, &[], "")
                    },
                );
            }
            if req.header("authorization") != Some("Bearer acc") {
                let challenge = format!(r#"Bearer realm="http://{addr}/token",service="s""#);
                return Some(resp(401, &[("www-authenticate", &challenge)], ""));
            }
            registry(true)(req, addr)
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("config.json");
        let config = format!(
            r#"{{"auths":{{"{}":{{"identitytoken":"rt"}}}}}}"#,
            server.host()
        );
        std::fs::write(&auth, config).unwrap();
        let r = Registries::new(opts(None, Some(&auth))).unwrap();
        r.fetch_manifest(&image(&server.host()), "1.0")
            .await
            .unwrap();
        let token = &server.requests()[1];
        assert!(token.body.contains("refresh_token=rt"), "{}", token.body);
        assert!(
            token.body.contains("scope=repository%3Aml%2Fmodel%3Apull"),
            "{}",
            token.body
        );
    }

    #[tokio::test]
    async fn basic_challenge_without_credentials_is_final() {
        let server = Server::start(|_, _| {
            Some(resp(401, &[("www-authenticate", r#"Basic realm="r""#)], ""))
        })
        .await;
        let r = Registries::new(opts(None, None)).unwrap();
        let err = r
            .fetch_manifest(&image(&server.host()), "1.0")
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Auth { .. }), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn redirect_keeps_range_and_drops_authorization() {
        let storage = Server::start(|req, addr| registry(true)(req, addr)).await;
        let location = format!("http://{}/bucket/{}", storage.host(), blob_digest());
        let server = Server::start(move |req, _| {
            if req.header("authorization") != Some("Basic dXNlcjpwYXNz") {
                return Some(resp(401, &[("www-authenticate", r#"Basic realm="r""#)], ""));
            }
            Some(resp(307, &[("location", &location)], ""))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("config.json");
        let config = format!(
            r#"{{"auths":{{"{}":{{"username":"user","password":"pass"}}}}}}"#,
            server.host()
        );
        std::fs::write(&auth, config).unwrap();
        let r = Registries::new(opts(None, Some(&auth))).unwrap();

        let blob = r
            .open_blob(&image(&server.host()), &blob_digest(), 4)
            .await
            .unwrap();
        assert_eq!((blob.start, blob.total), (4, Some(10)));
        assert_eq!(collect(blob).await, b"456789");
        let seen = storage.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].header("range"), Some("bytes=4-"));
        assert!(seen[0].header("authorization").is_none());
    }

    #[tokio::test]
    async fn range_206_and_200() {
        let honours = Server::start(registry(true)).await;
        let ignores = Server::start(registry(false)).await;
        let r = Registries::new(opts(None, None)).unwrap();
        let d = blob_digest();

        let blob = r.open_blob(&image(&honours.host()), &d, 3).await.unwrap();
        assert_eq!((blob.start, blob.total), (3, Some(10)));
        assert_eq!(collect(blob).await, b"3456789");
        assert_eq!(honours.requests()[0].header("range"), Some("bytes=3-"));

        let blob = r.open_blob(&image(&ignores.host()), &d, 3).await.unwrap();
        assert_eq!((blob.start, blob.total), (0, Some(10)));
        assert_eq!(collect(blob).await, BLOB);

        // No Range header at offset 0.
        let blob = r.open_blob(&image(&honours.host()), &d, 0).await.unwrap();
        assert_eq!(blob.start, 0);
        assert!(honours.requests()[1].header("range").is_none());

        let tail = r
            .fetch_range(&image(&honours.host()), &d, 6, 4)
            .await
            .unwrap();
        assert_eq!(tail.as_deref(), Some(&b"6789"[..]));
        assert_eq!(honours.requests()[2].header("range"), Some("bytes=6-9"));
        let tail = r
            .fetch_range(&image(&ignores.host()), &d, 6, 4)
            .await
            .unwrap();
        assert_eq!(tail, None);
    }

    #[tokio::test]
    async fn wrong_content_range_is_an_error() {
        let server =
            Server::start(|_, _| Some(resp(206, &[("content-range", "bytes 0-9/10")], BLOB))).await;
        let r = Registries::new(opts(None, None)).unwrap();
        let err = r
            .open_blob(&image(&server.host()), &blob_digest(), 5)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidResponse { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn manifest_digest_mismatch() {
        let server = Server::start(|req, addr| {
            if req.path().ends_with("/manifests/1.0") {
                let wrong = format!("sha256:{}", "0".repeat(64));
                return Some(resp(200, &[("docker-content-digest", &wrong)], MANIFEST));
            }
            registry(true)(req, addr)
        })
        .await;
        let r = Registries::new(opts(None, None)).unwrap();
        let img = image(&server.host());

        let asked = format!("sha256:{}", "a".repeat(64));
        let err = r.fetch_manifest(&img, &asked).await.unwrap_err();
        match &err {
            RegistryError::DigestMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, &asked);
                assert_eq!(actual, &crate::digest::sha256(MANIFEST));
            }
            other => panic!("{other}"),
        }
        assert!(err.is_retryable());
        assert!(server.requests()[0].path().ends_with(&asked));

        // A tag whose Docker-Content-Digest disagrees with the body.
        let err = r.fetch_manifest(&img, "1.0").await.unwrap_err();
        assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");

        // By the right digest, with no Content-Type: mediaType from JSON.
        let m = r
            .fetch_manifest(&img, &crate::digest::sha256(MANIFEST))
            .await
            .unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);

        let err = r.fetch_manifest(&img, "sha512:abc").await.unwrap_err();
        assert!(matches!(err, RegistryError::InvalidDigest { .. }), "{err}");
    }

    /// Writes `<root>/<host dir>/hosts.toml` for registry `domain`.
    fn hosts_toml(root: &Path, domain: &str, text: &str) {
        let dir = root.join(domain.replace(':', "_") + "_");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts.toml"), text).unwrap();
    }

    #[tokio::test]
    async fn falls_back_from_failing_mirror_to_server() {
        let mirror = Server::start(|_, _| Some(resp(500, &[], "boom"))).await;
        let server = Server::start(registry(true)).await;
        let config = tempfile::tempdir().unwrap();
        hosts_toml(
            config.path(),
            &server.host(),
            &format!(
                "server = \"http://{}\"\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
                server.host(),
                mirror.host()
            ),
        );
        let r = Registries::new(opts(Some(config.path()), None)).unwrap();
        let m = r
            .fetch_manifest(&image(&server.host()), "1.0")
            .await
            .unwrap();
        assert_eq!(m.host, server.host());
        let tried = mirror.requests();
        assert_eq!(tried.len(), 1);
        let ns = format!("ns={}", server.host().replace(':', "%3A"));
        assert_eq!(tried[0].target, format!("/v2/ml/model/manifests/1.0?{ns}"));
        assert!(!server.requests()[0].target.contains("ns="));

        // When every host fails, the last error is returned.
        let missing = format!("sha256:{}", "b".repeat(64));
        let err = r
            .open_blob(&image(&server.host()), &missing, 0)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::Status { status: 404, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn capabilities_choose_hosts() {
        let mirror = Server::start(registry(true)).await;
        let server = Server::start(registry(true)).await;
        let config = tempfile::tempdir().unwrap();
        hosts_toml(
            config.path(),
            &server.host(),
            &format!(
                "server = \"http://{}\"\ncapabilities = [\"pull\"]\n[host.\"http://{}\"]\ncapabilities = [\"pull\"]\n",
                server.host(),
                mirror.host()
            ),
        );
        let r = Registries::new(opts(Some(config.path()), None)).unwrap();
        let img = image(&server.host());
        let err = r.fetch_manifest(&img, "1.0").await.unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::NoHosts {
                    capability: "resolve",
                    ..
                }
            ),
            "{err}"
        );
        assert!(mirror.requests().is_empty() && server.requests().is_empty());

        let m = r
            .fetch_manifest(&img, &crate::digest::sha256(MANIFEST))
            .await
            .unwrap();
        assert_eq!(m.host, mirror.host());
    }

    #[tokio::test]
    async fn registry_errors_are_reported() {
        let server = Server::start(|req, _| {
            let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
            Some(match req.path() {
                p if p.ends_with("/manifests/missing") => resp(404, &[], body),
                _ => resp(429, &[], ""),
            })
        })
        .await;
        let r = Registries::new(opts(None, None)).unwrap();
        let img = image(&server.host());
        let err = r.fetch_manifest(&img, "missing").await.unwrap_err();
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains("HTTP 404 (MANIFEST_UNKNOWN: manifest unknown)"),
            "{text}"
        );
        assert!(
            text.starts_with(&format!("{}/ml/model:1.0: http://", server.host())),
            "{text}"
        );
        let err = r.fetch_manifest(&img, "other").await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }

    #[tokio::test]
    async fn read_timeout_bounds_a_silent_server() {
        let server = Server::start(|_, _| None).await;
        let mut o = opts(None, None);
        o.read_timeout = Duration::from_millis(200);
        let r = Registries::new(o).unwrap();
        let err = r
            .fetch_manifest(&image(&server.host()), "1.0")
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Http { .. }), "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[tokio::test]
    async fn connection_refused_is_retryable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        drop(listener);
        let r = Registries::new(opts(None, None)).unwrap();
        let err = r
            .open_blob(&image(&host), &blob_digest(), 0)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Http { .. }), "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn fixture_config_builds_clients() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry");
        let r = Registries::new(opts(
            Some(&root.join("certs.d")),
            Some(&root.join("config.json")),
        ))
        .unwrap();
        let hosts: Vec<String> = r
            .endpoints("docker.io")
            .unwrap()
            .iter()
            .map(|e| e.host.base.to_string())
            .collect();
        assert_eq!(
            hosts,
            [
                "https://mirror.internal.example/v2",
                "https://pull-only.internal.example:8443/artifactory/api/docker/hub",
                "https://registry-1.docker.io/v2",
            ]
        );
        // Two TLS setups (extra CA; skip_verify) plus the default one.
        assert_eq!(r.inner.clients.lock().unwrap().len(), 3);
        assert_eq!(r.endpoints("quay.io").unwrap().len(), 2);
        assert_eq!(r.inner.clients.lock().unwrap().len(), 3);
        assert!(matches!(
            r.inner.credentials.lookup("mirror.internal.example"),
            Some(auth::Credential::Basic { .. })
        ));
    }

    #[test]
    fn bad_ca_file_names_the_file() {
        let config = tempfile::tempdir().unwrap();
        let dir = config.path().join("quay.io");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts.toml"), "ca = \"nope.pem\"").unwrap();
        std::fs::write(dir.join("nope.pem"), "not a certificate").unwrap();
        let r = Registries::new(opts(Some(config.path()), None)).unwrap();
        let err = r.endpoints("quay.io").err().unwrap();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn content_range_parsing() {
        let cr = |first, last, total| Some(ContentRange { first, last, total });
        assert_eq!(parse_content_range("bytes 5-9/10"), cr(5, 9, Some(10)));
        assert_eq!(parse_content_range("bytes 0-0/*"), cr(0, 0, None));
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(range_header(7, None).1, "bytes=7-");
        assert_eq!(range_header(96, Some(4)).1, "bytes=96-99");
    }

    #[test]
    fn media_type_sources() {
        let docker = "application/vnd.docker.distribution.manifest.v2+json";
        assert_eq!(
            media_type(&format!("{docker}; charset=utf-8"), b"{}"),
            docker
        );
        assert_eq!(media_type("application/json", MANIFEST), OCI_MANIFEST);
        assert_eq!(media_type("", b"not json"), OCI_MANIFEST);
    }
}
