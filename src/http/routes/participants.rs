//! `/v1/experiments/{key}/participants`: register, read, route, accept,
//! decline (§5).

use crate::domain::ids::ParticipantId;
use crate::http::requests;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::routes;

use super::write_status;
use crate::http::auth::{Access, Routes};
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, PathParams};
use crate::http::openapi::{ErrorBody, ParticipantInput};
use crate::http::views::ParticipantView;
use crate::http::AppState;

pub fn router() -> Routes<AppState> {
    Routes::new()
        .routes(
            Access::Client,
            routes!(register_participant, get_participant),
        )
        .routes(Access::Client, routes!(route_participant))
        .routes(Access::Client, routes!(accept_participant))
        .routes(Access::Client, routes!(decline_participant))
}

type Ids = PathParams<(String, String)>;

/// Registers a participant (201, status `new`) or replaces its attributes
/// (200; the status does not change).
#[utoipa::path(put, path = "/v1/experiments/{key}/participants/{participant_id}", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path)),
    request_body = ParticipantInput,
    responses((status = 200, body = ParticipantView), (status = 201, body = ParticipantView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn register_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let id: ParticipantId = requests::path_id(&id, "participant id")?;
    let attributes = requests::registration(body)?;
    let (view, outcome) = state
        .engine
        .register_participant(&key, &id, attributes)
        .await?;
    Ok((write_status(outcome), Json(ParticipantView::from(view))).into_response())
}

/// A participant's status, cohort and resolved variables.
#[utoipa::path(get, path = "/v1/experiments/{key}/participants/{participant_id}", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path)),
    responses((status = 200, body = ParticipantView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn get_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    let participant = state.engine.get_participant(&key, &id).await?;
    Ok(Json(ParticipantView::from(participant)).into_response())
}

/// Puts a new participant in the waiting pool and runs matching; any other
/// status answers as it is.
#[utoipa::path(post, path = "/v1/experiments/{key}/participants/{participant_id}/route", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path)),
    responses((status = 200, body = ParticipantView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn route_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    let id: ParticipantId = requests::path_id(&id, "participant id")?;
    let participant = state.engine.route_participant(&key, &id).await?;
    Ok(Json(ParticipantView::from(participant)).into_response())
}

/// A pending participant accepts its seat (an assigned one answers as it is).
#[utoipa::path(post, path = "/v1/experiments/{key}/participants/{participant_id}/accept", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path)),
    responses((status = 200, body = ParticipantView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn accept_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    let id: ParticipantId = requests::path_id(&id, "participant id")?;
    let participant = state.engine.accept(&key, &id).await?;
    Ok(Json(ParticipantView::from(participant)).into_response())
}

/// A pending participant declines; its seat is freed (a declined one answers as it is).
#[utoipa::path(post, path = "/v1/experiments/{key}/participants/{participant_id}/decline", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path)),
    responses((status = 200, body = ParticipantView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn decline_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    let id: ParticipantId = requests::path_id(&id, "participant id")?;
    let participant = state.engine.decline(&key, &id).await?;
    Ok(Json(ParticipantView::from(participant)).into_response())
}
