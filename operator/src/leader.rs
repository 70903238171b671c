//! Leader election through a coordination.k8s.io Lease, so that of several operator replicas
//! only one writes. The holder renews the lease; a replica that cannot renew within the lease
//! duration stops (and is restarted as a follower); on shutdown the holder releases it so a
//! follower takes over at once instead of after the lease expires.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// Lease timing.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTiming {
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews, and how often a follower retries.
    pub retry: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// Whether `identity` may take the lease at `now`: nobody holds it, we hold it, or the holder
/// stopped renewing for longer than the lease's duration.
pub fn may_acquire(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => {
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
                None => true,
                Some(MicroTime(renewed)) => renewed
                    .saturating_add(duration)
                    .is_ok_and(|expiry| expiry < now),
            }
        }
    }
}

/// One replica's participation in the election.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
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
        }
    }

    /// Tries once to take or renew the lease; true when this replica holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        if !may_acquire(&current, &self.identity, now) {
            return Ok(false);
        }
        let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
        let acquired = if ours {
            current.acquire_time.map(|t| t.0).unwrap_or(now)
        } else {
            now
        };
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(self.spec(acquired, now, transitions));
        // The resourceVersion in `lease` makes this a compare-and-swap: of two replicas racing
        // for an expired lease, one gets 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.duration.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(identity = %self.identity, lease = %self.name, "became the leader");
                    return;
                }
                Ok(false) => {
                    if !logged {
                        info!(identity = %self.identity, lease = %self.name, "another replica leads; standing by");
                        logged = true;
                    }
                }
                Err(e) => warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renews the lease until a renewal has failed for longer than the lease duration (someone
    /// else may hold it by then); returns at that point.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(identity = %self.identity, "lost the lease to another replica");
                    return;
                }
                Err(e) => warn!(error = %e, "could not renew the lease"),
            }
            // Stop writing before the lease can expire: the others may take it after
            // `duration`, so a margin of one retry keeps two leaders from overlapping.
            if last_renewed.elapsed() + self.timing.retry >= self.timing.duration {
                warn!(identity = %self.identity, "could not renew the lease in time");
                return;
            }
        }
    }

    /// Gives the lease up so a follower takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(identity = %self.identity, "released the lease"),
            Err(e) => warn!(error = %e, "could not release the lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..Default::default()
        }
    }

    #[test]
    fn free_or_own_lease_can_be_taken() {
        let now = Timestamp::now();
        assert!(may_acquire(&spec(None, 1, now), "a", now));
        assert!(may_acquire(&spec(Some(""), 1, now), "a", now));
        assert!(may_acquire(&spec(Some("a"), 1, now), "a", now));
    }

    #[test]
    fn someone_elses_lease_only_after_it_expired() {
        let now = Timestamp::now();
        assert!(!may_acquire(&spec(Some("b"), 5, now), "a", now));
        assert!(!may_acquire(&spec(Some("b"), 15, now), "a", now));
        assert!(may_acquire(&spec(Some("b"), 16, now), "a", now));
    }
}
