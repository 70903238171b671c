//! Leadership as a token that every write checks. The elector moves its deadline forward after
//! each renewal and revokes it when the lease is lost; a write is refused before any request is
//! sent once the deadline has passed, and abandoned when the deadline passes while it waits
//! (on a hung connection, say), whether or not the renewing task has noticed yet.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

/// Whether this replica may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    /// No election (a single replica): always.
    Unconditional,
    /// Until then, on this replica's monotonic clock, unless renewed.
    Until(Instant),
    /// Never again in this process.
    Revoked,
}

/// Why a write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotLeader {
    #[error("this replica's leadership expired: the lease was not renewed in time")]
    Expired,
    #[error("this replica lost the lease")]
    Revoked,
}

/// Whether `term` allows a write at `now`. Pure.
fn check(term: Term, now: Instant) -> Result<(), NotLeader> {
    match term {
        Term::Unconditional => Ok(()),
        Term::Until(deadline) if now < deadline => Ok(()),
        Term::Until(_) => Err(NotLeader::Expired),
        Term::Revoked => Err(NotLeader::Revoked),
    }
}

/// A replica's leadership, shared by the elector and every writer.
#[derive(Clone, Debug)]
pub struct Leadership {
    term: Arc<watch::Sender<Term>>,
}

impl Leadership {
    /// For a replica that does not elect (`--leader-elect=false`): it always writes.
    pub fn unconditional() -> Self {
        Self::with(Term::Unconditional)
    }

    /// Leadership until `deadline`.
    pub fn until(deadline: Instant) -> Self {
        Self::with(Term::Until(deadline))
    }

    fn with(term: Term) -> Self {
        Self {
            term: Arc::new(watch::Sender::new(term)),
        }
    }

    /// Moves the deadline to `deadline` after a renewal. A revoked or expired leadership stays
    /// so: a renewal that arrives after the deadline passed cannot revive what the others may
    /// already have taken over.
    pub fn extend(&self, deadline: Instant) {
        let now = Instant::now();
        self.term.send_if_modified(|term| match *term {
            Term::Until(current) if now < current && deadline > current => {
                *term = Term::Until(deadline);
                true
            }
            _ => false,
        });
    }

    /// Ends the leadership for good.
    pub fn revoke(&self) {
        self.term.send_replace(Term::Revoked);
    }

    /// Whether a write may start now.
    pub fn check(&self) -> Result<(), NotLeader> {
        check(*self.term.borrow(), Instant::now())
    }

    /// The current deadline; None when unconditional.
    pub fn deadline(&self) -> Option<Instant> {
        match *self.term.borrow() {
            Term::Until(deadline) => Some(deadline),
            Term::Unconditional => None,
            // Already past.
            Term::Revoked => Some(Instant::now()),
        }
    }

    /// Resolves once this replica may no longer write: revoked, or the deadline passed
    /// without a renewal.
    pub async fn lost(&self) {
        let mut rx = self.term.subscribe();
        loop {
            let term = *rx.borrow_and_update();
            if check(term, Instant::now()).is_err() {
                return;
            }
            match term {
                Term::Until(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = rx.changed() => {}
                    }
                }
                _ => {
                    if rx.changed().await.is_err() {
                        // The sender lives in `self`; this is not reached.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }

    /// Runs `write` (an API request, not yet sent: futures do nothing until polled) only while
    /// this replica leads: refused before it starts once the deadline passed, and dropped,
    /// with its request, if the deadline passes while it waits.
    pub async fn write<F: Future>(&self, write: F) -> Result<F::Output, NotLeader> {
        self.check()?;
        tokio::pin!(write);
        tokio::select! {
            output = &mut write => Ok(output),
            _ = self.lost() => Err(self.check().err().unwrap_or(NotLeader::Expired)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_term_allows_writes_strictly_before_its_deadline() {
        let now = Instant::now();
        assert_eq!(check(Term::Unconditional, now), Ok(()));
        assert_eq!(check(Term::Until(now + MS), now), Ok(()));
        assert_eq!(check(Term::Until(now), now), Err(NotLeader::Expired));
        assert_eq!(check(Term::Revoked, now), Err(NotLeader::Revoked));
    }

    #[tokio::test]
    async fn after_the_deadline_a_write_is_refused_without_being_started() {
        let leadership = Leadership::until(Instant::now() - MS);
        let started = AtomicBool::new(false);
        let result = leadership
            .write(async {
                started.store(true, Ordering::SeqCst);
            })
            .await;
        assert_eq!(result, Err(NotLeader::Expired));
        assert!(
            !started.load(Ordering::SeqCst),
            "the request was never sent"
        );
    }

    #[tokio::test]
    async fn a_write_hung_past_the_deadline_is_abandoned() {
        let leadership = Leadership::until(Instant::now() + 50 * MS);
        let result = leadership.write(std::future::pending::<()>()).await;
        assert_eq!(result, Err(NotLeader::Expired));
        // And the replica knows it has lost.
        leadership.lost().await;
    }

    #[tokio::test]
    async fn a_renewal_while_a_write_waits_lets_it_finish() {
        let leadership = Leadership::until(Instant::now() + 50 * MS);
        let renewing = leadership.clone();
        let result = leadership
            .write(async move {
                renewing.extend(Instant::now() + Duration::from_secs(3600));
                tokio::time::sleep(100 * MS).await;
                7
            })
            .await;
        assert_eq!(result, Ok(7));
    }

    #[tokio::test]
    async fn revoked_or_expired_leadership_cannot_be_renewed() {
        let leadership = Leadership::until(Instant::now() + Duration::from_secs(3600));
        leadership.revoke();
        leadership.extend(Instant::now() + Duration::from_secs(7200));
        assert_eq!(leadership.check(), Err(NotLeader::Revoked));
        leadership.lost().await;

        let expired = Leadership::until(Instant::now() - MS);
        expired.extend(Instant::now() + Duration::from_secs(3600));
        assert_eq!(expired.check(), Err(NotLeader::Expired));
    }

    #[tokio::test]
    async fn without_an_election_every_write_goes_through() {
        let leadership = Leadership::unconditional();
        assert_eq!(leadership.write(async { 1 }).await, Ok(1));
        assert_eq!(leadership.deadline(), None);
    }
}
