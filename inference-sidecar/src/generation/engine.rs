//! The generation engine: one thread owns the model, the KV cache and the scheduler, and loops —
//! take new requests, drop sequences whose client went away, plan a step, run it as one batched
//! forward, sample, stream tokens out, retire finished sequences. Clients talk to it through
//! [`Generator`] ([`super::generator`]); the model comes from [`super::gguf`].
//!
//! A client's stream is bounded. When it is full, the token that did not fit is held and the
//! sequence sits out the steps (keeping its cache blocks) until the client takes an event; a
//! client that takes none for `stall_timeout` loses its sequence, and its blocks go back to the
//! pool. A slow reader thus slows only its own sequence, and a client that stopped reading holds
//! neither memory nor cache for long.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender as EventSender;
use tokio::sync::mpsc::error::TrySendError;

use super::draft_model::{DraftRequest, Drafter};
use super::generator::{
    Finish, FinishReason, GenerationEvent, Generator, GeneratorLimits, Submission,
};
use super::gguf::{LoadedGguf, load_gguf, locate_gguf, locate_gguf_at};
use super::kv_cache::{KvCacheDtype, PagedKvCache, blocks_in_budget};
use super::model::{DecoderModel, SeqChunk};
use super::sampling::Sampler;
use super::scheduler::{Scheduler, SchedulerLimits, SeqId, Step, Work};
use super::speculative::{SpeculationConfig, SpeculationMode, Speculator};
use super::stopping::{StopCheck, StopMatcher};
use super::tokenizer::Detokenizer;
use crate::config::ServeConfig;
use crate::metrics::Metrics;

/// Sizing of the engine, from `runtime.generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub max_running: usize,
    pub step_tokens: usize,
    /// Prompt tokens per step while other sequences decode in it.
    pub prefill_tokens_while_decoding: usize,
    pub block_size: usize,
    pub kv_cache_bytes: u64,
    pub kv_cache_dtype: KvCacheDtype,
    pub max_new_tokens: usize,
    pub max_waiting: usize,
    /// How long a client may leave its full stream untouched before its sequence is cancelled.
    pub stall_timeout: Duration,
    /// Share computed prompt prefixes (`runtime.generation.prefixCache`).
    pub prefix_cache: bool,
    pub speculation: SpeculationConfig,
}

impl EngineConfig {
    pub fn from_serve(config: &ServeConfig) -> Self {
        let g = &config.generation;
        Self {
            max_running: g.max_concurrent_sequences,
            step_tokens: g.max_step_tokens,
            prefill_tokens_while_decoding: g.prefill_tokens_while_decoding,
            block_size: g.block_size,
            kv_cache_bytes: g.kv_cache_memory_bytes,
            kv_cache_dtype: g.kv_cache_dtype,
            max_new_tokens: g.max_new_tokens,
            max_waiting: g.max_queue_size,
            stall_timeout: config.http.write_stall_timeout,
            prefix_cache: g.prefix_cache,
            speculation: g.speculation,
        }
    }
}

/// Per-sequence state that is about the client, not the cache.
struct Client {
    events: EventSender<GenerationEvent>,
    /// The event that did not fit the full stream; while it is here the sequence sits out.
    held: Option<GenerationEvent>,
    /// Since when `held` has waited (the client has taken nothing since).
    stalled_since: Option<Instant>,
    sampler: Sampler,
    max_new_tokens: usize,
    stop: StopMatcher,
    detokenizer: Detokenizer,
    arrived: Instant,
    last_token: Option<Instant>,
    queued: bool,
}

/// The last event of a finished sequence (its blocks already freed) that did not fit the stream.
struct Finishing {
    events: EventSender<GenerationEvent>,
    event: GenerationEvent,
    since: Instant,
}

/// How often held-back streams are offered their event again when nothing else runs.
const HELD_BACK_POLL: Duration = Duration::from_millis(5);

pub struct Engine {
    model: DecoderModel,
    cache: PagedKvCache,
    scheduler: Scheduler,
    clients: HashMap<SeqId, Client>,
    submissions: Receiver<Submission>,
    generator: Arc<Generator>,
    metrics: Arc<Metrics>,
    stall_timeout: Duration,
    finishing: Vec<Finishing>,
    speculator: Speculator,
    /// Speculation mode `draft`: the draft model and its cache.
    drafter: Option<Drafter>,
}

impl Engine {
    /// Loads the model, sizes the cache from the memory budget, and warms up with one forward.
    pub fn load(
        config: &ServeConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Arc<Generator>), String> {
        let path = locate_gguf(config)?;
        let loaded = load_gguf(&path)?;
        let draft = match &config.generation.draft_model {
            Some(draft) => {
                let path = locate_gguf_at(
                    &draft.uri,
                    draft.sha256.as_deref(),
                    &config.pvc_root,
                    (
                        "draft model",
                        "runtime.generation.speculation.draftModel.uri",
                    ),
                )?;
                Some(load_gguf(&path).map_err(|e| format!("draft model: {e}"))?)
            }
            None => None,
        };
        tracing::info!(
            kernels = super::quant_matmul::kernels_in_use(),
            "decoder weight products (LEXSERVE_SIMD=avx2 leaves AVX-VNNI out)"
        );
        Self::with_draft(loaded, draft, EngineConfig::from_serve(config), metrics)
    }

    pub fn new(
        loaded: LoadedGguf,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Arc<Generator>), String> {
        Self::with_draft(loaded, None, config, metrics)
    }

    /// An engine whose speculation mode `draft` drafts with `draft` (required in that mode, refused
    /// in the others).
    pub fn with_draft(
        loaded: LoadedGguf,
        draft: Option<LoadedGguf>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Arc<Generator>), String> {
        let field = "runtime.generation.speculation.draftModel";
        match (config.speculation.mode, &draft) {
            (SpeculationMode::Draft, None) => {
                return Err(format!(
                    "{field} is required when speculation.mode is draft"
                ));
            }
            (SpeculationMode::Draft, Some(d)) => {
                if !d.tokenizer.same_vocabulary(&loaded.tokenizer)
                    || d.model.config.vocab != loaded.model.config.vocab
                {
                    return Err(format!(
                        "{field}: its vocabulary differs from the model's ({} against {} tokens, or the same ids spell other tokens): a draft must share the model's tokenizer",
                        d.model.config.vocab, loaded.model.config.vocab
                    ));
                }
            }
            (_, Some(_)) => {
                return Err(format!(
                    "{field} is only used when speculation.mode is draft"
                ));
            }
            (_, None) => {}
        }
        let shape = loaded.model.config.kv_shape();
        let dtype = config.kv_cache_dtype;
        let draft_shape = draft.as_ref().map(|d| d.model.config.kv_shape());
        // Both caches come out of the one budget: a block of each per block of the pool.
        let bytes_per_token =
            shape.bytes_per_token(dtype) + draft_shape.map_or(0, |s| s.bytes_per_token(dtype));
        let blocks = blocks_in_budget(bytes_per_token, config.block_size, config.kv_cache_bytes);
        if blocks == 0 {
            return Err(format!(
                "runtime.generation.kvCacheMemory ({} bytes) holds no block of {} tokens ({} bytes per token in {}{})",
                config.kv_cache_bytes,
                config.block_size,
                bytes_per_token,
                dtype.as_str(),
                if draft.is_some() {
                    ", the draft model's included"
                } else {
                    ""
                }
            ));
        }
        let cache = PagedKvCache::new(shape, dtype, config.block_size, blocks);
        let scheduler = Scheduler::new(
            SchedulerLimits {
                max_running: config.max_running,
                step_tokens: config.step_tokens,
                block_size: config.block_size,
            },
            blocks,
        )
        .with_prefix_cache(config.prefix_cache)
        .with_prefill_limit_while_decoding(config.prefill_tokens_while_decoding);
        let limits = GeneratorLimits {
            max_new_tokens: config.max_new_tokens,
            max_total_tokens: loaded
                .model
                .config
                .context_length
                .min(scheduler.capacity_tokens()),
            max_waiting: config.max_waiting,
            max_n: config.max_running,
        };
        tracing::info!(
            blocks,
            block_size = config.block_size,
            kv_cache_bytes = cache.bytes(),
            kv_cache_dtype = dtype.as_str(),
            bytes_per_token = shape.bytes_per_token(dtype),
            max_total_tokens = limits.max_total_tokens,
            "KV cache allocated"
        );
        let mut speculation = config.speculation;
        if speculation.enabled() && !loaded.model.rows_are_independent() {
            // Verifying a draft in one chunk would give logits a last bit away from plain decoding's,
            // and so, now and then, other tokens: exactness first.
            tracing::warn!(
                "speculative decoding is off: this model's weight types run through products whose rows are not bit-for-bit independent of the batch"
            );
            speculation = SpeculationConfig::off();
        }
        let drafter = match (draft, speculation.enabled()) {
            (Some(d), true) => {
                let cache =
                    PagedKvCache::new(d.model.config.kv_shape(), dtype, config.block_size, blocks);
                tracing::info!(
                    layers = d.model.config.layers,
                    kv_cache_bytes = cache.bytes(),
                    "draft model loaded (speculation mode draft)"
                );
                Some(Drafter::new(
                    d.model,
                    cache,
                    loaded.tokenizer.stop_ids.clone(),
                    config.step_tokens,
                ))
            }
            _ => None,
        };
        let (generator, receiver) = Generator::new(loaded.tokenizer, loaded.chat_template, limits);
        let generator = Arc::new(generator);
        let mut engine = Self {
            model: loaded.model,
            cache,
            scheduler,
            clients: HashMap::new(),
            submissions: receiver,
            generator: Arc::clone(&generator),
            metrics,
            stall_timeout: config.stall_timeout,
            finishing: Vec::new(),
            speculator: Speculator::new(speculation),
            drafter,
        };
        engine.warm_up()?;
        Ok((engine, generator))
    }

    /// One real step through every layer, so that the first request does not pay for first-touch
    /// allocations, and so that a model that cannot run fails before the server reports ready.
    fn warm_up(&mut self) -> Result<(), String> {
        let bos = self.generator.tokenizer.bos_id.unwrap_or(0);
        let chunk = SeqChunk {
            tokens: &[bos],
            start: 0,
            blocks: &[0],
            logits: 1,
        };
        self.model
            .forward(&[chunk], &mut self.cache)
            .map(|_| ())
            .map_err(|e| format!("warm-up forward failed: {e}"))
    }

    /// Serves until every [`Generator`] handle is gone.
    pub fn run(mut self) {
        loop {
            if !self.intake() {
                return;
            }
            self.drop_disconnected();
            self.deliver_held();
            let mut step = self.scheduler.schedule();
            self.account(&step);
            // Sequences whose client has not taken their last token sit this step out; their
            // work stays planned (and its blocks reserved) for a later step.
            step.work
                .retain(|w| self.clients.get(&w.id).is_none_or(|c| c.held.is_none()));
            if step.work.is_empty() {
                self.update_gauges();
                if !self.scheduler.is_idle() || !self.finishing.is_empty() {
                    // Everything is held back (or, with validated requests never, nothing could
                    // be scheduled): wait for a client or a new request rather than spin.
                    self.wait_for_submission(HELD_BACK_POLL);
                }
                continue;
            }
            crate::fault::inject("engine-step");
            let drafts = self.propose_drafts(&mut step.work);
            self.run_step(&step, &drafts);
            self.update_gauges();
        }
    }

    /// Takes new submissions; blocks while there is nothing to do. False when the generator is gone.
    fn intake(&mut self) -> bool {
        if self.scheduler.is_idle() && self.finishing.is_empty() {
            self.update_gauges();
            match self.submissions.recv() {
                Ok(s) => self.accept(s),
                Err(_) => return false,
            }
        }
        loop {
            match self.submissions.try_recv() {
                Ok(s) => self.accept(s),
                Err(std::sync::mpsc::TryRecvError::Empty) => return true,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return !self.scheduler.is_idle();
                }
            }
        }
    }

    fn wait_for_submission(&mut self, limit: Duration) {
        match self.submissions.recv_timeout(limit) {
            Ok(s) => self.accept(s),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(limit),
        }
    }

    /// Offers every held event to its client again. A client that took one has room again (its
    /// sequence runs on); one that has taken nothing for the stall timeout loses its sequence.
    fn deliver_held(&mut self) {
        let now = Instant::now();
        let stall_timeout = self.stall_timeout;
        let mut stalled = Vec::new();
        for (id, client) in &mut self.clients {
            let Some(event) = client.held.take() else {
                continue;
            };
            match client.events.try_send(event) {
                Ok(()) => client.stalled_since = None,
                Err(TrySendError::Full(event)) => {
                    client.held = Some(event);
                    if client
                        .stalled_since
                        .is_some_and(|since| now - since >= stall_timeout)
                    {
                        stalled.push(*id);
                    }
                }
                // Gone: drop_disconnected retires it.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        for id in stalled {
            tracing::info!(
                id,
                ?stall_timeout,
                "client took no token for the stall timeout; sequence cancelled"
            );
            self.retire(id);
        }
        for mut last in std::mem::take(&mut self.finishing) {
            if let Err(TrySendError::Full(event)) = last.events.try_send(last.event)
                && now - last.since < stall_timeout
            {
                last.event = event;
                self.finishing.push(last);
            }
        }
    }

    fn accept(&mut self, s: Submission) {
        let request = s.request;
        self.clients.insert(
            s.id,
            Client {
                events: s.events,
                held: None,
                stalled_since: None,
                sampler: Sampler::new(request.sampling),
                max_new_tokens: request.max_new_tokens,
                stop: StopMatcher::new(request.stop),
                detokenizer: Detokenizer::default(),
                arrived: s.arrived,
                last_token: None,
                queued: true,
            },
        );
        self.metrics
            .prompt_tokens
            .observe(request.prompt_ids.len() as f64);
        self.scheduler
            .submit_sibling(s.id, request.prompt_ids, s.leader);
    }

    /// A client that dropped its stream (disconnect, cancel) loses its sequence now.
    fn drop_disconnected(&mut self) {
        let gone: Vec<SeqId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            tracing::debug!(id, "client went away; sequence cancelled");
            self.retire(id);
        }
    }

    fn retire(&mut self, id: SeqId) {
        self.scheduler.remove(id);
        self.speculator.forget(id);
        if let Some(drafter) = &mut self.drafter {
            drafter.forget(id);
        }
        if let Some(client) = self.clients.remove(&id)
            && client.queued
        {
            self.generator.left_queue();
        }
    }

    fn account(&mut self, step: &Step) {
        for id in &step.admitted {
            if let Some(client) = self.clients.get_mut(id)
                && client.queued
            {
                client.queued = false;
                self.generator.left_queue();
                self.metrics
                    .queue_duration
                    .observe(client.arrived.elapsed().as_secs_f64());
            }
        }
        self.metrics
            .prefix_cache_query_tokens
            .inc_by(step.prefix_query_tokens as u64);
        self.metrics
            .prefix_cache_hit_tokens
            .inc_by(step.prefix_hit_tokens as u64);
        if !step.preempted.is_empty() {
            if let Some(drafter) = &mut self.drafter {
                // Recomputed later into other blocks: the draft cache starts over too.
                for id in &step.preempted {
                    drafter.forget(*id);
                }
            }
            tracing::debug!(preempted = ?step.preempted, "out of KV blocks: preempted for recompute");
            self.metrics.preemptions.inc_by(step.preempted.len() as u64);
        }
    }

    fn update_gauges(&mut self) {
        self.metrics
            .kv_cache_block_errors
            .inc_by(self.scheduler.take_block_errors());
        self.metrics
            .queue_size
            .set(self.scheduler.waiting_len() as i64);
        self.metrics
            .requests_running
            .set(self.scheduler.running_len() as i64);
        self.metrics
            .kv_cache_usage_ratio
            .set(self.scheduler.usage_ratio());
        self.metrics
            .kv_cache_shared_blocks
            .set(self.scheduler.shared_blocks() as i64);
        self.metrics
            .prefix_cache_blocks
            .set(self.scheduler.prefix_cache_blocks() as i64);
    }

    /// Speculative decoding: extends each decoding sequence's work with a draft (the scheduler
    /// appends the drafted tokens and reserves their blocks). Returns the drafted count per work
    /// item, 0 where none. A draft never exceeds what the client's stream has room for (so every
    /// accepted token can be sent in this step: a held token would stop the sequence mid-draft,
    /// after its sampler drew for the rest), its token limit, the model's context or the step's
    /// token budget.
    fn propose_drafts(&mut self, work: &mut [Work]) -> Vec<usize> {
        let mut drafts = vec![0; work.len()];
        let mut budget = self
            .scheduler
            .limits()
            .step_tokens
            .saturating_sub(work.iter().map(|w| w.to - w.from).sum());
        let context = self.model.config.context_length;
        // Mode draft: who drafts and how much, with the blocks of the drafted positions reserved
        // (placeholder tokens) before the draft model writes its keys and values there.
        let mut by_model = Vec::new();
        for (i, w) in work.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if !w.sample || w.to - w.from != 1 {
                continue;
            }
            let (Some(client), Some(seq)) = (self.clients.get(&w.id), self.scheduler.get(w.id))
            else {
                continue;
            };
            // The bonus (or correcting) token is emitted too: room for one more than the draft.
            let limit = budget
                .min(client.events.capacity().saturating_sub(1))
                .min(client.max_new_tokens.saturating_sub(seq.generated() + 1))
                .min(context.saturating_sub(seq.tokens.len()));
            if self.drafter.is_some() {
                let limit = limit.min(self.speculator.max_draft_tokens());
                if limit == 0 || !self.speculator.may_draft(w.id) {
                    continue;
                }
                let reserved = self.scheduler.propose(w.id, &vec![0; limit]);
                if reserved > 0 {
                    by_model.push((i, reserved));
                    budget -= reserved;
                }
                continue;
            }
            let draft = self.speculator.draft(w.id, &seq.tokens, limit).to_vec();
            if draft.is_empty() {
                continue;
            }
            drafts[i] = self.scheduler.propose(w.id, &draft);
            budget -= drafts[i];
        }
        if let Some(drafter) = &mut self.drafter
            && !by_model.is_empty()
        {
            let requests: Vec<DraftRequest<'_>> = by_model
                .iter()
                .filter_map(|&(i, reserved)| {
                    let seq = self.scheduler.get(work[i].id)?;
                    Some(DraftRequest {
                        id: seq.id,
                        tokens: &seq.tokens[..seq.tokens.len() - reserved],
                        blocks: &seq.blocks,
                        limit: reserved,
                    })
                })
                .collect();
            let written = match drafter.draft(&requests) {
                Ok(written) => written,
                Err(e) => {
                    // Drafting is an optimisation: the step goes on without drafts.
                    tracing::warn!(error = %e, "draft model step failed; no drafts this step");
                    vec![Vec::new(); requests.len()]
                }
            };
            drop(requests);
            for (&(i, _), draft) in by_model.iter().zip(&written) {
                drafts[i] = self.scheduler.redraft(work[i].id, draft);
                work[i].to += drafts[i];
            }
            return drafts;
        }
        for (w, &drafted) in work.iter_mut().zip(&drafts) {
            w.to += drafted;
        }
        drafts
    }

    fn run_step(&mut self, step: &Step, drafts: &[usize]) {
        let started = Instant::now();
        let result = {
            let chunks: Vec<SeqChunk<'_>> = step
                .work
                .iter()
                .zip(drafts)
                .filter_map(|(w, drafted)| {
                    let seq = self.scheduler.get(w.id)?;
                    Some(SeqChunk {
                        tokens: &seq.tokens[w.from..w.to],
                        start: w.from,
                        blocks: &seq.blocks,
                        logits: if w.sample { 1 + drafted } else { 0 },
                    })
                })
                .collect();
            self.model.forward(&chunks, &mut self.cache)
        };
        let tokens: usize = step.work.iter().map(|w| w.to - w.from).sum();
        self.metrics.batch_size.observe(step.work.len() as f64);
        self.metrics.batch_tokens.observe(tokens as f64);
        self.metrics
            .inference_duration
            .observe(started.elapsed().as_secs_f64());
        let logits = match result {
            Ok(logits) => logits,
            Err(e) => {
                tracing::error!(error = %e, "generation step failed");
                for w in &step.work {
                    if let Some(client) = self.clients.get(&w.id) {
                        let _ = client
                            .events
                            .try_send(GenerationEvent::Failed(e.to_string()));
                    }
                    self.retire(w.id);
                }
                return;
            }
        };
        self.scheduler.complete(&step.work);
        let mut rows = logits.into_iter();
        for (w, &drafted) in step.work.iter().zip(drafts) {
            if !w.sample {
                continue;
            }
            let rows: Vec<Vec<f32>> = rows.by_ref().take(1 + drafted).collect();
            if drafted == 0 {
                self.sample_and_emit(w.id, &rows[0]);
            } else {
                self.verify_and_emit(w, drafted, &rows);
            }
        }
    }

    fn sample_and_emit(&mut self, id: SeqId, logits: &[f32]) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let token = client.sampler.sample(logits);
        self.scheduler.append_token(id, token);
        let generated = self.scheduler.get(id).map_or(0, |s| s.generated());
        self.emit(id, token, generated);
    }

    /// Samples the rows of a decode token and its `drafted` tokens (the work's last positions) in
    /// order, keeps the drafted tokens the samples confirm, and emits each kept token and the one
    /// sampled after them as its own event, exactly as plain decoding would have, one per step.
    fn verify_and_emit(&mut self, w: &Work, drafted: usize, rows: &[Vec<f32>]) {
        let Some(client) = self.clients.get_mut(&w.id) else {
            return;
        };
        let Some(seq) = self.scheduler.get(w.id) else {
            return;
        };
        let first = w.to - drafted;
        let draft = seq.tokens[first..w.to].to_vec();
        let generated_before = first - seq.prompt_len;
        let emitted = super::speculative::verify(&draft, rows, |l| client.sampler.sample(l));
        let accepted = emitted.len() - 1;
        self.speculator.record(w.id, drafted, accepted);
        if let Some(drafter) = &mut self.drafter {
            drafter.verified(w.id, first, accepted);
        }
        self.metrics.speculative_draft_tokens.inc_by(drafted as u64);
        self.metrics
            .speculative_accepted_tokens
            .inc_by(accepted as u64);
        // The accepted drafted tokens stay, with their cache positions; the rest goes.
        self.scheduler.rollback(w.id, first + accepted);
        for (i, &token) in emitted.iter().enumerate() {
            if i == accepted {
                self.scheduler.append_token(w.id, token);
            }
            if !self.emit(w.id, token, generated_before + i + 1) {
                // Finished (nothing after a finish is emitted) or gone.
                return;
            }
        }
    }

    /// Streams `token`, the sequence's `generated`-th, and retires the sequence when it finishes.
    /// Returns whether the sequence goes on streaming (false: finished, gone, or held back).
    fn emit(&mut self, id: SeqId, token: u32, generated: usize) -> bool {
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        let now = Instant::now();
        match client.last_token {
            None => self
                .metrics
                .time_to_first_token
                .observe((now - client.arrived).as_secs_f64()),
            Some(last) => self
                .metrics
                .inter_token_latency
                .observe((now - last).as_secs_f64()),
        }
        client.last_token = Some(now);
        self.metrics.generated_tokens.inc();
        let tokenizer = &self.generator.tokenizer;
        let prompt_tokens = self.scheduler.get(id).map_or(0, |s| s.prompt_len);
        let mut finish = None;
        let mut text = if tokenizer.stop_ids.contains(&token) {
            finish = Some(FinishReason::EndOfSequence);
            String::new()
        } else {
            let delta = client.detokenizer.push(tokenizer, token);
            match client.stop.push(&delta) {
                StopCheck::Continue(text) => text,
                StopCheck::Stopped(text) => {
                    finish = Some(FinishReason::StopSequence);
                    text
                }
            }
        };
        if finish.is_none() && generated >= client.max_new_tokens {
            finish = Some(FinishReason::Length);
        }
        if matches!(
            finish,
            Some(FinishReason::Length | FinishReason::EndOfSequence)
        ) {
            // Text held back for a stop sequence that never came belongs to the last token.
            text.push_str(&client.stop.flush());
        }
        let finish = finish.map(|reason| Finish {
            reason,
            prompt_tokens,
            generated_tokens: generated,
        });
        let event = GenerationEvent::Token {
            id: token,
            text,
            finish,
        };
        if finish.is_some() {
            self.metrics.output_tokens.observe(generated as f64);
            // A finished sequence leaves before its client hears the last token: its blocks are
            // back in the pool, and the gauges say so, by the time anyone reacts to the end.
            let events = client.events.clone();
            self.retire(id);
            self.update_gauges();
            if let Err(TrySendError::Full(event)) = events.try_send(event) {
                self.finishing.push(Finishing {
                    events,
                    event,
                    since: Instant::now(),
                });
            }
            false
        } else {
            match client.events.try_send(event) {
                Ok(()) => true,
                Err(TrySendError::Full(event)) => {
                    client.held = Some(event);
                    client.stalled_since = Some(Instant::now());
                    false
                }
                // The client is gone: the sequence leaves now.
                Err(TrySendError::Closed(_)) => {
                    self.retire(id);
                    false
                }
            }
        }
    }
}
