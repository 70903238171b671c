//! A loaded model as one synchronous pipeline: tokenizer → encoder → output head. The server runs it
//! behind the batching queue; benchmarks, golden tests and head training run it directly, so all of them
//! exercise exactly the code that serves.

use thiserror::Error;

use super::artifacts::{ArtifactError, ModelFiles, locate};
use super::backend::{BackendError, Encoder, PaddedBatch, load_encoder};
use super::batching::BatchError;
use super::batching::worker::run_batch;
use super::head::{HeadError, Inference, LinearHead, OutputHead};
use super::tokenize::{TextTokenizer, TokenizeError};
use crate::config::{ModelTask, Pooling, ServeConfig};

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("warm-up failed: {0}")]
    WarmUp(BatchError),
    #[error(transparent)]
    Batch(#[from] BatchError),
}

pub struct Pipeline {
    pub files: ModelFiles,
    pub tokenizer: TextTokenizer,
    pub encoder: Box<dyn Encoder>,
    pub head: OutputHead,
    /// Width of the embeddings (embed task), measured by the warm-up.
    pub dimensions: Option<usize>,
}

impl Pipeline {
    /// Loads the model `config` describes and runs one warm-up batch through it, so a pipeline that
    /// loads is one that answers; shape mismatches (head vs encoder, labels vs classes) fail here.
    pub fn load(config: &ServeConfig) -> Result<Self, PipelineError> {
        let files = locate(config)?;
        let tokenizer = TextTokenizer::load(&files.tokenizer, files.max_tokens)?;
        let encoder = load_encoder(
            config.backend,
            &files,
            config.task,
            config.threads,
            config.ort_dylib_path.as_deref(),
        )?;
        let linear = match (&files.head, config.task) {
            (Some(path), ModelTask::Classify) => Some(LinearHead::load(path)?),
            _ => None,
        };
        let labels = config
            .labels
            .clone()
            .or_else(|| files.id2label.clone())
            .or_else(|| {
                linear
                    .as_ref()
                    .map(|h| (0..h.classes).map(|i| format!("LABEL_{i}")).collect())
            })
            .unwrap_or_default();
        let head = OutputHead {
            task: config.task,
            pooling: config.pooling.or(files.pooling).unwrap_or(Pooling::Mean),
            normalize: config.normalize,
            linear,
            labels,
        };
        let mut pipeline = Self {
            files,
            tokenizer,
            encoder,
            head,
            dimensions: None,
        };
        let warm = pipeline.tokenizer.encode("lexserve warm-up")?;
        let batch = PaddedBatch::new([&warm], pipeline.tokenizer.pad_id());
        let results = match run_batch(pipeline.encoder.as_mut(), &pipeline.head, &batch) {
            Ok(output) => output.results,
            // A logits model without configured labels: name the classes after the output's width.
            Err(_)
                if pipeline.head.task == ModelTask::Classify && pipeline.head.labels.is_empty() =>
            {
                let unlabeled = OutputHead {
                    labels: Vec::new(),
                    ..pipeline.head.clone()
                };
                let probe = pipeline.encoder.forward(&batch)?;
                let classes = match probe {
                    super::backend::EncoderOutput::Logits { classes, .. } => classes,
                    _ => 0,
                };
                pipeline.head = OutputHead {
                    labels: (0..classes).map(|i| format!("LABEL_{i}")).collect(),
                    ..unlabeled
                };
                run_batch(pipeline.encoder.as_mut(), &pipeline.head, &batch)
                    .map_err(PipelineError::WarmUp)?
                    .results
            }
            Err(e) => return Err(PipelineError::WarmUp(e)),
        };
        pipeline.dimensions = match results.first() {
            Some(Inference::Embedding(v)) => Some(v.len()),
            Some(Inference::Classification { .. }) => None,
            None => {
                return Err(PipelineError::WarmUp(BatchError::Inference(
                    "no result".into(),
                )));
            }
        };
        Ok(pipeline)
    }

    /// Runs `texts` as one padded batch.
    pub fn run(&mut self, texts: &[&str]) -> Result<Vec<Inference>, PipelineError> {
        let tokenized = texts
            .iter()
            .map(|t| self.tokenizer.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = PaddedBatch::new(&tokenized, self.tokenizer.pad_id());
        Ok(run_batch(self.encoder.as_mut(), &self.head, &batch)?.results)
    }

    /// Embeddings of `texts`, `batch_size` at a time.
    pub fn embed(
        &mut self,
        texts: &[&str],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            for result in self.run(chunk)? {
                match result {
                    Inference::Embedding(v) => out.push(v),
                    Inference::Classification { .. } => {
                        return Err(PipelineError::Batch(BatchError::Inference(
                            "the pipeline classifies; load it with task embed".into(),
                        )));
                    }
                }
            }
        }
        Ok(out)
    }
}
