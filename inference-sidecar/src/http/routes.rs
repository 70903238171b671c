//! The route table, built from the handlers, and the middleware every request passes through
//! (request counts by route and status, latency of the inference routes).

use lexserve_contract::names::http;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::admission::admit;
use super::error::ApiError;
use super::state::AppState;
use super::{completions, generate, native, openai, v2};
use crate::metrics::RouteLabels;

/// Routes whose latency is the service's latency (health checks and scrapes would only dilute it).
/// For streams, the time to the response's headers (the stream's own timing is in the token metrics).
pub(crate) const INFERENCE_ROUTES: [&str; 9] = [
    "/embed",
    "/predict",
    "/v1/embeddings",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    "/generate",
    "/generate_stream",
    "/v1/completions",
    "/v1/chat/completions",
];

/// The `Server-Timing` metric an inference answer carries: the server's time from the request's
/// arrival to the answer's headers, in milliseconds (`app;dur=12.345`), as the latency histogram
/// counts it. The shadow mirror reads a candidate's, so that its latency ratio compares the two
/// servers, not the mirror's idle-priority thread.
pub(crate) const SERVER_TIMING_METRIC: &str = "app";

async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let mut response = next.run(request).await;
    state
        .metrics
        .requests_total
        .get_or_create(&RouteLabels {
            route: route.clone(),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    if INFERENCE_ROUTES.contains(&route.as_str()) {
        let elapsed = started.elapsed();
        state
            .metrics
            .request_duration
            .observe(elapsed.as_secs_f64());
        if let Ok(value) = axum::http::HeaderValue::from_str(&format!(
            "{SERVER_TIMING_METRIC};dur={:.3}",
            elapsed.as_secs_f64() * 1000.0
        )) {
            response.headers_mut().insert(
                axum::http::header::HeaderName::from_static("server-timing"),
                value,
            );
        }
    }
    response
}

/// Liveness: fails once the thread that serves the model has died, so that the kubelet restarts
/// the container (a load failure is not death: it shows on `/ready` with its reason).
async fn health(State(state): State<AppState>) -> Response {
    match state.service.check_alive() {
        Ok(()) => axum::Json(json!({"status": "alive"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "dead", "error": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    openmetrics(state.metrics.encode())
}

/// A `/metrics` answer: the encoded registry as OpenMetrics text (the model server's and the
/// router's).
pub(crate) fn openmetrics(encoded: Result<String, std::fmt::Error>) -> Response {
    match encoded {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/embed", post(native::embed))
        .route("/predict", post(native::predict))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/generate", post(generate::generate))
        .route("/generate_stream", post(generate::generate_stream))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(completions::chat_completions))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::infer_version),
        )
        // Inside admission: only admitted requests are mirrored, after production answered.
        .route_layer(middleware::from_fn_with_state(
            state.mirror.clone(),
            crate::mirror::capture::capture,
        ))
        // Only the routes above: probes, /metrics and metadata are never refused.
        .route_layer(middleware::from_fn_with_state(
            state.admission.clone(),
            admit,
        ))
        .route("/v1/models", get(openai::models))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::server_ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route(http::HEALTH_PATH, get(health))
        .route(http::READY_PATH, get(v2::ready))
        .route(http::METRICS_PATH, get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
