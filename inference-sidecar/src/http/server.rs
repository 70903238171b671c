//! The server's lifecycle: listen, serve the router, drain on SIGTERM, exit.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};

use super::admission::Admission;
use super::connection::{ConnectionLimits, serve_connections};
use super::routes::router;
use super::state::AppState;
use crate::config::{Backend, ModelTask, ServeConfig};
use crate::encoder::service::ModelService;
use crate::metrics::Metrics;
use crate::mirror::Mirror;

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

/// A stream of SIGTERM and Ctrl-C. If the handlers cannot be installed, `recv` never resolves
/// and the server runs until killed, which is what it would do without them.
pub(crate) struct ShutdownSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    pub(crate) fn install() -> Self {
        Self {
            #[cfg(unix)]
            terminate: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .ok(),
        }
    }

    pub(crate) async fn recv(&mut self) {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            match self.terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = terminate => {},
        }
    }
}

/// Binds `addr` with `send_buffer` as the SO_SNDBUF of every connection it accepts (Linux copies
/// the listener's buffer sizes to the sockets it accepts).
pub(crate) async fn listen(addr: &str, send_buffer: u32) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(send_buffer)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Time allowed, after in-flight inference has finished, for connections to close.
pub(crate) const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves until SIGTERM/Ctrl-C; then readiness turns false while work is still taken for
/// `shutdown_delay`; then drains: new work gets 503 while accepted work completes (up to
/// `drain_timeout`), then the listener closes and the function returns.
pub async fn serve(config: ServeConfig) -> Result<(), ServerError> {
    let listener = listen(&config.listen, config.http.send_buffer_bytes)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    let metrics = Arc::new(if config.drift_reference.is_some() {
        Metrics::with_reference_sample(config.task == ModelTask::Embed)
    } else {
        Metrics::new()
    });
    let platform = match config.backend {
        Backend::Onnx => "lexserve_onnx",
        Backend::Candle => "lexserve_candle",
    };
    let max_body_bytes = config.max_body_bytes;
    let drain_timeout = config.drain_timeout;
    let shutdown_delay = config.shutdown_delay;
    let limits = config.http;
    let mirror = Mirror::start(
        config.mirror.clone(),
        config.model_name.clone(),
        metrics.mirror.clone(),
    )
    .map_err(ServerError::Serve)?;
    let service = ModelService::start(config, Arc::clone(&metrics));
    let state = AppState {
        service: Arc::clone(&service),
        metrics,
        platform: platform.to_string(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        admission: Arc::new(Admission::new(limits, max_body_bytes)),
        mirror: Arc::clone(&mirror),
    };
    let app = router(state, max_body_bytes);
    tracing::info!(addr = %addr, "listening");

    let mut signals = ShutdownSignals::install();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let connection_limits = ConnectionLimits {
        header_read_timeout: limits.header_read_timeout,
        write_stall_timeout: limits.write_stall_timeout,
    };
    let mut server_task =
        tokio::spawn(serve_connections(listener, app, connection_limits, async {
            let _ = stopped.await;
        }));

    tokio::select! {
        result = &mut server_task => {
            return match result {
                Ok(()) => Ok(()),
                Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
            };
        }
        _ = signals.recv() => {}
    }
    // Copies are a best effort that must never hold up the exit: what is queued is dropped now.
    mirror.shutdown();
    // Readiness turns false now, but the endpoint's removal reaches kube-proxy, ingresses and
    // meshes only after a while: until then clients are still sent here, so keep answering them.
    // A second signal (an impatient operator, Ctrl-C twice) skips the rest of the delay.
    tracing::info!(
        ?shutdown_delay,
        "shutdown requested: not ready, still serving"
    );
    // With no delay, readiness and admission turn together: a client that saw /ready fail must
    // not then get work accepted in the gap before the drain.
    if !shutdown_delay.is_zero() {
        service.begin_termination();
        tokio::select! {
            _ = tokio::time::sleep(shutdown_delay) => {}
            _ = signals.recv() => {
                tracing::info!("second shutdown signal: skipping the rest of the delay");
            }
        }
    }
    tracing::info!("draining");
    service.begin_drain();
    if tokio::time::timeout(drain_timeout, service.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(?drain_timeout, "drain timed out with work still in flight");
    }
    let _ = stop.send(());
    match tokio::time::timeout(CONNECTION_CLOSE_GRACE, server_task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ServerError::Serve(std::io::Error::other(e))),
        Err(_) => tracing::warn!("connections did not close in time; exiting anyway"),
    }
    tracing::info!("drained; exiting");
    Ok(())
}
