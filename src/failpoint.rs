//! Pause points for the fault tests, in debug builds only: with
//! `PREWARM_FAILPOINT=<name>` in its environment, prewarm stops for good at
//! the point of that name, after creating the file
//! `PREWARM_FAILPOINT_FILE` names, so a test knows when to kill it there.
//! Release builds (what ships) compile the points to nothing.

/// Stops here for good when the environment names `point`.
#[cfg(debug_assertions)]
pub fn pause(point: &str) {
    if std::env::var("PREWARM_FAILPOINT").as_deref() != Ok(point) {
        return;
    }
    tracing::warn!(point, "stopped at a failpoint (a test build's hook)");
    if let Some(file) = std::env::var_os("PREWARM_FAILPOINT_FILE") {
        let _ = std::fs::write(file, point);
    }
    loop {
        std::thread::park();
    }
}

/// Release builds: no failpoints.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn pause(_point: &str) {}
