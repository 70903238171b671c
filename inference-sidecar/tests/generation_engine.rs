//! The generation engine in process, on the real SmolLM2 weights: golden ids, the paged cache against a
//! recompute without cache, continuous batching against each sequence alone, and preemption with
//! recompute against an uninterrupted run. Equalities of ids, no timing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FRANCE_CHATML, FRANCE_GOLDEN, smollm2_gguf};
use lexserve_sidecar::generation::block_allocator::BlockId;
use lexserve_sidecar::generation::engine::{Engine, EngineConfig};
use lexserve_sidecar::generation::gguf::{LoadedGguf, load_gguf, load_gguf_with};
use lexserve_sidecar::generation::kv_cache::PagedKvCache;
use lexserve_sidecar::generation::model::SeqChunk;
use lexserve_sidecar::generation::model::Weights;
use lexserve_sidecar::generation::sampling::{SamplingParams, argmax};
use lexserve_sidecar::generation::speculative::{SpeculationConfig, SpeculationMode};
use lexserve_sidecar::generation::{FinishReason, GenerationEvent, GenerationRequest, Generator};
use lexserve_sidecar::metrics::Metrics;
use tokio::sync::mpsc::Receiver;

fn loaded() -> LoadedGguf {
    load_gguf(&smollm2_gguf()).expect("SmolLM2 loads")
}

/// A bytes budget that holds exactly `blocks` blocks of `block_size` tokens (SmolLM2: 46,080 bytes per
/// token).
fn budget(blocks: usize, block_size: usize) -> u64 {
    (blocks * block_size * 46_080) as u64
}

fn start_engine(config: EngineConfig) -> (Arc<Generator>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let (engine, generator) =
        Engine::new(loaded(), config, Arc::clone(&metrics)).expect("engine starts");
    std::thread::spawn(move || engine.run());
    (generator, metrics)
}

fn config(max_running: usize, blocks: usize, block_size: usize) -> EngineConfig {
    EngineConfig {
        max_running,
        step_tokens: 64,
        block_size,
        kv_cache_bytes: budget(blocks, block_size),
        max_new_tokens: 64,
        max_waiting: 64,
        // Tests read their streams one after another; none is ever abandoned.
        stall_timeout: Duration::from_secs(600),
        speculation: SpeculationConfig::off(),
    }
}

fn request(generator: &Generator, prompt: &str, max_new_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt_ids: generator.tokenizer.encode(prompt).unwrap(),
        sampling: SamplingParams::greedy(),
        max_new_tokens,
        stop: Vec::new(),
    }
}

struct Outcome {
    ids: Vec<u32>,
    text: String,
    reason: FinishReason,
}

fn next_token(
    receiver: &mut Receiver<GenerationEvent>,
    ids: &mut Vec<u32>,
    text: &mut String,
) -> Option<FinishReason> {
    match receiver.blocking_recv().expect("engine answers") {
        GenerationEvent::Token {
            id,
            text: delta,
            finish,
        } => {
            ids.push(id);
            text.push_str(&delta);
            finish.map(|f| f.reason)
        }
        GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
    }
}

fn finish(mut receiver: Receiver<GenerationEvent>, mut ids: Vec<u32>, mut text: String) -> Outcome {
    loop {
        if let Some(reason) = next_token(&mut receiver, &mut ids, &mut text) {
            return Outcome { ids, text, reason };
        }
    }
}

fn run(generator: &Generator, request: GenerationRequest) -> Outcome {
    finish(
        generator.submit(request).unwrap(),
        Vec::new(),
        String::new(),
    )
}

#[test]
fn greedy_chat_prompt_gives_the_golden_ids() {
    let (generator, metrics) = start_engine(config(4, 64, 16));
    let out = run(&generator, request(&generator, FRANCE_CHATML, 32));
    assert_eq!(out.ids, FRANCE_GOLDEN);
    assert_eq!(out.text, "The capital of France is Paris.");
    assert_eq!(out.reason, FinishReason::EndOfSequence);
    let text = metrics.encode().unwrap();
    assert!(text.contains("lexserve_generated_tokens_total 8"), "{text}");
}

/// Greedy ids from llama.cpp (llama-cpp-python 0.3.36, `Llama.generate` at temperature 0) on the same
/// GGUF, 16 tokens each: an independent implementation of the same model agrees token for token until
/// the two quantized kernels (llama.cpp's and candle's round activations differently) meet a near-tie;
/// the first 8 must agree. The first prompt is what the chat route sends for "What is the capital of
/// France?" (the template adds its default system turn, which sends this small model off into French).
#[test]
fn greedy_ids_match_llama_cpp() {
    let chat = format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n{FRANCE_CHATML}"
    );
    let cases: [(&str, [u32; 16]); 3] = [
        (
            &chat,
            [
                60, 23, 39614, 1141, 552, 28, 2618, 2828, 313, 7712, 769, 28, 2618, 2849, 1558, 28,
            ],
        ),
        (
            "The three primary colors are",
            [
                260, 3003, 4683, 282, 260, 35526, 2380, 1743, 42, 2382, 28, 4461, 28, 284, 2654, 30,
            ],
        ),
        (
            "def fibonacci(n):",
            [
                472, 585, 304, 1758, 216, 32, 42, 448, 1003, 216, 33, 472, 1003, 2822, 24, 38572,
            ],
        ),
    ];
    let (generator, _) = start_engine(config(4, 64, 16));
    let receivers: Vec<_> = cases
        .iter()
        .map(|(prompt, _)| generator.submit(request(&generator, prompt, 16)).unwrap())
        .collect();
    for ((prompt, expected), receiver) in cases.iter().zip(receivers) {
        let out = finish(receiver, Vec::new(), String::new());
        let agree = out
            .ids
            .iter()
            .zip(expected)
            .take_while(|(a, b)| a == b)
            .count();
        println!("{prompt:?}: {agree} of 16 agree: {:?}", out.ids);
        assert!(
            agree >= 8,
            "{prompt:?}: {:?} vs llama.cpp {expected:?}",
            out.ids
        );
    }
}

#[test]
fn stop_sequences_seeds_and_max_new_tokens() {
    let (generator, _) = start_engine(config(4, 64, 16));
    let mut stopped = request(&generator, FRANCE_CHATML, 32);
    stopped.stop = vec![" Paris".into()];
    let out = run(&generator, stopped);
    assert_eq!(out.reason, FinishReason::StopSequence);
    assert_eq!(out.text, "The capital of France is");

    let out = run(&generator, request(&generator, FRANCE_CHATML, 3));
    assert_eq!(
        (out.ids.as_slice(), out.reason),
        (&FRANCE_GOLDEN[..3], FinishReason::Length)
    );

    let sampled = |seed| {
        let mut r = request(&generator, "Once upon a time", 24);
        r.sampling = SamplingParams {
            temperature: 1.0,
            top_k: Some(50),
            top_p: 0.95,
            seed,
        };
        run(&generator, r).ids
    };
    assert_eq!(sampled(11), sampled(11), "same seed, same tokens");
    assert_ne!(sampled(11), sampled(12), "another seed, other tokens");
}

/// Greedy decoding with the paged cache (odd prefill chunks, scattered blocks), checked at every step
/// against a full recompute of the sequence with plain causal attention and no cache.
///
/// With f32 weights the two agree to 1e-3 in log-probability. With the quantized weights they agree
/// less closely, for a reason outside the cache: quantized matmuls round their input rows to int8, so
/// a last-bit difference between two attention implementations (different summation order) can move
/// a value across a rounding boundary, and 30 layers carry that step to the logits (measured: max
/// |d log p| about 1, the top token's probability within 0.05). There the greedy ids must still agree.
fn paged_against_recompute(weights: Weights) -> (f32, f32, Vec<u32>) {
    let m = load_gguf_with(&smollm2_gguf(), weights).unwrap();
    let prompt = m.tokenizer.encode(FRANCE_CHATML).unwrap();
    let block_size = 4;
    let mut cache = PagedKvCache::new(m.model.config.kv_shape(), block_size, 32);
    // Out of order and not contiguous, as a busy pool hands them out.
    let blocks: Vec<BlockId> = vec![9, 2, 17, 30, 5, 11, 0, 23, 14, 27, 3, 19];
    let mut ids = prompt.clone();
    // Prefill in chunks of 7, 1 and the rest.
    let mut cached = 0;
    let mut logits = Vec::new();
    for end in [7, 8, prompt.len()] {
        let chunk = SeqChunk {
            tokens: &ids[cached..end],
            start: cached,
            blocks: &blocks,
            logits: usize::from(end == prompt.len()),
        };
        logits = m.model.forward(&[chunk], &mut cache).unwrap();
        cached = end;
    }
    let (mut worst, mut worst_top) = (0f32, 0f32);
    loop {
        let full = m.model.forward_uncached(&ids).unwrap();
        let reference = full.last().unwrap();
        let paged = &logits[0];
        // Log-probabilities: what sampling sees (a shift of every logit changes nothing).
        let (paged_lp, reference_lp) = (log_softmax(paged), log_softmax(reference));
        let diff = paged_lp
            .iter()
            .zip(&reference_lp)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
        let top = argmax(reference) as usize;
        worst_top = worst_top.max((paged_lp[top].exp() - reference_lp[top].exp()).abs());
        assert_eq!(
            argmax(paged),
            argmax(reference),
            "greedy ids differ at {}",
            ids.len()
        );
        let next = argmax(paged);
        ids.push(next);
        if next == 2 || ids.len() - prompt.len() >= 12 {
            break;
        }
        let chunk = SeqChunk {
            tokens: &ids[cached..],
            start: cached,
            blocks: &blocks,
            logits: 1,
        };
        logits = m.model.forward(&[chunk], &mut cache).unwrap();
        cached = ids.len();
    }
    (worst, worst_top, ids[prompt.len()..].to_vec())
}

#[test]
fn paged_cache_matches_a_recompute_without_cache() {
    let (worst, _, ids) = paged_against_recompute(Weights::Dequantized);
    assert!(
        worst < 1e-3,
        "f32 weights: log-probabilities differ by up to {worst}"
    );
    assert_eq!(ids, FRANCE_GOLDEN);
    let (worst, worst_top, ids) = paged_against_recompute(Weights::Quantized);
    assert!(
        worst < 2.0,
        "quantized: log-probabilities differ by up to {worst}"
    );
    assert!(
        worst_top < 0.1,
        "quantized: top-token probability differs by {worst_top}"
    );
    assert_eq!(ids, FRANCE_GOLDEN);
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    logits.iter().map(|l| l - max - sum.ln()).collect()
}

const PROMPTS: [&str; 4] = [
    FRANCE_CHATML,
    "The three primary colors are",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
];

#[test]
fn sequences_joining_a_batch_at_different_steps_match_each_alone() {
    let (generator, metrics) = start_engine(config(8, 256, 16));
    let alone: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| run(&generator, request(&generator, p, 20)).ids)
        .collect();
    // A starts; B joins after A's second token; C and D join together after B's first.
    let mut a = generator
        .submit(request(&generator, PROMPTS[0], 20))
        .unwrap();
    let (mut a_ids, mut a_text) = (Vec::new(), String::new());
    for _ in 0..2 {
        assert!(next_token(&mut a, &mut a_ids, &mut a_text).is_none());
    }
    let mut b = generator
        .submit(request(&generator, PROMPTS[1], 20))
        .unwrap();
    let (mut b_ids, mut b_text) = (Vec::new(), String::new());
    assert!(next_token(&mut b, &mut b_ids, &mut b_text).is_none());
    let c = generator
        .submit(request(&generator, PROMPTS[2], 20))
        .unwrap();
    let d = generator
        .submit(request(&generator, PROMPTS[3], 20))
        .unwrap();
    let together = [
        finish(a, a_ids, a_text).ids,
        finish(b, b_ids, b_text).ids,
        finish(c, Vec::new(), String::new()).ids,
        finish(d, Vec::new(), String::new()).ids,
    ];
    for (i, (t, a)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(t, a, "prompt {i} in a batch vs alone");
    }
    // They really ran together: some step carried more than one sequence.
    let text = metrics.encode().unwrap();
    let single =
        common::http::metric_value(&text, "lexserve_batch_size_bucket{le=\"1.0\"}").unwrap();
    let all = common::http::metric_value(&text, "lexserve_batch_size_count").unwrap();
    assert!(all > single, "no multi-sequence step:\n{text}");
}

#[test]
fn preempted_sequences_recompute_to_the_same_ids() {
    // 12 blocks of 4 tokens: each sequence alone fits (prompt + 24 new tokens < 48), three at once do
    // not, so the newest are preempted and recomputed.
    let (generator, metrics) = start_engine(config(3, 12, 4));
    let prompts = [PROMPTS[1], PROMPTS[3], "Water boils at"];
    let make = |p: &str| {
        let mut r = request(&generator, p, 24);
        // Sampled, to check that the generator's state survives the recompute too.
        r.sampling = SamplingParams {
            temperature: 0.8,
            top_k: None,
            top_p: 1.0,
            seed: 5,
        };
        r
    };
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run(&generator, make(p)).ids)
        .collect();
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| generator.submit(make(p)).unwrap())
        .collect();
    let together: Vec<Vec<u32>> = receivers
        .into_iter()
        .map(|r| finish(r, Vec::new(), String::new()).ids)
        .collect();
    let text = metrics.encode().unwrap();
    let preemptions = common::http::metric_value(&text, "lexserve_preemptions_total").unwrap();
    assert!(preemptions > 0.0, "the pool was meant to run out:\n{text}");
    assert_eq!(together, alone);
    assert_eq!(
        common::http::metric_value(&text, "lexserve_kv_cache_usage_ratio"),
        Some(0.0)
    );
    assert_eq!(
        common::http::metric_value(&text, "lexserve_kv_cache_block_errors_total"),
        Some(0.0),
        "preemption and recompute return every block once"
    );
}

/// A prompt whose answer copies from it: what prompt-lookup drafting is for. (SmolLM2-135M does not
/// follow "repeat this text" in a chat turn, it paraphrases; a one-shot pattern it copies.)
const COPY_PROMPT: &str = "Copy the text.\nText: The cat sat on the mat and looked at the door.\nCopy: The cat sat on the mat and looked at the door.\nText: Kubernetes schedules pods onto nodes with enough free resources. The scheduler filters the nodes that fit, scores the rest, and binds the pod to the best one.\nCopy:";

fn speculative(config: EngineConfig, max_draft_tokens: usize) -> EngineConfig {
    EngineConfig {
        speculation: SpeculationConfig {
            mode: SpeculationMode::Ngram,
            max_draft_tokens,
        },
        ..config
    }
}

/// `lexserve_<name>_total`'s value in the exposition.
fn counter(metrics: &Metrics, name: &str) -> u64 {
    let text = metrics.encode().unwrap();
    let prefix = format!("lexserve_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A row's logits in a chunk of several rows are, bit for bit, those of the same token fed alone
/// (what makes verifying a draft in one chunk exact): the prompt's last 5 tokens fed as one chunk
/// asking for 5 rows of logits, against the same 5 fed one step at a time into another cache.
#[test]
fn logits_of_a_rows_in_a_chunk_equal_the_single_row_decode_bit_for_bit() {
    let m = loaded();
    assert!(
        m.model.rows_are_independent(),
        "SmolLM2's Q4_1/Q8_0 products"
    );
    let prompt = m.tokenizer.encode(COPY_PROMPT).unwrap();
    let split = prompt.len() - 5;
    let blocks: Vec<BlockId> = (0..8).collect();
    let prefill = |cache: &mut PagedKvCache| {
        m.model
            .forward(
                &[SeqChunk {
                    tokens: &prompt[..split],
                    start: 0,
                    blocks: &blocks,
                    logits: 0,
                }],
                cache,
            )
            .unwrap()
    };
    let mut chunked_cache = PagedKvCache::new(m.model.config.kv_shape(), 16, 8);
    assert!(prefill(&mut chunked_cache).is_empty(), "no rows asked for");
    // Another sequence shares the step, as in serving.
    let other: Vec<BlockId> = vec![7];
    let chunked = m
        .model
        .forward(
            &[
                SeqChunk {
                    tokens: &prompt[..3],
                    start: 0,
                    blocks: &other,
                    logits: 1,
                },
                SeqChunk {
                    tokens: &prompt[split..],
                    start: split,
                    blocks: &blocks,
                    logits: 5,
                },
            ],
            &mut chunked_cache,
        )
        .unwrap();
    assert_eq!(
        chunked.len(),
        6,
        "one row for the first chunk, five for the second"
    );
    let mut single_cache = PagedKvCache::new(m.model.config.kv_shape(), 16, 8);
    prefill(&mut single_cache);
    for (i, p) in (split..prompt.len()).enumerate() {
        let alone = m
            .model
            .forward(
                &[SeqChunk {
                    tokens: &prompt[p..=p],
                    start: p,
                    blocks: &blocks,
                    logits: 1,
                }],
                &mut single_cache,
            )
            .unwrap();
        assert!(
            alone[0] == chunked[1 + i],
            "row {i} of the chunk differs from the single-row decode"
        );
    }
}

/// Greedy ids with n-gram speculation are the plain ids, on a prompt whose answer copies from it
/// (drafts accepted: several tokens per step) and on ordinary ones (drafts mostly rejected).
#[test]
fn speculation_gives_the_plain_greedy_ids() {
    let prompts = [
        COPY_PROMPT,
        FRANCE_CHATML,
        "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
        "def fibonacci(n):",
    ];
    let (plain, _) = start_engine(config(4, 64, 16));
    let expected: Vec<Outcome> = prompts
        .iter()
        .map(|p| run(&plain, request(&plain, p, 48)))
        .collect();
    println!("the copy prompt's answer: {:?}", expected[0].text);
    for max_draft in [1, 4, 8] {
        let (generator, metrics) = start_engine(speculative(config(4, 64, 16), max_draft));
        for (i, (prompt, expected)) in prompts.iter().zip(&expected).enumerate() {
            let out = run(&generator, request(&generator, prompt, 48));
            assert_eq!(out.ids, expected.ids, "{prompt:?}, drafts of {max_draft}");
            assert_eq!(out.text, expected.text);
            assert_eq!(out.reason, expected.reason);
            if i == 0 {
                let accepted = counter(&metrics, "speculative_accepted_tokens");
                println!(
                    "drafts of {max_draft}: {accepted} of {} drafted tokens accepted on the copy prompt",
                    counter(&metrics, "speculative_draft_tokens")
                );
                assert!(accepted > 0, "the copy prompt's drafts are accepted");
            }
        }
        assert_eq!(
            counter(&metrics, "generated_tokens"),
            expected.iter().map(|o| o.ids.len() as u64).sum::<u64>(),
            "every token counted once"
        );
    }
    // Several sequences speculating in the same steps, with a small pool that cannot always give
    // a draft its blocks.
    let (generator, _) = start_engine(speculative(config(4, 40, 4), 6));
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| generator.submit(request(&generator, p, 48)).unwrap())
        .collect();
    for ((receiver, expected), prompt) in receivers.into_iter().zip(&expected).zip(prompts) {
        let out = finish(receiver, Vec::new(), String::new());
        assert_eq!(out.ids, expected.ids, "{prompt:?} in a batch");
    }
}

/// Seeded sampling with speculation draws the same tokens: the sampler draws once per emitted
/// token, in the same order.
#[test]
fn speculation_gives_the_plain_seeded_samples() {
    let sampled = |generator: &Generator, prompt: &str, seed| {
        let mut r = request(generator, prompt, 40);
        r.sampling = SamplingParams {
            temperature: 0.7,
            top_k: Some(40),
            top_p: 0.95,
            seed,
        };
        run(generator, r)
    };
    let (plain, _) = start_engine(config(4, 64, 16));
    let (fast, metrics) = start_engine(speculative(config(4, 64, 16), 6));
    for seed in [1, 2, 3] {
        for prompt in [COPY_PROMPT, "Once upon a time"] {
            let (a, b) = (sampled(&plain, prompt, seed), sampled(&fast, prompt, seed));
            assert_eq!(a.ids, b.ids, "{prompt:?}, seed {seed}");
            assert_eq!(a.text, b.text);
        }
    }
    assert!(counter(&metrics, "speculative_accepted_tokens") > 0);
}

/// A stop sequence or the token limit reached inside an accepted draft ends the output exactly
/// where plain decoding ends it: nothing after the finish is emitted.
#[test]
fn a_finish_inside_an_accepted_draft_ends_the_output_where_plain_decoding_does() {
    let (plain, _) = start_engine(config(4, 64, 16));
    let (fast, metrics) = start_engine(speculative(config(4, 64, 16), 8));
    let full = run(&plain, request(&plain, COPY_PROMPT, 24));
    let words: Vec<&str> = full.text.split_inclusive(' ').collect();
    assert!(words.len() > 8, "{:?}", full.text);
    let mut checked = 0;
    // Stop strings ending at each word of the copied text, and every token limit: with drafts of
    // up to 8 accepted, most land inside a draft.
    for n in 2..words.len() {
        let stop = words[n - 1].trim().to_string();
        if stop.is_empty() || words[..n - 1].iter().any(|w| w.contains(&stop)) {
            continue;
        }
        let mut a = request(&plain, COPY_PROMPT, 24);
        a.stop = vec![stop.clone()];
        let mut b = request(&fast, COPY_PROMPT, 24);
        b.stop = vec![stop.clone()];
        let (a, b) = (run(&plain, a), run(&fast, b));
        assert_eq!(
            (&a.ids, &a.text, a.reason),
            (&b.ids, &b.text, b.reason),
            "stop {stop:?}"
        );
        assert_eq!(b.reason, FinishReason::StopSequence);
        checked += 1;
    }
    assert!(checked > 5);
    for limit in 1..full.ids.len() {
        let out = run(&fast, request(&fast, COPY_PROMPT, limit));
        assert_eq!(out.ids, full.ids[..limit], "max_new_tokens {limit}");
        assert_eq!(out.reason, FinishReason::Length);
    }
    assert!(counter(&metrics, "speculative_accepted_tokens") > 0);
}
