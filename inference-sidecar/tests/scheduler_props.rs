//! Property test of the continuous-batching bookkeeping: for any mix of arrivals, steps, completions,
//! cancellations and disconnects, with a pool small enough to force preemption, no block leaks, none
//! is held twice, the usage ratio is what the sequences hold, and every sequence finishes.

use lexserve_sidecar::generation::scheduler::{Scheduler, SchedulerLimits, SeqId};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// A request with a prompt of this many tokens and a limit of new tokens.
    Submit { prompt: usize, max_new: usize },
    /// One engine step; sampled sequences reaching their limit complete.
    Step,
    /// The client of the n-th live sequence cancels (or disconnects: the same bookkeeping).
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1usize..30, 1usize..20).prop_map(|(prompt, max_new)| Op::Submit { prompt, max_new }),
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
        let held: usize = self
            .live
            .iter()
            .filter_map(|(id, _)| self.s.get(*id))
            .map(|q| q.blocks.len())
            .sum();
        prop_assert_eq!(held, self.s.allocator().used_count());
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
                Op::Submit { prompt, max_new } => {
                    // The engine refuses what could never fit; the scheduler may assume it.
                    if prompt + max_new <= capacity {
                        h.s.submit(h.next, vec![1; prompt]);
                        h.live.push((h.next, max_new));
                        h.next += 1;
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
        prop_assert_eq!(h.s.allocator().used_count(), 0);
        prop_assert_eq!(h.s.allocator().usage_ratio(), 0.0);
    }
}
