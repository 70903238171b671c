//! `exp` for attention's softmax, eight lanes at a time. A decode row at 1,000 tokens of context takes
//! some 276,000 exponentials per step (30 layers x 9 heads x the context), and the scalar `f32::exp`
//! call was a tenth of the step; this is Cephes' `expf` in AVX2 and FMA: `x = n ln 2 + r` with
//! `|r| <= ln 2 / 2`, a degree-6 polynomial for `e^r`, and `2^n` put into the exponent bits.
//!
//! **Accuracy:** relative error at most 2e-7 (under 2 ulp) against `f32::exp` for every `x` in
//! `[-87, 88]` (`tests::matches_f32_exp`). Below `-87.3` (where `e^x` is under 1.2e-38, a weight that
//! can no longer change an f32 sum) the result is clamped to `e^-87.3`'s neighbourhood instead of
//! going subnormal; softmax inputs are `score - max <= 0`, so the upper clamp never applies there.
//!
//! The portable path (no AVX2 or FMA) is `f32::exp` itself.

/// `x[i] = e^x[i]` for every value.
pub fn exp_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are present.
        unsafe { exp_in_place_avx2(x) };
        return;
    }
    for v in x.iter_mut() {
        *v = v.exp();
    }
}

/// [`exp_in_place`] eight at a time; a tail of fewer than eight goes through the same vector code
/// (padded), so a value's result never depends on where it sits in the slice.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_in_place_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = x.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // SAFETY: the chunk holds 8 floats.
        unsafe {
            let v = _mm256_loadu_ps(chunk.as_ptr());
            _mm256_storeu_ps(chunk.as_mut_ptr(), exp8(v));
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut pad = [0f32; 8];
        pad[..tail.len()].copy_from_slice(tail);
        // SAFETY: `pad` holds 8 floats.
        unsafe {
            let v = _mm256_loadu_ps(pad.as_ptr());
            _mm256_storeu_ps(pad.as_mut_ptr(), exp8(v));
        }
        tail.copy_from_slice(&pad[..tail.len()]);
    }
}

/// Eight exponentials (Cephes' `expf` constants).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // Clamped so that n + 127 stays a normal exponent (1..=254).
    let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.336_54));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // r = x - n ln 2, ln 2 in two parts so that n * C1 is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    // e^r = 1 + r + r^2 p(r)
    let r2 = _mm256_mul_ps(r, r);
    let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    // 2^n: n + 127 in the exponent field.
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(e, _mm256_castsi256_ps(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest relative error over a dense sweep of the range, every tail length included.
    #[test]
    fn matches_f32_exp() {
        let n = 2_000_000;
        let xs: Vec<f32> = (0..=n)
            .map(|i| -87.0 + 175.0 * i as f32 / n as f32)
            .chain([0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, -0.346_573_6, 0.346_573_6])
            .collect();
        let mut got = xs.clone();
        exp_in_place(&mut got);
        let mut worst = 0f64;
        for (x, e) in xs.iter().zip(&got) {
            let want = (*x as f64).exp();
            let rel = ((*e as f64 - want) / want).abs();
            worst = worst.max(rel);
            // f32::exp is itself within half an ulp or so of the truth: compare with both.
            let std = x.exp();
            assert!(
                ((e - std) / std).abs() < 2e-7,
                "exp({x}) = {e}, f32::exp says {std}"
            );
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        for len in 0..20 {
            let xs: Vec<f32> = (0..len).map(|i| -(i as f32) * 0.37).collect();
            let mut got = xs.clone();
            exp_in_place(&mut got);
            for (x, e) in xs.iter().zip(&got) {
                assert!(
                    ((e - x.exp()) / x.exp()).abs() < 2e-7,
                    "len {len}: exp({x})"
                );
            }
        }
    }

    /// Far below the range the result is tiny, never negative, NaN or large.
    #[test]
    fn very_negative_inputs_give_tiny_weights() {
        let mut xs = vec![-88.0f32, -100.0, -1e4, -1e30, f32::MIN];
        exp_in_place(&mut xs);
        for e in xs {
            assert!((0.0..1.2e-38).contains(&e), "{e}");
        }
    }
}
