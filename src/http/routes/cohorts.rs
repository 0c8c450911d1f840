//! `/v1/experiments/{key}/cohorts` and the routing audit log (§5).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::http::extract::{PathParams, QueryParams};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/experiments/{key}/cohorts", get(list))
        .route(
            "/v1/experiments/{key}/cohorts/{cohort_id}/participants",
            get(members),
        )
        .route("/v1/experiments/{key}/routing/events", get(events))
}

async fn list(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine.cohorts(&key).await?).into_response())
}

async fn members(
    State(state): State<AppState>,
    PathParams((key, cohort)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine.cohort_participants(&key, &cohort).await?).into_response())
}

#[derive(Deserialize)]
struct Page {
    limit: Option<i64>,
    before: Option<i64>,
}

async fn events(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    QueryParams(page): QueryParams<Page>,
) -> Result<Response, ApiError> {
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be from 1 to 1000"));
    }
    Ok(Json(
        state
            .engine
            .routing_events(&key, limit, page.before)
            .await?,
    )
    .into_response())
}
