//! The operator's HTTP endpoints: `/metrics`, `/healthz` (the process runs) and `/readyz` (it
//! leads with its controllers started, or stands by as a follower).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::telemetry::Metrics;

/// What the endpoints report.
#[derive(Clone)]
pub struct Health {
    pub metrics: Metrics,
    /// What the operator waits for before it is ready (shown by `/readyz`); None once ready.
    waiting_for: Arc<Mutex<Option<String>>>,
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            waiting_for: Arc::new(Mutex::new(Some("starting".to_string()))),
        }
    }

    /// Says what the operator waits for, on `/readyz`, which answers 503 until [`Self::ready`].
    pub fn waiting_for(&self, what: impl Into<String>) {
        *self.lock() = Some(what.into());
    }

    /// `/readyz` answers 200 from now on.
    pub fn ready(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.waiting_for.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    match health.lock().as_deref() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(waiting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {waiting}\n"),
        ),
    }
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, health: Health) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    axum::serve(listener, app).await
}
