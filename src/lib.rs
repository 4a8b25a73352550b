//! prewarm: pre-pull container images straight into containerd before
//! kubelet joins, so pods land only on nodes whose image cache is warm.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: every required image is present (by tag and by digest) |
//! | 1 | unexpected failure |
//! | 2 | usage or configuration error, in prewarm's configuration or in the node's registry files (`hosts.toml`, the CA files it names, docker `config.json`); nothing was contacted or written |
//! | 3 | a required image is not present after the run |
//! | 4 | containerd or its CRI service could not be reached |
//! | 5 | `untaint`: the Kubernetes API refused or never answered, so the outcome could not be written to the Node (401/403), or it or the Node was not there by the deadline plus `give-up-after` |
//! | 6 | an image list source (`[[sources]]`) could not be read and had no cached copy: a `required` one for `pull` and `plan` (which still pull and show the rest), any one for `gc` (which then removes nothing) |
//!
//! `register` exits 2, writing no taint, when any part of the configuration
//! (including `[handoff]`) is invalid, when direct mode's credential does
//! not load, or when it cannot tell how the node joins. `untaint` exits 0
//! once the outcome is on the Node, including when `on-deadline = "keep"`
//! kept the taint (the annotation says why).
//!
//! # Node lifecycle
//!
//! `register` (before kubelet) makes the Node register with the startup
//! taint and writes the start stamp the deadline counts from; `untaint`
//! (after kubelet registered) removes the taint or sets the readiness
//! condition. See [`node`] for the flavours, the detection order and the
//! deadline policy.

pub mod archive;
pub mod atomic;
pub mod cli;
mod cmd;
pub mod config;
pub mod containerd;
pub mod cri;
pub mod digest;
pub mod disk;
pub mod estimate;
pub mod extract;
pub mod failpoint;
pub mod gc;
pub mod iocap;
pub mod labels;
pub mod manifest;
pub mod metrics;
pub mod node;
pub mod plan;
pub mod preload;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod report;
pub mod retry;
pub mod sources;
pub mod systemd;
pub mod taint;
pub mod throttle;
pub mod time;
pub mod unpack;
pub mod warnings;

use cli::Cli;
pub use cmd::run;
use config::{ConfigError, Settings};
pub use preload::iocap_state_path;

/// mimalloc's `mi_option_purge_delay`: the 16th in `mi_option_e`, in the
/// mimalloc.h (v3) that libmimalloc-sys builds by default. `main` sets it.
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// An error with its causes, `a: b: c`, each cause once, for reports and
/// log lines.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

/// Documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    Config = 2,
    RequiredMissing = 3,
    Unreachable = 4,
    KubeApi = 5,
    ListUnavailable = 6,
}

/// Maps an error to its exit code: the first cause in the chain that has
/// one decides; an error none of them explains is a failure (1).
pub fn exit_for(e: &anyhow::Error) -> Exit {
    e.chain().find_map(exit_of).unwrap_or(Exit::Failure)
}

/// The exit code one cause stands for, if it stands for one.
fn exit_of(cause: &(dyn std::error::Error + 'static)) -> Option<Exit> {
    use containerd::ContainerdError;
    use node::{api::ApiError, register::RegisterError, untaint::UntaintError};
    use registry::RegistryError;
    if cause.is::<ConfigError>() {
        return Some(Exit::Config);
    }
    if let Some(r) = cause.downcast_ref::<RegistryError>() {
        // The node's hosts.toml, CA files and config.json are configuration.
        return match r {
            RegistryError::HostsConfig { .. } | RegistryError::AuthFile { .. } => {
                Some(Exit::Config)
            }
            _ => None,
        };
    }
    if let Some(c) = cause.downcast_ref::<ContainerdError>() {
        // Only a failed connect: containerd answers `Unavailable` for an
        // ingest ref another writer holds, too.
        return matches!(c, ContainerdError::Connect { .. }).then_some(Exit::Unreachable);
    }
    if let Some(c) = cause.downcast_ref::<cri::CriError>() {
        // Only a CRI that is not there: an answer we did not like is a
        // failure like any other.
        return match c {
            cri::CriError::Call { status, .. } if unreachable(status) => Some(Exit::Unreachable),
            _ => None,
        };
    }
    if let Some(r) = cause.downcast_ref::<RegisterError>() {
        return matches!(r, RegisterError::Undetected { .. }).then_some(Exit::Config);
    }
    if let Some(a) = cause.downcast_ref::<ApiError>() {
        return Some(match a {
            ApiError::Kubeconfig { .. } => Exit::Config,
            _ => Exit::KubeApi,
        });
    }
    if let Some(u) = cause.downcast_ref::<UntaintError>() {
        return match u {
            UntaintError::Api(_) | UntaintError::NeverAppeared { .. } => Some(Exit::KubeApi),
            UntaintError::Clock(_) => None,
        };
    }
    if cause.is::<sources::Incomplete>() {
        return Some(Exit::ListUnavailable);
    }
    // Only check-config lets a list's error through: a bad local list.
    if cause.is::<sources::SourceError>() {
        return Some(Exit::Config);
    }
    None
}

/// A gRPC status that means the service is not there to answer: down,
/// not listening, or without the API we call.
fn unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unimplemented
    )
}

/// Loads and validates the configuration the command line points at.
pub fn load_settings(cli: &Cli) -> Result<Settings, ConfigError> {
    let paths = config::fragment_paths(&cli.config_root, cli.config.as_deref())?;
    config::load(&paths, &cli.overrides())
}

/// Sets up logging: stderr without timestamps (journald adds them), plus
/// journald with structured fields when its socket exists. Never fails
/// because journald is absent or refuses the connection.
///
/// Under a unit with `StandardError=journal` or `journal+console`, stderr
/// already reaches the journal (`$JOURNAL_STREAM` names it), so the native
/// journald layer is left out: each line appears once, and `+console` still
/// gets it. Run by hand or from cloud-init's runcmd, prewarm logs both to
/// stderr and to the journal.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::prelude::*;
    // -v and -vv raise prewarm's own level, not that of every library.
    // kube's client logs an ERROR of its own for every request the retry
    // loop repeats; prewarm logs the retry and the final error itself.
    let default = match verbose {
        0 => "info,kube_client=off",
        1 => "info,kube_client=off,prewarm=debug",
        _ => "info,kube_client=off,prewarm=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PREWARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // No timestamps (journald adds them), except seconds since start at -vv,
    // for reading a run's timeline.
    let (plain, timed) = if verbose >= 2 {
        let layer = tracing_subscriber::fmt::layer()
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        (None, Some(layer))
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .without_time()
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        (Some(layer), None)
    };
    let journald = if std::path::Path::new("/run/systemd/journal/socket").exists()
        && !systemd::stderr_is_journal()
    {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(timed)
        .with(journald)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option `main` sets is mimalloc's purge delay: the one whose
    /// default is 1000 (ms, in v3's options.c), and which takes the value
    /// set.
    #[test]
    fn the_allocator_option_is_the_purge_delay() {
        // SAFETY: reads and sets one of mimalloc's options.
        unsafe {
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 50);
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 50);
        }
    }
    use std::path::PathBuf;

    fn status(code: tonic::Code) -> tonic::Status {
        tonic::Status::new(code, "x")
    }

    /// Every documented code an error can give, and the errors that must
    /// not give one. Codes 0 and 3 come from a run's outcome, not an error.
    #[test]
    fn exit_codes_follow_the_contract() {
        let config = ConfigError::Invalid {
            path: "/etc/prewarm/config.d/40-local.toml".into(),
            key: "pull.deadline".into(),
            message: "m".into(),
        };
        let hosts = registry::RegistryError::HostsConfig {
            path: "/etc/containerd/certs.d/r/hosts.toml".into(),
            key: "ca".into(),
            message: "m".into(),
        };
        let auth = registry::RegistryError::AuthFile {
            path: "/root/.docker/config.json".into(),
            message: "m".into(),
        };
        let registry_down = registry::RegistryError::NoHosts {
            image: "r/a:1".into(),
            domain: "r".into(),
            capability: "pull",
        };
        let connect = containerd::ContainerdError::Connect {
            socket: PathBuf::from("/run/x.sock"),
            message: "m".into(),
        };
        let locked = containerd::ContainerdError::Call {
            op: "Write",
            subject: "layer-sha256:1".into(),
            status: status(tonic::Code::Unavailable),
        };
        let cri = |code| cri::CriError::Call {
            op: "ImageStatus",
            subject: "r/a:1".into(),
            status: status(code),
        };
        let undetected = node::register::RegisterError::Undetected {
            checked: "c".into(),
        };
        let kubeconfig = node::api::ApiError::Kubeconfig {
            path: "/etc/kubernetes/kubelet.conf".into(),
            message: "m".into(),
        };
        let forbidden = node::api::ApiError::Status {
            node: "n".into(),
            op: "patch",
            principal: "p".into(),
            code: 403,
            reason: "Forbidden".into(),
            message: "m".into(),
        };
        let never = node::untaint::UntaintError::NeverAppeared {
            node: "n".into(),
            waited: std::time::Duration::from_secs(1),
        };
        let clock = node::untaint::UntaintError::Clock(std::io::Error::other("x"));
        let incomplete = sources::Incomplete {
            failed: "team".into(),
        };
        let bad_list = sources::SourceError::Read {
            list: "l".into(),
            message: "m".into(),
        };

        let cases: Vec<(anyhow::Error, Exit)> = vec![
            (anyhow::anyhow!("something else"), Exit::Failure),
            (config.into(), Exit::Config),
            (hosts.into(), Exit::Config),
            (auth.into(), Exit::Config),
            (registry_down.into(), Exit::Failure),
            (undetected.into(), Exit::Config),
            (kubeconfig.into(), Exit::Config),
            (bad_list.into(), Exit::Config),
            (connect.into(), Exit::Unreachable),
            (locked.into(), Exit::Failure),
            (cri(tonic::Code::Unavailable).into(), Exit::Unreachable),
            (cri(tonic::Code::Unimplemented).into(), Exit::Unreachable),
            (cri(tonic::Code::NotFound).into(), Exit::Failure),
            (forbidden.into(), Exit::KubeApi),
            (never.into(), Exit::KubeApi),
            (clock.into(), Exit::Failure),
            (incomplete.into(), Exit::ListUnavailable),
        ];
        for (e, want) in cases {
            let shown = error_chain(e.as_ref());
            assert_eq!(exit_for(&e), want, "{shown}");
            // The code does not depend on context wrapped around the cause.
            let wrapped = e.context("pulling r/a:1");
            assert_eq!(exit_for(&wrapped), want, "{shown}");
        }
        let numbers = [
            Exit::Ok,
            Exit::Failure,
            Exit::Config,
            Exit::RequiredMissing,
            Exit::Unreachable,
            Exit::KubeApi,
            Exit::ListUnavailable,
        ]
        .map(|e| e as i32);
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn error_chain_names_each_cause_once() {
        let e = ConfigError::Read {
            path: "/etc/prewarm/config.d/x.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let e = anyhow::Error::from(e).context("loading the configuration");
        assert_eq!(
            error_chain(e.as_ref()),
            "loading the configuration: reading /etc/prewarm/config.d/x.toml: entity not found"
        );
    }
}
