//! [`ApiError`]: the one error shape of every non-2xx answer (§1).
//!
//! Handlers and extractors return an `ApiError`; it travels in the response's
//! extensions to the edge middleware (`http::edge`), which knows the request
//! id and writes the body with [`render`]. A 5xx keeps its typed cause (a
//! store error with its driver error, a panic, an invariant of allot's own);
//! the cause is logged there with the request id and never shown to the
//! client, whose body says only what happened and which id to look for.

use std::error::Error as StdError;
use std::sync::Arc;

use super::openapi::{ErrorBody, ErrorObject};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::domain::problem::Problem;
use crate::engine::EngineError;
use crate::store::StoreError;

/// Why a request failed on the server's side: for the log, never the body.
pub type Cause = Arc<dyn StdError + Send + Sync>;

pub const REQUEST_ID: &str = "x-request-id";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<Problem>,
    /// The cause of a 5xx, logged with the request id.
    pub cause: Option<Cause>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            cause: None,
        }
    }

    fn with_cause(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
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

    /// A failure of allot's own: the body says only that it happened.
    pub fn internal(cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the request id identifies it in the server log",
        )
        .with_cause(Arc::from(cause.into()))
    }

    /// The store failed: 503 when it went away (try again), else 500.
    fn store(e: Arc<StoreError>) -> Self {
        let error = match &*e {
            StoreError::Unavailable(_) => Self::unavailable(
                "the store is unavailable; try again shortly (the request id identifies the cause in the server log)",
            ),
            _ => Self::internal(""),
        };
        error.with_cause(e)
    }

    /// The error object, as it stands in a body or in a batch result.
    pub fn object(&self, request_id: &str) -> ErrorObject {
        ErrorObject {
            code: self.code.to_owned(),
            message: self.message.clone(),
            details: self.details.clone(),
            request_id: request_id.to_owned(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(m) => Self::not_found(m.to_string()),
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
                    cause: None,
                }
            }
            e @ EngineError::VersionMismatch { .. } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                e.to_string(),
            ),
            EngineError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            EngineError::Unavailable(reason) => {
                Self::unavailable(reason.to_string()).with_cause(Arc::new(reason))
            }
            EngineError::Store(e) => {
                // Counted here, where the failure becomes an answer.
                crate::engine::count_store_error(&e);
                Self::store(e)
            }
            EngineError::Internal(e) => Self::internal(e),
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

/// A cause and its sources, `a: b: c`, for one log field.
struct Chain<'a>(Option<&'a (dyn StdError + Send + Sync)>);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(cause) = self.0 else {
            return f.write_str("-");
        };
        write!(f, "{cause}")?;
        let mut source = cause.source();
        while let Some(s) = source {
            // thiserror's `{0}` with `#[source]` already shows the source.
            let text = s.to_string();
            if !cause.to_string().ends_with(&text) {
                write!(f, ": {text}")?;
            }
            source = s.source();
        }
        Ok(())
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
            message = %error.message,
            cause = %Chain(error.cause.as_deref()),
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
    // The rest of an oversized body is not read, so the connection cannot
    // carry another request: say so, or a pooled client would reuse it.
    if error.status == StatusCode::PAYLOAD_TOO_LARGE {
        rendered.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    rendered
}
