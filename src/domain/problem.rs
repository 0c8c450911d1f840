//! A validation problem: where in the request body, and what is wrong.
//!
//! Validation collects every problem it finds instead of stopping at the
//! first, so that a client fixes a document in one round trip.

use serde::Serialize;

/// One entry of the `details` array of a 422 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// JSON Pointer into the request body ("" is the whole body).
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Appends a JSON Pointer segment, escaping `~` and `/` as RFC 6901 says.
pub fn pointer(base: &str, segment: impl std::fmt::Display) -> String {
    let segment = segment.to_string().replace('~', "~0").replace('/', "~1");
    format!("{base}/{segment}")
}
