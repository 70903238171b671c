//! Per-object exponential backoff with jitter for failed reconciles, so that a broken object
//! does not hammer the apiserver and many broken objects do not retry in lockstep.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

/// The first retry delay.
const BASE: Duration = Duration::from_secs(2);
/// The longest delay.
const CAP: Duration = Duration::from_secs(300);

/// Failure counts per object key.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
    random: RandomState,
}

impl Backoff {
    /// Records a failure and returns how long to wait before the next try.
    pub fn next_delay(&self, key: &str) -> Duration {
        let attempt = {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let count = failures.entry(key.to_string()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        let entropy = self
            .random
            .hash_one((key, attempt, std::time::SystemTime::now()));
        delay(attempt, entropy)
    }

    /// Forgets the failures of an object that reconciled.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// `BASE * 2^(attempt-1)`, capped, then scaled by a jitter factor in [0.8, 1.2) drawn from
/// `entropy`.
pub fn delay(attempt: u32, entropy: u64) -> Duration {
    let exp = BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(CAP);
    let jitter = 0.8 + (entropy % 4000) as f64 / 10000.0;
    capped.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_then_caps() {
        let mid = |attempt| delay(attempt, 2000);
        assert_eq!(mid(1), Duration::from_secs(2));
        assert_eq!(mid(2), Duration::from_secs(4));
        assert_eq!(mid(5), Duration::from_secs(32));
        assert_eq!(mid(30), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for entropy in [0, 1, 1999, 3999, u64::MAX] {
            let d = delay(3, entropy).as_secs_f64();
            assert!((6.4..9.6).contains(&d), "{d}");
        }
    }

    #[test]
    fn reset_starts_over() {
        let b = Backoff::default();
        b.next_delay("a");
        b.next_delay("a");
        let third = b.next_delay("a");
        assert!(third >= Duration::from_secs_f64(6.4));
        b.reset("a");
        assert!(b.next_delay("a") < Duration::from_secs_f64(2.4));
    }
}
