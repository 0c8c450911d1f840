//! Extractors whose rejections are [`ApiError`]s in the error shape of §1.

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::body::BodyError;
use super::error::ApiError;
use crate::domain::precondition::Precondition;
use crate::engine::EngineError;

/// How long a request body may take to arrive once its head has.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A JSON request body, as a value: the engine validates it and reports every
/// problem with its JSON Pointer, which typed deserialisation cannot do. The
/// rules of §1 that hold everywhere (no U+0000, no overflowing number, bounded
/// nesting) are checked here, while parsing (see [`super::body`]).
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::bad_request(
                "the body must be JSON with content-type: application/json",
            ));
        }
        // A client that announces a body and stalls is refused as its own
        // fault, well before the request timeout would answer 503.
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "the body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::payload_too_large("the body is larger than the configured limit")
                } else {
                    ApiError::bad_request(format!("the body could not be read: {}", r.body_text()))
                }
            })?;
        match super::body::parse(&bytes) {
            Ok(value) => Ok(Self(value)),
            Err(BodyError::Syntax(e)) => Err(ApiError::bad_request(format!(
                "the body is not valid JSON: {e}"
            ))),
            Err(BodyError::Invalid { path, message }) => {
                Err(EngineError::validation(path, message).into())
            }
        }
    }
}

/// A JSON body that may be left out (`POST …/drop`): a request with no
/// content type and no body is `None`; anything else is read as a
/// [`JsonBody`], with its rejections.
#[derive(Debug)]
pub struct OptionalJsonBody(pub Option<Value>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers();
        let no_body = !headers.contains_key(header::TRANSFER_ENCODING)
            && headers
                .get(header::CONTENT_LENGTH)
                .is_none_or(|length| length.as_bytes() == b"0");
        if no_body && !headers.contains_key(header::CONTENT_TYPE) {
            return Ok(Self(None));
        }
        JsonBody::from_request(req, state)
            .await
            .map(|body| Self(Some(body.0)))
    }
}

/// `application/json`, or any `application/*+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5
                && subtype.is_char_boundary(subtype.len() - 5)
                && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Path parameters; a rejection (e.g. bad percent-encoding) is a 400.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        reject_nul_in_url(parts.uri.path(), "path")?;
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))
    }
}

/// Ids and cursors in the URL follow the string rule of §1 like the body:
/// U+0000 (only expressible as `%00`) is a 422.
fn reject_nul_in_url(part: &str, which: &str) -> Result<(), ApiError> {
    if part.contains("%00") {
        Err(EngineError::validation(
            "",
            format!("must not contain U+0000 (%00) in its URL {which}"),
        )
        .into())
    } else {
        Ok(())
    }
}

/// A query string; anything it cannot parse is a 400.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        reject_nul_in_url(parts.uri.query().unwrap_or_default(), "query string")?;
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(format!("bad query string: {}", e.body_text()))
            })
    }
}

/// The `If-Match` header (§1 "Versions"): `"3"`, `3`, `W/"3"`, a list of
/// those, or `*`.
#[derive(Debug)]
pub struct IfMatch(pub Option<Precondition>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get(header::IF_MATCH) else {
            return Ok(Self(None));
        };
        raw.to_str()
            .ok()
            .and_then(Precondition::parse)
            .map(|p| Self(Some(p)))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "If-Match must be * or a version like \"3\" (or a list of them)",
                )
            })
    }
}

/// The request id set by the request-id layer (for batch item errors).
#[derive(Debug)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .headers
            .get(super::error::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Ok(Self(id.to_owned()))
    }
}
