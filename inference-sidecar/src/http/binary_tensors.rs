//! The binary tensor data extension of the Open Inference Protocol over HTTP (Triton's
//! `binary_tensor_data`, which KServe's servers and Triton's own clients speak).
//!
//! A request or response body is a JSON header followed by raw tensor bytes. The header's length
//! is in the `Inference-Header-Content-Length` HTTP header; each tensor sent in binary form says
//! how many bytes of the tail are its own (`parameters.binary_data_size`), in the order the
//! tensors appear in the header. Numbers are little-endian; a BYTES tensor is its elements, each
//! preceded by its length as a 4-byte little-endian unsigned integer.
//!
//! A client asks for outputs in binary form with `parameters.binary_data_output` (all outputs)
//! or `outputs[i].parameters.binary_data` (one output). `tritonclient` sends BYTES inputs in
//! binary form and asks for binary outputs by default.

use axum::http::HeaderMap;

use super::error::ApiError;

/// The HTTP header giving the JSON header's length in bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: Some(field.into()),
        message: message.into(),
    }
}

/// Splits a body into its JSON header and the binary tail. Without the HTTP header the whole
/// body is JSON.
pub fn split_body<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok((body, &[]));
    };
    let field = "Inference-Header-Content-Length";
    let length: usize = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| invalid(field, "must be a non-negative integer"))?;
    if length > body.len() {
        return Err(invalid(
            field,
            format!(
                "says the JSON header is {length} bytes, but the body has {}",
                body.len()
            ),
        ));
    }
    Ok(body.split_at(length))
}

/// The elements of a BYTES tensor in binary form, as UTF-8 texts. `field` names the tensor in
/// errors.
pub fn decode_texts(mut data: &[u8], field: &str) -> Result<Vec<String>, ApiError> {
    let mut texts = Vec::new();
    while !data.is_empty() {
        let index = texts.len();
        let Some((prefix, rest)) = data.split_first_chunk::<4>() else {
            return Err(invalid(
                field,
                format!(
                    "element {index}: {} bytes left, too few for a 4-byte length",
                    data.len()
                ),
            ));
        };
        let length = u32::from_le_bytes(*prefix) as usize;
        if length > rest.len() {
            return Err(invalid(
                field,
                format!(
                    "element {index} claims {length} bytes, but only {} remain",
                    rest.len()
                ),
            ));
        }
        let (bytes, rest) = rest.split_at(length);
        let text = std::str::from_utf8(bytes).map_err(|e| {
            invalid(
                format!("{field}[{index}]"),
                format!("is not UTF-8 text: {e}"),
            )
        })?;
        texts.push(text.to_string());
        data = rest;
    }
    Ok(texts)
}

/// A BYTES tensor in binary form.
pub fn encode_texts(texts: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(texts.iter().map(|t| t.len() + 4).sum());
    for text in texts {
        // Texts longer than 4 GiB cannot occur: bodies and outputs are far smaller.
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out
}

/// An FP32 tensor in binary form.
pub fn encode_fp32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn texts_round_trip_through_the_length_prefixed_form() {
        let texts = vec!["".to_string(), "héllo".to_string(), "a b".to_string()];
        let encoded = encode_texts(&texts);
        assert_eq!(&encoded[..4], &[0, 0, 0, 0]);
        assert_eq!(&encoded[4..8], &[6, 0, 0, 0]);
        assert_eq!(decode_texts(&encoded, "inputs[0]").unwrap(), texts);
    }

    #[test]
    fn truncated_or_invalid_elements_name_the_element() {
        let field = |e: ApiError| match e {
            ApiError::Invalid { field, message } => (field.unwrap_or_default(), message),
            other => panic!("{other:?}"),
        };
        let (f, m) = field(decode_texts(&[5, 0, 0, 0, b'a'], "inputs[0]").unwrap_err());
        assert_eq!(f, "inputs[0]");
        assert!(m.contains("element 0 claims 5 bytes"), "{m}");
        let (_, m) = field(decode_texts(&[1, 0, 0, 0, b'a', 1, 0], "inputs[0]").unwrap_err());
        assert!(m.contains("element 1"), "{m}");
        let (f, _) = field(decode_texts(&[1, 0, 0, 0, 0xff], "inputs[0]").unwrap_err());
        assert_eq!(f, "inputs[0][0]");
    }

    #[test]
    fn the_body_splits_at_the_declared_header_length() {
        let mut headers = HeaderMap::new();
        assert_eq!(split_body(&headers, b"{}").unwrap(), (&b"{}"[..], &b""[..]));
        headers.insert(HEADER_LENGTH, HeaderValue::from_static("2"));
        assert_eq!(
            split_body(&headers, b"{}xyz").unwrap(),
            (&b"{}"[..], &b"xyz"[..])
        );
        headers.insert(HEADER_LENGTH, HeaderValue::from_static("9"));
        assert!(split_body(&headers, b"{}").is_err());
        headers.insert(HEADER_LENGTH, HeaderValue::from_static("-1"));
        assert!(split_body(&headers, b"{}").is_err());
    }

    #[test]
    fn fp32_is_little_endian() {
        assert_eq!(encode_fp32(&[1.0]), 1.0f32.to_le_bytes().to_vec());
    }
}
