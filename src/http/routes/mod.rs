//! One file per resource; handlers only translate between HTTP and the engine.
//! Each module's `router()` declares, route by route, who may call it
//! ([`Access`](crate::http::auth::Access)); that line is the only place it is said.

pub mod assign;
pub mod cohorts;
pub mod experiments;
pub mod flags;
pub mod health;
pub mod metrics;
pub mod participants;
pub mod results;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::engine::flags::Outcome;

/// A JSON answer carrying `ETag: "<version>"`.
pub(crate) fn versioned(status: StatusCode, version: i64, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// 201 for a creation, 200 otherwise.
pub(crate) fn write_status(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::Updated | Outcome::Unchanged => StatusCode::OK,
    }
}

/// A wait from the query string (`wait_seconds`, §5): 1 to
/// [`MAX_WAIT_SECONDS`](crate::http::edge::MAX_WAIT_SECONDS), or none.
pub(crate) fn wait_limit(
    seconds: Option<i64>,
) -> Result<Option<std::time::Duration>, crate::http::error::ApiError> {
    use crate::http::edge::MAX_WAIT_SECONDS;
    match seconds.map(u64::try_from) {
        None => Ok(None),
        Some(Ok(s @ 1..=MAX_WAIT_SECONDS)) => Ok(Some(std::time::Duration::from_secs(s))),
        Some(_) => Err(crate::http::error::ApiError::bad_request(format!(
            "wait_seconds must be from 1 to {MAX_WAIT_SECONDS}"
        ))),
    }
}

/// A page size from the query string: 1 to 1000, default 100.
pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, crate::http::error::ApiError> {
    let limit = limit.unwrap_or(100);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(crate::http::error::ApiError::bad_request(
            "limit must be from 1 to 1000",
        ))
    }
}
