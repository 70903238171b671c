//! Batch formation, as pure decisions over the waiting texts: which ones run next, or how long to wait.
//!
//! A batch is padded to its longest member, so a short text batched with a long one pays for the long
//! one's length. Batches are therefore formed by length: the oldest waiting text always runs in the
//! next batch (so no text waits behind more than the batches ahead of it, however many shorter texts
//! keep arriving), and it is joined, oldest first, by waiting texts whose lengths stay within
//! [`LENGTH_SPREAD`]× of each other, while the batch stays within the token budget — counted as the
//! encoder pays for it, texts × longest text — and within the cap on texts. Texts of other lengths wait
//! for a batch of their own kind (or until they are the oldest). With a queue delay, a batch that is
//! not yet full waits until the oldest text has waited that long.
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

/// The most a batch's longest text may be, as a multiple of its shortest: every text in a batch is at
/// least half real tokens. Tighter groups waste less on padding but make smaller batches; 2× keeps
/// most of batching's gain on the spread of lengths real traffic has (5 to 256 tokens).
pub const LENGTH_SPREAD: usize = 2;

/// What the worker should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Nothing is waiting.
    Idle,
    /// Run the waiting texts at these positions (ascending, the first is always 0) as one batch.
    Run(Vec<usize>),
    /// A batch could form but is not full; look again at this instant (or when more texts arrive).
    WaitUntil(Instant),
}

/// The positions of the texts that form the next batch (ascending, starting with the oldest, 0), and
/// whether the batch is full (a limit left a text of its length group out, or would leave out any
/// further one). Empty when nothing waits.
pub fn select<T>(queue: &VecDeque<Pending<T>>, limits: &BatchLimits) -> (Vec<usize>, bool) {
    let Some(oldest) = queue.front() else {
        return (Vec::new(), false);
    };
    let budget = limits.batch_token_budget();
    let cap = limits.max_batch_requests.max(1);
    let mut chosen = vec![0];
    let (mut shortest, mut longest) = (oldest.tokens, oldest.tokens);
    for (position, entry) in queue.iter().enumerate().skip(1) {
        if chosen.len() == cap {
            return (chosen, true);
        }
        let (low, high) = (shortest.min(entry.tokens), longest.max(entry.tokens));
        if high > low.saturating_mul(LENGTH_SPREAD) {
            // Another length group: it gets a batch of its own.
            continue;
        }
        if high.saturating_mul(chosen.len() + 1) > budget {
            return (chosen, true);
        }
        (shortest, longest) = (low, high);
        chosen.push(position);
    }
    // Full too when no text could join any more, even one no longer than the longest.
    let full = chosen.len() == cap || longest.saturating_mul(chosen.len() + 1) > budget;
    (chosen, full)
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
    let (chosen, full) = select(queue, limits);
    let deadline = oldest.enqueued + limits.max_queue_delay;
    if full || closing || limits.max_queue_delay.is_zero() || now >= deadline {
        NextStep::Run(chosen)
    } else {
        NextStep::WaitUntil(deadline)
    }
}

/// Removes the texts at `positions` (ascending) from the queue, in queue order; the others keep
/// their order.
pub fn take<T>(queue: &mut VecDeque<Pending<T>>, positions: &[usize]) -> Vec<Pending<T>> {
    let mut taken = Vec::with_capacity(positions.len());
    // From the back, so earlier positions stay valid; the common case (a prefix) shifts nothing.
    for &position in positions.iter().rev() {
        if let Some(entry) = queue.remove(position) {
            taken.push(entry);
        }
    }
    taken.reverse();
    taken
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

    fn run(positions: &[usize]) -> NextStep {
        NextStep::Run(positions.to_vec())
    }

    #[test]
    fn the_efficient_size_shapes_batches_without_refusing_long_texts() {
        let now = Instant::now();
        let mut l = limits(16384, 32, 0);
        l.efficient_batch_tokens = 300;
        // Texts of 75 tokens: 4 fit 300, the fifth would make 375.
        let q = queue(&[75; 10], now);
        assert_eq!(select(&q, &l), (vec![0, 1, 2, 3], true));
        // Short texts: many more per batch.
        let q = queue(&[10; 40], now);
        assert_eq!(select(&q, &l), ((0..30).collect(), true));
        // A text longer than the efficient size still runs, alone.
        let q = queue(&[500, 10], now);
        assert_eq!(plan(&q, &l, now, false), run(&[0]));
        assert_eq!(l.batch_token_budget(), 300);
    }

    #[test]
    fn empty_queue_is_idle() {
        let now = Instant::now();
        assert_eq!(
            plan(&queue(&[], now), &limits(100, 4, 0), now, false),
            NextStep::Idle
        );
        assert_eq!(
            select(&queue(&[], now), &limits(100, 4, 0)),
            (vec![], false)
        );
    }

    #[test]
    fn token_budget_counts_padding() {
        let now = Instant::now();
        // 3 texts of 10 → 30 padded; a fourth of 10 → 40, a fifth → 50 > 45.
        let q = queue(&[10, 10, 10, 10, 10], now);
        assert_eq!(select(&q, &limits(45, 32, 0)), (vec![0, 1, 2, 3], true));
        // Within the spread, the longest member sets the cost: 3 × 12 = 36, a fourth makes 48.
        let q = queue(&[7, 12, 10, 9], now);
        assert_eq!(select(&q, &limits(45, 32, 0)), (vec![0, 1, 2], true));
        assert_eq!(select(&q, &limits(48, 32, 0)), (vec![0, 1, 2, 3], true));
    }

    #[test]
    fn similar_lengths_are_grouped_and_others_wait_for_their_own_batch() {
        let now = Instant::now();
        let l = limits(10_000, 32, 0);
        // Arrival order mixes short and long; the oldest (10) is joined by the short ones only.
        let mut q = queue(&[10, 200, 12, 150, 8, 256, 15, 6], now);
        let (first, _) = select(&q, &l);
        assert_eq!(first, vec![0, 2, 4, 6]);
        // No member is more than twice another: padding is at most half of any row.
        let taken = take(&mut q, &first);
        assert_eq!(
            taken.iter().map(|p| p.tokens).collect::<Vec<_>>(),
            vec![10, 12, 8, 15]
        );
        // The rest keeps its order; the long ones now form a batch, the 6 waits for its own.
        assert_eq!(
            q.iter().map(|p| p.tokens).collect::<Vec<_>>(),
            vec![200, 150, 256, 6]
        );
        assert_eq!(select(&q, &l), (vec![0, 1, 2], false));
        let (group, _) = select(&q, &l);
        take(&mut q, &group);
        assert_eq!(select(&q, &l), (vec![0], false));
    }

    #[test]
    fn the_spread_is_kept_across_the_whole_batch() {
        let now = Instant::now();
        // 10 admits 20 (≤ 2 × 10); then 6 would need the longest ≤ 12: it waits, and so does 40.
        let q = queue(&[10, 20, 6, 40, 11], now);
        assert_eq!(select(&q, &limits(10_000, 32, 0)), (vec![0, 1, 4], false));
    }

    #[test]
    fn the_oldest_text_is_never_passed_over() {
        // A long text arrives first, then a steady stream of short ones that would make fuller
        // batches without it: each batch still takes the oldest, so every text runs within as many
        // batches as there were texts ahead of it when it arrived.
        let now = Instant::now();
        let l = limits(512, 8, 0);
        let mut q: VecDeque<Pending<usize>> = VecDeque::new();
        // Per text: the first batch it could run in, and how many texts were ahead of it then.
        let mut arrivals: Vec<(usize, usize)> = Vec::new();
        let mut arrive = |q: &mut VecDeque<Pending<usize>>, tokens: usize, round: usize| {
            arrivals.push((round, q.len()));
            q.push_back(Pending {
                tokens,
                enqueued: now,
                item: arrivals.len() - 1,
            });
        };
        arrive(&mut q, 256, 0);
        for i in 0..20 {
            arrive(&mut q, 5 + i % 7, 0);
        }
        let mut served = Vec::new();
        let mut round = 0usize;
        while !q.is_empty() && round < 500 {
            let NextStep::Run(positions) = plan(&q, &l, now, false) else {
                panic!("a batch is due with delay zero");
            };
            assert_eq!(positions[0], 0, "the oldest text runs in every batch");
            let batch = take(&mut q, &positions);
            let padded = batch.iter().map(|p| p.tokens).max().unwrap() * batch.len();
            assert!(batch.len() == 1 || padded <= 512, "budget broken: {padded}");
            assert!(batch.len() <= 8);
            served.extend(batch.iter().map(|p| (p.item, round)));
            round += 1;
            // Short texts keep arriving for a while, one per batch.
            if round < 30 {
                arrive(&mut q, 5 + round % 4, round);
            }
        }
        assert!(q.is_empty());
        assert_eq!(served.len(), arrivals.len(), "every text ran once");
        assert_eq!(served[0], (0, 0), "the long text ran first, alone");
        for (id, ran) in served {
            let (arrived, ahead) = arrivals[id];
            assert!(
                ran - arrived <= ahead,
                "text {id} waited {} batches with {ahead} texts ahead",
                ran - arrived
            );
        }
    }

    #[test]
    fn request_cap_limits_the_batch() {
        let now = Instant::now();
        let q = queue(&[1, 1, 1, 1, 1], now);
        assert_eq!(plan(&q, &limits(1000, 2, 50), now, false), run(&[0, 1]));
    }

    #[test]
    fn an_oversized_head_still_runs_alone() {
        let now = Instant::now();
        let q = queue(&[500, 1], now);
        assert_eq!(plan(&q, &limits(100, 8, 50), now, false), run(&[0]));
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
        assert_eq!(plan(&q, &l, deadline, false), run(&[0, 1]));
        // Shutting down never waits.
        assert_eq!(plan(&q, &l, start, true), run(&[0, 1]));
    }

    #[test]
    fn a_full_batch_does_not_wait() {
        let now = Instant::now();
        let q = queue(&[5, 5, 5], now);
        assert_eq!(
            plan(&q, &limits(1000, 3, 1000), now, false),
            run(&[0, 1, 2])
        );
        assert_eq!(plan(&q, &limits(10, 8, 1000), now, false), run(&[0, 1]));
    }

    #[test]
    fn no_delay_runs_what_is_there() {
        let now = Instant::now();
        let q = queue(&[5], now);
        assert_eq!(plan(&q, &limits(1000, 8, 0), now, false), run(&[0]));
    }
}
