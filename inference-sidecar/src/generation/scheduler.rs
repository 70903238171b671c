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
//! Shared prefixes: every full block a sequence has computed goes into the [`PrefixCache`]; a
//! sequence admitted later takes the cached full blocks of its leading tokens by reference and starts
//! computing after them (never its last token, so the step samples). Only full blocks are shared and
//! the model writes only at positions from `cached` on, which lie in the sequence's own blocks: no
//! sequence ever writes into a shared block, so sharing needs no copy. When the pool has no free
//! block, blocks only the cache holds are evicted (least recently used first) before any running
//! sequence is preempted. Siblings of one request (OpenAI's `n`) wait for their leader's prefill and
//! then take its prompt's full blocks, so the prompt is computed once.
//!
//! A block the allocator refuses to take back (freed twice, or not allocated), or blocks still
//! allocated when no sequence is left, mean the bookkeeping is broken: another sequence's cache
//! could be overwritten. That is never silent: debug and test builds panic where it happens, release
//! builds log an error, count it ([`Scheduler::take_block_errors`], exported as
//! `lexserve_kv_cache_block_errors_total`) and keep serving (a leak is reclaimed once idle).

use std::collections::VecDeque;

use super::block_allocator::{BlockAllocator, BlockId, blocks_for};
use super::prefix_cache::{Inserted, NodeId, PrefixCache, ROOT};

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
    /// Leading blocks that are in the prefix cache (shared from it, or put there once full).
    pub registered: usize,
    /// The prefix cache's node for the last of them.
    pub prefix_node: NodeId,
    /// The first sibling of the same request (OpenAI's `n`): this one waits for its prefill.
    pub leader: Option<SeqId>,
    /// Trailing tokens that are a speculative draft, not yet verified ([`Scheduler::propose`] to
    /// [`Scheduler::rollback`]). Their blocks never go into the prefix cache: a rejected draft is
    /// rolled back and its positions written again, which must not happen in a block the cache
    /// (and so possibly other sequences) holds.
    pub drafted: usize,
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
    /// Prompt tokens of the sequences admitted for the first time, and how many of them were found
    /// in the prefix cache (`lexserve_prefix_cache_{query,hit}_tokens_total`).
    pub prefix_query_tokens: usize,
    pub prefix_hit_tokens: usize,
}

#[derive(Debug)]
pub struct Scheduler {
    limits: SchedulerLimits,
    allocator: BlockAllocator,
    waiting: VecDeque<Sequence>,
    /// Admission order: oldest first.
    running: Vec<Sequence>,
    /// `None` when the prefix cache is off.
    prefix_cache: Option<PrefixCache>,
    /// Bookkeeping errors since the last [`Scheduler::take_block_errors`].
    block_errors: u64,
    /// Panic on a bookkeeping error (debug and test builds) rather than log and count it.
    strict: bool,
    /// The most prompt tokens a step feeds while other sequences decode in it (see
    /// [`Scheduler::with_prefill_limit_while_decoding`]).
    prefill_while_decoding: usize,
}

impl Scheduler {
    pub fn new(limits: SchedulerLimits, blocks: usize) -> Self {
        let limits = SchedulerLimits {
            step_tokens: limits.step_tokens.max(limits.max_running).max(1),
            max_running: limits.max_running.max(1),
            block_size: limits.block_size.max(1),
        };
        Self {
            prefill_while_decoding: usize::MAX,
            limits,
            allocator: BlockAllocator::new(blocks),
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefix_cache: Some(PrefixCache::new(limits.block_size.max(1))),
            block_errors: 0,
            strict: cfg!(debug_assertions),
        }
    }

    /// Turns the prefix cache on (the default) or off (`runtime.generation.prefixCache`).
    pub fn with_prefix_cache(mut self, on: bool) -> Self {
        self.prefix_cache = on.then(|| PrefixCache::new(self.limits.block_size));
        self
    }

    /// Blocks held by more than one sequence (`lexserve_kv_cache_shared_blocks`); the prefix
    /// cache's own hold does not count, so this is memory that sharing saves.
    pub fn shared_blocks(&self) -> usize {
        let cached: std::collections::HashSet<BlockId> =
            self.prefix_cache.iter().flat_map(|c| c.blocks()).collect();
        (0..self.allocator.total() as BlockId)
            .filter(|b| self.allocator.refcount(*b) - u32::from(cached.contains(b)) > 1)
            .count()
    }

    /// Share of the pool held by sequences (`lexserve_kv_cache_usage_ratio`), 0.0 ..= 1.0. Blocks
    /// only the prefix cache holds do not count: they are kept for reuse and evicted as soon as
    /// a block is needed, so they are as good as free.
    pub fn usage_ratio(&self) -> f64 {
        let total = self.allocator.total();
        if total == 0 {
            return 0.0;
        }
        let idle = self
            .prefix_cache
            .iter()
            .flat_map(|c| c.blocks())
            .filter(|b| self.allocator.refcount(*b) == 1)
            .count();
        (self.allocator.used_count() - idle) as f64 / total as f64
    }

    /// Blocks the prefix cache holds (`lexserve_prefix_cache_blocks`).
    pub fn prefix_cache_blocks(&self) -> usize {
        self.prefix_cache.as_ref().map_or(0, PrefixCache::len)
    }

    pub fn limits(&self) -> SchedulerLimits {
        self.limits
    }

    /// Most tokens one sequence can ever hold.
    pub fn capacity_tokens(&self) -> usize {
        self.allocator.total() * self.limits.block_size
    }

    pub fn submit(&mut self, id: SeqId, prompt: Vec<u32>) {
        self.submit_sibling(id, prompt, None);
    }

    /// Submits a sequence that samples the same prompt as `leader` (submitted before it): it is
    /// admitted once the leader's prefill has put the prompt's full blocks in the prefix cache.
    pub fn submit_sibling(&mut self, id: SeqId, prompt: Vec<u32>, leader: Option<SeqId>) {
        self.waiting.push_back(Sequence {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            cached: 0,
            blocks: Vec::new(),
            admitted_once: false,
            preemptions: 0,
            registered: 0,
            prefix_node: ROOT,
            drafted: 0,
            leader,
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

    /// With no sequence left, every allocated block the prefix cache does not hold is leaked:
    /// report it and take the pool back (the cache too, which the new pool no longer backs).
    fn reclaim_leaks(&mut self) {
        let leaked = self.allocator.used_count() - self.prefix_cache_blocks();
        if self.is_idle() && leaked > 0 {
            self.bookkeeping_error(format!(
                "{leaked} blocks still allocated with no sequence left"
            ));
            self.allocator = BlockAllocator::new(self.allocator.total());
            if let Some(cache) = &mut self.prefix_cache {
                cache.clear();
            }
        }
    }

    /// Evicts one block only the prefix cache holds, back to the pool. False if there is none.
    fn evict_cached(&mut self) -> bool {
        let Some(cache) = &mut self.prefix_cache else {
            return false;
        };
        let allocator = &self.allocator;
        let Some(block) = cache.evict(|b| allocator.refcount(b)) else {
            return false;
        };
        self.release(0, &[block]);
        true
    }

    /// Puts the sequence's newly filled blocks in the prefix cache. A block whose prefix another
    /// sequence cached first is swapped for the cached one (same tokens, same keys and values),
    /// so concurrent sequences with one prefix end up holding it once.
    fn register_full_blocks(&mut self, index: usize) {
        let Some(cache) = &mut self.prefix_cache else {
            return;
        };
        let bs = self.limits.block_size;
        let seq = &mut self.running[index];
        let verified = seq.cached.min(seq.tokens.len() - seq.drafted);
        while (seq.registered + 1) * bs <= verified && seq.registered < seq.blocks.len() {
            let k = seq.registered;
            let tokens = &seq.tokens[k * bs..(k + 1) * bs];
            let own = seq.blocks[k];
            match cache.insert(seq.prefix_node, tokens, own) {
                Inserted::New(node) => {
                    if let Err(e) = self.allocator.share(&[own]) {
                        let id = seq.id;
                        self.bookkeeping_error(format!("sequence {id}: {e}"));
                        return;
                    }
                    seq.prefix_node = node;
                }
                Inserted::Existing(node, cached) => {
                    if cached != own {
                        let shared = self.allocator.share(&[cached]);
                        let released = shared.and_then(|()| self.allocator.release(&[own]));
                        if let Err(e) = released {
                            let id = seq.id;
                            self.bookkeeping_error(format!("sequence {id}: {e}"));
                            return;
                        }
                        seq.blocks[k] = cached;
                    }
                    seq.prefix_node = node;
                }
            }
            seq.registered += 1;
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
        seq.registered = 0;
        seq.prefix_node = ROOT;
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
        let mut prefill_budget = if decodes_left > 0 {
            self.prefill_while_decoding.max(decodes_left)
        } else {
            usize::MAX
        };
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
                remaining
                    .min(budget.saturating_sub(decodes_left))
                    .min(prefill_budget)
            };
            if n == 0 {
                i += 1;
                continue;
            }
            let need = blocks_for(seq.cached + n, bs).saturating_sub(seq.blocks.len());
            let mut preempted_self = false;
            while self.allocator.free_count() < need {
                if self.evict_cached() {
                    continue;
                }
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
                if !is_decode {
                    prefill_budget -= n;
                }
            }
            i += 1;
        }
        if !step.preempted.is_empty() {
            return step;
        }
        while self.running.len() < self.limits.max_running && budget > 0 && prefill_budget > 0 {
            let Some(front) = self.waiting.front() else {
                break;
            };
            if self.waits_for_leader(front) {
                break;
            }
            // The cached full blocks of its leading tokens, short of the last token (which is
            // computed so that the step samples).
            let len = front.tokens.len();
            let front_id = front.id;
            let found = match &mut self.prefix_cache {
                Some(cache) => cache.lookup(&front.tokens[..len - 1]),
                None => Vec::new(),
            };
            let shared: Vec<BlockId> = found.iter().map(|(_, b)| *b).collect();
            if let Err(e) = self.allocator.share(&shared) {
                self.bookkeeping_error(format!("prefix cache: {e}"));
                break;
            }
            let cached = shared.len() * bs;
            let n = (len - cached).min(budget).min(prefill_budget);
            let need = blocks_for(cached + n, bs) - shared.len();
            while self.allocator.free_count() < need && self.evict_cached() {}
            let Some(blocks) = self.allocator.allocate(need) else {
                self.release(front_id, &shared);
                break;
            };
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            seq.blocks = shared;
            seq.blocks.extend(blocks);
            seq.cached = cached;
            seq.registered = found.len();
            seq.prefix_node = found.last().map_or(ROOT, |(node, _)| *node);
            if !seq.admitted_once {
                seq.admitted_once = true;
                step.admitted.push(seq.id);
                step.prefix_query_tokens += seq.prompt_len;
                step.prefix_hit_tokens += cached.min(seq.prompt_len);
            }
            step.work.push(Work {
                id: seq.id,
                from: cached,
                to: cached + n,
                sample: cached + n == seq.tokens.len(),
            });
            budget -= n;
            prefill_budget = prefill_budget.saturating_sub(n);
            self.running.push(seq);
        }
        step
    }

    /// Bounds the prompt tokens of a step in which sequences decode to `tokens`, or to the number
    /// of decoding sequences where that is more: every streaming sequence waits for the whole step,
    /// and on a CPU a prompt row costs about what a decode row of the batch does, so a full prompt
    /// chunk in a step is an inter-token gap of many decode steps for everyone, while a new prompt
    /// at most doubles a step this way. Prompts are fed in chunks over several steps (their total
    /// work is the same); with nothing decoding they take the whole step budget.
    pub fn with_prefill_limit_while_decoding(mut self, tokens: usize) -> Self {
        self.prefill_while_decoding = tokens.max(1);
        self
    }

    /// A sibling waits while its leader runs and has not yet computed the prompt's full blocks
    /// (then it finds them in the prefix cache). Without the cache there is nothing to wait for.
    fn waits_for_leader(&self, seq: &Sequence) -> bool {
        let Some(leader) = seq.leader else {
            return false;
        };
        if self.prefix_cache.is_none() {
            return false;
        }
        let bs = self.limits.block_size;
        let full = (seq.prompt_len - 1) / bs * bs;
        self.running
            .iter()
            .find(|s| s.id == leader)
            .is_some_and(|l| l.cached < full)
    }

    /// Records that the step's work ran: those tokens are now cached.
    pub fn complete(&mut self, work: &[Work]) {
        for w in work {
            if let Some(i) = self.running.iter().position(|s| s.id == w.id) {
                let seq = &mut self.running[i];
                seq.cached = seq.cached.max(w.to);
                self.register_full_blocks(i);
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
        seq.drafted += k;
        k
    }

    /// Speculative decoding: replaces the drafted tokens of a running sequence (placeholders that
    /// [`Scheduler::propose`] reserved blocks for) with `draft`, which may be shorter, and frees the
    /// blocks only the positions it does not fill needed. Returns how many drafted tokens it keeps.
    pub fn redraft(&mut self, id: SeqId, draft: &[u32]) -> usize {
        let bs = self.limits.block_size;
        let Some(seq) = self.running.iter_mut().find(|s| s.id == id) else {
            return 0;
        };
        let first = seq.tokens.len() - seq.drafted;
        let k = draft.len().min(seq.drafted);
        seq.tokens.truncate(first);
        seq.tokens.extend_from_slice(&draft[..k]);
        seq.drafted = k;
        let keep = blocks_for(seq.tokens.len(), bs).min(seq.blocks.len());
        let spare = seq.blocks.split_off(keep);
        if !spare.is_empty() {
            self.release(id, &spare);
        }
        k
    }

    /// Speculative decoding: drops a running sequence's tokens from `len` on (the drafted tokens the
    /// model did not confirm) and their cache positions (the keys and values written there are
    /// overwritten when the positions are fed again), and frees the blocks only they used.
    pub fn rollback(&mut self, id: SeqId, len: usize) {
        let bs = self.limits.block_size;
        let Some(index) = self.running.iter().position(|s| s.id == id) else {
            return;
        };
        let seq = &mut self.running[index];
        seq.tokens.truncate(len.max(seq.prompt_len));
        seq.drafted = 0;
        seq.cached = seq.cached.min(seq.tokens.len());
        let keep = blocks_for(seq.tokens.len(), bs).min(seq.blocks.len());
        let spare = seq.blocks.split_off(keep);
        if !spare.is_empty() {
            self.release(id, &spare);
        }
        // The accepted part of the draft is verified now: its full blocks may be shared.
        self.register_full_blocks(index);
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

    /// Bookkeeping invariants, for tests: each block's reference count is its number of holders
    /// (sequences and the prefix cache) and nothing else is allocated; no sequence holds a block
    /// twice, or a shared block it will still write into; a sequence's cached blocks hold its
    /// tokens; waiting sequences hold none; running ones hold what their cached tokens need.
    pub fn check_invariants(&self) -> Result<(), String> {
        let bs = self.limits.block_size;
        let mut holders = std::collections::HashMap::<BlockId, u32>::new();
        let cached_blocks: Vec<BlockId> =
            self.prefix_cache.iter().flat_map(|c| c.blocks()).collect();
        for s in &self.running {
            let mut own = s.blocks.clone();
            own.sort_unstable();
            own.dedup();
            if own.len() != s.blocks.len() {
                return Err(format!("sequence {} holds a block twice", s.id));
            }
        }
        for &b in self
            .running
            .iter()
            .flat_map(|s| &s.blocks)
            .chain(&cached_blocks)
        {
            *holders.entry(b).or_default() += 1;
        }
        if let Some((b, n)) = holders
            .iter()
            .find(|(b, n)| self.allocator.refcount(**b) != **n)
        {
            return Err(format!(
                "block {b} has {n} holders but a reference count of {}",
                self.allocator.refcount(*b)
            ));
        }
        if holders.len() != self.allocator.used_count() {
            return Err(format!(
                "{} blocks held but {} allocated",
                holders.len(),
                self.allocator.used_count()
            ));
        }
        for s in &self.running {
            // Copy-on-write never needed: the block being written, and any after it, are its own.
            if let Some(b) = s.blocks[(s.cached / bs).min(s.blocks.len())..]
                .iter()
                .find(|b| self.allocator.refcount(**b) != 1)
            {
                return Err(format!(
                    "sequence {} will write into block {b}, which is shared",
                    s.id
                ));
            }
            if let Some(cache) = &self.prefix_cache {
                for (k, b) in s.blocks.iter().enumerate() {
                    let Some(node) = cache.node_of(*b) else {
                        continue;
                    };
                    let end = (k + 1) * bs;
                    if end > s.cached
                        || cache.prefix_tokens(node).as_deref() != Some(&s.tokens[..end])
                    {
                        return Err(format!(
                            "sequence {}'s block {k} is cached for other tokens",
                            s.id
                        ));
                    }
                }
            }
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

    /// The scheduler without a prefix cache: block counts as the sequences alone hold them.
    fn plain(limits: SchedulerLimits, blocks: usize) -> Scheduler {
        Scheduler::new(limits, blocks).with_prefix_cache(false)
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

    /// While sequences decode, a step feeds at most the prefill limit of prompt tokens (running
    /// prompts and admissions together); with nothing decoding a prompt takes the whole budget.
    #[test]
    fn prompts_are_fed_in_small_chunks_while_others_decode() {
        let mut s = plain(limits(4, 64, 4), 100).with_prefill_limit_while_decoding(6);
        s.submit(1, vec![1; 20]);
        let step = run(&mut s);
        assert_eq!(
            step.work,
            vec![work(1, 0, 20, true)],
            "alone: the whole prompt"
        );
        // Sequence 1 decodes; two prompts of 10 arrive: 6 prompt tokens per step between them.
        s.submit(2, vec![2; 10]);
        s.submit(3, vec![3; 10]);
        let step = run(&mut s);
        assert_eq!(step.work, vec![work(1, 20, 21, true), work(2, 0, 6, false)]);
        let step = run(&mut s);
        assert_eq!(
            step.work,
            vec![
                work(1, 21, 22, true),
                work(2, 6, 10, true),
                work(3, 0, 2, false)
            ]
        );
        let step = run(&mut s);
        assert_eq!(
            step.work,
            vec![
                work(1, 22, 23, true),
                work(2, 10, 11, true),
                work(3, 2, 8, false)
            ]
        );
        // More sequences decoding than the limit: as many prompt tokens as sequences decode.
        let mut s = plain(limits(16, 64, 4), 100).with_prefill_limit_while_decoding(2);
        for id in 1..=4 {
            s.submit(id, vec![1; 3]);
        }
        run(&mut s);
        s.submit(5, vec![5; 10]);
        let step = run(&mut s);
        assert_eq!(step.work.len(), 5);
        assert_eq!(
            step.work[4],
            work(5, 0, 4, false),
            "4 decoding: 4 prompt tokens"
        );
        // Without a limit the same prompts go in at once.
        let mut s = plain(limits(4, 64, 4), 100);
        s.submit(1, vec![1; 20]);
        run(&mut s);
        s.submit(2, vec![2; 10]);
        s.submit(3, vec![3; 10]);
        let step = run(&mut s);
        assert_eq!(
            step.work,
            vec![
                work(1, 20, 21, true),
                work(2, 0, 10, true),
                work(3, 0, 10, true)
            ]
        );
    }

    #[test]
    fn prompts_are_chunked_by_the_budget_and_decodes_come_first() {
        let mut s = plain(limits(4, 8, 4), 100);
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
        let mut s = plain(limits(2, 64, 4), 4);
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
        let mut s = plain(limits(4, 16, 2), 3);
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
        let mut s = plain(limits(2, 8, 4), 64);
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
        let mut s = plain(limits(3, 12, 4), 8);
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
        let mut s = plain(limits(2, 8, 4), 8);
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
        let mut s = plain(limits(2, 8, 4), 8);
        s.submit(1, vec![1; 4]);
        run(&mut s);
        s.allocator.allocate(1).unwrap();
        s.remove(1);
    }

    #[test]
    fn removing_a_waiting_sequence_frees_nothing_it_does_not_hold() {
        let mut s = plain(limits(1, 8, 4), 8);
        s.submit(1, vec![1; 4]);
        s.submit(2, vec![1; 4]);
        run(&mut s);
        assert!(s.remove(2).is_some());
        assert!(s.remove(2).is_none());
        s.check_invariants().unwrap();
        assert_eq!(s.allocator().used_count(), 1);
    }

    /// A draft model's placeholders: `propose` reserves the blocks of the most a draft may be,
    /// `redraft` puts the drafted tokens in and gives back the blocks of the positions the draft
    /// does not reach; the verified tokens before it are untouched.
    #[test]
    fn redrafting_keeps_the_drafted_tokens_and_frees_the_blocks_they_do_not_reach() {
        let mut s = Scheduler::new(limits(4, 64, 4), 32);
        s.submit(1, vec![1, 2, 3, 4, 5, 6]);
        run(&mut s);
        let mut step = s.schedule();
        assert_eq!(step.work, vec![work(1, 6, 7, true)]);
        let used = s.allocator().used_count();
        // Placeholders for positions 7..15: blocks 2 and 3 reserved (block 1 holds 4..8).
        assert_eq!(s.propose(1, &[0; 8]), 8);
        assert_eq!(s.allocator().used_count(), used + 2);
        s.check_invariants().unwrap();
        // The draft model wrote 3 tokens: positions 7..10, block 2 still needed, block 3 freed.
        assert_eq!(s.redraft(1, &[20, 21, 22]), 3);
        assert_eq!(s.allocator().used_count(), used + 1);
        assert_eq!(
            s.get(1).unwrap().tokens,
            vec![1, 2, 3, 4, 5, 6, 7, 20, 21, 22]
        );
        s.check_invariants().unwrap();
        step.work[0].to += 3;
        s.complete(&step.work);
        // Nothing drafted: every placeholder goes, with its blocks.
        s.rollback(1, 8);
        s.append_token(1, 9);
        let mut step = s.schedule();
        let before = s.allocator().used_count();
        assert!(s.propose(1, &[0; 4]) > 0);
        assert_eq!(s.redraft(1, &[]), 0);
        assert_eq!(s.allocator().used_count(), before);
        assert_eq!(s.get(1).unwrap().tokens.len(), 9);
        s.check_invariants().unwrap();
        step.work.retain(|w| w.id == 1);
        s.complete(&step.work);
        s.check_invariants().unwrap();
        assert!(s.remove(1).is_some());
        s.check_invariants().unwrap();
    }

    /// Speculation with the prefix cache: a block is cached only once every token in it is
    /// verified. Were the block holding a draft cached, the rollback of a rejected draft would write
    /// the corrected positions into a block the cache holds, under the draft's tokens.
    #[test]
    fn a_rejected_draft_never_reaches_the_prefix_cache() {
        let mut s = Scheduler::new(limits(4, 64, 4), 32);
        s.submit(1, vec![1, 2, 3, 4, 5, 6]);
        run(&mut s);
        assert_eq!(s.prefix_cache_blocks(), 1, "positions 0..4");
        // It decodes position 6 (token 7) with a draft for positions 7..10: block 1 (4..8) is
        // full, but position 7 holds a draft.
        let mut step = s.schedule();
        assert_eq!(step.work, vec![work(1, 6, 7, true)]);
        let drafted = s.propose(1, &[20, 21, 22]);
        assert_eq!(drafted, 3);
        step.work[0].to += drafted;
        s.complete(&step.work);
        s.check_invariants().unwrap();
        assert_eq!(
            s.prefix_cache_blocks(),
            1,
            "a block with a draft in it is not cached"
        );
        // The model rejects the whole draft and samples 30 at position 7 instead.
        s.rollback(1, 7);
        s.append_token(1, 30);
        s.check_invariants().unwrap();
        let step = run(&mut s);
        assert_eq!(
            step.work,
            vec![work(1, 7, 8, true)],
            "position 7 is written again"
        );
        assert_eq!(s.prefix_cache_blocks(), 2, "block 1, verified now");
        // A prompt continuing with the verified tokens finds both blocks; one continuing with
        // the rejected draft only the first.
        s.submit(2, vec![1, 2, 3, 4, 5, 6, 7, 30, 9]);
        s.submit(3, vec![1, 2, 3, 4, 5, 6, 7, 20, 9]);
        let step = run(&mut s);
        assert_eq!(step.work[1..], [work(2, 8, 9, true), work(3, 4, 9, true)]);
    }

    #[test]
    fn a_cached_prefix_is_taken_by_reference_and_not_computed_again() {
        let mut s = Scheduler::new(limits(4, 64, 4), 32);
        let system: Vec<u32> = (0..10).collect();
        let ask = |q: u32| {
            system
                .iter()
                .copied()
                .chain([100 + q, 101])
                .collect::<Vec<_>>()
        };
        s.submit(1, ask(1));
        let step = run(&mut s);
        assert_eq!(step.work, vec![work(1, 0, 12, true)]);
        assert_eq!((step.prefix_query_tokens, step.prefix_hit_tokens), (12, 0));
        // Blocks 0..4 and 4..8 are the system prompt's; 8..12 holds the question.
        assert_eq!(s.prefix_cache_blocks(), 3);
        let first = s.get(1).unwrap().blocks.clone();
        s.submit(2, ask(2));
        let step = run(&mut s);
        assert_eq!(step.work[1], work(2, 8, 12, true), "prefill skips 8 tokens");
        assert_eq!((step.prefix_query_tokens, step.prefix_hit_tokens), (12, 8));
        assert_eq!(s.get(2).unwrap().blocks[..2], first[..2]);
        assert_ne!(s.get(2).unwrap().blocks[2], first[2]);
        assert_eq!(s.shared_blocks(), 2);
        // A finished sequence's blocks stay cached for the next one.
        s.remove(1);
        s.remove(2);
        assert_eq!(s.allocator().used_count(), s.prefix_cache_blocks());
        s.submit(3, ask(1));
        let step = run(&mut s);
        // Its whole prompt is cached, but its last token is computed so that the step samples:
        // the third block, which ends with it, is computed again (only whole blocks are shared).
        assert_eq!(step.work, vec![work(3, 8, 12, true)]);
        assert_eq!(step.prefix_hit_tokens, 8);
    }

    #[test]
    fn the_same_prompt_at_once_is_held_once_after_its_prefill() {
        let mut s = Scheduler::new(limits(4, 64, 4), 32);
        for id in 1..=3 {
            s.submit(id, vec![5; 9]);
        }
        run(&mut s);
        let blocks: Vec<Vec<BlockId>> = (1..=3)
            .map(|id| s.get(id).unwrap().blocks.clone())
            .collect();
        assert!(blocks.iter().all(|b| b[..2] == blocks[0][..2]));
        // Two shared full blocks, and a last partial block each.
        assert_eq!(s.allocator().used_count(), 2 + 3);
    }

    #[test]
    fn siblings_wait_for_their_leaders_prefill_then_share_it() {
        let mut s = Scheduler::new(limits(4, 6, 4), 32);
        s.submit(1, vec![3; 10]);
        s.submit_sibling(2, vec![3; 10], Some(1));
        s.submit_sibling(3, vec![3; 10], Some(1));
        let step = run(&mut s);
        assert_eq!(step.work, vec![work(1, 0, 6, false)]);
        assert_eq!(s.waiting_len(), 2, "the leader's prefill is not done");
        let step = run(&mut s);
        assert_eq!(step.work, vec![work(1, 6, 10, true)]);
        let step = run(&mut s);
        assert_eq!(
            step.work,
            vec![
                work(1, 10, 11, true),
                work(2, 8, 10, true),
                work(3, 8, 10, true)
            ]
        );
        assert_eq!(step.prefix_hit_tokens, 16);
    }

    #[test]
    fn cached_blocks_are_evicted_before_a_running_sequence_is_preempted() {
        // 6 blocks of 2. A finished sequence leaves 3 cached blocks behind.
        let mut s = Scheduler::new(limits(4, 16, 2), 6);
        s.submit(1, vec![9; 7]);
        run(&mut s);
        s.remove(1);
        assert_eq!(s.prefix_cache_blocks(), 3);
        // Two new sequences of other tokens need all 6 blocks between them as they grow.
        s.submit(2, vec![1; 2]);
        s.submit(3, vec![2; 2]);
        run(&mut s);
        assert_eq!(s.allocator().free_count(), 1);
        for _ in 0..3 {
            let step = run(&mut s);
            assert!(step.preempted.is_empty(), "evicts the cache first");
        }
        assert_eq!(
            s.prefix_cache_blocks(),
            4,
            "only the running ones' full blocks left"
        );
        assert_eq!(s.get(2).unwrap().blocks.len(), 3);
        assert_eq!(s.get(3).unwrap().blocks.len(), 3);
        assert!(run(&mut s).preempted.is_empty(), "no new block needed");
        // Now the cache holds nothing idle: the next block costs a preemption.
        let step = run(&mut s);
        assert_eq!(step.preempted, vec![3]);
    }
}
