//! Registry credentials from a docker `config.json` (its `auths`, and the
//! credential helpers named by `credHelpers` and `credsStore`),
//! `WWW-Authenticate` challenges, and the bearer-token round trip with its
//! cache.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Client, Url};
use serde::Deserialize;

use super::{read_limited, RegistryError};

/// What `config.json` holds for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Username and password, from `auth` or `username`/`password`.
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token
    /// realm with `grant_type=refresh_token`.
    IdentityToken(String),
    /// A bearer token (`registrytoken`) sent to the registry as-is.
    RegistryToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Credential::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
            Credential::RegistryToken(_) => write!(f, "RegistryToken(<redacted>)"),
        }
    }
}

/// The credentials of a docker `config.json`, looked up by registry host.
#[derive(Debug, Default)]
pub struct Credentials {
    /// The file they came from, for error messages.
    file: PathBuf,
    /// (key as written, normalized host, credential), in key order.
    entries: Vec<(String, String, Credential)>,
    /// `credHelpers`: (key as written, normalized host, helper program
    /// `docker-credential-<name>`).
    helpers: Vec<(String, String, String)>,
    /// `credsStore`: the helper program for every other registry.
    store: Option<String>,
    /// What helpers answered, by (helper, server): `None` when they had
    /// nothing for the server. Each helper runs once per server.
    answers: tokio::sync::Mutex<HashMap<(String, String), Option<Credential>>>,
}

/// How long a credential helper may take (cloud helpers call their
/// provider's API).
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// A credential helper to ask for one registry.
#[derive(Debug, PartialEq, Eq)]
struct HelperCall {
    /// `docker-credential-<name>`, looked up on `PATH` as docker does.
    program: String,
    /// What the helper reads on stdin: the server as the config names it.
    server: String,
    /// The config key that chose the helper, for error messages.
    key: String,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, serde_json::Value>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthEntry {
    auth: String,
    username: String,
    password: String,
    identitytoken: String,
    registrytoken: String,
}

impl Credentials {
    /// Reads `path`; a missing file means no credentials.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(file = %path.display(), "no registry auth file; pulling anonymously");
                Ok(Self::default())
            }
            Err(e) => Err(auth_file_error(path, format!("cannot read: {e}"))),
        }
    }

    /// Parses the text of the `config.json` at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, RegistryError> {
        let file: ConfigFile = serde_json::from_str(text)
            .map_err(|e| auth_file_error(path, format!("invalid JSON: {e}")))?;
        let mut entries = Vec::new();
        for (key, entry) in file.auths {
            if let Some(cred) = entry.credential(path, &key)? {
                entries.push((key.clone(), normalize(&key), cred));
            }
        }
        let mut helpers = Vec::new();
        for (key, name) in file.cred_helpers {
            let program = helper_program(path, &format!("credHelpers.{key:?}"), &name)?;
            helpers.push((key.clone(), normalize(&key), program));
        }
        let store = match file.creds_store {
            Some(name) if !name.is_empty() => Some(helper_program(
                path,
                "credsStore",
                &serde_json::Value::String(name),
            )?),
            _ => None,
        };
        for program in helpers.iter().map(|h| &h.2).chain(&store) {
            if !on_path(program) {
                tracing::warn!(
                    file = %path.display(),
                    %program,
                    "credential helper not found on PATH; pulls from its registries will fail"
                );
            }
        }
        Ok(Self {
            file: path.to_path_buf(),
            entries,
            helpers,
            store,
            answers: Default::default(),
        })
    }

    /// The credential for registry `host`, as docker finds it: the helper
    /// `credHelpers` names for the host, else the `credsStore` helper, else
    /// the `auths` entry. A helper with nothing for the host falls back to
    /// the `auths` entry. A helper that fails is an error naming it and the
    /// file.
    pub async fn resolve(&self, host: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some(call) = self.helper_for(host) {
            let key = (call.program.clone(), call.server.clone());
            let mut answers = self.answers.lock().await;
            let answer = match answers.get(&key) {
                Some(a) => a.clone(),
                None => {
                    let a = run_helper(&call)
                        .await
                        .map_err(|m| auth_file_error(&self.file, format!("{}: {m}", call.key)))?;
                    answers.insert(key, a.clone());
                    a
                }
            };
            if answer.is_some() {
                return Ok(answer);
            }
        }
        Ok(self.lookup(host).cloned())
    }

    /// The helper to ask for `host`, if any.
    fn helper_for(&self, host: &str) -> Option<HelperCall> {
        if let Some((key, _, program)) = find_host(&self.helpers, host) {
            return Some(HelperCall {
                program: program.clone(),
                server: key.clone(),
                key: format!("credHelpers.{key:?}"),
            });
        }
        self.store.as_ref().map(|program| HelperCall {
            program: program.clone(),
            server: match normalize(host).as_str() {
                "docker.io" => "https://index.docker.io/v1/".to_string(),
                wanted => wanted.to_string(),
            },
            key: "credsStore".to_string(),
        })
    }

    /// The credential for registry `host` (`host[:port]` as contacted):
    /// the key spelled exactly so, else the first key whose host part
    /// (`https://host/v1/` → `host`) matches. Docker Hub's names
    /// (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one.
    pub fn lookup(&self, host: &str) -> Option<&Credential> {
        find_host(&self.entries, host).map(|(_, _, cred)| cred)
    }
}

/// The entry of (key as written, normalized host, value) entries for
/// `host`: the key spelled exactly so, else the first whose normalized host
/// matches.
fn find_host<'a, T>(
    entries: &'a [(String, String, T)],
    host: &str,
) -> Option<&'a (String, String, T)> {
    let wanted = normalize(host);
    entries
        .iter()
        .find(|(key, _, _)| key == host)
        .or_else(|| entries.iter().find(|(_, h, _)| *h == wanted))
}

impl AuthEntry {
    fn credential(self, path: &Path, key: &str) -> Result<Option<Credential>, RegistryError> {
        if !self.identitytoken.is_empty() {
            return Ok(Some(Credential::IdentityToken(self.identitytoken)));
        }
        if !self.registrytoken.is_empty() {
            return Ok(Some(Credential::RegistryToken(self.registrytoken)));
        }
        if !self.auth.is_empty() {
            let bad = |why: &str| auth_file_error(path, format!("key auths.{key:?}.auth: {why}"));
            let raw = self.auth.trim();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(raw)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(raw))
                .map_err(|_| bad("not valid base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad("not UTF-8"))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| bad("must be base64 of \"user:password\""))?;
            return Ok(Some(Credential::Basic {
                username: username.to_string(),
                password: password.trim_end_matches('\0').to_string(),
            }));
        }
        if !self.username.is_empty() {
            return Ok(Some(Credential::Basic {
                username: self.username,
                password: self.password,
            }));
        }
        Ok(None)
    }
}

/// The program of a helper named in the config, `docker-credential-<name>`:
/// the name must be a string that cannot leave that prefix.
fn helper_program(
    path: &Path,
    key: &str,
    value: &serde_json::Value,
) -> Result<String, RegistryError> {
    match value.as_str() {
        Some(name) if !name.is_empty() && !name.contains('/') => {
            Ok(format!("docker-credential-{name}"))
        }
        _ => Err(auth_file_error(
            path,
            format!("key {key}: a credential helper name (docker-credential-<name> on PATH) must be a non-empty string without '/', got {value}"),
        )),
    }
}

/// Whether `program` is an executable file in a `PATH` directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// What a helper prints for `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The `HOME` a helper runs with when prewarm has none (systemd gives a
/// system service none): the user's home from the passwd database, where
/// helpers such as ecr-login and gcloud keep their configuration.
fn helper_home() -> Option<std::path::PathBuf> {
    if std::env::var_os("HOME").is_some_and(|h| !h.is_empty()) {
        return None;
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
}

/// Runs `<program> get` with the server on stdin. `Ok(None)` when the
/// helper has no credentials for it.
async fn run_helper(call: &HelperCall) -> Result<Option<Credential>, String> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(&call.program);
    if let Some(home) = helper_home() {
        cmd.env("HOME", home);
    }
    let mut child = cmd
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", call.program))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its exit status.
        let _ = stdin.write_all(call.server.as_bytes()).await;
    }
    let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{} get did not answer within {} s",
                call.program,
                HELPER_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("running {}: {e}", call.program))?;
    parse_helper_output(
        &call.program,
        out.status.success(),
        &out.stdout,
        &out.stderr,
    )
}

/// Reads a helper's answer: JSON `{"Username", "Secret"}` on success (a
/// `<token>` user means `Secret` is an identity token), or the "not found"
/// message of the docker-credential-helpers protocol.
fn parse_helper_output(
    program: &str,
    success: bool,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Option<Credential>, String> {
    let text = String::from_utf8_lossy(stdout);
    if !success {
        if text.contains("credentials not found") {
            return Ok(None);
        }
        let why = String::from_utf8_lossy(stderr);
        let why = [text.trim(), why.trim()]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or("no output");
        let why: String = why.chars().take(300).collect();
        return Err(format!("{program} get failed: {why}"));
    }
    let answer: HelperAnswer = serde_json::from_slice(stdout)
        .map_err(|e| format!("{program} get printed no credentials JSON: {e}"))?;
    Ok(match (answer.username.as_str(), answer.secret) {
        (_, secret) if secret.is_empty() => None,
        ("<token>", secret) => Some(Credential::IdentityToken(secret)),
        (user, secret) => Some(Credential::Basic {
            username: user.to_string(),
            password: secret,
        }),
    })
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://h:5000/x` → `h:5000`.
fn normalize(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host.to_string(),
    }
}

fn auth_file_error(path: &Path, message: String) -> RegistryError {
    RegistryError::AuthFile {
        path: PathBuf::from(path),
        message,
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercase scheme: `bearer`, `basic`, ….
    pub scheme: String,
    /// Parameters with lowercase names, unquoted values.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value, which may hold several challenges:
/// `Bearer realm="https://auth/token",service="reg",scope="a b", Basic realm="x"`.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut p = Parser { s: header };
    let mut challenges = Vec::new();
    loop {
        p.skip(|c| c == ',' || c == ' ' || c == '\t');
        let scheme = p.token();
        if scheme.is_empty() {
            break;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            p.skip(|c| c == ' ' || c == '\t');
            let before = p.s;
            let name = p.token();
            p.skip(|c| c == ' ' || c == '\t');
            if name.is_empty() || !p.s.starts_with('=') {
                // Not a parameter: the next challenge's scheme, or junk.
                p.s = before;
                break;
            }
            p.s = &p.s[1..];
            p.skip(|c| c == ' ' || c == '\t');
            let value = if p.s.starts_with('"') {
                p.quoted()
            } else {
                p.token().to_string()
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
            p.skip(|c| c == ' ' || c == '\t');
            if !p.s.starts_with(',') {
                break;
            }
            p.s = &p.s[1..];
        }
        challenges.push(challenge);
    }
    challenges
}

struct Parser<'a> {
    s: &'a str,
}

impl<'a> Parser<'a> {
    fn skip(&mut self, f: impl Fn(char) -> bool) {
        self.s = self.s.trim_start_matches(f);
    }

    /// An RFC 7230 token (plus `/` for token68 values).
    fn token(&mut self) -> &'a str {
        let end = self
            .s
            .find(|c: char| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/:".contains(c)))
            .unwrap_or(self.s.len());
        let (token, rest) = self.s.split_at(end);
        self.s = rest;
        token
    }

    /// A quoted string starting at `"`, with `\` escapes.
    fn quoted(&mut self) -> String {
        let mut out = String::new();
        let mut chars = self.s.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.s = &self.s[i + 1..];
                    return out;
                }
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        out.push(escaped);
                    }
                }
                _ => out.push(c),
            }
        }
        self.s = "";
        out
    }
}

/// An `Authorization` value and when it stops being good.
#[derive(Clone)]
pub struct Authorization {
    /// The header value, marked sensitive.
    pub header: HeaderValue,
    /// `None` for Basic credentials, which do not expire.
    pub expires: Option<Instant>,
}

/// Authorization values per (registry host, scope), kept until they expire.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<(String, String), Authorization>>,
}

impl TokenCache {
    /// The cached value for `host` and `scope`, if it has not expired.
    pub fn get(&self, host: &str, scope: &str) -> Option<HeaderValue> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (host.to_string(), scope.to_string());
        match entries.get(&key) {
            Some(a) if a.expires.is_none_or(|t| t > Instant::now()) => Some(a.header.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers `auth` for `host` and `scope`.
    pub fn insert(&self, host: &str, scope: &str, auth: Authorization) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((host.to_string(), scope.to_string()), auth);
    }
}

/// What the auth round trip needs to know about the request that got a 401.
pub struct AuthRequest<'a> {
    /// The client for the registry host (its TLS setup also serves the realm).
    pub client: &'a Client,
    /// The image, for error messages.
    pub image: &'a str,
    /// The URL that answered 401.
    pub url: &'a Url,
    /// `repository:<repo>:pull`.
    pub scope: &'a str,
    /// The credential for the registry host, if any.
    pub credential: Option<&'a Credential>,
    /// Headers configured for the host in `hosts.toml`.
    pub headers: &'a [(HeaderName, HeaderValue)],
}

/// Most a token response may hold.
const MAX_TOKEN_BYTES: usize = 1 << 20;

/// Answers the challenges of a 401: a token from the bearer realm, or
/// Basic credentials.
pub async fn authorize(
    req: &AuthRequest<'_>,
    challenges: &[Challenge],
) -> Result<Authorization, RegistryError> {
    if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
        return bearer_token(req, bearer).await;
    }
    if challenges.iter().any(|c| c.scheme == "basic") {
        return match req.credential {
            Some(Credential::Basic { username, password }) => Ok(Authorization {
                header: basic(username, password),
                expires: None,
            }),
            _ => Err(unusable(
                req,
                "basic authentication required and no username/password configured",
            )),
        };
    }
    let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
    Err(unusable(
        req,
        &format!("no supported authentication scheme in WWW-Authenticate (got {schemes:?})"),
    ))
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

async fn bearer_token(
    req: &AuthRequest<'_>,
    challenge: &Challenge,
) -> Result<Authorization, RegistryError> {
    if let Some(Credential::RegistryToken(token)) = req.credential {
        return Ok(Authorization {
            header: bearer(req, token)?,
            expires: None,
        });
    }
    let realm = challenge
        .param("realm")
        .ok_or_else(|| unusable(req, "bearer challenge without realm"))?;
    let realm_url = Url::parse(realm)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            unusable(
                req,
                &format!("bearer realm {realm:?} is not an http(s) URL"),
            )
        })?;
    let service = challenge.param("service").unwrap_or_default();
    let mut scopes: Vec<&str> = challenge
        .param("scope")
        .unwrap_or_default()
        .split(' ')
        .chain([req.scope])
        .filter(|s| !s.is_empty())
        .collect();
    scopes.sort_unstable();
    scopes.dedup();

    let builder = match req.credential {
        Some(Credential::IdentityToken(refresh)) => {
            let scope = scopes.join(" ");
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("service", service),
                ("scope", scope.as_str()),
                ("client_id", "prewarm"),
            ];
            req.client.post(realm_url).form(&form)
        }
        cred => {
            let mut url = realm_url;
            {
                let mut query = url.query_pairs_mut();
                if !service.is_empty() {
                    query.append_pair("service", service);
                }
                for scope in &scopes {
                    query.append_pair("scope", scope);
                }
            }
            let get = req.client.get(url);
            match cred {
                Some(Credential::Basic { username, password }) => {
                    get.header(reqwest::header::AUTHORIZATION, basic(username, password))
                }
                _ => get,
            }
        }
    };
    let builder = req.headers.iter().fold(builder, |b, (k, v)| b.header(k, v));

    let token_error = |status: Option<u16>, message: String| RegistryError::Token {
        image: req.image.to_string(),
        realm: realm.to_string(),
        status,
        message,
    };
    let http_error = |source: reqwest::Error| RegistryError::TokenHttp {
        image: req.image.to_string(),
        realm: realm.to_string(),
        source: source.without_url(),
    };
    let resp = builder.send().await.map_err(http_error)?;
    let status = resp.status();
    let body = read_limited(resp, MAX_TOKEN_BYTES)
        .await
        .map_err(|e| match e {
            super::ReadError::Http(e) => http_error(e),
            super::ReadError::TooLarge => {
                token_error(Some(status.as_u16()), "response too large".into())
            }
        })?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(200).collect();
        return Err(token_error(Some(status.as_u16()), text.trim().to_string()));
    }
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        token_error(
            Some(status.as_u16()),
            format!("invalid token response: {e}"),
        )
    })?;
    let token = if parsed.token.is_empty() {
        parsed.access_token
    } else {
        parsed.token
    };
    if token.is_empty() {
        return Err(token_error(
            Some(status.as_u16()),
            "token response has neither token nor access_token".into(),
        ));
    }
    // The spec says to assume 60 s when expires_in is missing or smaller;
    // keep a margin so a token is not used in its last seconds.
    let lifetime = Duration::from_secs(parsed.expires_in.max(60));
    Ok(Authorization {
        header: bearer(req, &token)?,
        expires: Some(Instant::now() + lifetime * 9 / 10),
    })
}

fn basic(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    // Base64 output is always a valid header value.
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

fn bearer(req: &AuthRequest<'_>, token: &str) -> Result<HeaderValue, RegistryError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| unusable(req, "token contains characters not allowed in a header"))?;
    value.set_sensitive(true);
    Ok(value)
}

fn unusable(req: &AuthRequest<'_>, message: &str) -> RegistryError {
    RegistryError::Auth {
        image: req.image.to_string(),
        url: req.url.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(json: &str) -> Credentials {
        Credentials::parse(Path::new("/root/.docker/config.json"), json).unwrap()
    }

    fn basic_of(c: Option<&Credential>) -> Option<(&str, &str)> {
        match c {
            Some(Credential::Basic { username, password }) => Some((username, password)),
            _ => None,
        }
    }

    #[test]
    fn lookup_by_key_spellings() {
        // "dXNlcjpwYXNz" = base64("user:pass")
        let c = creds(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
                "quay.io": {"username": "q", "password": "qp"},
                "http://127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"},
                "https://ghcr.io/v2/": {"auth": "Z2g6Z2hwOmFzcw"},
                "empty.example": {}
            }}"#,
        );
        assert_eq!(
            basic_of(c.lookup("registry-1.docker.io")),
            Some(("hub", "hubpass"))
        );
        assert_eq!(basic_of(c.lookup("docker.io")), Some(("hub", "hubpass")));
        assert_eq!(basic_of(c.lookup("quay.io")), Some(("q", "qp")));
        assert_eq!(basic_of(c.lookup("127.0.0.1:5000")), Some(("user", "pass")));
        // Unpadded base64; the password keeps its own colon.
        assert_eq!(basic_of(c.lookup("ghcr.io")), Some(("gh", "ghp:ass")));
        assert!(c.lookup("empty.example").is_none());
        assert!(c.lookup("127.0.0.1:5001").is_none());
        assert!(c.lookup("quay.io.evil").is_none());
    }

    #[test]
    fn exact_key_wins() {
        let c = creds(
            r#"{"auths": {
                "https://quay.io": {"username": "scheme", "password": "x"},
                "quay.io": {"username": "exact", "password": "y"}
            }}"#,
        );
        assert_eq!(basic_of(c.lookup("quay.io")), Some(("exact", "y")));
    }

    #[test]
    fn token_kinds() {
        let c = creds(
            r#"{"auths": {
                "a.example": {"auth": "dXNlcjpwYXNz", "identitytoken": "refresh"},
                "b.example": {"registrytoken": "bearer"}
            }, "credsStore": "desktop"}"#,
        );
        assert_eq!(
            c.lookup("a.example"),
            Some(&Credential::IdentityToken("refresh".into()))
        );
        assert_eq!(
            c.lookup("b.example"),
            Some(&Credential::RegistryToken("bearer".into()))
        );
        assert!(!format!("{:?}", c.lookup("a.example")).contains("refresh"));
    }

    #[test]
    fn bad_files_name_the_file_and_key() {
        let path = Path::new("/etc/prewarm/auth.json");
        let err = Credentials::parse(path, "{not json").unwrap_err();
        assert!(err.to_string().contains("/etc/prewarm/auth.json"), "{err}");
        let err = Credentials::parse(path, r#"{"auths": {"q.io": {"auth": "!!"}}}"#).unwrap_err();
        assert!(err.to_string().contains(r#"auths."q.io".auth"#), "{err}");
        let err = Credentials::parse(path, r#"{"auths": {"q.io": {"auth": "bm9jb2xvbg=="}}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("user:password"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn helpers_chosen_as_docker_does() {
        let c = creds(
            r#"{"auths": {"quay.io": {"username": "q", "password": "qp"}},
                "credHelpers": {"123.dkr.ecr.us-east-1.amazonaws.com": "ecr-login",
                                "https://gcr.io": "gcloud"},
                "credsStore": "pass"}"#,
        );
        let call = |host: &str| c.helper_for(host).unwrap();
        assert_eq!(
            call("123.dkr.ecr.us-east-1.amazonaws.com"),
            HelperCall {
                program: "docker-credential-ecr-login".into(),
                server: "123.dkr.ecr.us-east-1.amazonaws.com".into(),
                key: r#"credHelpers."123.dkr.ecr.us-east-1.amazonaws.com""#.into(),
            }
        );
        // A key with a scheme matches its host and is passed as written.
        assert_eq!(call("gcr.io").program, "docker-credential-gcloud");
        assert_eq!(call("gcr.io").server, "https://gcr.io");
        // Everything else goes to credsStore; Docker Hub by its v1 name.
        assert_eq!(call("quay.io").program, "docker-credential-pass");
        assert_eq!(call("quay.io").key, "credsStore");
        assert_eq!(call("docker.io").server, "https://index.docker.io/v1/");
        assert_eq!(
            call("registry-1.docker.io").server,
            "https://index.docker.io/v1/"
        );
        // Without credsStore, hosts without a helper have none.
        let c = creds(r#"{"credHelpers": {"a.example": "x"}}"#);
        assert!(c.helper_for("b.example").is_none());
        assert!(c.helper_for("a.example").is_some());
    }

    #[test]
    fn bad_helper_names_name_the_key() {
        let path = Path::new("/root/.docker/config.json");
        for (json, key) in [
            (
                r#"{"credHelpers": {"a.example": "../../bin/sh"}}"#,
                "credHelpers.\"a.example\"",
            ),
            (
                r#"{"credHelpers": {"a.example": 7}}"#,
                "credHelpers.\"a.example\"",
            ),
            (r#"{"credsStore": "x/y"}"#, "credsStore"),
        ] {
            let err = Credentials::parse(path, json).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("config.json"), "{err}");
        }
        // An empty credsStore is docker's "none".
        assert!(creds(r#"{"credsStore": ""}"#)
            .helper_for("a.example")
            .is_none());
    }

    #[test]
    fn helper_answers() {
        let parse = |ok, out: &str, err: &str| {
            parse_helper_output("docker-credential-x", ok, out.as_bytes(), err.as_bytes())
        };
        assert_eq!(
            parse(true, r#"{"ServerURL":"r","Username":"u","Secret":"s"}"#, ""),
            Ok(Some(Credential::Basic {
                username: "u".into(),
                password: "s".into()
            }))
        );
        assert_eq!(
            parse(true, r#"{"Username":"<token>","Secret":"refresh"}"#, ""),
            Ok(Some(Credential::IdentityToken("refresh".into())))
        );
        // The protocol's "not found" answer: nothing, and no error.
        assert_eq!(
            parse(false, "credentials not found in native keychain\n", ""),
            Ok(None)
        );
        let err = parse(false, "", "gpg: decryption failed\n").unwrap_err();
        assert!(
            err.contains("docker-credential-x") && err.contains("gpg"),
            "{err}"
        );
        let err = parse(true, "not json", "").unwrap_err();
        assert!(err.contains("docker-credential-x"), "{err}");
    }

    #[tokio::test]
    async fn missing_helper_is_an_error_naming_it_and_the_file() {
        let c = creds(r#"{"credHelpers": {"a.example": "prewarm-test-absent"}}"#);
        let err = c.resolve("a.example").await.unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-prewarm-test-absent")
                && err.contains("/root/.docker/config.json")
                && err.contains("credHelpers"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_is_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials::load(&dir.path().join("absent.json")).unwrap();
        assert!(c.lookup("docker.io").is_none());
        // A directory where the file should be is unreadable: an error.
        assert!(Credentials::load(dir.path()).is_err());
    }

    #[test]
    fn parses_challenges() {
        let got = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].scheme, "bearer");
        assert_eq!(got[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(got[0].param("service"), Some("registry.docker.io"));
        assert_eq!(got[0].param("scope"), Some("repository:library/nginx:pull"));

        let got = parse_challenges(r#"Basic realm="Registry Realm""#);
        assert_eq!(got[0].scheme, "basic");
        assert_eq!(got[0].param("realm"), Some("Registry Realm"));

        let got = parse_challenges(
            r#"Basic realm="a, b", BEARER Realm=https://h/t , service = "s\"q", Negotiate"#,
        );
        let schemes: Vec<&str> = got.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate"]);
        assert_eq!(got[0].param("realm"), Some("a, b"));
        assert_eq!(got[1].param("realm"), Some("https://h/t"));
        assert_eq!(got[1].param("service"), Some("s\"q"));

        assert!(parse_challenges("").is_empty());
        // Junk must not loop forever.
        let _ = parse_challenges("=\"unterminated");
        let _ = parse_challenges("Bearer realm=\"unterminated");
    }

    #[test]
    fn token_cache_expires() {
        let cache = TokenCache::default();
        let h = HeaderValue::from_static("Bearer t");
        cache.insert(
            "r",
            "s",
            Authorization {
                header: h.clone(),
                expires: None,
            },
        );
        assert_eq!(cache.get("r", "s"), Some(h.clone()));
        assert_eq!(cache.get("r", "other"), None);
        let past = Instant::now().checked_sub(Duration::from_secs(1));
        cache.insert(
            "r",
            "s",
            Authorization {
                header: h,
                expires: past,
            },
        );
        assert_eq!(cache.get("r", "s"), None);
    }
}
