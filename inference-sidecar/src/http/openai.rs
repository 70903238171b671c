//! OpenAI-compatible routes: `/v1/embeddings` and `/v1/models`, so existing OpenAI client libraries can
//! point at a lexserve service unchanged.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::body::parse_json;
use super::error::ApiError;
use super::state::AppState;
use crate::config::ModelTask;
use crate::encoder::head::Inference;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub input: EmbeddingInput,
    pub model: Option<String>,
    pub encoding_format: Option<String>,
    pub dimensions: Option<usize>,
    #[allow(dead_code)]
    pub user: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingValue,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

/// Little-endian f32s, base64 (standard alphabet, padded), as OpenAI's `encoding_format: base64`.
pub fn base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let request: EmbeddingsRequest = parse_json(&headers, body)?;
    if let Some(model) = &request.model
        && model != &state.service.name
    {
        return Err(ApiError::NotFound(format!(
            "model {model:?} is not served here (this server serves {:?})",
            state.service.name
        )));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::Invalid {
                field: Some("encoding_format".into()),
                message: format!("unknown encoding_format {other:?}: expected float or base64"),
            });
        }
    };
    let texts = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
    };
    let output = state
        .service
        .infer(&texts, "input", ModelTask::Embed)
        .await?;
    let mut data = Vec::with_capacity(output.results.len());
    for (index, result) in output.results.into_iter().enumerate() {
        let Inference::Embedding(vector) = result else {
            return Err(ApiError::Service(
                crate::encoder::service::ServiceError::Internal(
                    "the model returned classes for an embedding request".into(),
                ),
            ));
        };
        if let Some(d) = request.dimensions
            && d != vector.len()
        {
            return Err(ApiError::Invalid {
                field: Some("dimensions".into()),
                message: format!(
                    "this model returns {} dimensions; {d} were requested",
                    vector.len()
                ),
            });
        }
        data.push(EmbeddingData {
            object: "embedding",
            index,
            embedding: if base64 {
                EmbeddingValue::Base64(base64_f32(&vector))
            } else {
                EmbeddingValue::Float(vector)
            },
        });
    }
    let prompt_tokens = output.tokens.iter().sum();
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data,
        model: state.service.name.clone(),
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

pub async fn models(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": state.service.name,
            "object": "model",
            "created": state.started_unix,
            "owned_by": "lexserve",
        }]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_encoding() {
        // 1.0f32 = 00 00 80 3f → "AACAPw=="
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[]), "");
        assert_eq!(base64_f32(&[1.0, 1.0, 1.0]).len(), 16);
    }
}
