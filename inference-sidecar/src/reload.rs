//! A configuration file in force, and its reload (the router's `router.yaml`, the mirror's
//! `mirror.yaml`). A ConfigMap volume updates by swapping a symlink, which file-change
//! notification sees unreliably, so the file's content is polled (a read of a small file a
//! second). A request takes the configuration in force when it arrives and keeps it to its end: a
//! swap never touches requests in flight.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the file is read for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What one polled file becomes, and what happens when it changes.
pub trait Watch: Send + 'static {
    /// The configuration ready for the request path.
    type Config: Send + Sync + 'static;
    type Error: std::fmt::Display;

    /// Compiles what was read at `path`: its content, or why it could not be read.
    fn compile(
        &self,
        path: &Path,
        read: Result<&[u8], &std::io::Error>,
    ) -> Result<Self::Config, Self::Error>;

    /// `config` has come into force in place of `previous`.
    fn installed(&self, config: &Self::Config, previous: Option<&Self::Config>);

    /// A new content was refused; `in_force` stays.
    fn rejected(&self, error: &Self::Error, in_force: Option<&Self::Config>);
}

/// The configuration in force (none until a valid one has been read).
pub struct Live<C> {
    current: RwLock<Option<Arc<C>>>,
}

impl<C> Default for Live<C> {
    fn default() -> Self {
        Self {
            current: RwLock::new(None),
        }
    }
}

impl<C> Live<C> {
    pub fn current(&self) -> Option<Arc<C>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `config` in force; returns the one it replaces.
    pub fn install(&self, config: C) -> Option<Arc<C>> {
        self.current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(Arc::new(config))
    }
}

/// Reads the file now, and again whenever its content changes.
pub struct Reloader<W: Watch> {
    path: PathBuf,
    watch: W,
    live: Arc<Live<W::Config>>,
    /// What the last read saw (content or error), so that one bad file is logged and counted once.
    last: Option<Result<Vec<u8>, String>>,
}

impl<W: Watch> Reloader<W> {
    pub fn new(path: PathBuf, watch: W, live: Arc<Live<W::Config>>) -> Self {
        Self {
            path,
            watch,
            live,
            last: None,
        }
    }

    /// Reads the file; a new valid content comes into force, a new invalid one is reported to
    /// the watch and the configuration in force stays.
    pub fn check(&mut self) {
        let read = std::fs::read(&self.path);
        let seen = read.as_ref().map(Clone::clone).map_err(|e| e.to_string());
        if self.last.as_ref() == Some(&seen) {
            return;
        }
        self.last = Some(seen);
        let result = self
            .watch
            .compile(&self.path, read.as_ref().map(Vec::as_slice));
        match result {
            Ok(config) => {
                // In force first: what `installed` exports (a generation) is then already true.
                let previous = self.live.install(config);
                if let Some(current) = self.live.current() {
                    self.watch.installed(&current, previous.as_deref());
                }
            }
            Err(error) => self.watch.rejected(&error, self.live.current().as_deref()),
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
