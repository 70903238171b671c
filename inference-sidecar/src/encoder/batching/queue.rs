//! Batch formation, as pure decisions over the waiting texts: which ones run next, or how long to wait.
//!
//! A batch is taken from the front of the queue (first come, first served) while it stays within the
//! token budget, counted as the encoder pays for it — texts × longest text, since the batch is padded —
//! and within the cap on texts. The head of the queue always runs, even alone, so no text can be stuck.
//! With a queue delay, a batch that is not yet full waits until the oldest text has waited that long.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits that shape a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// The most padded tokens in a batch; also the longest text admitted at all.
    pub max_batch_tokens: usize,
    pub max_batch_requests: usize,
    pub max_queue_delay: Duration,
    /// Padded tokens beyond which a batch gets slower per text on this machine (measured at
    /// warm-up, see [`super::tune`]); batches stop growing there. It only shapes batches: a text
    /// longer than this still runs, alone. `usize::MAX` when not measured.
    pub efficient_batch_tokens: usize,
}

impl BatchLimits {
    /// The token budget batches are formed with.
    pub fn batch_token_budget(&self) -> usize {
        self.max_batch_tokens.min(self.efficient_batch_tokens)
    }
}

/// A text waiting for a batch.
#[derive(Debug)]
pub struct Pending<T> {
    pub tokens: usize,
    pub enqueued: Instant,
    pub item: T,
}

/// What the worker should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Nothing is waiting.
    Idle,
    /// Run the first `n` waiting texts as one batch.
    Run(usize),
    /// A batch could form but is not full; look again at this instant (or when more texts arrive).
    WaitUntil(Instant),
}

/// How many texts from the front fit one batch, and whether the batch is full (the next text would
/// break a limit).
pub fn batch_len<T>(queue: &VecDeque<Pending<T>>, limits: &BatchLimits) -> (usize, bool) {
    let mut longest = 0usize;
    let mut count = 0usize;
    let budget = limits.batch_token_budget();
    for entry in queue {
        if count == limits.max_batch_requests {
            return (count, true);
        }
        let candidate_longest = longest.max(entry.tokens);
        if count > 0 && candidate_longest * (count + 1) > budget {
            return (count, true);
        }
        longest = candidate_longest;
        count += 1;
    }
    (count, count == limits.max_batch_requests)
}

/// Decides the next step at `now`. `closing` (shutdown) runs whatever is there without waiting.
pub fn plan<T>(
    queue: &VecDeque<Pending<T>>,
    limits: &BatchLimits,
    now: Instant,
    closing: bool,
) -> NextStep {
    let Some(oldest) = queue.front() else {
        return NextStep::Idle;
    };
    let (n, full) = batch_len(queue, limits);
    let deadline = oldest.enqueued + limits.max_queue_delay;
    if full || closing || limits.max_queue_delay.is_zero() || now >= deadline {
        NextStep::Run(n)
    } else {
        NextStep::WaitUntil(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(tokens: &[usize], at: Instant) -> VecDeque<Pending<()>> {
        tokens
            .iter()
            .map(|&tokens| Pending {
                tokens,
                enqueued: at,
                item: (),
            })
            .collect()
    }

    fn limits(tokens: usize, requests: usize, delay_ms: u64) -> BatchLimits {
        BatchLimits {
            max_batch_tokens: tokens,
            max_batch_requests: requests,
            max_queue_delay: Duration::from_millis(delay_ms),
            efficient_batch_tokens: usize::MAX,
        }
    }

    #[test]
    fn the_efficient_size_shapes_batches_without_refusing_long_texts() {
        let now = Instant::now();
        let mut l = limits(16384, 32, 0);
        l.efficient_batch_tokens = 300;
        // Texts of 75 tokens: 4 fit 300, the fifth would make 375.
        let q = queue(&[75; 10], now);
        assert_eq!(batch_len(&q, &l), (4, true));
        // Short texts: many more per batch.
        let q = queue(&[10; 40], now);
        assert_eq!(batch_len(&q, &l), (30, true));
        // A text longer than the efficient size still runs, alone.
        let q = queue(&[500, 10], now);
        assert_eq!(plan(&q, &l, now, false), NextStep::Run(1));
        assert_eq!(l.batch_token_budget(), 300);
    }

    #[test]
    fn empty_queue_is_idle() {
        let now = Instant::now();
        assert_eq!(
            plan(&queue(&[], now), &limits(100, 4, 0), now, false),
            NextStep::Idle
        );
    }

    #[test]
    fn token_budget_counts_padding() {
        let now = Instant::now();
        // 3 texts of 10 → 30 padded; adding a 40 makes 4 × 40 = 160 > 100.
        let q = queue(&[10, 10, 10, 40, 5], now);
        assert_eq!(batch_len(&q, &limits(100, 32, 0)), (3, true));
        assert_eq!(plan(&q, &limits(100, 32, 0), now, false), NextStep::Run(3));
        // A later short text does not jump the queue past the long one.
        assert_eq!(batch_len(&q, &limits(160, 32, 0)), (4, true));
        assert_eq!(batch_len(&q, &limits(200, 32, 0)), (5, false));
    }

    #[test]
    fn request_cap_limits_the_batch() {
        let now = Instant::now();
        let q = queue(&[1, 1, 1, 1, 1], now);
        assert_eq!(plan(&q, &limits(1000, 2, 50), now, false), NextStep::Run(2));
    }

    #[test]
    fn an_oversized_head_still_runs_alone() {
        let now = Instant::now();
        let q = queue(&[500, 1], now);
        assert_eq!(plan(&q, &limits(100, 8, 50), now, false), NextStep::Run(1));
    }

    #[test]
    fn a_partial_batch_waits_for_the_oldest_deadline() {
        let start = Instant::now();
        let q = queue(&[5, 5], start);
        let l = limits(1000, 8, 10);
        let deadline = start + Duration::from_millis(10);
        assert_eq!(plan(&q, &l, start, false), NextStep::WaitUntil(deadline));
        assert_eq!(
            plan(&q, &l, start + Duration::from_millis(3), false),
            NextStep::WaitUntil(deadline)
        );
        assert_eq!(plan(&q, &l, deadline, false), NextStep::Run(2));
        // Shutting down never waits.
        assert_eq!(plan(&q, &l, start, true), NextStep::Run(2));
    }

    #[test]
    fn a_full_batch_does_not_wait() {
        let now = Instant::now();
        let q = queue(&[5, 5, 5], now);
        assert_eq!(
            plan(&q, &limits(1000, 3, 1000), now, false),
            NextStep::Run(3)
        );
        assert_eq!(plan(&q, &limits(10, 8, 1000), now, false), NextStep::Run(2));
    }

    #[test]
    fn no_delay_runs_what_is_there() {
        let now = Instant::now();
        let q = queue(&[5], now);
        assert_eq!(plan(&q, &limits(1000, 8, 0), now, false), NextStep::Run(1));
    }
}
