//! Child-process plumbing shared by the daemons.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnReq = (Command, Sender<std::io::Result<Child>>);

/// Daemons are spawned from one thread that lives as long as the process, so
/// `PR_SET_PDEATHSIG` (which fires when the *spawning thread* exits) means
/// "the test process died": then the daemon gets SIGTERM instead of leaking.
fn spawner() -> &'static Mutex<Sender<SpawnReq>> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnReq>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<SpawnReq>();
        std::thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: only calls prctl(2), which is async-signal-safe.
                    unsafe {
                        cmd.pre_exec(|| {
                            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
                                .map_err(std::io::Error::from)
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the testbed-spawner thread");
        Mutex::new(tx)
    })
}

/// A running daemon whose stdout and stderr go to `log`.
pub(crate) struct Daemon {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    pid: u32,
}

impl Daemon {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Daemon> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().context("dup log fd")?)
            .stderr(f);
        let (tx, rx) = channel();
        spawner()
            .lock()
            .map_err(|_| anyhow::anyhow!("spawner lock poisoned"))?
            .send((cmd, tx))
            .context("spawner thread gone")?;
        let child = rx
            .recv()
            .context("spawner thread gone")?
            .with_context(|| format!("spawning {name}"))?;
        Ok(Daemon {
            name: name.to_string(),
            log: log.to_path_buf(),
            pid: child.id(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the process has already exited (callers add the log tail).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                bail!("{} exited early ({st})", self.name);
            }
        }
        Ok(())
    }

    /// The last 40 lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(None) = c.try_wait() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a file, or a note why it could not be read.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => {
            let s = String::from_utf8_lossy(&b);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs a command to completion; returns stdout, or an error with stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("non-UTF-8 output from {cmd:?}"))
}
