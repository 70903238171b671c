//! Loading a GGUF decoder: finding the file a model uri names (checking its pinned digest), and reading
//! the model, its tokenizer and its chat template from the file's metadata.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;

use super::chat_template::ChatTemplate;
use super::model::{DecoderModel, Weights};
use super::tokenizer::GgufTokenizer;
use crate::config::ServeConfig;
use lexserve_contract::ModelUri;
use lexserve_contract::digest::path_sha256;

/// The GGUF file a model uri names: the file itself, or the one `.gguf` in a directory
/// (`model.gguf` first).
pub fn locate_gguf(config: &ServeConfig) -> Result<PathBuf, String> {
    locate_gguf_at(
        &config.model_uri,
        config.sha256.as_deref(),
        &config.pvc_root,
        ("model", "model.uri"),
    )
}

/// The GGUF file `uri` names, its digest checked against `sha256` when one is pinned. `names`: what
/// it is and the field that names it, for errors (`("model", "model.uri")`).
pub fn locate_gguf_at(
    uri: &ModelUri,
    sha256: Option<&str>,
    pvc_root: &Path,
    (what, field): (&str, &str),
) -> Result<PathBuf, String> {
    let root = uri.local_path(pvc_root).map_err(|e| e.to_string())?;
    if !root.exists() {
        return Err(format!("{what} not found at {}", root.display()));
    }
    if let Some(expected) = sha256 {
        let actual = path_sha256(&root).map_err(|e| e.to_string())?;
        if actual != expected {
            return Err(format!(
                "{what} digest mismatch for {}: expected sha256 {expected}, found {actual}",
                root.display()
            ));
        }
    }
    if root.is_file() {
        return Ok(root);
    }
    if root.join("model.gguf").is_file() {
        return Ok(root.join("model.gguf"));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| format!("cannot read {}: {e}", root.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no .gguf file in {}", root.display())),
        _ => Err(format!(
            "{} holds several .gguf files; name one in {field}",
            root.display()
        )),
    }
}

/// The model, tokenizer and chat template of a GGUF file.
pub struct LoadedGguf {
    pub model: DecoderModel,
    pub tokenizer: GgufTokenizer,
    pub chat_template: Option<ChatTemplate>,
}

pub fn load_gguf(path: &Path) -> Result<LoadedGguf, String> {
    load_gguf_with(path, Weights::Quantized)
}

pub fn load_gguf_with(path: &Path, weights: Weights) -> Result<LoadedGguf, String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| format!("cannot read GGUF {}: {e}", path.display()))?;
    let model = DecoderModel::load(&content, &mut file, weights).map_err(|e| e.to_string())?;
    let tokenizer = GgufTokenizer::from_metadata(&content.metadata).map_err(|e| e.to_string())?;
    let token = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or_default()
            .to_string()
    };
    let chat_template = match content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
    {
        Some(source) => Some(ChatTemplate::new(
            source,
            &token(tokenizer.bos_id),
            &token(tokenizer.eos_id),
        )?),
        None => None,
    };
    Ok(LoadedGguf {
        model,
        tokenizer,
        chat_template,
    })
}
