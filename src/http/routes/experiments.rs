//! `/v1/experiments`: validated upsert, read, delete and version history (§3).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{versioned, write_status};
use crate::http::error::ApiError;
use crate::http::extract::{IfMatch, JsonBody, PathParams};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/experiments", get(list))
        .route(
            "/v1/experiments/{key}",
            get(read).put(upsert).delete(remove),
        )
        .route("/v1/experiments/{key}/versions", get(versions))
}

async fn list(State(state): State<AppState>) -> Response {
    Json(state.engine.list_experiments()).into_response()
}

async fn read(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Response, ApiError> {
    let experiment = state.engine.get_experiment(&key)?;
    Ok(versioned(StatusCode::OK, experiment.version, experiment))
}

async fn upsert(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    IfMatch(if_match): IfMatch,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    // TODO(#4): the authenticated token's name becomes the actor.
    let (experiment, outcome) = state
        .engine
        .put_experiment(&key, &body, if_match, None)
        .await?;
    Ok(versioned(
        write_status(outcome),
        experiment.version,
        experiment,
    ))
}

async fn remove(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_experiment(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn versions(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine.experiment_versions(&key).await?).into_response())
}
