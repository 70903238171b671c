//! The generation engine: one thread owns the model, the KV cache and the scheduler, and loops —
//! take new requests, drop sequences whose client went away, plan a step, run it as one batched
//! forward, sample, stream tokens out, retire finished sequences. Clients talk to it through
//! [`Generator`], which validates and queues requests and hands back a stream of events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use thiserror::Error;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::chat_template::ChatTemplate;
use super::kv_cache::{PagedKvCache, blocks_in_budget};
use super::model::{DecoderModel, SeqChunk, Weights};
use super::sampling::{Sampler, SamplingParams};
use super::scheduler::{Scheduler, SchedulerLimits, SeqId, Step};
use super::stopping::{StopCheck, StopMatcher};
use super::tokenizer::{Detokenizer, GgufTokenizer};
use crate::config::ServeConfig;
use crate::fetch::digest::path_sha256;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// The model emitted an end-of-sequence token.
    EndOfSequence,
    /// A stop sequence appeared in the text.
    StopSequence,
}

impl FinishReason {
    /// The native API's name (text-generation-inference's).
    pub fn native(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::EndOfSequence => "eos_token",
            Self::StopSequence => "stop_sequence",
        }
    }

    /// OpenAI's name.
    pub fn openai(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::EndOfSequence | Self::StopSequence => "stop",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
}

/// How a generation ended, carried by its last token's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// A generated token and the text it completes (empty while held back: an unfinished UTF-8
    /// character or the possible start of a stop sequence). The last one says how it ended, so a
    /// stream can close with the token that ended it.
    Token {
        id: u32,
        text: String,
        finish: Option<Finish>,
    },
    Failed(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the generation queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error(
        "the prompt ({prompt} tokens) plus max_new_tokens ({new}) exceeds the {limit} tokens one sequence may hold"
    )]
    TooLong {
        prompt: usize,
        new: usize,
        limit: usize,
    },
    #[error("max_new_tokens must be between 1 and {0}")]
    MaxNewTokens(usize),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the generation engine has stopped")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorLimits {
    /// Default and ceiling of a request's `max_new_tokens`.
    pub max_new_tokens: usize,
    /// Prompt plus new tokens: the smaller of the model's context and the cache's capacity.
    pub max_total_tokens: usize,
    /// Requests waiting for admission beyond which new ones are refused (429).
    pub max_waiting: usize,
}

struct Submission {
    id: SeqId,
    request: GenerationRequest,
    events: UnboundedSender<GenerationEvent>,
    arrived: Instant,
}

/// The client side of the engine: shared by the HTTP handlers.
pub struct Generator {
    pub tokenizer: GgufTokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub limits: GeneratorLimits,
    submissions: Sender<Submission>,
    /// Requests submitted and not yet admitted (or dropped) by the engine.
    queued: Arc<AtomicUsize>,
    next_id: AtomicU64,
}

impl Generator {
    /// Queues `request`; events arrive on the returned stream. Dropping the stream cancels the
    /// request and frees its cache blocks at the engine's next step.
    pub fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<UnboundedReceiver<GenerationEvent>, SubmitError> {
        if request.prompt_ids.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if request.max_new_tokens == 0 || request.max_new_tokens > self.limits.max_new_tokens {
            return Err(SubmitError::MaxNewTokens(self.limits.max_new_tokens));
        }
        if request.prompt_ids.len() + request.max_new_tokens > self.limits.max_total_tokens {
            return Err(SubmitError::TooLong {
                prompt: request.prompt_ids.len(),
                new: request.max_new_tokens,
                limit: self.limits.max_total_tokens,
            });
        }
        let queued = self.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.limits.max_waiting {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(queued));
        }
        let (events, receiver) = unbounded_channel();
        let submission = Submission {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            request,
            events,
            arrived: Instant::now(),
        };
        if self.submissions.send(submission).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Closed);
        }
        Ok(receiver)
    }

    /// The prompt for a chat, through the model's own template.
    pub fn chat_prompt(
        &self,
        messages: &[super::chat_template::ChatMessage],
    ) -> Result<String, String> {
        match &self.chat_template {
            Some(template) => template.render(messages),
            None => Err("this model ships no chat template".into()),
        }
    }
}

/// Sizing of the engine, from `runtime.generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub max_running: usize,
    pub step_tokens: usize,
    pub block_size: usize,
    pub kv_cache_bytes: u64,
    pub max_new_tokens: usize,
    pub max_waiting: usize,
}

impl EngineConfig {
    pub fn from_serve(config: &ServeConfig) -> Self {
        let g = &config.generation;
        Self {
            max_running: g.max_concurrent_sequences,
            step_tokens: g.max_step_tokens,
            block_size: g.block_size,
            kv_cache_bytes: g.kv_cache_memory_bytes,
            max_new_tokens: g.max_new_tokens,
            max_waiting: config.batching.max_queue_size,
        }
    }
}

/// Per-sequence state that is about the client, not the cache.
struct Client {
    events: UnboundedSender<GenerationEvent>,
    sampler: Sampler,
    max_new_tokens: usize,
    stop: StopMatcher,
    detokenizer: Detokenizer,
    arrived: Instant,
    last_token: Option<Instant>,
    queued: bool,
}

pub struct Engine {
    model: DecoderModel,
    cache: PagedKvCache,
    scheduler: Scheduler,
    clients: HashMap<SeqId, Client>,
    submissions: Receiver<Submission>,
    generator: Arc<Generator>,
    metrics: Arc<Metrics>,
}

/// The GGUF file a model uri names: the file itself, or the one `.gguf` in a directory
/// (`model.gguf` first).
pub fn locate_gguf(config: &ServeConfig) -> Result<PathBuf, String> {
    let root = config
        .model_uri
        .local_path(&config.pvc_root)
        .map_err(|e| e.to_string())?;
    if !root.exists() {
        return Err(format!("model not found at {}", root.display()));
    }
    if let Some(expected) = &config.sha256 {
        let actual = path_sha256(&root).map_err(|e| e.to_string())?;
        if &actual != expected {
            return Err(format!(
                "model digest mismatch for {}: expected sha256 {expected}, found {actual}",
                root.display()
            ));
        }
    }
    if root.is_file() {
        return Ok(root);
    }
    if root.join("model.gguf").is_file() {
        return Ok(root.join("model.gguf"));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| format!("cannot read {}: {e}", root.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no .gguf file in {}", root.display())),
        _ => Err(format!(
            "{} holds several .gguf files; name one in model.uri",
            root.display()
        )),
    }
}

/// The model, tokenizer and chat template of a GGUF file.
pub struct LoadedGguf {
    pub model: DecoderModel,
    pub tokenizer: GgufTokenizer,
    pub chat_template: Option<ChatTemplate>,
}

pub fn load_gguf(path: &Path) -> Result<LoadedGguf, String> {
    load_gguf_with(path, Weights::Quantized)
}

pub fn load_gguf_with(path: &Path, weights: Weights) -> Result<LoadedGguf, String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| format!("cannot read GGUF {}: {e}", path.display()))?;
    let model = DecoderModel::load(&content, &mut file, weights).map_err(|e| e.to_string())?;
    let tokenizer = GgufTokenizer::from_metadata(&content.metadata).map_err(|e| e.to_string())?;
    let token = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or_default()
            .to_string()
    };
    let chat_template = match content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
    {
        Some(source) => Some(ChatTemplate::new(
            source,
            &token(tokenizer.bos_id),
            &token(tokenizer.eos_id),
        )?),
        None => None,
    };
    Ok(LoadedGguf {
        model,
        tokenizer,
        chat_template,
    })
}

impl Engine {
    /// Loads the model, sizes the cache from the memory budget, and warms up with one forward.
    pub fn load(
        config: &ServeConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Arc<Generator>), String> {
        let path = locate_gguf(config)?;
        let loaded = load_gguf(&path)?;
        Self::new(loaded, EngineConfig::from_serve(config), metrics)
    }

    pub fn new(
        loaded: LoadedGguf,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Arc<Generator>), String> {
        let shape = loaded.model.config.kv_shape();
        let blocks = blocks_in_budget(shape, config.block_size, config.kv_cache_bytes);
        if blocks == 0 {
            return Err(format!(
                "runtime.generation.kvCacheMemory ({} bytes) holds no block of {} tokens ({} bytes per token)",
                config.kv_cache_bytes,
                config.block_size,
                shape.bytes_per_token()
            ));
        }
        let cache = PagedKvCache::new(shape, config.block_size, blocks);
        let scheduler = Scheduler::new(
            SchedulerLimits {
                max_running: config.max_running,
                step_tokens: config.step_tokens,
                block_size: config.block_size,
            },
            blocks,
        );
        let limits = GeneratorLimits {
            max_new_tokens: config.max_new_tokens,
            max_total_tokens: loaded
                .model
                .config
                .context_length
                .min(scheduler.capacity_tokens()),
            max_waiting: config.max_waiting,
        };
        tracing::info!(
            blocks,
            block_size = config.block_size,
            kv_cache_bytes = cache.bytes(),
            bytes_per_token = shape.bytes_per_token(),
            max_total_tokens = limits.max_total_tokens,
            "KV cache allocated"
        );
        let (submissions, receiver) = std::sync::mpsc::channel();
        let generator = Arc::new(Generator {
            tokenizer: loaded.tokenizer,
            chat_template: loaded.chat_template,
            limits,
            submissions,
            queued: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
        });
        let mut engine = Self {
            model: loaded.model,
            cache,
            scheduler,
            clients: HashMap::new(),
            submissions: receiver,
            generator: Arc::clone(&generator),
            metrics,
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
            logits: true,
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
            let step = self.scheduler.schedule();
            self.account(&step);
            if step.work.is_empty() {
                self.update_gauges();
                if !self.scheduler.is_idle() {
                    // Nothing could be scheduled (cannot happen with validated requests); avoid a
                    // busy loop rather than spin.
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            self.run_step(&step);
            self.update_gauges();
        }
    }

    /// Takes new submissions; blocks while there is nothing to do. False when the generator is gone.
    fn intake(&mut self) -> bool {
        if self.scheduler.is_idle() {
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

    fn accept(&mut self, s: Submission) {
        let request = s.request;
        self.clients.insert(
            s.id,
            Client {
                events: s.events,
                sampler: Sampler::new(request.sampling),
                max_new_tokens: request.max_new_tokens,
                stop: StopMatcher::new(request.stop),
                detokenizer: Detokenizer::default(),
                arrived: s.arrived,
                last_token: None,
                queued: true,
            },
        );
        self.scheduler.submit(s.id, request.prompt_ids);
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
        if let Some(client) = self.clients.remove(&id)
            && client.queued
        {
            self.generator.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn account(&mut self, step: &Step) {
        for id in &step.admitted {
            if let Some(client) = self.clients.get_mut(id)
                && client.queued
            {
                client.queued = false;
                self.generator.queued.fetch_sub(1, Ordering::SeqCst);
                self.metrics
                    .queue_duration
                    .observe(client.arrived.elapsed().as_secs_f64());
            }
        }
        if !step.preempted.is_empty() {
            tracing::debug!(preempted = ?step.preempted, "out of KV blocks: preempted for recompute");
            self.metrics.preemptions.inc_by(step.preempted.len() as u64);
        }
    }

    fn update_gauges(&self) {
        self.metrics
            .queue_size
            .set(self.scheduler.waiting_len() as i64);
        self.metrics
            .requests_running
            .set(self.scheduler.running_len() as i64);
        self.metrics
            .kv_cache_usage_ratio
            .set(self.scheduler.allocator().usage_ratio());
    }

    fn run_step(&mut self, step: &Step) {
        let started = Instant::now();
        let result = {
            let chunks: Vec<SeqChunk<'_>> = step
                .work
                .iter()
                .filter_map(|w| {
                    let seq = self.scheduler.get(w.id)?;
                    Some(SeqChunk {
                        tokens: &seq.tokens[w.from..w.to],
                        start: w.from,
                        blocks: &seq.blocks,
                        logits: w.sample,
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
                        let _ = client.events.send(GenerationEvent::Failed(e.to_string()));
                    }
                    self.retire(w.id);
                }
                return;
            }
        };
        self.scheduler.complete(&step.work);
        for (w, logits) in step.work.iter().filter(|w| w.sample).zip(logits) {
            self.sample_and_emit(w.id, &logits);
        }
    }

    fn sample_and_emit(&mut self, id: SeqId, logits: &[f32]) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let token = client.sampler.sample(logits);
        self.scheduler.append_token(id, token);
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
        let (prompt_tokens, generated) = self
            .scheduler
            .get(id)
            .map_or((0, 0), |s| (s.prompt_len, s.generated()));
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
            // A finished sequence leaves before its client hears the last token: its blocks are
            // back in the pool, and the gauges say so, by the time anyone reacts to the end.
            let events = client.events.clone();
            self.retire(id);
            self.update_gauges();
            let _ = events.send(event);
        } else if client.events.send(event).is_err() {
            // The client is gone: the sequence leaves now.
            self.retire(id);
        }
    }
}
