//! The election's decisions, pure, after client-go's `leaderelection` package.
//!
//! Two clocks are never compared. Another replica's lease is judged by when *this* replica last
//! saw the record change, on its own monotonic clock, plus the lease's duration; the record's
//! `renewTime` is the holder's wall clock and only tells that something changed. The leader
//! judges itself by when it *started* its last successful renewal plus the renew deadline, which
//! is shorter than the lease duration: it stops writing before any other replica can have seen
//! its lease expire, whatever the skew between their wall clocks.

use std::time::Duration;

use tokio::time::Instant;

/// Lease timing (client-go's LeaseDuration, RenewDeadline and RetryPeriod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long another replica waits, after it last saw the lease record change, before it
    /// takes the lease. Written into the Lease as `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// How long the leader keeps writing after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// The pause between two attempts to take or renew the lease.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// Timing from the command line: the renew deadline defaults to two thirds of the lease
    /// duration and the retry period to a seventh of it, in whole seconds (15 s → 10 s and 2 s,
    /// client-go's defaults), at least a second each. Errors name the flag that is out of order.
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Option<Duration>,
        retry_period: Option<Duration>,
    ) -> Result<Self, String> {
        let secs = lease_duration.as_secs();
        let renew_deadline = renew_deadline.unwrap_or(Duration::from_secs((secs * 2 / 3).max(1)));
        let retry_period = retry_period.unwrap_or(Duration::from_secs((secs / 7).max(1)));
        if renew_deadline >= lease_duration {
            return Err(format!(
                "--lease-renew-deadline-seconds ({}s) must be shorter than --lease-duration-seconds ({}s): the leader must stop writing before another replica may take over",
                renew_deadline.as_secs_f64(),
                lease_duration.as_secs_f64()
            ));
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(format!(
                "--lease-retry-period-seconds ({}s) must be above zero and shorter than the renew deadline ({}s), or the leader gets no second try",
                retry_period.as_secs_f64(),
                renew_deadline.as_secs_f64()
            ));
        }
        Ok(Self {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    /// The bound of one attempt (each of its requests): half the renew deadline, so that a
    /// request hung on a dead connection leaves time for another on a fresh one.
    pub fn attempt_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }

    /// Until when the leader may write after a renewal that started at `attempt_started` and
    /// succeeded. From the start, not the answer: the apiserver may have written the renewal
    /// (and the others seen it) any time after the request left.
    pub fn deadline_after_renewal(&self, attempt_started: Instant) -> Instant {
        attempt_started + self.renew_deadline
    }
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self::new(Duration::from_secs(15), None, None).unwrap_or(Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        })
    }
}

/// What the election reads of a Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `spec.holderIdentity`; None when empty (released).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds`, as the holder declared it.
    pub lease_duration: Option<Duration>,
    /// `spec.renewTime` as written: the holder's clock, compared only for change.
    pub renew_time: Option<String>,
    /// `metadata.resourceVersion`: any write changes it.
    pub resource_version: Option<String>,
}

/// A record and when this replica first saw it in this form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub record: LeaseRecord,
    /// On this replica's monotonic clock.
    pub since: Instant,
}

/// Folds a freshly read record into what was observed before: the observation time moves only
/// when the record changed.
pub fn observe(previous: Option<&Observed>, record: LeaseRecord, now: Instant) -> Observed {
    match previous {
        Some(seen) if seen.record == record => seen.clone(),
        _ => Observed { record, since: now },
    }
}

/// Where this replica stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Candidate,
    /// Leading; may write until `deadline` unless a renewal moves it.
    Leader {
        deadline: Instant,
    },
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write ourselves as the holder: the lease is missing, released, ours from before, or
    /// unchanged for longer than its duration as far as this replica has seen.
    Acquire,
    /// We lead and the record says so: write a renewal.
    Renew,
    /// Another replica holds a lease that is valid, as far as this replica has seen, until
    /// `expires` on this replica's clock.
    Wait { holder: String, expires: Instant },
    /// We led, and either our deadline passed or the record names another holder (or none):
    /// stop writing now.
    Lost,
}

/// The next step, given the role, the last observation of the record (None: there is no Lease)
/// and the time on this replica's monotonic clock.
pub fn decide(
    role: Role,
    observed: Option<&Observed>,
    identity: &str,
    timing: &LeaseTiming,
    now: Instant,
) -> Step {
    let holder = observed.and_then(|o| o.record.holder.as_deref());
    match role {
        Role::Leader { deadline } if now >= deadline => Step::Lost,
        Role::Leader { .. } => match (observed, holder) {
            // Deleted under us: take it again (a create, which fails if another was faster).
            (None, _) => Step::Acquire,
            (Some(_), Some(h)) if h == identity => Step::Renew,
            (Some(_), _) => Step::Lost,
        },
        Role::Candidate => match (observed, holder) {
            (None, _) | (Some(_), None) => Step::Acquire,
            // A previous process of this identity (same pod name) held it.
            (Some(_), Some(h)) if h == identity => Step::Acquire,
            (Some(seen), Some(h)) => {
                let duration = seen.record.lease_duration.unwrap_or(timing.lease_duration);
                let expires = seen.since + duration;
                if now >= expires {
                    Step::Acquire
                } else {
                    Step::Wait {
                        holder: h.to_string(),
                        expires,
                    }
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timing() -> LeaseTiming {
        LeaseTiming::new(15 * S, None, None).expect("valid")
    }

    fn record(holder: Option<&str>, renew_time: &str, version: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_string),
            lease_duration: Some(15 * S),
            renew_time: Some(renew_time.to_string()),
            resource_version: Some(version.to_string()),
        }
    }

    fn seen(record: LeaseRecord, since: Instant) -> Observed {
        Observed { record, since }
    }

    #[test]
    fn timing_defaults_follow_client_go_and_bad_orders_name_the_flag() {
        assert_eq!(
            timing(),
            LeaseTiming {
                lease_duration: 15 * S,
                renew_deadline: 10 * S,
                retry_period: 2 * S,
            }
        );
        assert_eq!(LeaseTiming::default(), timing());
        let short = LeaseTiming::new(6 * S, None, None).expect("valid");
        assert_eq!((short.renew_deadline, short.retry_period), (4 * S, S));
        assert_eq!(short.attempt_timeout(), 2 * S);
        let err = LeaseTiming::new(6 * S, Some(6 * S), None).expect_err("deadline too long");
        assert!(err.contains("--lease-renew-deadline-seconds"), "{err}");
        let err = LeaseTiming::new(6 * S, Some(4 * S), Some(4 * S)).expect_err("retry too long");
        assert!(err.contains("--lease-retry-period-seconds"), "{err}");
        let err = LeaseTiming::new(6 * S, Some(4 * S), Some(Duration::ZERO)).expect_err("zero");
        assert!(err.contains("--lease-retry-period-seconds"), "{err}");
    }

    #[test]
    fn the_deadline_counts_from_the_start_of_the_renewal() {
        let t0 = Instant::now();
        assert_eq!(timing().deadline_after_renewal(t0), t0 + 10 * S);
    }

    #[test]
    fn observation_time_moves_only_when_the_record_changes() {
        let t0 = Instant::now();
        let first = observe(None, record(Some("b"), "r1", "1"), t0);
        assert_eq!(first.since, t0);
        let same = observe(Some(&first), record(Some("b"), "r1", "1"), t0 + 5 * S);
        assert_eq!(
            same.since, t0,
            "an unchanged record keeps its observation time"
        );
        for changed in [
            record(Some("b"), "r2", "1"),
            record(Some("b"), "r1", "2"),
            record(Some("c"), "r1", "1"),
            record(None, "r1", "1"),
        ] {
            let next = observe(Some(&first), changed.clone(), t0 + 5 * S);
            assert_eq!(next, seen(changed, t0 + 5 * S));
        }
    }

    #[test]
    fn a_candidate_takes_a_missing_released_or_own_lease_at_once() {
        let now = Instant::now();
        let t = timing();
        assert_eq!(decide(Role::Candidate, None, "a", &t, now), Step::Acquire);
        let released = seen(record(None, "r1", "1"), now);
        assert_eq!(
            decide(Role::Candidate, Some(&released), "a", &t, now),
            Step::Acquire
        );
        let own = seen(record(Some("a"), "r1", "1"), now);
        assert_eq!(
            decide(Role::Candidate, Some(&own), "a", &t, now),
            Step::Acquire
        );
    }

    #[test]
    fn a_candidate_waits_a_full_lease_duration_from_the_last_change_it_saw() {
        let t0 = Instant::now();
        let t = timing();
        let held = seen(record(Some("b"), "r1", "1"), t0);
        let wait = Step::Wait {
            holder: "b".to_string(),
            expires: t0 + 15 * S,
        };
        assert_eq!(decide(Role::Candidate, Some(&held), "a", &t, t0), wait);
        assert_eq!(
            decide(
                Role::Candidate,
                Some(&held),
                "a",
                &t,
                t0 + 15 * S - Duration::from_millis(1)
            ),
            wait
        );
        assert_eq!(
            decide(Role::Candidate, Some(&held), "a", &t, t0 + 15 * S),
            Step::Acquire
        );
        // The holder's declared duration counts, not ours.
        let mut long = held.clone();
        long.record.lease_duration = Some(60 * S);
        assert!(matches!(
            decide(Role::Candidate, Some(&long), "a", &t, t0 + 30 * S),
            Step::Wait { .. }
        ));
        // Without one, ours.
        long.record.lease_duration = None;
        assert_eq!(
            decide(Role::Candidate, Some(&long), "a", &t, t0 + 15 * S),
            Step::Acquire
        );
    }

    /// The holder's `renewTime` is its wall clock. Whether that clock is an hour behind or an
    /// hour ahead of ours, a record that keeps changing is alive and one that stopped changing
    /// expires a lease duration after we saw it last change.
    #[test]
    fn clock_skew_either_way_changes_nothing() {
        let t0 = Instant::now();
        let t = timing();
        // Our wall clock would read about 11:00; the holder's reads 10:00, 12:00, or jumps.
        for (first, second) in [
            ("2026-01-01T10:00:00.000000Z", "2026-01-01T10:00:02.000000Z"),
            ("2026-01-01T12:00:00.000000Z", "2026-01-01T12:00:02.000000Z"),
            ("2026-01-01T12:00:00.000000Z", "2026-01-01T10:00:00.000000Z"),
        ] {
            // A holder that renews every 2 s stays valid for as long as it renews.
            let mut observed = observe(None, record(Some("b"), first, "1"), t0);
            observed = observe(Some(&observed), record(Some("b"), second, "2"), t0 + 14 * S);
            assert!(
                matches!(
                    decide(Role::Candidate, Some(&observed), "a", &t, t0 + 20 * S),
                    Step::Wait { .. }
                ),
                "renewTime {second}"
            );
            // One that stopped renewing expires on our clock, whatever its renewTime says.
            let stopped = observe(Some(&observed), record(Some("b"), second, "2"), t0 + 25 * S);
            assert_eq!(stopped.since, t0 + 14 * S);
            assert_eq!(
                decide(Role::Candidate, Some(&stopped), "a", &t, t0 + 29 * S),
                Step::Acquire,
                "renewTime {second}"
            );
        }
    }

    #[test]
    fn a_leader_renews_until_its_deadline_then_has_lost() {
        let t0 = Instant::now();
        let t = timing();
        let leader = Role::Leader {
            deadline: t.deadline_after_renewal(t0),
        };
        let ours = seen(record(Some("a"), "r1", "1"), t0);
        assert_eq!(decide(leader, Some(&ours), "a", &t, t0 + S), Step::Renew);
        assert_eq!(
            decide(
                leader,
                Some(&ours),
                "a",
                &t,
                t0 + 10 * S - Duration::from_millis(1)
            ),
            Step::Renew
        );
        assert_eq!(
            decide(leader, Some(&ours), "a", &t, t0 + 10 * S),
            Step::Lost
        );
        // The deadline is ours alone: a record that still names us does not extend it.
        assert_eq!(
            decide(leader, Some(&ours), "a", &t, t0 + 60 * S),
            Step::Lost
        );
        // No record at all after the deadline: still lost.
        assert_eq!(decide(leader, None, "a", &t, t0 + 10 * S), Step::Lost);
    }

    #[test]
    fn a_leader_that_sees_another_holder_or_none_has_lost_at_once() {
        let t0 = Instant::now();
        let t = timing();
        let leader = Role::Leader {
            deadline: t0 + 10 * S,
        };
        let taken = seen(record(Some("b"), "r1", "2"), t0);
        assert_eq!(decide(leader, Some(&taken), "a", &t, t0 + S), Step::Lost);
        let cleared = seen(record(None, "r1", "2"), t0);
        assert_eq!(decide(leader, Some(&cleared), "a", &t, t0 + S), Step::Lost);
        // Deleted under a leader still in time: it writes itself in again.
        assert_eq!(decide(leader, None, "a", &t, t0 + S), Step::Acquire);
    }
}
