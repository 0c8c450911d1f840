//! [`ApiError`]: the one error shape of every non-2xx answer (contract §1).
//!
//! Handlers and extractors return an `ApiError`; it travels in the response's
//! extensions to the edge middleware (`http::edge`), which knows the request
//! id and writes the body with [`render`]. 5xx causes are logged there, inside the request span,
//! and never shown to the client beyond a short sentence.

use super::openapi::{ErrorBody, ErrorObject};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::domain::problem::Problem;
use crate::engine::EngineError;

pub const REQUEST_ID: &str = "x-request-id";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<Problem>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not answer that method",
        )
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(cause: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", cause)
    }

    /// The error object, as it stands in a body or in a batch result. A 500
    /// says only that it happened; its cause goes to the log.
    pub fn object(&self, request_id: &str) -> ErrorObject {
        let message = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            "internal error; the request id identifies it in the server log".to_owned()
        } else {
            self.message.clone()
        };
        ErrorObject {
            code: self.code.to_owned(),
            message,
            details: self.details.clone(),
            request_id: request_id.to_owned(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
            EngineError::Validation(details) => {
                let message = match details.as_slice() {
                    [one] => format!(
                        "{} {}",
                        if one.path.is_empty() {
                            "the request"
                        } else {
                            &one.path
                        },
                        one.message
                    ),
                    _ => format!("the request breaks {} rules; see details", details.len()),
                };
                Self {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: "validation_failed",
                    message,
                    details,
                }
            }
            e @ EngineError::VersionMismatch { .. } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                e.to_string(),
            ),
            EngineError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            EngineError::Unavailable(m) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            EngineError::Internal(m) => Self::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Writes the body of `error`, which `response` carried, with the request id.
pub fn render(
    error: ApiError,
    request_id: Option<&HeaderValue>,
    response: &Response,
    method: &str,
    route: &str,
) -> Response {
    let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or_default();
    if error.status.is_server_error() {
        tracing::error!(
            request_id,
            method,
            route,
            status = error.status.as_u16(),
            cause = %error.message,
            "request failed"
        );
    }
    let mut rendered = (
        error.status,
        Json(ErrorBody {
            error: error.object(request_id),
        }),
    )
        .into_response();
    // Keep headers a handler set (e.g. WWW-Authenticate on 401), but not a stale length.
    for (name, value) in response.headers() {
        if name != axum::http::header::CONTENT_LENGTH && name != axum::http::header::CONTENT_TYPE {
            rendered.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        rendered.headers_mut().insert(REQUEST_ID, value);
    }
    rendered
}
