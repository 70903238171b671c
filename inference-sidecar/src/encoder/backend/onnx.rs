//! ONNX Runtime backend (ort with `load-dynamic`).
//!
//! The runtime library is loaded explicitly from a path (`--ort-dylib-path` / `ORT_DYLIB_PATH`) rather
//! than by `ort::init()`, which panics when the library is missing. A missing or incompatible library
//! becomes a [`BackendError::RuntimeUnavailable`], which the server reports as "not ready" with the
//! reason, instead of a crash loop.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorElementType, ValueType};

use super::{BackendError, Encoder, EncoderOutput, PaddedBatch};
use crate::config::ModelTask;
use crate::encoder::artifacts::ModelFiles;

/// ONNX Runtime allows one environment per process; every worker's session shares it. The library path
/// that created it is remembered so a second, different path is reported rather than silently ignored.
/// The library an environment was created from, and the outcome.
type LoadedRuntime = (PathBuf, Result<Environment, String>);

static ENVIRONMENT: OnceLock<Mutex<Option<LoadedRuntime>>> = OnceLock::new();

fn environment(dylib: Option<&Path>) -> Result<Environment, BackendError> {
    let dylib = dylib.ok_or_else(|| {
        BackendError::RuntimeUnavailable(
            "no ONNX Runtime library configured: set ORT_DYLIB_PATH or --ort-dylib-path to libonnxruntime.so \
             (inference-sidecar/scripts/setup-models.sh installs one)"
                .into(),
        )
    })?;
    let cell = ENVIRONMENT.get_or_init(|| Mutex::new(None));
    let mut guard = cell
        .lock()
        .map_err(|_| BackendError::RuntimeUnavailable("environment lock poisoned".into()))?;
    if guard.is_none() {
        let created = create_environment(dylib);
        *guard = Some((dylib.to_path_buf(), created));
    }
    match guard.as_ref() {
        Some((path, _)) if path != dylib => Err(BackendError::RuntimeUnavailable(format!(
            "ONNX Runtime was already loaded from {}; cannot load {} as well",
            path.display(),
            dylib.display()
        ))),
        Some((_, Ok(env))) => Ok(env.clone()),
        Some((_, Err(message))) => Err(BackendError::RuntimeUnavailable(message.clone())),
        None => Err(BackendError::RuntimeUnavailable(
            "environment not created".into(),
        )),
    }
}

fn create_environment(dylib: &Path) -> Result<Environment, String> {
    if !dylib.is_file() {
        return Err(format!(
            "ONNX Runtime library {} does not exist (set ORT_DYLIB_PATH or --ort-dylib-path)",
            dylib.display()
        ));
    }
    // ort promises errors here, but a foreign library can still trip an assertion inside the bindings;
    // a panic must not take the server down.
    let built = std::panic::catch_unwind(|| {
        ort::init_from(dylib)
            .map_err(|e| e.to_string())?
            .with_name("lexserve")
            .build()
            .map_err(|e| e.to_string())
    });
    match built {
        Ok(Ok(env)) => Ok(env),
        Ok(Err(message)) => Err(format!(
            "cannot load ONNX Runtime from {}: {message}",
            dylib.display()
        )),
        Err(_) => Err(format!(
            "loading ONNX Runtime from {} panicked (wrong or incompatible library?)",
            dylib.display()
        )),
    }
}

#[derive(Debug, Clone, Copy)]
enum InputKind {
    InputIds,
    AttentionMask,
    TokenTypeIds,
}

#[derive(Debug, Clone, Copy)]
enum OutputKind {
    TokenStates,
    Pooled,
    Logits,
}

pub struct OnnxEncoder {
    session: Session,
    inputs: Vec<(String, InputKind, TensorElementType)>,
    output: (String, OutputKind),
}

fn load_err(path: &Path, message: impl ToString) -> BackendError {
    BackendError::Load {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

impl OnnxEncoder {
    pub fn load(
        files: &ModelFiles,
        task: ModelTask,
        threads: usize,
        dylib: Option<&Path>,
    ) -> Result<Self, BackendError> {
        let env = environment(dylib)?;
        let path = files.weights.as_path();
        let session = Session::builder(&env)
            .map_err(|e| load_err(path, e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| load_err(path, e))?
            .with_intra_threads(threads)
            .map_err(|e| load_err(path, e))?
            .with_inter_threads(1)
            .map_err(|e| load_err(path, e))?
            // Spinning intra-op threads keep their cores busy between runs; in a server those cores are
            // needed by the HTTP side, and the batch boundaries are milliseconds apart anyway.
            .with_intra_op_spinning(false)
            .map_err(|e| load_err(path, e))?
            .commit_from_file(path)
            .map_err(|e| load_err(path, e))?;

        let mut inputs = Vec::new();
        for input in session.inputs() {
            let kind = match input.name() {
                "input_ids" => InputKind::InputIds,
                "attention_mask" => InputKind::AttentionMask,
                "token_type_ids" => InputKind::TokenTypeIds,
                other => {
                    return Err(BackendError::Outputs(format!(
                        "unexpected model input {other:?}: encoders take input_ids, attention_mask and token_type_ids"
                    )));
                }
            };
            let ty = match input.dtype() {
                ValueType::Tensor { ty, .. }
                    if matches!(ty, TensorElementType::Int64 | TensorElementType::Int32) =>
                {
                    *ty
                }
                other => {
                    return Err(BackendError::Outputs(format!(
                        "model input {} has type {other}; expected int64 or int32",
                        input.name()
                    )));
                }
            };
            inputs.push((input.name().to_string(), kind, ty));
        }
        if !inputs
            .iter()
            .any(|(_, k, _)| matches!(k, InputKind::InputIds))
        {
            return Err(BackendError::Outputs(
                "the model has no input_ids input".into(),
            ));
        }

        let output = choose_output(&session, task)?;
        Ok(Self {
            session,
            inputs,
            output,
        })
    }
}

/// Picks the output to read: `logits` for a classifier that has one; otherwise per-token states
/// (`last_hidden_state` or any rank-3 float output) so pooling stays under the spec's control; otherwise
/// an already pooled rank-2 output.
fn choose_output(session: &Session, task: ModelTask) -> Result<(String, OutputKind), BackendError> {
    let float_outputs: Vec<(&str, usize)> = session
        .outputs()
        .iter()
        .filter_map(|o| match o.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            } => Some((o.name(), shape.len())),
            _ => None,
        })
        .collect();
    let pick = |name: &str, kind| (name.to_string(), kind);
    if task == ModelTask::Classify
        && let Some((name, _)) = float_outputs
            .iter()
            .find(|(n, r)| *n == "logits" && *r == 2)
    {
        return Ok(pick(name, OutputKind::Logits));
    }
    if let Some((name, _)) = float_outputs
        .iter()
        .find(|(n, r)| *n == "last_hidden_state" && *r == 3)
        .or_else(|| float_outputs.iter().find(|(_, r)| *r == 3))
    {
        return Ok(pick(name, OutputKind::TokenStates));
    }
    if let Some((name, _)) = float_outputs.iter().find(|(_, r)| *r == 2) {
        return Ok(pick(name, OutputKind::Pooled));
    }
    Err(BackendError::Outputs(format!(
        "no float output of rank 2 or 3 among {:?}",
        session
            .outputs()
            .iter()
            .map(|o| o.name())
            .collect::<Vec<_>>()
    )))
}

fn inference_err(e: impl ToString) -> BackendError {
    BackendError::Inference(e.to_string())
}

impl Encoder for OnnxEncoder {
    fn forward(&mut self, batch: &PaddedBatch) -> Result<EncoderOutput, BackendError> {
        let shape = [batch.batch, batch.seq_len];
        let mut values: Vec<(String, ort::value::DynValue)> = Vec::with_capacity(self.inputs.len());
        for (name, kind, ty) in &self.inputs {
            let data = match kind {
                InputKind::InputIds => &batch.input_ids,
                InputKind::AttentionMask => &batch.attention_mask,
                InputKind::TokenTypeIds => &batch.token_type_ids,
            };
            let value = if *ty == TensorElementType::Int32 {
                let narrowed: Vec<i32> = data.iter().map(|&v| v as i32).collect();
                Tensor::from_array((shape, narrowed))
                    .map_err(inference_err)?
                    .into_dyn()
            } else {
                Tensor::from_array((shape, data.clone()))
                    .map_err(inference_err)?
                    .into_dyn()
            };
            values.push((name.clone(), value));
        }
        let outputs = self.session.run(values).map_err(inference_err)?;
        let (name, kind) = &self.output;
        let value = outputs
            .get(name.as_str())
            .ok_or_else(|| BackendError::Outputs(format!("output {name} missing from the run")))?;
        let (out_shape, data) = value.try_extract_tensor::<f32>().map_err(inference_err)?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        let last = dims.last().copied().unwrap_or(0).max(0) as usize;
        let expected_rows = match kind {
            OutputKind::TokenStates => batch.batch * batch.seq_len,
            OutputKind::Pooled | OutputKind::Logits => batch.batch,
        };
        if last == 0 || data.len() != expected_rows * last {
            return Err(BackendError::Outputs(format!(
                "output {name} has shape {dims:?}, which does not match a batch of {}×{}",
                batch.batch, batch.seq_len
            )));
        }
        let data = data.to_vec();
        Ok(match kind {
            OutputKind::TokenStates => EncoderOutput::TokenStates { hidden: last, data },
            OutputKind::Pooled => EncoderOutput::Pooled { dim: last, data },
            OutputKind::Logits => EncoderOutput::Logits {
                classes: last,
                data,
            },
        })
    }
}
