//! A/A simulation: with no true difference, an experiment looked at every interval must reject at
//! most alpha of the time with the always-valid test; a naive z-test checked at every look does not
//! (printed beside it, to show why the default analysis is sequential).

use super::Alternative;
use super::proportions::{Proportion, two_proportion_ztest};
use super::sequential::confidence_sequence;

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator, enough for a simulation.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) from the top 53 bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn binomial(&mut self, n: u64, p: f64) -> u64 {
        (0..n).filter(|_| self.next_f64() < p).count() as u64
    }
}

const SEED: u64 = 14;
const EXPERIMENTS: usize = 2_000;
const LOOKS: u64 = 50;
const PER_ARM_PER_LOOK: u64 = 100;
const RATE: f64 = 0.10;
const ALPHA: f64 = 0.05;

#[test]
fn aa_false_positive_rate_stays_at_alpha_with_the_sequential_test() {
    let mut rng = SplitMix64(SEED);
    let tuning_n = (2 * LOOKS * PER_ARM_PER_LOOK) as f64;
    let (mut naive_fp, mut sequential_fp, mut final_fp) = (0usize, 0usize, 0usize);
    for _ in 0..EXPERIMENTS {
        let (mut t, mut c) = (
            Proportion {
                successes: 0,
                trials: 0,
            },
            Proportion {
                successes: 0,
                trials: 0,
            },
        );
        let (mut naive, mut sequential, mut last) = (false, false, false);
        for _ in 0..LOOKS {
            t.successes += rng.binomial(PER_ARM_PER_LOOK, RATE);
            c.successes += rng.binomial(PER_ARM_PER_LOOK, RATE);
            t.trials += PER_ARM_PER_LOOK;
            c.trials += PER_ARM_PER_LOOK;
            // A degenerate look (all zeros) is "no decision", as the controller treats it.
            let Ok(z) = two_proportion_ztest(t, c, Alternative::TwoSided, ALPHA) else {
                continue;
            };
            last = z.p_value <= ALPHA;
            naive |= last;
            if let Ok(cs) =
                confidence_sequence(z.diff, z.se * z.se, t.trials + c.trials, tuning_n, ALPHA)
            {
                sequential |= cs.p_value <= ALPHA;
            }
        }
        naive_fp += naive as usize;
        sequential_fp += sequential as usize;
        final_fp += last as usize;
    }
    let rate = |k: usize| k as f64 / EXPERIMENTS as f64;
    println!(
        "A/A, seed {SEED}: {EXPERIMENTS} experiments x {LOOKS} looks ({PER_ARM_PER_LOOK} per arm per \
         look, rate {RATE}, alpha {ALPHA}): false-positive rate naive z at every look {:.3}, \
         fixed horizon (last look only) {:.3}, always-valid sequence {:.3}",
        rate(naive_fp),
        rate(final_fp),
        rate(sequential_fp)
    );
    assert!(
        rate(sequential_fp) <= ALPHA,
        "sequential FPR {} above alpha",
        rate(sequential_fp)
    );
    // Why: peeking with a fixed-horizon test inflates the error several-fold.
    assert!(rate(naive_fp) > 2.0 * ALPHA, "naive FPR {}", rate(naive_fp));
}
