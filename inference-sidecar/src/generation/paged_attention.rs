//! Causal attention that reads keys and values straight out of a sequence's cache blocks, for a batch
//! whose rows belong to different sequences at different positions (prefill chunks and single decode
//! tokens side by side). Nothing is gathered or padded: each (row, head) pair walks its own block table.

use std::ops::Range;

use rayon::prelude::*;

use super::block_allocator::BlockId;
use super::kv_cache::PagedKvCache;

/// The rows of a batch that belong to one sequence.
#[derive(Debug, Clone)]
pub struct SeqSpan<'a> {
    /// Rows of the batch (tokens fed this step), in order.
    pub rows: Range<usize>,
    /// Position of the first of those rows in the sequence.
    pub start: usize,
    pub blocks: &'a [BlockId],
}

/// `q` is `[rows, heads, head_dim]`; the keys and values of every row's position are already in the
/// cache. Returns `[rows, heads, head_dim]`.
pub fn paged_attention(
    q: &[f32],
    heads: usize,
    spans: &[SeqSpan<'_>],
    cache: &PagedKvCache,
    layer: usize,
) -> Vec<f32> {
    let head_dim = cache.shape.head_dim;
    let group = heads / cache.shape.kv_heads;
    let rows = spans.iter().map(|s| s.rows.end).max().unwrap_or(0);
    // (span, position) of every row.
    let mut row_info = vec![(0usize, 0usize); rows];
    for (i, span) in spans.iter().enumerate() {
        for (k, row) in span.rows.clone().enumerate() {
            row_info[row] = (i, span.start + k);
        }
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let kv = &cache.layers[layer];
    let mut out = vec![0f32; rows * heads * head_dim];
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(item, out_head)| {
            let (row, head) = (item / heads, item % heads);
            let (span, position) = row_info[row];
            let blocks = spans[span].blocks;
            let kv_head = head / group;
            let query = &q[item * head_dim..(item + 1) * head_dim];
            let context = position + 1;
            let mut scores = Vec::with_capacity(context);
            let mut max = f32::NEG_INFINITY;
            for j in 0..context {
                let offset = cache.row_offset(blocks, j) + kv_head * head_dim;
                let s = dot(query, &kv.keys[offset..offset + head_dim]) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0f32;
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            for (j, w) in scores.iter().enumerate() {
                let offset = cache.row_offset(blocks, j) + kv_head * head_dim;
                axpy(w * inv, &kv.values[offset..offset + head_dim], out_head);
            }
        });
    out
}

/// Eight independent accumulators let the compiler keep the sum in one vector register.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn axpy(w: f32, x: &[f32], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += w * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::kv_cache::KvShape;

    /// Plain attention over contiguous keys, to check the paged walk against.
    fn reference(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>]) -> Vec<f32> {
        let scale = 1.0 / (q.len() as f32).sqrt();
        let scores: Vec<f32> = keys.iter().map(|k| dot(q, k) * scale).collect();
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let mut out = vec![0.0; q.len()];
        for (w, v) in exps.iter().zip(values) {
            axpy(w / sum, v, &mut out);
        }
        out
    }

    #[test]
    fn matches_contiguous_attention_across_scattered_blocks() {
        let shape = KvShape {
            layers: 1,
            kv_heads: 1,
            head_dim: 4,
        };
        let mut cache = PagedKvCache::new(shape, 2, 8);
        // Two sequences with interleaved, out-of-order blocks.
        let table_a: Vec<BlockId> = vec![5, 0, 3];
        let table_b: Vec<BlockId> = vec![7, 2];
        let key = |s: usize, p: usize| {
            (0..4)
                .map(|d| ((s * 31 + p * 7 + d) % 11) as f32 / 5.0 - 1.0)
                .collect::<Vec<f32>>()
        };
        let value = |s: usize, p: usize| {
            (0..4)
                .map(|d| ((s * 17 + p * 3 + d) % 13) as f32 / 6.0)
                .collect::<Vec<f32>>()
        };
        for p in 0..5 {
            cache.write(0, &table_a, p, &key(0, p), &value(0, p));
        }
        for p in 0..3 {
            cache.write(0, &table_b, p, &key(1, p), &value(1, p));
        }
        // Batch: seq A's positions 3 and 4 (a prefill chunk), seq B's position 2 (decode); two query
        // heads share the one KV head.
        let q: Vec<f32> = (0..3 * 2 * 4)
            .map(|i| ((i * 13) % 7) as f32 / 3.0 - 1.0)
            .collect();
        let spans = [
            SeqSpan {
                rows: 0..2,
                start: 3,
                blocks: &table_a,
            },
            SeqSpan {
                rows: 2..3,
                start: 2,
                blocks: &table_b,
            },
        ];
        let out = paged_attention(&q, 2, &spans, &cache, 0);
        for (row, (seq, pos)) in [(0, 3), (0, 4), (1, 2)].into_iter().enumerate() {
            let keys: Vec<Vec<f32>> = (0..=pos).map(|p| key(seq, p)).collect();
            let values: Vec<Vec<f32>> = (0..=pos).map(|p| value(seq, p)).collect();
            for head in 0..2 {
                let at = (row * 2 + head) * 4;
                let expected = reference(&q[at..at + 4], &keys, &values);
                for (a, b) in out[at..at + 4].iter().zip(&expected) {
                    assert!((a - b).abs() < 1e-5, "row {row} head {head}: {a} vs {b}");
                }
            }
        }
    }
}
