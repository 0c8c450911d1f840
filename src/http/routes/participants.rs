//! `/v1/experiments/{key}/participants`: register, read, route, accept,
//! decline (§5).

use std::time::Duration;

use crate::domain::ids::ParticipantId;
use crate::domain::routing::lifecycle::ParticipantStatus;
use crate::http::requests;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::write_status;
use crate::http::auth::{Access, Routes};
use crate::http::edge::MAX_WAIT_SECONDS;
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, PathParams, QueryParams};
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

/// Waiting for a change (§5).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Wait {
    /// 1 to 60: answer as soon as the status is not `status`, or after this
    /// many seconds with the state then. Absent: answer at once.
    wait_seconds: Option<i64>,
    /// The status to wait to change; default: the participant's status now.
    status: Option<ParticipantStatus>,
}

/// A participant's status, cohort and resolved variables; with
/// `wait_seconds`, as soon as its status changes (a long-poll: a front end
/// holds one open instead of polling).
#[utoipa::path(get, path = "/v1/experiments/{key}/participants/{participant_id}", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path), Wait),
    responses((status = 200, body = ParticipantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn get_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
    QueryParams(wait): QueryParams<Wait>,
) -> Result<Response, ApiError> {
    let participant = match wait.wait_seconds {
        None => state.engine.get_participant(&key, &id).await?,
        Some(seconds) => {
            let within = match u64::try_from(seconds) {
                Ok(s @ 1..=MAX_WAIT_SECONDS) => Duration::from_secs(s),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "wait_seconds must be from 1 to {MAX_WAIT_SECONDS}"
                    )))
                }
            };
            state
                .engine
                .wait_for_participant(&key, &id, wait.status, within)
                .await?
        }
    };
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
