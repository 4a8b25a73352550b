//! containerd's registry host configuration: `<config_path>/<host>/hosts.toml`.
//!
//! This mirrors `remotes/docker/config/hosts.go` in containerd, so prewarm
//! pulls from the same mirrors, in the same order, as the node's containerd:
//!
//! - the host directory is the first that exists of `<host>_<port>_` (only
//!   when the host has a port), `<host>` and `_default`;
//! - in it, `hosts.toml` lists `[host."<url>"]` tables in file order and the
//!   top-level `server` last; without `hosts.toml`, the directory's `*.crt`
//!   files are extra CAs for the default server (Docker's `certs.d` layout);
//! - without any directory, the default server is used: `docker.io` →
//!   `https://registry-1.docker.io`, loopback hosts → `http://<host>`,
//!   anything else → `https://<host>`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;

/// What a host may be asked for (containerd's `capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Resolve a tag to a digest.
    pub resolve: bool,
    /// Push (never used by prewarm, kept for completeness).
    pub push: bool,
}

impl Capabilities {
    /// `pull`, `resolve` and `push`: the default when none are listed.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One place to send registry requests to, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// API base: scheme, host, port and path (`…/v2`, or the configured
    /// path as-is with `override_path`), without a trailing slash.
    pub base: Url,
    /// What this host may be asked for.
    pub capabilities: Capabilities,
    /// Extra PEM CA files, absolute.
    pub ca: Vec<PathBuf>,
    /// Accept any server certificate.
    pub skip_verify: bool,
    /// Extra headers sent with every request to this host.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl RegistryHost {
    /// `host[:port]` of the API base, as containerd compares it.
    pub fn authority(&self) -> String {
        authority(&self.base)
    }

    /// Whether this host serves `domain`'s images on its behalf, in which
    /// case containerd adds `?ns=<domain>` to every request.
    pub fn is_mirror_for(&self, domain: &str) -> bool {
        let host = self.authority();
        host != domain && !(domain == "docker.io" && host == DOCKER_HUB_API)
    }

    /// The URL of `<base>/<repository>/<kind>/<reference>`, with the `ns`
    /// query when this host is a mirror for `domain`.
    pub fn endpoint(&self, domain: &str, repository: &str, kind: &str, reference: &str) -> Url {
        let mut url = self.base.clone();
        let path = format!(
            "{}/{repository}/{kind}/{reference}",
            self.base.path().trim_end_matches('/')
        );
        url.set_path(&path);
        if self.is_mirror_for(domain) {
            url.query_pairs_mut().append_pair("ns", domain);
        }
        url
    }
}

/// A `hosts.toml` or certificate directory that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), if key.is_empty() { String::new() } else { format!(": key {key}") })]
pub struct HostsError {
    /// The file (or directory) at fault.
    pub path: PathBuf,
    /// The TOML key at fault, dotted; empty when the whole file is.
    pub key: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Returns the hosts to try for registry `domain`, in order.
pub fn load(config_path: Option<&Path>, domain: &str) -> Result<Vec<RegistryHost>, HostsError> {
    let dir = match config_path {
        Some(root) => host_dir(root, domain)?,
        None => None,
    };
    let Some(dir) = dir else {
        return Ok(vec![default_host(domain, None, Vec::new(), Vec::new())?]);
    };
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.is_empty() => parse(&dir, &file, &text, domain),
        Ok(_) => cert_dir(&dir, domain),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => cert_dir(&dir, domain),
        Err(e) => Err(file_error(&file, format!("cannot read: {e}"))),
    }
}

/// The first existing directory among `<host>_<port>_`, `<host>` and
/// `_default` under `root`.
fn host_dir(root: &Path, domain: &str) -> Result<Option<PathBuf>, HostsError> {
    let mut candidates = Vec::new();
    if let Some((host, port)) = domain.rsplit_once(':').filter(|(h, _)| !h.is_empty()) {
        candidates.push(root.join(format!("{host}_{port}_")));
    }
    candidates.push(root.join(domain));
    candidates.push(root.join("_default"));
    for dir in candidates {
        match std::fs::metadata(&dir) {
            Ok(_) => return Ok(Some(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(&dir, format!("cannot read: {e}"))),
        }
    }
    Ok(None)
}

/// Docker's `certs.d` layout: `*.crt` files are CAs for the default server.
fn cert_dir(dir: &Path, domain: &str) -> Result<Vec<RegistryHost>, HostsError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| file_error(dir, format!("cannot read: {e}")))?;
    let mut ca = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| file_error(dir, format!("cannot read: {e}")))?
            .path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => ca.push(path),
            Some("cert") | Some("key") => tracing::warn!(
                file = %path.display(),
                "client certificates are not supported; ignoring"
            ),
            _ => {}
        }
    }
    ca.sort();
    Ok(vec![default_host(domain, None, ca, Vec::new())?])
}

/// Parses the text of `file` (a `hosts.toml` in `dir`) for `domain`.
pub fn parse(
    dir: &Path,
    file: &Path,
    text: &str,
    domain: &str,
) -> Result<Vec<RegistryHost>, HostsError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(file, e.message().to_string()))?;
    let ctx = Ctx { dir, file };
    let mut hosts = Vec::new();
    let mut server = None;
    for (key, value) in &table {
        match key.as_str() {
            "server" => server = Some(ctx.string(key, value)?),
            "host" => {
                let entries = value
                    .as_table()
                    .ok_or_else(|| ctx.error(key, "must be a table of [host.\"<url>\"] tables"))?;
                for (url, entry) in entries {
                    let key = format!("host.{}", quote(url));
                    let entry = entry
                        .as_table()
                        .ok_or_else(|| ctx.error(&key, "must be a table"))?;
                    hosts.push(ctx.host(&key, Some(url), entry, domain)?);
                }
            }
            _ => {}
        }
    }
    // The top-level keys configure the server, which is tried last, unless
    // a [host] table already names the same URL (trying it twice, the
    // second time without that table's CA, only hides the first error).
    let server = ctx.host(
        "",
        server.as_deref().filter(|s| !s.is_empty()),
        &table,
        domain,
    )?;
    if !hosts.iter().any(|h| h.base == server.base) {
        hosts.push(server);
    }
    Ok(hosts)
}

struct Ctx<'a> {
    dir: &'a Path,
    file: &'a Path,
}

impl Ctx<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> HostsError {
        HostsError {
            path: self.file.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn string(&self, key: &str, value: &toml::Value) -> Result<String, HostsError> {
        value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.error(key, "must be a string"))
    }

    fn strings(&self, key: &str, value: &toml::Value) -> Result<Vec<String>, HostsError> {
        let bad = || self.error(key, "must be a string or a list of strings");
        match value {
            toml::Value::String(s) => Ok(vec![s.clone()]),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            _ => Err(bad()),
        }
    }

    fn bool(&self, key: &str, value: &toml::Value) -> Result<bool, HostsError> {
        value
            .as_bool()
            .ok_or_else(|| self.error(key, "must be true or false"))
    }

    /// One host entry: a `[host."<url>"]` table, or the top level (`prefix`
    /// empty) for the server.
    fn host(
        &self,
        prefix: &str,
        url: Option<&str>,
        table: &toml::Table,
        domain: &str,
    ) -> Result<RegistryHost, HostsError> {
        let dotted = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        let mut capabilities = None;
        let mut ca = Vec::new();
        let mut skip_verify = false;
        let mut override_path = false;
        let mut headers = Vec::new();
        for (k, value) in table {
            let key = dotted(k);
            match k.as_str() {
                "capabilities" => capabilities = self.capabilities(&key, value)?,
                "ca" => {
                    ca = self
                        .strings(&key, value)?
                        .into_iter()
                        .map(|p| self.dir.join(p))
                        .collect()
                }
                "skip_verify" => skip_verify = self.bool(&key, value)?,
                "override_path" => override_path = self.bool(&key, value)?,
                "header" => headers = self.headers(&key, value)?,
                "client" => tracing::warn!(
                    file = %self.file.display(),
                    key,
                    "client certificates are not supported; ignoring"
                ),
                "server" | "host" if prefix.is_empty() => {}
                _ => tracing::warn!(
                    file = %self.file.display(),
                    key,
                    "ignoring unknown key in hosts.toml"
                ),
            }
        }
        let Some(url) = url else {
            return default_host(domain, Some(self.file), ca, headers)
                .map(|h| RegistryHost { skip_verify, ..h });
        };
        let key = if prefix.is_empty() {
            "server".to_string()
        } else {
            prefix.to_string()
        };
        Ok(RegistryHost {
            base: self.base_url(&key, url, override_path)?,
            capabilities: capabilities.unwrap_or(Capabilities::ALL),
            ca,
            skip_verify,
            headers,
        })
    }

    /// containerd: `https://` unless the URL names a scheme; the path gets
    /// `/v2` appended unless it already ends so or `override_path` is set.
    fn base_url(&self, key: &str, url: &str, override_path: bool) -> Result<Url, HostsError> {
        let full = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else if url.contains("://") {
            return Err(self.error(
                key,
                format!("invalid URL {url:?}: want http(s)://host[:port][/path]"),
            ));
        } else {
            format!("https://{url}")
        };
        let mut parsed =
            Url::parse(&full).map_err(|e| self.error(key, format!("invalid URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(self.error(
                key,
                format!("invalid URL {url:?}: want http(s)://host[:port][/path]"),
            ));
        }
        let path = parsed.path().trim_end_matches('/').to_string();
        let path = if override_path || path.ends_with("/v2") {
            path
        } else {
            format!("{path}/v2")
        };
        parsed.set_path(&path);
        parsed.set_query(None);
        parsed.set_fragment(None);
        Ok(parsed)
    }

    fn capabilities(
        &self,
        key: &str,
        value: &toml::Value,
    ) -> Result<Option<Capabilities>, HostsError> {
        let names = value
            .as_array()
            .ok_or_else(|| self.error(key, "must be a list of \"pull\", \"resolve\", \"push\""))?;
        if names.is_empty() {
            return Ok(None);
        }
        let mut caps = Capabilities {
            pull: false,
            resolve: false,
            push: false,
        };
        for name in names {
            match name.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("pull") => caps.pull = true,
                Some("resolve") => caps.resolve = true,
                Some("push") => caps.push = true,
                _ => {
                    return Err(self.error(
                        key,
                        format!(
                            "unknown capability {name}; valid: \"pull\", \"resolve\", \"push\""
                        ),
                    ))
                }
            }
        }
        Ok(Some(caps))
    }

    fn headers(
        &self,
        key: &str,
        value: &toml::Value,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, HostsError> {
        let table = value
            .as_table()
            .ok_or_else(|| self.error(key, "must be a table of header names to values"))?;
        let mut headers = Vec::new();
        for (name, values) in table {
            let key = format!("{key}.{}", quote(name));
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.error(&key, "invalid header name"))?;
            for v in self.strings(&key, values)? {
                let v = HeaderValue::from_str(&v)
                    .map_err(|_| self.error(&key, "invalid header value"))?;
                headers.push((header.clone(), v));
            }
        }
        Ok(headers)
    }
}

/// The server containerd uses when nothing names one.
fn default_host(
    domain: &str,
    file: Option<&Path>,
    ca: Vec<PathBuf>,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<RegistryHost, HostsError> {
    let url = if domain == "docker.io" {
        format!("https://{DOCKER_HUB_API}/v2")
    } else if is_loopback(domain) {
        format!("http://{domain}/v2")
    } else {
        format!("https://{domain}/v2")
    };
    let base = Url::parse(&url).map_err(|e| HostsError {
        path: file.map(Path::to_path_buf).unwrap_or_default(),
        key: String::new(),
        message: format!("registry host {domain:?} does not make a URL: {e}"),
    })?;
    Ok(RegistryHost {
        base,
        capabilities: Capabilities::ALL,
        ca,
        skip_verify: false,
        headers,
    })
}

/// `localhost`, `127.x.x.x` or `::1`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let bare = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None if host.matches(':').count() == 1 => host.split(':').next().unwrap_or(host),
        None => host,
    };
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host[:port]` of a URL, the port only when it is not the scheme default.
pub fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

fn quote(key: &str) -> String {
    format!("{key:?}")
}

fn file_error(path: &Path, message: String) -> HostsError {
    HostsError {
        path: path.to_path_buf(),
        key: String::new(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(hosts: &[RegistryHost]) -> Vec<&str> {
        hosts.iter().map(|h| h.base.as_str()).collect()
    }

    fn parse_str(text: &str, domain: &str) -> Result<Vec<RegistryHost>, HostsError> {
        let dir = Path::new("/etc/containerd/certs.d").join(domain);
        parse(&dir, &dir.join("hosts.toml"), text, domain)
    }

    #[test]
    fn defaults_without_config() {
        let cases = [
            ("docker.io", "https://registry-1.docker.io/v2"),
            ("quay.io", "https://quay.io/v2"),
            (
                "registry.example.com:5000",
                "https://registry.example.com:5000/v2",
            ),
            ("localhost:5000", "http://localhost:5000/v2"),
            ("127.0.0.1:5000", "http://127.0.0.1:5000/v2"),
            ("127.1.2.3", "http://127.1.2.3/v2"),
            ("[::1]:5000", "http://[::1]:5000/v2"),
        ];
        for (domain, want) in cases {
            let hosts = load(None, domain).unwrap();
            assert_eq!(urls(&hosts), [want], "{domain}");
            assert_eq!(hosts[0].capabilities, Capabilities::ALL);
            assert!(!hosts[0].is_mirror_for(domain), "{domain}");
        }
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let text = r#"
server = "https://registry.example.com"

[host."https://zeta.mirror"]
capabilities = ["pull", "resolve"]

[host."http://alpha.mirror:5000"]
capabilities = ["pull"]
skip_verify = true

[host."mid.mirror/custom/path"]
override_path = true
header = { x-one = "1", x-many = ["a", "b"] }
"#;
        let hosts = parse_str(text, "registry.example.com").unwrap();
        assert_eq!(
            urls(&hosts),
            [
                "https://zeta.mirror/v2",
                "http://alpha.mirror:5000/v2",
                "https://mid.mirror/custom/path",
                "https://registry.example.com/v2",
            ]
        );
        assert!(hosts[0].capabilities.resolve && !hosts[0].capabilities.push);
        assert!(hosts[1].capabilities.pull && !hosts[1].capabilities.resolve);
        assert!(hosts[1].skip_verify && !hosts[0].skip_verify);
        assert_eq!(hosts[2].headers.len(), 3);
        assert_eq!(hosts[2].headers[1].0.as_str(), "x-many");
        assert_eq!(hosts[3].capabilities, Capabilities::ALL);
        assert!(hosts[0].is_mirror_for("registry.example.com"));
        assert!(!hosts[3].is_mirror_for("registry.example.com"));
    }

    #[test]
    fn server_named_again_as_a_host_is_tried_once_with_the_host_settings() {
        let text = r#"
server = "https://registry.example.com"

[host."https://registry.example.com"]
ca = "/etc/ssl/private-ca.crt"
"#;
        let hosts = parse_str(text, "registry.example.com").unwrap();
        assert_eq!(urls(&hosts), ["https://registry.example.com/v2"]);
        assert_eq!(hosts[0].ca, [PathBuf::from("/etc/ssl/private-ca.crt")]);
    }

    #[test]
    fn endpoint_paths_and_ns_query() {
        let text = r#"
[host."https://mirror.example/v2"]
[host."https://proxy.example/artifactory/api/docker/hub"]
override_path = true
"#;
        let hosts = parse_str(text, "docker.io").unwrap();
        let got: Vec<String> = hosts
            .iter()
            .map(|h| {
                h.endpoint("docker.io", "library/nginx", "manifests", "1.25")
                    .to_string()
            })
            .collect();
        assert_eq!(
            got,
            [
                "https://mirror.example/v2/library/nginx/manifests/1.25?ns=docker.io",
                "https://proxy.example/artifactory/api/docker/hub/library/nginx/manifests/1.25?ns=docker.io",
                // The default docker.io server is not a mirror.
                "https://registry-1.docker.io/v2/library/nginx/manifests/1.25",
            ]
        );
    }

    #[test]
    fn top_level_keys_configure_the_server() {
        let text = r#"
server = "https://registry.example.com:8443"
ca = "ca.pem"
skip_verify = true
capabilities = ["pull"]
"#;
        let hosts = parse_str(text, "registry.example.com:8443").unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            hosts[0].ca,
            [PathBuf::from(
                "/etc/containerd/certs.d/registry.example.com:8443/ca.pem"
            )]
        );
        assert!(hosts[0].skip_verify);
        assert!(!hosts[0].capabilities.resolve);
    }

    #[test]
    fn ca_paths_relative_to_the_file() {
        let text = r#"
[host."https://a.mirror"]
ca = ["/abs/ca.pem", "rel/ca.pem"]
"#;
        let hosts = parse_str(text, "quay.io").unwrap();
        assert_eq!(
            hosts[0].ca,
            [
                PathBuf::from("/abs/ca.pem"),
                PathBuf::from("/etc/containerd/certs.d/quay.io/rel/ca.pem")
            ]
        );
    }

    #[test]
    fn bad_files_name_the_key() {
        let cases = [
            ("server = 5", "server", "must be a string"),
            (
                "[host.\"https://m\"]\ncapabilities = [\"pul\"]",
                "host.\"https://m\".capabilities",
                "unknown capability",
            ),
            (
                "[host.\"https://m\"]\nca = 1",
                "host.\"https://m\".ca",
                "string or a list",
            ),
            ("skip_verify = \"yes\"", "skip_verify", "true or false"),
            ("[host.\"ftp://m\"]", "host.\"ftp://m\"", "invalid URL"),
            ("server = [", "", ""),
        ];
        for (text, key, message) in cases {
            let err = parse_str(text, "quay.io").unwrap_err();
            assert_eq!(err.key, key, "{text}");
            assert!(err.message.contains(message), "{text}: {err}");
            assert!(err.to_string().contains("quay.io/hosts.toml"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let hosts = parse_str(
            "future_key = 1\n[host.\"https://m\"]\nother = true",
            "quay.io",
        )
        .unwrap();
        assert_eq!(urls(&hosts), ["https://m/v2", "https://quay.io/v2"]);
    }

    #[test]
    fn directory_lookup_order() {
        let root = tempfile::tempdir().unwrap();
        let write = |dir: &str, text: &str| {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
            std::fs::write(root.path().join(dir).join("hosts.toml"), text).unwrap();
        };
        write("_default", "[host.\"https://default.mirror\"]");
        write("quay.io", "[host.\"https://quay.mirror\"]");
        write("127.0.0.1_5000_", "server = \"http://port.dir:5000\"");
        write("127.0.0.1:5000", "server = \"http://colon.dir:5000\"");
        let load = |domain| load(Some(root.path()), domain).unwrap();

        assert_eq!(
            urls(&load("quay.io")),
            ["https://quay.mirror/v2", "https://quay.io/v2"]
        );
        assert_eq!(
            urls(&load("docker.io")),
            [
                "https://default.mirror/v2",
                "https://registry-1.docker.io/v2"
            ]
        );
        assert_eq!(urls(&load("127.0.0.1:5000")), ["http://port.dir:5000/v2"]);

        // A directory without hosts.toml is a certs.d directory and wins
        // over _default.
        let certs = root.path().join("ghcr.io");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca.crt"), "").unwrap();
        let hosts = load("ghcr.io");
        assert_eq!(urls(&hosts), ["https://ghcr.io/v2"]);
        assert_eq!(hosts[0].ca, [certs.join("ca.crt")]);
    }

    #[test]
    fn loopback_detection() {
        for host in [
            "localhost",
            "localhost:1",
            "127.0.0.1",
            "127.9.9.9:80",
            "::1",
            "[::1]:5000",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["docker.io", "10.0.0.1:5000", "localhost.example", "[::2]:1"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
