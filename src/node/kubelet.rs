//! The registration files: how each kind of node is told to register with
//! the startup taint. The transforms are pure (text in, [`Change`] out) and
//! never add a taint whose key and effect are already configured, so a
//! second run changes nothing.
//!
//! | flavour | file | how |
//! |---|---|---|
//! | kubelet `--config-dir` | `<dir>/99-prewarm.conf` | a full KubeletConfiguration whose `registerWithTaints` carries the taints of the kubelet config file and of the drop-ins before it (lists replace lists), plus ours |
//! | kubeadm | the join config (`--config` of `kubeadm join`) | `nodeRegistration.taints` of the `JoinConfiguration` document; other documents are kept byte for byte |
//! | kubelet flags env file | `/etc/default/kubelet` or `/etc/sysconfig/kubelet` | `--register-with-taints` inside `KUBELET_EXTRA_ARGS`, merged into an existing flag |
//! | k3s / rke2 | `<config.yaml>.d/99-prewarm.yaml` | `node-taint+:` appends to the `node-taint` list of `config.yaml` and the other drop-ins |

use crate::taint::Taint;
use serde_yaml::{Mapping, Value};
use std::path::{Path, PathBuf};

/// Our kubelet `--config-dir` drop-in. It sorts late so that its
/// `registerWithTaints` is the one in force.
pub const KUBELET_DROP_IN: &str = "99-prewarm.conf";
/// Our k3s/rke2 `config.yaml.d` drop-in.
pub const K3S_DROP_IN: &str = "99-prewarm.yaml";
/// kubeadm adds this to a control-plane join config that lists no taints;
/// writing `taints` would drop it, so it is written out explicitly.
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// A registration file that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "{path} sorts after {ours} and sets `{key}`, which replaces the taint list {ours} \
         writes; rename it to sort before {ours} or drop `{key}` from it"
    )]
    Shadowed {
        path: PathBuf,
        ours: String,
        key: &'static str,
    },
}

/// What a flavour wants done with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Write(String),
    /// Our own drop-in is no longer needed (the taint is configured
    /// elsewhere).
    Remove,
}

fn parse_err(path: &Path, message: impl Into<String>) -> KubeletError {
    KubeletError::Parse {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn yaml(path: &Path, text: &str) -> Result<Value, KubeletError> {
    serde_yaml::from_str(text).map_err(|e| parse_err(path, format!("not valid YAML: {e}")))
}

fn taint_yaml(t: &Taint) -> Value {
    let mut m = Mapping::new();
    m.insert("key".into(), t.key.clone().into());
    if let Some(v) = &t.value {
        m.insert("value".into(), v.clone().into());
    }
    m.insert("effect".into(), t.effect.as_str().into());
    Value::Mapping(m)
}

fn yaml_has_slot(list: &[Value], t: &Taint) -> bool {
    list.iter().any(|v| {
        t.same_slot(
            v.get("key").and_then(Value::as_str).unwrap_or_default(),
            v.get("effect").and_then(Value::as_str).unwrap_or_default(),
        )
    })
}

fn to_yaml_string(path: &Path, v: &Value) -> Result<String, KubeletError> {
    serde_yaml::to_string(v).map_err(|e| parse_err(path, format!("serializing YAML: {e}")))
}

/// Decides between writing `desired`, removing our file, or nothing.
fn settle(current: Option<&str>, desired: Option<String>) -> Change {
    match (current, desired) {
        (None, None) => Change::Unchanged,
        (Some(_), None) => Change::Remove,
        (Some(c), Some(d)) if c == d => Change::Unchanged,
        (_, Some(d)) => Change::Write(d),
    }
}

/// A file's path and text, as read.
pub type Source = (PathBuf, String);

// ---------------------------------------------------------------------------
// kubelet --config-dir

/// Our drop-in for the kubelet `--config-dir`.
///
/// `main` is the kubelet config file (`--config`), `drop_ins` the other
/// `*.conf` files of the directory in kubelet's (byte) order, `current` our
/// drop-in as it is now.
pub fn config_dir_drop_in(
    main: Option<&Source>,
    drop_ins: &[Source],
    current: Option<&str>,
    taint: &Taint,
) -> Result<Change, KubeletError> {
    let mut effective: Vec<Value> = Vec::new();
    let mut sources = main.into_iter().chain(drop_ins.iter());
    for (path, text) in &mut sources {
        let doc = yaml(path, text)?;
        let Some(list) = doc.get("registerWithTaints") else {
            continue;
        };
        let after_ours = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes() > KUBELET_DROP_IN.as_bytes())
            && Some(path) != main.map(|m| &m.0);
        if after_ours {
            return Err(KubeletError::Shadowed {
                path: path.clone(),
                ours: KUBELET_DROP_IN.into(),
                key: "registerWithTaints",
            });
        }
        effective = match list {
            Value::Null => Vec::new(),
            Value::Sequence(s) => s.clone(),
            _ => return Err(parse_err(path, "`registerWithTaints` is not a list")),
        };
    }
    if yaml_has_slot(&effective, taint) {
        return Ok(settle(current, None));
    }
    effective.push(taint_yaml(taint));
    let mut doc = Mapping::new();
    doc.insert("apiVersion".into(), "kubelet.config.k8s.io/v1beta1".into());
    doc.insert("kind".into(), "KubeletConfiguration".into());
    doc.insert("registerWithTaints".into(), Value::Sequence(effective));
    let body = to_yaml_string(Path::new(KUBELET_DROP_IN), &Value::Mapping(doc))?;
    let text = format!(
        "# Written by `prewarm register` at every boot; do not edit.\n\
         # kubelet registers the Node with these taints. Lists replace lists across\n\
         # --config-dir drop-ins, so this carries the taints of the kubelet config\n\
         # file and of the drop-ins that sort before this one.\n{body}"
    );
    Ok(settle(current, Some(text)))
}

// ---------------------------------------------------------------------------
// kubeadm JoinConfiguration

/// One piece of a multi-document YAML file: a document or a `---` line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Doc(String),
    Separator(String),
}

fn is_separator(line: &str) -> bool {
    let l = line.trim_end_matches(['\n', '\r']);
    l == "---" || (l.starts_with("---") && l[3..].starts_with([' ', '\t']))
}

fn split_documents(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut doc = String::new();
    for line in text.split_inclusive('\n') {
        if is_separator(line) {
            pieces.push(Piece::Doc(std::mem::take(&mut doc)));
            pieces.push(Piece::Separator(line.to_string()));
        } else {
            doc.push_str(line);
        }
    }
    pieces.push(Piece::Doc(doc));
    pieces
}

/// Merges the taint into `nodeRegistration.taints` of the
/// `JoinConfiguration` document in `text`; every other document is kept
/// byte for byte. Comments inside the JoinConfiguration document are lost
/// when it has to be rewritten.
pub fn kubeadm_join(path: &Path, text: &str, taint: &Taint) -> Result<Change, KubeletError> {
    let mut pieces = split_documents(text);
    let mut found = None;
    for (i, piece) in pieces.iter().enumerate() {
        let Piece::Doc(d) = piece else { continue };
        let v = yaml(path, d)?;
        if v.get("kind").and_then(Value::as_str) == Some("JoinConfiguration") {
            if found.is_some() {
                return Err(parse_err(path, "more than one JoinConfiguration document"));
            }
            found = Some((i, v));
        }
    }
    let Some((index, mut doc)) = found else {
        return Err(parse_err(
            path,
            "no JoinConfiguration document (kind: JoinConfiguration) to add the taint to",
        ));
    };
    let control_plane = doc.get("controlPlane").is_some_and(|v| !v.is_null());
    let Value::Mapping(root) = &mut doc else {
        return Err(parse_err(
            path,
            "the JoinConfiguration document is not a mapping",
        ));
    };
    let reg = root
        .entry("nodeRegistration".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if reg.is_null() {
        *reg = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(reg) = reg else {
        return Err(parse_err(path, "`nodeRegistration` is not a mapping"));
    };
    let taints = reg.entry("taints".into()).or_insert(Value::Null);
    if taints.is_null() {
        // kubeadm's default for an unset list; an explicit list replaces it.
        let mut defaults = Vec::new();
        if control_plane {
            defaults.push(taint_yaml(&Taint {
                key: CONTROL_PLANE_TAINT.into(),
                value: None,
                effect: crate::taint::Effect::NoSchedule,
            }));
        }
        *taints = Value::Sequence(defaults);
    }
    let Value::Sequence(list) = taints else {
        return Err(parse_err(path, "`nodeRegistration.taints` is not a list"));
    };
    if yaml_has_slot(list, taint) {
        return Ok(Change::Unchanged);
    }
    list.push(taint_yaml(taint));
    pieces[index] = Piece::Doc(to_yaml_string(path, &doc)?);
    let mut out = String::with_capacity(text.len() + 128);
    for p in &pieces {
        match p {
            Piece::Doc(d) | Piece::Separator(d) => out.push_str(d),
        }
    }
    Ok(Change::Write(out))
}

// ---------------------------------------------------------------------------
// kubelet flags env file

/// The variable kubeadm's systemd drop-in passes to kubelet.
pub const EXTRA_ARGS: &str = "KUBELET_EXTRA_ARGS";
const FLAG: &str = "register-with-taints";

/// Byte ranges of whitespace-separated tokens.
fn tokens(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(b)) => {
                out.push((b, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(b) = start {
        out.push((b, s.len()));
    }
    out
}

/// Merges the taint into `--register-with-taints` inside
/// `KUBELET_EXTRA_ARGS` of an env file (`None`: the file does not exist).
/// Only the flag's value changes; everything else is kept byte for byte.
pub fn kubelet_env(text: Option<&str>, taint: &Taint) -> Change {
    let text = text.unwrap_or_default();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // systemd's EnvironmentFile: the last assignment wins.
    let found = lines.iter().enumerate().rev().find_map(|(i, line)| {
        let body = line.trim_start();
        let body = body.strip_prefix("export ").unwrap_or(body).trim_start();
        let value = body.strip_prefix(EXTRA_ARGS)?.strip_prefix('=')?;
        Some((i, line.len() - value.len()))
    });
    let Some((index, value_at)) = found else {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{EXTRA_ARGS}=--{FLAG}={taint}\n"));
        return Change::Write(out);
    };
    let line = lines[index];
    let (head, value) = line.split_at(value_at);
    let newline = if value.ends_with('\n') { "\n" } else { "" };
    let value = value.trim_end_matches(['\n', '\r']);
    // The quoted part, if any, is what kubelet's flags come from.
    let (open, inner, close) = match value.chars().next() {
        Some(q @ ('"' | '\'')) if value.len() > 1 && value[1..].contains(q) => {
            let end = 1 + value[1..].rfind(q).unwrap_or(0);
            (&value[..1], &value[1..end], &value[end..])
        }
        _ => ("", value, ""),
    };
    let toks = tokens(inner);
    let mut list_range = None;
    for (n, &(b, e)) in toks.iter().enumerate() {
        let tok = &inner[b..e];
        let name = tok.trim_start_matches('-');
        if tok.starts_with('-') && name.starts_with(FLAG) {
            let rest = &name[FLAG.len()..];
            if let Some(v) = rest.strip_prefix('=') {
                list_range = Some((e - v.len(), e));
            } else if rest.is_empty() {
                list_range = toks.get(n + 1).copied().or(Some((e, e)));
            }
        }
    }
    let new_inner = match list_range {
        Some((b, e)) => {
            let list = &inner[b..e];
            let present = list
                .split(',')
                .filter_map(|t| Taint::parse_flag(t).ok())
                .any(|t| taint.same_slot(&t.key, t.effect.as_str()));
            if present {
                return Change::Unchanged;
            }
            let sep = if list.is_empty() { "" } else { "," };
            format!("{}{list}{sep}{taint}{}", &inner[..b], &inner[e..])
        }
        None => {
            let kept = inner.trim_end();
            let sep = if kept.is_empty() { "" } else { " " };
            format!("{kept}{sep}--{FLAG}={taint}")
        }
    };
    let mut out = String::with_capacity(text.len() + 80);
    for (i, l) in lines.iter().enumerate() {
        if i == index {
            out.push_str(&format!("{head}{open}{new_inner}{close}{newline}"));
        } else {
            out.push_str(l);
        }
    }
    Change::Write(out)
}

// ---------------------------------------------------------------------------
// k3s / rke2

fn node_taints(path: &Path, v: &Value) -> Result<Vec<String>, KubeletError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| parse_err(path, "`node-taint` entries must be strings"))
            })
            .collect(),
        _ => Err(parse_err(path, "`node-taint` is not a list of strings")),
    }
}

/// Our `config.yaml.d` drop-in for k3s or rke2.
///
/// `main` is `config.yaml`, `drop_ins` the other `*.yaml`/`*.yml` files of
/// `config.yaml.d` in name order, `current` our drop-in as it is now. k3s
/// replaces a list on `node-taint` and appends on `node-taint+`.
pub fn k3s_drop_in(
    main: Option<&Source>,
    drop_ins: &[Source],
    current: Option<&str>,
    taint: &Taint,
) -> Result<Change, KubeletError> {
    let mut effective: Vec<String> = Vec::new();
    for (path, text) in main.into_iter().chain(drop_ins.iter()) {
        let doc = yaml(path, text)?;
        let Value::Mapping(m) = doc else { continue };
        let after_ours = Some(path) != main.map(|m| &m.0)
            && path
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes() > K3S_DROP_IN.as_bytes());
        for (k, v) in &m {
            match k.as_str() {
                Some("node-taint") if after_ours => {
                    return Err(KubeletError::Shadowed {
                        path: path.clone(),
                        ours: K3S_DROP_IN.into(),
                        key: "node-taint",
                    })
                }
                Some("node-taint") => effective = node_taints(path, v)?,
                Some("node-taint+") => effective.extend(node_taints(path, v)?),
                _ => {}
            }
        }
    }
    let present = effective
        .iter()
        .flat_map(|s| s.split(','))
        .filter_map(|s| Taint::parse_flag(s.trim()).ok())
        .any(|t| taint.same_slot(&t.key, t.effect.as_str()));
    if present {
        return Ok(settle(current, None));
    }
    let mut doc = Mapping::new();
    doc.insert(
        "node-taint+".into(),
        Value::Sequence(vec![taint.to_string().into()]),
    );
    let body = to_yaml_string(Path::new(K3S_DROP_IN), &Value::Mapping(doc))?;
    let text = format!(
        "# Written by `prewarm register` at every boot; do not edit.\n\
         # `node-taint+` appends the startup taint to the node-taint list of\n\
         # config.yaml and of the drop-ins that sort before this one.\n{body}"
    );
    Ok(settle(current, Some(text)))
}

// ---------------------------------------------------------------------------
// Files

/// Reads a file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, KubeletError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KubeletError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The files in `dir` whose names end with one of `suffixes`
/// (case-insensitively), except `skip`, in byte order of their names.
pub fn read_dir_sorted(
    dir: &Path,
    suffixes: &[&str],
    skip: &str,
) -> Result<Vec<Source>, KubeletError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KubeletError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            let lower = n.to_ascii_lowercase();
            n != skip && suffixes.iter().any(|s| lower.ends_with(s))
        })
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let path = dir.join(&n);
        if let Some(text) = read_optional(&path)? {
            out.push((path, text));
        }
    }
    Ok(out)
}

/// Carries out a change: an atomic write that keeps the file's mode (a
/// kubeadm join config holds a bootstrap token), or removing our drop-in.
pub fn apply(path: &Path, change: &Change) -> Result<(), KubeletError> {
    let err = |source| KubeletError::Write {
        path: path.to_path_buf(),
        source,
    };
    match change {
        Change::Unchanged => Ok(()),
        Change::Write(text) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o644);
            crate::atomic::write_atomic_mode(path, text.as_bytes(), Some(mode)).map_err(err)
        }
        Change::Remove => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taint::Effect;

    fn ours() -> Taint {
        Taint {
            key: "startup-taint.cluster-autoscaler.kubernetes.io/prewarm".into(),
            value: None,
            effect: Effect::NoSchedule,
        }
    }

    #[test]
    fn documents_split_and_join_losslessly() {
        let text = "a: 1\n---\nb: 2\n--- # c\nc: 3";
        let pieces = split_documents(text);
        assert_eq!(pieces.len(), 5);
        let joined: String = pieces
            .iter()
            .map(|p| match p {
                Piece::Doc(d) | Piece::Separator(d) => d.as_str(),
            })
            .collect();
        assert_eq!(joined, text);
        assert!(!is_separator("----\n"));
    }

    #[test]
    fn env_file_cases() {
        let t = ours();
        let flag = format!("--register-with-taints={t}");
        let cases: Vec<(Option<&str>, Option<String>)> = vec![
            (None, Some(format!("KUBELET_EXTRA_ARGS={flag}\n"))),
            (
                Some("KUBELET_EXTRA_ARGS=\n"),
                Some(format!("KUBELET_EXTRA_ARGS={flag}\n")),
            ),
            (
                Some("# c\nKUBELET_EXTRA_ARGS=\"--node-ip=10.0.0.1  --v=2\"\nOTHER=1"),
                Some(format!(
                    "# c\nKUBELET_EXTRA_ARGS=\"--node-ip=10.0.0.1  --v=2 {flag}\"\nOTHER=1"
                )),
            ),
            (
                Some("KUBELET_EXTRA_ARGS='--register-with-taints=a=b:NoExecute --v=2'\n"),
                Some(format!(
                    "KUBELET_EXTRA_ARGS='--register-with-taints=a=b:NoExecute,{t} --v=2'\n"
                )),
            ),
            (
                Some("KUBELET_EXTRA_ARGS=--register-with-taints a:NoSchedule\n"),
                Some(format!(
                    "KUBELET_EXTRA_ARGS=--register-with-taints a:NoSchedule,{t}\n"
                )),
            ),
            (
                Some(&*Box::leak(
                    format!("KUBELET_EXTRA_ARGS=-register-with-taints={t}\n").into_boxed_str(),
                )),
                None,
            ),
        ];
        for (before, want) in cases {
            let got = kubelet_env(before, &t);
            match want {
                Some(w) => {
                    assert_eq!(got, Change::Write(w.clone()), "{before:?}");
                    assert_eq!(kubelet_env(Some(&w), &t), Change::Unchanged, "{w:?}");
                }
                None => assert_eq!(got, Change::Unchanged, "{before:?}"),
            }
        }
    }

    #[test]
    fn kubeadm_control_plane_keeps_its_default_taint() {
        let text = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ncontrolPlane:\n  localAPIEndpoint:\n    bindPort: 6443\n";
        let Change::Write(out) = kubeadm_join(Path::new("j.yaml"), text, &ours()).unwrap() else {
            panic!("no change")
        };
        assert!(out.contains(CONTROL_PLANE_TAINT), "{out}");
        assert!(out.contains("prewarm"), "{out}");
        // An explicit empty list means no taints; it stays that way.
        let text = "kind: JoinConfiguration\ncontrolPlane: {}\nnodeRegistration:\n  taints: []\n";
        let Change::Write(out) = kubeadm_join(Path::new("j.yaml"), text, &ours()).unwrap() else {
            panic!("no change")
        };
        assert!(!out.contains(CONTROL_PLANE_TAINT), "{out}");
        assert!(kubeadm_join(Path::new("j.yaml"), "kind: InitConfiguration\n", &ours()).is_err());
    }

    #[test]
    fn later_drop_ins_that_replace_the_list_are_refused() {
        let later = vec![(
            PathBuf::from("/d/zz-site.conf"),
            "registerWithTaints: []\n".to_string(),
        )];
        let err = config_dir_drop_in(None, &later, None, &ours()).unwrap_err();
        assert!(err.to_string().contains("zz-site.conf"), "{err}");
        let later = vec![(
            PathBuf::from("/d/zz.yaml"),
            "node-taint:\n- a:NoSchedule\n".to_string(),
        )];
        assert!(k3s_drop_in(None, &later, None, &ours()).is_err());
        // Appending after ours is fine.
        let later = vec![(
            PathBuf::from("/d/zz.yaml"),
            "node-taint+:\n- a:NoSchedule\n".to_string(),
        )];
        assert!(k3s_drop_in(None, &later, None, &ours()).is_ok());
    }
}
