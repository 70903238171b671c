//! Running a reference sample through the loaded model at start-up: the encoder's pipeline
//! directly, in padded batches (not through the HTTP path or the batching queue, so nothing of it
//! reaches the live series), or the generation tokenizer for prompts. Each value is computed by
//! the same function the live path uses (the tokenizer's truncation and unknown-token count, the
//! head's pre-normalization norm, [`argmax`], [`cosine`]) and binned by [`BinCounts`], which
//! bins as the live histograms do.

use lexserve_contract::drift::{
    CENTROID_COSINE_BUCKETS, CONFIDENCE_BUCKETS, EMBEDDING_NORM_BUCKETS, Feature,
    GENERATION_TOKEN_BUCKETS, INPUT_TOKEN_BUCKETS, unknown_bin,
};

use super::baseline::Baseline;
use super::bins::BinCounts;
use super::centroid::{centroid, cosine};
use crate::config::ModelTask;
use crate::encoder::backend::PaddedBatch;
use crate::encoder::batching::worker::run_batch;
use crate::encoder::head::Inference;
use crate::encoder::pipeline::Pipeline;
use crate::encoder::service::argmax;
use crate::generation::tokenizer::GgufTokenizer;

/// An encoder's baseline, and for embed the centroid live embeddings are compared with.
#[derive(Debug)]
pub struct EncoderBaseline {
    pub baseline: Baseline,
    pub centroid: Option<Vec<f32>>,
}

/// Runs `inputs` through `pipeline`, `batch_texts` at a time.
pub fn encoder_baseline(
    pipeline: &mut Pipeline,
    inputs: &[String],
    batch_texts: usize,
) -> Result<EncoderBaseline, String> {
    let task = pipeline.head.task;
    let mut input_tokens = BinCounts::new(&INPUT_TOKEN_BUCKETS);
    let mut unknown = 0u64;
    let mut total = 0u64;
    let mut norms = BinCounts::new(&EMBEDDING_NORM_BUCKETS);
    let mut confidence = BinCounts::new(&CONFIDENCE_BUCKETS);
    let mut classes = vec![0u64; pipeline.head.labels.len()];
    let mut embeddings: Vec<Vec<f32>> = Vec::new();
    let pad_id = pipeline.tokenizer.pad_id();
    for (chunk_index, chunk) in inputs.chunks(batch_texts.max(1)).enumerate() {
        let tokenized = chunk
            .iter()
            .enumerate()
            .map(|(i, text)| {
                pipeline.tokenizer.encode(text).map_err(|e| {
                    format!(
                        "drift reference sample, input {}: {e}",
                        chunk_index * batch_texts.max(1) + i + 1
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for text in &tokenized {
            input_tokens.observe(text.len() as f64);
            unknown += pipeline.tokenizer.unknown_tokens(text) as u64;
            total += text.len() as u64;
        }
        let batch = PaddedBatch::new(&tokenized, pad_id);
        let output = run_batch(pipeline.encoder.as_mut(), &pipeline.head, &batch)
            .map_err(|e| format!("drift reference sample: {e}"))?;
        if task == ModelTask::Embed {
            output
                .norms
                .iter()
                .for_each(|n| norms.observe(f64::from(*n)));
        }
        for result in output.results {
            match result {
                Inference::Embedding(v) => embeddings.push(v),
                Inference::Classification { probabilities } => {
                    if let Some((best, p)) = argmax(&probabilities)
                        && let Some(class) = classes.get_mut(best)
                    {
                        *class += 1;
                        confidence.observe(f64::from(*p));
                    }
                }
            }
        }
    }
    let mut baseline = Baseline::default();
    baseline.add_histogram(Feature::InputTokens, &input_tokens);
    baseline.add_count(Feature::UnknownTokens, unknown_bin::UNKNOWN, unknown);
    baseline.add_count(Feature::UnknownTokens, unknown_bin::KNOWN, total - unknown);
    let mut center = None;
    match task {
        ModelTask::Classify => {
            for (label, count) in pipeline.head.labels.iter().zip(&classes) {
                baseline.add_count(Feature::PredictedClass, label, *count);
            }
            baseline.add_histogram(Feature::Confidence, &confidence);
        }
        ModelTask::Embed => {
            baseline.add_histogram(Feature::EmbeddingNorm, &norms);
            center = centroid(embeddings.iter().map(Vec::as_slice));
            if let Some(c) = &center {
                let mut cosines = BinCounts::new(&CENTROID_COSINE_BUCKETS);
                embeddings
                    .iter()
                    .for_each(|e| cosines.observe(cosine(c, e)));
                baseline.add_histogram(Feature::CentroidCosine, &cosines);
            }
        }
        ModelTask::Generate => {}
    }
    Ok(EncoderBaseline {
        baseline,
        centroid: center,
    })
}

/// A generation model's baseline: the prompts' lengths as `/generate` tokenizes a prompt (output
/// lengths need generation, which start-up does not run).
pub fn generation_baseline(
    tokenizer: &GgufTokenizer,
    inputs: &[String],
) -> Result<Baseline, String> {
    let mut prompt_tokens = BinCounts::new(&GENERATION_TOKEN_BUCKETS);
    for (i, text) in inputs.iter().enumerate() {
        let ids = tokenizer
            .encode(text)
            .map_err(|e| format!("drift reference sample, input {}: {e}", i + 1))?;
        prompt_tokens.observe(ids.len() as f64);
    }
    let mut baseline = Baseline::default();
    baseline.add_histogram(Feature::PromptTokens, &prompt_tokens);
    Ok(baseline)
}
