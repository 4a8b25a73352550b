//! The command line. Doc comments are the help text.

use crate::config::Overrides;
use clap::{Parser, Subcommand};
use std::num::NonZeroU32;
use std::path::PathBuf;

/// Pre-pull container images into containerd before kubelet joins.
#[derive(Debug, Parser)]
#[command(name = "prewarm", version, max_term_width = 80)]
pub struct Cli {
    /// Extra config fragment, read after the config.d directories
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Root under which usr/lib, run and etc prewarm/config.d are read
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub config_root: PathBuf,

    /// containerd socket (overrides [containerd] socket)
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Where to write the JSON report (overrides [pull] report; for
    /// refresh, [refresh] report)
    #[arg(long, global = true, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Prometheus text file for node_exporter's textfile collector; "" for
    /// none (overrides [pull] metrics-file)
    #[arg(long, global = true, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    /// Bandwidth cap such as 50MiB/s (overrides [throttle] bandwidth)
    #[arg(long, global = true, value_name = "RATE")]
    pub bandwidth: Option<String>,

    /// Images pulled side by side (overrides [pull] concurrency)
    #[arg(long, global = true, value_name = "N")]
    pub concurrency: Option<NonZeroU32>,

    /// Add a required image to the list; may be repeated
    #[arg(long = "image", global = true, value_name = "REF")]
    pub images: Vec<String>,

    /// Node name for register/untaint (overrides [handoff] node-name)
    #[arg(long, global = true, value_name = "NAME")]
    pub node_name: Option<String>,

    /// More logging (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// How `plan` and `status` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull the listed images into containerd and write the report
    Pull,
    /// Show what pull would do, in order, with sizes; writes nothing
    Plan {
        /// text (a table) or json
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show each listed image as kubelet sees it (CRI), by tag and digest
    Status {
        /// text (a table) or json
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Validate the configuration and exit
    CheckConfig,
    /// Make kubelet register the Node with the startup taint
    Register,
    /// `register`, then `pull`: what prewarm.service runs before kubelet
    Boot,
    /// Remove the startup taint, or set the readiness condition
    Untaint,
    /// One pass over the current list on a serving node ([refresh]): pull
    /// what is missing, within kubelet's GC and eviction thresholds; never
    /// touches the taint
    Refresh,
    /// Remove preloaded images no longer listed and not in use (dry run
    /// unless --apply)
    Gc {
        /// Delete them, rather than only show what would go
        #[arg(long)]
        apply: bool,
    },
}

impl Cli {
    /// The flags that override configuration keys.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            socket: self.socket.clone(),
            // A refresh's report is its own: [pull] report (beside which
            // every run takes the run lock) stays the boot pass's.
            report: self
                .report
                .clone()
                .filter(|_| !matches!(self.command, Command::Refresh)),
            refresh_report: self
                .report
                .clone()
                .filter(|_| matches!(self.command, Command::Refresh)),
            metrics_file: self.metrics_file.clone(),
            bandwidth: self.bandwidth.clone(),
            concurrency: self.concurrency,
            images: self.images.clone(),
            node_name: self.node_name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
