//! Taints, and the Kubernetes name syntaxes that the configuration and the
//! Node patches must get right: checked here as the API server checks
//! them, so a bad key fails validation rather than the patch. Pure values.

use serde::{Deserialize, Serialize};
use std::fmt;

/// node-readiness-controller only manages taints whose key starts with this.
pub const READINESS_PREFIX: &str = "readiness.k8s.io/";

/// A taint effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::NoSchedule => "NoSchedule",
            Effect::PreferNoSchedule => "PreferNoSchedule",
            Effect::NoExecute => "NoExecute",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "NoSchedule" => Ok(Effect::NoSchedule),
            "PreferNoSchedule" => Ok(Effect::PreferNoSchedule),
            "NoExecute" => Ok(Effect::NoExecute),
            _ => Err(format!(
                "{s:?} is not one of \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
            )),
        }
    }
}

/// A node taint. Two taints with the same key and effect occupy the same
/// slot: the API server refuses a Node that has both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: Effect,
}

impl Taint {
    /// Whether `key` and `effect` name this taint's slot.
    pub fn same_slot(&self, key: &str, effect: &str) -> bool {
        self.key == key && self.effect.as_str() == effect
    }

    /// Whether a taint in Kubernetes JSON/YAML shape occupies this slot.
    pub fn matches_json(&self, t: &serde_json::Value) -> bool {
        self.same_slot(
            t.get("key").and_then(|v| v.as_str()).unwrap_or_default(),
            t.get("effect").and_then(|v| v.as_str()).unwrap_or_default(),
        )
    }

    /// Parses the flag form `key[=value]:Effect`.
    pub fn parse_flag(s: &str) -> Result<Self, String> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not a taint like \"key=value:NoSchedule\""))?;
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, (!v.is_empty()).then(|| v.to_string())),
            None => (kv, None),
        };
        Ok(Taint {
            key: key.to_string(),
            value,
            effect: Effect::parse(effect)?,
        })
    }

    /// The JSON shape the API server uses.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("key".into(), self.key.clone().into());
        if let Some(v) = &self.value {
            m.insert("value".into(), v.clone().into());
        }
        m.insert("effect".into(), self.effect.as_str().into());
        serde_json::Value::Object(m)
    }
}

/// The flag form `key=value:Effect` (or `key:Effect` without a value), as
/// `--register-with-taints` and k3s `node-taint` take it.
impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={}:{}", self.key, v, self.effect.as_str()),
            None => write!(f, "{}:{}", self.key, self.effect.as_str()),
        }
    }
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The name part of a qualified name (and the syntax of a label value).
fn is_name_part(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    !s.is_empty()
        && s.len() <= 63
        && alnum(s.chars().next())
        && alnum(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name_part(name),
        None => is_name_part(s),
    }
}

/// Checks a taint key: `[prefix/]name` as Kubernetes validates it.
pub fn validate_taint_key(s: &str) -> Result<(), String> {
    if is_qualified_name(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a taint key like \"example.com/name\" (optional DNS prefix, one '/', \
             a name of at most 63 letters, digits, '-', '_' or '.')"
        ))
    }
}

/// Checks a taint value: empty, or up to 63 letters, digits, `-`, `_`, `.`.
pub fn validate_taint_value(s: &str) -> Result<(), String> {
    if s.is_empty() || is_name_part(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a taint value (at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit)"
        ))
    }
}

/// Checks a Node name (a lowercase DNS subdomain) and returns it.
pub fn validate_node_name(s: &str) -> Result<String, String> {
    if is_dns_subdomain(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a node name (lowercase letters, digits, '-' and '.', at most 253)"
        ))
    }
}

/// Checks a node condition type: a qualified name that kubelet does not own.
pub fn validate_condition_type(s: &str) -> Result<(), String> {
    const KUBELET_OWNED: [&str; 5] = [
        "Ready",
        "MemoryPressure",
        "DiskPressure",
        "PIDPressure",
        "NetworkUnavailable",
    ];
    if KUBELET_OWNED.contains(&s) {
        return Err(format!(
            "{s:?} is a condition kubelet owns; use your own, like \"prewarm.io/ImagesReady\""
        ));
    }
    if !is_qualified_name(s) {
        return Err(format!(
            "{s:?} is not a condition type like \"prewarm.io/ImagesReady\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_flag_form_round_trips() {
        for s in [
            "a.io/b=c:NoSchedule",
            "a.io/b:NoExecute",
            "k=v:PreferNoSchedule",
        ] {
            assert_eq!(Taint::parse_flag(s).unwrap().to_string(), s);
        }
        assert_eq!(Taint::parse_flag("a=:NoSchedule").unwrap().value, None);
        assert!(Taint::parse_flag("a=b").is_err());
        assert!(Taint::parse_flag("a=b:Never").is_err());
    }

    #[test]
    fn names_are_checked_like_kubernetes() {
        assert!(
            validate_taint_key("startup-taint.cluster-autoscaler.kubernetes.io/prewarm").is_ok()
        );
        assert!(validate_taint_key("readiness.k8s.io/prewarm-images").is_ok());
        assert!(validate_taint_key("plain_Name.1").is_ok());
        for bad in [
            "",
            "a/b/c",
            "Upper.io/x",
            "a.io/",
            "/x",
            "a.io/-x",
            &"x".repeat(64),
        ] {
            assert!(validate_taint_key(bad).is_err(), "{bad:?}");
        }
        assert!(validate_taint_value("").is_ok());
        assert!(validate_taint_value("pending").is_ok());
        assert!(validate_taint_value("a b").is_err());
        assert!(validate_node_name("worker-1.example").is_ok());
        assert!(validate_node_name("Worker-1").is_err());
        assert!(validate_condition_type("prewarm.io/ImagesReady").is_ok());
        assert!(validate_condition_type("Ready").is_err());
    }
}
