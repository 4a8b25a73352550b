//! The files under packaging/ against each other and against the code:
//! the .deb and .rpm asset lists in Cargo.toml name the same files, every
//! installable file under packaging/ is in them, the default config fragment
//! equals the built-in defaults, and the unit timeouts cover the default pull
//! deadline. scripts/check-packaging.sh checks the built packages themselves.

use prewarm::config::{load_str, Overrides, Settings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn metadata() -> toml::Table {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    manifest["package"]["metadata"]
        .as_table()
        .expect("[package.metadata]")
        .clone()
}

/// One installed file: destination (absolute) → (source, mode, config, doc).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Asset {
    source: String,
    mode: String,
    config: bool,
}

/// Destinations that only one format has, and why.
const DEB_ONLY: &[&str] = &[
    // lintian reads overrides from here; rpmlint's filters are a build-time
    // file (packaging/rpm/rpmlint.toml).
    "/usr/share/lintian/overrides/prewarm",
];

fn deb_assets() -> BTreeMap<String, Asset> {
    let deb = metadata()["deb"]
        .as_table()
        .expect("[package.metadata.deb]")
        .clone();
    let conf: Vec<String> = deb["conf-files"]
        .as_array()
        .expect("conf-files")
        .iter()
        .map(|v| v.as_str().expect("conf-files are strings").to_string())
        .collect();
    let mut out = BTreeMap::new();
    for a in deb["assets"].as_array().expect("deb assets") {
        let a = a.as_array().expect("deb asset is [source, dest, mode]");
        let s = |i: usize| a[i].as_str().expect("string").to_string();
        let dest = format!("/{}", s(1));
        assert!(
            !dest.ends_with('/'),
            "{dest}: name the file, not the directory"
        );
        // cargo-deb marks everything under /etc as a conffile.
        let config = conf.contains(&dest) || dest.starts_with("/etc/");
        let prev = out.insert(
            dest.clone(),
            Asset {
                source: s(0),
                mode: s(2),
                config,
            },
        );
        assert!(prev.is_none(), "{dest} twice in the deb assets");
    }
    for c in &conf {
        assert!(out.contains_key(c), "conf-file {c} is not an asset");
    }
    out
}

fn rpm_assets() -> BTreeMap<String, Asset> {
    let rpm = metadata()["generate-rpm"]
        .as_table()
        .expect("[package.metadata.generate-rpm]")
        .clone();
    let mut out = BTreeMap::new();
    for a in rpm["assets"].as_array().expect("rpm assets") {
        let t = a.as_table().expect("rpm asset is a table");
        let s = |k: &str| t[k].as_str().expect("string").to_string();
        let config = match t.get("config") {
            None => false,
            Some(toml::Value::String(v)) => {
                assert_eq!(v, "noreplace", "config files keep local edits");
                true
            }
            Some(other) => panic!("{}: config = {other}: use \"noreplace\"", s("dest")),
        };
        let dest = s("dest");
        let prev = out.insert(
            dest.clone(),
            Asset {
                source: s("source"),
                mode: s("mode"),
                config,
            },
        );
        assert!(prev.is_none(), "{dest} twice in the rpm assets");
    }
    out
}

#[test]
fn deb_and_rpm_ship_the_same_files() {
    let mut deb = deb_assets();
    let rpm = rpm_assets();
    for d in DEB_ONLY {
        assert!(deb.remove(*d).is_some(), "{d} is no longer a deb asset");
    }
    let only_deb: Vec<_> = deb.keys().filter(|k| !rpm.contains_key(*k)).collect();
    let only_rpm: Vec<_> = rpm.keys().filter(|k| !deb.contains_key(*k)).collect();
    assert!(
        only_deb.is_empty() && only_rpm.is_empty(),
        "only in the deb: {only_deb:?}; only in the rpm: {only_rpm:?}"
    );
    for (dest, d) in &deb {
        assert_eq!(d, &rpm[dest], "{dest}: deb and rpm differ");
    }
    // Config files are exactly those under /etc.
    for (dest, a) in &deb {
        assert_eq!(a.config, dest.starts_with("/etc/"), "{dest}: config flag");
    }
}

#[test]
fn every_installable_file_is_an_asset_and_exists() {
    let deb = deb_assets();
    let sources: Vec<&str> = deb.values().map(|a| a.source.as_str()).collect();
    // Everything in these directories is installed somewhere.
    for dir in [
        "packaging/systemd",
        "packaging/tmpfiles.d",
        "packaging/config.d",
        "packaging/etc/config.d",
        "packaging/preset",
        "packaging/examples",
    ] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let name = e.unwrap().file_name();
            let rel = format!("{dir}/{}", name.to_string_lossy());
            assert!(sources.contains(&rel.as_str()), "{rel} is not an asset");
        }
    }
    for s in sources {
        // Built by scripts/build-release.sh and scripts/build-packages.sh.
        if s.starts_with("target/") {
            continue;
        }
        assert!(repo().join(s).is_file(), "asset source {s} is missing");
    }
}

fn images_fragment() -> (PathBuf, String) {
    (
        "/etc/prewarm/config.d/50-site.toml".into(),
        "version = 1\n[[images]]\nref = \"registry.example.internal/a:1\"\n".into(),
    )
}

fn settings_debug(mut s: Settings) -> String {
    s.sources.clear();
    format!("{s:?}")
}

#[test]
fn default_fragment_equals_the_built_in_defaults() {
    let defaults = (
        PathBuf::from("/usr/lib/prewarm/config.d/00-defaults.toml"),
        read("packaging/config.d/00-defaults.toml"),
    );
    let with = load_str(&[defaults, images_fragment()], &Overrides::default())
        .expect("00-defaults.toml loads");
    let without =
        load_str(&[images_fragment()], &Overrides::default()).expect("built-in defaults load");
    assert_eq!(settings_debug(with), settings_debug(without));
    // The local conffile only says `version = 1`.
    let local = (
        PathBuf::from("/etc/prewarm/config.d/40-local.toml"),
        read("packaging/etc/config.d/40-local.toml"),
    );
    let with_local =
        load_str(&[local, images_fragment()], &Overrides::default()).expect("40-local.toml loads");
    let without =
        load_str(&[images_fragment()], &Overrides::default()).expect("built-in defaults load");
    assert_eq!(settings_debug(with_local), settings_debug(without));
}

/// Parses the systemd time spans the units use: `25min`, `15s`, `1h`.
fn systemd_span(v: &str) -> Duration {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: u64 = v[..split]
        .parse()
        .unwrap_or_else(|_| panic!("time span {v:?}"));
    match &v[split..] {
        "" | "s" | "sec" => Duration::from_secs(n),
        "min" | "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        u => panic!("unit {u:?} in {v:?}"),
    }
}

fn unit_key(path: &str, key: &str) -> Duration {
    let text = read(path);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{path} has no {key}="));
    systemd_span(v.trim())
}

#[test]
fn unit_timeouts_cover_the_pull_deadline() {
    let slack = Duration::from_secs(5 * 60);
    let s = load_str(&[images_fragment()], &Overrides::default()).unwrap();
    let deadline = s.pull.deadline;
    let start = unit_key("packaging/systemd/prewarm.service", "TimeoutStartSec");
    assert!(
        start >= deadline + slack,
        "prewarm.service TimeoutStartSec={start:?} < [pull] deadline {deadline:?} + {slack:?}"
    );
    let runtime = unit_key("packaging/examples/alongside.conf", "RuntimeMaxSec");
    assert!(
        runtime >= deadline + slack,
        "alongside.conf RuntimeMaxSec={runtime:?} < [pull] deadline {deadline:?} + {slack:?}"
    );
    // untaint: one run outlasts the handoff timeline, and the exit codes a
    // retry would only repeat are final.
    let p = "packaging/systemd/prewarm-untaint.service";
    let each = unit_key(p, "RuntimeMaxSec");
    let timeline = s.handoff.deadline + s.handoff.give_up_after + slack;
    assert!(
        each >= timeline,
        "{p}: RuntimeMaxSec={each:?} < [handoff] deadline + give-up-after + {slack:?} = {timeline:?}"
    );
    let text = read(p);
    // It waits for the Node in the background: a oneshot would hold up
    // multi-user.target, and with it cloud-init's runcmd, where `kubeadm
    // join` starts kubelet.
    assert!(
        text.lines().any(|l| l == "Type=simple"),
        "{p} must be Type=simple"
    );
    let prevent: Vec<&str> = text
        .lines()
        .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .expect("RestartPreventExitStatus=")
        .split_whitespace()
        .collect();
    for code in [prewarm::Exit::Config as i32, prewarm::Exit::KubeApi as i32] {
        assert!(
            prevent.contains(&code.to_string().as_str()),
            "{p}: exit {code} is final, add it to RestartPreventExitStatus"
        );
    }
    assert!(
        text.contains("\nRestart=on-failure\n"),
        "{p}: Restart=on-failure"
    );
}

/// The refresh: a guest beside pods (lower CPU and IO priority), a run
/// that covers its deadline, after the boot pass; the timer spreads a
/// fleet over time, and the preset enables it (the service does nothing
/// until `[refresh] enabled = true`, which is off by default).
#[test]
fn the_refresh_units_are_a_guest_s_and_off_until_configured() {
    let p = "packaging/systemd/prewarm-refresh.service";
    let text = read(p);
    for line in [
        "Type=oneshot",
        "Nice=10",
        "IOSchedulingClass=idle",
        "CPUSchedulingPolicy=batch",
    ] {
        assert!(text.lines().any(|l| l == line), "{p}: {line}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("After=") && l.contains("prewarm.service")),
        "{p}: after the boot pass"
    );
    let s = load_str(&[images_fragment()], &Overrides::default()).unwrap();
    assert!(!s.refresh.enabled, "off by default");
    let deadline = s.refresh.deadline.unwrap_or(s.pull.deadline);
    assert!(unit_key(p, "TimeoutStartSec") >= deadline + Duration::from_secs(300));
    let t = "packaging/systemd/prewarm-refresh.timer";
    assert!(unit_key(t, "RandomizedDelaySec") >= Duration::from_secs(60));
    assert!(read(t).contains("WantedBy=timers.target"));
    assert!(read("packaging/preset/80-prewarm.preset")
        .lines()
        .any(|l| l == "enable prewarm-refresh.timer"));
}

#[test]
fn debian_changelog_is_for_this_version() {
    let changelog = read("packaging/debian/changelog");
    let first = changelog.lines().next().unwrap_or_default();
    let want = format!("prewarm ({}-1) ", env!("CARGO_PKG_VERSION"));
    assert!(
        first.starts_with(&want),
        "packaging/debian/changelog starts {first:?}, want {want:?}…"
    );
}

#[test]
fn units_run_the_packaged_binary() {
    let bin = deb_assets()
        .into_iter()
        .find(|(_, a)| a.source == "target/release/prewarm")
        .map(|(d, _)| d)
        .expect("the binary is an asset");
    for (unit, cmd) in [
        ("packaging/systemd/prewarm.service", "boot"),
        ("packaging/systemd/prewarm-untaint.service", "untaint"),
        ("packaging/systemd/prewarm-refresh.service", "refresh"),
    ] {
        let text = read(unit);
        let exec: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart="))
            .collect();
        assert_eq!(exec, [format!("{bin} {cmd}")], "{unit}");
    }
    assert!(Path::new(&bin).is_absolute());
}
