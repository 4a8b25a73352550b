//! The deadline's reference point.
//!
//! The deadline counts from when prewarm started on this boot, and must not
//! move when the untaint unit restarts. `register` (the first step at boot)
//! writes a start stamp, by default `/run/prewarm/started`, holding the boot
//! ID and the time since boot (`CLOCK_BOOTTIME`, as `/proc/uptime` shows
//! it). It keeps an existing stamp from the same boot, so re-running
//! `register` or restarting `untaint` never extends the deadline. `/run` is a
//! tmpfs, and the boot ID guards against a stamp that outlived its boot.
//! Without a valid stamp the deadline counts from boot itself, which is
//! never later than the stamp would have been.
//!
//! Time since boot is used rather than the wall clock because the wall
//! clock jumps at boot when NTP first syncs.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The clocks the deadline needs, faked in unit tests.
pub trait Clock {
    /// Time since boot, including suspend (`CLOCK_BOOTTIME`).
    fn since_boot(&self) -> std::io::Result<Duration>;
    /// This boot's ID (`/proc/sys/kernel/random/boot_id`).
    fn boot_id(&self) -> std::io::Result<String>;
}

/// The machine's clocks, read from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn since_boot(&self) -> std::io::Result<Duration> {
        let text = std::fs::read_to_string("/proc/uptime")?;
        parse_uptime(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/uptime: unexpected content {text:?}"),
            )
        })
    }

    fn boot_id(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
            .trim()
            .to_string())
    }
}

fn parse_uptime(text: &str) -> Option<Duration> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// What the start stamp holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stamp {
    pub boot_id: String,
    /// Milliseconds since boot when prewarm started.
    pub since_boot_ms: u64,
    /// Wall-clock time of writing, for people only.
    pub written_at: String,
}

/// Where the deadline counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// The start stamp of this boot: time since boot at start.
    Stamp(Duration),
    /// No valid stamp: boot itself.
    Boot,
}

impl Reference {
    /// Time since boot at the reference point.
    pub fn since_boot(self) -> Duration {
        match self {
            Reference::Stamp(d) => d,
            Reference::Boot => Duration::ZERO,
        }
    }
}

/// Writes the start stamp unless one from this boot exists; returns the
/// reference in force. Atomic, so a crash never leaves half a stamp.
pub fn ensure_stamp(path: &Path, clock: &impl Clock) -> std::io::Result<Reference> {
    if let Reference::Stamp(d) = read_reference(path, clock) {
        return Ok(Reference::Stamp(d));
    }
    let now = clock.since_boot()?;
    let stamp = Stamp {
        boot_id: clock.boot_id()?,
        since_boot_ms: now.as_millis() as u64,
        written_at: crate::time::rfc3339(std::time::SystemTime::now()),
    };
    let mut json = serde_json::to_vec_pretty(&stamp).map_err(std::io::Error::other)?;
    json.push(b'\n');
    crate::atomic::write_atomic(path, &json)?;
    Ok(Reference::Stamp(Duration::from_millis(stamp.since_boot_ms)))
}

/// The reference for this boot: the stamp if it is readable and from this
/// boot, otherwise boot itself.
pub fn read_reference(path: &Path, clock: &impl Clock) -> Reference {
    let Ok(bytes) = std::fs::read(path) else {
        return Reference::Boot;
    };
    let Ok(stamp) = serde_json::from_slice::<Stamp>(&bytes) else {
        tracing::warn!(path = %path.display(), "start stamp unreadable; counting the deadline from boot");
        return Reference::Boot;
    };
    match clock.boot_id() {
        Ok(id) if id == stamp.boot_id => {
            Reference::Stamp(Duration::from_millis(stamp.since_boot_ms))
        }
        _ => Reference::Boot,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A clock that tests move by hand.
    pub struct FakeClock {
        pub now: Mutex<Duration>,
        pub boot: String,
    }

    impl FakeClock {
        pub fn at(secs: u64) -> Self {
            FakeClock {
                now: Mutex::new(Duration::from_secs(secs)),
                boot: "boot-a".into(),
            }
        }
    }

    impl Clock for FakeClock {
        fn since_boot(&self) -> std::io::Result<Duration> {
            Ok(*self.now.lock().unwrap())
        }
        fn boot_id(&self) -> std::io::Result<String> {
            Ok(self.boot.clone())
        }
    }

    #[test]
    fn uptime_parses() {
        assert_eq!(
            parse_uptime("350735.47 234388.90\n"),
            Some(Duration::from_millis(350_735_470))
        );
        assert_eq!(parse_uptime("x"), None);
    }

    #[test]
    fn stamp_survives_reruns_but_not_reboots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/prewarm/started");
        let clock = FakeClock::at(30);
        assert_eq!(read_reference(&path, &clock), Reference::Boot);
        assert_eq!(
            ensure_stamp(&path, &clock).unwrap(),
            Reference::Stamp(Duration::from_secs(30))
        );
        *clock.now.lock().unwrap() = Duration::from_secs(500);
        // A second register on the same boot keeps the first stamp.
        assert_eq!(
            ensure_stamp(&path, &clock).unwrap(),
            Reference::Stamp(Duration::from_secs(30))
        );
        // A stamp from another boot does not count.
        let other = FakeClock {
            now: Mutex::new(Duration::from_secs(5)),
            boot: "boot-b".into(),
        };
        assert_eq!(read_reference(&path, &other), Reference::Boot);
        assert_eq!(
            ensure_stamp(&path, &other).unwrap(),
            Reference::Stamp(Duration::from_secs(5))
        );
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(read_reference(&path, &other), Reference::Boot);
    }
}
