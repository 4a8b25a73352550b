//! A run's progress, as one line: logged (stderr, so journald under
//! systemd) and sent as systemd's `STATUS=` at `[pull] progress-interval`;
//! on an interactive terminal, a bar instead ([`Bar`]).

use std::fmt;
use std::time::Duration;

const MIB: f64 = 1024.0 * 1024.0;

/// Where a run stands at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Bytes downloaded so far.
    pub done: u64,
    /// Bytes the plan downloads: the blobs not already in the store.
    pub total: u64,
    /// Bytes per second since the previous line.
    pub rate: f64,
    pub images_done: usize,
    pub images_total: usize,
    /// The images being pulled now.
    pub in_flight: Vec<String>,
}

impl Progress {
    /// Bytes done as a share of the total, which only grows: 100 only once
    /// every image is done (a retried blob can count twice).
    pub fn percent(&self) -> u64 {
        if self.images_done >= self.images_total {
            return 100;
        }
        match self.total {
            0 => 0,
            t => (self.done.saturating_mul(100) / t).min(99),
        }
    }

    /// At the current rate, what is left of the download.
    pub fn eta(&self) -> Option<Duration> {
        let left = self.total.saturating_sub(self.done) as f64;
        (self.rate > 0.0).then(|| Duration::from_secs_f64((left / self.rate).min(1e7)))
    }
}

impl fmt::Display for Progress {
    /// `progress 37% 312/840 MiB 48.1 MiB/s eta 11s images 2/5 (pulling a:1)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "progress {}% {:.0}/{:.0} MiB {:.1} MiB/s eta {} images {}/{}",
            self.percent(),
            self.done as f64 / MIB,
            self.total as f64 / MIB,
            self.rate / MIB,
            self.eta().map_or("-".to_string(), |d| format!(
                "{:.0}s",
                d.as_secs_f64().ceil()
            )),
            self.images_done,
            self.images_total,
        )?;
        if !self.in_flight.is_empty() {
            write!(f, " (pulling {})", self.in_flight.join(", "))?;
        }
        Ok(())
    }
}

/// How often the bar is redrawn on a terminal.
pub const BAR_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The progress bar `prewarm pull` draws when stderr is a terminal, in
/// place of the progress lines.
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    /// A bar, when stderr is an interactive terminal.
    pub fn on_terminal() -> Option<Bar> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .ok()?
        .progress_chars("=> ");
        bar.set_style(style);
        Some(Bar(bar))
    }

    pub fn show(&self, p: &Progress) {
        self.0.set_length(p.total.max(p.done));
        self.0.set_position(p.done);
        let pulling = if p.in_flight.is_empty() {
            String::new()
        } else {
            format!(" (pulling {})", p.in_flight.join(", "))
        };
        self.0.set_message(format!(
            "images {}/{}{pulling}",
            p.images_done, p.images_total
        ));
    }

    pub fn finish(&self) {
        self.0.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(done: u64, images_done: usize) -> Progress {
        Progress {
            done,
            total: 840 << 20,
            rate: 48.1 * MIB,
            images_done,
            images_total: 5,
            in_flight: vec!["model:1.2".into()],
        }
    }

    #[test]
    fn the_line() {
        assert_eq!(
            at(312 << 20, 2).to_string(),
            "progress 37% 312/840 MiB 48.1 MiB/s eta 11s images 2/5 (pulling model:1.2)"
        );
        // Counted twice (a retry) is still not done.
        assert_eq!(at(900 << 20, 4).percent(), 99);
        assert_eq!(at(900 << 20, 5).percent(), 100);
        let idle = Progress {
            rate: 0.0,
            in_flight: Vec::new(),
            ..at(0, 0)
        };
        assert_eq!(
            idle.to_string(),
            "progress 0% 0/840 MiB 0.0 MiB/s eta - images 0/5"
        );
    }
}
