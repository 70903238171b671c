//! A backend worker: a thread that owns one model instance and runs the batches the queue plans.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use super::queue::{NextStep, plan, take};
use super::{BatchError, BatchQueue, Job, Shared};
use crate::config::ModelTask;
use crate::encoder::backend::{Encoder, PaddedBatch};
use crate::encoder::head::{HeadOutput, OutputHead};

/// Runs one batch through the encoder and the head. Panics inside a backend are caught and turned into
/// errors for the batch's texts: one bad batch must not take the server down.
pub fn run_batch(
    encoder: &mut dyn Encoder,
    head: &OutputHead,
    batch: &PaddedBatch,
) -> Result<HeadOutput, BatchError> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let output = encoder
            .forward(batch)
            .map_err(|e| BatchError::Inference(e.to_string()))?;
        head.apply(output, batch)
            .map_err(|e| BatchError::Inference(e.to_string()))
    }));
    match outcome {
        Ok(Ok(output)) if output.results.len() == batch.batch => Ok(output),
        Ok(Ok(output)) => Err(BatchError::Inference(format!(
            "the model returned {} results for {} texts",
            output.results.len(),
            batch.batch
        ))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BatchError::Inference("the backend panicked".into())),
    }
}

/// Takes the next batch, blocking until one is due; `None` once the queue is closed and empty.
fn next_batch(shared: &Shared) -> Option<Vec<super::queue::Pending<Job>>> {
    let mut state = shared.lock();
    loop {
        match plan(&state.pending, &shared.limits, Instant::now(), state.closed) {
            NextStep::Idle if state.closed => return None,
            NextStep::Idle => {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            NextStep::WaitUntil(deadline) => {
                let timeout = deadline.saturating_duration_since(Instant::now());
                state = shared
                    .wake
                    .wait_timeout(state, timeout)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            NextStep::Run(positions) => {
                // Texts whose caller went away (client disconnected, request timed out) are
                // dropped unrun: nobody would read their answer.
                let jobs: Vec<_> = take(&mut state.pending, &positions)
                    .into_iter()
                    .filter(|p| !p.item.reply.is_closed())
                    .collect();
                shared.metrics.queue_size.set(state.pending.len() as i64);
                if !jobs.is_empty() {
                    return Some(jobs);
                }
            }
        }
    }
}

/// The worker loop; returns when the queue is closed and drained.
pub fn serve_batches(
    queue: &BatchQueue,
    encoder: &mut dyn Encoder,
    head: &OutputHead,
    pad_id: u32,
) {
    let shared: Arc<Shared> = queue.shared();
    let metrics = Arc::clone(&shared.metrics);
    while let Some(jobs) = next_batch(&shared) {
        crate::fault::inject("batch-worker");
        let started = Instant::now();
        let n = jobs.len();
        metrics.requests_running.inc_by(n as i64);
        for job in &jobs {
            metrics
                .queue_duration
                .observe(started.duration_since(job.enqueued).as_secs_f64());
        }
        let batch = PaddedBatch::new(jobs.iter().map(|j| &j.item.text), pad_id);
        metrics.batch_size.observe(n as f64);
        metrics.batch_tokens.observe(batch.tokens() as f64);
        let results = run_batch(encoder, head, &batch);
        metrics
            .inference_duration
            .observe(started.elapsed().as_secs_f64());
        // Uncounted before the answers go out: a caller that has its answer (and then reads the
        // metrics) must not still find its texts counted as running here.
        metrics.requests_running.dec_by(n as i64);
        match results {
            Ok(output) => {
                // Observed before the answers go out, so a caller that has its answer finds it
                // counted.
                if head.task == ModelTask::Embed {
                    for norm in &output.norms {
                        metrics.embedding_norm.observe(f64::from(*norm));
                    }
                }
                for (job, result) in jobs.into_iter().zip(output.results) {
                    // The requester may have gone away (client disconnected); nothing to do then.
                    let _ = job.item.reply.send(Ok(result));
                }
            }
            Err(error) => {
                tracing::error!(%error, texts = n, "batch failed");
                for job in jobs {
                    let _ = job.item.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
