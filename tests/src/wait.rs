//! Waiting for a condition with a deadline, instead of sleeping and hoping.

use std::time::{Duration, Instant};

use anyhow::bail;

const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` every 20 ms until it returns `Ok(true)` or `timeout` passes. An error
/// from the condition counts as "not yet" and is reported if the deadline passes.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    wait_until_ok(timeout, what, || match condition() {
        Ok(true) => Ok(()),
        Ok(false) => bail!("condition not met yet"),
        Err(e) => Err(e),
    })
}

/// Polls `attempt` every 20 ms until it returns `Ok`, and returns that value; after
/// `timeout` the error names `what` and carries the last attempt's error.
pub fn wait_until_ok<T>(
    timeout: Duration,
    what: &str,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting for {what}: {e:#}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut calls = 0;
        wait_until(Duration::from_secs(5), "three calls", || {
            calls += 1;
            Ok(calls >= 3)
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn times_out_with_the_last_error() {
        let err = wait_until_ok::<()>(Duration::from_millis(50), "nothing", || {
            bail!("still broken")
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("waiting for nothing") && err.contains("still broken"),
            "{err}"
        );
    }
}
