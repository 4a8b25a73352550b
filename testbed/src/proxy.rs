//! A fault-injecting HTTP/1.1 reverse proxy for a plain-HTTP registry.

use crate::http::{read_chunked, read_head, read_request_body};
use anyhow::{Context, Result};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request that went through the proxy. Entries appear when the request
/// arrives and are updated while the response body streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Request method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    /// Status sent to the client (0 while still waiting for upstream).
    pub status: u16,
    /// Response body bytes written to the client so far.
    pub body_bytes_sent: u64,
    /// When the request arrived.
    pub at: Instant,
}

#[derive(Clone, Copy)]
enum Action {
    /// The status, and a `Retry-After` in seconds.
    Fail(u16, Option<u64>),
    Corrupt,
    Truncate,
    /// Read the request and answer nothing, for a while.
    Hang,
    /// Send half the body, then nothing more, for a while.
    Stall,
    /// Send half the body, then reset the connection (RST, not FIN).
    Reset,
}

struct Rule {
    path_contains: String,
    remaining: usize,
    action: Action,
}

#[derive(Default)]
struct State {
    /// (request id, entry); ids increase, so the log stays sorted by id.
    log: Vec<(u64, Logged)>,
    next_id: u64,
    rules: Vec<Rule>,
    throttle: Option<u64>,
    /// One link's rate, shared by every connection, and when it is free
    /// again.
    link: Option<(u64, Instant)>,
}

/// Reverse proxy on a free loopback port in front of `upstream`. Each client
/// connection carries one request (answered with `Connection: close`); each is
/// forwarded on a fresh upstream connection. Stops listening on drop.
pub struct FaultProxy {
    /// `127.0.0.1:<port>` the proxy listens on.
    pub addr: SocketAddr,
    /// Where requests are forwarded to.
    pub upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Updates the log entry of request `id`, unless it was cleared meanwhile.
fn update(s: &Mutex<State>, id: u64, f: impl FnOnce(&mut Logged)) {
    let mut s = lock(s);
    if let Ok(i) = s.log.binary_search_by_key(&id, |(k, _)| *k) {
        f(&mut s.log[i].1);
    }
}

impl FaultProxy {
    /// Starts listening on a free loopback port.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding fault proxy")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("testbed-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let state = state2.clone();
                        std::thread::spawn(move || {
                            let _ = serve(conn, upstream, &state);
                        });
                    }
                }
            })
            .context("spawning proxy thread")?;
        Ok(FaultProxy {
            addr,
            upstream,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Everything logged so far, in arrival order.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.state)
            .log
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Forgets the request log and all pending faults.
    pub fn clear(&self) {
        let mut s = lock(&self.state);
        s.log.clear();
        s.rules.clear();
    }

    /// Answers the next `count` requests whose target contains `path_contains`
    /// with `status` and an empty body, without forwarding them.
    pub fn fail_next(&self, path_contains: &str, count: usize, status: u16) {
        self.add(path_contains, count, Action::Fail(status, None));
    }

    /// As [`FaultProxy::fail_next`], with `Retry-After: <seconds>`.
    pub fn fail_next_retry_after(
        &self,
        path_contains: &str,
        count: usize,
        status: u16,
        seconds: u64,
    ) {
        self.add(path_contains, count, Action::Fail(status, Some(seconds)));
    }

    /// Forwards the next `count` matching requests without a `Range` (whole
    /// bodies, not probes) but stops sending after half of each body,
    /// holding the connection open for 30 seconds (a server that hangs
    /// mid-body).
    pub fn stall_next(&self, path_contains: &str, count: usize) {
        self.add(path_contains, count, Action::Stall);
    }

    /// Forwards the next `count` matching requests without a `Range` (whole
    /// bodies, not probes) but resets the connection (a TCP RST) after
    /// half of each body: a peer or middlebox that drops the connection.
    pub fn reset_next(&self, path_contains: &str, count: usize) {
        self.add(path_contains, count, Action::Reset);
    }

    /// Reads the next `count` matching requests and answers nothing for
    /// 30 seconds (a server that hangs), then closes the connection.
    pub fn hang_next(&self, path_contains: &str, count: usize) {
        self.add(path_contains, count, Action::Hang);
    }

    /// Forwards the next `count` matching requests but flips one byte in the
    /// middle of each response body.
    pub fn corrupt_next(&self, path_contains: &str, count: usize) {
        self.add(path_contains, count, Action::Corrupt);
    }

    /// Forwards the next `count` matching requests but closes the connection
    /// after half of each response body (headers announce the full length).
    pub fn truncate_next(&self, path_contains: &str, count: usize) {
        self.add(path_contains, count, Action::Truncate);
    }

    /// Holds every response body together to `bytes_per_sec`, as one
    /// network link would: connections side by side share the rate.
    pub fn link(&self, bytes_per_sec: u64) {
        lock(&self.state).link = Some((bytes_per_sec.max(1), Instant::now()));
    }

    /// Paces response bodies to about `bytes_per_sec` (None: full speed).
    /// Applies to bodies already streaming, too.
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        lock(&self.state).throttle = bytes_per_sec.filter(|&b| b > 0);
    }

    /// Sum of body bytes sent for requests whose target contains `path_contains`.
    pub fn bytes_sent_for(&self, path_contains: &str) -> u64 {
        lock(&self.state)
            .log
            .iter()
            .filter(|(_, l)| l.path.contains(path_contains))
            .map(|(_, l)| l.body_bytes_sent)
            .sum()
    }

    fn add(&self, path_contains: &str, count: usize, action: Action) {
        lock(&self.state).rules.push(Rule {
            path_contains: path_contains.into(),
            remaining: count,
            action,
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "expect",
    "te",
    "upgrade",
];

/// The proxy's send buffer toward the client. Kept small so that the
/// bytes it counts as sent are bytes the client's kernel has taken, not
/// bytes parked in the proxy's own socket (which would make a throttled
/// client look faster than it is at the start of every response).
const CLIENT_SNDBUF: usize = 64 << 10;

fn serve(client: TcpStream, upstream: SocketAddr, state: &Mutex<State>) -> Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::SndBuf, &CLIENT_SNDBUF)?;
    let mut out = client.try_clone()?;
    let mut r = BufReader::new(client);
    let Some(req) = read_head(&mut r)? else {
        return Ok(());
    };
    if req
        .get("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = read_request_body(&mut r, &req)?;
    let mut parts = req.start.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let (id, action) = {
        let mut s = lock(state);
        let id = s.next_id;
        s.next_id += 1;
        s.log.push((
            id,
            Logged {
                method: method.clone(),
                path: path.clone(),
                range: req.get("range").map(str::to_string),
                status: 0,
                body_bytes_sent: 0,
                at: Instant::now(),
            },
        ));
        let action = s
            .rules
            .iter_mut()
            .find(|r| {
                r.remaining > 0
                    && path.contains(&r.path_contains)
                    // A stall is for a body being downloaded, not a probe
                    // of a few bytes.
                    && !(matches!(r.action, Action::Stall | Action::Reset)
                        && req.get("range").is_some())
            })
            .map(|r| {
                r.remaining -= 1;
                r.action
            });
        s.rules.retain(|r| r.remaining > 0);
        (id, action)
    };
    let set_status = |code: u16| update(state, id, |l| l.status = code);
    if let Some(Action::Fail(code, after)) = action {
        set_status(code);
        let after = after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
        write!(
            out,
            "HTTP/1.1 {code} Injected\r\n{after}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    if let Some(Action::Hang) = action {
        std::thread::sleep(Duration::from_secs(30));
        return Ok(());
    }
    let up = match TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(_) => {
            set_status(502);
            write!(
                out,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
    };
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut up_w = up.try_clone()?;
    let mut extra = vec![("Connection", "close".to_string())];
    if !body.is_empty() || req.content_length().is_some() || req.chunked() {
        extra.push(("Content-Length", body.len().to_string()));
    }
    req.write_to(&mut up_w, HOP, &extra)?;
    up_w.write_all(&body)?;
    let mut up_r = BufReader::new(up);
    let resp = read_head(&mut up_r)?.context("upstream closed without answering")?;
    let status = resp.status();
    set_status(status);
    if method == "HEAD" || status < 200 || status == 204 || status == 304 {
        resp.write_to(
            &mut out,
            &["connection", "keep-alive"],
            &[("Connection", "close".into())],
        )?;
        return Ok(());
    }
    // Body source: stream Content-Length bodies, buffer the others.
    let (len, mut src): (u64, Box<dyn Read>) = match (resp.chunked(), resp.content_length()) {
        (false, Some(n)) => (n, Box::new(up_r.take(n))),
        (true, _) => {
            let b = read_chunked(&mut up_r)?;
            (b.len() as u64, Box::new(std::io::Cursor::new(b)))
        }
        (false, None) => {
            let mut b = Vec::new();
            up_r.read_to_end(&mut b)?;
            (b.len() as u64, Box::new(std::io::Cursor::new(b)))
        }
    };
    resp.write_to(
        &mut out,
        HOP,
        &[
            ("Content-Length", len.to_string()),
            ("Connection", "close".into()),
        ],
    )?;
    let mid = len / 2;
    let limit = if matches!(
        action,
        Some(Action::Truncate | Action::Stall | Action::Reset)
    ) {
        mid
    } else {
        len
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while sent < limit {
        let chunk_start = Instant::now();
        let rate = lock(state).throttle;
        let want = rate.map_or(buf.len() as u64, |r| (r / 20).clamp(1, buf.len() as u64));
        let want = want.min(limit - sent) as usize;
        let n = src.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if matches!(action, Some(Action::Corrupt)) && (sent..sent + n as u64).contains(&mid) {
            buf[(mid - sent) as usize] ^= 0xff;
        }
        // The shared link: this chunk's turn on it, then its time there.
        let link_free = {
            let mut st = lock(state);
            st.link.as_mut().map(|(rate, free)| {
                let start = (*free).max(Instant::now());
                *free = start + Duration::from_secs_f64(n as f64 / *rate as f64);
                *free
            })
        };
        if let Some(at) = link_free {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        out.write_all(&buf[..n])?;
        sent += n as u64;
        update(state, id, |l| l.body_bytes_sent = sent);
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(n as f64 / r as f64);
            if let Some(wait) = due.checked_sub(chunk_start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    out.flush()?;
    if matches!(action, Some(Action::Stall)) {
        std::thread::sleep(Duration::from_secs(30));
    }
    if matches!(action, Some(Action::Reset)) {
        // A zero linger makes the close below send RST.
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&out, nix::sys::socket::sockopt::Linger, &linger)?;
    }
    Ok(())
}
