//! A small real filesystem for containerd's root: a loop-mounted ext4
//! image, for tests of the disk budget.

use super::Env;
use std::path::{Path, PathBuf};
use std::process::Command;
use testbed::{Containerd, Registry};

pub const MIB: u64 = 1 << 20;

/// A loop-mounted ext4 filesystem, unmounted on drop.
pub struct LoopFs {
    pub mount: PathBuf,
}

impl LoopFs {
    pub fn new(dir: &Path, size_mib: u64) -> LoopFs {
        let image = dir.join("fs.img");
        let mount = dir.join("c");
        std::fs::create_dir_all(&mount).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(size_mib * MIB).unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        LoopFs { mount }
    }

    pub fn available(&self) -> u64 {
        prewarm::disk::statvfs(&self.mount).unwrap().available
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An env whose containerd lives on a `size_mib` filesystem. Fields drop
/// in order: containerd stops before the filesystem is unmounted.
pub fn small_env(size_mib: u64) -> (Env, LoopFs) {
    let dir = tempfile::Builder::new()
        .prefix("pw")
        .tempdir_in("/tmp")
        .unwrap();
    let fs = LoopFs::new(dir.path(), size_mib);
    let containerd = Containerd::start(&fs.mount).unwrap();
    let registry = Registry::start(&dir.path().join("r")).unwrap();
    (
        Env {
            dir,
            containerd,
            registry,
        },
        fs,
    )
}
