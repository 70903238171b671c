//! Causal attention that reads keys and values straight out of a sequence's cache blocks, for a batch
//! whose rows belong to different sequences at different positions (prefill chunks and single decode
//! tokens side by side). Nothing is gathered or padded: each row walks its own block table.
//!
//! How it is fast:
//! - **Grouped heads.** The query heads that share a KV head (grouped-query attention: 3 per KV head
//!   in SmolLM2) are scored against each key row together, so a row of keys and values is read once
//!   per step, not once per query head.
//! - **Split context.** A row's context is cut into parts of [`PART`] positions, each part scored on
//!   its own (its maximum, sum of exponentials and weighted values), and the parts combined after:
//!   a single decode row at 1,000 tokens of context is 16 parts per KV head to spread over the cores
//!   instead of one task per KV head.
//! - **AVX2 and FMA** for the dot products and the weighted sums when the CPU has them.
//! - **f16 rows read as they are.** With an f16 cache each key and value row is widened to f32 in
//!   registers (F16C's `vcvtph2ps`) inside the dot product and the weighted sum: the step reads half
//!   the bytes of an f32 cache, and no f32 copy of the context is ever made.
//!
//! The parts are fixed positions (0..64, 64..128, ...), and they are combined in order, so a row's
//! result depends only on its own sequence, never on the batch around it.

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use super::block_allocator::BlockId;
use super::fast_exp::exp_in_place;
use super::kv_cache::{LayerKv, PagedKvCache};

/// Positions per part of a row's context.
pub const PART: usize = 64;

/// The rows of a batch that belong to one sequence.
#[derive(Debug, Clone)]
pub struct SeqSpan<'a> {
    /// Rows of the batch (tokens fed this step), in order.
    pub rows: Range<usize>,
    /// Position of the first of those rows in the sequence.
    pub start: usize,
    pub blocks: &'a [BlockId],
}

/// One task: a row's query heads that share `kv_head`, against the positions `part` of its context.
#[derive(Debug, Clone, Copy)]
struct Item {
    row: usize,
    span: usize,
    kv_head: usize,
    first: usize,
    end: usize,
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
    let kv_heads = cache.shape.kv_heads;
    let group = heads / kv_heads;
    let rows = spans.iter().map(|s| s.rows.end).max().unwrap_or(0);
    let mut items = Vec::new();
    // Where each (row, kv_head)'s parts start in `items`, and how many there are.
    let mut parts_of = vec![(0usize, 0usize); rows * kv_heads];
    for (span_index, span) in spans.iter().enumerate() {
        for (row, position) in span.rows.clone().zip(span.start..) {
            let context = position + 1;
            for kv_head in 0..kv_heads {
                parts_of[row * kv_heads + kv_head] = (items.len(), context.div_ceil(PART));
                for first in (0..context).step_by(PART) {
                    items.push(Item {
                        row,
                        span: span_index,
                        kv_head,
                        first,
                        end: (first + PART).min(context),
                    });
                }
            }
        }
    }
    // Per item and query head of the group: maximum score, sum of exponentials, weighted values.
    let stride = head_dim + 2;
    let mut partial = vec![0f32; items.len() * group * stride];
    let scale = 1.0 / (head_dim as f32).sqrt();
    let simd = Simd::detect(head_dim);
    let task = Task {
        q,
        heads,
        group,
        head_dim,
        stride,
        scale,
        spans,
        cache,
        keys: &[],
        values: &[],
    };
    match &cache.layers[layer] {
        LayerKv::F32(kv) => {
            score_parts(&task.over(&kv.keys, &kv.values), &items, &mut partial, simd)
        }
        LayerKv::F16(kv) => {
            score_parts(&task.over(&kv.keys, &kv.values), &items, &mut partial, simd)
        }
    }
    // Combine each head's parts in order: rescale each part to the overall maximum.
    let mut out = vec![0f32; rows * heads * head_dim];
    let combine = |(row_kv, out): (usize, &mut [f32])| {
        let (first, count) = parts_of[row_kv];
        if count == 0 {
            return;
        }
        for (g, out) in out.chunks_exact_mut(head_dim).enumerate() {
            let part = |i: usize| &partial[((first + i) * group + g) * stride..][..stride];
            let max = (0..count)
                .map(|i| part(i)[0])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0f32;
            for i in 0..count {
                let p = part(i);
                let w = (p[0] - max).exp();
                total += w * p[1];
                simd.axpy(w, &p[2..], out);
            }
            let inv = 1.0 / total;
            for v in out.iter_mut() {
                *v *= inv;
            }
        }
    };
    // A few rows' combining is a few microseconds of work, less than handing it to the pool and
    // waiting for it (a decode step of one sequence did that 30 times); the same code either way.
    if items.len() < COMBINE_ON_POOL_FROM {
        out.chunks_mut(group * head_dim)
            .enumerate()
            .for_each(combine);
    } else {
        out.par_chunks_mut(group * head_dim)
            .enumerate()
            .for_each(combine);
    }
    out
}

/// Parts in a call from which their combining is spread over the cores.
const COMBINE_ON_POOL_FROM: usize = 256;

/// What every part of one call shares; `T` is how the cache stores a value.
struct Task<'a, T> {
    q: &'a [f32],
    heads: usize,
    group: usize,
    head_dim: usize,
    stride: usize,
    scale: f32,
    spans: &'a [SeqSpan<'a>],
    cache: &'a PagedKvCache,
    keys: &'a [T],
    values: &'a [T],
}

impl<'a> Task<'a, ()> {
    /// The same task over one layer's keys and values.
    fn over<T>(&self, keys: &'a [T], values: &'a [T]) -> Task<'a, T> {
        Task {
            q: self.q,
            heads: self.heads,
            group: self.group,
            head_dim: self.head_dim,
            stride: self.stride,
            scale: self.scale,
            spans: self.spans,
            cache: self.cache,
            keys,
            values,
        }
    }
}

/// A value as the cache stores it, with the kernels that read it.
trait CachedValue: Copy + Send + Sync + Sized {
    /// One item into `out` ([`score_part`]) with the best kernels the CPU has for this type.
    fn score_part(t: &Task<'_, Self>, item: &Item, out: &mut [f32], simd: Simd);
}

impl CachedValue for f32 {
    #[inline]
    fn score_part(t: &Task<'_, Self>, item: &Item, out: &mut [f32], simd: Simd) {
        #[cfg(target_arch = "x86_64")]
        if simd.avx2 {
            // SAFETY: AVX2 and FMA are present and the head size is a multiple of 8.
            unsafe { score_part_avx2(t, item, out) };
            return;
        }
        let _ = simd;
        per_head(t, item, out, dot, axpy);
    }
}

impl CachedValue for f16 {
    #[inline]
    fn score_part(t: &Task<'_, Self>, item: &Item, out: &mut [f32], simd: Simd) {
        #[cfg(target_arch = "x86_64")]
        if simd.avx2 && simd.f16c {
            // SAFETY: AVX2, FMA and F16C are present, the head size is a multiple of 8, and each
            // group kernel is called for its group.
            unsafe {
                match t.group {
                    1 => score_part_f16c::<1>(t, item, out),
                    2 => score_part_f16c::<2>(t, item, out),
                    3 => score_part_f16c::<3>(t, item, out),
                    4 => score_part_f16c::<4>(t, item, out),
                    _ => score_part_f16c_per_head(t, item, out),
                }
            }
            return;
        }
        let _ = simd;
        per_head(t, item, out, dot_f16, axpy_f16);
    }
}

/// Every item's part, spread over the cores.
fn score_parts<T: CachedValue>(
    task: &Task<'_, T>,
    items: &[Item],
    partial: &mut [f32],
    simd: Simd,
) {
    partial
        .par_chunks_mut(task.group * task.stride)
        .zip(items.par_iter())
        .for_each(|(out, item)| T::score_part(task, item, out, simd));
}

/// Calls `f(j, offset)` for the positions `first..end` of a block table, `offset` being position
/// `j`'s row in the layer's pool: one block lookup per run of positions in the same block.
#[inline(always)]
fn for_each_row(
    cache: &PagedKvCache,
    blocks: &[BlockId],
    first: usize,
    end: usize,
    mut f: impl FnMut(usize, usize),
) {
    let (bs, row_len) = (cache.block_size, cache.shape.row_len());
    let mut j = first;
    while j < end {
        let (block, within) = (blocks[j / bs] as usize, j % bs);
        let run = (bs - within).min(end - j);
        let base = (block * bs + within) * row_len;
        for t in 0..run {
            f(j + t, base + t * row_len);
        }
        j += run;
    }
}

/// One item: its group's scores against the part's keys, their maximum and sum of exponentials, and
/// the exponential-weighted sum of the part's values, into `out` (`[group, 2 + head_dim]`).
///
/// `dots(queries, key, scores)` scores the group's queries (`[group, head_dim]`) against one key row
/// into `scores` (`group` values); `axpys(weights, value, out)` adds each query's weight times one
/// value row to its sum in `out`. They take the whole group so that a kernel can load (and, for f16,
/// widen) each key and value row once for all the group's heads.
#[inline(always)]
fn score_part<T>(
    t: &Task<'_, T>,
    item: &Item,
    out: &mut [f32],
    dots: impl Fn(&[f32], &[T], &mut [f32]),
    axpys: impl Fn(&[f32], &[T], &mut [f32]),
) {
    let (group, head_dim) = (t.group, t.head_dim);
    let blocks = t.spans[item.span].blocks;
    let query = &t.q[(item.row * t.heads + item.kv_head * group) * head_dim..][..group * head_dim];
    let len = item.end - item.first;
    // `[len, group]`: position j's scores side by side. On the stack for groups of up to 4 (every
    // part is at most PART long): an allocation per part was a few percent of a long-context step.
    let mut on_stack = [0f32; PART * 4];
    let mut on_heap = Vec::new();
    let scores: &mut [f32] = if len * group <= on_stack.len() {
        &mut on_stack[..len * group]
    } else {
        on_heap.resize(len * group, 0f32);
        &mut on_heap
    };
    let head = item.kv_head * head_dim;
    for_each_row(t.cache, blocks, item.first, item.end, |j, offset| {
        let key = &t.keys[offset + head..offset + head + head_dim];
        let scores = &mut scores[(j - item.first) * group..][..group];
        dots(query, key, scores);
        for s in scores.iter_mut() {
            *s *= t.scale;
        }
    });
    // Each head's maximum into its `out[0]`, the scores shifted by it, all of them exponentiated
    // at once (eight lanes; see `fast_exp` for its error), and each head's sum into its `out[1]`,
    // summed in position order as before.
    for (g, out) in out.chunks_exact_mut(t.stride).enumerate() {
        out[0] = scores[g..]
            .iter()
            .step_by(group)
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        out[1] = 0.0;
    }
    for row in scores.chunks_exact_mut(group) {
        for (g, s) in row.iter_mut().enumerate() {
            *s -= out[g * t.stride];
        }
    }
    exp_in_place(scores);
    for row in scores.chunks_exact(group) {
        for (g, s) in row.iter().enumerate() {
            out[g * t.stride + 1] += *s;
        }
    }
    for_each_row(t.cache, blocks, item.first, item.end, |j, offset| {
        let value = &t.values[offset + head..offset + head + head_dim];
        axpys(&scores[(j - item.first) * group..][..group], value, out);
    });
}

/// [`score_part`]'s group kernels from one head's: `dot(query, key)` and `axpy(w, value, sum)`.
#[inline(always)]
fn per_head<T>(
    t: &Task<'_, T>,
    item: &Item,
    out: &mut [f32],
    dot: impl Fn(&[f32], &[T]) -> f32,
    axpy: impl Fn(f32, &[T], &mut [f32]),
) {
    let (head_dim, stride) = (t.head_dim, t.stride);
    score_part(
        t,
        item,
        out,
        |queries, key, scores| {
            for (query, score) in queries.chunks_exact(head_dim).zip(scores) {
                *score = dot(query, key);
            }
        },
        |weights, value, out| {
            for (w, out) in weights.iter().zip(out.chunks_exact_mut(stride)) {
                axpy(*w, value, &mut out[2..]);
            }
        },
    );
}

/// [`score_part`] compiled for AVX2 and FMA, with their dot product and weighted sum inlined.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_part_avx2(t: &Task<'_, f32>, item: &Item, out: &mut [f32]) {
    per_head(
        t,
        item,
        out,
        // SAFETY (both): the caller checked AVX2, FMA and a head size that is a multiple of 8.
        |a, b| unsafe { dot_avx2(a, b) },
        |w, x, o| unsafe { axpy_avx2(w, x, o) },
    );
}

/// [`score_part`] over f16 rows, compiled for AVX2, FMA and F16C, for groups of `G` query heads:
/// each 8 values of a key or value row are widened once and used by the `G` heads (the group is a
/// constant, so that the `G` accumulators stay in registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn score_part_f16c<const G: usize>(t: &Task<'_, f16>, item: &Item, out: &mut [f32]) {
    let stride = t.stride;
    score_part(
        t,
        item,
        out,
        // SAFETY (both): the caller checked AVX2, FMA, F16C, a head size that is a multiple of 8
        // and a group of G.
        |q, k, s| unsafe { dots_f16c::<G>(q, k, s) },
        |w, x, o| unsafe { axpys_f16c::<G>(w, x, o, stride) },
    );
}

/// [`score_part`] over f16 rows for any group: one head at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn score_part_f16c_per_head(t: &Task<'_, f16>, item: &Item, out: &mut [f32]) {
    per_head(
        t,
        item,
        out,
        // SAFETY (both): the caller checked AVX2, FMA, F16C and a head size that is a multiple of 8.
        |a, b| unsafe { dot_f16c(a, b) },
        |w, x, o| unsafe { axpy_f16c(w, x, o) },
    );
}

/// The vector kernels, AVX2 and FMA where the CPU has them and the head size is a multiple of 8;
/// F16C besides for an f16 cache.
#[derive(Clone, Copy)]
struct Simd {
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
    #[cfg(target_arch = "x86_64")]
    f16c: bool,
}

impl Simd {
    fn detect(head_dim: usize) -> Self {
        let _ = head_dim;
        Self {
            #[cfg(target_arch = "x86_64")]
            avx2: head_dim.is_multiple_of(8)
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            f16c: std::arch::is_x86_feature_detected!("f16c"),
        }
    }

    /// `out += w * x`.
    #[inline]
    fn axpy(self, w: f32, x: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 and FMA are present and both slices hold a multiple of 8 values.
            unsafe { axpy_avx2(w, x, out) };
            return;
        }
        axpy(w, x, out)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(a.len() == b.len() && a.len().is_multiple_of(8));
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    // SAFETY: every load reads 8 floats below `a.len() == b.len()`, a multiple of 8.
    unsafe {
        while i + 16 <= a.len() {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i < a.len() {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        }
    }
    let v = _mm256_add_ps(acc0, acc1);
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpy_avx2(w: f32, x: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() == out.len() && x.len().is_multiple_of(8));
    let wv = _mm256_set1_ps(w);
    let (px, po) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: every access covers 8 floats below `x.len() == out.len()`, a multiple of 8.
    unsafe {
        for i in (0..x.len()).step_by(8) {
            let o = _mm256_loadu_ps(po.add(i));
            _mm256_storeu_ps(
                po.add(i),
                _mm256_fmadd_ps(wv, _mm256_loadu_ps(px.add(i)), o),
            );
        }
    }
}

/// [`dot_avx2`] with `b` in f16, widened 8 at a time in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_f16c(a: &[f32], b: &[f16]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(a.len() == b.len() && a.len().is_multiple_of(8));
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads 8 values below `a.len() == b.len()`, a multiple of 8 (8 f16 are one
    // unaligned 128-bit load).
    let wide = |i: usize| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i).cast::<__m128i>())) };
    let mut i = 0;
    // SAFETY: as above, for `a`.
    unsafe {
        while i + 16 <= a.len() {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), wide(i), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), wide(i + 8), acc1);
            i += 16;
        }
        if i < a.len() {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), wide(i), acc0);
        }
    }
    let v = _mm256_add_ps(acc0, acc1);
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// [`axpy_avx2`] with `x` in f16, widened 8 at a time in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn axpy_f16c(w: f32, x: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() == out.len() && x.len().is_multiple_of(8));
    let wv = _mm256_set1_ps(w);
    let (px, po) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: every access covers 8 values below `x.len() == out.len()`, a multiple of 8.
    unsafe {
        for i in (0..x.len()).step_by(8) {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i).cast::<__m128i>()));
            let o = _mm256_loadu_ps(po.add(i));
            _mm256_storeu_ps(po.add(i), _mm256_fmadd_ps(wv, xv, o));
        }
    }
}

/// The `G` dot products of `q` (`[G, d]`) with one f16 key row `k` (`d`) into `scores`, the key
/// widened 8 values at a time, once for all `G`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dots_f16c<const G: usize>(q: &[f32], k: &[f16], scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = k.len();
    debug_assert!(q.len() == G * d && scores.len() == G && d.is_multiple_of(8));
    let mut acc = [_mm256_setzero_ps(); G];
    let (pq, pk) = (q.as_ptr(), k.as_ptr());
    // SAFETY: every load reads 8 values below `d` within a row, and `q` holds G rows of `d`.
    unsafe {
        for i in (0..d).step_by(8) {
            let key = _mm256_cvtph_ps(_mm_loadu_si128(pk.add(i).cast::<__m128i>()));
            for (g, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(g * d + i)), key, *acc);
            }
        }
    }
    for (score, v) in scores.iter_mut().zip(acc) {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        *score = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
    }
}

/// For each of `G` heads, `out[g * stride + 2..][..d] += w[g] * x`, the f16 value row `x` widened 8
/// values at a time, once for all `G`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn axpys_f16c<const G: usize>(w: &[f32], x: &[f16], out: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    let d = x.len();
    assert!(w.len() == G && out.len() >= G * stride && stride >= d + 2);
    debug_assert!(d.is_multiple_of(8));
    let weights: [__m256; G] = std::array::from_fn(|g| _mm256_set1_ps(w[g]));
    let (px, po) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: every access covers 8 values below `d` of `x`, or of head g's sum, which lies at
    // `g * stride + 2..g * stride + 2 + d`, inside `out` (checked above).
    unsafe {
        for i in (0..d).step_by(8) {
            let value = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i).cast::<__m128i>()));
            for (g, weight) in weights.iter().enumerate() {
                let o = po.add(g * stride + 2 + i);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(*weight, value, _mm256_loadu_ps(o)));
            }
        }
    }
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

/// [`dot`] with `b` in f16 (the portable path; widened value by value).
fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y.to_f32()).sum();
    acc.iter().sum::<f32>() + tail
}

fn axpy_f16(w: f32, x: &[f16], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += w * v.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::kv_cache::{KvCacheDtype, KvShape};

    const DTYPES: [KvCacheDtype; 2] = [KvCacheDtype::F32, KvCacheDtype::F16];

    /// `x` as the cache returns it: unchanged in f32, rounded to the nearest f16 in f16. The
    /// references below attend over these, so what they check is the kernels, not the rounding
    /// (which `tests/generation_engine.rs` measures on the real model).
    fn stored(dtype: KvCacheDtype, x: &[f32]) -> Vec<f32> {
        match dtype {
            KvCacheDtype::F32 => x.to_vec(),
            KvCacheDtype::F16 => x.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
        }
    }

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
        for dtype in DTYPES {
            scattered_blocks_case(dtype);
        }
    }

    fn scattered_blocks_case(dtype: KvCacheDtype) {
        let shape = KvShape {
            layers: 1,
            kv_heads: 1,
            head_dim: 4,
        };
        let mut cache = PagedKvCache::new(shape, dtype, 2, 8);
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
            let keys: Vec<Vec<f32>> = (0..=pos).map(|p| stored(dtype, &key(seq, p))).collect();
            let values: Vec<Vec<f32>> = (0..=pos).map(|p| stored(dtype, &value(seq, p))).collect();
            for head in 0..2 {
                let at = (row * 2 + head) * 4;
                let expected = reference(&q[at..at + 4], &keys, &values);
                for (a, b) in out[at..at + 4].iter().zip(&expected) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "{dtype:?} row {row} head {head}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        super::super::test_values(n, seed, 2.0)
    }

    /// The cache, the block tables, and each sequence's keys and values (`[positions, kv_heads, d]`,
    /// as stored).
    type LongCase = (
        PagedKvCache,
        Vec<Vec<BlockId>>,
        Vec<Vec<f32>>,
        Vec<Vec<f32>>,
    );

    /// Two sequences, long enough for several parts, three query heads per KV head, 16 dimensions
    /// (the SIMD path), scattered blocks.
    fn long_case(dtype: KvCacheDtype) -> LongCase {
        let shape = KvShape {
            layers: 1,
            kv_heads: 2,
            head_dim: 16,
        };
        let block_size = 16;
        let lengths = [150, 70];
        let mut cache = PagedKvCache::new(shape, dtype, block_size, 20);
        let tables: Vec<Vec<BlockId>> = vec![
            vec![19, 3, 11, 0, 7, 15, 2, 9, 13, 5],
            vec![4, 18, 1, 12, 8],
        ];
        let row = shape.row_len();
        let mut keys = Vec::new();
        let mut vals = Vec::new();
        for (s, (&len, table)) in lengths.iter().zip(&tables).enumerate() {
            let k = values(len * row, 100 + s as u64);
            let v = values(len * row, 200 + s as u64);
            for p in 0..len {
                let at = p * row..(p + 1) * row;
                cache.write(0, table, p, &k[at.clone()], &v[at]);
            }
            keys.push(stored(dtype, &k));
            vals.push(stored(dtype, &v));
        }
        (cache, tables, keys, vals)
    }

    #[test]
    fn long_contexts_split_in_parts_match_contiguous_attention() {
        for dtype in DTYPES {
            long_contexts_case(dtype);
        }
    }

    fn long_contexts_case(dtype: KvCacheDtype) {
        let (cache, tables, keys, vals) = long_case(dtype);
        let (heads, kv_heads, d) = (6, 2, 16);
        // Sequence 0: a prefill chunk of its last three positions (147..150); sequence 1: position 69.
        let spans = [
            SeqSpan {
                rows: 0..3,
                start: 147,
                blocks: &tables[0],
            },
            SeqSpan {
                rows: 3..4,
                start: 69,
                blocks: &tables[1],
            },
        ];
        let q = values(4 * heads * d, 7);
        let out = paged_attention(&q, heads, &spans, &cache, 0);
        for (row, (seq, pos)) in [(0, 147), (0, 148), (0, 149), (1, 69)]
            .into_iter()
            .enumerate()
        {
            for head in 0..heads {
                let kv_head = head / (heads / kv_heads);
                let slice =
                    |all: &[f32], p: usize| all[(p * kv_heads + kv_head) * d..][..d].to_vec();
                let ks: Vec<Vec<f32>> = (0..=pos).map(|p| slice(&keys[seq], p)).collect();
                let vs: Vec<Vec<f32>> = (0..=pos).map(|p| slice(&vals[seq], p)).collect();
                let at = (row * heads + head) * d;
                let expected = reference(&q[at..at + d], &ks, &vs);
                for (a, b) in out[at..at + d].iter().zip(&expected) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "{dtype:?} row {row} head {head}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_rows_attention_does_not_depend_on_the_batch_around_it() {
        for dtype in DTYPES {
            batch_independence_case(dtype);
        }
    }

    fn batch_independence_case(dtype: KvCacheDtype) {
        let (cache, tables, _, _) = long_case(dtype);
        let (heads, d) = (6, 16);
        let q = values(2 * heads * d, 9);
        let both = [
            SeqSpan {
                rows: 0..1,
                start: 149,
                blocks: &tables[0],
            },
            SeqSpan {
                rows: 1..2,
                start: 69,
                blocks: &tables[1],
            },
        ];
        let together = paged_attention(&q, heads, &both, &cache, 0);
        let alone = paged_attention(
            &q[heads * d..],
            heads,
            &[SeqSpan {
                rows: 0..1,
                start: 69,
                blocks: &tables[1],
            }],
            &cache,
            0,
        );
        assert_eq!(together[heads * d..], alone[..]);
    }

    /// The F16C kernels compute what the portable ones do (to summation order).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16_vector_kernels_match_the_portable_ones() {
        if !(Simd::detect(64).avx2 && Simd::detect(64).f16c) {
            return;
        }
        for n in [8, 16, 64, 72] {
            let a = values(n, 1);
            let b: Vec<f16> = values(n, 2).into_iter().map(f16::from_f32).collect();
            // SAFETY: detected above; the lengths are equal multiples of 8.
            let fast = unsafe { dot_f16c(&a, &b) };
            assert!((fast - dot_f16(&a, &b)).abs() < 1e-5, "dot of {n}");
            let (mut fast, mut slow) = (values(n, 3), values(n, 3));
            // SAFETY: as above.
            unsafe { axpy_f16c(0.7, &b, &mut fast) };
            axpy_f16(0.7, &b, &mut slow);
            for (f, s) in fast.iter().zip(&slow) {
                assert!((f - s).abs() < 1e-6, "axpy of {n}: {f} vs {s}");
            }
            // Three heads at once, as a group of SmolLM2's.
            let queries = values(3 * n, 4);
            let mut scores = [0f32; 3];
            // SAFETY: as above; three queries of n.
            unsafe { dots_f16c::<3>(&queries, &b, &mut scores) };
            for (g, score) in scores.iter().enumerate() {
                let one = dot_f16(&queries[g * n..][..n], &b);
                assert!((score - one).abs() < 1e-5, "dots of {n}, head {g}");
            }
            let stride = n + 2;
            let (mut fast, mut slow) = (values(3 * stride, 5), values(3 * stride, 5));
            // SAFETY: as above; three sums of n at a stride of n + 2.
            unsafe { axpys_f16c::<3>(&[0.5, -1.0, 2.0], &b, &mut fast, stride) };
            for (g, w) in [0.5, -1.0, 2.0].into_iter().enumerate() {
                axpy_f16(w, &b, &mut slow[g * stride + 2..][..n]);
            }
            for (f, s) in fast.iter().zip(&slow) {
                assert!((f - s).abs() < 1e-5, "axpys of {n}: {f} vs {s}");
            }
        }
    }
}
