//! Image references, normalized the way CRI and containerd normalize them.
//!
//! `nginx` becomes `docker.io/library/nginx:latest`; `repo:tag@sha256:…` keeps
//! both parts, because prewarm records the tag *and* the digest name.

use std::fmt;

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("image reference {reference:?}: {why}")]
    Invalid {
        reference: String,
        why: &'static str,
    },
}

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host, with port if any: `docker.io`, `127.0.0.1:5000`.
    pub domain: String,
    /// Repository path below the host: `library/nginx`.
    pub repository: String,
    /// Tag; `latest` when the reference named neither tag nor digest.
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when the reference pinned one.
    pub digest: Option<String>,
}

const DEFAULT_DOMAIN: &str = "docker.io";

impl Reference {
    /// Parses and normalizes `s`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let invalid = |why| ReferenceError::Invalid {
            reference: s.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.trim() != s || s.contains(char::is_whitespace) {
            return Err(invalid("contains whitespace"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(invalid)?;
                (rest, Some(digest.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if tag.is_empty()
                    || tag.len() > 128
                    || !tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    || tag.starts_with(['.', '-'])
                {
                    return Err(invalid("invalid tag"));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let (domain, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if domain.is_empty() || domain.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid("invalid registry host"));
        }
        let repository = if domain == DEFAULT_DOMAIN && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
                    || !c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            })
        {
            return Err(invalid(
                "repository must be lowercase letters, digits and separators",
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            domain,
            repository,
            tag,
            digest,
        })
    }

    /// `domain/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.repository)
    }

    /// `domain/repository:tag`, when the reference has a tag.
    pub fn tag_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `domain/repository@digest`.
    pub fn digest_name(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Checks that `d` is `sha256:` followed by 64 lowercase hex digits.
pub fn validate_digest(d: &str) -> Result<(), &'static str> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or("digest must start with sha256:")?;
    if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return Err("digest must be sha256: and 64 lowercase hex digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_like_cri() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("bitnami/redis", "docker.io/bitnami/redis:latest"),
            ("localhost/foo", "localhost/foo:latest"),
            ("127.0.0.1:5000/ml/model:1.2", "127.0.0.1:5000/ml/model:1.2"),
            (
                "registry.example.com/a/b/c:v1",
                "registry.example.com/a/b/c:v1",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                Reference::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn keeps_tag_and_digest() {
        let r = Reference::parse(&format!("quay.io/x/y:v2@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.tag_name().unwrap(), "quay.io/x/y:v2");
        assert_eq!(r.digest_name(D), format!("quay.io/x/y@{D}"));
        let r = Reference::parse(&format!("quay.io/x/y@{D}")).unwrap();
        assert_eq!(r.tag, None);
    }

    #[test]
    fn port_is_not_a_tag() {
        let r = Reference::parse("127.0.0.1:5000/app").unwrap();
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Upper/Case",
            "repo:",
            "repo@sha256:abc",
            "repo@md5:0123",
            "a b",
            "repo:-bad",
            "registry.example.com//x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should fail");
        }
    }
}
