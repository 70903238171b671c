//! Measuring, at warm-up, how large a batch this machine runs most efficiently.
//!
//! On a CPU, bigger batches are not always faster per text: with long texts the activations of a
//! large batch outgrow the caches, and throughput falls (MiniLM int8 on 2 cores, ~75-token texts:
//! best at batch 4; at 32 it ran at 0.55x). Filling batches up to `maxBatchRequests` under load
//! then costs the server the very throughput batching is for. So, unless the user fixed
//! `maxBatchTokens`, the sidecar times a few batch sizes of one sample text at warm-up and stops
//! growing batches past the best one's padded tokens ([`super::queue::BatchLimits`]).

use std::time::{Duration, Instant};

use super::worker::run_batch;
use crate::encoder::backend::{Encoder, PaddedBatch};
use crate::encoder::head::OutputHead;
use crate::encoder::tokenize::TokenizedText;

/// What the sweep found.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuned {
    /// The batch size chosen.
    pub batch: usize,
    /// Its padded tokens: the efficient budget.
    pub tokens: usize,
    /// Texts per second at each batch size tried.
    pub throughput: Vec<(usize, f64)>,
}

/// Chooses from measured (batch, texts/s) pairs: the largest batch within `tolerance` of the best
/// throughput (larger batches serve bursts with fewer waits, so a near-tie goes to them).
pub fn choose(throughput: &[(usize, f64)], tolerance: f64) -> Option<usize> {
    let best = throughput.iter().map(|(_, t)| *t).fold(0.0f64, f64::max);
    if best <= 0.0 {
        return None;
    }
    throughput
        .iter()
        .filter(|(_, t)| *t >= best * (1.0 - tolerance))
        .map(|(b, _)| *b)
        .max()
}

/// Times batches of `sample` at sizes 1, 2, 4, ... up to `max_batch` within about `budget`, and
/// returns the efficient size. None if nothing could be measured (the caller keeps the limits
/// as configured).
pub fn measure(
    encoder: &mut dyn Encoder,
    head: &OutputHead,
    sample: &TokenizedText,
    pad_id: u32,
    max_batch: usize,
    budget: Duration,
) -> Option<Tuned> {
    let started = Instant::now();
    let mut throughput = Vec::new();
    let mut size = 1usize;
    while size <= max_batch.max(1) {
        let batch = PaddedBatch::new(std::iter::repeat_n(sample, size), pad_id);
        // One untimed run: the first pass at a new shape allocates.
        run_batch(encoder, head, &batch).ok()?;
        let timed = Instant::now();
        let mut runs = 0usize;
        while runs < 2 || timed.elapsed() < Duration::from_millis(40) {
            run_batch(encoder, head, &batch).ok()?;
            runs += 1;
        }
        let rate = (size * runs) as f64 / timed.elapsed().as_secs_f64();
        throughput.push((size, rate));
        let best = throughput.iter().map(|(_, t)| *t).fold(0.0f64, f64::max);
        // Past the peak and clearly slower: larger batches will not come back.
        if rate < best * 0.75 || started.elapsed() > budget {
            break;
        }
        size *= 2;
    }
    let batch = choose(&throughput, 0.05)?;
    Some(Tuned {
        batch,
        tokens: batch * sample.len(),
        throughput,
    })
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn picks_the_fastest_and_breaks_near_ties_toward_larger_batches() {
        assert_eq!(
            choose(&[(1, 53.0), (4, 59.0), (8, 31.0), (16, 49.0)], 0.05),
            Some(4)
        );
        assert_eq!(
            choose(&[(1, 280.0), (8, 392.0), (16, 410.0), (32, 400.0)], 0.05),
            Some(32)
        );
        assert_eq!(choose(&[(1, 77.0), (2, 70.0)], 0.05), Some(1));
        assert_eq!(choose(&[], 0.05), None);
        assert_eq!(choose(&[(1, 0.0)], 0.05), None);
    }
}
