//! Speculative decoding with a draft model (`runtime.generation.speculation.mode: draft`): a smaller
//! decoder with the same vocabulary writes each decoding sequence's next tokens greedily, one batched
//! step per drafted token, and the engine verifies them exactly as it verifies prompt-lookup drafts
//! ([`super::speculative::verify`]): every emitted token is sampled from the model's own logits, so
//! the output is plain decoding's whatever the draft model says. Only speed depends on it.
//!
//! **Its cache.** The draft model's keys and values live in a second [`PagedKvCache`] with as many
//! blocks as the model's, addressed through the same block tables: position `p` of a sequence is at
//! the same block and slot in both caches. The scheduler's bookkeeping (admission, preemption,
//! drafted positions and their rollback) thus covers both, and the draft cache needs no allocator.
//! What the draft cache holds is a hint: a sequence trusts only the positions it wrote itself
//! (`cached`), and catches up on the rest (the prompt, the tokens it accepted) in the step where it
//! next drafts, in chunks bounded by the step's token budget.
//!
//! The caller reserves the blocks of the drafted positions before drafting (placeholder tokens
//! through the scheduler's `propose`), since drafting writes their keys and values.

use std::collections::HashMap;

use super::block_allocator::BlockId;
use super::kv_cache::PagedKvCache;
use super::model::{DecoderModel, ModelError, SeqChunk};
use super::sampling::argmax;
use super::scheduler::SeqId;

/// A sequence that may draft this step.
pub struct DraftRequest<'a> {
    pub id: SeqId,
    /// Its known tokens: the prompt, what it generated, and last the token this step decodes.
    pub tokens: &'a [u32],
    /// Its block table, covering `tokens.len() + limit - 1` positions.
    pub blocks: &'a [BlockId],
    /// The most tokens to draft.
    pub limit: usize,
}

pub struct Drafter {
    model: DecoderModel,
    cache: PagedKvCache,
    /// Per sequence: how many leading positions hold keys and values it wrote in `cache`.
    cached: HashMap<SeqId, usize>,
    /// Tokens that end a generation: nothing is drafted after one.
    stop_ids: Vec<u32>,
    /// The most catch-up tokens fed in one step, all sequences together.
    catch_up_tokens: usize,
}

impl Drafter {
    pub fn new(
        model: DecoderModel,
        cache: PagedKvCache,
        stop_ids: Vec<u32>,
        catch_up_tokens: usize,
    ) -> Self {
        Self {
            model,
            cache,
            cached: HashMap::new(),
            stop_ids,
            catch_up_tokens: catch_up_tokens.max(1),
        }
    }

    pub fn model(&self) -> &DecoderModel {
        &self.model
    }

    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Drafts for `requests`: up to `limit` tokens each, in request order. A sequence whose draft
    /// cache is behind by more than what the step's catch-up budget leaves is fed part of its
    /// backlog and drafts nothing this step.
    pub fn draft(&mut self, requests: &[DraftRequest<'_>]) -> Result<Vec<Vec<u32>>, ModelError> {
        let mut drafts = vec![Vec::new(); requests.len()];
        // Round 1: each sequence's backlog up to and including its decode token, with the logits
        // after the last one (the first drafted token).
        let mut budget = self.catch_up_tokens;
        let mut chunks = Vec::new();
        let mut drafting = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let n = r.tokens.len();
            if r.limit == 0 || n == 0 || budget == 0 {
                continue;
            }
            let from = self.cached.get(&r.id).copied().unwrap_or(0).min(n - 1);
            let take = (n - from).min(budget);
            budget -= take;
            let complete = from + take == n;
            chunks.push(SeqChunk {
                tokens: &r.tokens[from..from + take],
                start: from,
                blocks: r.blocks,
                logits: usize::from(complete),
            });
            self.cached.insert(r.id, from + take);
            if complete {
                drafting.push(i);
            }
        }
        if chunks.is_empty() {
            return Ok(drafts);
        }
        let rows = self.model.forward(&chunks, &mut self.cache)?;
        for (&i, row) in drafting.iter().zip(&rows) {
            drafts[i].push(argmax(row));
        }
        // Further rounds: the last drafted token of every sequence that wants more, one row each.
        loop {
            drafting.retain(|&i| {
                let last = *drafts[i].last().expect("drafted in round 1");
                drafts[i].len() < requests[i].limit && !self.stop_ids.contains(&last)
            });
            if drafting.is_empty() {
                break;
            }
            let fed: Vec<[u32; 1]> = drafting
                .iter()
                .map(|&i| [*drafts[i].last().expect("drafted")])
                .collect();
            let chunks: Vec<SeqChunk<'_>> = drafting
                .iter()
                .zip(&fed)
                .map(|(&i, token)| SeqChunk {
                    tokens: token,
                    start: requests[i].tokens.len() + drafts[i].len() - 1,
                    blocks: requests[i].blocks,
                    logits: 1,
                })
                .collect();
            let rows = self.model.forward(&chunks, &mut self.cache)?;
            for (&i, row) in drafting.iter().zip(&rows) {
                drafts[i].push(argmax(row));
                let r = &requests[i];
                self.cached
                    .insert(r.id, r.tokens.len() + drafts[i].len() - 1);
            }
        }
        Ok(drafts)
    }

    /// After verification: of the tokens drafted from position `first` on, `accepted` were kept. The
    /// keys and values written for the rejected ones (and for the token that replaced the first
    /// rejected one) are not the sequence's.
    pub fn verified(&mut self, id: SeqId, first: usize, accepted: usize) {
        if let Some(cached) = self.cached.get_mut(&id) {
            *cached = (*cached).min(first + accepted);
        }
    }

    /// Forgets a sequence that left, or whose blocks were taken (preempted: it is recomputed into
    /// other blocks).
    pub fn forget(&mut self, id: SeqId) {
        self.cached.remove(&id);
    }

    /// Positions of `id` the draft cache holds (for tests).
    pub fn cached(&self, id: SeqId) -> usize {
        self.cached.get(&id).copied().unwrap_or(0)
    }
}
