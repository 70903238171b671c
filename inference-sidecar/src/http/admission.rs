//! Admission: every inference request takes one of `max_concurrent_requests` permits before its
//! body is read or anything is tokenized, and holds it until its answer has been sent (a token
//! stream's whole life). With none free, the answer is 429 at once: overload costs the server a
//! header parse, not a body buffered and tokenized only to be refused behind a full queue. This is
//! text-embeddings-inference's permit-before-queue, taken one step earlier, before the body.
//!
//! An admitted request's body must arrive within `body_read_timeout` (408 otherwise) and its whole
//! answer within `request_timeout` (503 otherwise; the handler is dropped, which cancels its
//! queued texts or its sequence). Probes, /metrics and metadata are not behind this layer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::HttpLimits;
use crate::encoder::service::ServiceError;

/// The permits and the deadlines of admitted requests.
pub struct Admission {
    permits: Arc<Semaphore>,
    limits: HttpLimits,
    max_body_bytes: usize,
}

impl Admission {
    pub fn new(limits: HttpLimits, max_body_bytes: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            limits,
            max_body_bytes,
        }
    }

    /// Resolves once every permit is back: nothing admitted is still being answered. Taking
    /// them all also keeps new requests out, which is what a drain wants.
    pub async fn wait_idle(&self) {
        let all = u32::try_from(self.limits.max_concurrent_requests).unwrap_or(u32::MAX);
        let _ = self.permits.acquire_many(all).await;
    }
}

/// The middleware in front of the inference routes (the model server's, and everything the
/// experiment router forwards).
pub async fn admit(
    State(admission): State<Arc<Admission>>,
    request: Request,
    next: Next,
) -> Response {
    let admission = &*admission;
    let Ok(permit) = Arc::clone(&admission.permits).try_acquire_owned() else {
        linger(request.into_body(), admission);
        return ApiError::Service(ServiceError::Overloaded(format!(
            "the server is at its limit of {} requests in flight; retry later",
            admission.limits.max_concurrent_requests
        )))
        .into_response();
    };
    let (parts, body) = request.into_parts();
    let expected = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let read = read_body(body, expected, admission.max_body_bytes);
    let bytes = match tokio::time::timeout(admission.limits.body_read_timeout, read).await {
        Err(_) => {
            return ApiError::BodyTimeout(format!(
                "the request body did not arrive within {:?}",
                admission.limits.body_read_timeout
            ))
            .into_response();
        }
        Ok(BodyRead::TooLarge(rest)) => {
            linger(rest, admission);
            return ApiError::TooLarge {
                field: None,
                message: format!(
                    "the request body exceeds the limit of {} bytes",
                    admission.max_body_bytes
                ),
            }
            .into_response();
        }
        Ok(BodyRead::Broken(e)) => {
            return ApiError::Malformed {
                message: format!("cannot read the request body: {e}"),
            }
            .into_response();
        }
        Ok(BodyRead::Complete(bytes)) => bytes,
    };
    let request = Request::from_parts(parts, Body::from(bytes));
    let timeout = admission.limits.request_timeout;
    let response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(format!(
            "the answer was not ready within {timeout:?}; the request was cancelled"
        ))
        .into_response(),
    };
    response.map(|body| {
        Body::new(Holding {
            body,
            _permit: permit,
        })
    })
}

enum BodyRead {
    Complete(Bytes),
    /// Over the limit; what is left of the body.
    TooLarge(Body),
    Broken(axum::Error),
}

/// Reads `body` up to `limit` bytes, into one buffer sized from the declared length.
async fn read_body(body: Body, expected: usize, limit: usize) -> BodyRead {
    let mut buffer = Vec::with_capacity(expected.min(limit));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return BodyRead::Broken(e),
        };
        if buffer.len() + chunk.len() > limit {
            return BodyRead::TooLarge(Body::from_stream(stream));
        }
        buffer.extend_from_slice(&chunk);
    }
    BodyRead::Complete(Bytes::from(buffer))
}

/// Reads and discards what is left of a refused request's body, in the background and within the
/// body deadline, while the refusal is sent. Closing the connection on unread data makes the
/// kernel reset it, and a client still sending its body would then see a broken connection
/// instead of the 429 or 413 (nginx's "lingering close"). Chunks are dropped as they come: no
/// memory is held for them.
fn linger(body: Body, admission: &Admission) {
    let deadline = admission.limits.body_read_timeout;
    let limit = admission.max_body_bytes;
    tokio::spawn(async move {
        let discard = async {
            let mut stream = body.into_data_stream();
            let mut seen = 0usize;
            while let Some(Ok(chunk)) = stream.next().await {
                seen += chunk.len();
                if seen > limit {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(deadline, discard).await;
    });
}

/// A response body that holds the request's permit until hyper has sent it (or dropped it).
struct Holding {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
