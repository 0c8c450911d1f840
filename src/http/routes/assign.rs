//! Assignment: one unit (`/v1/experiments/{key}/assign`) or a batch (`/v1/assign`) (§4.3).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use crate::engine::assign::{AssignRequest, Assignment};
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, PathParams, RequestId};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/experiments/{key}/assign", post(assign))
        .route("/v1/assign", post(assign_batch))
}

async fn assign(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = AssignRequest::parse(body, "")?;
    Ok(Json(state.engine.assign(&key, request).await?).into_response())
}

async fn assign_batch(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let results: Vec<BatchResult> = state
        .engine
        .assign_batch(body)
        .await?
        .into_iter()
        .map(|r| match r {
            Ok(a) => BatchResult::Assigned(a),
            Err(e) => BatchResult::Failed {
                error: ApiError::from(e).object(&request_id),
            },
        })
        .collect();
    Ok(Json(BatchAnswer { results }).into_response())
}

#[derive(Serialize)]
struct BatchAnswer {
    results: Vec<BatchResult>,
}

/// One item's answer: the assignment, or `{"error": {...}}`.
#[derive(Serialize)]
#[serde(untagged)]
enum BatchResult {
    Assigned(Assignment),
    Failed { error: Value },
}
