//! KServe Open Inference Protocol (v2): server and model health, metadata, and `infer` with one BYTES
//! input of texts, in JSON or in the binary tensor data extension (see [`super::binary_tensors`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::binary_tensors::{self, HEADER_LENGTH};
use super::body::{decode, read_body, require_json};
use super::error::ApiError;
use super::state::AppState;
use crate::config::ModelTask;
use crate::encoder::head::Inference;
use crate::encoder::service::argmax;

/// A tensor's `parameters` as far as this server reads them.
#[derive(Debug, Default, Deserialize)]
pub struct TensorParameters {
    /// Input: the tensor's data is this many bytes of the binary tail, not `data`.
    pub binary_data_size: Option<u64>,
    /// Requested output: send it in binary form (or not), whatever the request's default.
    pub binary_data: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    /// Absent when the tensor comes in binary form.
    pub data: Option<Value>,
    #[serde(default)]
    pub parameters: TensorParameters,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: TensorParameters,
}

/// The request's `parameters` as far as this server reads them.
#[derive(Debug, Default, Deserialize)]
pub struct RequestParameters {
    /// Every output in binary form unless the output says otherwise.
    pub binary_data_output: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<InferInput>,
    /// The outputs wanted; all of them when absent.
    pub outputs: Option<Vec<RequestedOutput>>,
    #[serde(default)]
    pub parameters: RequestParameters,
}

/// An output's values.
#[derive(Debug)]
pub enum OutputValues {
    Fp32(Vec<f32>),
    Bytes(Vec<String>),
}

/// An output before it is written in JSON or binary form.
#[derive(Debug)]
pub struct OutputTensor {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub values: OutputValues,
}

#[derive(Debug, Serialize)]
pub struct InferOutputTensor {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
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

/// Validates the request's single text input and returns its texts. `binary` is the body's tail
/// after the JSON header (empty without the binary extension).
pub fn texts_of(request: &InferRequest, binary: &[u8]) -> Result<Vec<String>, ApiError> {
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
    let texts = match (&input.data, input.parameters.binary_data_size) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "inputs[0]",
                "has both data and parameters.binary_data_size; send the tensor one way",
            ));
        }
        (Some(data), None) => {
            let mut texts = Vec::new();
            collect_texts(data, "inputs[0].data", &mut texts)?;
            texts
        }
        (None, Some(size)) => {
            if u64::try_from(binary.len()).ok() != Some(size) {
                return Err(invalid(
                    "inputs[0].parameters.binary_data_size",
                    format!(
                        "declares {size} bytes, but {} bytes follow the JSON header",
                        binary.len()
                    ),
                ));
            }
            binary_tensors::decode_texts(binary, "inputs[0]")?
        }
        (None, None) => {
            return Err(invalid(
                "inputs[0].data",
                "is required (or parameters.binary_data_size, with the binary tensor data extension)",
            ));
        }
    };
    if input.data.is_some() && !binary.is_empty() {
        return Err(invalid(
            "Inference-Header-Content-Length",
            format!(
                "{} bytes follow the JSON header, but no input is sent in binary form",
                binary.len()
            ),
        ));
    }
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
) -> Result<Response, ApiError> {
    check_name(&state, &name)?;
    infer_request(&state, &headers, body).await
}

/// `/v2/models/{name}/versions/{version}/infer`: the served version only.
pub async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_name(&state, &name)?;
    if version != state.service.version {
        return Err(ApiError::NotFound(format!(
            "model {name:?} version {version:?} is not served here (version {:?} is)",
            state.service.version
        )));
    }
    infer_request(&state, &headers, body).await
}

async fn infer_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(body)?;
    // With the binary extension the body is not JSON as a whole (its type is whatever the client
    // says, usually application/octet-stream); only the header is.
    if !headers.contains_key(HEADER_LENGTH) {
        require_json(headers)?;
    }
    let (json_header, binary) = binary_tensors::split_body(headers, &body)?;
    let request: InferRequest = decode(json_header)?;
    let texts = texts_of(&request, binary)?;
    let task = state.service.task;
    let output = state.service.infer(&texts, "inputs[0].data", task).await?;
    let n = output.results.len();
    let tensors = match task {
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
                OutputTensor {
                    name: "probabilities",
                    shape: vec![n, labels.len()],
                    values: OutputValues::Fp32(flat),
                },
                OutputTensor {
                    name: "label",
                    shape: vec![n],
                    values: OutputValues::Bytes(predicted),
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
            vec![OutputTensor {
                name: "embedding",
                shape: vec![n, dim],
                values: OutputValues::Fp32(flat),
            }]
        }
    };
    let chosen = choose_outputs(&request, tensors)?;
    Ok(render(
        InferResponseHeader {
            model_name: state.service.name.clone(),
            model_version: state.service.version.clone(),
            id: request.id,
        },
        chosen,
    ))
}

/// The outputs the request asked for (all when it names none), each with whether it goes out in
/// binary form.
pub fn choose_outputs(
    request: &InferRequest,
    tensors: Vec<OutputTensor>,
) -> Result<Vec<(OutputTensor, bool)>, ApiError> {
    let default_binary = request.parameters.binary_data_output.unwrap_or(false);
    let Some(requested) = &request.outputs else {
        return Ok(tensors.into_iter().map(|t| (t, default_binary)).collect());
    };
    let available: Vec<&str> = tensors.iter().map(|t| t.name).collect();
    if let Some((i, unknown)) = requested
        .iter()
        .enumerate()
        .find(|(_, r)| !available.contains(&r.name.as_str()))
    {
        return Err(invalid(
            format!("outputs[{i}].name"),
            format!(
                "this model has no output {:?}; its outputs are {available:?}",
                unknown.name
            ),
        ));
    }
    let mut tensors = tensors;
    let mut chosen = Vec::with_capacity(requested.len());
    for wanted in requested {
        if let Some(at) = tensors.iter().position(|t| t.name == wanted.name) {
            let binary = wanted.parameters.binary_data.unwrap_or(default_binary);
            chosen.push((tensors.swap_remove(at), binary));
        }
    }
    Ok(chosen)
}

/// What a response says besides its outputs.
#[derive(Debug, Serialize)]
pub struct InferResponseHeader {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Serialize)]
struct InferResponse {
    #[serde(flatten)]
    header: InferResponseHeader,
    outputs: Vec<InferOutputTensor>,
}

/// A JSON response, or, when an output goes out in binary form, the JSON header followed by the
/// binary outputs in the order the header lists them.
pub fn render(header: InferResponseHeader, outputs: Vec<(OutputTensor, bool)>) -> Response {
    let mut tail = Vec::new();
    let mut tensors = Vec::with_capacity(outputs.len());
    for (tensor, binary) in outputs {
        let datatype = match tensor.values {
            OutputValues::Fp32(_) => "FP32",
            OutputValues::Bytes(_) => "BYTES",
        };
        let (data, parameters) = if binary {
            let bytes = match &tensor.values {
                OutputValues::Fp32(values) => binary_tensors::encode_fp32(values),
                OutputValues::Bytes(texts) => binary_tensors::encode_texts(texts),
            };
            let size = bytes.len();
            tail.extend(bytes);
            (None, Some(json!({"binary_data_size": size})))
        } else {
            let data = match &tensor.values {
                OutputValues::Fp32(values) => json!(values),
                OutputValues::Bytes(texts) => json!(texts),
            };
            (Some(data), None)
        };
        tensors.push(InferOutputTensor {
            name: tensor.name,
            datatype,
            shape: tensor.shape,
            data,
            parameters,
        });
    }
    let response = InferResponse {
        header,
        outputs: tensors,
    };
    if tail.is_empty() {
        return Json(response).into_response();
    }
    // Serializing plain strings and numbers cannot fail.
    let mut body = serde_json::to_vec(&response).unwrap_or_default();
    let header_length = body.len();
    body.extend(tail);
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (
                axum::http::HeaderName::from_static(HEADER_LENGTH),
                header_length.to_string(),
            ),
        ],
        body,
    )
        .into_response()
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
        texts_of(&request, &[])
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

    #[test]
    fn reads_a_bytes_tensor_in_binary_form() {
        let header = json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
            "parameters": {"binary_data_size": 12}}]});
        let request: InferRequest = serde_json::from_value(header).unwrap();
        let tail = binary_tensors::encode_texts(&["ab".to_string(), "cd".to_string()]);
        assert_eq!(texts_of(&request, &tail).unwrap(), vec!["ab", "cd"]);
        // The declared size must be what follows the header.
        let short = &tail[..11];
        match texts_of(&request, short) {
            Err(ApiError::Invalid { field, .. }) => assert_eq!(
                field.as_deref(),
                Some("inputs[0].parameters.binary_data_size")
            ),
            other => panic!("unexpected {other:?}"),
        }
        let neither: InferRequest = serde_json::from_value(
            json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}),
        )
        .unwrap();
        assert!(matches!(
            texts_of(&neither, &[]),
            Err(ApiError::Invalid { field: Some(f), .. }) if f == "inputs[0].data"
        ));
    }

    fn embedding() -> Vec<OutputTensor> {
        vec![OutputTensor {
            name: "embedding",
            shape: vec![1, 2],
            values: OutputValues::Fp32(vec![0.5, 0.25]),
        }]
    }

    #[test]
    fn outputs_are_chosen_by_name_and_binary_flag() {
        let request = |extra: Value| -> InferRequest {
            let mut body = json!({"inputs": []});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            serde_json::from_value(body).unwrap()
        };
        let all_binary = request(json!({"parameters": {"binary_data_output": true}}));
        let chosen = choose_outputs(&all_binary, embedding()).unwrap();
        assert!(chosen[0].1);
        let one_json = request(json!({"parameters": {"binary_data_output": true},
            "outputs": [{"name": "embedding", "parameters": {"binary_data": false}}]}));
        assert!(!choose_outputs(&one_json, embedding()).unwrap()[0].1);
        let unknown = request(json!({"outputs": [{"name": "logits"}]}));
        match choose_outputs(&unknown, embedding()) {
            Err(ApiError::Invalid { field, message }) => {
                assert_eq!(field.as_deref(), Some("outputs[0].name"));
                assert!(message.contains("embedding"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn binary_outputs_follow_the_json_header() {
        let header = InferResponseHeader {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
        };
        let response = render(header, vec![(embedding().remove(0), true)]);
        let length: usize = response.headers()[HEADER_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body =
            futures::executor::block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
                .unwrap();
        let (json_header, tail) = body.split_at(length);
        let json_header: Value = serde_json::from_slice(json_header).unwrap();
        assert_eq!(
            json_header["outputs"][0]["parameters"]["binary_data_size"],
            8
        );
        assert!(json_header["outputs"][0].get("data").is_none());
        assert!(json_header.get("id").is_none());
        assert_eq!(tail, binary_tensors::encode_fp32(&[0.5, 0.25]).as_slice());
    }
}
