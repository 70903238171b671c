//! Request bodies: JSON read with a size limit and decoded with the path of the first bad value, so a
//! wrong type deep in a request is reported as `texts[3]` rather than "line 1 column 57".

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Decodes `body` as `T`. Syntax errors are 400; a wrong type or value is 422 with the field's path.
pub fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = read_body(body)?;
    require_json(headers)?;
    decode(&body)
}

/// The body, or why it could not be read (413 past the size limit).
pub fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge {
                field: None,
                message: "request body exceeds the size limit".into(),
            }
        } else {
            ApiError::Malformed {
                message: format!("cannot read the request body: {rejection}"),
            }
        }
    })
}

/// 415 unless the content type, when given, is JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let is_json = content_type
            .to_str()
            .map(|v| {
                let essence = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "the request body must be application/json".into(),
            ));
        }
    }
    Ok(())
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = result.map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::Invalid {
                field: (path != ".").then_some(path),
                message: strip_position(&inner.to_string()),
            },
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => ApiError::Malformed {
                message: format!("malformed JSON: {inner}"),
            },
        }
    })?;
    // Trailing bytes after the value would be silently ignored otherwise.
    deserializer.end().map_err(|e| ApiError::Malformed {
        message: format!("malformed JSON: {e}"),
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C" to data errors; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        texts: Vec<String>,
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = decode::<Body>(br#"{"texts": ["a", "b", 3]}"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        match err {
            ApiError::Invalid { field, .. } => assert_eq!(field.as_deref(), Some("texts[2]")),
            other => panic!("unexpected {other:?}"),
        }
        let err = decode::<Body>(br#"{"text": ["a"]}"#).unwrap_err();
        assert!(err.to_string().contains("texts"), "{err}");
    }

    #[test]
    fn broken_json_is_a_bad_request() {
        for body in [
            &b"{\"texts\": [\"a\""[..],
            b"",
            b"not json",
            b"{\"texts\": [\"a\"]} trailing",
        ] {
            let err = decode::<Body>(body).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{body:?}");
        }
    }
}
