//! A target's bounded queue and its workers: copies wait in a queue of `limits.queue` (a full
//! queue drops the copy, counted), at most `limits.concurrency` are sent at once. A queue is
//! stopped when its target leaves the configuration (queued and in-flight copies are dropped at
//! once) or when the sidecar shuts down (queued copies counted as `shutdown`); nothing it runs
//! ever delays the process's exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lexserve_contract::mirror::{MirrorLimits, drop_reason};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::worker::{Copy, Delivery};

/// Why a queue stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its target left the configuration.
    Removed,
    /// The sidecar is shutting down.
    Shutdown,
}

/// What identifies a queue across configuration generations: a target whose shadow, candidate
/// and limits stay the same keeps its queue (and what is in it) when other targets change.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueKey {
    pub shadow: String,
    pub url: String,
    pub limits: MirrorLimits,
}

pub struct Queue {
    pub key: QueueKey,
    sender: mpsc::Sender<Copy>,
    stop: watch::Sender<Option<Stop>>,
    shutting_down: AtomicBool,
}

impl Queue {
    /// Starts the queue's dispatcher on the mirror's own low-priority runtime.
    pub fn start(key: QueueKey, delivery: Arc<Delivery>) -> Arc<Self> {
        let capacity = usize::try_from(key.limits.queue)
            .unwrap_or(usize::MAX)
            .max(1);
        let concurrency = usize::try_from(key.limits.concurrency)
            .unwrap_or(usize::MAX)
            .max(1);
        let (sender, receiver) = mpsc::channel(capacity);
        let (stop, stopped) = watch::channel(None);
        let background = delivery.background.clone();
        background.spawn(dispatch(
            key.shadow.clone(),
            receiver,
            stopped,
            concurrency,
            delivery,
        ));
        Arc::new(Self {
            key,
            sender,
            stop,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Queues a copy without waiting; the reason it was dropped otherwise (None: dropped
    /// because the target is gone, which is no one's series any more).
    pub fn offer(&self, copy: Copy) -> Result<(), Option<&'static str>> {
        match self.sender.try_send(copy) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Some(drop_reason::QUEUE_FULL)),
            Err(TrySendError::Closed(_)) => Err(self
                .shutting_down
                .load(Ordering::SeqCst)
                .then_some(drop_reason::SHUTDOWN)),
        }
    }

    pub fn stop(&self, why: Stop) {
        if why == Stop::Shutdown {
            self.shutting_down.store(true, Ordering::SeqCst);
        }
        self.stop.send_if_modified(|stop| {
            let first = stop.is_none();
            if first {
                *stop = Some(why);
            }
            first
        });
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.stop(Stop::Removed);
    }
}

/// Takes a worker slot, then a copy, and sends it; until stopped.
async fn dispatch(
    shadow: String,
    mut receiver: mpsc::Receiver<Copy>,
    mut stopped: watch::Receiver<Option<Stop>>,
    concurrency: usize,
    delivery: Arc<Delivery>,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    // In-flight copies: dropping the set (when the queue stops) aborts them.
    let mut sending = JoinSet::new();
    loop {
        while sending.try_join_next().is_some() {}
        let slot = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let copy = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            copy = receiver.recv() => match copy {
                Some(copy) => copy,
                None => break,
            },
        };
        let delivery = Arc::clone(&delivery);
        sending.spawn(async move {
            delivery.deliver(copy).await;
            drop(slot);
        });
    }
    receiver.close();
    let why = *stopped.borrow();
    if why == Some(Stop::Shutdown) {
        while receiver.try_recv().is_ok() {
            delivery.metrics.dropped(&shadow, drop_reason::SHUTDOWN);
        }
    }
    sending.abort_all();
}
