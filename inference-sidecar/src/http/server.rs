//! Router, middleware and the server's lifecycle (listen, drain on SIGTERM, exit).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use thiserror::Error;
use tokio::net::TcpListener;

use super::error::ApiError;
use super::{completions, generate, native, openai, v2};
use crate::config::{BackendKind, ServeConfig};
use crate::encoder::service::ModelService;
use crate::metrics::{Metrics, RouteLabels};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<ModelService>,
    pub metrics: Arc<Metrics>,
    /// KServe metadata `platform`.
    pub platform: String,
    pub started_unix: u64,
}

/// Routes whose latency is the service's latency (health checks and scrapes would only dilute it).
/// For streams, the time to the response's headers (the stream's own timing is in the token metrics).
const INFERENCE_ROUTES: [&str; 8] = [
    "/embed",
    "/predict",
    "/v1/embeddings",
    "/v2/models/{name}/infer",
    "/generate",
    "/generate_stream",
    "/v1/completions",
    "/v1/chat/completions",
];

async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .requests_total
        .get_or_create(&RouteLabels {
            route: route.clone(),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    if INFERENCE_ROUTES.contains(&route.as_str()) {
        state
            .metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "alive"}))
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
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
        .route("/v1/models", get(openai::models))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::server_ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route("/health", get(health))
        .route("/ready", get(v2::ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Resolves on SIGTERM or Ctrl-C. If the handlers cannot be installed the server runs until killed,
/// which is what it would do without them.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// Time allowed, after in-flight inference has finished, for connections to close.
const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves until SIGTERM/Ctrl-C, then drains: readiness turns false and new work gets 503 while
/// accepted work completes (up to `drain_timeout`), then the listener closes and the function returns.
pub async fn serve(config: ServeConfig) -> Result<(), ServerError> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    let metrics = Arc::new(Metrics::new());
    let platform = match config.backend {
        BackendKind::Onnx => "lexserve_onnx",
        BackendKind::Candle => "lexserve_candle",
    };
    let max_body_bytes = config.max_body_bytes;
    let drain_timeout = config.drain_timeout;
    let service = ModelService::start(config, Arc::clone(&metrics));
    let state = AppState {
        service: Arc::clone(&service),
        metrics,
        platform: platform.to_string(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let app = router(state, max_body_bytes);
    tracing::info!(addr = %addr, "listening");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    let mut server_task = tokio::spawn(server.into_future());

    tokio::select! {
        result = &mut server_task => {
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServerError::Serve(e)),
                Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
            };
        }
        _ = shutdown_signal() => {}
    }
    tracing::info!("shutdown requested: draining");
    service.begin_drain();
    if tokio::time::timeout(drain_timeout, service.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(?drain_timeout, "drain timed out with work still in flight");
    }
    let _ = stop.send(());
    match tokio::time::timeout(CONNECTION_CLOSE_GRACE, server_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(ServerError::Serve(e)),
        Ok(Err(e)) => return Err(ServerError::Serve(std::io::Error::other(e))),
        Err(_) => tracing::warn!("connections did not close in time; exiting anyway"),
    }
    tracing::info!("drained; exiting");
    Ok(())
}
