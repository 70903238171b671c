//! Property test of the continuous-batching bookkeeping: for any mix of arrivals (many sharing a
//! prompt prefix, some as siblings of one request), steps, completions, cancellations and
//! disconnects, with a pool small enough to force preemption and prefix-cache eviction, no block
//! leaks, every block's reference count is its number of holders (sequences and the prefix cache),
//! no sequence writes into a shared block, the usage ratio is what is held, and every sequence
//! finishes.

use lexserve_sidecar::generation::scheduler::{Scheduler, SchedulerLimits, SeqId};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// A request: one of a few shared prefixes (`None`: none) of `shared` tokens, then `own`
    /// tokens of its own, a limit of new tokens, and `n` siblings sampling the same prompt.
    Submit {
        prefix: Option<u32>,
        shared: usize,
        own: usize,
        max_new: usize,
        n: usize,
    },
    /// One engine step; sampled sequences reaching their limit complete.
    Step,
    /// The client of the n-th live sequence cancels (or disconnects: the same bookkeeping).
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (
            proptest::option::of(0u32..3),
            0usize..20,
            1usize..12,
            1usize..20,
            prop_oneof![4 => Just(1usize), 1 => 2usize..4],
        )
            .prop_map(|(prefix, shared, own, max_new, n)| Op::Submit {
                prefix,
                shared,
                own,
                max_new,
                n
            }),
        5 => Just(Op::Step),
        1 => (0usize..8).prop_map(Op::Cancel),
    ]
}

const BLOCK_SIZE: usize = 4;
const BLOCKS: usize = 16;

struct Harness {
    s: Scheduler,
    /// (id, max new tokens)
    live: Vec<(SeqId, usize)>,
    next: SeqId,
    finished: usize,
}

/// The prefix's tokens (the same for every request naming it), then tokens of this request's own.
fn prompt(prefix: Option<u32>, shared: usize, own: usize, id: SeqId) -> Vec<u32> {
    let shared = prefix.map_or(0, |p| shared.min(10 + 5 * p as usize));
    let mut tokens: Vec<u32> = (0..shared as u32)
        .map(|i| prefix.unwrap_or(0) * 1000 + i)
        .collect();
    tokens.extend((0..own as u32).map(|i| 100_000 + id as u32 * 100 + i));
    tokens
}

impl Harness {
    fn step(&mut self) {
        let step = self.s.schedule();
        self.s.complete(&step.work);
        for w in step.work.iter().filter(|w| w.sample) {
            self.s.append_token(w.id, 1);
            let limit = self.live.iter().find(|(id, _)| *id == w.id).map(|l| l.1);
            let generated = self.s.get(w.id).map(|q| q.generated());
            if let (Some(limit), Some(generated)) = (limit, generated)
                && generated >= limit
            {
                self.s.remove(w.id);
                self.live.retain(|(id, _)| *id != w.id);
                self.finished += 1;
            }
        }
    }

    fn check(&self) -> Result<(), TestCaseError> {
        self.s.check_invariants().map_err(TestCaseError::fail)?;
        // Every allocated block is held by a live sequence or the prefix cache (no leak); the exact
        // holder count of each block is check_invariants'.
        let mut held: Vec<u32> = self
            .live
            .iter()
            .filter_map(|(id, _)| self.s.get(*id))
            .flat_map(|q| q.blocks.clone())
            .collect();
        held.sort_unstable();
        held.dedup();
        let used = self.s.allocator().used_count();
        prop_assert!(held.len() <= used && used <= held.len() + self.s.prefix_cache_blocks());
        let held = used;
        let ratio = held as f64 / BLOCKS as f64;
        prop_assert!((self.s.allocator().usage_ratio() - ratio).abs() < 1e-12);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn no_leaks_and_everyone_finishes(ops in proptest::collection::vec(op(), 1..120)) {
        let limits = SchedulerLimits { max_running: 4, step_tokens: 12, block_size: BLOCK_SIZE };
        let mut h = Harness { s: Scheduler::new(limits, BLOCKS), live: Vec::new(), next: 0, finished: 0 };
        let capacity = BLOCKS * BLOCK_SIZE;
        for op in ops {
            match op {
                Op::Submit { prefix, shared, own, max_new, n } => {
                    let tokens = prompt(prefix, shared, own, h.next);
                    // The engine refuses what could never fit; the scheduler may assume it.
                    if tokens.len() + max_new <= capacity {
                        let leader = h.next;
                        for i in 0..n as SeqId {
                            h.s.submit_sibling(leader + i, tokens.clone(), (i > 0).then_some(leader));
                            h.live.push((leader + i, max_new));
                        }
                        h.next += n as SeqId;
                    }
                }
                Op::Step => h.step(),
                Op::Cancel(n) => {
                    if !h.live.is_empty() {
                        let (id, _) = h.live.remove(n % h.live.len());
                        prop_assert!(h.s.remove(id).is_some());
                    }
                }
            }
            h.check()?;
        }
        // Drain: everything still live finishes within a bounded number of steps.
        let mut steps = 0;
        while !h.live.is_empty() {
            h.step();
            h.check()?;
            steps += 1;
            prop_assert!(steps < 10_000, "stalled with {:?} live", h.live.len());
        }
        prop_assert!(h.s.is_idle());
        // What is left is the prefix cache's, and all of it can be taken back: a sequence needing
        // the whole pool runs.
        prop_assert_eq!(h.s.allocator().used_count(), h.s.prefix_cache_blocks());
        h.s.submit(h.next, vec![7; capacity - 1]);
        h.live.push((h.next, 1));
        while !h.live.is_empty() {
            h.step();
            h.check()?;
            prop_assert!(h.s.get(h.next).is_none_or(|q| q.preemptions == 0));
        }
    }
}
