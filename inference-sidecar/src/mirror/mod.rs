//! The shadow mirror inside `serve`: after production has answered a user, a sampled share of
//! the requests is copied to each shadow candidate the operator configured (`mirror.yaml`), on a
//! bounded queue with its own concurrency and timeout, and the two answers are compared. The
//! mirror can drop copies (counted) but never slows production or changes its answers.
//!
//! [`config`] loads and checks the file (reloaded by [`crate::reload`]), [`sample`] decides which
//! requests a target copies, [`capture`] is the middleware that tees production's answer,
//! [`queue`] holds each target's copies and workers, [`worker`] sends one copy (with
//! [`redact`] applied first), [`answer`] and [`compare`] are the pure comparison, and
//! [`metrics`] exports it all.

pub mod answer;
pub mod background;
pub mod capture;
pub mod compare;
pub mod config;
pub mod metrics;
pub mod queue;
pub mod redact;
pub mod sample;
pub mod worker;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use self::config::{MirrorConfigError, MirrorSettings, Mirroring, Target, compile_file};
use self::metrics::MirrorMetrics;
use self::queue::{Queue, QueueKey, Stop};
use self::worker::Delivery;
use crate::reload::{Live, Reloader, Watch};
use crate::route::config::Resolve;
use crate::route::proxy::Randomness;

/// Idle connections to a candidate are closed after this, well before a sidecar's own
/// keep-alive timeout, so that a copy is never sent on a connection the candidate is closing.
const CANDIDATE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A target in force with its queue.
#[derive(Clone)]
pub struct ActiveTarget {
    pub target: Arc<Target>,
    pub queue: Arc<Queue>,
}

/// The configuration in force, with the queues of its targets.
pub struct Active {
    pub generation: u64,
    pub targets: Vec<ActiveTarget>,
}

/// The mirror of one `serve` process.
pub struct Mirror {
    live: Arc<Live<Active>>,
    pub metrics: MirrorMetrics,
    randomness: Randomness,
    reloading: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Mirror {
    /// Reads the configuration (when there is a file to read) and polls it from then on.
    /// `served` is the name production serves under. Call inside the async runtime.
    pub fn start(
        settings: Option<MirrorSettings>,
        served: String,
        metrics: MirrorMetrics,
    ) -> std::io::Result<Arc<Self>> {
        let live = Arc::new(Live::default());
        let mut reloading = None;
        if let Some(settings) = settings {
            let client = reqwest::Client::builder()
                .pool_idle_timeout(CANDIDATE_IDLE_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .tcp_nodelay(true)
                .build()
                .map_err(std::io::Error::other)?;
            let watch = MirrorWatch {
                resolve: settings.resolve,
                delivery: Arc::new(Delivery {
                    client,
                    metrics: metrics.clone(),
                    served,
                    background: background::start()?,
                }),
                live: Arc::clone(&live),
            };
            let mut reloader = Reloader::new(settings.path, watch, Arc::clone(&live));
            reloader.check();
            reloading = Some(tokio::spawn(reloader.run()));
        }
        Ok(Arc::new(Self {
            live,
            metrics,
            randomness: Randomness::default(),
            reloading: Mutex::new(reloading),
        }))
    }

    /// The configuration in force, if it has any target.
    pub fn active(&self) -> Option<Arc<Active>> {
        self.live.current().filter(|a| !a.targets.is_empty())
    }

    /// SIGTERM: no more copies; what is queued is dropped (counted as `shutdown`), what is in
    /// flight is abandoned.
    pub fn shutdown(&self) {
        if let Some(reloading) = self
            .reloading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            reloading.abort();
        }
        let previous = self.live.install(Active {
            generation: self.live.current().map_or(0, |a| a.generation),
            targets: Vec::new(),
        });
        for target in previous.iter().flat_map(|a| &a.targets) {
            target.queue.stop(Stop::Shutdown);
        }
    }
}

/// What the mirror makes of its file.
struct MirrorWatch {
    resolve: Resolve,
    delivery: Arc<Delivery>,
    /// The configuration in force, whose queues a new one keeps when its targets' are the same.
    live: Arc<Live<Active>>,
}

impl Watch for MirrorWatch {
    type Config = Active;
    type Error = MirrorConfigError;

    fn compile(
        &self,
        path: &Path,
        read: Result<&[u8], &std::io::Error>,
    ) -> Result<Active, MirrorConfigError> {
        let Mirroring {
            generation,
            targets,
        } = compile_file(path, read, &self.resolve)?;
        let current = self.live.current();
        let targets = targets
            .into_iter()
            .map(|target| {
                let key = QueueKey {
                    shadow: target.spec.shadow.clone(),
                    url: target.spec.url.clone(),
                    limits: target.spec.limits.clone(),
                };
                let kept = current
                    .iter()
                    .flat_map(|a| &a.targets)
                    .find(|t| t.queue.key == key)
                    .map(|t| Arc::clone(&t.queue));
                ActiveTarget {
                    target: Arc::new(target),
                    queue: kept.unwrap_or_else(|| Queue::start(key, Arc::clone(&self.delivery))),
                }
            })
            .collect();
        Ok(Active {
            generation,
            targets,
        })
    }

    fn installed(&self, active: &Active, previous: Option<&Active>) {
        // A target that is gone stops at once, even while requests that sampled it are still
        // being answered.
        for old in previous.iter().flat_map(|a| &a.targets) {
            if !active
                .targets
                .iter()
                .any(|t| Arc::ptr_eq(&t.queue, &old.queue))
            {
                old.queue.stop(Stop::Removed);
            }
        }
        self.delivery.metrics.configured(active);
        tracing::info!(
            generation = active.generation,
            shadows = ?active.targets.iter().map(|t| t.target.spec.shadow.as_str()).collect::<Vec<_>>(),
            "mirror configuration in force"
        );
    }

    fn rejected(&self, error: &MirrorConfigError, in_force: Option<&Active>) {
        self.delivery.metrics.config_errors.inc();
        tracing::warn!(
            %error,
            generation = in_force.map_or(0, |a| a.generation),
            "mirror configuration rejected; keeping the one in force"
        );
    }
}
