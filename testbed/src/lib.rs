//! Real daemons and test images for prewarm's integration tests, demo and
//! benchmark.
//!
//! Everything runs on temporary paths and free loopback ports: a private
//! `containerd` ([`Containerd`]), a `docker-registry` with or without TLS and
//! token auth ([`Registry`]), a fault-injecting HTTP proxy ([`FaultProxy`]) and
//! test images built from local bytes and pushed with `skopeo`
//! ([`push_image`]). Daemons are killed and reaped on `Drop`.

#![warn(missing_docs)]

mod containerd;
mod files;
pub mod http;
mod image;
pub mod kubeapi;
mod proc;
mod proxy;
mod registry;
pub mod scenario;
pub mod tarball;

pub use containerd::{containerd_of_suite, Containerd};
pub use files::{FileServer, Served};
pub use image::{
    push_image, random_bytes, write_oci_archive, write_oci_layout, BuiltManifest, Compression,
    Format, ImageSpec, LayerSpec, PushedImage,
};
pub use kubeapi::{Credential, KubeApi, Outage, Role};
pub use proxy::{FaultProxy, Logged};
pub use registry::{Registry, Tls, TokenRequest};

use anyhow::{bail, Context, Result};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Binds `127.0.0.1:0` and returns the port the kernel picked (the listener is
/// closed again, so there is a small window in which someone else may take it).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()
        .context("local_addr of probe listener")?
        .port())
}

/// Calls `f` every 50 ms until it returns `Ok(Some(_))`. `Ok(None)` means
/// "not yet"; an `Err` aborts at once. Fails with a message naming `what`
/// once `timeout` has passed.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().with_context(|| format!("while waiting for {what}"))? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
