//! Text → token ids with the model's own `tokenizer.json`.
//!
//! Tokenizer files often carry padding and truncation settings from their export (MiniLM's pads every
//! input to 128 and truncates at 128). The server pads per batch, to the longest member, and truncates at
//! the model's real limit, so both settings are replaced here, once, when the tokenizer is loaded.

use std::path::Path;

use thiserror::Error;
use tokenizers::{
    ModelWrapper, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

#[derive(Debug, Error)]
pub enum TokenizeError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error("tokenization failed: {0}")]
    Encode(String),
}

/// One text, tokenized, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedText {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// True when the text was longer than the model's limit and its tail was dropped.
    pub truncated: bool,
}

impl TokenizedText {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_tokens: usize,
    pad_id: u32,
    /// The id of the model's unknown token (drift monitoring counts them), if it has one.
    unknown_id: Option<u32>,
}

impl TextTokenizer {
    /// Loads `path` and truncates to `max_tokens` (special tokens included).
    pub fn load(path: &Path, max_tokens: usize) -> Result<Self, TokenizeError> {
        let load_err = |message: String| TokenizeError::Load {
            path: path.display().to_string(),
            message,
        };
        let mut inner = Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| load_err(e.to_string()))?;
        let unknown_id = unknown_token(inner.get_model()).and_then(|t| inner.token_to_id(t));
        Ok(Self {
            inner,
            max_tokens,
            pad_id,
            unknown_id,
        })
    }

    pub fn encode(&self, text: &str) -> Result<TokenizedText, TokenizeError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(TokenizedText {
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
            truncated: !encoding.get_overflowing().is_empty(),
        })
    }

    /// How many of `text`'s tokens are the unknown token: a scan of the ids, no allocation.
    pub fn unknown_tokens(&self, text: &TokenizedText) -> usize {
        self.unknown_id.map_or(0, |unknown| {
            text.ids.iter().filter(|id| **id == unknown).count()
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The id batches are padded with (masked out, so its value only has to be a valid id).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

/// The unknown token of the tokenizer's model, as its `tokenizer.json` names it. WordPiece (BERT,
/// MiniLM) and BPE with an unknown token can emit one; byte-level BPE never needs one, and a
/// Unigram model's unknown id is not public, so those count none.
fn unknown_token(model: &ModelWrapper) -> Option<&str> {
    match model {
        ModelWrapper::WordPiece(m) => Some(m.unk_token.as_str()),
        ModelWrapper::BPE(m) => m.unk_token.as_deref(),
        ModelWrapper::WordLevel(_) | ModelWrapper::Unigram(_) => None,
    }
}
