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
