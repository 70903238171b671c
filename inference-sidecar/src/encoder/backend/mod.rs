//! Inference engines behind one trait. A backend turns a padded batch of token ids into the model's raw
//! output; pooling, normalisation and classification heads are applied afterwards by
//! [`super::head::OutputHead`], identically for every engine, so two backends over the same weights can
//! be compared number for number.

pub mod candle;
pub mod onnx;

use thiserror::Error;

use crate::config::{Backend, ModelTask};
use crate::encoder::artifacts::ModelFiles;
use crate::encoder::tokenize::TokenizedText;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("ONNX Runtime is not available: {0}")]
    RuntimeUnavailable(String),
    #[error("cannot load model {path}: {message}")]
    Load { path: String, message: String },
    #[error("the model's outputs are not usable: {0}")]
    Outputs(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("{0}")]
    Unsupported(String),
}

/// A batch padded to its longest member, row-major `[batch, seq_len]`. i64 because that is what ONNX
/// encoders take; candle converts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

impl PaddedBatch {
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a TokenizedText>, pad_id: u32) -> Self {
        let texts: Vec<&TokenizedText> = texts.into_iter().collect();
        let batch = texts.len();
        let seq_len = texts.iter().map(|t| t.len()).max().unwrap_or(0);
        let mut input_ids = vec![i64::from(pad_id); batch * seq_len];
        let mut attention_mask = vec![0i64; batch * seq_len];
        let mut token_type_ids = vec![0i64; batch * seq_len];
        for (row, text) in texts.iter().enumerate() {
            let offset = row * seq_len;
            for (i, (&id, &type_id)) in text.ids.iter().zip(&text.type_ids).enumerate() {
                input_ids[offset + i] = i64::from(id);
                token_type_ids[offset + i] = i64::from(type_id);
                attention_mask[offset + i] = 1;
            }
        }
        Self {
            batch,
            seq_len,
            input_ids,
            attention_mask,
            token_type_ids,
        }
    }

    /// Padded tokens: what the batch costs to run.
    pub fn tokens(&self) -> usize {
        self.batch * self.seq_len
    }
}

/// What a backend produced for a batch, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum EncoderOutput {
    /// Per-token hidden states `[batch, seq_len, hidden]`, to be pooled.
    TokenStates { hidden: usize, data: Vec<f32> },
    /// One vector per sequence `[batch, dim]` (the graph pooled already).
    Pooled { dim: usize, data: Vec<f32> },
    /// Class scores `[batch, classes]` before softmax.
    Logits { classes: usize, data: Vec<f32> },
}

/// One loaded model instance. `forward` takes `&mut self` because an ONNX Runtime session runs with
/// exclusive access: each batching worker owns its own instance.
pub trait Encoder: Send {
    fn forward(&mut self, batch: &PaddedBatch) -> Result<EncoderOutput, BackendError>;
}

/// Loads the engine `kind` for `files`.
pub fn load_encoder(
    kind: Backend,
    files: &ModelFiles,
    task: ModelTask,
    threads: usize,
    ort_dylib: Option<&std::path::Path>,
) -> Result<Box<dyn Encoder>, BackendError> {
    // Decoders are served by the generation engine (`crate::generation`), not through this trait.
    if task == ModelTask::Generate {
        return Err(BackendError::Unsupported(
            "task generate is served by the generation engine, not an encoder backend".into(),
        ));
    }
    if files.weights.extension().is_some_and(|e| e == "gguf") {
        let task = format!("{task:?}").to_lowercase();
        return Err(BackendError::Unsupported(format!(
            "a GGUF model is a decoder: serve it with task generate, not {task}"
        )));
    }
    match kind {
        Backend::Onnx => Ok(Box::new(onnx::OnnxEncoder::load(
            files, task, threads, ort_dylib,
        )?)),
        Backend::Candle => Ok(Box::new(candle::CandleEncoder::load(files)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ids: &[u32]) -> TokenizedText {
        TokenizedText {
            ids: ids.to_vec(),
            type_ids: vec![0; ids.len()],
            truncated: false,
        }
    }

    #[test]
    fn pads_to_the_longest_member() {
        let a = text(&[101, 7, 102]);
        let b = text(&[101, 102]);
        let batch = PaddedBatch::new([&a, &b], 0);
        assert_eq!((batch.batch, batch.seq_len, batch.tokens()), (2, 3, 6));
        assert_eq!(batch.input_ids, vec![101, 7, 102, 101, 102, 0]);
        assert_eq!(batch.attention_mask, vec![1, 1, 1, 1, 1, 0]);
    }
}
