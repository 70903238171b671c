//! What turns an encoder's raw output into the task's answer: pooling, L2 normalisation, an optional
//! linear classification head, softmax. Shared by every backend so they agree by construction.

use std::path::Path;

use candle_core::{Device, Tensor};
use thiserror::Error;

use super::backend::{EncoderOutput, PaddedBatch};
use crate::config::{ModelTask, Pooling};

#[derive(Debug, Error)]
pub enum HeadError {
    #[error("cannot read classification head {path}: {message}")]
    Load { path: String, message: String },
    #[error("{0}")]
    Mismatch(String),
}

/// One answer per input text.
#[derive(Debug, Clone, PartialEq)]
pub enum Inference {
    Embedding(Vec<f32>),
    Classification { probabilities: Vec<f32> },
}

/// A linear layer `logits = weight · x + bias`, `weight` row-major `[classes, hidden]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearHead {
    pub classes: usize,
    pub hidden: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl LinearHead {
    /// Reads `weight` and `bias` tensors from a safetensors file.
    pub fn load(path: &Path) -> Result<Self, HeadError> {
        let err = |message: String| HeadError::Load {
            path: path.display().to_string(),
            message,
        };
        let tensors =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| err(e.to_string()))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| err(format!("no tensor named {name}")))
        };
        let weight = get("weight")?;
        let bias = get("bias")?;
        let (classes, hidden) = weight.dims2().map_err(|e| err(format!("weight: {e}")))?;
        let bias_len = bias.dims1().map_err(|e| err(format!("bias: {e}")))?;
        if bias_len != classes || classes == 0 {
            return Err(err(format!(
                "bias has {bias_len} entries for {classes} classes"
            )));
        }
        let to_f32 = |t: &Tensor| {
            t.to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| err(e.to_string()))
        };
        Ok(Self {
            classes,
            hidden,
            weight: to_f32(weight)?,
            bias: to_f32(bias)?,
        })
    }

    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        (0..self.classes)
            .map(|c| {
                let row = &self.weight[c * self.hidden..(c + 1) * self.hidden];
                self.bias[c] + row.iter().zip(features).map(|(w, x)| w * x).sum::<f32>()
            })
            .collect()
    }
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

pub fn l2_norm(vector: &[f32]) -> f32 {
    vector.iter().map(|v| v * v).sum::<f32>().sqrt()
}

/// Divides `vector` by its L2 `norm` (measured by [`l2_norm`]); a zero vector stays zero.
pub fn l2_normalize(vector: &mut [f32], norm: f32) {
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
}

/// Pools `[batch, seq, hidden]` states to `[batch][hidden]`; mean pooling ignores padding.
pub fn pool(states: &[f32], hidden: usize, batch: &PaddedBatch, pooling: Pooling) -> Vec<Vec<f32>> {
    (0..batch.batch)
        .map(|row| {
            let base = row * batch.seq_len * hidden;
            match pooling {
                Pooling::Cls => states[base..base + hidden].to_vec(),
                Pooling::Mean => {
                    let mut sum = vec![0.0f32; hidden];
                    let mut count = 0.0f32;
                    for t in 0..batch.seq_len {
                        if batch.attention_mask[row * batch.seq_len + t] == 0 {
                            continue;
                        }
                        count += 1.0;
                        let token = &states[base + t * hidden..base + (t + 1) * hidden];
                        sum.iter_mut().zip(token).for_each(|(s, v)| *s += v);
                    }
                    sum.iter_mut().for_each(|s| *s /= count.max(1.0));
                    sum
                }
            }
        })
        .collect()
}

/// One batch's answers, with what drift monitoring reads on the way: each text's pooled
/// embedding's L2 norm before normalization (empty when the model outputs logits). Measured
/// here because normalization throws it away, and once per text (the division needs it anyway).
#[derive(Debug)]
pub struct HeadOutput {
    pub results: Vec<Inference>,
    pub norms: Vec<f32>,
}

/// The task's post-processing, fixed when the model is loaded.
#[derive(Debug, Clone)]
pub struct OutputHead {
    pub task: ModelTask,
    pub pooling: Pooling,
    pub normalize: bool,
    pub linear: Option<LinearHead>,
    pub labels: Vec<String>,
}

impl OutputHead {
    pub fn apply(
        &self,
        output: EncoderOutput,
        batch: &PaddedBatch,
    ) -> Result<HeadOutput, HeadError> {
        let rows: Vec<Vec<f32>> = match output {
            EncoderOutput::Logits { classes, data } => {
                if self.task != ModelTask::Classify {
                    return Err(HeadError::Mismatch(
                        "the model outputs logits, not embeddings".into(),
                    ));
                }
                if self.linear.is_some() {
                    return Err(HeadError::Mismatch(
                        "the model outputs logits already; remove classifier.safetensors".into(),
                    ));
                }
                let probabilities: Vec<Inference> = data
                    .chunks(classes)
                    .map(|row| Inference::Classification {
                        probabilities: softmax(row),
                    })
                    .collect();
                self.check_labels(classes)?;
                return Ok(HeadOutput {
                    results: probabilities,
                    norms: Vec::new(),
                });
            }
            EncoderOutput::TokenStates { hidden, data } => pool(&data, hidden, batch, self.pooling),
            EncoderOutput::Pooled { dim, data } => data.chunks(dim).map(<[f32]>::to_vec).collect(),
        };
        let mut rows = rows;
        let norms: Vec<f32> = rows.iter().map(|r| l2_norm(r)).collect();
        if self.normalize {
            rows.iter_mut()
                .zip(&norms)
                .for_each(|(r, n)| l2_normalize(r, *n));
        }
        let results = match self.task {
            ModelTask::Embed | ModelTask::Generate => {
                rows.into_iter().map(Inference::Embedding).collect()
            }
            ModelTask::Classify => {
                let linear = self.linear.as_ref().ok_or_else(|| {
                    HeadError::Mismatch(
                        "task classify needs a model with a logits output or a classifier.safetensors head next to the encoder"
                            .into(),
                    )
                })?;
                if rows.first().is_some_and(|r| r.len() != linear.hidden) {
                    return Err(HeadError::Mismatch(format!(
                        "the classification head expects {} features, the encoder gives {}",
                        linear.hidden,
                        rows[0].len()
                    )));
                }
                self.check_labels(linear.classes)?;
                rows.iter()
                    .map(|r| Inference::Classification {
                        probabilities: softmax(&linear.logits(r)),
                    })
                    .collect()
            }
        };
        Ok(HeadOutput { results, norms })
    }

    fn check_labels(&self, classes: usize) -> Result<(), HeadError> {
        if self.labels.len() != classes {
            return Err(HeadError::Mismatch(format!(
                "model.labels lists {} labels but the model has {classes} classes",
                self.labels.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::tokenize::TokenizedText;

    fn batch(lens: &[usize]) -> PaddedBatch {
        let texts: Vec<TokenizedText> = lens
            .iter()
            .map(|&n| TokenizedText {
                ids: vec![1; n],
                type_ids: vec![0; n],
                truncated: false,
            })
            .collect();
        PaddedBatch::new(&texts, 0)
    }

    #[test]
    fn mean_pooling_ignores_padding() {
        let b = batch(&[2, 1]);
        // [2 rows, 2 tokens, hidden 2]
        let states = [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 99.0, 99.0];
        let pooled = pool(&states, 2, &b, Pooling::Mean);
        assert_eq!(pooled, vec![vec![2.0, 3.0], vec![10.0, 20.0]]);
        let cls = pool(&states, 2, &b, Pooling::Cls);
        assert_eq!(cls, vec![vec![1.0, 2.0], vec![10.0, 20.0]]);
    }

    #[test]
    fn norms_are_measured_before_normalization() {
        let head = OutputHead {
            task: ModelTask::Embed,
            pooling: Pooling::Mean,
            normalize: true,
            linear: None,
            labels: Vec::new(),
        };
        let out = head
            .apply(
                EncoderOutput::Pooled {
                    dim: 2,
                    data: vec![3.0, 4.0, 0.0, 0.0],
                },
                &batch(&[1, 1]),
            )
            .unwrap();
        assert_eq!(out.norms, vec![5.0, 0.0]);
        assert_eq!(
            out.results,
            vec![
                Inference::Embedding(vec![0.6, 0.8]),
                Inference::Embedding(vec![0.0, 0.0])
            ]
        );
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] < 1e-6);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn classify_without_a_head_is_a_clear_error() {
        let head = OutputHead {
            task: ModelTask::Classify,
            pooling: Pooling::Mean,
            normalize: true,
            linear: None,
            labels: vec!["a".into()],
        };
        let b = batch(&[1]);
        let err = head
            .apply(
                EncoderOutput::Pooled {
                    dim: 2,
                    data: vec![1.0, 0.0],
                },
                &b,
            )
            .unwrap_err();
        assert!(err.to_string().contains("classifier.safetensors"));
    }
}
