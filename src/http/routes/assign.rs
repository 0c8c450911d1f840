//! Assignment: one unit (`/v1/experiments/{key}/assign`) or a batch (`/v1/assign`) (§4.3).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::engine::assign::AssignRequest;
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
    let request = AssignRequest::parse(&body, "")?;
    Ok(Json(state.engine.assign(&key, request).await?).into_response())
}

async fn assign_batch(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let results: Vec<Value> = state
        .engine
        .assign_batch(&body)
        .await?
        .into_iter()
        .map(|r| match r {
            Ok(a) => serde_json::to_value(a).unwrap_or(Value::Null),
            Err(e) => json!({"error": ApiError::from(e).object(&request_id)}),
        })
        .collect();
    Ok(Json(json!({"results": results})).into_response())
}
