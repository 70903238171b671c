//! `POST /outcome`: a client reports what happened after an answer (a click, a rating, a
//! conversion), naming the request by the id the router gave it, or the user by the assignment
//! key. Ids are remembered in a map bounded in size and age: the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use lexserve_contract::router::AssignmentSource;
use serde::Deserialize;
use serde_json::json;

use super::assign::owner_of_key;
use super::metrics::OutcomeLabels;
use super::server::RouterState;
use crate::http::body::parse_json;
use crate::http::error::ApiError;

/// The request ids the router handed out recently, and the variant each went to.
pub struct RequestLog {
    capacity: usize,
    window: Duration,
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    variants: HashMap<Arc<str>, (Instant, Arc<str>)>,
    /// Ids in the order they were handed out (and so of age).
    order: VecDeque<(Instant, Arc<str>)>,
}

impl RequestLog {
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self {
            capacity,
            window,
            inner: Mutex::new(LogInner::default()),
        }
    }

    pub fn remember(&self, id: Arc<str>, variant: Arc<str>) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, old)) = inner.order.front() {
            if inner.order.len() < self.capacity && now.duration_since(*at) < self.window {
                break;
            }
            let old = Arc::clone(old);
            inner.order.pop_front();
            inner.variants.remove(&old);
        }
        inner.order.push_back((now, Arc::clone(&id)));
        inner.variants.insert(id, (now, variant));
    }

    /// The variant `id` went to, if the id is still remembered.
    pub fn variant_of(&self, id: &str) -> Option<Arc<str>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (at, variant) = inner.variants.get(id)?;
        // Expired entries are removed lazily by `remember`; do not answer for them meanwhile.
        (at.elapsed() < self.window).then(|| Arc::clone(variant))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutcomeRequest {
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    key: Option<String>,
    metric: String,
    value: f64,
}

pub async fn record(
    State(state): State<RouterState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: OutcomeRequest = parse_json(&headers, body)?;
    let routing = state
        .live
        .current()
        .ok_or_else(|| ApiError::Unavailable("no router configuration is loaded yet".into()))?;
    let config = &routing.config;
    if !config.outcomes.contains(&request.metric) {
        return Err(ApiError::Unsupported {
            field: "metric".into(),
            message: format!(
                "unknown outcome metric {:?}; this experiment counts {:?}",
                request.metric, config.outcomes
            ),
        });
    }
    if !request.value.is_finite() || request.value < 0.0 {
        return Err(ApiError::Invalid {
            field: Some("value".into()),
            message: format!(
                "an outcome value must be finite and at least 0, got {}",
                request.value
            ),
        });
    }
    let variant: Arc<str> = match (&request.request_id, &request.key) {
        (Some(id), None) => state.log.variant_of(id).ok_or_else(|| {
            ApiError::NotFound(format!(
                "request id {id:?} is unknown or older than the outcome window"
            ))
        })?,
        (None, Some(key)) => {
            if config.assignment.by == AssignmentSource::Random {
                return Err(ApiError::Invalid {
                    field: Some("key".into()),
                    message: "this experiment assigns at random: name the request by requestId"
                        .into(),
                });
            }
            if key.is_empty() {
                return Err(ApiError::Invalid {
                    field: Some("key".into()),
                    message: "the assignment key is empty".into(),
                });
            }
            Arc::from(routing.upstreams[owner_of_key(&routing, key)].name.as_str())
        }
        _ => {
            return Err(ApiError::Invalid {
                field: Some("requestId".into()),
                message: "give exactly one of requestId and key".into(),
            });
        }
    };
    state.metrics.record_outcome(
        &OutcomeLabels {
            experiment: config.experiment.clone(),
            variant: variant.to_string(),
            metric: request.metric.clone(),
        },
        request.value,
    );
    Ok(Json(json!({
        "experiment": config.experiment,
        "variant": &*variant,
        "metric": request.metric,
        "value": request.value,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_forgets_the_oldest_beyond_its_capacity() {
        let log = RequestLog::new(3, Duration::from_secs(600));
        for i in 0..5 {
            log.remember(Arc::from(format!("id-{i}")), Arc::from("b"));
        }
        assert_eq!(log.variant_of("id-0"), None);
        assert_eq!(log.variant_of("id-1"), None);
        assert_eq!(log.variant_of("id-4").as_deref(), Some("b"));
        assert_eq!(log.inner.lock().unwrap().variants.len(), 3);
    }

    #[test]
    fn the_log_forgets_ids_older_than_the_window() {
        let log = RequestLog::new(10, Duration::ZERO);
        log.remember(Arc::from("id"), Arc::from("b"));
        assert_eq!(log.variant_of("id"), None);
    }
}
