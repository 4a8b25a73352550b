//! The node side of the handoff: make kubelet register the Node with the
//! startup taint (`register`), then remove it or have it removed
//! (`untaint`), always within a deadline.
//!
//! - [`kubelet`]: the registration files, one flavour per way a node joins
//!   (kubelet `--config-dir` drop-in, kubeadm `JoinConfiguration`, kubelet
//!   flags env file, k3s/rke2 `config.yaml.d`). Pure text in, text out.
//! - [`register`]: detection, atomic writes, the start stamp and the taint on
//!   a Node object that survived a reimage.
//! - [`untaint`]: wait for the Node, read the report, apply the deadline
//!   policy, patch.
//! - [`api`]: the Kubernetes API behind one small trait, [`api::NodeApi`],
//!   with a kube-rs implementation.
//! - [`clock`]: the deadline's reference point, which survives a restart of
//!   the untaint unit.
//! - [`list`]: the list revision the node holds, as annotations.

pub mod api;
pub mod clock;
pub mod kubelet;
pub mod list;
pub mod register;
pub mod untaint;

/// Where `untaint` records the outcome on the Node.
pub const ANNOTATION: &str = "prewarm.io/preload";

/// The node name kubelet uses by default: the hostname, trimmed and
/// lowercased.
pub fn default_node_name() -> std::io::Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(raw.trim().to_lowercase())
}
