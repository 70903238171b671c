//! The router's lifecycle and route table: the model server's connection loop, admission and
//! shutdown sequence (not ready for the shutdown delay, then draining), with the router's routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lexserve_contract::names::http;
use serde_json::json;

use super::config::RouteSettings;
use super::metrics::RouterMetrics;
use super::outcome::{RequestLog, record};
use super::proxy::{Randomness, forward};
use super::reload::{Live, Reloader, RouterWatch};
use crate::http::admission::{Admission, admit};
use crate::http::connection::{ConnectionLimits, serve_connections};
use crate::http::error::ApiError;
use crate::http::server::{CONNECTION_CLOSE_GRACE, ServerError, ShutdownSignals, listen};
use crate::metrics::RouteLabels;

/// Idle connections to a variant are closed after this, well before a sidecar's own keep-alive
/// timeout (75s by default), so that the router never sends on a connection the variant is closing.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the router is in its life.
const SERVING: u8 = 0;
/// SIGTERM seen: not ready, still serving.
const TERMINATING: u8 = 1;
/// New requests get 503; those in flight finish.
const DRAINING: u8 = 2;

#[derive(Clone)]
pub struct RouterState {
    pub live: Arc<Live>,
    pub metrics: Arc<RouterMetrics>,
    pub client: reqwest::Client,
    pub log: Arc<RequestLog>,
    pub randomness: Arc<Randomness>,
    phase: Arc<AtomicU8>,
}

async fn ready(State(state): State<RouterState>) -> Response {
    let phase = state.phase.load(Ordering::SeqCst);
    match state.live.current() {
        Some(routing) if phase == SERVING => axum::Json(json!({
            "status": "ready",
            "experiment": routing.config.experiment,
            "generation": routing.config.generation,
        }))
        .into_response(),
        Some(_) => ApiError::Unavailable("the router is shutting down".into()).into_response(),
        None => {
            ApiError::Unavailable("no router configuration is loaded yet".into()).into_response()
        }
    }
}

async fn health() -> Response {
    axum::Json(json!({"status": "alive"})).into_response()
}

async fn metrics(State(state): State<RouterState>) -> Response {
    crate::http::routes::openmetrics(state.metrics.encode())
}

/// New work is refused while draining (before admission, so it never waits for a permit).
async fn refuse_while_draining(
    State(state): State<RouterState>,
    request: Request,
    next: Next,
) -> Response {
    if state.phase.load(Ordering::SeqCst) == DRAINING {
        return ApiError::Unavailable("the router is draining; retry on another replica".into())
            .into_response();
    }
    next.run(request).await
}

/// Requests by route and status; the latency of forwarded requests (to the upstream's headers).
async fn track(State(state): State<RouterState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let forwarded = route.is_none();
    state
        .metrics
        .requests_total
        .get_or_create(&RouteLabels {
            // Forwarded paths are the clients' and unbounded: one label for all of them.
            route: route.unwrap_or_else(|| "forward".to_string()),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    if forwarded {
        state
            .metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

pub fn router(state: RouterState, admission: Arc<Admission>, max_body_bytes: usize) -> Router {
    let admitted = Router::new()
        .route(http::OUTCOME_PATH, post(record))
        .fallback(forward)
        .layer(middleware::from_fn_with_state(admission, admit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_draining,
        ));
    Router::new()
        .route(http::HEALTH_PATH, get(health))
        .route(http::READY_PATH, get(ready))
        .route(http::METRICS_PATH, get(metrics))
        .merge(admitted)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Serves until SIGTERM/Ctrl-C, then shuts down as `serve` does: not ready for the shutdown
/// delay, then draining (new requests 503) until what is in flight is done or the drain times out.
pub async fn route(settings: RouteSettings) -> Result<(), ServerError> {
    let listener = listen(&settings.listen, settings.http.send_buffer_bytes)
        .await
        .map_err(|source| ServerError::Bind {
            addr: settings.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    let metrics = Arc::new(RouterMetrics::new());
    let live = Arc::new(Live::default());
    let mut reloader = Reloader::new(
        settings.config_path.clone(),
        RouterWatch {
            resolve: settings.resolve.clone(),
            metrics: Arc::clone(&metrics),
        },
        Arc::clone(&live),
    );
    reloader.check();
    let reloading = tokio::spawn(reloader.run());

    let client = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ServerError::Serve(std::io::Error::other(e)))?;
    let admission = Arc::new(Admission::new(settings.http, settings.max_body_bytes));
    let phase = Arc::new(AtomicU8::new(SERVING));
    let state = RouterState {
        live,
        metrics,
        client,
        log: Arc::new(RequestLog::new(
            settings.outcome_request_ids,
            settings.outcome_window,
        )),
        randomness: Arc::new(Randomness::default()),
        phase: Arc::clone(&phase),
    };
    let app = router(state, Arc::clone(&admission), settings.max_body_bytes);
    tracing::info!(addr = %addr, "listening");

    let mut signals = ShutdownSignals::install();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let connection_limits = ConnectionLimits {
        header_read_timeout: settings.http.header_read_timeout,
        write_stall_timeout: settings.http.write_stall_timeout,
    };
    let mut server_task =
        tokio::spawn(serve_connections(listener, app, connection_limits, async {
            let _ = stopped.await;
        }));
    tokio::select! {
        result = &mut server_task => {
            reloading.abort();
            return result.map_err(|e| ServerError::Serve(std::io::Error::other(e)));
        }
        _ = signals.recv() => {}
    }
    let delay = settings.shutdown_delay;
    tracing::info!(?delay, "shutdown requested: not ready, still serving");
    if !delay.is_zero() {
        phase.store(TERMINATING, Ordering::SeqCst);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = signals.recv() => tracing::info!("second shutdown signal: skipping the rest of the delay"),
        }
    }
    tracing::info!("draining");
    phase.store(DRAINING, Ordering::SeqCst);
    if tokio::time::timeout(settings.drain_timeout, admission.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(drain_timeout = ?settings.drain_timeout, "drain timed out with requests still in flight");
    }
    reloading.abort();
    let _ = stop.send(());
    match tokio::time::timeout(CONNECTION_CLOSE_GRACE, server_task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ServerError::Serve(std::io::Error::other(e))),
        Err(_) => tracing::warn!("connections did not close in time; exiting anyway"),
    }
    tracing::info!("drained; exiting");
    Ok(())
}
