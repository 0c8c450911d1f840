//! `/v1/experiments/{key}/participants`: register, read, route, accept,
//! decline (§5).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};

use super::write_status;
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, PathParams};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/experiments/{key}/participants/{participant_id}",
            put(register).get(read),
        )
        .route(
            "/v1/experiments/{key}/participants/{participant_id}/route",
            post(route),
        )
        .route(
            "/v1/experiments/{key}/participants/{participant_id}/accept",
            post(accept),
        )
        .route(
            "/v1/experiments/{key}/participants/{participant_id}/decline",
            post(decline),
        )
}

type Ids = PathParams<(String, String)>;

async fn register(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (view, outcome) = state.engine.register_participant(&key, &id, body).await?;
    Ok((write_status(outcome), Json(view)).into_response())
}

async fn read(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine.get_participant(&key, &id).await?).into_response())
}

async fn route(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine.route_participant(&key, &id).await?).into_response())
}

async fn accept(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine.accept(&key, &id).await?).into_response())
}

async fn decline(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine.decline(&key, &id).await?).into_response())
}
