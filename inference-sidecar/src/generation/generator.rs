//! The client side of the generation engine: requests, the events that answer them, and
//! [`Generator`], the handle the HTTP handlers share. It validates a request against the engine's
//! limits, bounds the queue (429 beyond `max_waiting`), and hands the request to the engine thread
//! ([`super::engine`]); dropping the returned stream cancels it. The stream is bounded
//! ([`STREAM_BUFFER_EVENTS`]): a client that does not keep up holds its sequence back rather than
//! piling tokens up in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use thiserror::Error;
use tokio::sync::mpsc::{Receiver as EventReceiver, Sender as EventSender, channel};

use super::chat_template::{ChatMessage, ChatTemplate, PromptPart};
use super::sampling::SamplingParams;
use super::scheduler::SeqId;
use super::tokenizer::GgufTokenizer;

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
    #[error("n must be between 1 and {0} (the sequences this server runs at once)")]
    TooManyChoices(usize),
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
    /// The most sequences one request may ask for (OpenAI's `n`): the sequences that run at once,
    /// so that its siblings can run together.
    pub max_n: usize,
}

/// Events a request's stream holds that its client has not taken. When it is full the engine
/// holds the sequence back (it decodes nothing more for it) until the client takes one, and
/// cancels it if the client takes none for the stall timeout. A few dozen tokens of slack let a
/// client read in bursts without holding its sequence back.
pub const STREAM_BUFFER_EVENTS: usize = 32;

/// A request on its way to the engine thread.
pub(super) struct Submission {
    pub(super) id: SeqId,
    pub(super) request: GenerationRequest,
    pub(super) events: EventSender<GenerationEvent>,
    pub(super) arrived: Instant,
    /// The first of the request's sequences when it asked for several (its siblings share its
    /// prompt's prefill).
    pub(super) leader: Option<SeqId>,
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
    /// The handle, and the receiving end of its submissions for the engine thread.
    pub(super) fn new(
        tokenizer: GgufTokenizer,
        chat_template: Option<ChatTemplate>,
        limits: GeneratorLimits,
    ) -> (Self, Receiver<Submission>) {
        let (submissions, receiver) = std::sync::mpsc::channel();
        let generator = Self {
            tokenizer,
            chat_template,
            limits,
            submissions,
            queued: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
        };
        (generator, receiver)
    }

    /// The engine took a request off the queue (admitted it, or dropped it before admission).
    pub(super) fn left_queue(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether the queue has room for one more request now: checked before a prompt is tokenized,
    /// so that a full queue refuses it before that work. [`Self::submit`] checks again.
    pub fn check_room(&self) -> Result<(), SubmitError> {
        let queued = self.queued.load(Ordering::SeqCst);
        if queued >= self.limits.max_waiting {
            return Err(SubmitError::QueueFull(queued));
        }
        Ok(())
    }

    /// Queues `request`; events arrive on the returned stream. Dropping the stream cancels the
    /// request and frees its cache blocks at the engine's next step.
    pub fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<EventReceiver<GenerationEvent>, SubmitError> {
        let mut streams = self.submit_n(request, 1)?;
        streams.pop().ok_or(SubmitError::Closed)
    }

    /// Queues `n` sequences sampling the same prompt (OpenAI's `n`), one stream each, in order.
    /// They count as `n` requests against the queue, all or none; the prompt is computed once
    /// (the others wait for it and take its blocks from the prefix cache). The i-th sequence
    /// samples with `seed + i` when the request is seeded, so seeded siblings differ but repeat.
    pub fn submit_n(
        &self,
        request: GenerationRequest,
        n: usize,
    ) -> Result<Vec<EventReceiver<GenerationEvent>>, SubmitError> {
        if n == 0 || n > self.limits.max_n {
            return Err(SubmitError::TooManyChoices(self.limits.max_n));
        }
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
        let queued = self.queued.fetch_add(n, Ordering::SeqCst);
        if queued + n > self.limits.max_waiting {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(queued));
        }
        let first = self.next_id.fetch_add(n as SeqId, Ordering::Relaxed);
        let arrived = Instant::now();
        let mut receivers = Vec::with_capacity(n);
        for i in 0..n {
            let (events, receiver) = channel(STREAM_BUFFER_EVENTS);
            let mut request = request.clone();
            request.sampling.seed = request.sampling.seed.wrapping_add(i as u64);
            let submission = Submission {
                id: first + i as SeqId,
                request,
                events,
                arrived,
                leader: (i > 0).then_some(first),
            };
            if self.submissions.send(submission).is_err() {
                // The engine is gone: the ones sent are never taken off the queue by it.
                self.queued.fetch_sub(n, Ordering::SeqCst);
                return Err(SubmitError::Closed);
            }
            receivers.push(receiver);
        }
        Ok(receivers)
    }

    /// The prompt for a chat, through the model's own template; message contents are text.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<PromptPart>, String> {
        match &self.chat_template {
            Some(template) => template.render_parts(messages),
            None => Err("this model ships no chat template".into()),
        }
    }
}
