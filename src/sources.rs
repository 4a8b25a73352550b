//! Image lists kept outside the configuration (`[[sources]]`): local list
//! files, lists served over HTTPS with a checksum, a key of a Kubernetes
//! ConfigMap (read with a kubeconfig, over the API server's TLS), and image
//! archives baked into the OS image. They are merged with the inline `[[images]]` and
//! de-duplicated by reference (and, once resolved, by digest: see
//! the pull engine).
//!
//! A remote list that cannot be fetched, or whose body does not match its
//! checksum, is replaced by the last good copy cached under
//! `<state-dir>/sources/`, and the log and the report say so. Without a
//! cached copy the source has failed: the run goes on with the other
//! sources, names the source in the log and the report, and exits with
//! code 6 when the source is `required` (see the crate docs). A run whose
//! list is incomplete never unpins or removes anything.

use crate::archive::Archive;
use crate::config::source::{parse_sha256_hex, Checksum, ListSource, SourceKind};
use crate::config::{ImageEntry, ImageList, RawImage};
use crate::reference::Reference;
use crate::report::{SourceReport, SourceStatus};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Most a list (or a checksum file) may hold.
pub const MAX_LIST_BYTES: usize = 4 << 20;
/// A list that could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image list {list}: {at}: {message}")]
    Entry {
        list: String,
        at: String,
        message: String,
    },
    #[error("image list {list}: {message}")]
    Read { list: String, message: String },
}

/// The merged list and what was read to make it.
#[derive(Default)]
pub struct Loaded {
    pub images: ImageList,
    pub archives: Vec<Arc<Archive>>,
    pub reports: Vec<SourceReport>,
    /// Which version of the list this is ([`revision`]); `None` when a
    /// source could not be read at all.
    pub revision: Option<String>,
}

/// The list's revision, as the Node's `prewarm.io/list-revision`
/// annotation shows it: with one `[[sources]]` list and no inline
/// `[[images]]`, the SHA-256 (hex) of that list's body, which is what
/// `sha256sum` of the file, or of the ConfigMap key's value, prints.
/// Otherwise the SHA-256 of one line per source, `<name> <its SHA-256>`,
/// then `inline <SHA-256 of the inline references, sorted, one per
/// line>`. `None` when a source failed (read neither fresh nor cached).
pub fn revision(reports: &[SourceReport], inline: &[ImageEntry]) -> Option<String> {
    let shas: Option<Vec<(&str, &str)>> = reports
        .iter()
        .map(|r| Some((r.name.as_str(), r.sha256.as_deref()?)))
        .collect();
    let shas = shas?;
    if let ([(_, only)], true) = (shas.as_slice(), inline.is_empty()) {
        return Some(only.to_string());
    }
    let mut text = String::new();
    for (name, sha) in &shas {
        text.push_str(&format!("{name} {sha}\n"));
    }
    if !inline.is_empty() {
        text.push_str(&format!("inline {}\n", refs_sha256(inline)));
    }
    Some(hex::encode(Sha256::digest(text.as_bytes())))
}

/// SHA-256 of the entries' references, sorted, one per line.
fn refs_sha256(entries: &[ImageEntry]) -> String {
    let mut refs: Vec<String> = entries.iter().map(|e| e.reference.to_string()).collect();
    refs.sort();
    let mut text = refs.join("\n");
    text.push('\n');
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl Loaded {
    /// Every source was read, fresh or from its cache.
    pub fn complete(&self) -> bool {
        self.reports
            .iter()
            .all(|r| r.status != SourceStatus::Failed)
    }

    /// Required sources that failed.
    pub fn failed_required(&self) -> Vec<&SourceReport> {
        self.reports
            .iter()
            .filter(|r| r.required && r.status == SourceStatus::Failed)
            .collect()
    }
}

/// A command that needs the whole list met a source that failed.
#[derive(Debug, thiserror::Error)]
#[error("the image list is incomplete: {failed}; refusing to remove anything")]
pub struct Incomplete {
    pub failed: String,
}

impl Incomplete {
    pub fn of(l: &Loaded) -> Self {
        Incomplete {
            failed: l
                .reports
                .iter()
                .filter(|r| r.status == SourceStatus::Failed)
                .map(|r| format!("{} ({})", r.name, r.note.as_deref().unwrap_or("failed")))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// Reads a detached checksum: the first word of the first non-comment
/// line, as `sha256sum` writes it.
pub fn parse_checksum_file(text: &str) -> Result<String, String> {
    let word = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().next())
        .ok_or("the checksum file is empty")?;
    parse_sha256_hex(word)
}

/// Parses a list body: a TOML document with `[[images]]` (and optional
/// `version = 1`), or one reference per line with `#` comments. Entries
/// get the source's defaults unless they set their own.
pub fn parse_list(
    src: &ListSource,
    origin: &Path,
    text: &str,
    require_digest: bool,
) -> Result<ImageList, SourceError> {
    let entry_err = |at: String, message: String| SourceError::Entry {
        list: src.name.clone(),
        at,
        message,
    };
    let mut raw: Vec<(String, RawImage)> = Vec::new();
    let significant = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    let is_toml = significant.is_some_and(|l| l.starts_with('[') || l.contains('='));
    if is_toml {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawList {
            version: Option<u32>,
            #[serde(default)]
            images: Vec<RawImage>,
        }
        let list: RawList = toml::from_str(text)
            .map_err(|e| entry_err("TOML".into(), e.to_string().trim_end().replace('\n', " ")))?;
        if let Some(v) = list.version.filter(|v| *v != 1) {
            return Err(entry_err(
                "version".into(),
                format!("version {v} is not supported; lists are version = 1"),
            ));
        }
        raw.extend(
            list.images
                .into_iter()
                .enumerate()
                .map(|(i, img)| (format!("images[{i}].ref"), img)),
        );
    } else {
        for (n, line) in text.lines().enumerate() {
            let line = match line.find('#') {
                Some(i) => &line[..i],
                None => line,
            }
            .trim();
            if line.is_empty() {
                continue;
            }
            raw.push((
                format!("line {}", n + 1),
                RawImage {
                    reference: line.to_string(),
                    priority: None,
                    required: None,
                },
            ));
        }
    }
    let mut out = ImageList::default();
    for (at, img) in raw {
        let reference =
            Reference::parse(&img.reference).map_err(|e| entry_err(at.clone(), e.to_string()))?;
        if require_digest && reference.digest.is_none() {
            return Err(entry_err(
                at,
                crate::config::require_digest_message(&reference),
            ));
        }
        out.add(ImageEntry {
            reference,
            priority: img.priority.unwrap_or(src.priority),
            required: img.required.unwrap_or(src.required),
            source: origin.to_path_buf(),
            key: at,
        });
    }
    Ok(out)
}

/// Where a remote source's last good copy lives: named after what it
/// reads (the URL, or the ConfigMap and key), so a changed source never
/// falls back to another one's list. None for local sources.
pub fn cache_path(state_dir: &Path, kind: &SourceKind) -> Option<PathBuf> {
    let (prefix, what) = match kind {
        SourceKind::Url { url, .. } => ("url", url.to_string()),
        SourceKind::ConfigMap {
            namespace,
            name,
            key,
            ..
        } => ("configmap", format!("{namespace}/{name}/{key}")),
        SourceKind::File { .. } | SourceKind::Archive { .. } => return None,
    };
    let h = hex::encode(Sha256::digest(what.as_bytes()));
    Some(
        state_dir
            .join("sources")
            .join(format!("{prefix}-{}.list", &h[..16])),
    )
}

/// Reads every source, then adds the inline `[[images]]`: the merged list.
/// Never fails as a whole: a failed source is logged and reported.
pub async fn load(s: &crate::config::Settings) -> Loaded {
    let mut loaded = Loaded::default();
    for src in &s.list_sources {
        let mut report = SourceReport {
            name: src.name.clone(),
            kind: src.kind.name().into(),
            required: src.required,
            status: SourceStatus::Read,
            images: 0,
            sha256: None,
            note: None,
            revision: None,
        };
        let entries = match &src.kind {
            SourceKind::File { path } => {
                let read = read_file(src, path, s.pull.require_digest);
                if let Ok((sha, _)) = &read {
                    report.sha256 = Some(sha.clone());
                }
                read.map(|(_, entries)| entries)
            }
            SourceKind::Url { url, checksum, ca } => {
                // Asked conditionally only while the copy they describe is
                // there to fall back on.
                let known = cache_path(&s.pull.state_dir, &src.kind)
                    .filter(|c| c.exists())
                    .and_then(|c| Validators::read(&c));
                let fetched = tokio::time::timeout(
                    src.timeout,
                    fetch_checked(url, checksum, ca.as_deref(), known.as_ref()),
                );
                let fetched = fetched.await.unwrap_or_else(|_| {
                    Err(format!("no complete answer within {:?}", src.timeout))
                });
                let fixed = match checksum {
                    Checksum::Sha256(h) => Some(h.as_str()),
                    Checksum::Url(_) => None,
                };
                read_remote(src, fetched, fixed, Path::new(url.as_str()), s, &mut report)
            }
            SourceKind::ConfigMap {
                namespace,
                name,
                key,
                kubeconfig,
            } => {
                let origin = PathBuf::from(format!("configmap/{namespace}/{name}"));
                let fetched: Result<Fetched, String> = match kubeconfig
                    .clone()
                    .or_else(|| s.handoff.existing_kubeconfig())
                {
                    Some(kc) => tokio::time::timeout(
                        src.timeout,
                        fetch_configmap(&kc, namespace, name, key, src.timeout),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {:?}", src.timeout))),
                    None => Err(format!(
                        "no kubeconfig: none of {} exists yet",
                        s.handoff
                            .kubeconfig_candidates()
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                };
                read_remote(src, fetched, None, &origin, s, &mut report)
            }
            SourceKind::Archive { path } => {
                let path = path.clone();
                let name = src.name.clone();
                match tokio::task::spawn_blocking(move || Archive::open_all(&path)).await {
                    Ok(Ok(archives)) => {
                        let mut entries = ImageList::default();
                        for a in archives {
                            for img in a.images() {
                                entries.add(ImageEntry {
                                    reference: img.reference.clone(),
                                    priority: src.priority,
                                    required: src.required,
                                    source: a.path().to_path_buf(),
                                    key: img.name_key.clone(),
                                });
                            }
                            loaded.archives.push(Arc::new(a));
                        }
                        report.sha256 = Some(refs_sha256(&entries));
                        Ok(entries)
                    }
                    Ok(Err(e)) => Err(SourceError::Read {
                        list: name,
                        message: crate::error_chain(&e),
                    }),
                    Err(e) => Err(SourceError::Read {
                        list: name,
                        message: e.to_string(),
                    }),
                }
            }
        };
        match entries {
            Ok(entries) => {
                report.images = entries.len();
                loaded.images.extend(entries);
            }
            Err(e) => {
                let why = crate::error_chain(&e);
                tracing::error!(source = %src.name, required = src.required, error = %why, "image list source failed");
                report.status = SourceStatus::Failed;
                report.note = Some(why);
            }
        }
        loaded.reports.push(report);
    }
    loaded.revision = revision(&loaded.reports, &s.images);
    loaded.images.extend(s.images.iter().cloned());
    loaded
}

/// A list file's entries, and the SHA-256 of its body.
fn read_file(
    src: &ListSource,
    path: &Path,
    require_digest: bool,
) -> Result<(String, ImageList), SourceError> {
    let bytes = std::fs::read(path).map_err(|e| SourceError::Read {
        list: src.name.clone(),
        message: format!("reading {}: {e}", path.display()),
    })?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let text = String::from_utf8(bytes).map_err(|_| SourceError::Read {
        list: src.name.clone(),
        message: format!("{} is not UTF-8 text", path.display()),
    })?;
    Ok((sha, parse_list(src, path, &text, require_digest)?))
}

/// Checks the local sources (file lists, archives) without touching the
/// network: for `check-config`.
pub fn check_local(s: &crate::config::Settings) -> Result<usize, SourceError> {
    let mut n = 0;
    for src in &s.list_sources {
        match &src.kind {
            SourceKind::File { path } => n += read_file(src, path, s.pull.require_digest)?.1.len(),
            SourceKind::Archive { path } => {
                for a in Archive::open_all(path).map_err(|e| SourceError::Read {
                    list: src.name.clone(),
                    message: crate::error_chain(&e),
                })? {
                    n += a.images().len();
                }
            }
            SourceKind::Url { .. } | SourceKind::ConfigMap { .. } => {}
        }
    }
    Ok(n)
}

/// Parses a fetched list and caches it; when fetching or parsing failed,
/// falls back to the cached copy (checked against `fixed_sha256` when the
/// configuration pins the list).
fn read_remote(
    src: &ListSource,
    fetched: Result<Fetched, String>,
    fixed_sha256: Option<&str>,
    origin: &Path,
    s: &crate::config::Settings,
    report: &mut SourceReport,
) -> Result<ImageList, SourceError> {
    let Some(cache) = cache_path(&s.pull.state_dir, &src.kind) else {
        return Err(SourceError::Read {
            list: src.name.clone(),
            message: "not a remote source".into(),
        });
    };
    let fetched = match fetched {
        Ok(Fetched::NotModified) => {
            // The server says the copy cached with these validators is
            // current: it is the list.
            return match read_cache(src, &cache, fixed_sha256, origin, s.pull.require_digest) {
                Ok((sha, entries)) => {
                    report.status = SourceStatus::Unchanged;
                    report.sha256 = Some(sha);
                    report.revision = Validators::read(&cache).and_then(|v| v.etag);
                    Ok(entries)
                }
                Err(why) => Err(SourceError::Read {
                    list: src.name.clone(),
                    message: format!("the server answered 304 Not Modified, but {why}"),
                }),
            };
        }
        Ok(Fetched::Body { body, validators }) => Ok((body, validators)),
        Err(why) => Err(why),
    };
    let fresh = fetched.and_then(|(body, validators)| {
        let text =
            String::from_utf8(body.clone()).map_err(|_| "the list is not UTF-8".to_string())?;
        let entries = parse_list(src, origin, &text, s.pull.require_digest)
            .map_err(|e| crate::error_chain(&e))?;
        Ok((body, validators, entries))
    });
    match fresh {
        Ok((body, validators, entries)) => {
            report.sha256 = Some(hex::encode(Sha256::digest(&body)));
            report.revision = validators
                .etag
                .clone()
                .or(validators.resource_version.clone());
            match crate::atomic::write_atomic(&cache, &body) {
                Ok(()) => validators.write(&cache),
                Err(e) => {
                    tracing::warn!(source = %src.name, cache = %cache.display(), error = %e, "caching the list")
                }
            }
            Ok(entries)
        }
        Err(why) => match read_cache(src, &cache, fixed_sha256, origin, s.pull.require_digest) {
            Ok((sha, entries)) => {
                let note = format!(
                    "{why}; using the last good copy cached at {}",
                    cache.display()
                );
                tracing::warn!(source = %src.name, "image list {}: {note}", src.name);
                report.status = SourceStatus::Cached;
                report.sha256 = Some(sha);
                report.note = Some(note);
                Ok(entries)
            }
            Err(cache_why) => Err(SourceError::Read {
                list: src.name.clone(),
                message: format!("{why}; {cache_why}"),
            }),
        },
    }
}

/// Reads `key` of ConfigMap `namespace/name` with `kubeconfig`.
async fn fetch_configmap(
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
    key: &str,
    timeout: Duration,
) -> Result<Fetched, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let kc_err = |e: &dyn std::error::Error| {
        format!(
            "kubeconfig {}: {}",
            kubeconfig.display(),
            crate::error_chain(e)
        )
    };
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| kc_err(&e))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| kc_err(&e))?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    let client = kube::Client::try_from(config).map_err(|e| kc_err(&e))?;
    let cm = kube::Api::<ConfigMap>::namespaced(client, namespace)
        .get(name)
        .await
        .map_err(|e| {
            format!(
                "reading ConfigMap {namespace}/{name}: {}",
                crate::error_chain(&e)
            )
        })?;
    let resource_version = cm.metadata.resource_version.clone();
    let body = cm
        .data
        .and_then(|mut d| d.remove(key))
        .map(String::into_bytes)
        .ok_or_else(|| format!("ConfigMap {namespace}/{name} has no key {key:?}"))?;
    Ok(Fetched::Body {
        body,
        validators: Validators {
            resource_version,
            ..Validators::default()
        },
    })
}

fn read_cache(
    src: &ListSource,
    cache: &Path,
    fixed_sha256: Option<&str>,
    origin: &Path,
    require_digest: bool,
) -> Result<(String, ImageList), String> {
    let body = match std::fs::read(cache) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no cached copy at {}", cache.display()))
        }
        Err(e) => return Err(format!("reading the cached copy {}: {e}", cache.display())),
    };
    let sha = hex::encode(Sha256::digest(&body));
    if let Some(want) = fixed_sha256 {
        if sha != want {
            return Err(format!(
                "the cached copy at {} has SHA-256 {sha}, not the configured {want}",
                cache.display()
            ));
        }
    }
    let text = String::from_utf8(body)
        .map_err(|_| format!("the cached copy at {} is not UTF-8", cache.display()))?;
    let entries = parse_list(src, origin, &text, require_digest)
        .map_err(|e| format!("the cached copy is unusable: {}", crate::error_chain(&e)))?;
    Ok((sha, entries))
}

/// What reading a remote list gave.
pub enum Fetched {
    /// The list, and what identifies this version of it.
    Body {
        body: Vec<u8>,
        validators: Validators,
    },
    /// 304: the cached copy is current.
    NotModified,
}

/// What identifies the version of a remote list: a URL's `ETag` and
/// `Last-Modified`, sent back as `If-None-Match` and `If-Modified-Since`;
/// a ConfigMap's `resourceVersion`. Kept beside the cached copy
/// (`<cache>.validators`), and only ever sent while that copy exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Validators {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl Validators {
    fn path(cache: &Path) -> PathBuf {
        let mut p = cache.as_os_str().to_owned();
        p.push(".validators");
        PathBuf::from(p)
    }

    /// Those saved with the copy cached at `cache`, if any.
    pub fn read(cache: &Path) -> Option<Validators> {
        let bytes = std::fs::read(Self::path(cache)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Saves them with the copy just cached at `cache` (or removes stale
    /// ones when there are none).
    fn write(&self, cache: &Path) {
        let path = Self::path(cache);
        if *self == Validators::default() {
            let _ = std::fs::remove_file(&path);
            return;
        }
        let json = serde_json::to_vec(self).unwrap_or_default();
        if let Err(e) = crate::atomic::write_atomic(&path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "saving the list's validators");
        }
    }
}

/// GETs `url` (and its detached checksum) and checks the body's SHA-256.
/// With `known` validators the GET is conditional, and a 304 means the
/// cached copy is current (its checksum was checked when it was cached).
async fn fetch_checked(
    url: &reqwest::Url,
    checksum: &Checksum,
    ca: Option<&Path>,
    known: Option<&Validators>,
) -> Result<Fetched, String> {
    let client = http_client(ca)?;
    let (body, validators) = match get_conditional(&client, url, known).await? {
        Some(got) => got,
        None => return Ok(Fetched::NotModified),
    };
    let want = match checksum {
        Checksum::Sha256(h) => h.clone(),
        Checksum::Url(u) => {
            let text = get(&client, u).await?;
            parse_checksum_file(&String::from_utf8_lossy(&text))
                .map_err(|m| format!("checksum file {u}: {m}"))?
        }
    };
    let got = hex::encode(Sha256::digest(&body));
    if got != want {
        return Err(format!(
            "refused: the body ({} bytes) has SHA-256 {got}, expected {want} (tampered or truncated)",
            body.len()
        ));
    }
    Ok(Fetched::Body { body, validators })
}

fn http_client(ca: Option<&Path>) -> Result<reqwest::Client, String> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let ok = attempt.url().scheme() == "https"
            || (attempt.url().scheme() == "http"
                && crate::config::source::is_loopback(attempt.url()));
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if ok {
            attempt.follow()
        } else {
            attempt.error("refusing a redirect to plain http")
        }
    });
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(policy)
        .no_proxy()
        .user_agent(format!("prewarm/{}", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        let certs =
            crate::registry::read_ca_bundle(ca).map_err(|e| format!("CA {}: {e}", ca.display()))?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| crate::error_chain(&e))
}

async fn get(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    Ok(get_conditional(client, url, None)
        .await?
        .map(|(body, _)| body)
        .unwrap_or_default())
}

/// GETs `url`, conditionally when `known` has validators: `None` for a 304
/// Not Modified, else the body and its validators.
async fn get_conditional(
    client: &reqwest::Client,
    url: &reqwest::Url,
    known: Option<&Validators>,
) -> Result<Option<(Vec<u8>, Validators)>, String> {
    use futures_util::StreamExt;
    let mut req = client.get(url.clone());
    if let Some(k) = known {
        if let Some(etag) = &k.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(date) = &k.last_modified {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, date);
        }
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", crate::error_chain(&e)))?;
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED && known.is_some() {
        tracing::debug!(%url, "the list is unchanged (304)");
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", resp.status().as_u16()));
    }
    let header = |name: reqwest::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let validators = Validators {
        etag: header(reqwest::header::ETAG),
        last_modified: header(reqwest::header::LAST_MODIFIED),
        resource_version: None,
    };
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("GET {url}: {}", crate::error_chain(&e)))?;
        if body.len() + chunk.len() > MAX_LIST_BYTES {
            return Err(format!("GET {url}: more than {MAX_LIST_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some((body, validators)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::source::{parse_list_url, DEFAULT_TIMEOUT};

    fn src(priority: i32, required: bool) -> ListSource {
        ListSource {
            name: "team-list".into(),
            kind: SourceKind::File {
                path: "/etc/prewarm/images.list".into(),
            },
            timeout: DEFAULT_TIMEOUT,
            priority,
            required,
            defined_in: "/etc/prewarm/config.d/50.toml".into(),
            key: "sources[0]".into(),
        }
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn plain_list_with_comments_and_defaults() {
        let text =
            format!("# the team's images\n\nnginx:1.25   # web\n  quay.io/a/b@{D}\n\nnginx:1.25\n");
        let l = parse_list(&src(5, true), Path::new("/x"), &text, false).unwrap();
        assert_eq!(l.len(), 2, "duplicates merge");
        assert_eq!(l[0].reference.to_string(), "docker.io/library/nginx:1.25");
        assert_eq!((l[0].priority, l[0].required), (5, true));
        assert_eq!(l[0].key, "line 3");
        assert_eq!(l[1].reference.digest.as_deref(), Some(D));
    }

    #[test]
    fn toml_list_overrides_defaults() {
        let text = "version = 1\n[[images]]\nref = \"a:1\"\npriority = 9\n[[images]]\nref = \"b:2\"\nrequired = false\n";
        let l = parse_list(&src(1, true), Path::new("/x"), text, false).unwrap();
        assert_eq!((l[0].priority, l[0].required), (9, true));
        assert_eq!((l[1].priority, l[1].required), (1, false));
    }

    #[test]
    fn list_errors_name_the_list_and_line() {
        let err = parse_list(&src(0, false), Path::new("/x"), "ok:1\nBad Ref\n", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("team-list") && err.contains("line 2"), "{err}");
        let err = parse_list(
            &src(0, false),
            Path::new("/x"),
            "[[images]]\nreff = \"a\"\n",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let err = parse_list(&src(0, false), Path::new("/x"), "nginx:1\n", true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("require-digest"),
            "{err}"
        );
        assert!(parse_list(
            &src(0, false),
            Path::new("/x"),
            &format!("nginx@{D}\n"),
            true
        )
        .is_ok());
    }

    #[test]
    fn checksums() {
        let h = "A".repeat(64);
        assert_eq!(parse_sha256_hex(&h).unwrap(), "a".repeat(64));
        assert_eq!(
            parse_sha256_hex(&format!("sha256:{}", "b".repeat(64))).unwrap(),
            "b".repeat(64)
        );
        assert!(parse_sha256_hex("abc").is_err());
        assert!(parse_sha256_hex(&"g".repeat(64)).is_err());
        let file = format!("# made by CI\n{}  images.list\n", "c".repeat(64));
        assert_eq!(parse_checksum_file(&file).unwrap(), "c".repeat(64));
        assert!(parse_checksum_file("\n# nothing\n").is_err());
        assert!(parse_checksum_file("<html>not found</html>").is_err());
    }

    #[test]
    fn merge_keeps_highest_priority_and_any_required() {
        let e = |p, r| ImageEntry {
            reference: Reference::parse("a:1").unwrap(),
            priority: p,
            required: r,
            source: "/x".into(),
            key: "line 1".into(),
        };
        let l: ImageList = [e(1, true), e(7, false)].into_iter().collect();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].priority, l[0].required), (7, true));
    }

    #[test]
    fn the_revision_is_the_one_list_s_sha256_or_a_digest_of_all() {
        let rep = |name: &str, sha: Option<&str>| SourceReport {
            name: name.into(),
            kind: "url".into(),
            required: true,
            status: SourceStatus::Read,
            images: 1,
            sha256: sha.map(String::from),
            note: None,
            revision: None,
        };
        let entry = |r: &str| ImageEntry {
            reference: Reference::parse(r).unwrap(),
            priority: 0,
            required: true,
            source: "/etc/prewarm/config.d/50-site.toml".into(),
            key: "images[0]".into(),
        };
        // One list, nothing inline: what sha256sum of the list prints.
        assert_eq!(
            revision(&[rep("fleet", Some("ab"))], &[]).as_deref(),
            Some("ab")
        );
        // A source not read: no revision.
        assert_eq!(revision(&[rep("fleet", None)], &[]), None);
        // More: a digest of every part, which changes with any of them.
        let two = revision(&[rep("a", Some("1")), rep("b", Some("2"))], &[]).unwrap();
        assert_eq!(
            two,
            hex::encode(Sha256::digest(b"a 1\nb 2\n")),
            "documented in sources::revision"
        );
        let inline = revision(&[rep("a", Some("1"))], &[entry("r.example/x:1")]).unwrap();
        let other = revision(&[rep("a", Some("1"))], &[entry("r.example/x:2")]).unwrap();
        assert_ne!(inline, other);
        assert_eq!(
            revision(&[], &[entry("r.example/x:1")]).map(|r| r.len()),
            Some(64)
        );
    }

    #[test]
    fn cache_paths_are_per_source() {
        let url = |u: &str| SourceKind::Url {
            url: parse_list_url(u).unwrap(),
            checksum: Checksum::Sha256("0".repeat(64)),
            ca: None,
        };
        let a = cache_path(Path::new("/s"), &url("https://a.example/l")).unwrap();
        let b = cache_path(Path::new("/s"), &url("https://b.example/l")).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("/s/sources"));
        let cm = |key: &str| SourceKind::ConfigMap {
            namespace: "kube-system".into(),
            name: "prewarm".into(),
            key: key.into(),
            kubeconfig: None,
        };
        assert_ne!(
            cache_path(Path::new("/s"), &cm("a")),
            cache_path(Path::new("/s"), &cm("b"))
        );
        assert!(cache_path(Path::new("/s"), &SourceKind::File { path: "/l".into() }).is_none());
    }

    #[test]
    fn kubernetes_names() {
        assert!(
            crate::taint::is_dns_label("kube-system")
                && !crate::taint::is_dns_label("Kube")
                && !crate::taint::is_dns_label("-a")
        );
        assert!(
            crate::taint::is_dns_subdomain("prewarm.images")
                && !crate::taint::is_dns_subdomain("a..b")
        );
    }
}
