//! The Prometheus text file for node_exporter's textfile collector, the
//! convention for a boot-time oneshot: `[pull] metrics-file` (or
//! `--metrics-file`), written whole and atomically, so the collector never
//! reads half a file. `pull` writes its progress at the progress interval
//! and the run at the end; `untaint` writes the run again with the
//! handoff, whose seconds since the start stamp are the node's time to
//! schedulable. A missing directory (no node_exporter) skips the file,
//! with a note.

use crate::node::untaint::Record;
use crate::report::{ImageStatus, Report};
use std::fmt::Write as _;
use std::path::Path;

/// What one metric is, for its HELP and TYPE lines.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: &'a str,
}

/// Text in the exposition format, one family at a time.
#[derive(Default)]
struct Text(String);

impl Text {
    /// A family with its samples: (labels, value).
    fn family(&mut self, f: Family<'_>, samples: &[Sample<'_>]) {
        let _ = writeln!(self.0, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(self.0, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in samples {
            self.0.push_str(f.name);
            if !labels.is_empty() {
                let inner: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(self.0, "{{{}}}", inner.join(","));
            }
            let _ = writeln!(self.0, " {}", number(*value));
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(
            Family {
                name,
                help,
                kind: "gauge",
            },
            &[(Vec::new(), value)],
        );
    }
}

/// One sample: its labels and value.
type Sample<'a> = (Vec<(&'a str, &'a str)>, f64);

/// A label value, escaped as the format wants.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

const STATUSES: [ImageStatus; 4] = [
    ImageStatus::Pulled,
    ImageStatus::Present,
    ImageStatus::Skipped,
    ImageStatus::Failed,
];

fn status_name(s: ImageStatus) -> &'static str {
    match s {
        ImageStatus::Pulled => "pulled",
        ImageStatus::Present => "present",
        ImageStatus::Skipped => "skipped",
        ImageStatus::Failed => "failed",
    }
}

/// Where a running pull stands.
pub struct Running {
    pub bytes: u64,
    pub planned_bytes: u64,
    pub images: usize,
    pub planned_images: usize,
}

/// A run in progress.
pub fn render_progress(p: &Running) -> String {
    let mut t = Text::default();
    t.gauge(
        "prewarm_pull_running",
        "1 while a pull runs; the run's own metrics follow when it ends.",
        1.0,
    );
    t.gauge(
        "prewarm_pull_progress_bytes",
        "Bytes downloaded so far in the running pull.",
        p.bytes as f64,
    );
    t.gauge(
        "prewarm_pull_planned_bytes",
        "Bytes the running pull plans to download.",
        p.planned_bytes as f64,
    );
    t.gauge(
        "prewarm_pull_progress_images",
        "Images done so far in the running pull.",
        p.images as f64,
    );
    t.gauge(
        "prewarm_pull_planned_images",
        "Images the running pull has to do.",
        p.planned_images as f64,
    );
    t.0
}

/// A finished run (when its report could be read), and the handoff once
/// untaint has run.
pub fn render(report: Option<&Report>, handoff: Option<&Record>) -> String {
    let mut t = Text::default();
    t.gauge(
        "prewarm_pull_running",
        "1 while a pull runs; the run's own metrics follow when it ends.",
        0.0,
    );
    if let Some(report) = report {
        run(&mut t, report);
    }
    if let Some(h) = handoff {
        t.gauge(
            "prewarm_handoff_seconds",
            "Seconds from the start stamp to the handoff: the node's time to schedulable.",
            h.seconds,
        );
        t.family(
            Family {
                name: "prewarm_handoff_result",
                help: "How the node was handed over (result ready or degraded, and the action): 1.",
                kind: "gauge",
            },
            &[(
                vec![("result", h.result), ("action", h.action.as_str())],
                1.0,
            )],
        );
    }
    t.0
}

/// The run's families.
fn run(t: &mut Text, report: &Report) {
    let per_image = |value: &dyn Fn(&crate::report::ImageReport) -> f64| -> Vec<Sample<'_>> {
        report
            .images
            .iter()
            .map(|i| {
                let labels = vec![
                    ("ref", i.reference.as_str()),
                    ("status", status_name(i.status)),
                ];
                (labels, value(i))
            })
            .collect()
    };
    for (name, help, rows) in [
        (
            "prewarm_image_downloaded_bytes",
            "Bytes of the image downloaded in the last pull.",
            per_image(&|i| i.bytes as f64),
        ),
        (
            "prewarm_image_seconds",
            "Seconds the last pull spent on the image.",
            per_image(&|i| i.seconds),
        ),
        (
            "prewarm_image_status",
            "The image's status after the last pull (pulled, present, skipped, failed): 1.",
            per_image(&|_| 1.0),
        ),
    ] {
        t.family(
            Family {
                name,
                help,
                kind: "gauge",
            },
            &rows,
        );
    }
    let s = &report.summary;
    t.gauge(
        "prewarm_pull_downloaded_bytes",
        "Bytes the last pull downloaded.",
        s.bytes as f64,
    );
    t.gauge(
        "prewarm_pull_seconds",
        "Seconds the last pull took.",
        s.seconds,
    );
    let by_status: Vec<Sample<'_>> = STATUSES
        .iter()
        .map(|st| {
            let n = report.images.iter().filter(|i| i.status == *st).count();
            (vec![("status", status_name(*st))], n as f64)
        })
        .collect();
    t.family(
        Family {
            name: "prewarm_pull_images",
            help: "Listed images by status after the last pull.",
            kind: "gauge",
        },
        &by_status,
    );
    t.gauge(
        "prewarm_pull_required_missing",
        "Required images missing after the last pull.",
        s.required_missing as f64,
    );
    t.gauge(
        "prewarm_pull_interrupted",
        "1 when the last pull was cut short (deadline, signal).",
        if report.interrupted.is_some() {
            1.0
        } else {
            0.0
        },
    );
    if let Some(d) = &report.disk {
        t.gauge(
            "prewarm_disk_free_before_bytes",
            "Free bytes on the image filesystem when the last pull started.",
            d.free_before as f64,
        );
        t.gauge(
            "prewarm_disk_free_after_bytes",
            "Free bytes on the image filesystem when the last pull ended.",
            d.free_after as f64,
        );
    }
    if let Some(cap) = &report.io_cap {
        t.gauge(
            "prewarm_io_cap_applied",
            "1 when the write cap was put on containerd's cgroup for the last pull.",
            if cap.cgroup.is_empty() { 0.0 } else { 1.0 },
        );
        if let Some(bps) = cap.write_bps {
            t.gauge(
                "prewarm_io_cap_write_bytes_per_second",
                "The write-bandwidth cap of the last pull.",
                bps as f64,
            );
        }
        if let Some(iops) = cap.write_iops {
            t.gauge(
                "prewarm_io_cap_write_iops",
                "The write-iops cap of the last pull.",
                iops as f64,
            );
        }
    }
}

/// Writes `text` to `path` atomically. A directory that does not exist
/// (no node_exporter on this node) skips it, with a note once.
pub fn write(path: &Path, text: &str) {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !NOTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(
                path = %path.display(),
                "no metrics file: its directory does not exist (no node_exporter textfile collector)"
            );
        }
        return;
    }
    if let Err(e) = crate::atomic::write_atomic(path, text.as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "writing the metrics file");
    }
}
