//! The HTTP boundary's one error type, mapped to a status code in exactly one place. Every error body
//! is `{"error": "...", "field": "..."}`; `field` names the offending part of the request when there is
//! one (`texts[3]`), so a client can fix its input without reading server logs.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use thiserror::Error;

use crate::encoder::service::ServiceError;

#[derive(Debug, Error)]
pub enum ApiError {
    /// Syntactically broken body.
    #[error("{message}")]
    Malformed { message: String },
    /// Well-formed JSON with a wrong value (`field` says where).
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    /// A field of the API this server does not implement, with a value that would change the
    /// answer (`field` names it).
    #[error("{message}")]
    Unsupported { field: String, message: String },
    #[error("{message}")]
    TooLarge {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotFound(String),
    /// The body did not arrive in time (slow or stalled client).
    #[error("{0}")]
    BodyTimeout(String),
    /// The answer was not ready in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The experiment router's upstream refused or broke the connection.
    #[error("{0}")]
    BadGateway(String),
    /// The experiment router could not reach its upstream in time, or is not ready or draining.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// Seconds a client should wait after a 429 or 503. A batch on this hardware takes well under a
/// second, so one second lets the queue drain without inviting a thundering herd.
const RETRY_AFTER_SECONDS: &str = "1";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed { .. } | Self::Unsupported { .. } => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::RequestTimeout(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Service(e) => match e {
                ServiceError::InvalidInput { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ServiceError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ServiceError::NotReady(_) | ServiceError::Draining => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                ServiceError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
                ServiceError::WrongTask(_) => StatusCode::BAD_REQUEST,
                ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::TooLarge { field, .. } => field.as_deref(),
            Self::Unsupported { field, .. } => Some(field),
            Self::Service(
                ServiceError::InvalidInput { field, .. } | ServiceError::TooLarge { field, .. },
            ) => Some(field),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: self.to_string(),
            field: self.field(),
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}
