//! Generation over HTTP. The native routes (`/generate`, `/generate_stream`, text-generation-inference's
//! shape) live here, with what the OpenAI routes share: turning request options into a validated
//! [`GenerationRequest`], submitting it, and collecting a whole answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc::Receiver;

use super::body::parse_json;
use super::error::ApiError;
use super::sse::{Mapped, token_stream};
use super::state::AppState;
use crate::encoder::service::{InFlightWork, ServiceError};
use crate::generation::chat_template::PromptPart;
use crate::generation::sampling::SamplingParams;
use crate::generation::{FinishReason, GenerationEvent, GenerationRequest, Generator, SubmitError};

/// Sampling and stopping options as a request states them; `None` takes the route's default.
#[derive(Debug, Default, Clone)]
pub struct GenerationOptions {
    pub max_new_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_k: Option<u64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// Where each option sits in the request, for error messages (`parameters.temperature`,
/// `max_tokens`).
pub struct OptionFields {
    pub max_new_tokens: &'static str,
    pub temperature: &'static str,
    pub top_k: &'static str,
    pub top_p: &'static str,
    pub stop: &'static str,
    pub prompt: &'static str,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: Some(field.to_string()),
        message: message.into(),
    }
}

/// Most stop sequences per request, and longest one: matching is per token, so both bound its cost.
const MAX_STOP_SEQUENCES: usize = 16;
const MAX_STOP_BYTES: usize = 256;

/// A seed for requests that do not set one, different every time.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Validates `options` against the engine's limits. `default_temperature` differs by API: the native
/// API is greedy unless asked, OpenAI samples at 1.0 unless asked.
pub fn build_request(
    generator: &Generator,
    prompt_ids: Vec<u32>,
    options: GenerationOptions,
    default_temperature: f64,
    fields: &OptionFields,
) -> Result<GenerationRequest, ApiError> {
    let limit = generator.limits.max_new_tokens;
    let max_new_tokens = match options.max_new_tokens {
        None => limit,
        Some(n) if n >= 1 && n <= limit as u64 => n as usize,
        Some(n) => {
            return Err(invalid(
                fields.max_new_tokens,
                format!("{n} is out of range: must be between 1 and {limit}"),
            ));
        }
    };
    let temperature = options.temperature.unwrap_or(default_temperature);
    if !(0.0..=100.0).contains(&temperature) {
        return Err(invalid(
            fields.temperature,
            format!("{temperature} is out of range: must be between 0 and 100 (0 is greedy)"),
        ));
    }
    let top_p = options.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(
            fields.top_p,
            format!("{top_p} is out of range: must be greater than 0 and at most 1"),
        ));
    }
    let top_k = match options.top_k {
        None => None,
        Some(0) => return Err(invalid(fields.top_k, "must be at least 1")),
        Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
    };
    if options.stop.len() > MAX_STOP_SEQUENCES {
        return Err(invalid(
            fields.stop,
            format!("at most {MAX_STOP_SEQUENCES} stop sequences"),
        ));
    }
    if let Some(i) = options
        .stop
        .iter()
        .position(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(invalid(
            &format!("{}[{i}]", fields.stop),
            format!("a stop sequence must be 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    if prompt_ids.is_empty() {
        return Err(invalid(fields.prompt, "must not be empty"));
    }
    let total = generator.limits.max_total_tokens;
    if prompt_ids.len() + max_new_tokens > total {
        return Err(ApiError::TooLarge {
            field: Some(fields.prompt.to_string()),
            message: format!(
                "the prompt ({} tokens) plus {} new tokens exceeds the {total} tokens a sequence may hold",
                prompt_ids.len(),
                max_new_tokens
            ),
        });
    }
    Ok(GenerationRequest {
        prompt_ids,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            seed: options.seed.unwrap_or_else(fresh_seed),
        },
        max_new_tokens,
        stop: options.stop,
    })
}

/// Above this many bytes, a prompt is tokenized on the blocking pool.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

/// Prompt ids for a prompt in parts (see [`PromptPart`]); errors name `field`.
pub async fn tokenize_prompt(
    generator: &std::sync::Arc<Generator>,
    parts: Vec<PromptPart>,
    field: &str,
) -> Result<Vec<u32>, ApiError> {
    // A full queue refuses the request before the work of tokenizing it.
    generator.check_room().map_err(refusal)?;
    let bytes: usize = parts.iter().map(|p| p.as_str().len()).sum();
    let result = if bytes > INLINE_TOKENIZE_BYTES {
        let generator = std::sync::Arc::clone(generator);
        tokio::task::spawn_blocking(move || generator.tokenizer.encode_parts(&parts))
            .await
            .map_err(|e| ServiceError::Internal(format!("tokenization task failed: {e}")))?
    } else {
        generator.tokenizer.encode_parts(&parts)
    };
    result.map_err(|message| invalid(field, message))
}

/// What the caller hears when the engine's queue refuses a request.
fn refusal(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull(_) => ApiError::Service(ServiceError::Overloaded(e.to_string())),
        SubmitError::Closed => ApiError::Service(ServiceError::Draining),
        SubmitError::TooManyChoices(_) => invalid("n", e.to_string()),
        SubmitError::TooLong { .. } | SubmitError::MaxNewTokens(_) | SubmitError::EmptyPrompt => {
            ApiError::TooLarge {
                field: None,
                message: e.to_string(),
            }
        }
    }
}

/// A request accepted by the engine.
pub struct Started {
    pub receiver: Receiver<GenerationEvent>,
    pub work: InFlightWork,
    pub prompt_tokens: usize,
    pub seed: u64,
}

pub fn submit(
    generator: &Generator,
    request: GenerationRequest,
    work: InFlightWork,
) -> Result<Started, ApiError> {
    let prompt_tokens = request.prompt_ids.len();
    let seed = request.sampling.seed;
    let receiver = generator.submit(request).map_err(refusal)?;
    Ok(Started {
        receiver,
        work,
        prompt_tokens,
        seed,
    })
}

/// A request accepted by the engine as `n` sequences sampling one prompt (OpenAI's `n`): one
/// stream per choice, in order.
pub struct StartedN {
    pub receivers: Vec<Receiver<GenerationEvent>>,
    pub work: InFlightWork,
    pub prompt_tokens: usize,
}

pub fn submit_n(
    generator: &Generator,
    request: GenerationRequest,
    work: InFlightWork,
    n: usize,
) -> Result<StartedN, ApiError> {
    let prompt_tokens = request.prompt_ids.len();
    let receivers = generator.submit_n(request, n).map_err(refusal)?;
    Ok(StartedN {
        receivers,
        work,
        prompt_tokens,
    })
}

/// A whole answer.
#[derive(Debug)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

/// Waits for the end of a generation. If the caller goes away first, dropping this future drops the
/// receiver, which cancels the sequence.
pub async fn collect(started: Started) -> Result<Completion, ApiError> {
    collect_events(started.receiver).await
}

/// Waits for the end of one sequence's events (dropping the future cancels it).
pub async fn collect_events(
    mut receiver: Receiver<GenerationEvent>,
) -> Result<Completion, ApiError> {
    let mut text = String::new();
    let mut token_ids = Vec::new();
    while let Some(event) = receiver.recv().await {
        match event {
            GenerationEvent::Token {
                id,
                text: delta,
                finish,
            } => {
                token_ids.push(id);
                text.push_str(&delta);
                if let Some(finish) = finish {
                    return Ok(Completion {
                        text,
                        token_ids,
                        finish_reason: finish.reason,
                        prompt_tokens: finish.prompt_tokens,
                        generated_tokens: finish.generated_tokens,
                    });
                }
            }
            GenerationEvent::Failed(message) => {
                return Err(ServiceError::Internal(format!("generation failed: {message}")).into());
            }
        }
    }
    Err(ServiceError::Internal("the generation engine stopped".into()).into())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NativeParameters {
    pub max_new_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_k: Option<u64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    /// Sampling instead of greedy; with no temperature set, samples at 1.0.
    #[serde(default)]
    pub do_sample: bool,
    /// Accepted for compatibility; details are always returned.
    #[allow(dead_code)]
    pub details: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct NativeRequest {
    pub inputs: String,
    #[serde(default)]
    pub parameters: NativeParameters,
}

const NATIVE_FIELDS: OptionFields = OptionFields {
    max_new_tokens: "parameters.max_new_tokens",
    temperature: "parameters.temperature",
    top_k: "parameters.top_k",
    top_p: "parameters.top_p",
    stop: "parameters.stop",
    prompt: "inputs",
};

#[derive(Debug, Serialize)]
pub struct Details {
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub seed: u64,
    pub token_ids: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct NativeResponse {
    pub generated_text: String,
    pub details: Details,
    pub latency_ms: f64,
}

async fn start_native(state: &AppState, request: NativeRequest) -> Result<Started, ApiError> {
    let (generator, work) = state.service.generator()?;
    let p = request.parameters;
    let default_temperature = if p.do_sample { 1.0 } else { 0.0 };
    let options = GenerationOptions {
        max_new_tokens: p.max_new_tokens,
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        seed: p.seed,
        stop: p.stop,
    };
    // A raw prompt is the client's own markup: control tokens in it are control tokens.
    let prompt = vec![PromptPart::Markup(request.inputs)];
    let prompt_ids = tokenize_prompt(&generator, prompt, "inputs").await?;
    let request = build_request(
        &generator,
        prompt_ids,
        options,
        default_temperature,
        &NATIVE_FIELDS,
    )?;
    submit(&generator, request, work)
}

pub async fn generate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<NativeResponse>, ApiError> {
    let started_at = Instant::now();
    let request: NativeRequest = parse_json(&headers, body)?;
    let started = start_native(&state, request).await?;
    let seed = started.seed;
    let done = collect(started).await?;
    Ok(Json(NativeResponse {
        generated_text: done.text,
        details: Details {
            finish_reason: done.finish_reason.native(),
            prompt_tokens: done.prompt_tokens,
            generated_tokens: done.generated_tokens,
            seed,
            token_ids: done.token_ids,
        },
        latency_ms: started_at.elapsed().as_secs_f64() * 1e3,
    }))
}

/// `data: {"index": i, "token": {"id": .., "text": ..}}` per token; the last event also carries
/// `generated_text` and `details` (without `token_ids`: the client has seen them).
pub async fn generate_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: NativeRequest = parse_json(&headers, body)?;
    let started = start_native(&state, request).await?;
    let seed = started.seed;
    let mut text = String::new();
    let mut index = 0usize;
    let map = move |event: GenerationEvent| match event {
        GenerationEvent::Token {
            id,
            text: delta,
            finish,
        } => {
            text.push_str(&delta);
            let mut body = json!({"index": index, "token": {"id": id, "text": delta}});
            index += 1;
            if let Some(finish) = finish {
                body["generated_text"] = json!(text);
                body["details"] = json!({
                    "finish_reason": finish.reason.native(),
                    "prompt_tokens": finish.prompt_tokens,
                    "generated_tokens": finish.generated_tokens,
                    "seed": seed,
                });
            }
            Mapped {
                events: vec![Event::default().data(body.to_string())],
                end: finish.is_some(),
            }
        }
        GenerationEvent::Failed(message) => Mapped {
            events: vec![Event::default().data(json!({"error": message}).to_string())],
            end: true,
        },
    };
    Ok(token_stream(started.receiver, started.work, map, Vec::new()).into_response())
}
