//! Forwarding: a request goes to its variant with method, path, query, headers (less hop-by-hop
//! ones) and body as they came, the model name aside; the answer streams back as the upstream
//! produces it (server-sent events are not buffered), tagged with the variant and a request id.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, HOST};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use lexserve_contract::names::http::{REQUEST_ID_HEADER, VARIANT_HEADER};
use lexserve_contract::router::AssignmentSource;

use super::assign::{Assignment, assign};
use super::config::Upstream;
use super::metrics::{ExperimentLabels, RouterMetrics, VariantLabels};
use super::model_name::{UnknownModel, inspect, rewrite};
use super::server::RouterState;
use crate::http::error::ApiError;

/// Random numbers for request ids and `random` assignment: SipHash of a counter under the
/// process's random keys (std's `RandomState`), so no generator crate and no lock.
pub struct Randomness {
    keys: RandomState,
    counter: AtomicU64,
}

impl Default for Randomness {
    fn default() -> Self {
        Self {
            keys: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }
}

impl Randomness {
    pub fn next_u64(&self) -> u64 {
        self.keys
            .hash_one(self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// 128 random bits in hex.
    pub fn request_id(&self) -> String {
        format!("{:016x}{:016x}", self.next_u64(), self.next_u64())
    }
}

/// Counts a request in `lexserve_requests_running` until dropped (with its answer's body).
struct Running(Arc<RouterMetrics>);

impl Running {
    fn start(metrics: &Arc<RouterMetrics>) -> Self {
        metrics.requests_running.inc();
        Self(Arc::clone(metrics))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.requests_running.dec();
    }
}

/// The fallback route: everything that is not the router's own goes to a variant.
pub async fn forward(State(state): State<RouterState>, request: Request) -> Response {
    let running = Running::start(&state.metrics);
    match forward_to_variant(&state, request, running).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn forward_to_variant(
    state: &RouterState,
    request: Request,
    running: Running,
) -> Result<Response, ApiError> {
    let routing = state
        .live
        .current()
        .ok_or_else(|| ApiError::Unavailable("no router configuration is loaded yet".into()))?;
    let config = &routing.config;
    let (parts, body) = request.into_parts();
    // Admission has read the body already (bounded by the body limit): this takes its bytes.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::Malformed {
            message: format!("cannot read the request body: {e}"),
        })?;
    let path = parts.uri.path();
    let refs = inspect(&config.model, path, &body).map_err(|UnknownModel(name)| {
        ApiError::NotFound(format!(
            "the model {name:?} does not exist; this experiment serves {:?}",
            config.model
        ))
    })?;
    let json = (config.assignment.by == AssignmentSource::JsonField)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten();
    let assignment = assign(
        &routing,
        &parts.headers,
        json.as_ref(),
        state.randomness.next_u64(),
    );
    let upstream = &routing.upstreams[assignment.variant()];
    let request_id = state.randomness.request_id();
    match assignment {
        Assignment::Keyed { .. } | Assignment::Random { .. } => {
            state
                .metrics
                .assignments
                .get_or_create(&VariantLabels {
                    experiment: config.experiment.clone(),
                    variant: upstream.name.clone(),
                })
                .inc();
            state.log.remember(
                Arc::from(request_id.as_str()),
                Arc::from(upstream.name.as_str()),
            );
        }
        // Not an assignment (see `assign`): its outcomes could not be attributed either.
        Assignment::Unkeyed { .. } => {
            state
                .metrics
                .unassigned
                .get_or_create(&ExperimentLabels {
                    experiment: config.experiment.clone(),
                })
                .inc();
        }
    }

    let (path, rewritten) = rewrite(&refs, path, &body, &upstream.model);
    let url = match parts.uri.query() {
        Some(query) => format!("{}{path}?{query}", upstream.base),
        None => format!("{}{path}", upstream.base),
    };
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(HOST);
    headers.remove(CONTENT_LENGTH);
    if let Some(host) = &upstream.host {
        headers.insert(HOST, host.clone());
    }
    let body = rewritten.map_or(body, Bytes::from);
    let answer = state
        .client
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| upstream_error(upstream, &e))?;

    let status = answer.status();
    let mut headers = answer.headers().clone();
    strip_hop_by_hop(&mut headers);
    headers.insert(
        HeaderName::from_static(VARIANT_HEADER),
        upstream.header.clone(),
    );
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), id);
    }
    // Chunks go out as they come; the request counts as running until the last one has.
    let stream = answer.bytes_stream().map(move |chunk| {
        let _running = &running;
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A failed upstream request as the client sees it: refused or reset, 502; not reached in time,
/// 503 (with Retry-After).
fn upstream_error(upstream: &Upstream, error: &reqwest::Error) -> ApiError {
    let mut cause = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause.push_str(": ");
        cause.push_str(&inner.to_string());
        source = inner.source();
    }
    if error.is_timeout() {
        ApiError::Unavailable(format!(
            "variant {:?} ({}) did not answer in time: {cause}",
            upstream.name, upstream.base
        ))
    } else if error.is_connect() {
        ApiError::BadGateway(format!(
            "variant {:?} ({}) refused the connection: {cause}",
            upstream.name, upstream.base
        ))
    } else {
        ApiError::BadGateway(format!(
            "variant {:?} ({}) failed before answering: {cause}",
            upstream.name, upstream.base
        ))
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): a proxy drops them,
/// and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}
