//! `/v1/experiments`: validated upsert, read, delete and version history (§3).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::{versioned, write_status};
use crate::http::auth::Actor;
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
    actor: Option<Extension<Actor>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let actor = actor.and_then(|Extension(Actor(name))| name);
    let (experiment, outcome) = state
        .engine
        .put_experiment(&key, &body, if_match, actor)
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
