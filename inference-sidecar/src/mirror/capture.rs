//! The middleware on the inference routes: after production has answered, a sampled request and
//! production's answer go onto each sampling target's queue. It changes nothing the user gets:
//! the answer's frames pass through as they come (server-sent events included), each kept by a
//! reference-counted clone, and the copy is queued without waiting when the last one has gone.
//! With no target configured it does nothing at all.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as _, Frame, SizeHint};
use lexserve_contract::mirror::{defaults::MAX_BODY_BYTES, drop_reason, outcome};
use lexserve_contract::router::AssignmentSource;

use super::sample::sampled;
use super::worker::Copy;
use super::{ActiveTarget, Mirror};
use crate::http::error::ApiError;

/// The inference routes' patterns, as `&'static str` for the copies (the answer shape to expect).
fn static_route(route: &str) -> Option<&'static str> {
    crate::http::routes::INFERENCE_ROUTES
        .iter()
        .copied()
        .find(|r| *r == route)
}

pub async fn capture(State(mirror): State<Arc<Mirror>>, request: Request, next: Next) -> Response {
    let Some(active) = mirror.active() else {
        return next.run(request).await;
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| static_route(p.as_str()));
    let Some(route) = route else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    // Admission has read the body into one buffer already: this takes it, without a copy.
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => {
            return ApiError::Malformed {
                message: format!("cannot read the request body: {e}"),
            }
            .into_response();
        }
    };
    let json = active
        .targets
        .iter()
        .any(|t| t.target.spec.sampling.by == AssignmentSource::JsonField)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten();
    let chosen: Vec<ActiveTarget> = active
        .targets
        .iter()
        .filter(|t| {
            let spec = &t.target.spec;
            sampled(
                &spec.sampling,
                spec.percent,
                &parts.headers,
                json.as_ref(),
                mirror.randomness.next_u64(),
            )
        })
        .cloned()
        .collect();
    drop(active);
    if chosen.is_empty() {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    }
    if body.len() > MAX_BODY_BYTES {
        for t in &chosen {
            mirror
                .metrics
                .dropped(&t.target.spec.shadow, drop_reason::TOO_LARGE);
        }
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    }
    let request = Pending {
        route,
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
        body: body.clone(),
    };
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    // Production's time to its answer's headers: what its latency histogram and the candidate's
    // `Server-Timing` count.
    let production = started.elapsed();
    let status = response.status();
    if !status.is_success() {
        // Nothing to compare: production itself failed.
        for t in &chosen {
            mirror
                .metrics
                .outcome(&t.target.spec.shadow, outcome::PRODUCTION_ERROR);
        }
        return response;
    }
    response.map(|body| {
        Body::new(Tee {
            body,
            capture: Some(Capture {
                mirror,
                targets: chosen,
                request,
                status,
                production,
                chunks: Vec::new(),
                size: 0,
            }),
        })
    })
}

/// The request as it came, for its copies.
struct Pending {
    route: &'static str,
    method: axum::http::Method,
    path: String,
    query: Option<String>,
    content_type: Option<axum::http::HeaderValue>,
    body: Bytes,
}

/// Production's answer as it goes by.
struct Capture {
    mirror: Arc<Mirror>,
    targets: Vec<ActiveTarget>,
    request: Pending,
    status: StatusCode,
    /// Production's time to its answer's headers.
    production: std::time::Duration,
    chunks: Vec<Bytes>,
    size: usize,
}

impl Capture {
    fn keep(&mut self, data: &Bytes) {
        self.size = self.size.saturating_add(data.len());
        if self.size <= MAX_BODY_BYTES {
            self.chunks.push(data.clone());
        } else {
            self.chunks = Vec::new();
        }
    }

    /// The answer has ended: one copy per target, queued without waiting.
    fn finish(self) {
        let production = self.production;
        let metrics = &self.mirror.metrics;
        if self.size > MAX_BODY_BYTES {
            for t in &self.targets {
                metrics.dropped(&t.target.spec.shadow, drop_reason::TOO_LARGE);
            }
            return;
        }
        let request = self.request;
        for t in self.targets {
            let copy = Copy {
                target: Arc::clone(&t.target),
                route: request.route,
                method: request.method.clone(),
                path: request.path.clone(),
                query: request.query.clone(),
                content_type: request.content_type.clone(),
                body: request.body.clone(),
                status: self.status,
                answer: self.chunks.clone(),
                production,
            };
            if let Err(Some(reason)) = t.queue.offer(copy) {
                metrics.dropped(&t.target.spec.shadow, reason);
            }
        }
    }
}

/// A response body that passes production's frames through unchanged and keeps a clone of each.
struct Tee {
    body: Body,
    /// Taken when the answer ends (or breaks).
    capture: Option<Capture>,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(capture)) = (frame.data_ref(), self.capture.as_mut()) {
                    capture.keep(data);
                }
                // hyper polls no further once the body says it has ended.
                if self.body.is_end_stream()
                    && let Some(capture) = self.capture.take()
                {
                    capture.finish();
                }
            }
            Poll::Ready(None) => {
                if let Some(capture) = self.capture.take() {
                    capture.finish();
                }
            }
            // A broken answer is not production's answer: nothing to compare.
            Poll::Ready(Some(Err(_))) => self.capture = None,
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // An answer with no frame at all (an empty body) is never polled; one the client
        // abandoned midway is not complete and is not copied.
        if self.body.is_end_stream()
            && let Some(capture) = self.capture.take()
        {
            capture.finish();
        }
    }
}
