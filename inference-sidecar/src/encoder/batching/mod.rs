//! Dynamic batching for encoders: HTTP handlers submit tokenized texts to a bounded queue; backend
//! workers (one per model instance, on their own threads so inference never blocks the async runtime)
//! take batches from it as [`queue::plan`] decides and answer each text through a oneshot channel.

pub mod queue;
pub mod tune;
pub mod worker;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use thiserror::Error;
use tokio::sync::oneshot;

use crate::encoder::head::Inference;
use crate::encoder::tokenize::TokenizedText;
use crate::metrics::Metrics;
use queue::{BatchLimits, Pending};

/// Why a submission was refused. Nothing is queued when any of these is returned.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the queue is full ({waiting} texts waiting, capacity {capacity})")]
    QueueFull { waiting: usize, capacity: usize },
    #[error("{texts} texts exceed the queue's capacity of {capacity}")]
    TooManyTexts { texts: usize, capacity: usize },
    #[error("text {index} has {tokens} tokens, more than maxBatchTokens ({budget})")]
    TextTooLong {
        index: usize,
        tokens: usize,
        budget: usize,
    },
    #[error("the server is shutting down")]
    Closed,
}

/// Why an admitted text got no answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The backend's own message (it already says what failed).
    #[error("{0}")]
    Inference(String),
    #[error("the model worker stopped")]
    WorkerGone,
}

pub type Reply = Result<Inference, BatchError>;

pub struct Job {
    pub text: TokenizedText,
    pub reply: oneshot::Sender<Reply>,
}

pub(crate) struct QueueState {
    pub(crate) pending: VecDeque<Pending<Job>>,
    pub(crate) closed: bool,
}

pub(crate) struct Shared {
    pub(crate) state: Mutex<QueueState>,
    pub(crate) wake: Condvar,
    pub(crate) limits: BatchLimits,
    pub(crate) metrics: Arc<Metrics>,
}

impl Shared {
    /// A poisoned lock only means a worker panicked mid-update of plain data; the queue itself is still
    /// consistent (every mutation is a single push or drain), so carry on rather than cascade the panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The submitting side of the queue. Cheap to clone.
#[derive(Clone)]
pub struct BatchQueue {
    shared: Arc<Shared>,
    capacity: usize,
}

impl BatchQueue {
    pub fn new(limits: BatchLimits, capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(QueueState {
                    pending: VecDeque::new(),
                    closed: false,
                }),
                wake: Condvar::new(),
                limits,
                metrics,
            }),
            capacity,
        }
    }

    /// Admits all of `texts` or none (a request is answered whole or refused whole).
    pub fn submit(
        &self,
        texts: Vec<TokenizedText>,
    ) -> Result<Vec<oneshot::Receiver<Reply>>, SubmitError> {
        if texts.len() > self.capacity {
            return Err(SubmitError::TooManyTexts {
                texts: texts.len(),
                capacity: self.capacity,
            });
        }
        let budget = self.shared.limits.max_batch_tokens;
        if let Some((index, text)) = texts.iter().enumerate().find(|(_, t)| t.len() > budget) {
            return Err(SubmitError::TextTooLong {
                index,
                tokens: text.len(),
                budget,
            });
        }
        let mut state = self.shared.lock();
        self.room_for(&mut state, texts.len())?;
        let now = Instant::now();
        let mut receivers = Vec::with_capacity(texts.len());
        for text in texts {
            let (reply, receiver) = oneshot::channel();
            state.pending.push_back(Pending {
                tokens: text.len(),
                enqueued: now,
                item: Job { text, reply },
            });
            receivers.push(receiver);
        }
        self.shared
            .metrics
            .queue_size
            .set(state.pending.len() as i64);
        drop(state);
        self.shared.wake.notify_all();
        Ok(receivers)
    }

    /// Whether `texts` more texts would be admitted now: the same check as [`Self::submit`]'s,
    /// made before a request is tokenized so that a full queue refuses it before that work.
    /// `submit` checks again (other requests may have taken the room meanwhile).
    pub fn check_room(&self, texts: usize) -> Result<(), SubmitError> {
        if texts > self.capacity {
            return Err(SubmitError::TooManyTexts {
                texts,
                capacity: self.capacity,
            });
        }
        let mut state = self.shared.lock();
        self.room_for(&mut state, texts)
    }

    fn room_for(&self, state: &mut QueueState, texts: usize) -> Result<(), SubmitError> {
        if state.closed {
            return Err(SubmitError::Closed);
        }
        if state.pending.len() + texts > self.capacity {
            // Before refusing, reclaim the slots of texts whose caller went away.
            state.pending.retain(|p| !p.item.reply.is_closed());
            self.shared
                .metrics
                .queue_size
                .set(state.pending.len() as i64);
        }
        if state.pending.len() + texts > self.capacity {
            return Err(SubmitError::QueueFull {
                waiting: state.pending.len(),
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Refuses new texts; workers finish what is queued (without waiting for fuller batches) and exit.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }

    /// Refuses new texts and answers every queued one with `error`: no worker is left to run
    /// them, and a caller must not wait forever.
    pub fn abandon(&self, error: &BatchError) {
        let pending: Vec<_> = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.pending.drain(..).collect()
        };
        self.shared.metrics.queue_size.set(0);
        for job in pending {
            let _ = job.item.reply.send(Err(error.clone()));
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn text(n: usize) -> TokenizedText {
        TokenizedText {
            ids: vec![1; n],
            type_ids: vec![0; n],
            truncated: false,
        }
    }

    fn queue(capacity: usize) -> BatchQueue {
        BatchQueue::new(
            BatchLimits {
                max_batch_tokens: 100,
                max_batch_requests: 8,
                max_queue_delay: Duration::ZERO,
                efficient_batch_tokens: usize::MAX,
            },
            capacity,
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn admission_is_all_or_nothing() {
        let q = queue(4);
        let _held = q.submit(vec![text(3), text(3), text(3)]).unwrap();
        assert_eq!(
            q.submit(vec![text(3), text(3)]).unwrap_err(),
            SubmitError::QueueFull {
                waiting: 3,
                capacity: 4
            }
        );
        assert_eq!(q.shared.lock().pending.len(), 3);
        assert!(q.submit(vec![text(3)]).is_ok());
    }

    #[test]
    fn room_is_checked_without_queueing() {
        let q = queue(4);
        assert_eq!(q.check_room(4), Ok(()));
        assert_eq!(q.shared.lock().pending.len(), 0);
        let _held = q.submit(vec![text(3), text(3), text(3)]).unwrap();
        assert_eq!(q.check_room(1), Ok(()));
        assert_eq!(
            q.check_room(2),
            Err(SubmitError::QueueFull {
                waiting: 3,
                capacity: 4
            })
        );
        assert!(matches!(
            q.check_room(5),
            Err(SubmitError::TooManyTexts { .. })
        ));
        q.close();
        assert_eq!(q.check_room(1), Err(SubmitError::Closed));
    }

    #[test]
    fn impossible_requests_are_refused_up_front() {
        let q = queue(4);
        assert!(matches!(
            q.submit(vec![text(1); 5]),
            Err(SubmitError::TooManyTexts {
                texts: 5,
                capacity: 4
            })
        ));
        assert!(matches!(
            q.submit(vec![text(1), text(101)]),
            Err(SubmitError::TextTooLong { index: 1, .. })
        ));
        q.close();
        assert_eq!(q.submit(vec![text(1)]).unwrap_err(), SubmitError::Closed);
    }
}
