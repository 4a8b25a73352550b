//! Content digests as OCI and containerd write them: `sha256:<hex>`.

use sha2::{Digest, Sha256};

/// The digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    finish(Sha256::new_with_prefix(bytes))
}

/// The digest of everything fed to `h`.
pub fn finish(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_digest() {
        assert_eq!(
            super::sha256(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
