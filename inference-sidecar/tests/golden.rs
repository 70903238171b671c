//! Numbers that must not drift: the MiniLM golden embedding through candle (fp32), and agreement of
//! the int8 ONNX export with it.

mod common;

use std::time::Instant;

use common::{
    SENTENCES, candle_embed_args, cosine, onnx_embed_args, onnx_fp32_embed_args, serve_config,
};
use lexserve_sidecar::encoder::pipeline::Pipeline;

const GOLDEN_TEXT: &str = "The quick brown fox jumps over the lazy dog.";
const GOLDEN_PREFIX: [f32; 4] = [0.0439336, 0.0589344, 0.0481784, 0.0775481];

#[test]
fn candle_fp32_matches_the_golden_embedding() {
    let mut pipeline =
        Pipeline::load(&serve_config(&candle_embed_args())).expect("load candle MiniLM");
    let embedding = pipeline.embed(&[GOLDEN_TEXT], 1).expect("embed").remove(0);
    assert_eq!(embedding.len(), 384);
    for (got, want) in embedding.iter().zip(GOLDEN_PREFIX) {
        assert!(
            (got - want).abs() < 1e-5,
            "got {:?}, want {GOLDEN_PREFIX:?}",
            &embedding[..4]
        );
    }
    // Batched with longer texts (so padded), the answer is the same.
    let batch = pipeline
        .embed(&[SENTENCES[6], GOLDEN_TEXT, SENTENCES[2]], 3)
        .expect("embed batch");
    for (got, want) in batch[1].iter().zip(&embedding) {
        assert!((got - want).abs() < 1e-5);
    }
}

#[test]
fn onnx_fp32_matches_the_golden_embedding_and_candle() {
    let mut onnx =
        Pipeline::load(&serve_config(&onnx_fp32_embed_args())).expect("load fp32 ONNX MiniLM");
    let golden = onnx.embed(&[GOLDEN_TEXT], 1).expect("embed").remove(0);
    for (got, want) in golden.iter().zip(GOLDEN_PREFIX) {
        assert!(
            (got - want).abs() < 1e-5,
            "got {:?}, want {GOLDEN_PREFIX:?}",
            &golden[..4]
        );
    }
    let mut candle =
        Pipeline::load(&serve_config(&candle_embed_args())).expect("load candle MiniLM");
    let from_onnx = onnx.embed(&SENTENCES, SENTENCES.len()).expect("onnx");
    let from_candle = candle.embed(&SENTENCES, SENTENCES.len()).expect("candle");
    let worst = from_onnx
        .iter()
        .zip(&from_candle)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    eprintln!("fp32 ONNX vs candle: largest difference {worst:e}");
    assert!(worst <= 1e-5, "fp32 ONNX and candle differ by {worst}");
}

#[test]
fn int8_onnx_agrees_with_fp32_onnx() {
    let mut fp32 = Pipeline::load(&serve_config(&onnx_fp32_embed_args())).expect("load fp32 ONNX");
    let mut int8 = Pipeline::load(&serve_config(&onnx_embed_args())).expect("load int8 ONNX");
    let reference = fp32.embed(&SENTENCES, SENTENCES.len()).expect("fp32");
    let quantized = int8.embed(&SENTENCES, SENTENCES.len()).expect("int8");
    let cosines: Vec<f64> = reference
        .iter()
        .zip(&quantized)
        .map(|(a, b)| cosine(a, b))
        .collect();
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!("int8 vs fp32 ONNX cosine: min {min:.5}, mean {mean:.5}");
    assert!(mean >= 0.999 && min >= 0.99, "{cosines:?}");
}

#[test]
fn int8_onnx_agrees_with_fp32_candle() {
    let mut fp32 = Pipeline::load(&serve_config(&candle_embed_args())).expect("load candle MiniLM");
    let mut int8 =
        Pipeline::load(&serve_config(&onnx_embed_args())).expect("load int8 ONNX MiniLM");
    let started = Instant::now();
    let reference = fp32.embed(&SENTENCES, SENTENCES.len()).expect("fp32");
    let fp32_time = started.elapsed();
    let started = Instant::now();
    let quantized = int8.embed(&SENTENCES, SENTENCES.len()).expect("int8");
    let int8_time = started.elapsed();
    let cosines: Vec<f64> = reference
        .iter()
        .zip(&quantized)
        .map(|(a, b)| cosine(a, b))
        .collect();
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    // Figures for the record (not asserted): debug builds make candle look much slower than it is.
    for (sentence, c) in SENTENCES.iter().zip(&cosines) {
        eprintln!("{c:.5}  {sentence}");
    }
    eprintln!(
        "int8 vs fp32 cosine: min {min:.5}, mean {mean:.5}; batch of {}: fp32 candle {fp32_time:?}, int8 onnx {int8_time:?}",
        SENTENCES.len()
    );
    // int8 weight quantization costs a little per sentence (the worst of these is ~0.996: very short
    // and emoji-heavy inputs), while the set as a whole agrees to 0.999.
    assert!(
        mean >= 0.999,
        "int8 and fp32 disagree on average: {cosines:?}"
    );
    assert!(
        min >= 0.99,
        "int8 and fp32 disagree on some sentence: {cosines:?}"
    );
}
