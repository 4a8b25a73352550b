//! The one retry policy: a capped number of attempts with exponential
//! backoff under a ceiling, each delay jittered (between half and all of
//! it) so that a fleet booting at once never retries in lockstep. A server
//! that says when to come back (`Retry-After` on a 429 or 503) is waited
//! for that long, plus up to a fifth more, however long the backoff would
//! be; the run's deadline bounds it. Unit tests set the delays to zero.

use std::time::Duration;

/// Whether a failed attempt is worth another, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    No,
    /// After the backoff.
    Backoff,
    /// After what the server asked for (`Retry-After`).
    After(Duration),
}

impl From<bool> for Again {
    fn from(retryable: bool) -> Self {
        if retryable {
            Again::Backoff
        } else {
            Again::No
        }
    }
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts after the first.
    pub retries: u32,
    pub base: Duration,
    pub ceiling: Duration,
}

impl Retry {
    pub fn new(retries: u32) -> Self {
        Retry {
            retries,
            base: Duration::from_millis(200),
            ceiling: Duration::from_secs(10),
        }
    }

    /// The delay before attempt `n` (1-based retry count), before jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.ceiling)
    }

    /// The wait before attempt `n` when the last one said `again`, with
    /// `unit` (uniform in 0..1) as the jitter.
    pub fn wait(&self, n: u32, again: Again, unit: f64) -> Duration {
        let backoff = self.delay(n);
        let jittered = backoff.mul_f64(0.5 + unit / 2.0);
        match again {
            Again::After(asked) => asked.max(jittered) + asked.mul_f64(unit / 5.0),
            _ => jittered,
        }
    }

    /// Runs `f` until it succeeds, fails with an error `retryable` says no
    /// to, or the attempts run out. `f` gets the attempt number (0-based).
    pub async fn run<T, E, A, F, Fut>(
        &self,
        what: &str,
        retryable: impl Fn(&E) -> A,
        f: F,
    ) -> Result<T, E>
    where
        A: Into<Again>,
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.attempts(None, what, retryable, f).await
    }

    /// Like [`Retry::run`], and also stops at `until`, after one last
    /// attempt there: for waits bounded by a deadline rather than a count
    /// (set `retries` to `u32::MAX` for those).
    pub async fn run_until<T, E, A, F, Fut>(
        &self,
        until: tokio::time::Instant,
        what: &str,
        retryable: impl Fn(&E) -> A,
        f: F,
    ) -> Result<T, E>
    where
        A: Into<Again>,
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.attempts(Some(until), what, retryable, f).await
    }

    async fn attempts<T, E, A, F, Fut>(
        &self,
        until: Option<tokio::time::Instant>,
        what: &str,
        retryable: impl Fn(&E) -> A,
        mut f: F,
    ) -> Result<T, E>
    where
        A: Into<Again>,
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut attempt = 0;
        loop {
            let e = match f(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let again = retryable(&e).into();
            match again {
                _ if attempt >= self.retries => return Err(e),
                Again::No => return Err(e),
                Again::Backoff | Again::After(_) => {
                    attempt += 1;
                    let mut delay = self.wait(attempt, again, fastrand::f64());
                    if let Some(until) = until {
                        let now = tokio::time::Instant::now();
                        if now >= until {
                            return Err(e);
                        }
                        // One last attempt at `until` rather than giving up early.
                        delay = delay.min(until - now);
                        tracing::debug!(%e, attempt, ?delay, "retrying {what}");
                    } else {
                        tracing::warn!(%e, attempt, ?delay, "retrying {what}");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let r = Retry::new(10);
        assert_eq!(r.delay(1), Duration::from_millis(200));
        assert_eq!(r.delay(3), Duration::from_millis(800));
        assert_eq!(r.delay(30), Duration::from_secs(10));
    }

    #[test]
    fn waits_are_jittered_and_a_server_s_word_is_kept() {
        let r = Retry::new(10);
        // Between half and all of the backoff.
        assert_eq!(r.wait(3, Again::Backoff, 0.0), Duration::from_millis(400));
        assert_eq!(r.wait(3, Again::Backoff, 1.0), Duration::from_millis(800));
        let some: Vec<Duration> = (0..20)
            .map(|_| r.wait(3, Again::Backoff, fastrand::f64()))
            .collect();
        assert!(some.iter().any(|d| *d != some[0]), "{some:?}");
        // Retry-After: never sooner, up to a fifth later, past the ceiling.
        let asked = Duration::from_secs(30);
        assert_eq!(r.wait(1, Again::After(asked), 0.0), asked);
        assert_eq!(r.wait(1, Again::After(asked), 1.0), Duration::from_secs(36));
        // A backoff longer than what was asked still holds.
        assert_eq!(
            r.wait(6, Again::After(Duration::from_secs(1)), 1.0),
            Duration::from_millis(6400) + Duration::from_millis(200)
        );
    }

    #[tokio::test]
    async fn stops_on_permanent_errors_and_after_the_cap() {
        let r = Retry {
            retries: 3,
            base: Duration::ZERO,
            ceiling: Duration::ZERO,
        };
        let mut calls = 0;
        let out: Result<(), String> = r
            .run(
                "x",
                |e: &String| e == "again",
                |_| {
                    calls += 1;
                    async { Err("again".to_string()) }
                },
            )
            .await;
        assert!(out.is_err());
        assert_eq!(calls, 4);
        let mut calls = 0;
        let _: Result<(), String> = r
            .run(
                "x",
                |e: &String| e == "again",
                |_| {
                    calls += 1;
                    async { Err("fatal".to_string()) }
                },
            )
            .await;
        assert_eq!(calls, 1);
    }
}
