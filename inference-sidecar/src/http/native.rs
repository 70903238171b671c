//! The native API: `/embed` and `/predict`, `{"texts": [...]}` in.

use std::time::Instant;

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
use crate::encoder::service::argmax;

#[derive(Debug, Deserialize)]
pub struct TextsRequest {
    pub texts: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EmbedResponse {
    pub model: String,
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens per text after truncation, special tokens included.
    pub tokens: Vec<usize>,
    /// Which texts were cut at the model's input limit.
    pub truncated: Vec<bool>,
    pub latency_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct PredictResponse {
    pub model: String,
    pub predictions: Vec<String>,
    pub probabilities: Vec<Vec<f32>>,
    /// Class names in the order of each `probabilities` row.
    pub labels: Vec<String>,
    pub tokens: Vec<usize>,
    pub truncated: Vec<bool>,
    pub latency_ms: f64,
}

pub async fn embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EmbedResponse>, ApiError> {
    let started = Instant::now();
    let request: TextsRequest = parse_json(&headers, body)?;
    let output = state
        .service
        .infer(&request.texts, "texts", ModelTask::Embed)
        .await?;
    let embeddings = output
        .results
        .into_iter()
        .map(|r| match r {
            Inference::Embedding(v) => Ok(v),
            Inference::Classification { .. } => Err(ApiError::Service(
                crate::encoder::service::ServiceError::Internal(
                    "the model returned classes for an embedding request".into(),
                ),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(EmbedResponse {
        model: state.service.name.clone(),
        embeddings,
        tokens: output.tokens,
        truncated: output.truncated,
        latency_ms: started.elapsed().as_secs_f64() * 1e3,
    }))
}

pub async fn predict(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PredictResponse>, ApiError> {
    let started = Instant::now();
    let request: TextsRequest = parse_json(&headers, body)?;
    let output = state
        .service
        .infer(&request.texts, "texts", ModelTask::Classify)
        .await?;
    let labels = state
        .service
        .model()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    let mut predictions = Vec::with_capacity(output.results.len());
    let mut probabilities = Vec::with_capacity(output.results.len());
    for result in output.results {
        let Inference::Classification { probabilities: p } = result else {
            return Err(ApiError::Service(
                crate::encoder::service::ServiceError::Internal(
                    "the model returned an embedding for a classification request".into(),
                ),
            ));
        };
        let best = argmax(&p).map_or(0, |(i, _)| i);
        predictions.push(
            labels
                .get(best)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{best}")),
        );
        probabilities.push(p);
    }
    Ok(Json(PredictResponse {
        model: state.service.name.clone(),
        predictions,
        probabilities,
        labels,
        tokens: output.tokens,
        truncated: output.truncated,
        latency_ms: started.elapsed().as_secs_f64() * 1e3,
    }))
}
