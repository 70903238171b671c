//! The model's tokenizer, rebuilt from the GGUF's `tokenizer.ggml.*` metadata as a `tokenizers`
//! pipeline that matches the canonical one (candle's GGUF tokenizer adds a prefix space the canonical
//! tokenizer does not; this one does not), plus incremental detokenization for streaming.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::chat_template::PromptPart;
use super::model::{Metadata, ModelError, meta_u32};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

pub struct GgufTokenizer {
    /// Reads control tokens spelled in the text as control tokens.
    inner: Tokenizer,
    /// The same vocabulary without the control tokens: reads everything as text.
    plain: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
    /// Tokens that end a generation: the declared end-of-sequence token and `<|endoftext|>`-style
    /// control tokens that chat models emit at the end of a turn.
    pub stop_ids: Vec<u32>,
    tokens: Vec<String>,
}

fn strings(metadata: &Metadata, key: &str) -> Result<Vec<String>, ModelError> {
    let err = |message: String| ModelError::Metadata {
        key: key.to_string(),
        message,
    };
    let values = metadata
        .get(key)
        .ok_or_else(|| err("missing".into()))?
        .to_vec()
        .map_err(|e| err(e.to_string()))?;
    values
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| err(e.to_string())))
        .collect()
}

impl GgufTokenizer {
    /// Whether `other` spells every token id as this one does (a draft model's tokenizer must: its
    /// drafted ids are read as this model's).
    pub fn same_vocabulary(&self, other: &GgufTokenizer) -> bool {
        self.tokens == other.tokens
    }

    pub fn from_metadata(metadata: &Metadata) -> Result<Self, ModelError> {
        let model = metadata
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if model != "gpt2" {
            return Err(ModelError::Unsupported(format!(
                "tokenizer model {model:?} (byte-level BPE, \"gpt2\", is supported)"
            )));
        }
        let pre = metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "default".into());
        // llama.cpp's pre-tokenizer families: these split digits one by one before the GPT-2 regex.
        let split_digits = match pre.as_str() {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => true,
            "default" | "gpt2" | "gpt-2" => false,
            other => {
                return Err(ModelError::Unsupported(format!("pre-tokenizer {other:?}")));
            }
        };
        let tokens = strings(metadata, "tokenizer.ggml.tokens")?;
        let merges = strings(metadata, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(ModelError::Metadata {
                    key: "tokenizer.ggml.merges".into(),
                    message: format!("merge {m:?} is not two tokens"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::Unsupported(format!("BPE tokenizer: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = if split_digits {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let types: Vec<i32> = metadata
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
            .unwrap_or_default();
        let plain = inner.clone();
        let special: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL || **t == TOKEN_TYPE_USER_DEFINED)
            .map(|(i, _)| AddedToken::from(tokens[i].clone(), true))
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| ModelError::Unsupported(format!("special tokens: {e}")))?;
        let id = |key: &str| meta_u32(metadata, key).ok();
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        for name in ["<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<end_of_turn>"] {
            if let Some(i) = tokens.iter().position(|t| t == name)
                && types.get(i) == Some(&TOKEN_TYPE_CONTROL)
                && !stop_ids.contains(&(i as u32))
            {
                stop_ids.push(i as u32);
            }
        }
        let add_bos = metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(Self {
            inner,
            plain,
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_id,
            add_bos,
            stop_ids,
            tokens,
        })
    }

    /// Prompt ids: special tokens written in the text (`<|im_start|>`) become their ids; a BOS is
    /// prepended only when the model's metadata asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.encode_parts(&[PromptPart::Markup(text.to_string())])
    }

    /// Prompt ids of a prompt in parts: control tokens are read in [`PromptPart::Markup`] only,
    /// [`PromptPart::Text`] is read as characters. A BOS as in [`Self::encode`].
    pub fn encode_parts(&self, parts: &[PromptPart]) -> Result<Vec<u32>, String> {
        let mut ids = Vec::new();
        if self.add_bos
            && let Some(bos) = self.bos_id
        {
            ids.push(bos);
        }
        for part in parts {
            let (tokenizer, text) = match part {
                PromptPart::Markup(text) => (&self.inner, text),
                PromptPart::Text(text) => (&self.plain, text),
            };
            let encoding = tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| e.to_string())?;
            ids.extend_from_slice(encoding.get_ids());
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
}

/// Turns a growing list of ids into text deltas. A token can end in the middle of a UTF-8 character
/// (byte-level BPE); its text is held back until the character is complete.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    pub fn push(&mut self, tokenizer: &GgufTokenizer, id: u32) -> String {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset]);
        let text = tokenizer.decode(&self.ids[self.prefix_offset..]);
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') {
            let delta = text.get(prefix.len()..).unwrap_or_default().to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            delta
        } else {
            String::new()
        }
    }
}
