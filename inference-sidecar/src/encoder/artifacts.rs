//! Finding a model's files on disk.
//!
//! A model uri names either a weights file or a directory in the Hugging Face / sentence-transformers
//! layout. Companion files (`tokenizer.json`, `config.json`, `sentence_bert_config.json`,
//! `1_Pooling/config.json`, `classifier.safetensors`) are looked up next to the weights first and then
//! next to the tokenizer, so an ONNX export that ships alone can borrow the tokenizer folder of its
//! source model.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::config::{ModelFormat, Pooling, Quantize, ServeConfig};
use crate::uri::UriError;
use lexserve_contract::digest::{DigestError, path_sha256};

/// Name of the linear classification head stored next to an encoder (tensors `weight` [classes, hidden]
/// and `bias` [classes]).
pub const HEAD_FILE: &str = "classifier.safetensors";

/// Longest input when nothing in the model's files says otherwise (BERT's position table).
const FALLBACK_MAX_TOKENS: usize = 512;

#[derive(Debug, Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Uri(#[from] UriError),
    #[error("model not found at {0}")]
    Missing(PathBuf),
    #[error("no {what} in {dir} (looked for {candidates})")]
    NotInDirectory {
        what: &'static str,
        dir: PathBuf,
        candidates: String,
    },
    #[error("no tokenizer.json next to the model ({0}); set model.tokenizer")]
    NoTokenizer(PathBuf),
    #[error("cannot read {path}: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("model digest mismatch for {path}: expected sha256 {expected}, found {actual}")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// The files a loaded encoder model is made of, plus what they say about pooling and limits.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    /// `config.json` (the candle backend needs it to build the network).
    pub model_config: Option<PathBuf>,
    /// Pooling the model was trained with (sentence-transformers `1_Pooling/config.json`).
    pub pooling: Option<Pooling>,
    /// Longest input in tokens, special tokens included.
    pub max_tokens: usize,
    pub head: Option<PathBuf>,
    /// Class names from `config.json`'s `id2label`, used when the spec does not list labels.
    pub id2label: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct HfConfigFile {
    max_position_embeddings: Option<usize>,
    id2label: Option<std::collections::BTreeMap<String, String>>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ArtifactError> {
    let unreadable = |message: String| ArtifactError::Unreadable {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))
}

fn first_existing(dirs: &[PathBuf], names: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|p| p.is_file())
}

/// The weight files the server looks for in a model directory, in its order of preference; the
/// fetch of a repository that names no file takes the first one present (`fetch::remote::hf_files`).
pub(crate) fn weight_candidates(
    format: ModelFormat,
    quantize: Quantize,
) -> &'static [&'static str] {
    match (format, quantize) {
        (ModelFormat::Onnx, Quantize::Int8) => &[
            "model_int8.onnx",
            "model_quantized.onnx",
            "model_qint8.onnx",
            "onnx/model_int8.onnx",
            "onnx/model_quantized.onnx",
            "onnx/model_qint8.onnx",
        ],
        (ModelFormat::Onnx, Quantize::None) => &["model.onnx", "onnx/model.onnx"],
        (ModelFormat::Safetensors, _) => &["model.safetensors"],
        (ModelFormat::Gguf, _) => &["model.gguf"],
    }
}

/// Resolves and, when the spec pins a digest, verifies the model's files.
pub fn locate(config: &ServeConfig) -> Result<ModelFiles, ArtifactError> {
    let root = config.model_uri.local_path(&config.pvc_root)?;
    if !root.exists() {
        return Err(ArtifactError::Missing(root));
    }
    if let Some(expected) = &config.sha256 {
        let actual = path_sha256(&root)?;
        if &actual != expected {
            return Err(ArtifactError::DigestMismatch {
                path: root,
                expected: expected.clone(),
                actual,
            });
        }
    }
    // A uri that names a file is used as is, whatever `quantize` says: the file is the user's choice.
    let (weights, model_dir) = if root.is_dir() {
        let candidates = weight_candidates(config.format, config.quantize);
        let weights = first_existing(std::slice::from_ref(&root), candidates).ok_or_else(|| {
            ArtifactError::NotInDirectory {
                what: "weights",
                dir: root.clone(),
                candidates: candidates.join(", "),
            }
        })?;
        (weights, root)
    } else {
        let dir = root.parent().map(Path::to_path_buf).unwrap_or_default();
        (root, dir)
    };

    let tokenizer = match &config.tokenizer {
        Some(uri) => {
            let path = uri.local_path(&config.pvc_root)?;
            let path = if path.is_dir() {
                path.join("tokenizer.json")
            } else {
                path
            };
            if !path.is_file() {
                return Err(ArtifactError::Missing(path));
            }
            path
        }
        None => first_existing(std::slice::from_ref(&model_dir), &["tokenizer.json"])
            .ok_or_else(|| ArtifactError::NoTokenizer(model_dir.clone()))?,
    };
    let mut dirs = vec![model_dir];
    if let Some(dir) = tokenizer.parent()
        && !dirs.iter().any(|d| d == dir)
    {
        dirs.push(dir.to_path_buf());
    }

    let pooling = match first_existing(&dirs, &["1_Pooling/config.json"]) {
        Some(path) => {
            let file: PoolingFile = read_json(&path)?;
            if file.pooling_mode_cls_token {
                Some(Pooling::Cls)
            } else if file.pooling_mode_mean_tokens {
                Some(Pooling::Mean)
            } else {
                None
            }
        }
        None => None,
    };
    let model_config = first_existing(&dirs, &["config.json"]);
    let hf_config: Option<HfConfigFile> = model_config.as_deref().map(read_json).transpose()?;
    let sbert_max = first_existing(&dirs, &["sentence_bert_config.json"])
        .map(|p| read_json::<SentenceBertFile>(&p))
        .transpose()?
        .and_then(|f| f.max_seq_length);
    let position_max = hf_config.as_ref().and_then(|c| c.max_position_embeddings);
    let model_max = match (sbert_max, position_max) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(FALLBACK_MAX_TOKENS),
    };
    let max_tokens = config
        .max_input_tokens
        .map_or(model_max, |n| n.min(position_max.unwrap_or(usize::MAX)));

    let id2label = hf_config.and_then(|c| c.id2label).and_then(|map| {
        let mut pairs: Vec<(usize, String)> = map
            .into_iter()
            .filter_map(|(k, v)| k.parse().ok().map(|k| (k, v)))
            .collect();
        pairs.sort();
        let contiguous = pairs.iter().enumerate().all(|(i, (k, _))| i == *k);
        contiguous.then(|| pairs.into_iter().map(|(_, v)| v).collect())
    });

    Ok(ModelFiles {
        weights,
        tokenizer,
        model_config,
        pooling,
        max_tokens,
        head: first_existing(&dirs[..1], &[HEAD_FILE]),
        id2label,
    })
}
