//! `/v1/experiments`: validated upsert, read, delete and version history (§3).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use utoipa_axum::routes;

use super::{versioned, write_status};
use crate::http::auth::{Access, Actor, Routes};
use crate::http::error::ApiError;
use crate::http::extract::{IfMatch, JsonBody, PathParams};
use crate::http::openapi::{ErrorBody, ExperimentInput};
use crate::http::views::{self, ExperimentListEntry, ExperimentView, VersionView};
use crate::http::{requests, AppState};

pub fn router() -> Routes<AppState> {
    Routes::new()
        .routes(Access::Client, routes!(list_experiments))
        .routes(Access::Client, routes!(get_experiment))
        .routes(Access::Admin, routes!(put_experiment, delete_experiment))
        .routes(Access::Client, routes!(list_versions))
}

/// Every experiment, by key.
#[utoipa::path(get, path = "/v1/experiments", tag = "experiments", security(("bearer" = [])),
    responses((status = 200, body = Vec<ExperimentListEntry>), (status = 401, body = ErrorBody)))]
async fn list_experiments(State(state): State<AppState>) -> Response {
    Json(views::all::<_, ExperimentListEntry>(
        state.engine.list_experiments(),
    ))
    .into_response()
}

/// One experiment with its current layout (`ETag` is its version).
#[utoipa::path(get, path = "/v1/experiments/{key}", tag = "experiments", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key")),
    responses((status = 200, body = ExperimentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn get_experiment(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Response, ApiError> {
    let experiment = state.engine.get_experiment(&key).await?;
    Ok(versioned(
        StatusCode::OK,
        experiment.version,
        ExperimentView::from(experiment),
    ))
}

/// Creates (201) or updates (200) an experiment: a new version with its
/// layout; an identical document makes no new version.
#[utoipa::path(put, path = "/v1/experiments/{key}", tag = "experiments", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"),
           ("If-Match" = Option<String>, Header, description = "Only if this is the current version")),
    request_body = ExperimentInput,
    responses((status = 200, body = ExperimentView), (status = 201, body = ExperimentView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn put_experiment(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    IfMatch(if_match): IfMatch,
    actor: Option<Extension<Actor>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let actor = actor.and_then(|Extension(Actor(name))| name);
    let key = requests::path_key(&key, "experiment")?;
    let (experiment, outcome) = state
        .engine
        .put_experiment(&key, &body, if_match, actor)
        .await?;
    Ok(versioned(
        write_status(outcome),
        experiment.version,
        ExperimentView::from(experiment),
    ))
}

/// Takes an experiment out of service; its history, assignments and
/// participants are kept, and the deletion is a version of its own.
#[utoipa::path(delete, path = "/v1/experiments/{key}", tag = "experiments", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"),
           ("If-Match" = Option<String>, Header, description = "Only if this is the current version")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 412, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_experiment(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    IfMatch(if_match): IfMatch,
    actor: Option<Extension<Actor>>,
) -> Result<StatusCode, ApiError> {
    let actor = actor.and_then(|Extension(Actor(name))| name);
    state
        .engine
        .delete_experiment(&key, if_match, actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every accepted version, newest first, with its config and layout; a
/// deletion is listed as a version (`deleted: true`), and the history stays
/// readable after it.
#[utoipa::path(get, path = "/v1/experiments/{key}/versions", tag = "experiments", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key")),
    responses((status = 200, body = Vec<VersionView>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn list_versions(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Response, ApiError> {
    let versions = state.engine.experiment_versions(&key).await?;
    Ok(Json(views::all::<_, VersionView>(versions)).into_response())
}
