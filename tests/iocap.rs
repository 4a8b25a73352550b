//! The IO cap on containerd's cgroup (cgroup v1 blkio on this machine):
//! written for the run, restored after success, after SIGTERM, and at the
//! next start after a kill -9; never written to the root cgroup; and the
//! unpacks paced where the kernel does not hold them to it.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testbed::{Compression::Gzip, FaultProxy, Format};

const BPS: &str = "blkio.throttle.write_bps_device";
const IOPS: &str = "blkio.throttle.write_iops_device";

/// A blkio cgroup holding the test's containerd; containerd goes back to
/// the root cgroup and the directory is removed on drop.
struct Blkio {
    dir: PathBuf,
    pid: u32,
}

impl Blkio {
    fn new(name: &str, pid: u32) -> Blkio {
        let dir = Path::new("/sys/fs/cgroup/blkio").join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        Blkio { dir, pid }
    }

    fn value(&self, file: &str, dev: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap();
        text.lines().find_map(|l| {
            let (d, v) = l.split_once(' ')?;
            (d == dev).then(|| v.parse().unwrap())
        })
    }
}

impl Drop for Blkio {
    fn drop(&mut self) {
        let _ = std::fs::write("/sys/fs/cgroup/blkio/cgroup.procs", self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn spawn_pull(env: &Env, config: &Path) -> Child {
    let root = env.path("root");
    std::fs::create_dir_all(&root).unwrap();
    Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .arg("--config-root")
        .arg(&root)
        .args(["pull", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

struct Setup {
    env: Env,
    cgroup: Blkio,
    dev: String,
    proxy: FaultProxy,
    capped: PathBuf,
    reference: String,
}

/// A containerd of the test's own, in a blkio cgroup of its own, and the
/// disk behind its root (`MAJ:MIN`).
fn env_in_blkio(name: &str) -> (Env, Blkio, String) {
    let env = Env::start();
    let cgroup = Blkio::new(name, env.containerd.pid());
    let dev = prewarm::iocap::disk_of(&env.containerd.root)
        .unwrap()
        .to_string();
    (env, cgroup, dev)
}

fn setup(name: &str) -> Setup {
    let (env, cgroup, dev) = env_in_blkio(name);
    // Someone set an IOPS limit before prewarm ran: it must come back.
    std::fs::write(cgroup.dir.join(IOPS), format!("{dev} 4321")).unwrap();
    let img = push(
        &env.registry.host(),
        "io/cap:1",
        &[linux("amd64", None, layers(700, &[Gzip], 16 << 20))],
        Format::Oci,
        &env.path("images"),
    );
    let proxy = FaultProxy::start(env.registry.addr).unwrap();
    // Slow enough to look at the cap while the pull runs.
    proxy.throttle(Some(2 << 20));
    let reference = img
        .reference
        .replacen(&env.registry.host(), &proxy.host(), 1);
    let capped = env.config(
        &[(&reference, true)],
        "[throttle]\nwrite-bandwidth = \"3MiB/s\"\nwrite-iops = 200\n",
    );
    Setup {
        env,
        cgroup,
        dev,
        proxy,
        capped,
        reference,
    }
}

fn wait_capped(s: &Setup) {
    testbed::poll_until(
        "the cap on containerd's cgroup",
        Duration::from_secs(30),
        || {
            Ok((s.cgroup.value(BPS, &s.dev) == Some(3 << 20)
                && s.cgroup.value(IOPS, &s.dev) == Some(200))
            .then_some(()))
        },
    )
    .unwrap();
}

fn assert_restored(s: &Setup) {
    assert_eq!(
        s.cgroup.value(BPS, &s.dev),
        None,
        "no bandwidth rule was there before"
    );
    assert_eq!(
        s.cgroup.value(IOPS, &s.dev),
        Some(4321),
        "the earlier IOPS rule is back"
    );
    assert!(!s.env.path("iocap-state.json").exists());
}

#[test]
fn cap_is_set_for_the_run_and_restored_after_success() {
    let s = setup("pw-ok");
    let child = spawn_pull(&s.env, &s.capped);
    wait_capped(&s);
    // containerd's writes are accounted in the capped cgroup.
    let out = child.wait_with_output().unwrap();
    assert_eq!(exit_code(&out), 0);
    assert_restored(&s);
    let report = s.env.report();
    let cap = report.io_cap.expect("the report describes the cap");
    assert_eq!((cap.write_bps, cap.write_iops), (Some(3 << 20), Some(200)));
    assert_eq!(cap.device, s.dev);
    assert!(cap
        .note
        .unwrap_or_default()
        .contains("not buffered writeback"));
    let serviced =
        std::fs::read_to_string(s.cgroup.dir.join("blkio.throttle.io_service_bytes")).unwrap();
    assert!(
        serviced
            .lines()
            .any(|l| l.starts_with(&format!("{} Write", s.dev)) && !l.ends_with(" 0")),
        "containerd's writes went through the capped cgroup: {serviced}"
    );
}

#[test]
fn cap_is_restored_after_sigterm() {
    let s = setup("pw-term");
    let child = spawn_pull(&s.env, &s.capped);
    wait_capped(&s);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        exit_code(&out),
        3,
        "the required image is missing after the stop"
    );
    assert_restored(&s);
    let report = s.env.report();
    assert_eq!(report.interrupted.as_deref(), Some("stopped by SIGTERM"));
}

#[test]
fn cap_left_by_kill_9_is_restored_at_the_next_start() {
    let s = setup("pw-kill");
    let mut child = spawn_pull(&s.env, &s.capped);
    wait_capped(&s);
    child.kill().unwrap();
    child.wait().unwrap();
    // Nothing could clean up: the cap is still in force, the state is saved.
    assert_eq!(s.cgroup.value(BPS, &s.dev), Some(3 << 20));
    assert!(s.env.path("iocap-state.json").exists());
    pull_without_a_cap_restores(&s);
}

/// The next run, even one without a cap configured, puts containerd's
/// limits back.
fn pull_without_a_cap_restores(s: &Setup) {
    s.proxy.throttle(None);
    let plain = s.env.config(&[(&s.reference, true)], "");
    let out = s
        .env
        .prewarm(&["pull", "--config", plain.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    assert_restored(s);
}

/// A blkio cgroup for prewarm alone (as prewarm.service gives it), with an
/// IOPS rule of its own set before prewarm runs.
fn own_cgroup(s: &Setup, name: &str) -> Blkio {
    let own = Blkio {
        dir: Path::new("/sys/fs/cgroup/blkio").join(format!("{name}-{}", std::process::id())),
        // Nothing to move back: prewarm has exited by then.
        pid: 0,
    };
    std::fs::create_dir_all(&own.dir).unwrap();
    std::fs::write(own.dir.join(IOPS), format!("{} 777", s.dev)).unwrap();
    own
}

/// `prewarm pull` of the capped config, started in `own`.
fn spawn_pull_in(s: &Setup, own: &Blkio) -> Child {
    let root = s.env.path("root");
    std::fs::create_dir_all(&root).unwrap();
    // The shell moves itself into the cgroup, then becomes prewarm.
    Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(&own.dir)
        .arg(env!("CARGO_BIN_EXE_prewarm"))
        .arg("--config-root")
        .arg(&root)
        .args(["pull", "--config", s.capped.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_own_capped(s: &Setup, own: &Blkio) {
    testbed::poll_until(
        "the cap on prewarm's own cgroup",
        Duration::from_secs(30),
        || {
            Ok(
                (own.value(BPS, &s.dev) == Some(3 << 20) && own.value(IOPS, &s.dev) == Some(200))
                    .then_some(()),
            )
        },
    )
    .unwrap();
}

fn assert_own_restored(s: &Setup, own: &Blkio) {
    assert_eq!(own.value(BPS, &s.dev), None);
    assert_eq!(
        own.value(IOPS, &s.dev),
        Some(777),
        "its earlier rule is back"
    );
    assert!(!s.env.path("iocap-own-state.json").exists());
}

/// prewarm in a cgroup of its own (as under prewarm.service): the layers it
/// unpacks itself are its own writes, so its cgroup gets the cap too for
/// the run, and its earlier limits back after.
#[test]
fn prewarm_s_own_cgroup_is_capped_for_the_layers_it_writes() {
    let s = setup("pw-own-c");
    let own = own_cgroup(&s, "pw-own");
    let child = spawn_pull_in(&s, &own);
    wait_capped(&s);
    wait_own_capped(&s, &own);
    let out = child.wait_with_output().unwrap();
    assert_eq!(exit_code(&out), 0);
    assert_restored(&s);
    assert_own_restored(&s, &own);
    let cap = s.env.report().io_cap.expect("the report describes the cap");
    assert_eq!(cap.own_cgroup, Some(own.dir.display().to_string()));
}

/// kill -9 with the cap on prewarm's own cgroup: both caps stay, with their
/// state files; the next run, from another cgroup and with no cap
/// configured, puts both cgroups' earlier limits back.
#[test]
fn own_cgroup_cap_left_by_kill_9_is_restored_at_the_next_start() {
    let s = setup("pw-own-k");
    let own = own_cgroup(&s, "pw-own-k9");
    let mut child = spawn_pull_in(&s, &own);
    wait_capped(&s);
    wait_own_capped(&s, &own);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(own.value(BPS, &s.dev), Some(3 << 20), "nothing cleaned up");
    assert!(s.env.path("iocap-own-state.json").exists());
    pull_without_a_cap_restores(&s);
    assert_own_restored(&s, &own);
}

/// Pulls three layers that unpack to 8 MiB each but compress to almost
/// nothing, under `write-bandwidth = 4MiB/s`, unpacked by `unpack`: the
/// capped fsync of the downloads costs no time, so only pacing the unpacks
/// can make the pull slow. Returns the report.
fn pull_compressible_layers(env: &Env, name: &str, unpack: &str) -> prewarm::report::Report {
    let specs = (0..3)
        .map(|i| testbed::LayerSpec {
            files: vec![(
                format!("layer{i}/zeros.bin"),
                format!("layer {i}\n").repeat(1 << 20).into_bytes(),
            )],
            compression: Gzip,
            ..Default::default()
        })
        .collect();
    let img = push(
        &env.registry.host(),
        &format!("io/{name}:1"),
        &[linux("amd64", None, specs)],
        Format::Oci,
        &env.path("images"),
    );
    let config = env.config_with(
        &[(&img.reference, true)],
        &format!("retries = 3\nunpack = {unpack:?}"),
        "[throttle]\nwrite-bandwidth = \"4MiB/s\"\n",
    );
    let report = env.pull_ok(&config);
    assert_eq!(report.images[0].unpacked_by, [unpack]);
    report
}

/// The second and third layers wait for the 16 MiB the first two wrote:
/// 4 s at 4 MiB/s, less the bucket's burst of a tenth of a second.
fn assert_paced(report: &prewarm::report::Report) {
    let note = report
        .io_cap
        .as_ref()
        .and_then(|c| c.note.clone())
        .unwrap_or_default();
    assert!(note.contains("paced to write-bandwidth"), "{note}");
    let seconds = report.images[0].seconds;
    assert!(
        seconds >= 3.85,
        "the unpacks were not paced: the image took {seconds:.2} s"
    );
}

#[test]
fn unpacks_are_paced_to_the_cap_on_cgroup_v1() {
    // v1 blkio does not hold buffered writes, so prewarm paces the unpacks:
    // a layer starts only once what the layers before it wrote is within
    // the rate.
    let (env, cgroup, dev) = env_in_blkio("pw-pace");
    let report = pull_compressible_layers(&env, "pace", "containerd");
    assert_eq!(
        cgroup.value(BPS, &dev),
        None,
        "the cap is lifted after the run"
    );
    assert_paced(&report);
}

#[test]
fn root_cgroup_is_never_capped_and_unpacks_are_paced() {
    // A containerd in the root blkio cgroup shares it with every process
    // on the node: prewarm leaves the cgroup alone, says why, and paces.
    let env = Env::start();
    std::fs::write(
        "/sys/fs/cgroup/blkio/cgroup.procs",
        env.containerd.pid().to_string(),
    )
    .unwrap();
    // prewarm's own unpack (the default) writes at the cap itself.
    let report = pull_compressible_layers(&env, "root", "prewarm");
    let cap = report
        .io_cap
        .as_ref()
        .expect("the report has an io-cap entry");
    assert_eq!(cap.cgroup, "", "no cgroup was capped: {cap:?}");
    let note = cap.note.as_deref().unwrap_or_default();
    assert!(
        note.starts_with("not applied") && note.contains(prewarm::iocap::ROOT_CGROUP),
        "{note}"
    );
    assert_paced(&report);
}
