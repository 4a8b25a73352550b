//! Just enough HTTP/1.1 for the token server, the fault proxy and probes
//! (plain HTTP only; [`request`] is handy in tests).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A request or response head: start line plus headers in order.
#[derive(Debug, Clone)]
pub struct Head {
    /// `GET /v2/ HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start: String,
    /// Header (name, value) pairs as received.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First header value with this (case-insensitive) name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The response status code (responses only).
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Content-Length, if present and valid.
    pub fn content_length(&self) -> Option<u64> {
        self.get("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    /// Whether the body uses chunked transfer encoding.
    pub fn chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// Serialises the head, skipping headers named in `drop`.
    pub fn write_to(
        &self,
        w: &mut impl Write,
        drop: &[&str],
        extra: &[(&str, String)],
    ) -> Result<()> {
        let mut s = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            if !drop.iter().any(|d| k.eq_ignore_ascii_case(d)) {
                s.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        for (k, v) in extra {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        w.write_all(s.as_bytes())?;
        Ok(())
    }
}

/// Reads a head; `Ok(None)` on a clean EOF before the first byte.
pub fn read_head(r: &mut impl BufRead) -> Result<Option<Head>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let start = start.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("EOF inside HTTP head");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head { start, headers }))
}

/// Reads a chunked body to its end (trailers are discarded).
pub fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or("");
        let n =
            usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size {line:?}"))?;
        if n == 0 {
            loop {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let at = body.len();
        body.resize(at + n, 0);
        r.read_exact(&mut body[at..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

/// Reads a request body framed by Content-Length or chunked encoding.
pub fn read_request_body(r: &mut impl BufRead, head: &Head) -> Result<Vec<u8>> {
    if head.chunked() {
        return read_chunked(r);
    }
    let mut body = vec![0; head.content_length().unwrap_or(0) as usize];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// A complete response from [`request`].
#[derive(Debug, Clone)]
pub struct Response {
    /// Status line and headers.
    pub head: Head,
    /// The (de-chunked) body.
    pub body: Vec<u8>,
}

/// One plain-HTTP request with `Connection: close`; reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let head = read_head(&mut r)?.with_context(|| format!("{addr} closed without answering"))?;
    let body = if method == "HEAD" {
        Vec::new()
    } else if head.chunked() {
        read_chunked(&mut r)?
    } else if let Some(n) = head.content_length() {
        let mut b = vec![0; n as usize];
        r.read_exact(&mut b)?;
        b
    } else {
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        b
    };
    Ok(Response { head, body })
}
