//! The model service: loads the model in the background, reports readiness, and answers inference
//! calls through the batching queue. Loading failures (missing files, a missing ONNX Runtime library, a
//! head that does not fit the encoder) leave the server up but not ready, with the reason on `/ready`,
//! so a pod shows why it is not serving instead of crash-looping.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use thiserror::Error;
use tokio::sync::Notify;

use super::batching::queue::BatchLimits;
use super::batching::worker::serve_batches;
use super::batching::{BatchError, BatchQueue, SubmitError};
use super::head::Inference;
use super::pipeline::Pipeline;
use super::tokenize::{TextTokenizer, TokenizedText};
use crate::config::{ModelTask, ServeConfig};
use crate::drift::centroid::cosine;
use crate::drift::sample_run::{encoder_baseline, generation_baseline};
use crate::generation::Generator;
use crate::generation::engine::Engine;
use crate::metrics::{Metrics, ModelLabels};

/// Errors a caller of the service can get; the HTTP layer maps each to a status once.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{message}")]
    InvalidInput { field: String, message: String },
    #[error("{message}")]
    TooLarge { field: String, message: String },
    #[error("model not ready: {0}")]
    NotReady(String),
    #[error("the server is shutting down")]
    Draining,
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    WrongTask(String),
    #[error("{0}")]
    Internal(String),
}

/// What the model is, once loaded.
pub struct LoadedModel {
    pub tokenizer: TextTokenizer,
    pub queue: BatchQueue,
    pub task: ModelTask,
    pub labels: Vec<String>,
    /// Length of the vectors an embedding model returns.
    pub dimensions: Option<usize>,
    /// The reference sample's centroid (embed, with `--drift-reference`): live embeddings'
    /// cosine to it is `lexserve_embedding_centroid_cosine`.
    pub centroid: Option<Vec<f32>>,
}

enum Readiness {
    Loading,
    Ready(Arc<LoadedModel>),
    /// A decoder served by the generation engine.
    Generating(Arc<Generator>),
    Failed(String),
}

/// Answers for a request's texts, in order.
#[derive(Debug)]
pub struct InferOutput {
    pub results: Vec<Inference>,
    pub tokens: Vec<usize>,
    pub truncated: Vec<bool>,
}

pub struct ModelService {
    pub name: String,
    pub version: String,
    pub task: ModelTask,
    pub metrics: Arc<Metrics>,
    pub max_texts_per_request: usize,
    readiness: RwLock<Readiness>,
    /// SIGTERM arrived: readiness is false, but work is still taken until the shutdown delay
    /// has passed and the drain begins.
    terminating: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Set when the thread that serves the model (the batch worker, the generation engine) has
    /// stopped while the server was not draining: nothing will ever answer again, so liveness
    /// fails and the kubelet restarts the container.
    dead: OnceLock<String>,
}

/// Decrements the in-flight count when an inference call ends, however it ends.
struct InFlight<'a>(&'a ModelService);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Texts of one encoder request counted in `lexserve_requests_running` while the request is being
/// worked on outside the batch queue: tokenizing before it, and collecting the answers after it.
/// While the texts wait in the queue they count in `lexserve_queue_size` instead, and while their
/// batch runs the worker counts them. So, with the two gauges summed, a request counts as load
/// from admission to its answer: under CPU saturation the time spent tokenizing and answering
/// is load too, and the autoscaler must see it.
struct RunningTexts<'a> {
    metrics: &'a Metrics,
    counted: i64,
}

impl<'a> RunningTexts<'a> {
    fn start(metrics: &'a Metrics, texts: usize) -> Self {
        let counted = texts as i64;
        metrics.requests_running.inc_by(counted);
        Self { metrics, counted }
    }

    /// The texts go into the queue (counted there, then by the worker).
    fn hand_over(&mut self) {
        self.metrics.requests_running.dec_by(self.counted);
        self.counted = 0;
    }

    /// The answers are back: counted again until the request is done.
    fn take_back(&mut self, texts: usize) {
        self.counted = texts as i64;
        self.metrics.requests_running.inc_by(self.counted);
    }
}

impl Drop for RunningTexts<'_> {
    fn drop(&mut self) {
        self.metrics.requests_running.dec_by(self.counted);
    }
}

/// Work in flight that outlives a handler's borrow (a token stream): SIGTERM's drain waits for it.
pub struct InFlightWork(Arc<ModelService>);

impl Drop for InFlightWork {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl ModelService {
    /// Creates the service and starts loading the model on a worker thread.
    pub fn start(config: ServeConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let service = Arc::new(Self {
            name: config.model_name.clone(),
            version: config.model_version.clone(),
            task: config.task,
            metrics,
            max_texts_per_request: config.max_texts_per_request,
            readiness: RwLock::new(Readiness::Loading),
            terminating: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            dead: OnceLock::new(),
        });
        let worker_service = Arc::clone(&service);
        let spawned = std::thread::Builder::new()
            .name("lexserve-backend".into())
            .spawn(move || worker_service.load_and_serve(&config));
        if let Err(e) = spawned {
            service.set_readiness(Readiness::Failed(format!(
                "cannot start the backend thread: {e}"
            )));
        }
        service
    }

    /// The thread serving the model returned (or `crashed`). Expected only while draining;
    /// otherwise the server is dead: not ready, and liveness fails.
    fn serving_stopped(&self, what: &str, crashed: bool) {
        if !crashed && self.draining.load(Ordering::SeqCst) {
            return;
        }
        let reason = if crashed {
            format!("{what} crashed; see the logs")
        } else {
            format!("{what} stopped while the server was not draining")
        };
        tracing::error!(%reason, "the server can no longer answer");
        self.set_readiness(Readiness::Failed(reason.clone()));
        let _ = self.dead.set(reason);
    }

    /// `Ok` while the threads that serve the model run (`/health`); otherwise why not.
    pub fn check_alive(&self) -> Result<(), String> {
        match self.dead.get() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    fn set_readiness(&self, readiness: Readiness) {
        let mut guard = self.readiness.write().unwrap_or_else(|p| p.into_inner());
        *guard = readiness;
    }

    fn leave(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn mark_loaded(&self) {
        self.metrics
            .model_loaded
            .get_or_create(&ModelLabels {
                model: self.name.clone(),
                version: self.version.clone(),
            })
            .set(1);
        tracing::info!(model = %self.name, version = %self.version, "model loaded and warmed up");
    }

    /// Runs on the backend thread: load, warm up, then serve batches (or generation steps) until
    /// shutdown.
    fn load_and_serve(&self, config: &ServeConfig) {
        if config.task == ModelTask::Generate {
            let loaded = catch_load(|| {
                let (engine, generator) = Engine::load(config, Arc::clone(&self.metrics))?;
                if let Some(sample) = &config.drift_reference {
                    generation_baseline(&generator.tokenizer, &sample.inputs)?
                        .export(&self.metrics.drift_baseline);
                }
                Ok((engine, generator))
            });
            match loaded {
                Ok((engine, generator)) => {
                    self.mark_loaded();
                    self.set_readiness(Readiness::Generating(generator));
                    // A panic in the engine must not leave a server that looks ready and hangs.
                    let run = catch_unwind(AssertUnwindSafe(|| engine.run()));
                    self.serving_stopped("the generation engine", run.is_err());
                }
                Err(reason) => {
                    tracing::error!(%reason, "model failed to load");
                    self.set_readiness(Readiness::Failed(reason));
                }
            }
            return;
        }
        let loaded = catch_load(|| {
            let (mut model, mut pipeline) = self.load(config)?;
            // The baseline is exported before readiness: whoever sees `/ready` succeed finds it.
            if let Some(sample) = &config.drift_reference {
                let batch_texts = config
                    .batching
                    .max_batch_requests
                    .min(REFERENCE_BATCH_TEXTS);
                let run = encoder_baseline(&mut pipeline, &sample.inputs, batch_texts)?;
                run.baseline.export(&self.metrics.drift_baseline);
                model.centroid = run.centroid;
                tracing::info!(
                    path = %sample.path.display(),
                    inputs = sample.inputs.len(),
                    "drift baseline exported from the reference sample"
                );
            }
            Ok((model, pipeline))
        });
        match loaded {
            Ok((model, mut pipeline)) => {
                let pad_id = model.tokenizer.pad_id();
                let queue = model.queue.clone();
                self.mark_loaded();
                self.set_readiness(Readiness::Ready(Arc::new(model)));
                if self.draining.load(Ordering::SeqCst) {
                    queue.close();
                }
                let served = catch_unwind(AssertUnwindSafe(|| {
                    serve_batches(&queue, pipeline.encoder.as_mut(), &pipeline.head, pad_id);
                }));
                if served.is_err() {
                    // Nobody takes from the queue any more: answer what waits, refuse the rest.
                    queue.abandon(&BatchError::Inference("the batch worker crashed".into()));
                }
                self.serving_stopped("the batch worker", served.is_err());
            }
            Err(reason) => {
                tracing::error!(%reason, "model failed to load");
                self.set_readiness(Readiness::Failed(reason));
            }
        }
    }

    fn load(&self, config: &ServeConfig) -> Result<(LoadedModel, Pipeline), String> {
        let mut pipeline = Pipeline::load(config).map_err(|e| e.to_string())?;
        if let Ok(sample) = pipeline.tokenizer.encode(TUNING_TEXT) {
            super::variant::report(&mut pipeline, config, &self.metrics, &sample);
        }
        let efficient_batch_tokens = if config.batching.tune_batch_size {
            tune_batch_size(&mut pipeline, config)
        } else {
            usize::MAX
        };
        let queue = BatchQueue::new(
            BatchLimits {
                max_batch_tokens: config.batching.max_batch_tokens,
                max_batch_requests: config.batching.max_batch_requests,
                max_queue_delay: config.batching.max_queue_delay,
                efficient_batch_tokens,
            },
            config.batching.max_queue_size,
            Arc::clone(&self.metrics),
        );
        let model = LoadedModel {
            tokenizer: pipeline.tokenizer.clone(),
            queue,
            task: config.task,
            labels: pipeline.head.labels.clone(),
            dimensions: pipeline.dimensions,
            centroid: None,
        };
        Ok((model, pipeline))
    }

    /// `Ok` when the server wants new traffic (`/ready`); otherwise why not. False from SIGTERM
    /// on, while work is still accepted through the shutdown delay.
    pub fn check_ready(&self) -> Result<(), ServiceError> {
        if self.terminating.load(Ordering::SeqCst) {
            return Err(ServiceError::Draining);
        }
        self.check_accepting()
    }

    /// `Ok` when the server takes work; otherwise why not.
    fn check_accepting(&self) -> Result<(), ServiceError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ServiceError::Draining);
        }
        match &*self.readiness.read().unwrap_or_else(|p| p.into_inner()) {
            Readiness::Ready(_) | Readiness::Generating(_) => Ok(()),
            Readiness::Loading => Err(ServiceError::NotReady("the model is loading".into())),
            Readiness::Failed(reason) => Err(ServiceError::NotReady(reason.clone())),
        }
    }

    /// The loaded encoder when ready; otherwise why not.
    pub fn ready(&self) -> Result<Arc<LoadedModel>, ServiceError> {
        self.check_accepting()?;
        match &*self.readiness.read().unwrap_or_else(|p| p.into_inner()) {
            Readiness::Ready(model) => Ok(Arc::clone(model)),
            Readiness::Generating(_) => Err(ServiceError::WrongTask(
                "this model's task is generate; use /generate or /v1/completions".into(),
            )),
            Readiness::Loading => Err(ServiceError::NotReady("the model is loading".into())),
            Readiness::Failed(reason) => Err(ServiceError::NotReady(reason.clone())),
        }
    }

    /// The generation engine's handle when ready, with a token that keeps SIGTERM's drain waiting
    /// until the caller drops it (at the end of its response or stream).
    pub fn generator(self: &Arc<Self>) -> Result<(Arc<Generator>, InFlightWork), ServiceError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let work = InFlightWork(Arc::clone(self));
        self.check_accepting()?;
        match &*self.readiness.read().unwrap_or_else(|p| p.into_inner()) {
            Readiness::Generating(generator) => Ok((Arc::clone(generator), work)),
            _ => Err(ServiceError::WrongTask(
                format!(
                    "this model's task is {:?}; this route needs a generate model",
                    self.task
                )
                .to_lowercase(),
            )),
        }
    }

    /// The loaded model even while draining (metadata routes keep answering).
    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        match &*self.readiness.read().unwrap_or_else(|p| p.into_inner()) {
            Readiness::Ready(model) => Some(Arc::clone(model)),
            _ => None,
        }
    }

    /// Tokenizes, queues and awaits `texts`. `field` names the texts in error messages (`texts`,
    /// `input`, `inputs[0].data`).
    pub async fn infer(
        &self,
        texts: &[String],
        field: &str,
        task: ModelTask,
    ) -> Result<InferOutput, ServiceError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(self);
        let model = self.ready()?;
        if model.task != task {
            return Err(ServiceError::WrongTask(
                format!(
                    "this model's task is {:?}; this route needs a {:?} model",
                    model.task, task
                )
                .to_lowercase(),
            ));
        }
        if texts.is_empty() {
            return Err(ServiceError::InvalidInput {
                field: field.to_string(),
                message: "must contain at least one text".into(),
            });
        }
        if texts.len() > self.max_texts_per_request {
            return Err(ServiceError::TooLarge {
                field: field.to_string(),
                message: format!(
                    "{} texts exceed the limit of {} per request",
                    texts.len(),
                    self.max_texts_per_request
                ),
            });
        }
        // Refused before the work of tokenizing when the queue has no room now.
        model
            .queue
            .check_room(texts.len())
            .map_err(|e| refusal(e, field))?;
        let mut running = RunningTexts::start(&self.metrics, texts.len());
        // Short requests tokenize inline (microseconds); big ones move off the async workers so one
        // large body cannot stall every other connection.
        let total_bytes: usize = texts.iter().map(String::len).sum();
        let tokenized = if total_bytes > INLINE_TOKENIZE_BYTES {
            let model = Arc::clone(&model);
            let texts = texts.to_vec();
            let field = field.to_string();
            tokio::task::spawn_blocking(move || tokenize_all(&model.tokenizer, &texts, &field))
                .await
                .map_err(|e| ServiceError::Internal(format!("tokenization task failed: {e}")))??
        } else {
            tokenize_all(&model.tokenizer, texts, field)?
        };
        let tokens: Vec<usize> = tokenized.iter().map(TokenizedText::len).collect();
        let truncated: Vec<bool> = tokenized.iter().map(|t| t.truncated).collect();
        let unknown: usize = tokenized
            .iter()
            .map(|t| model.tokenizer.unknown_tokens(t))
            .sum();
        running.hand_over();
        let receivers = model
            .queue
            .submit(tokenized)
            .map_err(|e| refusal(e, field))?;
        for &n in &tokens {
            self.metrics.input_tokens.observe(n as f64);
        }
        self.metrics.unknown_tokens.inc_by(unknown as u64);
        let mut results = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            let reply = receiver.await.unwrap_or(Err(BatchError::WorkerGone));
            results.push(reply.map_err(|e| ServiceError::Internal(e.to_string()))?);
        }
        running.take_back(results.len());
        if let Some(centroid) = &model.centroid {
            for result in &results {
                if let Inference::Embedding(v) = result {
                    self.metrics
                        .embedding_centroid_cosine
                        .observe(cosine(centroid, v));
                }
            }
        }
        if let Some(labels) = (task == ModelTask::Classify).then_some(&model.labels) {
            for result in &results {
                if let Inference::Classification { probabilities } = result
                    && let Some((best, p)) = argmax(probabilities)
                {
                    self.metrics
                        .record_prediction(labels.get(best).map_or("unknown", String::as_str), *p);
                }
            }
        }
        Ok(InferOutput {
            results,
            tokens,
            truncated,
        })
    }

    /// SIGTERM: readiness goes false so that the endpoint is removed; work is still taken (clients
    /// routed here before the removal propagates are answered) until [`Self::begin_drain`].
    pub fn begin_termination(&self) {
        self.terminating.store(true, Ordering::SeqCst);
    }

    /// After the shutdown delay: new work is refused; queued texts still run.
    pub fn begin_drain(&self) {
        // Draining first: whoever sees readiness fail also sees new work refused.
        self.draining.store(true, Ordering::SeqCst);
        self.terminating.store(true, Ordering::SeqCst);
        if let Some(model) = self.model() {
            model.queue.close();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves when no inference call is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What the caller hears when the queue refuses texts; `field` names them.
fn refusal(e: SubmitError, field: &str) -> ServiceError {
    match e {
        SubmitError::QueueFull { .. } => ServiceError::Overloaded(e.to_string()),
        SubmitError::TooManyTexts { .. } => ServiceError::TooLarge {
            field: field.to_string(),
            message: e.to_string(),
        },
        SubmitError::TextTooLong { index, .. } => ServiceError::TooLarge {
            field: format!("{field}[{index}]"),
            message: e.to_string(),
        },
        SubmitError::Closed => ServiceError::Draining,
    }
}

/// Most texts per batch when the reference sample runs (fewer when batches are capped lower).
const REFERENCE_BATCH_TEXTS: usize = 32;

/// Above this many bytes of text, tokenization runs on the blocking pool.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

/// Tokenizes every text, rejecting blank ones; errors name the text (`texts[3]`).
fn tokenize_all(
    tokenizer: &TextTokenizer,
    texts: &[String],
    field: &str,
) -> Result<Vec<TokenizedText>, ServiceError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            if text.trim().is_empty() {
                return Err(ServiceError::InvalidInput {
                    field: format!("{field}[{i}]"),
                    message: "must not be empty".into(),
                });
            }
            tokenizer
                .encode(text)
                .map_err(|e| ServiceError::InvalidInput {
                    field: format!("{field}[{i}]"),
                    message: e.to_string(),
                })
        })
        .collect()
}

pub fn argmax(values: &[f32]) -> Option<(usize, &f32)> {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.partial_cmp(b.1).unwrap_or(std::cmp::Ordering::Equal))
}

/// Model loading runs foreign code (ONNX Runtime, tokenizers); a panic there becomes a load failure.
fn catch_load<T>(load: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
        .unwrap_or_else(|_| Err("loading the model panicked".into()))
}

/// A sample text of about 64 tokens for the batch-size sweep: longer than most queries, so the
/// measured budget holds for the texts that pay the most for big batches.
const TUNING_TEXT: &str = "Serving a language model well means batching requests so that one \
    forward pass answers many of them, but on a processor a batch can also grow too large for the \
    caches, and then each text in it costs more than it would in a smaller batch, which is why the \
    server measures this once when it starts.";

/// Runs the warm-up sweep ([`super::batching::tune`]) and returns the efficient token budget
/// (`usize::MAX`, no cap, if it could not be measured).
fn tune_batch_size(pipeline: &mut Pipeline, config: &ServeConfig) -> usize {
    let Ok(sample) = pipeline.tokenizer.encode(TUNING_TEXT) else {
        return usize::MAX;
    };
    let pad_id = pipeline.tokenizer.pad_id();
    let tuned = super::batching::tune::measure(
        pipeline.encoder.as_mut(),
        &pipeline.head,
        &sample,
        pad_id,
        config.batching.max_batch_requests.min(32),
        std::time::Duration::from_millis(1500),
    );
    match tuned {
        Some(t) => {
            let table: Vec<String> = t
                .throughput
                .iter()
                .map(|(b, r)| format!("{b}:{r:.0}/s"))
                .collect();
            tracing::info!(
                batch = t.batch,
                tokens = t.tokens,
                sample_tokens = sample.len(),
                measured = %table.join(" "),
                "efficient batch size measured; batches stop growing past its padded tokens"
            );
            t.tokens
        }
        None => usize::MAX,
    }
}
