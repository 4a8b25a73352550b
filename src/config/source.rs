//! What a `[[sources]]` entry names, once validated: the values the
//! configuration hands to the `sources` module, which reads the lists.

use std::path::PathBuf;
use std::time::Duration;

/// How long a source may take when `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The ConfigMap key read when `key` is not set.
pub const DEFAULT_CONFIGMAP_KEY: &str = "images";

/// One `[[sources]]` entry, validated.
#[derive(Debug, Clone)]
pub struct ListSource {
    /// For messages, the report and the cache file.
    pub name: String,
    pub kind: SourceKind,
    /// Bound on reading the source (all requests included).
    pub timeout: Duration,
    /// Default priority of its entries.
    pub priority: i32,
    /// Default `required` of its entries; a required source that cannot
    /// be read fails the run (exit 6).
    pub required: bool,
    /// The fragment that configured it, and where in it.
    pub defined_in: PathBuf,
    pub key: String,
}

/// Where a list comes from.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// A local TOML file with `[[images]]`, or one reference per line.
    File { path: PathBuf },
    /// A list fetched over HTTPS (plain HTTP only on loopback).
    Url {
        url: reqwest::Url,
        checksum: Checksum,
        /// Extra CA certificates (PEM) to trust for this source.
        ca: Option<PathBuf>,
    },
    /// A key of a ConfigMap, read through the API server.
    ConfigMap {
        namespace: String,
        name: String,
        key: String,
        /// `None`: the `[handoff]` credential.
        kubeconfig: Option<PathBuf>,
    },
    /// OCI image layouts, `oci-archive` or `docker-archive` tarballs: a file,
    /// a layout directory, or a directory of those.
    Archive { path: PathBuf },
}

impl SourceKind {
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::File { .. } => "file",
            SourceKind::Url { .. } => "url",
            SourceKind::ConfigMap { .. } => "configmap",
            SourceKind::Archive { .. } => "archive",
        }
    }
}

/// How a fetched list is checked.
#[derive(Debug, Clone)]
pub enum Checksum {
    /// The SHA-256 of the body, lowercase hex.
    Sha256(String),
    /// A detached file holding it (`sha256sum` output is fine).
    Url(reqwest::Url),
}

/// Accepts `https://…`, or `http://…` on a loopback host only.
pub fn parse_list_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{s:?}: plain http is only accepted for loopback hosts; use https"
        )),
        other => Err(format!("{s:?}: scheme {other:?} is not https")),
    }
}

/// Whether a URL's host is loopback, where plain http is accepted.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str()
        .is_some_and(crate::registry::hosts::is_loopback)
}

/// Accepts 64 hex digits, optionally prefixed `sha256:`; returns lowercase.
pub fn parse_sha256_hex(s: &str) -> Result<String, String> {
    let h = s.trim();
    let h = h.strip_prefix("sha256:").unwrap_or(h);
    if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not a SHA-256 (64 hex digits)"));
    }
    Ok(h.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_loopback() {
        assert!(parse_list_url("https://lists.example/images.list").is_ok());
        assert!(parse_list_url("http://127.0.0.1:8080/l").is_ok());
        assert!(parse_list_url("http://[::1]:8080/l").is_ok());
        assert!(parse_list_url("http://localhost/l").is_ok());
        assert!(parse_list_url("http://lists.example/l").is_err());
        assert!(parse_list_url("http://10.0.0.1/l").is_err());
        assert!(parse_list_url("ftp://127.0.0.1/l").is_err());
        assert!(parse_list_url("not a url").is_err());
    }
}
