//! OpenAI-compatible generation: `/v1/completions` and `/v1/chat/completions`, whole answers or
//! `stream: true` (server-sent chunks ending in `data: [DONE]`), with usage counts. `n` > 1 asks
//! for several samples of one prompt: as many sequences, the prompt computed once (they share its
//! blocks), choices indexed 0..n (in the stream each chunk's choice carries its `index`), usage
//! counting the prompt once and the completion tokens of all of them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::parse_json;
use super::error::ApiError;
use super::generate::{
    GenerationOptions, OptionFields, StartedN, build_request, collect_events, submit_n,
    tokenize_prompt,
};
use super::sse::{Mapped, event_stream, receiver_stream};
use super::state::AppState;
use crate::generation::GenerationEvent;
use crate::generation::chat_template::{ChatMessage, PromptPart};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The options both OpenAI routes take.
#[derive(Debug, Deserialize)]
pub struct SamplingFields {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Not in OpenAI's API; accepted as vLLM and TGI do.
    pub top_k: Option<u64>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Every other field of the request, checked against [`UNSUPPORTED`].
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// Whether a field's value asks for nothing (so ignoring the field changes no answer).
type AsksNothing = fn(&Value) -> bool;

/// Fields of OpenAI's completion and chat APIs that this server does not implement, each with
/// the values that ask for nothing (what clients send as defaults). Any other value is answered
/// 400 naming the field, never silently ignored. Fields outside OpenAI's API (and `user`,
/// `metadata`, `store`, which do not change the answer) are ignored.
const UNSUPPORTED: &[(&str, AsksNothing)] = &[
    ("logit_bias", |v| {
        v.as_object().is_some_and(|o| o.is_empty())
    }),
    ("logprobs", |v| v == &Value::Bool(false)),
    ("top_logprobs", |v| v.as_u64() == Some(0)),
    ("presence_penalty", |v| v.as_f64() == Some(0.0)),
    ("frequency_penalty", |v| v.as_f64() == Some(0.0)),
    ("best_of", |v| v.as_u64() == Some(1)),
    ("echo", |v| v == &Value::Bool(false)),
    ("suffix", |v| v.as_str() == Some("")),
    ("tools", |v| v.as_array().is_some_and(|a| a.is_empty())),
    ("functions", |v| v.as_array().is_some_and(|a| a.is_empty())),
    ("tool_choice", |v| v.as_str() == Some("none")),
    ("function_call", |v| v.as_str() == Some("none")),
    ("parallel_tool_calls", |_| true),
    ("response_format", |v| {
        v.get("type").and_then(Value::as_str) == Some("text")
    }),
    ("modalities", |v| v == &json!(["text"])),
    ("audio", |_| false),
    ("prediction", |_| false),
];

/// The first field of [`UNSUPPORTED`] the request sets to a value that asks for something.
fn unsupported_field(other: &serde_json::Map<String, Value>) -> Option<ApiError> {
    UNSUPPORTED.iter().find_map(|(name, asks_nothing)| {
        let value = other.get(*name)?;
        (!value.is_null() && !asks_nothing(value)).then(|| ApiError::Unsupported {
            field: (*name).to_string(),
            message: format!("{name} is not supported by this server (got {value})"),
        })
    })
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    pub content: MessageContent,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<RequestMessage>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

const fn fields(prompt: &'static str) -> OptionFields {
    OptionFields {
        max_new_tokens: "max_tokens",
        temperature: "temperature",
        top_k: "top_k",
        top_p: "top_p",
        stop: "stop",
        prompt,
    }
}

/// OpenAI samples at temperature 1 unless told otherwise.
const OPENAI_DEFAULT_TEMPERATURE: f64 = 1.0;

/// The choices a request asks for: `n`, 1 when absent, at most the sequences that run at once.
fn choices(sampling: &SamplingFields, max_n: usize) -> Result<usize, ApiError> {
    match sampling.n {
        None => Ok(1),
        Some(n) if (1..=max_n as u64).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::Invalid {
            field: Some("n".into()),
            message: format!(
                "n must be between 1 and {max_n} (the sequences this server runs at once), got {n}"
            ),
        }),
    }
}

fn check_common(state: &AppState, sampling: &SamplingFields) -> Result<(), ApiError> {
    if let Some(error) = unsupported_field(&sampling.other) {
        return Err(error);
    }
    if let Some(model) = &sampling.model
        && model != &state.service.name
    {
        return Err(ApiError::NotFound(format!(
            "model {model:?} is not served here (this server serves {:?})",
            state.service.name
        )));
    }
    Ok(())
}

fn options(sampling: &SamplingFields) -> GenerationOptions {
    GenerationOptions {
        max_new_tokens: sampling.max_completion_tokens.or(sampling.max_tokens),
        temperature: sampling.temperature,
        top_k: sampling.top_k,
        top_p: sampling.top_p,
        seed: sampling.seed,
        stop: sampling
            .stop
            .as_ref()
            .map(|s| match s {
                OneOrMany::One(s) => vec![s.clone()],
                OneOrMany::Many(v) => v.clone(),
            })
            .unwrap_or_default(),
    }
}

async fn start(
    state: &AppState,
    prompt: Vec<PromptPart>,
    sampling: &SamplingFields,
    prompt_field: &'static str,
) -> Result<StartedN, ApiError> {
    let (generator, work) = state.service.generator()?;
    let n = choices(sampling, generator.limits.max_n)?;
    let prompt_ids = tokenize_prompt(&generator, prompt, prompt_field).await?;
    let request = build_request(
        &generator,
        prompt_ids,
        options(sampling),
        OPENAI_DEFAULT_TEMPERATURE,
        &fields(prompt_field),
    )?;
    submit_n(&generator, request, work, n)
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn request_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}-{:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a completion's text chunk, a chat delta, differ only in their shape: one mapper serves
/// both routes.
#[derive(Clone, Copy)]
enum Shape {
    Completion,
    Chat,
}

impl Shape {
    /// The `id` prefix, the `object` of a whole answer, and the `object` of a stream's chunk.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Completion => ("cmpl", "text_completion", "text_completion"),
            Self::Chat => ("chatcmpl", "chat.completion", "chat.completion.chunk"),
        }
    }
}

/// Generates from `prompt` and answers in `shape`: a stream of chunks when the request asks for
/// one, else the whole answer.
async fn answer(
    state: &AppState,
    prompt: Vec<PromptPart>,
    sampling: &SamplingFields,
    prompt_field: &'static str,
    shape: Shape,
) -> Result<Response, ApiError> {
    let started = start(state, prompt, sampling, prompt_field).await?;
    if sampling.stream {
        let include_usage = sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream_response(state, started, shape, include_usage));
    }
    let prompt_tokens = started.prompt_tokens;
    // All at once: dropping this future (the client left) drops every receiver, cancelling all.
    let done =
        futures::future::try_join_all(started.receivers.into_iter().map(collect_events)).await?;
    let choices: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(index, done)| {
            let finish_reason = done.finish_reason.openai();
            match shape {
                Shape::Completion => json!({
                    "index": index,
                    "text": done.text,
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }),
                Shape::Chat => json!({
                    "index": index,
                    "message": {"role": "assistant", "content": done.text},
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }),
            }
        })
        .collect();
    let completion_tokens = done.iter().map(|d| d.generated_tokens).sum();
    let (prefix, object, _) = shape.names();
    Ok(Json(json!({
        "id": request_id(prefix),
        "object": object,
        "created": now_unix(),
        "model": state.service.name,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }))
    .into_response())
}

fn stream_response(
    state: &AppState,
    started: StartedN,
    shape: Shape,
    include_usage: bool,
) -> Response {
    let (prefix, _, object) = shape.names();
    let id = request_id(prefix);
    let model = state.service.name.clone();
    let created = state.started_unix.max(now_unix());
    let chunk = move |choice: Value, usage: Option<Value>| {
        let mut body = json!({
            "id": id,
            "object": object,
            "created": created,
            "model": model,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) },
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        Event::default().data(body.to_string())
    };
    let n = started.receivers.len();
    let prompt_tokens = started.prompt_tokens;
    // Each choice's role chunk goes before its first token; the stream ends when all have ended.
    let mut first = vec![true; n];
    let mut unfinished = n;
    let mut completion_tokens = 0;
    let map = move |(index, event): (usize, GenerationEvent)| match event {
        GenerationEvent::Token { text, finish, .. } => {
            let mut events = Vec::new();
            if matches!(shape, Shape::Chat) && first[index] {
                events.push(chunk(
                    json!({"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
                    None,
                ));
            }
            first[index] = false;
            let reason = finish.map(|f| f.reason.openai());
            if !text.is_empty() || reason.is_some() {
                let choice = match shape {
                    Shape::Completion => {
                        json!({"index": index, "text": text, "logprobs": null, "finish_reason": reason})
                    }
                    Shape::Chat if text.is_empty() => {
                        json!({"index": index, "delta": {}, "finish_reason": reason})
                    }
                    Shape::Chat => {
                        json!({"index": index, "delta": {"content": text}, "finish_reason": reason})
                    }
                };
                events.push(chunk(choice, None));
            }
            if let Some(finish) = finish {
                unfinished -= 1;
                completion_tokens += finish.generated_tokens;
                if unfinished == 0 && include_usage {
                    events.push(chunk(
                        Value::Null,
                        Some(usage(prompt_tokens, completion_tokens)),
                    ));
                }
            }
            Mapped {
                events,
                end: unfinished == 0,
            }
        }
        GenerationEvent::Failed(message) => {
            Mapped {
                events: vec![Event::default().data(
                    json!({"error": {"message": message, "type": "server_error"}}).to_string(),
                )],
                end: true,
            }
        }
    };
    // The choices' events, merged as they come (each stream tagged with its index).
    let merged = futures::stream::select_all(
        started
            .receivers
            .into_iter()
            .enumerate()
            .map(|(index, r)| receiver_stream(r).map(move |e| (index, e)).boxed()),
    )
    .boxed();
    event_stream(
        merged,
        started.work,
        map,
        vec![Event::default().data("[DONE]")],
    )
    .into_response()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse_json(&headers, body)?;
    check_common(&state, &request.sampling)?;
    let mut prompts = request.prompt.into_vec();
    if prompts.len() != 1 {
        return Err(ApiError::Invalid {
            field: Some("prompt".into()),
            message: "exactly one prompt per request is supported".into(),
        });
    }
    // A raw prompt is the client's own markup: control tokens in it are control tokens.
    let prompt = vec![PromptPart::Markup(prompts.remove(0))];
    answer(
        &state,
        prompt,
        &request.sampling,
        "prompt",
        Shape::Completion,
    )
    .await
}

fn chat_messages(messages: Vec<RequestMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::Invalid {
            field: Some("messages".into()),
            message: "must contain at least one message".into(),
        });
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match m.content {
                MessageContent::Text(text) => text,
                MessageContent::Parts(parts) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            _ => {
                                return Err(ApiError::Invalid {
                                    field: Some(format!("messages[{i}].content[{j}]")),
                                    message: "only text parts are supported".into(),
                                });
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage {
                role: m.role,
                content,
            })
        })
        .collect()
}

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse_json(&headers, body)?;
    check_common(&state, &request.sampling)?;
    let messages = chat_messages(request.messages)?;
    let (generator, _check) = state.service.generator()?;
    let prompt = generator
        .chat_prompt(&messages)
        .map_err(|message| ApiError::Invalid {
            field: Some("messages".into()),
            message,
        })?;
    answer(&state, prompt, &request.sampling, "messages", Shape::Chat).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: Value) -> Option<String> {
        let request: ChatRequest = serde_json::from_value(body).expect("a chat request");
        match unsupported_field(&request.sampling.other) {
            Some(ApiError::Unsupported { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn unsupported_fields_are_refused_unless_they_ask_for_nothing() {
        let chat = |extra: Value| {
            let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
            body.as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            body
        };
        // What clients send as defaults passes.
        for neutral in [
            json!({"logprobs": false, "presence_penalty": 0, "frequency_penalty": 0.0}),
            json!({"logit_bias": {}, "tools": [], "tool_choice": "none", "echo": false}),
            json!({"response_format": {"type": "text"}, "logit_bias": null, "user": "u1"}),
            json!({"some_server_extension": 3}),
        ] {
            assert_eq!(refused(chat(neutral.clone())), None, "{neutral}");
        }
        for (asking, field) in [
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"presence_penalty": 0.5}), "presence_penalty"),
            (json!({"logit_bias": {"1": -100}}), "logit_bias"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format",
            ),
        ] {
            assert_eq!(
                refused(chat(asking.clone())).as_deref(),
                Some(field),
                "{asking}"
            );
        }
    }
}
