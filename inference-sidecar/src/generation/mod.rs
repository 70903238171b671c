//! Text generation: a llama-family GGUF decoder served with continuous batching over a paged KV cache.
//!
//! - [`model`]: the decoder forward (batched rows from many sequences, each at its own position).
//! - [`quant_matmul`]: Q4_1 and Q8_0 weight products, batched (candle has no SIMD Q4_1 kernel on x86).
//! - [`kv_cache`], [`block_allocator`], [`paged_attention`]: the cache in fixed-size blocks.
//! - [`fast_exp`]: attention's softmax exponentials, eight at a time.
//! - [`prefix_cache`]: full blocks of computed prefixes, shared by reference (a system prompt once).
//! - [`scheduler`]: which sequences run each step, admission, preemption (pure bookkeeping).
//! - [`speculative`]: speculative decoding by prompt lookup: drafts, their verification, back-off.
//! - [`draft_model`]: speculative decoding with a draft model sharing the block tables.
//! - [`gguf`]: loading the model, its tokenizer and chat template from a GGUF file.
//! - [`engine`]: the loop that owns the model and the cache and streams tokens to clients.
//! - [`generator`]: the clients' handle on the engine: requests, limits, the queue, event streams.
//! - [`sampling`], [`stopping`], [`tokenizer`], [`chat_template`]: from logits to text and back.

pub mod block_allocator;
pub mod chat_template;
pub mod draft_model;
pub mod engine;
pub mod fast_exp;
pub mod generator;
pub mod gguf;
pub mod kv_cache;
pub mod model;
pub mod paged_attention;
pub mod prefix_cache;
pub mod quant_matmul;
pub mod sampling;
pub mod scheduler;
pub mod speculative;
pub mod stopping;
pub mod tokenizer;

pub use generator::{
    Finish, FinishReason, GenerationEvent, GenerationRequest, Generator, GeneratorLimits,
    STREAM_BUFFER_EVENTS, SubmitError,
};

/// Deterministic pseudo-random values in `[-amplitude / 2, amplitude / 2)` from a 64-bit linear
/// congruential generator seeded with `seed`: test inputs that are the same on every run.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64, amplitude: f32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amplitude
        })
        .collect()
}
