//! Assignment: one unit (`/v1/experiments/{key}/assign`) or a batch (`/v1/assign`) (§4.3).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::routes;

use crate::http::auth::{Access, Routes};
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, PathParams, RequestId};
use crate::http::openapi::{AssignInput, BatchAnswer, BatchInput, BatchResult, ErrorBody};
use crate::http::requests;
use crate::http::views::Assignment;
use crate::http::AppState;

pub fn router() -> Routes<AppState> {
    Routes::new()
        .routes(Access::Client, routes!(assign))
        .routes(Access::Client, routes!(assign_batch))
}

/// The treatment of one unit of work, with the reason.
#[utoipa::path(post, path = "/v1/experiments/{key}/assign", tag = "assignment", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key")),
    request_body = AssignInput,
    responses((status = 200, body = Assignment), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn assign(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = requests::assign_request(body, "")?;
    let assignment = state.engine.assign(&key, request).await?;
    Ok(Json(Assignment::from(assignment)).into_response())
}

/// Up to 1000 assignments in request order; an item's error does not fail the others.
#[utoipa::path(post, path = "/v1/assign", tag = "assignment", security(("bearer" = [])),
    request_body = BatchInput,
    responses((status = 200, body = BatchAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn assign_batch(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let results: Vec<BatchResult> = state
        .engine
        .assign_batch(requests::batch(body)?)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(a) => BatchResult::Assigned(a.into()),
            Err(e) => BatchResult::Failed(ErrorBody {
                error: ApiError::from(e).object(&request_id),
            }),
        })
        .collect();
    Ok(Json(BatchAnswer { results }).into_response())
}
