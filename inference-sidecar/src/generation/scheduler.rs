//! Continuous batching, as bookkeeping: which sequences run this step and how many of their tokens,
//! who waits, who is preempted, and which cache blocks each one holds. No model and no clients here,
//! so every decision is unit-tested.
//!
//! Each step: running sequences are served oldest first (a decode token each, or a chunk of a prompt
//! within the step's token budget, decode tokens reserved first so a long prompt cannot stall the
//! others); when the pool has no block for a sequence's next token, the newest running sequence is
//! preempted (its blocks freed, its tokens kept for recompute, back to the head of the queue). Then,
//! if nothing was preempted, waiting sequences are admitted in arrival order while the concurrency cap,
//! the budget and free blocks allow. Nobody is skipped over, so nobody starves.
//!
//! A block the allocator refuses to take back (freed twice, or not allocated), or blocks still
//! allocated when no sequence is left, mean the bookkeeping is broken: another sequence's cache
//! could be overwritten. That is never silent: debug and test builds panic where it happens, release
//! builds log an error, count it ([`Scheduler::take_block_errors`], exported as
//! `lexserve_kv_cache_block_errors_total`) and keep serving (a leak is reclaimed once idle).

use std::collections::VecDeque;

use super::block_allocator::{BlockAllocator, BlockId, blocks_for};

pub type SeqId = u64;

#[derive(Debug, Clone)]
pub struct Sequence {
    pub id: SeqId,
    /// Prompt, then every token generated so far.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache (a prefix of `tokens`).
    pub cached: usize,
    pub blocks: Vec<BlockId>,
    /// Whether it has been admitted before (a preempted sequence comes back to the queue).
    pub admitted_once: bool,
    pub preemptions: usize,
}

impl Sequence {
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    pub max_running: usize,
    /// Tokens fed to the model per step, prompt chunks and decode tokens together (at least
    /// `max_running`, so every running sequence can always decode).
    pub step_tokens: usize,
    pub block_size: usize,
}

/// One sequence's share of a step: feed `tokens[from..to]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    pub id: SeqId,
    pub from: usize,
    pub to: usize,
    /// The chunk reaches the last known token, so the step samples the next one.
    pub sample: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    pub work: Vec<Work>,
    /// Admitted this step for the first time (they leave the bounded queue).
    pub admitted: Vec<SeqId>,
    pub preempted: Vec<SeqId>,
}

#[derive(Debug)]
pub struct Scheduler {
    limits: SchedulerLimits,
    allocator: BlockAllocator,
    waiting: VecDeque<Sequence>,
    /// Admission order: oldest first.
    running: Vec<Sequence>,
    /// Bookkeeping errors since the last [`Scheduler::take_block_errors`].
    block_errors: u64,
    /// Panic on a bookkeeping error (debug and test builds) rather than log and count it.
    strict: bool,
}

impl Scheduler {
    pub fn new(limits: SchedulerLimits, blocks: usize) -> Self {
        let limits = SchedulerLimits {
            step_tokens: limits.step_tokens.max(limits.max_running).max(1),
            max_running: limits.max_running.max(1),
            block_size: limits.block_size.max(1),
        };
        Self {
            limits,
            allocator: BlockAllocator::new(blocks),
            waiting: VecDeque::new(),
            running: Vec::new(),
            block_errors: 0,
            strict: cfg!(debug_assertions),
        }
    }

    pub fn limits(&self) -> SchedulerLimits {
        self.limits
    }

    /// Most tokens one sequence can ever hold.
    pub fn capacity_tokens(&self) -> usize {
        self.allocator.total() * self.limits.block_size
    }

    pub fn submit(&mut self, id: SeqId, prompt: Vec<u32>) {
        self.waiting.push_back(Sequence {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            cached: 0,
            blocks: Vec::new(),
            admitted_once: false,
            preemptions: 0,
        });
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.allocator
    }

    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .find(|s| s.id == id)
    }

    pub fn ids(&self) -> Vec<SeqId> {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .map(|s| s.id)
            .collect()
    }

    /// Bookkeeping errors since the last call (for the engine's counter).
    pub fn take_block_errors(&mut self) -> u64 {
        std::mem::take(&mut self.block_errors)
    }

    /// Returns a sequence's blocks. On a refusal nothing is freed: leaking is better than handing
    /// a block out twice.
    fn release(&mut self, id: SeqId, blocks: &[BlockId]) {
        if let Err(e) = self.allocator.release(blocks) {
            self.bookkeeping_error(format!("sequence {id}: {e}"));
        }
    }

    /// With no sequence left, every allocated block is leaked: report it and take the pool back.
    fn reclaim_leaks(&mut self) {
        let leaked = self.allocator.used_count();
        if self.is_idle() && leaked > 0 {
            self.bookkeeping_error(format!(
                "{leaked} blocks still allocated with no sequence left"
            ));
            self.allocator = BlockAllocator::new(self.allocator.total());
        }
    }

    fn bookkeeping_error(&mut self, message: String) {
        self.block_errors += 1;
        tracing::error!(%message, "KV cache block bookkeeping is broken");
        assert!(
            !self.strict,
            "KV cache block bookkeeping is broken: {message}"
        );
    }

    fn preempt(&mut self, index: usize, step: &mut Step) {
        let mut seq = self.running.remove(index);
        self.release(seq.id, &seq.blocks);
        seq.blocks.clear();
        seq.cached = 0;
        seq.preemptions += 1;
        step.work.retain(|w| w.id != seq.id);
        step.preempted.push(seq.id);
        self.waiting.push_front(seq);
    }

    /// Plans the next step and reserves the blocks it needs.
    pub fn schedule(&mut self) -> Step {
        let mut step = Step::default();
        let bs = self.limits.block_size;
        let mut budget = self.limits.step_tokens;
        let mut decodes_left = self
            .running
            .iter()
            .filter(|s| s.tokens.len() - s.cached == 1)
            .count();
        let mut i = 0;
        while i < self.running.len() {
            let seq = &self.running[i];
            let remaining = seq.tokens.len() - seq.cached;
            let is_decode = remaining == 1;
            if is_decode {
                decodes_left -= 1;
            }
            let n = if is_decode {
                1.min(budget)
            } else {
                remaining.min(budget.saturating_sub(decodes_left))
            };
            if n == 0 {
                i += 1;
                continue;
            }
            let need = blocks_for(seq.cached + n, bs).saturating_sub(seq.blocks.len());
            let mut preempted_self = false;
            while self.allocator.free_count() < need {
                let newest = self.running.len() - 1;
                if newest == i {
                    self.preempt(i, &mut step);
                    preempted_self = true;
                    break;
                }
                if self.running[newest].tokens.len() - self.running[newest].cached == 1 {
                    decodes_left -= 1;
                }
                self.preempt(newest, &mut step);
            }
            if preempted_self {
                continue;
            }
            if let Some(blocks) = self.allocator.allocate(need) {
                let seq = &mut self.running[i];
                seq.blocks.extend(blocks);
                let to = seq.cached + n;
                step.work.push(Work {
                    id: seq.id,
                    from: seq.cached,
                    to,
                    sample: to == seq.tokens.len(),
                });
                budget -= n;
            }
            i += 1;
        }
        if !step.preempted.is_empty() {
            return step;
        }
        while self.running.len() < self.limits.max_running && budget > 0 {
            let Some(front) = self.waiting.front() else {
                break;
            };
            let n = front.tokens.len().min(budget);
            let Some(blocks) = self.allocator.allocate(blocks_for(n, bs)) else {
                break;
            };
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            seq.blocks = blocks;
            if !seq.admitted_once {
                seq.admitted_once = true;
                step.admitted.push(seq.id);
            }
            step.work.push(Work {
                id: seq.id,
                from: 0,
                to: n,
                sample: n == seq.tokens.len(),
            });
            budget -= n;
            self.running.push(seq);
        }
        step
    }

    /// Records that the step's work ran: those tokens are now cached.
    pub fn complete(&mut self, work: &[Work]) {
        for w in work {
            if let Some(seq) = self.running.iter_mut().find(|s| s.id == w.id) {
                seq.cached = seq.cached.max(w.to);
            }
        }
    }

    pub fn append_token(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.running.iter_mut().find(|s| s.id == id) {
            seq.tokens.push(token);
        }
    }

    /// Speculative decoding: appends `draft` to a running sequence that decodes this step (after the
    /// last known token, which the step feeds) and reserves blocks for the drafted positions, as many
    /// as free blocks allow without preempting anyone. Returns how many drafted tokens it took; the
    /// caller feeds them in the same chunk and then calls [`Scheduler::rollback`].
    pub fn propose(&mut self, id: SeqId, draft: &[u32]) -> usize {
        let bs = self.limits.block_size;
        let free = self.allocator.free_count();
        let Some(seq) = self.running.iter_mut().find(|s| s.id == id) else {
            return 0;
        };
        let room = (seq.blocks.len() + free) * bs;
        let k = draft.len().min(room.saturating_sub(seq.tokens.len()));
        let need = blocks_for(seq.tokens.len() + k, bs).saturating_sub(seq.blocks.len());
        let Some(blocks) = self.allocator.allocate(need) else {
            return 0;
        };
        seq.blocks.extend(blocks);
        seq.tokens.extend_from_slice(&draft[..k]);
        k
    }

    /// Speculative decoding: drops a running sequence's tokens from `len` on (the drafted tokens the
    /// model did not confirm) and their cache positions (the keys and values written there are
    /// overwritten when the positions are fed again), and frees the blocks only they used.
    pub fn rollback(&mut self, id: SeqId, len: usize) {
        let bs = self.limits.block_size;
        let Some(seq) = self.running.iter_mut().find(|s| s.id == id) else {
            return;
        };
        seq.tokens.truncate(len.max(seq.prompt_len));
        seq.cached = seq.cached.min(seq.tokens.len());
        let keep = blocks_for(seq.tokens.len(), bs).min(seq.blocks.len());
        let spare = seq.blocks.split_off(keep);
        if !spare.is_empty() {
            self.release(id, &spare);
        }
    }

    /// Removes a sequence wherever it is (finished, cancelled, disconnected) and frees its blocks.
    pub fn remove(&mut self, id: SeqId) -> Option<Sequence> {
        let seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else {
            let i = self.waiting.iter().position(|s| s.id == id)?;
            self.waiting.remove(i)?
        };
        self.release(seq.id, &seq.blocks);
        self.reclaim_leaks();
        Some(seq)
    }

    /// Bookkeeping invariants, for tests: every held block is allocated exactly once and nothing else
    /// is; waiting sequences hold none; running ones hold what their cached tokens need.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut held: Vec<BlockId> = self.running.iter().flat_map(|s| s.blocks.clone()).collect();
        let count = held.len();
        held.sort_unstable();
        held.dedup();
        if held.len() != count {
            return Err("a block is held by two sequences".into());
        }
        if count != self.allocator.used_count() {
            return Err(format!(
                "{count} blocks held but {} allocated",
                self.allocator.used_count()
            ));
        }
        if let Some(s) = self
            .waiting
            .iter()
            .find(|s| !s.blocks.is_empty() || s.cached != 0)
        {
            return Err(format!("waiting sequence {} holds cache", s.id));
        }
        if let Some(s) = self
            .running
            .iter()
            .find(|s| s.blocks.len() < blocks_for(s.cached, self.limits.block_size))
        {
            return Err(format!("sequence {} has fewer blocks than tokens", s.id));
        }
        // Blocks beyond the tokens' need are drafted positions that were not rolled back.
        if let Some(s) = self.running.iter().find(|s| {
            s.cached > s.tokens.len()
                || s.blocks.len() > blocks_for(s.tokens.len(), self.limits.block_size)
        }) {
            return Err(format!(
                "sequence {} holds more cache than its tokens need",
                s.id
            ));
        }
        if self.running.len() > self.limits.max_running {
            return Err("more sequences running than allowed".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_running: usize, step_tokens: usize, block_size: usize) -> SchedulerLimits {
        SchedulerLimits {
            max_running,
            step_tokens,
            block_size,
        }
    }

    fn work(id: SeqId, from: usize, to: usize, sample: bool) -> Work {
        Work {
            id,
            from,
            to,
            sample,
        }
    }

    /// Runs the step as a model would: every sampled sequence gets token 7.
    fn run(s: &mut Scheduler) -> Step {
        let step = s.schedule();
        s.complete(&step.work);
        for w in step.work.iter().filter(|w| w.sample) {
            s.append_token(w.id, 7);
        }
        s.check_invariants().unwrap();
        step
    }

    #[test]
    fn prompts_are_chunked_by_the_budget_and_decodes_come_first() {
        let mut s = Scheduler::new(limits(4, 8, 4), 100);
        s.submit(1, vec![1; 3]);
        let step = run(&mut s);
        assert_eq!(step.work, vec![work(1, 0, 3, true)]);
        assert_eq!(step.admitted, vec![1]);
        s.submit(2, vec![1; 20]);
        let step = run(&mut s);
        // Sequence 1 decodes one token; sequence 2 gets the other 7 of the budget.
        assert_eq!(step.work, vec![work(1, 3, 4, true), work(2, 0, 7, false)]);
        let step = run(&mut s);
        assert_eq!(step.work[1], work(2, 7, 14, false));
        let step = run(&mut s);
        assert_eq!(step.work[1], work(2, 14, 20, true));
    }

    #[test]
    fn admission_waits_for_blocks_and_the_concurrency_cap() {
        let mut s = Scheduler::new(limits(2, 64, 4), 4);
        s.submit(1, vec![1; 8]);
        s.submit(2, vec![1; 8]);
        s.submit(3, vec![1; 1]);
        let step = run(&mut s);
        assert_eq!(step.admitted, vec![1, 2]);
        assert_eq!(s.waiting_len(), 1, "cap of two running");
        assert_eq!(s.allocator().free_count(), 0);
        s.remove(1);
        assert_eq!(s.allocator().free_count(), 2);
        s.check_invariants().unwrap();
    }

    #[test]
    fn running_out_of_blocks_preempts_the_newest() {
        // 3 blocks of 2: two sequences of 2 tokens fill two blocks, then both need a second block.
        let mut s = Scheduler::new(limits(4, 16, 2), 3);
        s.submit(1, vec![1; 2]);
        s.submit(2, vec![1; 2]);
        run(&mut s);
        let step = run(&mut s);
        assert_eq!(step.preempted, vec![2]);
        assert_eq!(step.work.iter().map(|w| w.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            s.get(2).unwrap().tokens.len(),
            3,
            "keeps its tokens for recompute"
        );
        assert_eq!(s.get(2).unwrap().cached, 0);
        // When 1 finishes, 2 comes back and recomputes everything it had.
        s.remove(1);
        let step = run(&mut s);
        assert_eq!(step.work, vec![work(2, 0, 3, true)]);
        assert!(step.admitted.is_empty(), "it was admitted before");
    }

    #[test]
    fn a_long_generation_does_not_starve_a_short_one() {
        let mut s = Scheduler::new(limits(2, 8, 4), 64);
        s.submit(1, vec![1; 4]);
        run(&mut s);
        s.submit(2, vec![1; 4]);
        let step = run(&mut s);
        assert_eq!(step.admitted, vec![2], "admitted while 1 keeps decoding");
        for _ in 0..5 {
            let step = run(&mut s);
            assert_eq!(step.work.len(), 2, "both advance every step");
        }
    }

    /// Three running sequences, the second also claiming the first's block: the bookkeeping bug a
    /// double free comes from.
    fn a_block_held_twice(strict: bool) -> Scheduler {
        let mut s = Scheduler::new(limits(3, 12, 4), 8);
        s.strict = strict;
        for id in 1..=3 {
            s.submit(id, vec![1; 4]);
        }
        run(&mut s);
        let first = s.running[0].blocks[0];
        s.running[1].blocks.push(first);
        s
    }

    #[test]
    #[should_panic(expected = "sequence 2: block 0 is returned but is not allocated")]
    fn a_double_release_panics_in_debug_builds() {
        let mut s = a_block_held_twice(cfg!(debug_assertions));
        assert!(s.strict, "tests run with debug assertions");
        s.remove(1);
        s.remove(2);
    }

    #[test]
    fn a_double_release_is_counted_and_frees_nothing_in_release_builds() {
        let mut s = a_block_held_twice(false);
        assert!(s.remove(1).is_some());
        assert_eq!(s.allocator().used_count(), 2);
        assert!(s.remove(2).is_some());
        assert_eq!(s.take_block_errors(), 1, "the refused release is counted");
        assert_eq!(
            s.allocator().used_count(),
            2,
            "nothing of the refused release is freed"
        );
        assert_eq!(s.take_block_errors(), 0, "counted once");
        // The block sequence 2 could not return is leaked until nothing runs; then it is reclaimed.
        assert!(s.remove(3).is_some());
        assert_eq!(s.take_block_errors(), 1, "the leak is counted");
        assert_eq!(s.allocator().used_count(), 0);
    }

    #[test]
    fn a_leak_is_counted_and_reclaimed_when_idle() {
        let mut s = Scheduler::new(limits(2, 8, 4), 8);
        s.strict = false;
        s.submit(1, vec![1; 4]);
        run(&mut s);
        // A block allocated behind the scheduler's back: no sequence holds it.
        s.allocator.allocate(1).unwrap();
        s.remove(1);
        assert_eq!(s.take_block_errors(), 1);
        assert_eq!(s.allocator().used_count(), 0, "the pool is whole again");
        s.check_invariants().unwrap();
    }

    #[test]
    #[should_panic(expected = "1 blocks still allocated with no sequence left")]
    fn a_leak_panics_in_debug_builds() {
        let mut s = Scheduler::new(limits(2, 8, 4), 8);
        s.submit(1, vec![1; 4]);
        run(&mut s);
        s.allocator.allocate(1).unwrap();
        s.remove(1);
    }

    #[test]
    fn removing_a_waiting_sequence_frees_nothing_it_does_not_hold() {
        let mut s = Scheduler::new(limits(1, 8, 4), 8);
        s.submit(1, vec![1; 4]);
        s.submit(2, vec![1; 4]);
        run(&mut s);
        assert!(s.remove(2).is_some());
        assert!(s.remove(2).is_none());
        s.check_invariants().unwrap();
        assert_eq!(s.allocator().used_count(), 1);
    }
}
