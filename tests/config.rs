//! Every invalid-config fixture fails `check-config` with exit code 2 and
//! an error naming the file and what is wrong; valid fragments merge in
//! order.

use std::path::Path;
use std::process::Command;

fn check_config(root: &Path, extra: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prewarm"));
    cmd.arg("--config-root").arg(root);
    if let Some(p) = extra {
        cmd.arg("--config").arg(p);
    }
    let out = cmd.arg("check-config").output().expect("running prewarm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_bad_fixture_is_refused_with_file_and_key() {
    let empty = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: the first line must be `# expect: <error text>`"));
        let (code, _, stderr) = check_config(empty.path(), Some(&path));
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{name}: want {expect:?} in {stderr}"
        );
        if !name.starts_with("no-images") {
            assert!(
                stderr.contains(&name),
                "{name}: the error names the file: {stderr}"
            );
        }
        assert_eq!(
            stderr.lines().count(),
            1,
            "{name}: one clear line: {stderr}"
        );
        checked += 1;
    }
    // A fixture directory that went missing must not pass for an empty one.
    assert!(checked >= 48, "only {checked} fixtures checked");
}

/// Writes `text` at `rel` under `root`, making the directories.
fn write_under(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn fragments_merge_in_directory_order() {
    let root = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| write_under(root.path(), rel, text);
    write(
        "usr/lib/prewarm/config.d/10-defaults.toml",
        "version = 1\n[[images]]\nref = \"a\"\n",
    );
    write(
        "run/prewarm/config.d/20-runtime.toml",
        "version = 1\n[[images]]\nref = \"b\"\n",
    );
    write(
        "etc/prewarm/config.d/30-site.toml",
        "version = 1\n[[images]]\nref = \"c\"\n",
    );
    write("etc/prewarm/config.d/ignored.conf", "not toml at all");
    let (code, stdout, stderr) = check_config(root.path(), None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("3 images from 3 fragment(s)"), "{stdout}");
    let order: Vec<&str> = stdout.lines().skip(1).map(str::trim).collect();
    assert!(
        order[0].ends_with("10-defaults.toml") && order[2].ends_with("30-site.toml"),
        "{stdout}"
    );

    // A broken site fragment is refused even though the defaults are fine.
    write(
        "etc/prewarm/config.d/40-broken.toml",
        "version = 1\n[pull]\nretries = -1\n",
    );
    let (code, _, stderr) = check_config(root.path(), None);
    assert_eq!(code, 2);
    assert!(stderr.contains("40-broken.toml"), "{stderr}");
}

/// The same image in two fragments is one entry, under one rule (as in
/// the lists): the higher priority, required if either says so, with a
/// warning that names both places when a later one says otherwise.
#[test]
fn a_later_entry_does_not_make_a_required_image_optional() {
    let root = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| write_under(root.path(), rel, text);
    write(
        "usr/lib/prewarm/config.d/10-defaults.toml",
        "version = 1\n[[images]]\nref = \"a:1\"\nrequired = true\n",
    );
    write(
        "etc/prewarm/config.d/30-site.toml",
        "version = 1\n[[images]]\nref = \"b:1\"\n[[images]]\nref = \"a:1\"\nrequired = false\n",
    );
    let (code, stdout, stderr) = check_config(root.path(), None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2 images from 2 fragment(s)"), "{stdout}");
    assert!(
        stderr.contains("stays required")
            && stderr.contains("images[1] in")
            && stderr.contains("30-site.toml")
            && stderr.contains("10-defaults.toml"),
        "{stderr}"
    );
}

/// The full configuration the README shows is one prewarm accepts as it
/// stands, so that operators can start from it.
#[test]
fn the_readme_configuration_is_accepted() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("reading README.md");
    let full: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.starts_with("version = 1"))
        .collect();
    assert!(!full.is_empty(), "README.md shows no full configuration");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (i, text) in full.iter().enumerate() {
        let file = dir.path().join(format!("readme-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, out, err) = check_config(&root, Some(&file));
        assert_eq!(code, 0, "README block {i}:\n{text}\n{out}{err}");
    }
}

/// The node's registry files are configuration too: a broken `hosts.toml`,
/// a CA file it names that is missing, or a broken docker `config.json`
/// exits 2 naming the file, and before containerd is contacted (the socket
/// here does not exist, which would be exit 4).
#[test]
fn broken_registry_files_exit_2_before_containerd_is_contacted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let certs = dir.path().join("certs.d");
    let write = |p: &Path, text: &str| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let good_auth = dir.path().join("config.json");
    write(&good_auth, "{\"auths\": {}}\n");
    let cases = [
        (
            "not-toml",
            "[host.\"https://m.example\"\n".to_string(),
            good_auth.clone(),
            "hosts.toml",
        ),
        (
            "missing-ca",
            "server = \"https://r.example\"\n[host.\"https://m.example\"]\n\
             capabilities = [\"pull\", \"resolve\"]\nca = \"/nonexistent/ca.pem\"\n"
                .to_string(),
            good_auth.clone(),
            "/nonexistent/ca.pem",
        ),
        (
            "bad-auth",
            "server = \"https://r.example\"\n".to_string(),
            dir.path().join("broken.json"),
            "broken.json",
        ),
    ];
    write(&dir.path().join("broken.json"), "{\"auths\": [1,\n");
    for (name, hosts, auth, names) in cases {
        write(&certs.join("r.example").join("hosts.toml"), &hosts);
        let cfg = dir.path().join(format!("{name}.toml"));
        write(
            &cfg,
            &format!(
                "version = 1\n[containerd]\nsocket = {:?}\n\
                 [registry]\nconfig-path = {certs:?}\nauth-file = {auth:?}\n\
                 [[images]]\nref = \"r.example/team/app:1\"\n",
                dir.path().join("no-containerd.sock")
            ),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_prewarm"))
            .arg("--config-root")
            .arg(&root)
            .arg("--config")
            .arg(&cfg)
            .arg("pull")
            .output()
            .expect("running prewarm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(names), "{name}: want {names:?} in {stderr}");
        assert!(!stderr.contains("no-containerd.sock"), "{name}: {stderr}");
    }
}

/// A reader who went away is no crash: `check-config | head -c 0` with
/// stdout closed exits 0, and a refused configuration with stderr closed
/// still exits 2 (both were a panic, exit 101).
#[test]
fn closed_pipes_do_not_panic() {
    let empty = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let run = |config: &Path, close_stdout: bool| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_prewarm"))
            .arg("--config-root")
            .arg(empty.path())
            .arg("--config")
            .arg(config)
            .arg("check-config")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running prewarm");
        // Close one end before prewarm writes to it.
        if close_stdout {
            drop(child.stdout.take());
        } else {
            drop(child.stderr.take());
        }
        child.wait().expect("waiting for prewarm").code()
    };
    let valid = empty.path().join("valid.toml");
    std::fs::write(
        &valid,
        "version = 1\n[[images]]\nref = \"registry.example/app:1\"\n",
    )
    .unwrap();
    assert_eq!(run(&valid, true), Some(0));
    assert_eq!(run(&dir.join("bad-version.toml"), false), Some(2));
}
