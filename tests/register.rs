//! Golden files for `prewarm register`, one directory per case under
//! tests/fixtures/register/<case>/: `case.toml` (a config fragment in which
//! `@ROOT@` is the case's file tree and `@KUBECONFIG@` a parseable
//! kubeconfig), `before/` (the tree before) and `after/` (the tree after).
//! Every case also runs a second time and must leave the tree
//! byte-identical. `UPDATE_GOLDEN=1` rewrites the `after/` trees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/register")
}

/// Every file under `root`, by relative path.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in tree(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

struct Run {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    started: PathBuf,
    config: PathBuf,
}

impl Run {
    fn new(case: &Path) -> Run {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        copy_tree(&case.join("before"), &root);
        // Parseable, never contacted (the cases set pre-taint = false).
        let kubeconfig = tmp.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    \
             user: u\ncurrent-context: c\n",
        )
        .unwrap();
        let started = tmp.path().join("started");
        let text = std::fs::read_to_string(case.join("case.toml"))
            .unwrap()
            .replace("@ROOT@", &root.to_string_lossy())
            .replace("@KUBECONFIG@", &kubeconfig.to_string_lossy())
            .replace(
                "[handoff]\n",
                &format!("[handoff]\nnode-name = \"golden\"\nstarted-file = {started:?}\n"),
            );
        let config = tmp.path().join("case.toml");
        std::fs::write(&config, text).unwrap();
        Run {
            root,
            started,
            config,
            _tmp: tmp,
        }
    }

    fn register(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_prewarm"))
            .arg("--config-root")
            .arg(self.root.join("no-prewarm-config-here"))
            .arg("--config")
            .arg(&self.config)
            .arg("register")
            .output()
            .unwrap()
    }
}

fn show(t: &BTreeMap<String, Vec<u8>>) -> String {
    t.iter()
        .map(|(k, v)| format!("=== {k}\n{}", String::from_utf8_lossy(v)))
        .collect()
}

#[test]
fn every_flavour_matches_its_golden_files_and_is_idempotent() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.toml").exists())
        .collect();
    cases.sort();
    let mut seen = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let run = Run::new(case);
        let out = run.register();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(run.started.exists(), "{name}: start stamp written");
        let got = tree(&run.root);
        if update {
            let after = case.join("after");
            let _ = std::fs::remove_dir_all(&after);
            std::fs::create_dir_all(&after).unwrap();
            copy_tree(&run.root, &after);
        }
        let want = tree(&case.join("after"));
        assert!(
            got == want,
            "{name}: got\n{}\nwant\n{}",
            show(&got),
            show(&want)
        );
        let again = run.register();
        assert_eq!(
            again.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        assert!(
            tree(&run.root) == want,
            "{name}: the second run changed the files"
        );
        assert!(
            String::from_utf8_lossy(&again.stderr).contains(" unchanged "),
            "{name}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        seen.push(name);
    }
    for flavour in [
        "kubelet-config-dir",
        "kubeadm",
        "kubelet-env",
        "k3s",
        "rke2",
        "auto",
    ] {
        assert!(
            seen.iter().any(|c| c.starts_with(flavour)),
            "no case for {flavour}: {seen:?}"
        );
    }
}

#[test]
fn a_rewritten_join_config_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let run = Run::new(&fixtures().join("kubeadm-worker"));
    let file = run.root.join("run/kubeadm/kubeadm-join-config.yaml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run.register();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the bootstrap token stays private");
}

#[test]
fn refusals_write_nothing() {
    // A later drop-in would replace our list: refused, nothing written.
    let run = Run::new(&fixtures().join("kubelet-config-dir"));
    let late = run.root.join("etc/kubernetes/kubelet.conf.d/zz-late.conf");
    std::fs::write(&late, "registerWithTaints: []\n").unwrap();
    let before = tree(&run.root);
    let out = run.register();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("zz-late.conf sorts after 99-prewarm.conf"),
        "{stderr}"
    );
    assert!(tree(&run.root) == before);
    assert!(!run.started.exists());

    // Nothing to detect: exit 2.
    let run = Run::new(&fixtures().join("auto-env-last"));
    std::fs::remove_file(run.root.join("etc/default/kubelet")).unwrap();
    let out = run.register();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot tell how this node joins"),
        "{stderr}"
    );
    assert!(tree(&run.root).is_empty());
}
