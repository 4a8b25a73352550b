//! What prewarm needs from systemd when it runs as a unit: whether stderr
//! already goes to the journal, and the `READY=1` notification that lets
//! kubelet start alongside the pull (`packaging/examples/alongside.conf`).
//! Both are no-ops outside systemd.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Whether stderr is the stream systemd connected to the journal, i.e.
/// `$JOURNAL_STREAM` (`<device>:<inode>`) names the file behind fd 2.
/// systemd sets the variable for `StandardError=journal` and
/// `journal+console`; a child that redirects stderr inherits the variable
/// but not the stream, hence the comparison.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    journal_stream_matches(&value.to_string_lossy(), meta.dev(), meta.ino())
}

/// Parses `<device>:<inode>` (both decimal) and compares.
fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    match value.split_once(':') {
        Some((d, i)) => d.parse() == Ok(dev) && i.parse() == Ok(ino),
        None => false,
    }
}

/// Sends `state` (e.g. `READY=1`) to `$NOTIFY_SOCKET` if systemd set it,
/// as sd_notify(3) does. Returns whether a message was sent. An error
/// sending is logged and otherwise ignored: the notification only changes
/// when systemd considers the unit started, never what prewarm does.
pub fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    match send_notify(&socket.to_string_lossy(), state) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(socket = ?socket, "notifying systemd ({state}): {e}");
            false
        }
    }
}

fn send_notify(socket: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        // Linux abstract namespace.
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), Path::new(socket))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_values() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        for bad in ["", "8", "8:", ":1", "x:y", "8:12345:1"] {
            assert!(!journal_stream_matches(bad, 8, 12345), "{bad:?}");
        }
    }

    #[test]
    fn notify_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send_notify(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("prewarm-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send_notify(&format!("@{name}"), "READY=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        assert!(send_notify(dir.path().join("absent").to_str().unwrap(), "READY=1").is_err());
    }
}
