//! The configuration in force, and its reload. A ConfigMap volume updates by swapping a symlink,
//! which file-change notification sees unreliably, so the file's content is polled (a read of a
//! small file a second). A request takes the configuration in force when it arrives and keeps it
//! to its end: a swap never touches requests in flight.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::config::{Resolve, Routing, RoutingError, load, parse};
use super::metrics::RouterMetrics;

/// How often the file is read for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The configuration in force (none until a valid one has been read).
#[derive(Default)]
pub struct Live {
    current: RwLock<Option<Arc<Routing>>>,
}

impl Live {
    pub fn current(&self) -> Option<Arc<Routing>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn install(&self, routing: Routing) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(routing));
    }
}

/// Reads the configuration file now, and again whenever its content changes.
pub struct Reloader {
    path: PathBuf,
    resolve: Resolve,
    live: Arc<Live>,
    metrics: Arc<RouterMetrics>,
    /// What the last read saw (content or error), so that one bad file is logged and counted once.
    last: Option<Result<Vec<u8>, String>>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        resolve: Resolve,
        live: Arc<Live>,
        metrics: Arc<RouterMetrics>,
    ) -> Self {
        Self {
            path,
            resolve,
            live,
            metrics,
            last: None,
        }
    }

    /// Reads the file; a new valid content comes into force, a new invalid one is logged and
    /// counted and the configuration in force stays.
    pub fn check(&mut self) {
        let seen = std::fs::read(&self.path).map_err(|e| e.to_string());
        if self.last.as_ref() == Some(&seen) {
            return;
        }
        let result = match &seen {
            Ok(text) => parse(&self.path, text, &self.resolve),
            Err(_) => load(&self.path, &self.resolve),
        };
        self.last = Some(seen);
        match result {
            Ok(routing) => {
                tracing::info!(
                    experiment = %routing.config.experiment,
                    generation = routing.config.generation,
                    "router configuration in force"
                );
                self.metrics.configured(&routing);
                self.live.install(routing);
            }
            Err(error) => self.rejected(&error),
        }
    }

    fn rejected(&self, error: &RoutingError) {
        self.metrics.config_errors.inc();
        match self.live.current() {
            Some(routing) => tracing::warn!(
                %error,
                generation = routing.config.generation,
                "router configuration rejected; keeping the one in force"
            ),
            None => tracing::error!(%error, "router configuration rejected; not ready"),
        }
    }

    /// Polls the file for ever (the task is dropped at shutdown).
    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // A blocking read of a small local file: well under a millisecond.
            self.check();
        }
    }
}
