//! Choosing the next token from logits: greedy, or temperature with top-k and top-p, drawn from a
//! seeded generator that lives with the sequence (so a preempted and recomputed sequence, or a repeat
//! request with the same seed, draws the same numbers).

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (None: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1.0: all).
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == Some(1)
    }
}

/// SplitMix64: small, fast, and its whole state is one number, which is all a sampler needs.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

/// Index of the largest value; the lowest index wins a tie, so greedy decoding is deterministic.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = SplitMix64::new(params.seed);
        Self { params, rng }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() || logits.is_empty() {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, l)| (i as u32, l / t))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if let Some(k) = self.params.top_k
            && k < candidates.len()
        {
            candidates.select_nth_unstable_by(k, by_logit_desc);
            candidates.truncate(k);
        }
        candidates.sort_by(by_logit_desc);
        let max = candidates[0].1;
        let mut probs: Vec<f64> = candidates
            .iter()
            .map(|c| f64::from(c.1 - max).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let keep = if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= f64::from(self.params.top_p)
                })
                .map_or(probs.len(), |i| i + 1)
        } else {
            probs.len()
        };
        let kept: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f64() * kept;
        for (c, p) in candidates[..keep].iter().zip(&probs) {
            if r < *p {
                return c.0;
            }
            r -= p;
        }
        candidates[keep - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: Option<usize>, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    const LOGITS: [f32; 5] = [1.0, 3.0, 2.5, -1.0, 0.5];

    #[test]
    fn greedy_takes_the_largest_and_the_first_of_ties() {
        assert_eq!(Sampler::new(SamplingParams::greedy()).sample(&LOGITS), 1);
        assert_eq!(argmax(&[2.0, 5.0, 5.0]), 1);
        assert_eq!(
            Sampler::new(params(1.0, Some(1), 1.0, 9)).sample(&LOGITS),
            1
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, None, 1.0, seed));
            (0..50).map(|_| s.sample(&LOGITS)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_limit_the_candidates() {
        let mut s = Sampler::new(params(5.0, Some(2), 1.0, 1));
        for _ in 0..200 {
            assert!(matches!(s.sample(&LOGITS), 1 | 2));
        }
        // p(1) ~ 0.52, p(2) ~ 0.31 at t=1: top_p 0.5 keeps only token 1.
        let mut s = Sampler::new(params(1.0, None, 0.5, 1));
        for _ in 0..200 {
            assert_eq!(s.sample(&LOGITS), 1);
        }
        let mut s = Sampler::new(params(1.0, None, 0.8, 1));
        for _ in 0..200 {
            assert!(matches!(s.sample(&LOGITS), 1 | 2));
        }
    }

    #[test]
    fn temperature_follows_the_distribution() {
        let mut s = Sampler::new(params(1.0, None, 1.0, 3));
        let mut counts = [0usize; 5];
        for _ in 0..20_000 {
            counts[s.sample(&LOGITS) as usize] += 1;
        }
        let z: f64 = LOGITS.iter().map(|l| f64::from(*l).exp()).sum();
        for (i, c) in counts.iter().enumerate() {
            let expected = f64::from(LOGITS[i]).exp() / z;
            let observed = *c as f64 / 20_000.0;
            assert!(
                (observed - expected).abs() < 0.02,
                "token {i}: {observed} vs {expected}"
            );
        }
    }
}
