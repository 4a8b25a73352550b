//! kubelet's view of images: the CRI `ImageService` on containerd's socket.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageFsInfoRequest, ImageSpec, ImageStatusRequest};
use std::path::PathBuf;
use tonic::transport::Channel;
use tonic::Request;

/// A CRI call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("CRI {op} {subject}: {status}")]
    Call {
        op: &'static str,
        subject: String,
        status: tonic::Status,
    },
    #[error("CRI ImageFsInfo: {0}")]
    ImageFs(String),
}

/// An image as kubelet sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriImage {
    /// The image ID: the config digest.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size: u64,
    pub pinned: bool,
}

/// CRI image service client.
#[derive(Clone)]
pub struct Cri {
    client: ImageServiceClient<Channel>,
}

/// Where CRI keeps images: the snapshotter name and its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFs {
    pub snapshotter: String,
    pub mountpoint: PathBuf,
}

impl Cri {
    /// A client on an existing channel to containerd's socket.
    pub fn new(channel: Channel) -> Self {
        Cri {
            client: ImageServiceClient::new(channel),
        }
    }

    /// `ImageStatus(reference)`: Some when kubelet would find the image.
    pub async fn image_status(&self, reference: &str) -> Result<Option<CriImage>, CriError> {
        let r = self
            .client
            .clone()
            .image_status(Request::new(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: reference.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            }))
            .await
            .map_err(|status| CriError::Call {
                op: "ImageStatus",
                subject: reference.to_string(),
                status,
            })?;
        Ok(r.into_inner().image.map(|i| CriImage {
            id: i.id,
            repo_tags: i.repo_tags,
            repo_digests: i.repo_digests,
            size: i.size,
            pinned: i.pinned,
        }))
    }

    /// The image filesystem, from which the snapshotter CRI uses follows:
    /// the mount point ends in `io.containerd.snapshotter.v1.<name>`.
    pub async fn image_fs(&self) -> Result<ImageFs, CriError> {
        let r = self
            .client
            .clone()
            .image_fs_info(Request::new(ImageFsInfoRequest {}))
            .await
            .map_err(|status| CriError::Call {
                op: "ImageFsInfo",
                subject: String::new(),
                status,
            })?;
        let fs = r.into_inner().image_filesystems;
        let mountpoint = fs
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|id| PathBuf::from(&id.mountpoint))
            .ok_or_else(|| CriError::ImageFs("no image filesystem reported".into()))?;
        let snapshotter = snapshotter_from_mountpoint(&mountpoint).ok_or_else(|| {
            CriError::ImageFs(format!(
                "mount point {} does not end in io.containerd.snapshotter.v1.<name>; set [containerd] snapshotter",
                mountpoint.display()
            ))
        })?;
        Ok(ImageFs {
            snapshotter,
            mountpoint,
        })
    }
}

/// `…/io.containerd.snapshotter.v1.overlayfs` → `overlayfs`.
pub fn snapshotter_from_mountpoint(p: &std::path::Path) -> Option<String> {
    p.file_name()?
        .to_str()?
        .strip_prefix("io.containerd.snapshotter.v1.")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn snapshotter_name_from_image_fs() {
        let p = Path::new("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs");
        assert_eq!(snapshotter_from_mountpoint(p).as_deref(), Some("overlayfs"));
        assert_eq!(
            snapshotter_from_mountpoint(Path::new("/var/lib/containerd")),
            None
        );
    }
}
