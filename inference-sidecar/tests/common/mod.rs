//! Shared helpers for the sidecar's tests, one place each: where the models are and the server
//! arguments that load them (here), a sidecar process started on a free port and stopped when dropped
//! ([`sidecar`]), talking to it over HTTP ([`http`]), running `fetch` as the init container does
//! ([`fetch`]), making a classifier to serve ([`classifier_training`]), and clients that misbehave
//! on purpose over raw TCP ([`raw`]).
#![allow(dead_code)]

pub mod classifier_training;
pub mod fetch;
pub mod http;
pub mod raw;
pub mod sidecar;

use std::path::PathBuf;

use lexserve_testkit::{MINILM, MINILM_FP32_ONNX, MINILM_INT8_ONNX, SMOLLM2_GGUF, locate, require};

/// The models and ONNX Runtime, where `scripts/setup-models.sh` puts them (lexserve-testkit
/// knows where, for every crate's tests).
pub fn minilm_dir() -> PathBuf {
    require(locate(MINILM))
}

pub fn minilm_int8_onnx() -> PathBuf {
    require(locate(MINILM_INT8_ONNX))
}

pub fn ort_dylib() -> PathBuf {
    require(lexserve_testkit::ort_dylib())
}

/// Server arguments for the int8 ONNX MiniLM embedder.
pub fn onnx_embed_args() -> Vec<String> {
    vec![
        "--model-uri".into(),
        format!("file://{}", minilm_int8_onnx().display()),
        "--tokenizer".into(),
        format!("file://{}", minilm_dir().join("tokenizer.json").display()),
        "--quantize".into(),
        "int8".into(),
        "--model-name".into(),
        "minilm".into(),
        "--ort-dylib-path".into(),
        ort_dylib().display().to_string(),
    ]
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A resolved serve config from flags, for in-process pipelines.
pub fn serve_config(args: &[String]) -> lexserve_sidecar::config::ServeConfig {
    use clap::Parser;
    let mut argv = vec!["serve".to_string()];
    argv.extend(args.iter().cloned());
    let parsed = lexserve_sidecar::cli::ServeArgs::try_parse_from(argv).expect("flags parse");
    lexserve_sidecar::config::ServeConfig::resolve(
        lexserve_sidecar::config::ConfigFile::default(),
        &parsed,
    )
    .expect("config resolves")
}

pub fn candle_embed_args() -> Vec<String> {
    vec![
        "--model-uri".into(),
        format!("file://{}", minilm_dir().display()),
        "--model-format".into(),
        "safetensors".into(),
        "--model-name".into(),
        "minilm".into(),
    ]
}

/// Sentences for agreement checks: short, long, punctuation, non-ASCII.
pub const SENTENCES: [&str; 12] = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street.",
    "Kubernetes schedules pods onto nodes with enough free resources.",
    "I really did not enjoy the second half of that movie.",
    "Die Katze schläft auf dem Sofa.",
    "What is the capital of France?",
    "Stock markets fell sharply after the announcement, wiping out a week of gains across Asia and Europe.",
    "ok",
    "Emojis like 🚀 and accented letters such as café should not break anything.",
    "The sidecar batches requests by a token budget and pads each batch to its longest member.",
    "Rain is expected tomorrow afternoon.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
];

/// The fp32 ONNX export scripts/setup-models.sh generates from the safetensors weights.
pub fn minilm_fp32_onnx() -> PathBuf {
    require(locate(MINILM_FP32_ONNX))
}

pub fn onnx_fp32_embed_args() -> Vec<String> {
    vec![
        "--model-uri".into(),
        format!("file://{}", minilm_fp32_onnx().display()),
        "--tokenizer".into(),
        format!("file://{}", minilm_dir().join("tokenizer.json").display()),
        "--ort-dylib-path".into(),
        ort_dylib().display().to_string(),
    ]
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (scripts/setup-models.sh).
pub fn smollm2_gguf() -> PathBuf {
    require(locate(SMOLLM2_GGUF))
}

/// One user turn in SmolLM2's ChatML, without the default system turn its template adds.
pub const FRANCE_CHATML: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

/// Greedy ids for [`FRANCE_CHATML`] ("The capital of France is Paris.").
pub const FRANCE_GOLDEN: [u32; 8] = [504, 3575, 282, 4649, 314, 7042, 30, 2];

/// Server arguments for SmolLM2 generation.
pub fn smollm2_args() -> Vec<String> {
    vec![
        "--model-uri".into(),
        format!("file://{}", smollm2_gguf().display()),
        "--task".into(),
        "generate".into(),
        "--model-name".into(),
        "smollm2".into(),
    ]
}
