//! Leader election through a coordination.k8s.io Lease, so that of several operator replicas
//! only one writes, by client-go's rules (see [`decision`]): every request of the election is
//! bounded in time, the leader stops writing once it has not renewed within the renew deadline
//! (every write checks its [`Leadership`]), and another holder's lease is judged by when this
//! replica saw the record change, never by the holder's clock.
//!
//! A deposed leader exits (`lexserve-operator run` returns a failure), as kube-controller-manager
//! does, rather than becoming a candidate again in the same process: whatever the old term left
//! behind (a reconcile stuck on a hung connection, a request queued in a pool) dies with the
//! process, and the restarted container starts as a plain candidate with no caches.

pub mod decision;
pub mod leadership;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

pub use decision::{LeaseRecord, LeaseTiming, Observed, Role, Step, decide, observe};
pub use leadership::{Leadership, NotLeader};

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    /// The lease is ours: our write succeeded.
    Held,
    /// Someone else holds it (or won the race to write it).
    Waiting,
    /// We led and no longer do.
    Lost,
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(std::time::Duration),
}

/// One replica's participation in the election.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    /// The record as last read, and since when it has looked like that.
    observed: Option<Observed>,
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            observed: None,
        }
    }

    /// Waits until this replica holds the lease; its leadership lasts until the renew deadline
    /// after the attempt that took it, and [`Self::hold`] extends it.
    pub async fn acquire(&mut self) -> Leadership {
        let mut logged = false;
        loop {
            let started = Instant::now();
            match self.attempt(Role::Candidate).await {
                Ok(Attempt::Held) => {
                    info!(identity = %self.identity, lease = %self.name, "became the leader");
                    return Leadership::until(self.timing.deadline_after_renewal(started));
                }
                Ok(_) => {
                    if !logged {
                        info!(identity = %self.identity, lease = %self.name, "another replica leads; standing by");
                        logged = true;
                    }
                }
                Err(e) => warn!(error = %e, lease = %self.name, "leader election"),
            }
            tokio::time::sleep_until(started + self.timing.retry_period).await;
        }
    }

    /// Renews the lease every retry period, moving `leadership`'s deadline after each success,
    /// until the lease is lost (the deadline passed without a renewal, or the record names
    /// another holder; `leadership` is then revoked) or `stop` resolves (the lease is then
    /// released, if still ours, so a follower takes over at once). Returns whether it was lost.
    pub async fn hold(
        &mut self,
        leadership: &Leadership,
        stop: impl std::future::Future<Output = ()>,
    ) -> bool {
        tokio::pin!(stop);
        loop {
            let Some(deadline) = leadership.deadline() else {
                return false;
            };
            let started = Instant::now();
            if started >= deadline {
                return self.lost(
                    leadership,
                    "could not renew the lease before the renew deadline",
                );
            }
            match self.attempt(Role::Leader { deadline }).await {
                Ok(Attempt::Held) => {
                    leadership.extend(self.timing.deadline_after_renewal(started));
                }
                Ok(Attempt::Lost) => {
                    return self.lost(leadership, "the lease names another holder, or none");
                }
                Ok(Attempt::Waiting) => {
                    return self.lost(leadership, "another replica won the lease");
                }
                Err(e) => warn!(error = %e, lease = %self.name, "could not renew the lease"),
            }
            if leadership.check().is_err() {
                return self.lost(
                    leadership,
                    "could not renew the lease before the renew deadline",
                );
            }
            tokio::select! {
                _ = tokio::time::sleep_until(started + self.timing.retry_period) => {}
                _ = leadership.lost() => {
                    return self.lost(leadership, "could not renew the lease before the renew deadline");
                }
                _ = &mut stop => {
                    self.release(leadership).await;
                    return false;
                }
            }
        }
    }

    fn lost(&self, leadership: &Leadership, why: &str) -> bool {
        leadership.revoke();
        warn!(identity = %self.identity, lease = %self.name, "lost the lease: {why}");
        true
    }

    /// One read of the lease and, when [`decide`] says so, one write; every request bounded by
    /// the attempt timeout and, for a leader, by its deadline.
    async fn attempt(&mut self, role: Role) -> Result<Attempt, AttemptError> {
        let mut limit = Instant::now() + self.timing.attempt_timeout();
        if let Role::Leader { deadline } = role {
            limit = limit.min(deadline);
        }
        let lease = within(limit, self.api.get_opt(&self.name)).await?;
        let now = Instant::now();
        self.observed = lease
            .as_ref()
            .map(|l| observe(self.observed.as_ref(), record_of(l), now));
        match decide(
            role,
            self.observed.as_ref(),
            &self.identity,
            &self.timing,
            now,
        ) {
            Step::Lost => return Ok(Attempt::Lost),
            Step::Wait { .. } => return Ok(Attempt::Waiting),
            Step::Acquire | Step::Renew => {}
        }
        let wall = Timestamp::now();
        let write = async {
            match lease {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            ..Default::default()
                        },
                        spec: Some(self.spec(wall, wall, 0)),
                    };
                    self.api.create(&PostParams::default(), &lease).await
                }
                Some(mut lease) => {
                    let current = lease.spec.clone().unwrap_or_default();
                    let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
                    let acquired = match (&current.acquire_time, ours) {
                        (Some(MicroTime(t)), true) => *t,
                        _ => wall,
                    };
                    let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
                    lease.spec = Some(self.spec(acquired, wall, transitions));
                    // The resourceVersion read above makes this a compare-and-swap: of two
                    // replicas writing the same record, one gets 409.
                    self.api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await
                }
            }
        };
        match within(limit, write).await {
            Ok(lease) => {
                let now = Instant::now();
                self.observed = Some(observe(self.observed.as_ref(), record_of(&lease), now));
                Ok(Attempt::Held)
            }
            Err(AttemptError::Kube(kube::Error::Api(s))) if s.code == 409 => Ok(match role {
                Role::Candidate => Attempt::Waiting,
                Role::Leader { .. } => Attempt::Lost,
            }),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Gives the lease up so a follower takes over at once; only while still leading (a
    /// compare-and-swap, so a lease taken meanwhile is left alone).
    async fn release(&mut self, leadership: &Leadership) {
        let limit = Instant::now() + self.timing.attempt_timeout();
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(false);
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(false);
            };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str())
                || leadership.check().is_err()
            {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.renew_time = None;
            spec.acquire_time = None;
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match tokio::time::timeout_at(limit, release).await {
            Ok(Ok(true)) => {
                leadership.revoke();
                info!(identity = %self.identity, "released the lease");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "could not release the lease"),
            Err(_) => warn!("could not release the lease: no answer in time"),
        }
    }
}

/// `request`, given up at `limit`.
async fn within<T>(
    limit: Instant,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, AttemptError> {
    let timeout = limit.saturating_duration_since(Instant::now());
    match tokio::time::timeout_at(limit, request).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(AttemptError::TimedOut(timeout)),
    }
}

/// The parts of `lease` the election decides on.
fn record_of(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.as_ref();
    LeaseRecord {
        holder: spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        lease_duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map(std::time::Duration::from_secs),
        renew_time: spec
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.to_string()),
        resource_version: lease.metadata.resource_version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_holder_duration_renewal_and_version() {
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("42".to_string()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("b".to_string()),
                lease_duration_seconds: Some(6),
                renew_time: Some(MicroTime(Timestamp::from_second(5).expect("valid"))),
                ..Default::default()
            }),
        };
        assert_eq!(
            record_of(&lease),
            LeaseRecord {
                holder: Some("b".to_string()),
                lease_duration: Some(std::time::Duration::from_secs(6)),
                renew_time: Some("1970-01-01T00:00:05Z".to_string()),
                resource_version: Some("42".to_string()),
            }
        );
        let released = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(-1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let record = record_of(&released);
        assert_eq!((record.holder, record.lease_duration), (None, None));
    }
}
