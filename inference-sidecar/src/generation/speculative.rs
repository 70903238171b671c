//! Speculative decoding by prompt lookup (n-gram drafting): a sequence that is copying from its own
//! text (repeat, extract, quote, edit code) is likely to continue the way an earlier occurrence of its
//! last few tokens did. Those following tokens are proposed as a draft; the engine feeds the decode
//! token and the draft as one chunk, gets the logits after every row, and samples them in order with
//! the sequence's own sampler, keeping drafted tokens while the sampled token equals them. The first
//! sampled token that differs (or the bonus token after a fully accepted draft) ends the step.
//!
//! **Exact by construction.** Each emitted token is sampled from the logits the plain path would
//! have computed at that position (a row's logits do not depend on the other rows of its step: the
//! matmul tiles and the paged attention are batch-invariant, see `quant_matmul` and
//! `paged_attention`), with the same sampler consuming its random numbers in the same order (one draw
//! per emitted token, none for the rejected rest). So greedy and seeded sampling give the ids plain
//! decoding gives, only several per step when drafts are accepted.
//!
//! **Back-off.** A draft costs its rows in the step's matmuls even when all of it is rejected, which
//! ordinary chat mostly is. Each sequence keeps a running acceptance rate; when it drops below
//! [`MIN_ACCEPTANCE`] the sequence stops drafting for a pause that doubles each time it fails again
//! (up to [`MAX_PAUSE`] decode steps) and resets once drafts are accepted again.
//!
//! This file holds the decisions (pure functions and per-sequence state); the engine calls them and
//! the scheduler's `propose` and `rollback` hooks keep the tokens and blocks in step.

use std::collections::HashMap;

use super::scheduler::SeqId;

/// Which drafter runs: `Off` (plain decoding) or `Ngram` (prompt lookup).
pub use lexserve_contract::SpeculationMode;

/// `runtime.generation.speculation`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculationConfig {
    pub mode: SpeculationMode,
    /// The most drafted tokens verified per sequence and step.
    pub max_draft_tokens: usize,
}

impl SpeculationConfig {
    pub fn off() -> Self {
        Self {
            mode: SpeculationMode::None,
            max_draft_tokens: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.mode != SpeculationMode::None && self.max_draft_tokens > 0
    }
}

/// The longest suffix looked up; shorter ones are tried when it does not occur earlier.
pub const MAX_NGRAM: usize = 3;

/// Below this running acceptance rate a sequence pauses its drafting.
pub const MIN_ACCEPTANCE: f32 = 0.3;

/// The first pause, in decode steps; each failed retry doubles it.
pub const FIRST_PAUSE: u32 = 4;

/// The longest pause, in decode steps.
pub const MAX_PAUSE: u32 = 256;

/// The draft for `tokens` (prompt and generated so far): the tokens that followed the most recent
/// earlier occurrence of its last `n` tokens, for `n` from `max_ngram` down to 1, at most
/// `max_draft` of them. Empty when no suffix occurs earlier.
pub fn ngram_draft(tokens: &[u32], max_ngram: usize, max_draft: usize) -> &[u32] {
    if max_draft == 0 {
        return &[];
    }
    let len = tokens.len();
    for n in (1..=max_ngram.min(len.saturating_sub(1))).rev() {
        let suffix = &tokens[len - n..];
        // Occurrences that end before the last token, latest first: the most recent context is
        // the likeliest to be the one being copied.
        if let Some(at) = (0..len - n).rev().find(|&i| &tokens[i..i + n] == suffix) {
            let from = at + n;
            return &tokens[from..(from + max_draft).min(len)];
        }
    }
    &[]
}

/// Verifies `draft` against `rows`, the logits after the decode token and after each drafted token
/// (`draft.len() + 1` rows), sampling each row in order with `sample`. Returns the tokens to emit:
/// the accepted drafted tokens, then the first sampled token that differs from its draft (or the
/// bonus token after the last row). `sample` is called exactly once per returned token.
pub fn verify(draft: &[u32], rows: &[Vec<f32>], mut sample: impl FnMut(&[f32]) -> u32) -> Vec<u32> {
    let mut emitted = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let token = sample(row);
        emitted.push(token);
        if draft.get(i) != Some(&token) {
            break;
        }
    }
    emitted
}

/// One sequence's drafting state: its running acceptance and back-off.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SeqState {
    /// Exponentially weighted acceptance rate of its drafts. It starts at the threshold, so a first
    /// draft that is mostly rejected pauses drafting at once (ordinary chat pays for one draft).
    acceptance: f32,
    /// Decode steps left before it drafts again.
    paused: u32,
    /// The pause the next failure imposes.
    next_pause: u32,
}

impl Default for SeqState {
    fn default() -> Self {
        Self {
            acceptance: MIN_ACCEPTANCE,
            paused: 0,
            next_pause: FIRST_PAUSE,
        }
    }
}

/// The engine's drafter: per-sequence back-off and the totals behind the acceptance metrics.
#[derive(Debug, Default)]
pub struct Speculator {
    config: Option<SpeculationConfig>,
    states: HashMap<SeqId, SeqState>,
    /// Drafted tokens verified, and of those accepted, since start.
    pub drafted: u64,
    pub accepted: u64,
}

impl Speculator {
    pub fn new(config: SpeculationConfig) -> Self {
        Self {
            config: config.enabled().then_some(config),
            ..Self::default()
        }
    }

    /// The draft for a sequence about to decode after `tokens`, at most `limit` tokens (what its
    /// stream, its token limit, the context and the step's budget leave). Empty while the sequence
    /// is backing off; each call for a paused sequence counts one step of its pause.
    pub fn draft<'t>(&mut self, id: SeqId, tokens: &'t [u32], limit: usize) -> &'t [u32] {
        let Some(config) = self.config else {
            return &[];
        };
        if !self.may_draft(id) {
            return &[];
        }
        ngram_draft(tokens, MAX_NGRAM, config.max_draft_tokens.min(limit))
    }

    /// Whether a sequence about to decode drafts this step: speculation is on and the sequence is
    /// not backing off. Each call for a paused sequence counts one step of its pause.
    pub fn may_draft(&mut self, id: SeqId) -> bool {
        if self.config.is_none() {
            return false;
        }
        let state = self.states.entry(id).or_default();
        if state.paused > 0 {
            state.paused -= 1;
            return false;
        }
        true
    }

    /// The most tokens drafted per sequence and step (0 when speculation is off).
    pub fn max_draft_tokens(&self) -> usize {
        self.config.map_or(0, |c| c.max_draft_tokens)
    }

    /// Records the outcome of a verified draft: `accepted` of `drafted` tokens were kept.
    pub fn record(&mut self, id: SeqId, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.drafted += drafted as u64;
        self.accepted += accepted as u64;
        let state = self.states.entry(id).or_default();
        let rate = accepted as f32 / drafted as f32;
        state.acceptance = 0.5 * state.acceptance + 0.5 * rate;
        if state.acceptance < MIN_ACCEPTANCE {
            state.paused = state.next_pause;
            state.next_pause = (state.next_pause * 2).min(MAX_PAUSE);
            // After the pause one draft decides: as good as the threshold, drafting goes on; worse,
            // a longer pause.
            state.acceptance = MIN_ACCEPTANCE;
        } else if rate >= MIN_ACCEPTANCE {
            state.next_pause = FIRST_PAUSE;
        }
    }

    /// Forgets a sequence that left.
    pub fn forget(&mut self, id: SeqId) {
        self.states.remove(&id);
    }

    /// Whether a sequence is pausing its drafting now (for tests).
    pub fn is_paused(&self, id: SeqId) -> bool {
        self.states.get(&id).is_some_and(|s| s.paused > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::block_allocator::blocks_for;
    use crate::generation::scheduler::{Scheduler, SchedulerLimits};

    #[test]
    fn the_draft_follows_the_latest_occurrence_of_the_longest_suffix() {
        // "... 1 2 3 | 9 9" earlier, "1 2 3 | 4 5" later, and the text ends in "1 2 3".
        let tokens = [7, 1, 2, 3, 9, 9, 8, 1, 2, 3, 4, 5, 6, 1, 2, 3];
        assert_eq!(ngram_draft(&tokens, 3, 2), &[4, 5]);
        assert_eq!(ngram_draft(&tokens, 3, 10), &[4, 5, 6, 1, 2, 3]);
        // "2 3" does not occur before "5 6 3"'s end... only the 1-gram "3" does.
        let tokens = [3, 8, 8, 5, 6, 3];
        assert_eq!(ngram_draft(&tokens, 3, 4), &[8, 8, 5, 6]);
        // Nothing occurs earlier; a draft of 0 is asked for; too short to have an earlier part.
        assert!(ngram_draft(&[1, 2, 3, 4], 3, 4).is_empty());
        assert!(ngram_draft(&[1, 2, 1], 3, 0).is_empty());
        assert!(ngram_draft(&[1], 3, 4).is_empty());
        assert!(ngram_draft(&[], 3, 4).is_empty());
        // A run of one token proposes more of it, cut at the end of the known tokens.
        assert_eq!(ngram_draft(&[5, 5, 5], 3, 8), &[5]);
    }

    #[test]
    fn verification_keeps_drafts_while_the_sampled_token_agrees() {
        // Each row's logits pick the token of its index: row i -> token rows[i].
        let one_hot = |t: usize| {
            let mut row = vec![0f32; 10];
            row[t] = 1.0;
            row
        };
        let rows: Vec<Vec<f32>> = [4, 5, 6, 7].iter().map(|&t| one_hot(t)).collect();
        let argmax = |r: &[f32]| crate::generation::sampling::argmax(r);
        // All three accepted, plus the bonus token.
        assert_eq!(verify(&[4, 5, 6], &rows, argmax), vec![4, 5, 6, 7]);
        // The second differs: the sampled one replaces it and ends the step.
        let mut calls = 0;
        let emitted = verify(&[4, 9, 6], &rows, |r| {
            calls += 1;
            argmax(r)
        });
        assert_eq!(emitted, vec![4, 5]);
        assert_eq!(calls, 2, "no draw for rows after the first rejection");
        // No draft: one ordinary sample.
        assert_eq!(verify(&[], &rows[..1], argmax), vec![4]);
    }

    #[test]
    fn low_acceptance_backs_off_exponentially_and_good_drafts_reset_it() {
        let mut s = Speculator::new(SpeculationConfig {
            mode: SpeculationMode::Ngram,
            max_draft_tokens: 4,
        });
        let tokens = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2];
        assert_eq!(s.draft(1, &tokens, 8), &[3, 4, 1, 2]);
        // A good draft, then two rejected ones: 0.3 -> 0.65 -> 0.325 -> 0.16 < 0.3, a pause of
        // FIRST_PAUSE steps.
        s.record(1, 4, 4);
        s.record(1, 4, 0);
        assert!(!s.is_paused(1));
        s.record(1, 4, 0);
        let paused_steps = |s: &mut Speculator| {
            let mut n = 0;
            while s.draft(1, &tokens, 8).is_empty() {
                n += 1;
            }
            n
        };
        assert_eq!(paused_steps(&mut s), FIRST_PAUSE);
        // Failing again right after the pause doubles it.
        s.record(1, 4, 0);
        assert_eq!(paused_steps(&mut s), 2 * FIRST_PAUSE);
        s.record(1, 4, 1);
        assert_eq!(paused_steps(&mut s), 4 * FIRST_PAUSE);
        // A good draft resets the pause; the next failure pauses for FIRST_PAUSE again.
        s.record(1, 4, 4);
        assert_eq!(paused_steps(&mut s), 0);
        s.record(1, 4, 0);
        s.record(1, 4, 0);
        assert_eq!(paused_steps(&mut s), FIRST_PAUSE);
        // A new sequence whose first draft is rejected pauses at once.
        s.record(3, 4, 0);
        assert!(s.is_paused(3));
        // Up to MAX_PAUSE.
        for _ in 0..20 {
            s.record(1, 4, 0);
            paused_steps(&mut s);
        }
        s.record(1, 4, 0);
        assert_eq!(paused_steps(&mut s), MAX_PAUSE);
        // Other sequences are not affected; the totals count every verified draft.
        assert_eq!(s.draft(2, &tokens, 8), &[3, 4, 1, 2]);
        assert_eq!(s.draft(2, &tokens, 2), &[3, 4], "the caller's limit");
        assert!(s.accepted > 0 && s.drafted > s.accepted);
        // Off drafts nothing.
        let mut off = Speculator::new(SpeculationConfig::off());
        assert!(off.draft(1, &tokens, 8).is_empty());
    }

    /// Drafts proposed and rolled back at random in a small pool, with sequences finishing and new
    /// ones arriving: after every step the scheduler's invariants hold (no block held twice or
    /// leaked, none held beyond what a sequence's tokens need), and the pool is whole at the end.
    #[test]
    fn proposing_and_rolling_back_drafts_keeps_the_block_bookkeeping_whole() {
        let block_size = 4;
        let mut s = Scheduler::new(
            SchedulerLimits {
                max_running: 3,
                step_tokens: 16,
                block_size,
            },
            12,
        );
        let mut state = 7u64;
        let mut random = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % n) as usize
        };
        let mut next_id = 0;
        let mut drafted_any = false;
        for round in 0..400 {
            if round < 300 && s.waiting_len() < 2 {
                s.submit(next_id, vec![1; 1 + random(9)]);
                next_id += 1;
            }
            let step = s.schedule();
            s.check_invariants().unwrap();
            let mut work = step.work.clone();
            let mut drafts = vec![0; work.len()];
            for (w, k) in work.iter_mut().zip(&mut drafts) {
                if w.sample && w.to - w.from == 1 {
                    let draft = vec![2; random(7)];
                    *k = s.propose(w.id, &draft);
                    assert!(*k <= draft.len());
                    drafted_any |= *k > 0;
                    w.to += *k;
                    let seq = s.get(w.id).unwrap();
                    assert!(seq.blocks.len() >= blocks_for(w.to, block_size));
                }
            }
            s.check_invariants().unwrap();
            s.complete(&work);
            for (w, k) in work.iter().zip(&drafts) {
                if !w.sample {
                    continue;
                }
                // Keep a random part of the draft, then the sampled token.
                let accepted = random(*k as u64 + 1);
                s.rollback(w.id, w.to - k + accepted);
                s.append_token(w.id, 3);
                s.complete(&[crate::generation::scheduler::Work {
                    id: w.id,
                    from: w.to - k,
                    to: w.to - k + accepted,
                    sample: false,
                }]);
                s.check_invariants().unwrap();
                if random(10) == 0 || s.get(w.id).unwrap().tokens.len() > 30 {
                    s.remove(w.id);
                    s.check_invariants().unwrap();
                }
            }
        }
        assert!(drafted_any, "the pool left room for drafts");
        for id in s.ids() {
            s.remove(id);
        }
        s.check_invariants().unwrap();
        // What is left is the prefix cache's (full blocks of verified tokens, free on demand).
        assert_eq!(s.allocator().used_count(), s.prefix_cache_blocks());
    }
}
