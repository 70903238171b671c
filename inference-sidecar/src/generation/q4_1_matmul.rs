//! Matrix products with Q4_1 weights (GGUF's 4-bit format with a per-block minimum), written because
//! candle 0.11 has no SIMD kernel for Q4_1 on x86: its generic `vec_dot` took 60% of a decode step.
//!
//! The arithmetic is candle's (and ggml's `ggml_vec_dot_q4_1_q8_1`): activation rows are quantized to
//! Q8_1 blocks exactly as candle quantizes them, each block's integer dot product is exact, and the
//! float accumulation over blocks happens in the same order with the same expression. The result is
//! bit-for-bit candle's, only faster: the integer part runs on AVX2 when the CPU has it, and each
//! weight row is read once per batch rather than once per row (what makes a batch cheaper per token).

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;

/// A Q4_1 block with its scales widened to f32 once, at load.
#[derive(Debug, Clone, Copy)]
struct WeightBlock {
    d: f32,
    m: f32,
    /// Element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble.
    qs: [u8; 16],
}

/// A Q8_1 block of an activation row.
#[derive(Debug, Clone, Copy)]
struct ActivationBlock {
    d: f32,
    /// `d * sum(qs)`, rounded through f16 as ggml stores it.
    s: f32,
    qs: [i8; 32],
}

/// A `[n, k]` Q4_1 weight matrix (one row per output feature).
pub struct Q4_1Matrix {
    n: usize,
    k: usize,
    blocks: Vec<WeightBlock>,
}

impl Q4_1Matrix {
    /// The matrix of a Q4_1 tensor; `None` for any other type.
    pub fn from_qtensor(tensor: &QTensor) -> candle_core::Result<Option<Self>> {
        if tensor.dtype() != GgmlDType::Q4_1 {
            return Ok(None);
        }
        let (n, k) = tensor.shape().dims2()?;
        if k % QK != 0 {
            return Ok(None);
        }
        let bytes = tensor.data()?;
        // ggml's block_q4_1: f16 d, f16 m, 16 bytes of nibbles.
        let blocks: Vec<WeightBlock> = bytes
            .chunks_exact(20)
            .map(|b| {
                let mut qs = [0u8; 16];
                qs.copy_from_slice(&b[4..20]);
                WeightBlock {
                    d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
                    qs,
                }
            })
            .collect();
        if blocks.len() != n * k / QK {
            candle_core::bail!(
                "Q4_1 tensor of shape ({n}, {k}) has {} blocks",
                blocks.len()
            );
        }
        Ok(Some(Self { n, k, blocks }))
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `x` is `[m, k]` row-major; returns `[m, n]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let kb = self.k / QK;
        let xq: Vec<ActivationBlock> = x.chunks_exact(QK).map(quantize_q8_1).collect();
        // Columns in parallel; within a column, every row against the same weight row (kept in L1).
        let mut by_column = vec![0f32; self.n * m];
        let columns_per_task = 16;
        let dot = row_dot();
        let dot4 = row_dot4();
        let dot4x2 = row_dot4x2();
        by_column
            .par_chunks_mut(columns_per_task * m)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * columns_per_task;
                let columns = out.len() / m;
                let weights = |c: usize| &self.blocks[(first + c) * kb..(first + c + 1) * kb];
                // Four columns at a time: four independent accumulations keep the core busy where
                // one would wait on its own latency.
                let mut c = 0;
                while c + 4 <= columns {
                    let w = [weights(c), weights(c + 1), weights(c + 2), weights(c + 3)];
                    let mut row = 0;
                    // Two rows at a time share the unpacking of the weight nibbles.
                    while row + 2 <= m {
                        let x = |r: usize| &xq[r * kb..(r + 1) * kb];
                        let (a, b) = dot4x2(w, x(row), x(row + 1));
                        for i in 0..4 {
                            out[(c + i) * m + row] = a[i];
                            out[(c + i) * m + row + 1] = b[i];
                        }
                        row += 2;
                    }
                    if row < m {
                        let sums = dot4(w, &xq[row * kb..(row + 1) * kb]);
                        for (i, v) in sums.into_iter().enumerate() {
                            out[(c + i) * m + row] = v;
                        }
                    }
                    c += 4;
                }
                for c in c..columns {
                    for row in 0..m {
                        out[c * m + row] = dot(weights(c), &xq[row * kb..(row + 1) * kb]);
                    }
                }
            });
        let mut out = vec![0f32; m * self.n];
        for (j, column) in by_column.chunks_exact(m).enumerate() {
            for (row, v) in column.iter().enumerate() {
                out[row * self.n + j] = *v;
            }
        }
        out
    }
}

/// candle's `BlockQ8_1::from_float`, operation for operation.
fn quantize_q8_1(x: &[f32]) -> ActivationBlock {
    let mut amax = 0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / ((1 << 7) - 1) as f32;
    let id = if d != 0f32 { 1. / d } else { 0. };
    let d16 = f16::from_f32(d);
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for j in 0..QK / 2 {
        qs[j] = f32::round(x[j] * id) as i8;
        qs[j + QK / 2] = f32::round(x[j + QK / 2] * id) as i8;
        sum += qs[j] as i32 + qs[j + QK / 2] as i32;
    }
    let s = f16::from_f32(sum as f32) * d16;
    ActivationBlock {
        d: d16.to_f32(),
        s: s.to_f32(),
        qs,
    }
}

type RowDot = fn(&[WeightBlock], &[ActivationBlock]) -> f32;
type RowDot4 = fn([&[WeightBlock]; 4], &[ActivationBlock]) -> [f32; 4];

type RowDot4x2 =
    fn([&[WeightBlock]; 4], &[ActivationBlock], &[ActivationBlock]) -> ([f32; 4], [f32; 4]);

/// Four weight rows against two activation rows, each result exactly what [`row_dot`] gives.
fn row_dot4x2() -> RowDot4x2 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return |w, a, b| {
                // SAFETY: AVX2 is present (checked just above).
                unsafe { row_dot4x2_avx2(w, a, b) }
            };
        }
    }
    |w, a, b| {
        (
            w.map(|w| row_dot_scalar(w, a)),
            w.map(|w| row_dot_scalar(w, b)),
        )
    }
}

/// Four weight rows against one activation row, each result exactly what [`row_dot`] gives.
fn row_dot4() -> RowDot4 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return |w, x| {
                // SAFETY: AVX2 is present (checked just above).
                unsafe { row_dot4_avx2(w, x) }
            };
        }
    }
    |w, x| w.map(|w| row_dot_scalar(w, x))
}

/// The fastest dot product this CPU runs.
fn row_dot() -> RowDot {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return |w, x| {
                // SAFETY: AVX2 is present (checked just above).
                unsafe { row_dot_avx2(w, x) }
            };
        }
    }
    row_dot_scalar
}

fn row_dot_scalar(w: &[WeightBlock], x: &[ActivationBlock]) -> f32 {
    let mut sumf = 0f32;
    for (b, y) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (b.qs[j] & 0x0F) as i32;
            let v1 = (b.qs[j] >> 4) as i32;
            sumi += v0 * y.qs[j] as i32 + v1 * y.qs[j + QK / 2] as i32;
        }
        sumf += sumi as f32 * b.d * y.d + b.m * y.s;
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_dot_avx2(w: &[WeightBlock], x: &[ActivationBlock]) -> f32 {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut sumf = 0f32;
    for (b, y) in w.iter().zip(x) {
        // SAFETY: 16 and 32 bytes are read from arrays of exactly that size (unaligned loads).
        let (q, yv) = unsafe {
            (
                _mm_loadu_si128(b.qs.as_ptr() as *const __m128i),
                _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i),
            )
        };
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        let xv = _mm256_set_m128i(hi, lo);
        // u8 x i8 pairs summed to i16 (at most 2 * 15 * 128: no saturation), then to i32.
        let p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, yv), ones);
        let s128 = _mm_add_epi32(
            _mm256_castsi256_si128(p32),
            _mm256_extracti128_si256(p32, 1),
        );
        let s64 = _mm_add_epi32(s128, _mm_unpackhi_epi64(s128, s128));
        let s32 = _mm_add_epi32(s64, _mm_shuffle_epi32(s64, 1));
        let sumi = _mm_cvtsi128_si32(s32);
        sumf += sumi as f32 * b.d * y.d + b.m * y.s;
    }
    sumf
}

/// The integer dot products of four Q4_1 blocks with one Q8_1 block, as eight i32 partial sums each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn block_products(b: &WeightBlock, yv: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    // SAFETY: 16 bytes are read from an array of exactly that size (unaligned load).
    let q = unsafe { _mm_loadu_si128(b.qs.as_ptr() as *const __m128i) };
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    let xv = _mm256_set_m128i(hi, lo);
    _mm256_madd_epi16(_mm256_maddubs_epi16(xv, yv), _mm256_set1_epi16(1))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_dot4_avx2(w: [&[WeightBlock]; 4], x: &[ActivationBlock]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let half =
        |v: __m256i| _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let mut acc = _mm_setzero_ps();
    for (i, y) in x.iter().enumerate() {
        // SAFETY: 32 bytes are read from an array of exactly that size (unaligned load).
        let yv = unsafe { _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i) };
        let (b0, b1, b2, b3) = (&w[0][i], &w[1][i], &w[2][i], &w[3][i]);
        let s0 = half(block_products(b0, yv));
        let s1 = half(block_products(b1, yv));
        let s2 = half(block_products(b2, yv));
        let s3 = half(block_products(b3, yv));
        // Integer sums are exact whatever the order: [sum0, sum1, sum2, sum3].
        let sums = _mm_hadd_epi32(_mm_hadd_epi32(s0, s1), _mm_hadd_epi32(s2, s3));
        // Per lane, the scalar expression: sumi * d * dy + m * s, no fused multiply-add.
        let d = _mm_set_ps(b3.d, b2.d, b1.d, b0.d);
        let m = _mm_set_ps(b3.m, b2.m, b1.m, b0.m);
        let t = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(sums), d), _mm_set1_ps(y.d));
        let u = _mm_mul_ps(m, _mm_set1_ps(y.s));
        acc = _mm_add_ps(acc, _mm_add_ps(t, u));
    }
    let mut out = [0f32; 4];
    // SAFETY: `out` holds exactly four f32.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_dot4x2_avx2(
    w: [&[WeightBlock]; 4],
    xa: &[ActivationBlock],
    xb: &[ActivationBlock],
) -> ([f32; 4], [f32; 4]) {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let unpack = |b: &WeightBlock| {
        // SAFETY: 16 bytes are read from an array of exactly that size (unaligned load).
        let q = unsafe { _mm_loadu_si128(b.qs.as_ptr() as *const __m128i) };
        _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16(q, 4), mask),
            _mm_and_si128(q, mask),
        )
    };
    let product = |x: __m256i, y: __m256i| {
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), ones);
        _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1))
    };
    let mut acc_a = _mm_setzero_ps();
    let mut acc_b = _mm_setzero_ps();
    for (i, (ya, yb)) in xa.iter().zip(xb).enumerate() {
        let (b0, b1, b2, b3) = (&w[0][i], &w[1][i], &w[2][i], &w[3][i]);
        let (x0, x1, x2, x3) = (unpack(b0), unpack(b1), unpack(b2), unpack(b3));
        let d = _mm_set_ps(b3.d, b2.d, b1.d, b0.d);
        let m = _mm_set_ps(b3.m, b2.m, b1.m, b0.m);
        for (y, acc) in [(ya, &mut acc_a), (yb, &mut acc_b)] {
            // SAFETY: 32 bytes are read from an array of exactly that size (unaligned load).
            let yv = unsafe { _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i) };
            let sums = _mm_hadd_epi32(
                _mm_hadd_epi32(product(x0, yv), product(x1, yv)),
                _mm_hadd_epi32(product(x2, yv), product(x3, yv)),
            );
            let t = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(sums), d), _mm_set1_ps(y.d));
            let u = _mm_mul_ps(m, _mm_set1_ps(y.s));
            *acc = _mm_add_ps(*acc, _mm_add_ps(t, u));
        }
    }
    let (mut a, mut b) = ([0f32; 4], [0f32; 4]);
    // SAFETY: each array holds exactly four f32.
    unsafe {
        _mm_storeu_ps(a.as_mut_ptr(), acc_a);
        _mm_storeu_ps(b.as_mut_ptr(), acc_b);
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn equals_candles_q4_1_matmul_bit_for_bit() {
        let device = Device::Cpu;
        // 74 columns: groups of four and a tail of two.
        let (n, k) = (74, 128);
        let w = Tensor::from_vec(values(n * k, 1), (n, k), &device).unwrap();
        let qw = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let ours = Q4_1Matrix::from_qtensor(&qw).unwrap().unwrap();
        let theirs = QMatMul::from_qtensor(qw).unwrap();
        for m in [1, 2, 3, 8] {
            let x = values(m * k, 7 + m as u64);
            let expected = theirs
                .forward(&Tensor::from_vec(x.clone(), (m, k), &device).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = ours.matmul(&x, m);
            assert_eq!(got, expected, "m = {m}");
        }
    }

    #[test]
    fn scalar_and_simd_agree() {
        let device = Device::Cpu;
        let w = Tensor::from_vec(values(4 * 64, 3), (4, 64), &device).unwrap();
        let qw = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let ours = Q4_1Matrix::from_qtensor(&qw).unwrap().unwrap();
        let xq: Vec<ActivationBlock> = values(64, 5).chunks_exact(QK).map(quantize_q8_1).collect();
        let rows: Vec<&[WeightBlock]> = ours.blocks.chunks(2).collect();
        for row in &rows {
            assert_eq!(row_dot_scalar(row, &xq), row_dot()(row, &xq));
        }
        let four = row_dot4()([rows[0], rows[1], rows[2], rows[3]], &xq);
        assert_eq!(four, [0, 1, 2, 3].map(|i| row_dot_scalar(rows[i], &xq)));
        let other: Vec<ActivationBlock> =
            values(64, 9).chunks_exact(QK).map(quantize_q8_1).collect();
        let (a, b) = row_dot4x2()([rows[0], rows[1], rows[2], rows[3]], &xq, &other);
        assert_eq!(a, four);
        assert_eq!(b, [0, 1, 2, 3].map(|i| row_dot_scalar(rows[i], &other)));
    }
}
