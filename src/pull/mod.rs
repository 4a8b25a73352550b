//! The preload engine: resolve → inventory → plan → fetch, store, unpack →
//! image records → report.
//!
//! Data flows one way through the submodules: [`blobs`] (where bytes come
//! from) → [`resolve`] → [`inventory`] → [`fetch`] → [`stage`] → [`engine`].

pub mod blobs;
pub mod engine;
pub mod fetch;
pub mod inventory;
pub mod planner;
pub mod progress;
pub mod resolve;
pub mod stage;

#[cfg(test)]
mod fakes;

pub use engine::{lease_id, Engine};
pub use planner::PlannedImage;

use crate::containerd::ContainerdError;
use crate::manifest;
use crate::registry::RegistryError;
use std::time::Duration;

/// Why one image could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("{reference}: blob {digest}: {message}")]
    Blob {
        reference: String,
        digest: String,
        message: String,
    },
    #[error("disk-full: {available} bytes free on {path}; writing {more} more would go below the reserve of {reserve} bytes")]
    DiskFull {
        path: String,
        available: u64,
        more: u64,
        reserve: u64,
    },
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    #[error("{name} is not visible through CRI ImageStatus within {within:?}")]
    NotVisible { name: String, within: Duration },
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Unpack(#[from] crate::unpack::UnpackError),
}

impl PullError {
    /// Whether and when to try again: a registry's `Retry-After` is kept.
    pub(crate) fn again(&self) -> crate::retry::Again {
        match self {
            PullError::Registry(e) => e.again(),
            other => other.is_retryable().into(),
        }
    }

    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            PullError::Registry(e) => e.is_retryable(),
            PullError::Containerd(e) => e.is_retryable(),
            PullError::Blob { .. } => true,
            PullError::Unpack(e) => e.is_retryable(),
            _ => false,
        }
    }
}
