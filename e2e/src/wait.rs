//! Bounded waiting. Every wait in this crate has a deadline and says what it waited for when
//! the deadline passes: a test that hangs tells nobody anything.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Calls `check` every `interval` until it returns `Ok(Some(value))`, for at most `timeout`.
/// `Ok(None)` means "not yet"; an `Err` ends the wait at once (something broke for good).
/// On timeout, the error names `what` and the last "not yet" reason given by `last`.
pub async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await? {
            Poll::Ready(value) => return Ok(value),
            Poll::Pending(reason) => reason,
        };
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(interval).await;
    }
}

/// The answer of one check in [`until`].
#[derive(Debug)]
pub enum Poll<T> {
    /// Done, with this value.
    Ready(T),
    /// Not yet, for this reason (shown if the wait times out).
    Pending(String),
}

impl<T> Poll<T> {
    /// Not yet, with a reason.
    pub fn pending(reason: impl std::fmt::Display) -> Self {
        Poll::Pending(reason.to_string())
    }
}
