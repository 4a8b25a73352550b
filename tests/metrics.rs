//! The Prometheus text file for node_exporter's textfile collector, read
//! back with a real parser (prometheus-parse) and checked against the
//! JSON report of the same run; and no file where its directory is
//! missing. (The handoff's metrics: `tests/node.rs`.)

mod common;

use common::*;
use prewarm::report::ImageStatus;
use std::collections::HashMap;
use testbed::{Compression::Gzip, Format};

/// Every sample of the file: (metric, labels, value).
pub fn parse(path: &std::path::Path) -> Vec<(String, HashMap<String, String>, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a valid exposition");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                other => panic!("{}: not a gauge: {other:?}", s.metric),
            };
            let labels = ["ref", "status", "result", "action"]
                .iter()
                .filter_map(|k| s.labels.get(k).map(|v| (k.to_string(), v.to_string())))
                .collect();
            (s.metric, labels, value)
        })
        .collect()
}

fn one(
    samples: &[(String, HashMap<String, String>, f64)],
    metric: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(m, l, _)| {
            m == metric
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {samples:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_file_says_what_the_report_says() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "metrics/app:1",
        &[linux("amd64", None, layers(700, &[Gzip, Gzip], 256 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let missing = format!("{}/metrics/none:1", env.registry.host());
    let file = env.path("textfile/prewarm.prom");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let config = env.config_with(
        &[(&img.reference, true), (&missing, false)],
        &format!("retries = 0\nmetrics-file = {file:?}"),
        "",
    );
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    let report = env.report();
    let samples = parse(&file);
    // Every family has its HELP and TYPE, and the prefix.
    let text = std::fs::read_to_string(&file).unwrap();
    for (m, _, _) in &samples {
        assert!(m.starts_with("prewarm_"), "{m}");
        assert!(text.contains(&format!("# HELP {m} ")), "{m}");
        assert!(text.contains(&format!("# TYPE {m} gauge")), "{m}");
    }
    assert_eq!(one(&samples, "prewarm_pull_running", &[]), 0.0);
    for image in &report.images {
        let status = match image.status {
            ImageStatus::Pulled => "pulled",
            ImageStatus::Present => "present",
            ImageStatus::Skipped => "skipped",
            ImageStatus::Failed => "failed",
        };
        let l = [("ref", image.reference.as_str()), ("status", status)];
        assert_eq!(
            one(&samples, "prewarm_image_downloaded_bytes", &l),
            image.bytes as f64
        );
        assert_eq!(one(&samples, "prewarm_image_seconds", &l), image.seconds);
        assert_eq!(one(&samples, "prewarm_image_status", &l), 1.0);
    }
    let s = &report.summary;
    assert_eq!(
        one(&samples, "prewarm_pull_downloaded_bytes", &[]),
        s.bytes as f64
    );
    assert!(s.bytes > 0);
    assert_eq!(one(&samples, "prewarm_pull_seconds", &[]), s.seconds);
    for (status, n) in [
        ("pulled", 1.0),
        ("failed", 1.0),
        ("present", 0.0),
        ("skipped", 0.0),
    ] {
        assert_eq!(
            one(&samples, "prewarm_pull_images", &[("status", status)]),
            n,
            "{status}"
        );
    }
    assert_eq!(one(&samples, "prewarm_pull_required_missing", &[]), 0.0);
    let disk = report.disk.as_ref().expect("the report's disk");
    assert_eq!(
        one(&samples, "prewarm_disk_free_before_bytes", &[]),
        disk.free_before as f64
    );
    assert_eq!(
        one(&samples, "prewarm_disk_free_after_bytes", &[]),
        disk.free_after as f64
    );
    // Nothing left from the progress the run wrote on the way.
    assert!(!text.contains("prewarm_pull_progress_bytes"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_exporter_no_file() {
    let env = Env::start();
    let img = push(
        &env.registry.host(),
        "metrics/app:1",
        &[linux("amd64", None, layers(701, &[Gzip], 64 << 10))],
        Format::Oci,
        &env.path("images"),
    );
    let file = env.path("no-such-dir/prewarm.prom");
    let config = env.config_with(
        &[(&img.reference, true)],
        &format!("metrics-file = {file:?}"),
        "",
    );
    let out = env.prewarm(&["pull", "--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 0);
    assert!(!file.exists() && !file.parent().unwrap().exists());
    // Said once, not at every progress line.
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(said.matches("no metrics file").count(), 1, "{said}");
}
