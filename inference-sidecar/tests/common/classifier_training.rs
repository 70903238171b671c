//! Making a classifier from an embedding model: embed labelled texts with the serving pipeline, fit a
//! linear head (softmax regression) on the embeddings, and write a model directory the sidecar serves
//! with `task: classify` — the encoder's files plus `classifier.safetensors`, with the class names in
//! `config.json`'s `id2label`.
//!
//! The server only loads a head; making one is for the tests (`tests/classify.rs`) and for
//! `examples/train_classifier.rs`, which includes this file, so it lives here and not in the library.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lexserve_sidecar::encoder::artifacts::HEAD_FILE;
use lexserve_sidecar::encoder::head::{LinearHead, softmax};
use lexserve_sidecar::encoder::pipeline::{Pipeline, PipelineError};
use lexserve_sidecar::encoder::service::argmax;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `label<TAB>text`")]
    Format { path: PathBuf, line: usize },
    #[error("need at least two classes, found {0}")]
    TooFewClasses(usize),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// A labelled example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub label: String,
    pub text: String,
}

/// Reads `label<TAB>text` lines; blank lines and lines starting with `#` are skipped.
pub fn read_examples(path: &Path) -> Result<Vec<Example>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, line)| match line.split_once('\t') {
            Some((label, text)) if !label.trim().is_empty() && !text.trim().is_empty() => {
                Ok(Example {
                    label: label.trim().to_string(),
                    text: text.trim().to_string(),
                })
            }
            _ => Err(TrainError::Format {
                path: path.to_path_buf(),
                line: i + 1,
            }),
        })
        .collect()
}

/// The trained head and how well it fits its own training data.
#[derive(Debug)]
pub struct TrainedHead {
    pub head: LinearHead,
    pub labels: Vec<String>,
    pub train_accuracy: f64,
}

/// Fits a head on the pipeline's embeddings (load the pipeline with `task: embed` and the pooling and
/// normalisation the classifier will be served with).
pub fn train_head(
    pipeline: &mut Pipeline,
    examples: &[Example],
) -> Result<TrainedHead, TrainError> {
    let labels: Vec<String> = examples
        .iter()
        .map(|e| e.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if labels.len() < 2 {
        return Err(TrainError::TooFewClasses(labels.len()));
    }
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let features = pipeline.embed(&texts, 16)?;
    let targets: Vec<usize> = examples
        .iter()
        .map(|e| labels.iter().position(|l| l == &e.label).unwrap_or(0))
        .collect();
    // Unit-norm features give small logits; a large step and a few hundred epochs converge, and the
    // light L2 keeps the weights (and the confidences) from growing without bound.
    let head = fit_linear_head(&features, &targets, labels.len(), 400, 4.0, 1e-4);
    let correct = features
        .iter()
        .zip(&targets)
        .filter(|(x, y)| {
            let p = softmax(&head.logits(x));
            argmax(&p).map(|(i, _)| i) == Some(**y)
        })
        .count();
    Ok(TrainedHead {
        head,
        labels,
        train_accuracy: correct as f64 / features.len().max(1) as f64,
    })
}

/// Files of the encoder a classifier directory needs.
const ENCODER_FILES: [&str; 5] = [
    "model.safetensors",
    "tokenizer.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "modules.json",
];

/// Writes a servable classifier directory: the encoder's files (hard-linked when possible, copied
/// otherwise), its `config.json` with `id2label`, and the head.
pub fn write_classifier_dir(
    encoder_dir: &Path,
    trained: &TrainedHead,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let write_err = |path: &Path, message: String| TrainError::Write {
        path: path.to_path_buf(),
        message,
    };
    for name in ENCODER_FILES {
        let from = encoder_dir.join(name);
        if !from.is_file() {
            continue;
        }
        let to = out_dir.join(name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e.to_string()))?;
        }
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| write_err(&to, e.to_string()))?;
        }
    }
    let config_path = encoder_dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path).map_err(|source| TrainError::Read {
        path: config_path.clone(),
        source,
    })?;
    let mut config: serde_json::Value =
        serde_json::from_str(&config_text).map_err(|e| write_err(&config_path, e.to_string()))?;
    let id2label: serde_json::Map<String, serde_json::Value> = trained
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), serde_json::Value::String(l.clone())))
        .collect();
    if let Some(object) = config.as_object_mut() {
        object.insert("id2label".into(), serde_json::Value::Object(id2label));
    }
    let out_config = out_dir.join("config.json");
    let pretty =
        serde_json::to_string_pretty(&config).map_err(|e| write_err(&out_config, e.to_string()))?;
    std::fs::write(&out_config, pretty).map_err(|e| write_err(&out_config, e.to_string()))?;
    save_head(&trained.head, &out_dir.join(HEAD_FILE))
}

/// Multinomial logistic regression by full-batch gradient descent from zero: deterministic, so the
/// same data always gives the same head. `features` are the encoder's pooled (and normalised)
/// embeddings, exactly what the server feeds the head.
pub fn fit_linear_head(
    features: &[Vec<f32>],
    labels: &[usize],
    classes: usize,
    epochs: usize,
    learning_rate: f32,
    l2: f32,
) -> LinearHead {
    let hidden = features.first().map_or(0, Vec::len);
    let mut head = LinearHead {
        classes,
        hidden,
        weight: vec![0.0; classes * hidden],
        bias: vec![0.0; classes],
    };
    let n = features.len().max(1) as f32;
    for _ in 0..epochs {
        let mut grad_w = vec![0.0f32; classes * hidden];
        let mut grad_b = vec![0.0f32; classes];
        for (x, &y) in features.iter().zip(labels) {
            let p = softmax(&head.logits(x));
            for c in 0..classes {
                let g = p[c] - if c == y { 1.0 } else { 0.0 };
                grad_b[c] += g;
                for (gw, xi) in grad_w[c * hidden..(c + 1) * hidden].iter_mut().zip(x) {
                    *gw += g * xi;
                }
            }
        }
        for (w, g) in head.weight.iter_mut().zip(&grad_w) {
            *w -= learning_rate * (g / n + l2 * *w);
        }
        for (b, g) in head.bias.iter_mut().zip(&grad_b) {
            *b -= learning_rate * g / n;
        }
    }
    head
}

/// Writes `weight` [classes, hidden] and `bias` [classes] as safetensors, the file the server loads
/// with [`LinearHead::load`].
pub fn save_head(head: &LinearHead, path: &Path) -> Result<(), TrainError> {
    let err = |message: String| TrainError::Write {
        path: path.to_path_buf(),
        message,
    };
    let weight = Tensor::from_vec(
        head.weight.clone(),
        (head.classes, head.hidden),
        &Device::Cpu,
    )
    .map_err(|e| err(e.to_string()))?;
    let bias = Tensor::from_vec(head.bias.clone(), head.classes, &Device::Cpu)
        .map_err(|e| err(e.to_string()))?;
    let tensors = HashMap::from([("weight".to_string(), weight), ("bias".to_string(), bias)]);
    candle_core::safetensors::save(&tensors, path).map_err(|e| err(e.to_string()))
}
