//! `docker-registry` (distribution 2.8) on a free loopback port, optionally with
//! TLS and token auth backed by an in-process token server.

use crate::http::{read_head, read_request_body, request, Head};
use crate::proc::{run, Daemon};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// TLS and credentials of a [`Registry::start_tls_token`] registry.
#[derive(Debug, Clone)]
pub struct Tls {
    /// PEM file of the CA that signed the registry's certificate.
    pub ca_cert: PathBuf,
    /// User accepted by the token server (`prewarm`).
    pub username: String,
    /// Generated password accepted by the token server.
    pub password: String,
}

/// One request seen by the token server.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// User named by the Basic credentials or the OAuth2 form, if any.
    pub user: Option<String>,
    /// Requested scopes, e.g. `repository:foo/bar:pull,push`.
    pub scopes: Vec<String>,
    /// Whether a token was issued.
    pub granted: bool,
}

/// A running `docker-registry serve` with filesystem storage under `dir`.
pub struct Registry {
    /// `127.0.0.1:<port>`; stays the same across [`Registry::restart`].
    pub addr: SocketAddr,
    /// Base directory (config, storage, certificates, log).
    pub dir: PathBuf,
    /// Set for the TLS + token-auth variant.
    pub tls: Option<Tls>,
    /// Daemon log (`dir/registry.log`).
    pub log: PathBuf,
    config: PathBuf,
    daemon: Option<Daemon>,
    token: Option<TokenServer>,
}

const SERVICE: &str = "testbed-registry";
const ISSUER: &str = "testbed-token-issuer";

impl Registry {
    /// Plain-HTTP registry, deletes enabled; returns once `GET /v2/` is 200.
    pub fn start(dir: &Path) -> Result<Registry> {
        Self::create(dir, false, None)
    }

    /// Plain-HTTP pull-through cache (distribution's proxy mode) in front
    /// of the registry at `remote` (`http://host:port`).
    pub fn start_pull_through(dir: &Path, remote: &str) -> Result<Registry> {
        Self::create(dir, false, Some(remote))
    }

    /// HTTPS registry (certificate for IP 127.0.0.1 from a fresh CA) with
    /// `auth: token`, whose realm is an in-process HTTP token server accepting
    /// user `prewarm` and the generated password in [`Registry::tls`].
    pub fn start_tls_token(dir: &Path) -> Result<Registry> {
        Self::create(dir, true, None)
    }

    fn create(dir: &Path, secure: bool, remote: Option<&str>) -> Result<Registry> {
        std::fs::create_dir_all(dir.join("storage"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize().context("canonicalizing registry dir")?;
        let addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()?).into();
        let d = dir.display();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {d}/storage\n  \
             delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: testbed-secret\n"
        );
        if let Some(remote) = remote {
            config.push_str(&format!("proxy:\n  remoteurl: {remote}\n"));
        }
        let (mut tls, mut token) = (None, None);
        if secure {
            let pki = make_pki(&dir.join("tls"))?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.server_cert.display(),
                pki.server_key.display()
            ));
            let password = hex::encode(&Sha256::digest(unique_seed().to_le_bytes())[..12]);
            let t = TokenServer::start(pki.signer_key, &pki.signer_cert, "prewarm", &password)?;
            config.push_str(&format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {}\n",
                t.addr,
                pki.ca_cert.display()
            ));
            tls = Some(Tls {
                ca_cert: pki.ca_cert,
                username: "prewarm".into(),
                password,
            });
            token = Some(t);
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).context("writing registry config.yml")?;
        let mut r = Registry {
            addr,
            log: dir.join("registry.log"),
            dir,
            tls,
            config: config_path,
            daemon: None,
            token,
        };
        r.restart()?;
        Ok(r)
    }

    /// `http://127.0.0.1:<port>` or `https://…` for the TLS variant.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Process id of the running daemon, 0 while stopped.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, |d| d.pid())
    }

    /// Requests the token server has answered so far (TLS variant only).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(|t| t.log.lock().map(|l| l.clone()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Kills the daemon (the token server keeps running). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    /// (Re)starts the daemon on the same port and storage; returns when ready.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&self.config);
        let mut daemon = Daemon::spawn("docker-registry", cmd, &self.log)?;
        let (addr, secure) = (self.addr, self.tls.is_some());
        let ready = crate::poll_until("registry GET /v2/", Duration::from_secs(30), || {
            daemon.check_alive()?;
            let Ok(resp) = request(addr, "GET", "/v2/", &[], &[]) else {
                return Ok(None);
            };
            // A TLS listener answers plain HTTP with this 400 once it serves.
            let up = if secure {
                resp.head.status() == 400 && String::from_utf8_lossy(&resp.body).contains("HTTPS")
            } else {
                resp.head.status() == 200
            };
            Ok(up.then_some(()))
        });
        if let Err(e) = ready {
            let tail = daemon.log_tail();
            return Err(e.context(format!(
                "registry on {addr} did not come up; log tail:\n{tail}"
            )));
        }
        self.daemon = Some(daemon);
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A per-call unique-ish seed (time and pid).
pub(crate) fn unique_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ ((std::process::id() as u64) << 32)
}

pub(crate) struct Pki {
    pub(crate) ca_cert: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    signer_cert: PathBuf,
    signer_key: PathBuf,
}

/// A CA, a server certificate for IP 127.0.0.1 and a token-signing
/// certificate, all made with the openssl CLI.
pub(crate) fn make_pki(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir).context("creating tls dir")?;
    let cnf = dir.join("openssl.cnf");
    std::fs::write(
        &cnf,
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = testbed\n\
         [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [server]\nbasicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\nauthorityKeyIdentifier = keyid\n\
         [signer]\nbasicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         authorityKeyIdentifier = keyid\n",
    )
    .context("writing openssl.cnf")?;
    let p = |n: &str| dir.join(n);
    let openssl = |args: &[&str]| -> Result<()> {
        run(Command::new("openssl").current_dir(dir).args(args)).map(|_| ())
    };
    openssl(&[
        "req",
        "-x509",
        "-config",
        "openssl.cnf",
        "-extensions",
        "ca",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3650",
        "-subj",
        "/CN=testbed-ca",
    ])?;
    for (name, cn, serial) in [
        ("server", "127.0.0.1", "2"),
        ("signer", "testbed-token-signer", "3"),
    ] {
        openssl(&[
            "req",
            "-config",
            "openssl.cnf",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "365",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            name,
            "-out",
            &format!("{name}.pem"),
        ])?;
    }
    Ok(Pki {
        ca_cert: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        signer_cert: p("signer.pem"),
        signer_key: p("signer.key"),
    })
}

/// Docker-style token server (GET with Basic auth, or OAuth2 POST with
/// `grant_type=password`), issuing RS256 JWTs with an `x5c` header.
struct TokenServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<Vec<TokenRequest>>>,
}

struct Issuer {
    key: PathBuf,
    x5c: String,
    user: String,
    password: String,
    log: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenServer {
    fn start(key: PathBuf, cert: &Path, user: &str, password: &str) -> Result<TokenServer> {
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(cert)
            .output()
            .context("running openssl x509 -outform DER")?;
        if !der.status.success() {
            bail!(
                "openssl x509 -outform DER failed: {}",
                String::from_utf8_lossy(&der.stderr)
            );
        }
        let listener = TcpListener::bind("127.0.0.1:0").context("binding token server")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let issuer = Arc::new(Issuer {
            key,
            x5c: b64(&der.stdout, STD, true),
            user: user.into(),
            password: password.into(),
            log: log.clone(),
        });
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("testbed-token".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let issuer = issuer.clone();
                        std::thread::spawn(move || {
                            let _ = serve_token_conn(conn, &issuer);
                        });
                    }
                }
            })
            .context("spawning token server thread")?;
        Ok(TokenServer {
            addr,
            stop,
            thread: Some(thread),
            log,
        })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_token_conn(conn: TcpStream, issuer: &Issuer) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    while let Some(head) = read_head(&mut r)? {
        let body = read_request_body(&mut r, &head)?;
        let (status, json) = answer_token(&head, &body, issuer);
        let json = json.to_string();
        write!(
            w,
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            if status == 200 { "OK" } else { "Unauthorized" },
            json.len()
        )?;
        if head
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            break;
        }
    }
    Ok(())
}

fn answer_token(head: &Head, body: &[u8], iss: &Issuer) -> (u16, serde_json::Value) {
    let target = head.start.split(' ').nth(1).unwrap_or("");
    let mut params = parse_form(target.split_once('?').map_or("", |(_, q)| q));
    if head.start.starts_with("POST") {
        params.extend(parse_form(&String::from_utf8_lossy(body)));
    }
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut creds = None;
    if let Some(b) = head
        .get("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
    {
        if let Some(dec) = b64_decode(b.trim()).and_then(|d| String::from_utf8(d).ok()) {
            if let Some((u, p)) = dec.split_once(':') {
                creds = Some((u.to_string(), p.to_string()));
            }
        }
    }
    if creds.is_none() && param("grant_type").as_deref() == Some("password") {
        creds = Some((
            param("username").unwrap_or_default(),
            param("password").unwrap_or_default(),
        ));
    }
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let granted = creds
        .as_ref()
        .is_some_and(|(u, p)| *u == iss.user && *p == iss.password);
    let mut entry = TokenRequest {
        user: creds.as_ref().map(|(u, _)| u.clone()),
        scopes: scopes.clone(),
        granted,
    };
    let result = if granted {
        match sign_jwt(iss, &scopes) {
            Ok(jwt) => (
                200,
                serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 3600}),
            ),
            Err(e) => {
                entry.granted = false;
                (500, serde_json::json!({"error": format!("{e:#}")}))
            }
        }
    } else {
        (
            401,
            serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad or missing credentials"}]}),
        )
    };
    if let Ok(mut l) = iss.log.lock() {
        l.push(entry);
    }
    result
}

fn sign_jwt(iss: &Issuer, scopes: &[String]) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let (typ, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({"type": typ, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [iss.x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": iss.user, "aud": SERVICE, "exp": now + 3600, "nbf": now - 60,
        "iat": now, "jti": format!("{:x}", unique_seed()), "access": access,
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes(), URL, false),
        b64(claims.to_string().as_bytes(), URL, false)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&iss.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning openssl dgst")?;
    child
        .stdin
        .take()
        .context("openssl stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(format!("{input}.{}", b64(&out.stdout, URL, false)))
}

fn parse_form(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = STD.iter().position(|&a| a == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip() {
        assert_eq!(b64(b"foob", STD, true), "Zm9vYg==");
        assert_eq!(b64(b"foob", URL, false), "Zm9vYg");
        assert_eq!(b64(b"\xfb\xff", URL, false), "-_8");
        assert_eq!(b64_decode("Zm9vYmFy").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(
            pct_decode("repository%3Aa%2Fb%3Apull+x"),
            "repository:a/b:pull x"
        );
    }
}
