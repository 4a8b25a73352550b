//! The one retry policy: a capped number of attempts with exponential
//! backoff under a ceiling. Unit tests set the delays to zero.

use std::time::Duration;

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

    /// The delay before attempt `n` (1-based retry count).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.ceiling)
    }

    /// Runs `f` until it succeeds, fails with an error `retryable` says no
    /// to, or the attempts run out. `f` gets the attempt number (0-based).
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        retryable: impl Fn(&E) -> bool,
        f: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.attempts(None, what, retryable, f).await
    }

    /// Like [`Retry::run`], and also stops at `until`, after one last
    /// attempt there: for waits bounded by a deadline rather than a count
    /// (set `retries` to `u32::MAX` for those).
    pub async fn run_until<T, E, F, Fut>(
        &self,
        until: tokio::time::Instant,
        what: &str,
        retryable: impl Fn(&E) -> bool,
        f: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.attempts(Some(until), what, retryable, f).await
    }

    async fn attempts<T, E, F, Fut>(
        &self,
        until: Option<tokio::time::Instant>,
        what: &str,
        retryable: impl Fn(&E) -> bool,
        mut f: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut attempt = 0;
        loop {
            match f(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.retries && retryable(&e) => {
                    attempt += 1;
                    let mut delay = self.delay(attempt);
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
                Err(e) => return Err(e),
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
