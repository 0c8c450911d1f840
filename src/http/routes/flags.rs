//! `/v1/flags`: eligibility flags, their per-org overrides and evaluation (§2).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use super::{versioned, write_status};
use crate::http::error::ApiError;
use crate::http::extract::{IfMatch, JsonBody, PathParams, QueryParams};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/flags", get(list))
        .route("/v1/flags/{key}", get(read).put(upsert).delete(remove))
        .route("/v1/flags/{key}/orgs", get(list_overrides))
        .route(
            "/v1/flags/{key}/orgs/{org_id}",
            put(set_override).delete(remove_override),
        )
        .route("/v1/flags/{key}/evaluate", post(evaluate))
}

async fn list(State(state): State<AppState>) -> Response {
    Json(state.engine.list_flags()).into_response()
}

async fn read(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Response, ApiError> {
    let flag = state.engine.get_flag(&key)?;
    Ok(versioned(StatusCode::OK, flag.version, flag))
}

async fn upsert(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    IfMatch(if_match): IfMatch,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (flag, outcome) = state.engine.put_flag(&key, &body, if_match).await?;
    Ok(versioned(write_status(outcome), flag.version, flag))
}

async fn remove(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_flag(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Page {
    limit: Option<i64>,
    after: Option<String>,
}

async fn list_overrides(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    QueryParams(page): QueryParams<Page>,
) -> Result<Response, ApiError> {
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be from 1 to 1000"));
    }
    let page = state
        .engine
        .list_overrides(&key, limit, page.after.as_deref())
        .await?;
    Ok(Json(page).into_response())
}

async fn set_override(
    State(state): State<AppState>,
    PathParams((key, org_id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (view, outcome) = state.engine.set_override(&key, &org_id, &body).await?;
    Ok((write_status(outcome), Json(view)).into_response())
}

async fn remove_override(
    State(state): State<AppState>,
    PathParams((key, org_id)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_override(&key, &org_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn evaluate(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine.evaluate_flag(&key, body)?).into_response())
}
