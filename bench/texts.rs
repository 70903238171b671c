//! Sentences the benchmark sends: short (~10 tokens) and long (~70-80 tokens).

pub const SHORT: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog.",
    "I loved every minute of this film.",
    "Where is the nearest train station?",
    "The meeting has been moved to Thursday.",
    "This coffee is far too bitter for me.",
    "Our team shipped the release on time.",
    "Please reset my password.",
    "The weather is lovely today.",
];

pub const LONG: [&str; 4] = [
    "Kubernetes operators encode the knowledge of how to run a piece of software into a controller that watches custom resources, compares the desired state they declare with what is actually running in the cluster, and takes the actions a human operator would otherwise take by hand, such as creating deployments, rotating credentials, scaling replicas, or rolling back a release that failed its health checks.",
    "The restaurant was recommended by several friends, so we booked a table weeks in advance; the starters were inventive and beautifully presented, but the main courses arrived lukewarm after a long wait, the service became noticeably distracted as the evening went on, and by the time dessert came we had mostly lost our appetite for the whole experience.",
    "Dynamic batching groups requests that arrive close together into a single forward pass of the model, trading a small and bounded amount of queueing delay for much better use of the matrix multiplication units, which is why an inference server under load can answer many more requests per second than a simple loop that runs the model once for every incoming request.",
    "After three days of heavy rain the river rose above its banks in several places along the valley, closing the main road between the two villages, flooding the cellars of houses near the old bridge, and forcing the local council to open the school gymnasium as a shelter for families who could not safely stay in their homes overnight.",
];

/// Texts in the mixed workload.
pub const MIXED_TEXTS: usize = 256;

/// Seed of the mixed workload: every run (and the raw loop) sends the same texts in the same order.
pub const MIXED_SEED: u64 = 0x1e55_e4e5;

/// The mixed-length workload: [`MIXED_TEXTS`] texts of about 5 to 256 tokens, in a fixed
/// pseudo-random order (seed [`MIXED_SEED`]). Lengths are log-uniform, as in real traffic: many
/// queries and titles, fewer paragraphs, a few long documents that hit the model's 256-token limit.
/// Each text is a run of words from [`SHORT`] and [`LONG`] (about 1.2 tokens a word, plus two
/// special tokens), so the vocabulary is the other workloads'.
pub fn mixed() -> Vec<String> {
    let words: Vec<&str> = SHORT
        .iter()
        .chain(LONG.iter())
        .flat_map(|s| s.split_whitespace())
        .collect();
    let mut state = MIXED_SEED;
    // xorshift64*: a fixed sequence without a dependency.
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..MIXED_TEXTS)
        .map(|_| {
            let unit = (next() >> 11) as f64 / (1u64 << 53) as f64;
            // 3 to 240 words, log-uniform: ~5 to ~256 tokens after tokenization and truncation.
            let count = (3.0f64 * (80.0f64).powf(unit)).round() as usize;
            let start = (next() % words.len() as u64) as usize;
            (0..count)
                .map(|i| words[(start + i) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}
