//! `prewarm untaint` and `prewarm register` against a stateful fake
//! Kubernetes API server (testbed::KubeApi: TLS, tokens and client
//! certificates, resourceVersion, JSON-patch `test`, NodeRestriction, the
//! admission policy), running the real binary with the real kube client.
//! Every wait polls with a bound; servers are stopped on drop.

use prewarm::report::{ImageReport, Report, Summary};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testbed::{poll_until, KubeApi, Outage, Role};

const NODE: &str = "worker-1";
const DIRECT_KEY: &str = "startup-taint.cluster-autoscaler.kubernetes.io/prewarm";
const READY_KEY: &str = "readiness.k8s.io/prewarm-images";
const ANNOTATION: &str = "prewarm.io/preload";

struct Case {
    dir: tempfile::TempDir,
    api: KubeApi,
}

fn taint(key: &str, value: Option<&str>, effect: &str) -> Value {
    match value {
        Some(v) => json!({"key": key, "value": v, "effect": effect}),
        None => json!({"key": key, "effect": effect}),
    }
}

/// A Node as a kubelet registers it, with other people's taints around ours.
fn node(taints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "labels": {"kubernetes.io/hostname": NODE, "node.kubernetes.io/instance-type": "m5.large"},
            "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": "10.244.1.0/24", "taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                    "lastHeartbeatTime": "2025-01-01T00:00:00Z",
                                    "lastTransitionTime": "2025-01-01T00:00:00Z"}]},
    })
}

fn others() -> (Value, Value) {
    (
        taint("dedicated", Some("gpu"), "NoSchedule"),
        taint("example.com/maintenance", None, "NoExecute"),
    )
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::Builder::new()
            .prefix("pwnode")
            .tempdir_in("/tmp")
            .unwrap();
        let api = KubeApi::start(&dir.path().join("api")).expect("starting the fake API server");
        Case { dir, api }
    }

    /// A Node with only prewarm's taint, a report with `missing` required
    /// images missing, and the start stamp.
    fn tainted(missing: usize) -> Case {
        let c = Case::new();
        c.api
            .create_node(node(vec![taint(DIRECT_KEY, None, "NoSchedule")]))
            .unwrap();
        c.report(missing);
        c.stamp();
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config fragment for `untaint`/`register` with `handoff` lines.
    fn config(&self, handoff: &str) -> PathBuf {
        let text = format!(
            "version = 1\n[pull]\nreport = {:?}\nmetrics-file = {:?}\n[handoff]\nnode-name = \"{NODE}\"\n\
             started-file = {:?}\nrequest-timeout = \"3s\"\n{handoff}\n",
            self.path("report.json"),
            // Written only where the directory exists: see the handoff
            // metrics test.
            self.path("textfile/prewarm.prom"),
            self.path("started"),
        );
        let p = self.path("prewarm.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn direct(&self, kubeconfig: &std::path::Path, extra: &str) -> PathBuf {
        self.config(&format!(
            "mode = \"direct\"\nkubeconfig = {kubeconfig:?}\n{extra}"
        ))
    }

    fn untainter(&self) -> PathBuf {
        self.api
            .add_token_user(
                "system:serviceaccount:prewarm-system:prewarm-untaint",
                Role::Untainter {
                    taint_key: DIRECT_KEY.into(),
                },
            )
            .unwrap()
            .kubeconfig
    }

    /// Writes a preload report: three images, `missing` required ones
    /// failed. Built from JSON, as `untaint` reads it, so that fields the
    /// report gains later (all optional or defaulted) need no change here.
    fn report(&self, missing: usize) {
        let images: Vec<Value> = (0..3)
            .map(|i| {
                json!({
                    "ref": format!("registry.example/app{i}:1"),
                    "required": true,
                    "priority": 0,
                    "status": if i < missing { "failed" } else { "pulled" },
                    "reason": (i < missing).then_some("disk budget"),
                    "bytes": 10,
                    "size": 10,
                    "seconds": 1.0,
                })
            })
            .collect();
        let parsed: Vec<ImageReport> =
            serde_json::from_value(Value::Array(images.clone())).unwrap();
        let report: Report = serde_json::from_value(json!({
            "version": 1,
            "started_at": "2025-01-01T00:00:00Z",
            "finished_at": "2025-01-01T00:00:12Z",
            "platform": "linux/amd64",
            "snapshotter": "overlayfs",
            "images": images,
            "summary": Summary::of(&parsed, 12.5),
        }))
        .unwrap();
        report.write(&self.path("report.json")).unwrap();
    }

    /// The start stamp, as `register` writes it, counting from now.
    fn stamp(&self) {
        prewarm::node::clock::ensure_stamp(
            &self.path("started"),
            &prewarm::node::clock::SystemClock,
        )
        .unwrap();
    }

    fn cmd(&self, config: &std::path::Path, sub: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_prewarm"));
        c.arg("--config-root")
            .arg(self.path("empty-root"))
            .arg("--config")
            .arg(config)
            .arg(sub)
            .env("PREWARM_LOG", "debug")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, config: &std::path::Path, sub: &str) -> Output {
        self.cmd(config, sub).output().expect("running prewarm")
    }

    fn spawn(&self, config: &std::path::Path, sub: &str) -> Running {
        let mut child = self
            .cmd(config, sub)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning prewarm");
        // Drained as it runs: a full pipe would stall prewarm mid-test.
        let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn stored(&self) -> Value {
        self.api.node(NODE).expect("the node exists")
    }

    fn annotation(&self) -> Value {
        let n = self.stored();
        let text = n["metadata"]["annotations"][ANNOTATION]
            .as_str()
            .unwrap_or("{}")
            .to_string();
        serde_json::from_str(&text).unwrap()
    }
}

/// A spawned prewarm whose output is read as it comes.
struct Running {
    child: Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

/// Waits (bounded) for a spawned prewarm to exit.
fn finish(mut run: Running, within: Duration) -> Output {
    let status = poll_until("prewarm to exit", within, || Ok(run.child.try_wait()?))
        .unwrap_or_else(|e| {
            let _ = run.child.kill();
            let _ = run.child.wait();
            panic!("{e}")
        });
    Output {
        status,
        stdout: run.stdout.join().unwrap_or_default(),
        stderr: run.stderr.join().unwrap_or_default(),
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `before` with our taint gone, our annotation as stored, and the stored
/// resourceVersion: everything else must be byte-equal.
fn expected_after_untaint(before: &Value, after: &Value, key: &str) -> Value {
    let mut want = before.clone();
    let kept: Vec<Value> = want["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["key"] != key)
        .cloned()
        .collect();
    want["spec"]["taints"] = Value::Array(kept);
    want["metadata"]["annotations"][ANNOTATION] =
        after["metadata"]["annotations"][ANNOTATION].clone();
    want["metadata"]["resourceVersion"] = after["metadata"]["resourceVersion"].clone();
    want
}

#[test]
fn direct_mode_removes_exactly_our_taint() {
    let c = Case::new();
    let (a, b) = others();
    c.api
        .create_node(node(vec![
            a.clone(),
            taint(DIRECT_KEY, None, "NoSchedule"),
            b.clone(),
        ]))
        .unwrap();
    let before = c.stored();
    c.report(0);
    c.stamp();
    let config = c.direct(&c.untainter(), "");
    let out = c.run(&config, "untaint");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = c.stored();
    assert_eq!(
        serde_json::to_string(&after).unwrap(),
        serde_json::to_string(&expected_after_untaint(&before, &after, DIRECT_KEY)).unwrap()
    );
    let record = c.annotation();
    assert_eq!(record["result"], "ready");
    assert_eq!(record["action"], "untainted");
    assert_eq!(record["images"], "3/3");
    assert!(
        stderr(&out).contains("untaint: node=worker-1 result=ready action=untainted"),
        "{}",
        stderr(&out)
    );
    // One GET, one JSON patch, then the Event, nothing else.
    let reqs = c.api.requests();
    let kinds: Vec<(String, Option<String>)> = reqs
        .iter()
        .map(|r| (r.method.clone(), r.content_type.clone()))
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(kinds[2].0, "POST");
    let events = c.api.events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e["reason"].as_str(), e["type"].as_str()),
        (Some("PreloadComplete"), Some("Normal"))
    );
    assert_eq!(e["regarding"]["kind"], "Node");
    assert_eq!(e["regarding"]["name"], NODE);
    assert_eq!(e["regarding"]["uid"], format!("uid-{NODE}"));
    let note = e["note"].as_str().unwrap();
    assert!(
        note.contains("images 3/3") && note.contains("untainted"),
        "{note}"
    );
    assert_eq!(kinds[1].1.as_deref(), Some("application/json-patch+json"));
    let ops = reqs[1].body.clone().unwrap();
    assert_eq!(ops[0]["op"], "test");
    assert_eq!(ops[0]["path"], "/spec/taints/1/key");
    assert_eq!(ops[1]["path"], "/spec/taints/1/effect");
    assert_eq!(ops[2]["op"], "remove");

    // Again: nothing left to remove, other taints untouched.
    let out = c.run(&config, "untaint");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(c.stored()["spec"]["taints"], json!([a, b]));
    assert_eq!(c.annotation()["action"], "taint-absent");
}

/// Once untaint has run, the metrics file holds the pull's metrics (from
/// its report) and the handoff: its result and the seconds since the start
/// stamp, as in the Node's annotation. Read with a real parser.
#[test]
fn untaint_writes_the_handoff_to_the_metrics_file() {
    let c = Case::tainted(1);
    let file = c.path("textfile/prewarm.prom");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let out = c.run(&c.direct(&c.untainter(), ""), "untaint");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let record = c.annotation();
    let text = std::fs::read_to_string(&file).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |metric: &str| -> Vec<(prometheus_parse::Value, Option<String>)> {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .map(|s| (s.value.clone(), s.labels.get("result").map(str::to_string)))
            .collect()
    };
    assert_eq!(
        value("prewarm_handoff_seconds"),
        [(
            prometheus_parse::Value::Gauge(record["seconds"].as_f64().unwrap()),
            None
        )]
    );
    assert_eq!(
        value("prewarm_handoff_result"),
        [(
            prometheus_parse::Value::Gauge(1.0),
            Some("degraded".to_string())
        )]
    );
    assert_eq!(record["result"], "degraded");
    // The pull's, from the report: one required image missing.
    assert_eq!(
        value("prewarm_pull_required_missing"),
        [(prometheus_parse::Value::Gauge(1.0), None)]
    );
}

/// A degraded handoff gets a Warning Event with the reason; an API server
/// that refuses Events does not hold the handoff up.
#[test]
fn the_handoff_event_never_blocks_the_handoff() {
    let c = Case::tainted(2);
    let config = c.direct(&c.untainter(), "");
    c.api.refuse_events(Some(500));
    let out = c.run(&config, "untaint");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        c.stored()["spec"]["taints"],
        json!([]),
        "handed over all the same"
    );
    assert!(
        stderr(&out).contains("creating the handoff event"),
        "{}",
        stderr(&out)
    );
    assert!(c.api.events().is_empty());
    // The next time it goes through: degraded, so a Warning, with why.
    c.api.refuse_events(None);
    c.api
        .update_node(NODE, |n| {
            n["spec"]["taints"] = json!([taint(DIRECT_KEY, None, "NoSchedule")])
        })
        .unwrap();
    let out = c.run(&config, "untaint");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let events = c.api.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "PreloadDegraded");
    assert_eq!(events[0]["type"], "Warning");
    let note = events[0]["note"].as_str().unwrap();
    assert!(note.contains("2 required missing"), "{note}");
}

#[test]
fn a_concurrent_writer_causes_a_fresh_get_and_a_correct_retry() {
    let c = Case::new();
    let (a, b) = others();
    c.api
        .create_node(node(vec![taint(DIRECT_KEY, None, "NoSchedule"), a.clone()]))
        .unwrap();
    c.report(0);
    c.stamp();
    // Between prewarm's GET and its PATCH, someone puts a taint in front
    // of ours: index 0 no longer holds our key, the `test` fails (422).
    let inserted = b.clone();
    c.api.after_next_get(NODE, move |n| {
        n["spec"]["taints"]
            .as_array_mut()
            .unwrap()
            .insert(0, inserted);
    });
    // And one 409 on top, as from a resourceVersion race.
    let config = c.direct(&c.untainter(), "");
    let out = c.run(&config, "untaint");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(c.stored()["spec"]["taints"], json!([b, a]));
    let statuses: Vec<u16> = c
        .api
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/nodes/"))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        vec![200, 422, 200, 200],
        "GET, stale PATCH, fresh GET, PATCH"
    );
    let ops = c.api.requests()[3].body.clone().unwrap();
    assert_eq!(
        ops[0]["path"], "/spec/taints/1/key",
        "the retry uses the fresh index"
    );

    // A 409 is retried the same way.
    c.api
        .update_node(NODE, |n| {
            n["spec"]["taints"]
                .as_array_mut()
                .unwrap()
                .push(taint(DIRECT_KEY, None, "NoSchedule"))
        })
        .unwrap();
    c.api.fail_next_patch(1, 409);
    let n = c.api.requests().len();
    let out = c.run(&config, "untaint");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let statuses: Vec<u16> = c.api.requests()[n..].iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 409, 200, 200, 201], "then the Event");
    assert_eq!(c.stored()["spec"]["taints"], json!([b, a]));
}

#[test]
fn api_down_past_the_deadline_fails_open_once_reachable() {
    let c = Case::tainted(1);
    let started = Instant::now();
    c.api.set_outage(Outage::Refuse);
    let config = c.direct(
        &c.untainter(),
        "deadline = \"2s\"\ngive-up-after = \"1m\"\n",
    );
    let child = c.spawn(&config, "untaint");
    // The untaint still knocks after its deadline passed: it is waiting
    // for the server to hand over anyway, not giving up.
    let past_deadline = started + Duration::from_millis(2500);
    poll_until(
        "a request after the deadline",
        Duration::from_secs(15),
        || Ok((c.api.refused_since(past_deadline) > 0).then_some(())),
    )
    .unwrap();
    assert_eq!(
        c.stored()["spec"]["taints"].as_array().unwrap().len(),
        1,
        "nothing reached the server"
    );
    c.api.set_outage(Outage::None);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(c.stored()["spec"]["taints"], json!([]));
    let r = c.annotation();
    assert_eq!(r["result"], "degraded");
    assert_eq!(r["action"], "untainted");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("1 required image(s) missing"), "{reason}");
    assert!(
        reason.contains("passed before the API server answered"),
        "{reason}"
    );
    assert!(
        reason.contains("handing over anyway (on-deadline = \"untaint\")"),
        "{reason}"
    );
}

#[test]
fn keep_leaves_the_taint_and_says_why() {
    let c = Case::new();
    c.api
        .create_node(node(vec![taint(DIRECT_KEY, None, "NoSchedule")]))
        .unwrap();
    c.stamp();
    // No report at all: untaint waits for it until the deadline.
    let config = c.direct(
        &c.untainter(),
        "deadline = \"1s\"\non-deadline = \"keep\"\n",
    );
    let out = c.run(&config, "untaint");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        c.stored()["spec"]["taints"],
        json!([taint(DIRECT_KEY, None, "NoSchedule")])
    );
    let r = c.annotation();
    assert_eq!(r["action"], "kept-taint");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("no usable preload report"), "{reason}");
    assert!(reason.contains("keeping the taint"), "{reason}");
    assert!(
        stderr(&out).contains("action=kept-taint"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn condition_mode_writes_only_the_status_and_the_annotation() {
    let c = Case::new();
    let (a, _) = others();
    c.api
        .create_node(node(vec![a.clone(), taint(READY_KEY, None, "NoSchedule")]))
        .unwrap();
    let before = c.stored();
    c.report(0);
    c.stamp();
    let kubelet = c
        .api
        .add_cert_user(
            &format!("system:node:{NODE}"),
            Some("system:nodes"),
            Role::Node(NODE.into()),
        )
        .unwrap();
    let config = c.config(&format!(
        "mode = \"condition\"\nkubeconfig = {:?}\n",
        kubelet.kubeconfig
    ));
    let out = c.run(&config, "untaint");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = c.stored();
    // The taint stays for the controller to remove; spec and labels untouched.
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    let conds = after["status"]["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 2, "Ready is kept, ours is added: {conds:?}");
    let ours = conds
        .iter()
        .find(|c| c["type"] == "prewarm.io/ImagesReady")
        .unwrap();
    assert_eq!(ours["status"], "True");
    assert_eq!(ours["reason"], "ImagesReady");
    assert!(ours["message"]
        .as_str()
        .unwrap()
        .contains("3/3 images present"));
    assert_eq!(c.annotation()["action"], "condition-true");
    let writes: Vec<(String, Option<String>)> = c
        .api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| (r.path.clone(), r.content_type.clone()))
        .collect();
    assert_eq!(
        writes,
        vec![
            (
                "/api/v1/nodes/worker-1/status".into(),
                Some("application/strategic-merge-patch+json".into())
            ),
            (
                "/api/v1/nodes/worker-1".into(),
                Some("application/merge-patch+json".into())
            ),
        ]
    );
    let annotation_patch = c
        .api
        .requests()
        .iter()
        .rfind(|r| r.method == "PATCH")
        .unwrap()
        .body
        .clone()
        .unwrap();
    // The kubelet's own credential creates the Event in condition mode.
    assert_eq!(c.api.events().len(), 1);
    assert_eq!(annotation_patch["metadata"].as_object().unwrap().len(), 1);
    assert!(annotation_patch.get("spec").is_none());
}

#[test]
fn forbidden_names_the_node_and_the_principal() {
    let c = Case::new();
    c.api
        .create_node(node(vec![taint(DIRECT_KEY, None, "NoSchedule")]))
        .unwrap();
    c.report(0);
    c.stamp();
    let nobody = c.api.add_token_user("nobody", Role::Nobody).unwrap();
    let out = c.run(&c.direct(&nobody.kubeconfig, ""), "untaint");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("worker-1") && err.contains("\"nobody\"") && err.contains("403"),
        "{err}"
    );

    // The kubelet's own credential in direct mode: NodeRestriction refuses.
    let kubelet = c
        .api
        .add_cert_user(
            &format!("system:node:{NODE}"),
            Some("system:nodes"),
            Role::Node(NODE.into()),
        )
        .unwrap();
    let out = c.run(&c.direct(&kubelet.kubeconfig, ""), "untaint");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not allowed to modify taints") && err.contains("system:node:worker-1"),
        "{err}"
    );
    assert_eq!(c.stored()["spec"]["taints"].as_array().unwrap().len(), 1);

    // No known credential: 401.
    let bogus = c.api.bogus_kubeconfig().unwrap();
    let out = c.run(&c.direct(&bogus.kubeconfig, ""), "untaint");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
}

#[test]
fn the_node_may_appear_late_and_5xx_is_retried() {
    let c = Case::new();
    c.report(0);
    c.stamp();
    let config = c.direct(&c.untainter(), "");
    let child = c.spawn(&config, "untaint");
    poll_until("two GETs answered 404", Duration::from_secs(20), || {
        Ok((c.api.requests().iter().filter(|r| r.status == 404).count() >= 2).then_some(()))
    })
    .unwrap();
    c.api.fail_next(2, 503);
    c.api
        .create_node(node(vec![taint(DIRECT_KEY, None, "NoSchedule")]))
        .unwrap();
    let out = finish(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(c.stored()["spec"]["taints"], json!([]));
    assert!(c.api.requests().iter().any(|r| r.status == 503));
}

#[test]
fn a_node_that_never_appears_is_given_up_on() {
    let c = Case::new();
    c.report(0);
    c.stamp();
    let config = c.direct(
        &c.untainter(),
        "deadline = \"1s\"\ngive-up-after = \"1s\"\n",
    );
    let started = Instant::now();
    let out = c.run(&config, "untaint");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"worker-1\" did not appear"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "bounded: {:?}",
        started.elapsed()
    );
}

#[test]
fn register_taints_a_node_object_that_survived_a_reimage() {
    let c = Case::new();
    let (a, _) = others();
    c.api.create_node(node(vec![a.clone()])).unwrap();
    let dropins = c.path("kubelet.conf.d");
    std::fs::create_dir_all(&dropins).unwrap();
    let register = format!(
        "[register]\nmethod = \"kubelet-config-dir\"\nkubelet-config-dir = {dropins:?}\nkubelet-config = {:?}\n",
        c.path("kubelet-config.yaml")
    );
    let kubeconfig = c.untainter();
    // Someone else adds a taint between our GET and PATCH: the `test` of
    // the taints list fails, and the retry adds ours exactly once.
    let (_, b) = others();
    let inserted = b.clone();
    c.api.after_next_get(NODE, move |n| {
        n["spec"]["taints"].as_array_mut().unwrap().push(inserted)
    });
    let text = format!(
        "version = 1\n[handoff]\nnode-name = \"{NODE}\"\nstarted-file = {:?}\nkubeconfig = {kubeconfig:?}\n{register}",
        c.path("started")
    );
    let config = c.path("register.toml");
    std::fs::write(&config, text).unwrap();
    let out = c.run(&config, "register");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        c.stored()["spec"]["taints"],
        json!([a, b, taint(DIRECT_KEY, None, "NoSchedule")])
    );
    assert!(dropins.join("99-prewarm.conf").exists());
    assert!(c.path("started").exists());
    let out = c.run(&config, "register");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        c.stored()["spec"]["taints"].as_array().unwrap().len(),
        3,
        "never twice"
    );
    assert!(
        stderr(&out).contains("already has the taint"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn register_writes_no_taint_without_a_working_handoff() {
    let c = Case::new();
    let dropins = c.path("kubelet.conf.d");
    std::fs::create_dir_all(&dropins).unwrap();
    let base = format!(
        "version = 1\n[handoff]\nnode-name = \"{NODE}\"\nstarted-file = {:?}\n{{}}\n[register]\n\
         method = \"kubelet-config-dir\"\nkubelet-config-dir = {dropins:?}\n",
        c.path("started")
    );
    let cases = [
        (
            format!("kubeconfig = {:?}", c.path("missing.kubeconfig")),
            "handoff.kubeconfig",
        ),
        ("deadline = \"soon\"".to_string(), "duration"),
        (
            "mode = \"condition\"\ntaint-key = \"example.com/x\"".to_string(),
            "readiness.k8s.io/",
        ),
    ];
    for (handoff, want) in cases {
        let config = c.path("bad.toml");
        std::fs::write(&config, base.replace("{}", &handoff)).unwrap();
        let out = c.run(&config, "register");
        assert_eq!(out.status.code(), Some(2), "{handoff}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{handoff}: {}", stderr(&out));
        assert_eq!(
            std::fs::read_dir(&dropins).unwrap().count(),
            0,
            "{handoff}: no drop-in"
        );
        assert!(!c.path("started").exists(), "{handoff}: no stamp");
    }
}

/// The fake's registration keeps the real API's rules, which the VM boot
/// test relies on: a kubelet creates only its own Node (with taints, which
/// NodeRestriction allows only at creation), once; the untaint principal
/// creates nothing.
#[tokio::test]
async fn the_fake_lets_a_kubelet_register_only_its_own_node() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start_as(&dir.path().join("api"), &["k8s-api.example.internal"]).unwrap();
    let kubelet = api
        .add_token_user(&format!("system:node:{NODE}"), Role::Node(NODE.into()))
        .unwrap();
    let untainter = api
        .add_token_user(
            "untainter",
            Role::Untainter {
                taint_key: DIRECT_KEY.into(),
            },
        )
        .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&api.ca_cert).unwrap()).unwrap();
    // The certificate names the cluster's host name too.
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve("k8s-api.example.internal", api.addr)
        .build()
        .unwrap();
    let url = format!(
        "https://k8s-api.example.internal:{}/api/v1/nodes",
        api.addr.port()
    );
    let post = |token: &str, body: Value| {
        client
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let ours = taint(DIRECT_KEY, None, "NoSchedule");
    let token = kubelet.token.clone().unwrap();

    let other = json!({"metadata": {"name": "worker-2"}, "spec": {"taints": [ours.clone()]}});
    assert_eq!(post(&token, other).await.unwrap().status(), 403);
    let r = post(&untainter.token.clone().unwrap(), node(vec![]))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(&token, node(vec![ours.clone()])).await.unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(created.pointer("/metadata/resourceVersion").is_some());
    assert_eq!(api.node(NODE).unwrap()["spec"]["taints"], json!([ours]));
    assert_eq!(post(&token, node(vec![])).await.unwrap().status(), 409);
    assert!(api.node("worker-2").is_none());
}
