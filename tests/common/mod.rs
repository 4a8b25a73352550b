//! Shared set-up for integration tests: a real containerd and a real
//! registry on temporary paths, and the prewarm binary run as operators
//! run it.
#![allow(dead_code)]

pub mod core;
pub mod fidelity;
pub mod loopfs;

use prewarm::containerd::Containerd as Client;
use prewarm::cri::Cri;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use testbed::{Compression, Containerd, Format, ImageSpec, LayerSpec, PushedImage, Registry};

/// A containerd and a registry, torn down (by PID) on drop.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub containerd: Containerd,
    pub registry: Registry,
}

impl Env {
    pub fn start() -> Env {
        Self::start_with(Path::new("containerd"))
    }

    /// An env whose containerd is the daemon at `binary` (another version).
    pub fn start_with(binary: &Path) -> Env {
        Env::start_configured(binary, false)
    }

    /// [`Env::start_with`], with CRI's `discard_unpacked_layers` set.
    pub fn start_configured(binary: &Path, discard_unpacked_layers: bool) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("pw")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let containerd =
            Containerd::start_with(&dir.path().join("c"), binary, discard_unpacked_layers)
                .expect("starting containerd");
        let registry = Registry::start(&dir.path().join("r")).expect("starting registry");
        Env {
            dir,
            containerd,
            registry,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a config fragment pointing at this containerd and listing
    /// `images` (ref, required), plus `pull` lines inside `[pull]` and
    /// `extra` TOML tables.
    pub fn config_with(&self, images: &[(&str, bool)], pull: &str, extra: &str) -> PathBuf {
        let mut text = format!(
            "version = 1\n[containerd]\nsocket = {:?}\n[registry]\nconfig-path = {:?}\nauth-file = {:?}\n[pull]\nreport = {:?}\n{pull}\n",
            self.containerd.socket,
            self.containerd.config_path_dir,
            self.path("auth.json"),
            self.path("report.json"),
        );
        text.push_str(extra);
        if !extra.contains("[disk]") {
            // Tests run on shared build disks whose usage is not theirs:
            // keep a small reserve, and no usage threshold.
            text.push_str("[disk]\nreserve = \"256MiB\"\nmax-usage-percent = 100\n");
        }
        for (r, required) in images {
            text.push_str(&format!("[[images]]\nref = {r:?}\nrequired = {required}\n"));
        }
        let path = self.path("prewarm.toml");
        std::fs::write(&path, text).expect("writing config");
        path
    }

    /// [`Env::config_with`] with three retries.
    pub fn config(&self, images: &[(&str, bool)], extra: &str) -> PathBuf {
        self.config_with(images, "retries = 3", extra)
    }

    /// Runs the prewarm binary with `args` and this env's config root.
    pub fn prewarm(&self, args: &[&str]) -> Output {
        let root = self.path("root");
        std::fs::create_dir_all(&root).expect("config root");
        run_prewarm(&root, args)
    }

    /// Starts the prewarm binary with `args` and this env's config root,
    /// its output thrown away: for tests that kill it mid-run.
    pub fn spawn_prewarm(&self, args: &[&str]) -> std::process::Child {
        self.spawn_prewarm_logging(args, std::process::Stdio::null())
    }

    /// [`Env::spawn_prewarm`] with its log (stderr) going to `log`.
    pub fn spawn_prewarm_logging(
        &self,
        args: &[&str],
        log: impl Into<std::process::Stdio>,
    ) -> std::process::Child {
        self.spawn_prewarm_env(args, &[], log)
    }

    /// [`Env::spawn_prewarm_logging`] with extra environment variables.
    pub fn spawn_prewarm_env(
        &self,
        args: &[&str],
        vars: &[(&str, &std::ffi::OsStr)],
        log: impl Into<std::process::Stdio>,
    ) -> std::process::Child {
        let root = self.path("root");
        std::fs::create_dir_all(&root).expect("config root");
        Command::new(env!("CARGO_BIN_EXE_prewarm"))
            .arg("--config-root")
            .arg(&root)
            .args(args)
            .envs(vars.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prewarm")
    }

    /// Pushes a linux/amd64 OCI image of `layers` to this env's registry
    /// as `repo_tag`.
    pub fn push_layers(&self, repo_tag: &str, layers: Vec<LayerSpec>) -> PushedImage {
        push(
            &self.registry.host(),
            repo_tag,
            &[ImageSpec::linux("amd64", layers)],
            Format::Oci,
            &self.path("images"),
        )
    }

    /// `prewarm pull --config config`, which must exit 0 (its log is
    /// shown if not); returns the report.
    pub fn pull_ok(&self, config: &Path) -> prewarm::report::Report {
        let out = self.prewarm(&["pull", "--config", config.to_str().unwrap()]);
        assert_eq!(
            exit_code(&out),
            0,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.report()
    }

    pub fn report(&self) -> prewarm::report::Report {
        prewarm::report::Report::read(&self.path("report.json")).expect("reading report")
    }

    pub async fn client(&self) -> Client {
        Client::connect_to(&self.containerd.socket, "k8s.io", Duration::from_secs(10))
            .await
            .expect("connecting to test containerd")
    }

    /// Asserts kubelet's view: CRI finds the image by tag and by digest,
    /// with the expected image ID, and every layer is unpacked.
    pub async fn assert_visible(&self, img: &PushedImage, manifest_index: usize) {
        self.assert_visible_as(&img.reference, img, manifest_index)
            .await
    }

    /// [`Env::assert_visible`] for the image pulled under another name
    /// (through a proxy).
    pub async fn assert_visible_as(&self, name: &str, img: &PushedImage, manifest_index: usize) {
        self.assert_seen(name, img, manifest_index, true).await
    }

    /// [`Env::assert_visible`] for a pull that did not keep the layers'
    /// blobs (`keep-layers = false`): none of them is in the content store.
    pub async fn assert_visible_without_blobs(&self, img: &PushedImage) {
        self.assert_seen(&img.reference, img, 0, false).await
    }

    async fn assert_seen(&self, name: &str, img: &PushedImage, manifest_index: usize, blobs: bool) {
        let client = self.client().await;
        let cri = Cri::new(client.channel());
        let reference = prewarm::reference::Reference::parse(name).unwrap();
        let built = &img.manifests[manifest_index];
        for name in [
            reference.tag_name().unwrap(),
            reference.digest_name(&img.top_digest),
            built.config_digest.clone(),
        ] {
            let seen = testbed::poll_until(
                &format!("CRI to see {name}"),
                Duration::from_secs(10),
                || {
                    Ok(tokio::task::block_in_place(|| {
                        tokio::runtime::Handle::current().block_on(cri.image_status(&name))
                    })?)
                },
            )
            .unwrap();
            assert_eq!(seen.id, built.config_digest, "{name}");
        }
        for layer in &built.layer_digests {
            let info = client.content_info(layer).await.unwrap();
            assert_eq!(info.is_some(), blobs, "layer {layer} in the content store");
        }
        let chain = prewarm::manifest::chain_ids(&built.diff_ids);
        let snapshotter = cri.image_fs().await.unwrap().snapshotter;
        for c in &chain {
            assert!(
                client.snapshot_exists(&snapshotter, c).await.unwrap(),
                "snapshot {c}"
            );
        }
    }
}

/// Small test layers of each compression.
pub fn layers(seed: u64, kinds: &[Compression], size: usize) -> Vec<LayerSpec> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, c)| LayerSpec {
            files: vec![
                (
                    format!("layer{i}/data.bin"),
                    testbed::random_bytes(seed + i as u64, size),
                ),
                (
                    format!("layer{i}/README"),
                    format!("layer {i} of seed {seed}\n").into_bytes(),
                ),
            ],
            compression: *c,
            ..Default::default()
        })
        .collect()
}

pub fn linux(arch: &str, variant: Option<&str>, layers: Vec<LayerSpec>) -> ImageSpec {
    ImageSpec {
        layers,
        os: "linux".into(),
        arch: arch.into(),
        variant: variant.map(Into::into),
    }
}

pub fn push(
    host: &str,
    repo_tag: &str,
    images: &[ImageSpec],
    format: Format,
    work: &Path,
) -> PushedImage {
    testbed::push_image(host, repo_tag, images, format, work, None).expect("pushing test image")
}

pub fn exit_code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Writes a docker config.json with Basic credentials for `host`.
pub fn write_auth(path: &Path, host: &str, user: &str, password: &str) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = format!("{{\"auths\": {{\"{host}\": {{\"auth\": \"{auth}\"}}}}}}");
    std::fs::write(path, json).expect("writing auth file");
}

/// Runs the prewarm binary with `--config-root root` and `args`, and shows
/// its output should the test fail.
pub fn run_prewarm<A: AsRef<std::ffi::OsStr>>(root: &Path, args: &[A]) -> Output {
    run_prewarm_env(root, args, &[])
}

/// [`run_prewarm`] with extra environment variables.
pub fn run_prewarm_env<A: AsRef<std::ffi::OsStr>>(
    root: &Path,
    args: &[A],
    vars: &[(&str, std::ffi::OsString)],
) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .arg("--config-root")
        .arg(root)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running prewarm");
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    eprintln!(
        "prewarm {shown:?} → {:?}\n--- stderr\n{}--- stdout\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// The shared credential of `deploy/rbac.yaml` on the fake API server
/// (the untaint service account, held to prewarm's taint and annotations):
/// its kubeconfig.
pub fn untainter_kubeconfig(api: &testbed::KubeApi) -> PathBuf {
    api.add_token_user(
        "system:serviceaccount:prewarm-system:prewarm-untaint",
        testbed::Role::Untainter {
            taint_key: prewarm::config::DIRECT_TAINT_KEY.into(),
        },
    )
    .expect("adding the untaint credential")
    .kubeconfig
}

/// No ingest left in containerd's content store.
pub fn assert_no_ingest_left(env: &Env) {
    let active = env.containerd.ctr(&["content", "active"]).unwrap();
    assert!(
        active.lines().skip(1).all(|l| l.trim().is_empty()),
        "ingests left behind: {active}"
    );
}
