//! candle backend: BERT-family encoders from safetensors (candle-transformers' `bert`), on the CPU.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use super::{BackendError, Encoder, EncoderOutput, PaddedBatch};
use crate::encoder::artifacts::ModelFiles;

pub struct CandleEncoder {
    model: BertModel,
    device: Device,
}

impl CandleEncoder {
    pub fn load(files: &ModelFiles) -> Result<Self, BackendError> {
        let weights = files.weights.display().to_string();
        let load_err = |message: String| BackendError::Load {
            path: weights.clone(),
            message,
        };
        let config_path = files
            .model_config
            .as_ref()
            .ok_or_else(|| load_err("no config.json next to the weights".into()))?;
        let config_text = std::fs::read_to_string(config_path)
            .map_err(|e| load_err(format!("{}: {e}", config_path.display())))?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| load_err(format!("{}: {e}", config_path.display())))?;
        let device = Device::Cpu;
        // SAFETY: the weights are memory-mapped read-only; the serving volume is not rewritten while a
        // model is being served (fetch writes it before the server starts).
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                std::slice::from_ref(&files.weights),
                DType::F32,
                &device,
            )
        }
        .map_err(|e| load_err(e.to_string()))?;
        let model = BertModel::load(vb, &config).map_err(|e| load_err(e.to_string()))?;
        Ok(Self { model, device })
    }
}

impl Encoder for CandleEncoder {
    fn forward(&mut self, batch: &PaddedBatch) -> Result<EncoderOutput, BackendError> {
        let err = |e: candle_core::Error| BackendError::Inference(e.to_string());
        let to_tensor = |data: &[i64]| {
            let ids: Vec<u32> = data.iter().map(|&v| v as u32).collect();
            Tensor::from_vec(ids, (batch.batch, batch.seq_len), &self.device)
        };
        let input_ids = to_tensor(&batch.input_ids).map_err(err)?;
        let token_type_ids = to_tensor(&batch.token_type_ids).map_err(err)?;
        let attention_mask = to_tensor(&batch.attention_mask).map_err(err)?;
        let states = self
            .model
            .forward(&input_ids, &token_type_ids, Some(&attention_mask))
            .map_err(err)?;
        let hidden = states.dim(2).map_err(err)?;
        let data = states
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)?;
        Ok(EncoderOutput::TokenStates { hidden, data })
    }
}
