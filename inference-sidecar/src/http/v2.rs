//! KServe Open Inference Protocol (v2): server and model health, metadata, and `infer` with one BYTES
//! input of texts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::body::parse_json;
use super::error::ApiError;
use super::state::AppState;
use crate::config::ModelTask;
use crate::encoder::head::Inference;
use crate::encoder::service::argmax;

#[derive(Debug, Deserialize)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    pub data: Value,
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<InferInput>,
}

#[derive(Debug, Serialize)]
pub struct InferOutputTensor {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    pub data: Value,
}

#[derive(Debug, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<InferOutputTensor>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: Some(field.into()),
        message: message.into(),
    }
}

/// Flattens the (possibly nested, row-major) `data` of a BYTES tensor into texts.
fn collect_texts(value: &Value, path: &str, out: &mut Vec<String>) -> Result<(), ApiError> {
    match value {
        Value::String(s) => {
            out.push(s.clone());
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| collect_texts(item, &format!("{path}[{i}]"), out)),
        _ => Err(invalid(path, "BYTES data must be strings")),
    }
}

/// Validates the request's single text input and returns its texts.
pub fn texts_of(request: &InferRequest) -> Result<Vec<String>, ApiError> {
    let [input] = request.inputs.as_slice() else {
        return Err(invalid(
            "inputs",
            format!(
                "expected exactly one input (a BYTES tensor of texts), got {}",
                request.inputs.len()
            ),
        ));
    };
    if input.datatype != "BYTES" {
        return Err(invalid(
            "inputs[0].datatype",
            format!("expected BYTES, got {:?}", input.datatype),
        ));
    }
    let mut texts = Vec::new();
    collect_texts(&input.data, "inputs[0].data", &mut texts)?;
    if input.shape.iter().any(|&d| d < 0) {
        return Err(invalid(
            "inputs[0].shape",
            "dimensions must not be negative",
        ));
    }
    // A crafted shape's product can overflow: checked, never wrapped (a wrapped product could
    // match the data's length) nor panicking.
    let Some(elements) = input
        .shape
        .iter()
        .try_fold(1i64, |product, &d| product.checked_mul(d))
    else {
        return Err(invalid(
            "inputs[0].shape",
            format!(
                "the product of the dimensions {:?} overflows a 64-bit integer",
                input.shape
            ),
        ));
    };
    if usize::try_from(elements).ok() != Some(texts.len()) {
        return Err(invalid(
            "inputs[0].shape",
            format!(
                "shape {:?} holds {elements} elements but data has {}",
                input.shape,
                texts.len()
            ),
        ));
    }
    let _ = &input.name;
    Ok(texts)
}

fn check_name(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.service.name {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "model {name:?} is not served here"
        )))
    }
}

pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InferResponse>, ApiError> {
    check_name(&state, &name)?;
    let request: InferRequest = parse_json(&headers, body)?;
    let texts = texts_of(&request)?;
    let task = state.service.task;
    let output = state.service.infer(&texts, "inputs[0].data", task).await?;
    let n = output.results.len();
    let outputs = match task {
        ModelTask::Classify => {
            let labels = state
                .service
                .model()
                .map(|m| m.labels.clone())
                .unwrap_or_default();
            let mut flat = Vec::new();
            let mut predicted = Vec::with_capacity(n);
            for result in &output.results {
                if let Inference::Classification { probabilities } = result {
                    let best = argmax(probabilities).map_or(0, |(i, _)| i);
                    predicted.push(labels.get(best).cloned().unwrap_or_default());
                    flat.extend_from_slice(probabilities);
                }
            }
            vec![
                InferOutputTensor {
                    name: "probabilities",
                    datatype: "FP32",
                    shape: vec![n, labels.len()],
                    data: json!(flat),
                },
                InferOutputTensor {
                    name: "label",
                    datatype: "BYTES",
                    shape: vec![n],
                    data: json!(predicted),
                },
            ]
        }
        ModelTask::Embed | ModelTask::Generate => {
            let mut flat = Vec::new();
            let mut dim = 0;
            for result in &output.results {
                if let Inference::Embedding(v) = result {
                    dim = v.len();
                    flat.extend_from_slice(v);
                }
            }
            vec![InferOutputTensor {
                name: "embedding",
                datatype: "FP32",
                shape: vec![n, dim],
                data: json!(flat),
            }]
        }
    };
    Ok(Json(InferResponse {
        model_name: state.service.name.clone(),
        model_version: state.service.version.clone(),
        id: request.id,
        outputs,
    }))
}

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "lexserve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

/// Liveness as `/health` judges it: false once the thread serving the model has died.
pub async fn live(State(state): State<AppState>) -> Response {
    match state.service.check_alive() {
        Ok(()) => Json(json!({"live": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"live": false, "error": reason})),
        )
            .into_response(),
    }
}

fn readiness_response(state: &AppState) -> Response {
    match state.service.check_ready() {
        Ok(()) => (StatusCode::OK, Json(json!({"ready": true}))).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": e.to_string()})),
        )
            .into_response(),
    }
}

pub async fn server_ready(State(state): State<AppState>) -> Response {
    readiness_response(&state)
}

pub async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&state, &name)?;
    Ok(readiness_response(&state))
}

pub async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name(&state, &name)?;
    let model = state.service.model();
    let outputs = match state.service.task {
        ModelTask::Classify => {
            let classes = model.as_ref().map_or(-1, |m| m.labels.len() as i64);
            json!([
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ])
        }
        _ => {
            let dim = model
                .as_ref()
                .and_then(|m| m.dimensions)
                .map_or(-1, |d| d as i64);
            json!([{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}])
        }
    };
    Ok(Json(json!({
        "name": state.service.name,
        "versions": [state.service.version],
        "platform": state.platform,
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
    })))
}

/// `/ready`: the same answer as `/v2/health/ready`.
pub async fn ready(State(state): State<AppState>) -> Response {
    readiness_response(&state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> Result<Vec<String>, ApiError> {
        let request: InferRequest =
            serde_json::from_value(body).map_err(|e| invalid("body", e.to_string()))?;
        texts_of(&request)
    }

    #[test]
    fn reads_a_bytes_tensor() {
        let texts = request(
            json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}),
        );
        assert_eq!(texts.unwrap(), vec!["a", "b"]);
        let nested = request(
            json!({"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": [["a", "b"]]}]}),
        );
        assert_eq!(nested.unwrap().len(), 2);
    }

    #[test]
    fn rejects_bad_tensors_by_field() {
        let field_of = |body: Value| match request(body) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(field_of(json!({"inputs": []})).as_deref(), Some("inputs"));
        assert_eq!(
            field_of(
                json!({"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
            )
            .as_deref(),
            Some("inputs[0].datatype")
        );
        assert_eq!(
            field_of(
                json!({"inputs": [{"name": "t", "shape": [3], "datatype": "BYTES", "data": ["a"]}]})
            )
            .as_deref(),
            Some("inputs[0].shape")
        );
        // 2^32 · 2^32 wraps to 0, which an empty data array would match.
        assert_eq!(
            field_of(json!({"inputs": [{"name": "t", "shape": [4_294_967_296_i64, 4_294_967_296_i64], "datatype": "BYTES", "data": []}]})).as_deref(),
            Some("inputs[0].shape")
        );
        assert_eq!(
            field_of(json!({"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": ["a", 2]}]})).as_deref(),
            Some("inputs[0].data[1]")
        );
    }
}
