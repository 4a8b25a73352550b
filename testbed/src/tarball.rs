//! Layer tar streams built entry by entry, with any mode, owner, type,
//! xattr or name, including the hostile ones a real builder refuses to
//! write: for the extractor's and the unpacker's tests.

/// A tar stream built entry by entry.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

/// The mtime every entry gets unless PAX records say otherwise.
pub const MTIME: u64 = 1_600_000_000;

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Self {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, owner: (u64, u64)) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(MTIME);
        h.set_size(0);
        h
    }

    /// An entry whose name and link target go in as written, `..` and
    /// all, as a hostile layer would have them (the builder refuses such
    /// names).
    pub fn raw(mut self, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, (0, 0));
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().expect("building a test tar");
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.b.append(&h, data).expect("building a test tar");
        self
    }

    /// A directory.
    pub fn dir(mut self, path: &str, mode: u32, owner: (u64, u64)) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, owner);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("building a test tar");
        self
    }

    /// A regular file.
    pub fn file(mut self, path: &str, mode: u32, owner: (u64, u64), data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, owner);
        h.set_size(data.len() as u64);
        self.b
            .append_data(&mut h, path, data)
            .expect("building a test tar");
        self
    }

    /// A symlink (mode 0777), or a hardlink, whose header carries its
    /// target's mode as tar writers put it.
    pub fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mode = if kind == tar::EntryType::Link {
            0o4755
        } else {
            0o777
        };
        let mut h = Self::header(kind, mode, (0, 0));
        self.b
            .append_link(&mut h, path, target)
            .expect("building a test tar");
        self
    }

    /// A device node or fifo.
    pub fn node(mut self, kind: tar::EntryType, path: &str, mode: u32, dev: (u32, u32)) -> Self {
        let mut h = Self::header(kind, mode, (0, 0));
        h.set_device_major(dev.0).expect("building a test tar");
        h.set_device_minor(dev.1).expect("building a test tar");
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("building a test tar");
        self
    }

    /// PAX records for the next entry (`SCHILY.xattr.*`, `mtime`, …).
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .expect("building a test tar");
        self
    }

    /// The tar stream.
    pub fn bytes(self) -> Vec<u8> {
        self.b.into_inner().expect("building a test tar")
    }
}

impl Layer {
    /// The ways out of a layer's directory that containerd contains: a
    /// `..` name, and entries written through an absolute and a relative
    /// symlink that point above the root. Each writes a file whose name
    /// starts with `escape-`: `escape-dotdot`, `escape-abs-link` and
    /// `escape-rel-link`, all of which must land directly in the root.
    pub fn escapes(self) -> Self {
        self.raw(tar::EntryType::Regular, "../../../escape-dotdot", "", b"x")
            .raw(tar::EntryType::Symlink, "to-root", "/", b"")
            .raw(tar::EntryType::Regular, "to-root/escape-abs-link", "", b"x")
            .raw(tar::EntryType::Symlink, "up", "../../../../..", b"")
            .raw(tar::EntryType::Regular, "up/escape-rel-link", "", b"x")
    }
}

/// `security.capability` as setcap writes `cap_net_raw+ep` (v2 format).
pub const NET_RAW_CAPABILITY: &[u8] =
    &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

impl Layer {
    /// Entries whose metadata is easy to lose: a sticky `tmp`, a setgid
    /// `srv` owned 1000:1001 with a file in it, setuid `usr/bin/su` and
    /// setgid `usr/bin/wall` (0:5), `usr/bin/ping` with a `user.origin`
    /// xattr, a file capability and a sub-second mtime, a symlink
    /// `usr/bin/sh`, a hardlink `usr/bin/su2`, `dev/null` (1:3), a fifo
    /// `run/fifo`, a name of 265 bytes and a non-ASCII one. 12 entries.
    pub fn corners(self) -> Self {
        let long = long_name();
        self.dir("tmp", 0o1777, (0, 0))
            .dir("srv", 0o2750, (1000, 1001))
            .file("srv/data", 0o640, (1000, 1001), b"owned")
            .file("usr/bin/su", 0o4755, (0, 0), b"setuid")
            .file("usr/bin/wall", 0o2755, (0, 5), b"setgid")
            .pax(&[
                ("SCHILY.xattr.user.origin", b"layer-1"),
                ("SCHILY.xattr.security.capability", NET_RAW_CAPABILITY),
                ("mtime", b"1700000000.123456789"),
            ])
            .file("usr/bin/ping", 0o755, (0, 0), b"caps")
            .link(tar::EntryType::Symlink, "usr/bin/sh", "dash")
            .link(tar::EntryType::Link, "usr/bin/su2", "usr/bin/su")
            .node(tar::EntryType::Char, "dev/null", 0o666, (1, 3))
            .node(tar::EntryType::Fifo, "run/fifo", 0o600, (0, 0))
            .file(&long, 0o644, (0, 0), b"long")
            .file("usr/share/ünïcødé/名前.txt", 0o644, (0, 0), b"names")
    }
}

/// The long name [`Layer::corners`] writes.
pub fn long_name() -> String {
    format!("deep/{}/{}", "d".repeat(120), "f".repeat(140))
}
