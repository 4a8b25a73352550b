//! One token bucket shared by every download.
//!
//! Tokens are bytes. A caller takes what it is about to send and, when the
//! bucket runs into debt, sleeps until the debt is repaid at the configured
//! rate. The bucket never holds more than `burst` bytes, so an idle period
//! cannot be spent later as a spike.

use std::num::NonZeroU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A shared byte-rate limiter. `None` rate means unlimited.
#[derive(Debug)]
pub struct Bandwidth {
    rate: Option<NonZeroU64>,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

impl Bandwidth {
    /// A limiter at `rate` bytes/s with a burst of a tenth of a second's
    /// worth, and at least 64 KiB.
    pub fn new(rate: Option<NonZeroU64>) -> Self {
        let burst = rate.map_or(0.0, |r| (r.get() as f64 / 10.0).max(64.0 * 1024.0));
        Bandwidth {
            rate,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> Option<NonZeroU64> {
        self.rate
    }

    /// How long the caller must wait before sending `bytes` at `now`; the
    /// bytes are accounted for either way.
    pub fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let rate = rate.get() as f64;
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.last = s.last.max(now);
        s.tokens = (s.tokens + elapsed * rate).min(self.burst);
        s.tokens -= bytes as f64;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / rate)
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: u64) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let b = Bandwidth::new(None);
        assert_eq!(b.reserve(u64::MAX, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn debt_is_repaid_at_the_rate() {
        let rate = NonZeroU64::new(10 << 20).unwrap();
        let b = Bandwidth::new(Some(rate));
        let t0 = Instant::now();
        // The burst (1 MiB) goes at once; the next 10 MiB cost one second.
        assert_eq!(b.reserve(1 << 20, t0), Duration::ZERO);
        let w = b.reserve(10 << 20, t0);
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-6, "{w:?}");
        // Sending the whole of a long period's budget keeps the average.
        let mut t = t0;
        let mut sent = 0u64;
        let mut waited = Duration::ZERO;
        for _ in 0..100 {
            let w = b.reserve(1 << 20, t);
            waited += w;
            t += w;
            sent += 1 << 20;
        }
        let achieved = sent as f64 / (t - t0).as_secs_f64();
        // 100 MiB over ~11 s (1 s of earlier debt included) at 10 MiB/s.
        assert!(achieved <= rate.get() as f64 * 1.001, "{achieved}");
        assert!(achieved >= rate.get() as f64 * 0.85, "{achieved}");
    }

    #[test]
    fn idle_time_does_not_build_a_spike() {
        let rate = NonZeroU64::new(1 << 20).unwrap();
        let b = Bandwidth::new(Some(rate));
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        // After a minute idle only the burst is free, not 60 MiB.
        assert_eq!(b.reserve(64 << 10, later), Duration::ZERO);
        assert!(b.reserve(1 << 20, later) > Duration::from_millis(900));
    }
}
