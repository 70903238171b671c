//! The last known state of each autoscaled InferenceService's load signal, with the grace
//! period before a missing signal counts. Per-object memory kept beside the backoff and the
//! apply residuals in the [`Context`](super::context::Context); the InferenceService
//! controller's `scaling_signal` task fills it, its status phase reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::api::InferenceService;
use crate::metrics_api::load::SignalMissing;

/// What the status should say about a service's signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalCondition {
    /// Measured.
    Available,
    /// Missing for longer than the grace period.
    Missing(SignalMissing),
}

#[derive(Clone, Debug)]
struct Entry {
    /// The last check's outcome.
    last: Result<(), SignalMissing>,
    /// When the signal went missing (the first of consecutive failed checks).
    missing_since: Option<Instant>,
    /// What the condition said after the previous check.
    reported: Option<SignalCondition>,
}

impl Entry {
    fn condition(&self, now: Instant, grace: Duration) -> SignalCondition {
        match (&self.last, self.missing_since) {
            (Err(missing), Some(since)) if now.duration_since(since) >= grace => {
                SignalCondition::Missing(missing.clone())
            }
            // Missing, but within the grace period: still reported as available.
            _ => SignalCondition::Available,
        }
    }
}

/// The last known state of every autoscaled service's signal.
#[derive(Clone, Default)]
pub struct SignalBoard {
    entries: Arc<Mutex<HashMap<ObjectRef<InferenceService>, Entry>>>,
    grace: Duration,
}

impl SignalBoard {
    pub fn new(grace: Duration) -> Self {
        Self {
            entries: Arc::default(),
            grace,
        }
    }

    /// Records a check's outcome, and returns what the condition should now say when that
    /// differs from what it said after the previous check (a grace period running out counts).
    pub fn record(
        &self,
        key: ObjectRef<InferenceService>,
        outcome: Result<(), SignalMissing>,
        now: Instant,
    ) -> Option<SignalCondition> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let previous = entries.get(&key);
        let missing_since = match (&outcome, previous) {
            (Ok(()), _) => None,
            (
                Err(_),
                Some(Entry {
                    missing_since: Some(since),
                    ..
                }),
            ) => Some(*since),
            (Err(_), _) => Some(now),
        };
        let reported = previous.and_then(|e| e.reported.clone());
        let mut entry = Entry {
            last: outcome,
            missing_since,
            reported: None,
        };
        let current = entry.condition(now, self.grace);
        entry.reported = Some(current.clone());
        entries.insert(key, entry);
        (reported.as_ref() != Some(&current)).then_some(current)
    }

    /// What the condition should say now; None when the service has not been checked yet.
    pub fn condition(
        &self,
        key: &ObjectRef<InferenceService>,
        now: Instant,
    ) -> Option<SignalCondition> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Some(entries.get(key)?.condition(now, self.grace))
    }

    /// Forgets services that no longer exist or no longer autoscale.
    pub fn retain(&self, keep: impl Fn(&ObjectRef<InferenceService>) -> bool) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectRef<InferenceService> {
        ObjectRef::new("minilm").within("team-a")
    }

    fn down() -> SignalMissing {
        SignalMissing::PrometheusUnavailable {
            url: "http://prom".into(),
            error: "connection refused".into(),
        }
    }

    #[test]
    fn unchecked_services_have_no_condition() {
        let board = SignalBoard::new(Duration::from_secs(30));
        assert_eq!(board.condition(&key(), Instant::now()), None);
    }

    #[test]
    fn missing_counts_only_after_the_grace_period() {
        let board = SignalBoard::new(Duration::from_secs(30));
        let t0 = Instant::now();
        board.record(key(), Err(down()), t0);
        assert_eq!(
            board.condition(&key(), t0),
            Some(SignalCondition::Available)
        );
        // A second failure keeps the first one's start.
        board.record(key(), Err(down()), t0 + Duration::from_secs(20));
        assert_eq!(
            board.condition(&key(), t0 + Duration::from_secs(29)),
            Some(SignalCondition::Available)
        );
        assert_eq!(
            board.condition(&key(), t0 + Duration::from_secs(30)),
            Some(SignalCondition::Missing(down()))
        );
    }

    #[test]
    fn one_success_clears_it() {
        let board = SignalBoard::new(Duration::ZERO);
        let t0 = Instant::now();
        board.record(key(), Err(down()), t0);
        assert_eq!(
            board.condition(&key(), t0),
            Some(SignalCondition::Missing(down()))
        );
        board.record(key(), Ok(()), t0 + Duration::from_secs(1));
        assert_eq!(
            board.condition(&key(), t0 + Duration::from_secs(1)),
            Some(SignalCondition::Available)
        );
        // The grace period restarts after a success.
        let board = SignalBoard::new(Duration::from_secs(10));
        board.record(key(), Err(down()), t0);
        board.record(key(), Ok(()), t0 + Duration::from_secs(5));
        board.record(key(), Err(down()), t0 + Duration::from_secs(12));
        assert_eq!(
            board.condition(&key(), t0 + Duration::from_secs(13)),
            Some(SignalCondition::Available)
        );
    }

    #[test]
    fn record_reports_changes_including_a_grace_period_running_out() {
        let board = SignalBoard::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(
            board.record(key(), Ok(()), t0),
            Some(SignalCondition::Available)
        );
        assert_eq!(board.record(key(), Ok(()), t0), None);
        // Missing, within the grace period: nothing to report yet.
        assert_eq!(
            board.record(key(), Err(down()), t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            board.record(key(), Err(down()), t0 + Duration::from_secs(6)),
            None
        );
        // Same outcome, but the grace period has run out: that is a change.
        assert_eq!(
            board.record(key(), Err(down()), t0 + Duration::from_secs(11)),
            Some(SignalCondition::Missing(down()))
        );
        assert_eq!(
            board.record(key(), Err(down()), t0 + Duration::from_secs(13)),
            None
        );
        assert_eq!(
            board.record(key(), Ok(()), t0 + Duration::from_secs(15)),
            Some(SignalCondition::Available)
        );
    }

    #[test]
    fn retain_forgets_deleted_services() {
        let board = SignalBoard::new(Duration::ZERO);
        board.record(key(), Ok(()), Instant::now());
        board.retain(|_| false);
        assert_eq!(board.condition(&key(), Instant::now()), None);
    }
}
