//! A tiny HTTPS file server on loopback, for image lists and their
//! checksums: files can be replaced while it runs, and it can be stopped
//! (connections are then refused) and started again on the same port.

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest as _;
use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A file being served.
#[derive(Clone)]
struct File {
    body: Vec<u8>,
    /// Its `Last-Modified`.
    modified: String,
}

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The request target.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// It carried `If-None-Match` or `If-Modified-Since`.
    pub conditional: bool,
}

/// An HTTPS server for IP 127.0.0.1 with a certificate from its own CA.
pub struct FileServer {
    /// `127.0.0.1:<port>`; the same across [`FileServer::restart`].
    pub addr: SocketAddr,
    /// PEM of the CA that signed the server's certificate.
    pub ca_cert: PathBuf,
    files: Arc<Mutex<HashMap<String, File>>>,
    requests: Arc<Mutex<Vec<Served>>>,
    config: Arc<rustls::ServerConfig>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Makes a CA and server certificate under `dir` and starts serving.
    pub fn start(dir: &Path) -> Result<FileServer> {
        let pki = crate::registry::make_pki(dir)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![CertificateDer::from_pem_file(&pki.server_cert).context("server.pem")?];
        let key = PrivateKeyDer::from_pem_file(&pki.server_key).context("server.key")?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("building the TLS server config")?;
        let addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()?).into();
        let mut s = FileServer {
            addr,
            ca_cert: pki.ca_cert,
            files: Default::default(),
            requests: Default::default(),
            config: Arc::new(config),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        s.restart()?;
        Ok(s)
    }

    /// `https://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Serves `body` at `/<path>` from now on, with an `ETag` and a
    /// `Last-Modified` of now; answers a conditional GET that matches
    /// either with 304 Not Modified.
    pub fn put(&self, path: &str, body: &[u8]) {
        if let Ok(mut f) = self.files.lock() {
            f.insert(
                format!("/{}", path.trim_start_matches('/')),
                File {
                    body: body.to_vec(),
                    modified: httpdate::fmt_http_date(std::time::SystemTime::now()),
                },
            );
        }
    }

    /// Paths requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.served().into_iter().map(|s| s.path).collect()
    }

    /// Requests so far, with how each was answered.
    pub fn served(&self) -> Vec<Served> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Stops listening: connections are refused until [`FileServer::restart`].
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let listener =
            TcpListener::bind(self.addr).with_context(|| format!("binding {}", self.addr))?;
        listener.set_nonblocking(true)?;
        self.stop = Arc::new(AtomicBool::new(false));
        let (stop, files, requests, config) = (
            self.stop.clone(),
            self.files.clone(),
            self.requests.clone(),
            self.config.clone(),
        );
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (files, requests, config) =
                            (files.clone(), requests.clone(), config.clone());
                        std::thread::spawn(move || {
                            let _ = serve(stream, config, &files, &requests);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        }));
        Ok(())
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    stream: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    files: &Mutex<HashMap<String, File>>,
    requests: &Mutex<Vec<Served>>,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let head = {
        let mut r = BufReader::new(&mut tls);
        crate::http::read_head(&mut r)?
    };
    let Some(head) = head else { return Ok(()) };
    let path = head.start.split(' ').nth(1).unwrap_or("/").to_string();
    let file = files.lock().ok().and_then(|f| f.get(&path).cloned());
    // Validators as a web server gives them: an ETag from the body, and a
    // Last-Modified from when it was put there.
    let (status, body, validators) = match file {
        Some(f) => {
            let etag = format!("\"{}\"", &hex::encode(sha2::Sha256::digest(&f.body))[..16]);
            let unchanged = match (head.get("if-none-match"), head.get("if-modified-since")) {
                (Some(tags), _) => tags.split(',').any(|t| t.trim() == etag),
                (None, Some(since)) => since == f.modified,
                (None, None) => false,
            };
            let validators = format!("ETag: {etag}\r\nLast-Modified: {}\r\n", f.modified);
            if unchanged {
                ("304 Not Modified", Vec::new(), validators)
            } else {
                ("200 OK", f.body, validators)
            }
        }
        None => ("404 Not Found", b"not found\n".to_vec(), String::new()),
    };
    if let Ok(mut r) = requests.lock() {
        r.push(Served {
            path: path.clone(),
            status: status[..3].parse().unwrap_or(0),
            conditional: head.get("if-none-match").is_some()
                || head.get("if-modified-since").is_some(),
        });
    }
    write!(
        tls,
        "HTTP/1.1 {status}\r\n{validators}Content-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    tls.write_all(&body)?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}
