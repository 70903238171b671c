//! Matrix products with GGUF-quantized weights, the decoder's hot loop: Q4_1 (4-bit with a per-block
//! minimum, SmolLM2's layers) and Q8_0 (8-bit, SmolLM2's tied embeddings and output head). candle 0.11
//! has no SIMD Q4_1 kernel on x86, and its Q8_0 product reads every weight row once per activation
//! row, so a batch of eight decode rows cost eight times one.
//!
//! The arithmetic is ggml's: activation rows are quantized to 8-bit blocks of 32 (`d = max|x| / 127`),
//! each block's integer dot product is exact, and the float accumulation is
//! `sum_b d_w[b] * d_x[b] * isum[b]` (plus `m_w[b] * d_x[b] * sum(q_x[b])` for Q4_1).
//!
//! How it is fast:
//! - **AVX2, FMA and F16C** (the x86-64-v3 set), and AVX-VNNI's one-instruction u8 x i8 dot products
//!   where the CPU has them (detected at run time; both give the same integers, hence the same bits).
//! - **Tiles.** A tile of up to 4 activation rows by 2 weight columns (4 columns for a single row)
//!   unpacks each weight block once and multiplies it into every row of the tile, so a batch reads the
//!   weights once per step, not once per row: batched decode costs little more than one row's.
//! - **Vertical accumulation.** Each (row, column) pair keeps eight float lanes, fused-multiply-added
//!   per block, and sums them horizontally once at the end, where the old kernel reduced every block.
//! - **Columns in parallel** (rayon), the weights of a task's columns staying in L1 across its rows.
//!
//! **Batch invariance.** A (row, column) result goes through the same operations in the same order
//! whatever tile, batch size or position in the batch it lands in (every tile shape runs the same
//! per-pair code), so a sequence's logits do not depend on which other sequences share its step: the
//! scheduler's batching and preemption tests rely on it.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;

/// A Q4_1 weight block as GGUF stores it: 20 bytes. The scales stay f16 (widened per block in the
/// kernel, an exact conversion): a decode step reads every weight once, and widened scales made the
/// blocks 24 bytes, a fifth more memory traffic for the same numbers.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Q4_1Block {
    /// f16 bits of the scale `d` and the minimum `m`, side by side (one 32-bit load widens both).
    dm: [u16; 2],
    /// Element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble.
    qs: [u8; 16],
}

impl Q4_1Block {
    fn d(&self) -> f32 {
        f16::from_bits(self.dm[0]).to_f32()
    }

    fn m(&self) -> f32 {
        f16::from_bits(self.dm[1]).to_f32()
    }
}

/// A Q8_0 weight block as GGUF stores it (34 bytes), its scale f16 bits.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Q8_0Block {
    d: u16,
    qs: [i8; 32],
}

impl Q8_0Block {
    fn d(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
}

/// An activation block: 32 values quantized to i8 with scale `d`, and `s = d * sum(qs)`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct ActBlock {
    d: f32,
    s: f32,
    qs: [i8; 32],
}

enum Blocks {
    Q4_1(Vec<Q4_1Block>),
    Q8_0(Vec<Q8_0Block>),
}

/// An `[n, k]` quantized weight matrix (one row per output feature), stored column by column in the
/// sense of the product: output feature `c`'s blocks are contiguous.
pub struct QuantMatrix {
    n: usize,
    k: usize,
    blocks: Blocks,
}

impl QuantMatrix {
    /// The matrix of a Q4_1 or Q8_0 tensor; `None` for any other type or shape.
    pub fn from_qtensor(tensor: &QTensor) -> candle_core::Result<Option<Self>> {
        let Ok((n, k)) = tensor.shape().dims2() else {
            return Ok(None);
        };
        if k % QK != 0 {
            return Ok(None);
        }
        let blocks = match tensor.dtype() {
            // ggml's block_q4_1: f16 d, f16 m, 16 bytes of nibbles.
            GgmlDType::Q4_1 => Blocks::Q4_1(
                tensor
                    .data()?
                    .chunks_exact(20)
                    .map(|b| {
                        let mut qs = [0u8; 16];
                        qs.copy_from_slice(&b[4..20]);
                        Q4_1Block {
                            dm: [
                                u16::from_le_bytes([b[0], b[1]]),
                                u16::from_le_bytes([b[2], b[3]]),
                            ],
                            qs,
                        }
                    })
                    .collect(),
            ),
            // ggml's block_q8_0: f16 d, 32 signed bytes.
            GgmlDType::Q8_0 => Blocks::Q8_0(
                tensor
                    .data()?
                    .chunks_exact(34)
                    .map(|b| {
                        let mut qs = [0i8; 32];
                        for (q, &byte) in qs.iter_mut().zip(&b[2..34]) {
                            *q = byte as i8;
                        }
                        Q8_0Block {
                            d: u16::from_le_bytes([b[0], b[1]]),
                            qs,
                        }
                    })
                    .collect(),
            ),
            _ => return Ok(None),
        };
        let count = match &blocks {
            Blocks::Q4_1(b) => b.len(),
            Blocks::Q8_0(b) => b.len(),
        };
        if count != n * k / QK {
            candle_core::bail!(
                "{:?} tensor of shape ({n}, {k}) has {count} blocks",
                tensor.dtype()
            );
        }
        Ok(Some(Self { n, k, blocks }))
    }

    /// The matrices stacked along the output features (`[n1 + n2 + ..., k]`), so that projections
    /// of the same input run as one product. The parts come back unchanged unless all share `k` and
    /// the format.
    pub fn stack(parts: Vec<Self>) -> Result<Self, Vec<Self>> {
        let same = parts.windows(2).all(|p| {
            p[0].k == p[1].k
                && matches!(
                    (&p[0].blocks, &p[1].blocks),
                    (Blocks::Q4_1(_), Blocks::Q4_1(_)) | (Blocks::Q8_0(_), Blocks::Q8_0(_))
                )
        });
        if parts.is_empty() || !same {
            return Err(parts);
        }
        let k = parts[0].k;
        let n = parts.iter().map(|p| p.n).sum();
        let blocks = match parts[0].blocks {
            Blocks::Q4_1(_) => Blocks::Q4_1(
                parts
                    .into_iter()
                    .flat_map(|p| match p.blocks {
                        Blocks::Q4_1(b) => b,
                        Blocks::Q8_0(_) => unreachable!("formats checked above"),
                    })
                    .collect(),
            ),
            Blocks::Q8_0(_) => Blocks::Q8_0(
                parts
                    .into_iter()
                    .flat_map(|p| match p.blocks {
                        Blocks::Q8_0(b) => b,
                        Blocks::Q4_1(_) => unreachable!("formats checked above"),
                    })
                    .collect(),
            ),
        };
        Ok(Self { n, k, blocks })
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    /// `x` is `[m, k]` row-major; returns `[m, n]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "activations are [{m}, {}]", self.k);
        let kb = self.k / QK;
        let xq: Vec<ActBlock> = x.chunks_exact(QK).map(quantize_block).collect();
        let kernels = Kernels::detect();
        // Columns in parallel: each task owns a run of output features for every row, written
        // feature-major into its chunk of `by_column` (`[n, m]`) and transposed at the end.
        let columns_per_task = 16;
        let mut by_column = vec![0f32; self.n * m];
        by_column
            .par_chunks_mut(columns_per_task * m)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * columns_per_task;
                let columns = out.len() / m;
                let rows = |r: usize| &xq[r * kb..(r + 1) * kb];
                // A single row takes four columns at a time (more independent work per load), a
                // batch four rows by two columns (each unpacked weight block used four times).
                let width = if m == 1 { 4 } else { 2 };
                let mut c = 0;
                while c < columns {
                    let cw = if columns - c >= width { width } else { 1 };
                    let mut r = 0;
                    while r < m {
                        let rh = (m - r).min(4);
                        let mut result = [[0f32; 4]; 4];
                        match &self.blocks {
                            Blocks::Q4_1(blocks) => {
                                let col = |j: usize| {
                                    &blocks[(first + c + j) * kb..(first + c + j + 1) * kb]
                                };
                                kernels.q4_1(rh, cw, col, rows, r, &mut result);
                            }
                            Blocks::Q8_0(blocks) => {
                                let col = |j: usize| {
                                    &blocks[(first + c + j) * kb..(first + c + j + 1) * kb]
                                };
                                kernels.q8_0(rh, cw, col, rows, r, &mut result);
                            }
                        }
                        for (i, row) in result.iter().enumerate().take(rh) {
                            for (j, v) in row.iter().enumerate().take(cw) {
                                out[(c + j) * m + r + i] = *v;
                            }
                        }
                        r += rh;
                    }
                    c += cw;
                }
            });
        if m == 1 {
            // One row: feature-major is already row-major (the output head's 49,152 values were
            // copied once more for nothing).
            return by_column;
        }
        let mut out = vec![0f32; m * self.n];
        for (j, column) in by_column.chunks_exact(m).enumerate() {
            for (row, v) in column.iter().enumerate() {
                out[row * self.n + j] = *v;
            }
        }
        out
    }
}

/// `d = max|x| / 127`, `q = round(x / d)`, `s = d * sum(q)`.
fn quantize_block(x: &[f32]) -> ActBlock {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    ActBlock {
        d,
        s: d * sum as f32,
        qs,
    }
}

/// Which implementation of the tiles this CPU runs (detected once per product: a cached atomic).
#[derive(Clone, Copy)]
struct Kernels {
    #[cfg(target_arch = "x86_64")]
    /// AVX2, FMA and F16C (the scales are widened from f16 in the tiles).
    avx2: bool,
    /// AVX-VNNI as well (its one-instruction u8 x i8 dot products).
    #[cfg(target_arch = "x86_64")]
    vnni: bool,
}

/// Expands to a call of `$tile::<R, C>` for the runtime tile shape (rows 1–4, columns 1, 2 or 4).
macro_rules! dispatch {
    ($tile:ident, $rh:expr, $cw:expr, $col:expr, $rows:expr, $r:expr, $out:expr) => {{
        macro_rules! go {
            ($R:literal, $C:literal) => {{
                let w: [_; $C] = std::array::from_fn(|j| $col(j));
                let x: [_; $R] = std::array::from_fn(|i| $rows($r + i));
                let res = $tile::<$R, $C>(w, x);
                for (dst, src) in $out.iter_mut().zip(res) {
                    dst[..$C].copy_from_slice(&src);
                }
            }};
        }
        match ($rh, $cw) {
            (1, 1) => go!(1, 1),
            (1, 2) => go!(1, 2),
            (1, 4) => go!(1, 4),
            (2, 1) => go!(2, 1),
            (2, 2) => go!(2, 2),
            (3, 1) => go!(3, 1),
            (3, 2) => go!(3, 2),
            (4, 1) => go!(4, 1),
            (4, 2) => go!(4, 2),
            (rh, cw) => unreachable!("no {rh}x{cw} tile"),
        }
    }};
}

/// The weight-product kernels this process uses, for the start-up log (and so the benchmark's output).
pub fn kernels_in_use() -> &'static str {
    let k = Kernels::detect();
    #[cfg(target_arch = "x86_64")]
    {
        if k.vnni {
            return "avx2+fma+avx-vnni";
        }
        if k.avx2 {
            return "avx2+fma";
        }
    }
    let _ = k;
    "portable"
}

/// `LEXSERVE_SIMD=avx2` caps the kernels at AVX2 and FMA, leaving out AVX-VNNI even where the CPU has
/// it: the benchmark compares with a llama.cpp built for x86-64-v3 (no AVX-VNNI) and shows what the
/// plainest supported CPU gets, on any machine. Read once: the kernels are chosen per product.
fn capped_at_avx2() -> bool {
    static CAPPED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAPPED.get_or_init(|| {
        std::env::var("LEXSERVE_SIMD").is_ok_and(|v| v.trim().eq_ignore_ascii_case("avx2"))
    })
}

impl Kernels {
    fn detect() -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            vnni: std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("avxvnni")
                && !capped_at_avx2(),
        }
    }

    fn q4_1<'a>(
        self,
        rh: usize,
        cw: usize,
        col: impl Fn(usize) -> &'a [Q4_1Block],
        rows: impl Fn(usize) -> &'a [ActBlock],
        r: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.vnni {
            // SAFETY: AVX2, FMA, F16C and AVX-VNNI are present; every slice holds `kb` blocks.
            unsafe { dispatch!(q4_1_tile_vnni, rh, cw, col, rows, r, out) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2, FMA and F16C are present (detected above); every slice holds `kb` blocks.
            unsafe { dispatch!(q4_1_tile_avx2, rh, cw, col, rows, r, out) };
            return;
        }
        dispatch!(q4_1_tile_scalar, rh, cw, col, rows, r, out)
    }

    fn q8_0<'a>(
        self,
        rh: usize,
        cw: usize,
        col: impl Fn(usize) -> &'a [Q8_0Block],
        rows: impl Fn(usize) -> &'a [ActBlock],
        r: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.vnni {
            // SAFETY: AVX2, FMA, F16C and AVX-VNNI are present; every slice holds `kb` blocks.
            unsafe { dispatch!(q8_0_tile_vnni, rh, cw, col, rows, r, out) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2, FMA and F16C are present (detected above); every slice holds `kb` blocks.
            unsafe { dispatch!(q8_0_tile_avx2, rh, cw, col, rows, r, out) };
            return;
        }
        dispatch!(q8_0_tile_scalar, rh, cw, col, rows, r, out)
    }
}

/// The portable tile: per pair, the same block order as the SIMD one (lanes summed within a block).
fn q4_1_tile_scalar<const R: usize, const C: usize>(
    w: [&[Q4_1Block]; C],
    x: [&[ActBlock]; R],
) -> [[f32; C]; R] {
    let mut out = [[0f32; C]; R];
    for (i, xr) in x.iter().enumerate() {
        for (j, wc) in w.iter().enumerate() {
            let (mut acc, mut ms) = (0f32, 0f32);
            for (b, y) in wc.iter().zip(xr.iter()) {
                let mut sumi = 0i32;
                for t in 0..QK / 2 {
                    sumi += (b.qs[t] & 0x0F) as i32 * y.qs[t] as i32
                        + (b.qs[t] >> 4) as i32 * y.qs[t + QK / 2] as i32;
                }
                acc += sumi as f32 * (b.d() * y.d);
                ms += b.m() * y.s;
            }
            out[i][j] = acc + ms;
        }
    }
    out
}

fn q8_0_tile_scalar<const R: usize, const C: usize>(
    w: [&[Q8_0Block]; C],
    x: [&[ActBlock]; R],
) -> [[f32; C]; R] {
    let mut out = [[0f32; C]; R];
    for (i, xr) in x.iter().enumerate() {
        for (j, wc) in w.iter().enumerate() {
            let mut acc = 0f32;
            for (b, y) in wc.iter().zip(xr.iter()) {
                let sumi: i32 =
                    b.qs.iter()
                        .zip(&y.qs)
                        .map(|(&a, &c)| a as i32 * c as i32)
                        .sum();
                acc += sumi as f32 * (b.d() * y.d);
            }
            out[i][j] = acc;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The integer dot products of a block pair as eight i32 partial sums: unsigned weights (`w`) by
/// signed activations (`y`), each pair of products summed to i16, then pairs of those to i32. The
/// i16 sums are exact: weights are at most 15 (Q4_1) or 128 (|Q8_0|), activations at most 127 in
/// magnitude, so a pair stays within 2 * 128 * 127 = 32,512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn products_avx2(
    w: std::arch::x86_64::__m256i,
    y: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), _mm256_set1_epi16(1))
}

/// The same sums in one instruction (AVX-VNNI's `vpdpbusd`: four u8 x i8 products per i32 lane).
/// The integers are equal to [`products_avx2`]'s, so both paths give bit-identical results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
fn products_vnni(
    w: std::arch::x86_64::__m256i,
    y: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, y)
}

/// Defines an `R` activation rows by `C` Q4_1 weight columns tile for a set of CPU features.
macro_rules! q4_1_tile {
    ($name:ident, $features:literal, $products:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize, const C: usize>(
            w: [&[Q4_1Block]; C],
            x: [&[ActBlock]; R],
        ) -> [[f32; C]; R] {
            use std::arch::x86_64::*;
            let kb = x[0].len();
            let mask = _mm256_set1_epi8(0x0F);
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            let mut ms = [[0f32; C]; R];
            for b in 0..kb {
                let mut wv = [_mm256_setzero_si256(); C];
                let mut wd = [0f32; C];
                let mut wm = [0f32; C];
                for c in 0..C {
                    // SAFETY: every column holds `kb` blocks; 16 bytes are read from 16.
                    let blk = unsafe { w[c].get_unchecked(b) };
                    let q = unsafe { _mm_loadu_si128(blk.qs.as_ptr() as *const __m128i) };
                    // Low nibbles are elements 0..16, high nibbles 16..32.
                    wv[c] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), mask);
                    // Both f16 scales widened by one F16C conversion (exact).
                    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(
                        (u32::from(blk.dm[0]) | (u32::from(blk.dm[1]) << 16)) as i32,
                    ));
                    wd[c] = _mm_cvtss_f32(dm);
                    wm[c] = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                }
                for r in 0..R {
                    // SAFETY: every row holds `kb` blocks; 32 bytes are read from 32.
                    let y = unsafe { x[r].get_unchecked(b) };
                    let yv = unsafe { _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i) };
                    for c in 0..C {
                        let p = $products(wv[c], yv);
                        let scale = _mm256_set1_ps(wd[c] * y.d);
                        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r][c]);
                        ms[r][c] = wm[c].mul_add(y.s, ms[r][c]);
                    }
                }
            }
            let mut out = [[0f32; C]; R];
            for r in 0..R {
                for c in 0..C {
                    out[r][c] = hsum(acc[r][c]) + ms[r][c];
                }
            }
            out
        }
    };
}

/// Defines an `R` activation rows by `C` Q8_0 weight columns tile for a set of CPU features.
macro_rules! q8_0_tile {
    ($name:ident, $features:literal, $products:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize, const C: usize>(
            w: [&[Q8_0Block]; C],
            x: [&[ActBlock]; R],
        ) -> [[f32; C]; R] {
            use std::arch::x86_64::*;
            let kb = x[0].len();
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            for b in 0..kb {
                let mut wv = [_mm256_setzero_si256(); C];
                let mut wa = [_mm256_setzero_si256(); C];
                let mut wd = [0f32; C];
                for c in 0..C {
                    // SAFETY: every column holds `kb` blocks; 32 bytes are read from 32.
                    let blk = unsafe { w[c].get_unchecked(b) };
                    wv[c] = unsafe { _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i) };
                    // |w| as unsigned (|-128| = 128 still fits), its sign moved onto the
                    // activations.
                    wa[c] = _mm256_sign_epi8(wv[c], wv[c]);
                    wd[c] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(blk.d))));
                }
                for r in 0..R {
                    // SAFETY: every row holds `kb` blocks; 32 bytes are read from 32.
                    let y = unsafe { x[r].get_unchecked(b) };
                    let yv = unsafe { _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i) };
                    for c in 0..C {
                        let p = $products(wa[c], _mm256_sign_epi8(yv, wv[c]));
                        let scale = _mm256_set1_ps(wd[c] * y.d);
                        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r][c]);
                    }
                }
            }
            let mut out = [[0f32; C]; R];
            for r in 0..R {
                for c in 0..C {
                    out[r][c] = hsum(acc[r][c]);
                }
            }
            out
        }
    };
}

q4_1_tile!(q4_1_tile_avx2, "avx2,fma,f16c", products_avx2);
q4_1_tile!(q4_1_tile_vnni, "avx2,fma,f16c,avxvnni", products_vnni);
q8_0_tile!(q8_0_tile_avx2, "avx2,fma,f16c", products_avx2);
q8_0_tile!(q8_0_tile_vnni, "avx2,fma,f16c,avxvnni", products_vnni);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        super::super::test_values(n, seed, 4.0)
    }

    fn quantized(n: usize, k: usize, dtype: GgmlDType, seed: u64) -> (QTensor, Vec<f32>) {
        let device = Device::Cpu;
        let w = Tensor::from_vec(values(n * k, seed), (n, k), &device).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let dequantized = q
            .dequantize(&device)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (q, dequantized)
    }

    /// The exact product with the dequantized weights, and the bound the activation rounding allows:
    /// each activation moves by at most half a quantization step (`max|x_block| / 254`).
    fn reference(w: &[f32], x: &[f32], n: usize, k: usize, m: usize) -> (Vec<f32>, Vec<f32>) {
        let mut exact = vec![0f32; m * n];
        let mut bound = vec![0f32; m * n];
        for r in 0..m {
            let row = &x[r * k..(r + 1) * k];
            for c in 0..n {
                let col = &w[c * k..(c + 1) * k];
                let mut e = 0f64;
                let mut b = 0f64;
                for (blk_w, blk_x) in col.chunks(QK).zip(row.chunks(QK)) {
                    let step = blk_x.iter().fold(0f32, |a, v| a.max(v.abs())) / 254.0;
                    for (a, v) in blk_w.iter().zip(blk_x) {
                        e += *a as f64 * *v as f64;
                        b += a.abs() as f64 * step as f64;
                    }
                }
                exact[r * n + c] = e as f32;
                bound[r * n + c] = (b * 1.01 + 1e-3) as f32;
            }
        }
        (exact, bound)
    }

    #[test]
    fn products_are_within_the_activation_rounding_of_the_exact_product() {
        // 38 columns: pairs and quads of columns plus a tail; 1 to 9 rows: every tile shape.
        let (n, k) = (38, 96);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (q, w) = quantized(n, k, dtype, 1);
            let matrix = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            for m in [1, 2, 3, 5, 9] {
                let x = values(m * k, 7 + m as u64);
                let (exact, bound) = reference(&w, &x, n, k, m);
                let got = matrix.matmul(&x, m);
                for (i, ((g, e), b)) in got.iter().zip(&exact).zip(&bound).enumerate() {
                    assert!(
                        (g - e).abs() <= *b,
                        "{dtype:?} m={m} [{}, {}]: {g} vs {e} (bound {b})",
                        i / n,
                        i % n
                    );
                }
            }
        }
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_batch_around_it() {
        let (n, k) = (21, 64);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (q, _) = quantized(n, k, dtype, 3);
            let matrix = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let batch = values(7 * k, 11);
            let all = matrix.matmul(&batch, 7);
            for r in 0..7 {
                let alone = matrix.matmul(&batch[r * k..(r + 1) * k], 1);
                assert_eq!(alone, all[r * n..(r + 1) * n], "{dtype:?} row {r}");
            }
        }
    }

    #[test]
    fn simd_and_portable_tiles_agree() {
        let k = 128;
        let xs: Vec<ActBlock> = values(3 * k, 5)
            .chunks_exact(QK)
            .map(quantize_block)
            .collect();
        let rows: [&[ActBlock]; 3] = std::array::from_fn(|i| &xs[i * 4..(i + 1) * 4]);
        let close = |a: [[f32; 2]; 3], b: [[f32; 2]; 3]| {
            for (ra, rb) in a.iter().zip(&b) {
                for (x, y) in ra.iter().zip(rb) {
                    assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
                }
            }
        };
        let (q, _) = quantized(2, k, GgmlDType::Q4_1, 9);
        let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        let Blocks::Q4_1(blocks) = &m.blocks else {
            panic!("Q4_1")
        };
        let cols: [&[Q4_1Block]; 2] = [&blocks[..4], &blocks[4..]];
        let portable = q4_1_tile_scalar::<3, 2>(cols, rows);
        #[cfg(target_arch = "x86_64")]
        if Kernels::detect().avx2 {
            // SAFETY: AVX2 and FMA detected.
            let simd = unsafe { q4_1_tile_avx2::<3, 2>(cols, rows) };
            close(portable, simd);
            if Kernels::detect().vnni {
                // SAFETY: AVX-VNNI detected; the same integers, so the same bits.
                assert_eq!(simd, unsafe { q4_1_tile_vnni::<3, 2>(cols, rows) });
            }
        }
        let (q, _) = quantized(2, k, GgmlDType::Q8_0, 9);
        let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        let Blocks::Q8_0(blocks) = &m.blocks else {
            panic!("Q8_0")
        };
        let cols: [&[Q8_0Block]; 2] = [&blocks[..4], &blocks[4..]];
        let portable = q8_0_tile_scalar::<3, 2>(cols, rows);
        #[cfg(target_arch = "x86_64")]
        if Kernels::detect().avx2 {
            // SAFETY: AVX2 and FMA detected.
            let simd = unsafe { q8_0_tile_avx2::<3, 2>(cols, rows) };
            close(portable, simd);
            if Kernels::detect().vnni {
                // SAFETY: AVX-VNNI detected; the same integers, so the same bits.
                assert_eq!(simd, unsafe { q8_0_tile_vnni::<3, 2>(cols, rows) });
            }
        }
    }

    #[test]
    fn stacked_matrices_give_the_parts_side_by_side() {
        let k = 64;
        let parts: Vec<QuantMatrix> = [(5, 1), (3, 2), (8, 3)]
            .into_iter()
            .map(|(n, seed)| {
                let (q, _) = quantized(n, k, GgmlDType::Q4_1, seed);
                QuantMatrix::from_qtensor(&q).unwrap().unwrap()
            })
            .collect();
        let x = values(2 * k, 4);
        let separate: Vec<Vec<f32>> = parts.iter().map(|p| p.matmul(&x, 2)).collect();
        let stacked = QuantMatrix::stack(parts).ok().unwrap();
        assert_eq!(stacked.out_features(), 16);
        let got = stacked.matmul(&x, 2);
        for r in 0..2 {
            let expected: Vec<f32> = separate
                .iter()
                .flat_map(|s| {
                    let n = s.len() / 2;
                    s[r * n..(r + 1) * n].to_vec()
                })
                .collect();
            assert_eq!(got[r * 16..(r + 1) * 16], expected[..], "row {r}");
        }
        let (q8, _) = quantized(4, k, GgmlDType::Q8_0, 5);
        let (q4, _) = quantized(4, k, GgmlDType::Q4_1, 5);
        let mixed = vec![
            QuantMatrix::from_qtensor(&q8).unwrap().unwrap(),
            QuantMatrix::from_qtensor(&q4).unwrap().unwrap(),
        ];
        assert!(QuantMatrix::stack(mixed).is_err(), "formats differ");
    }
}
