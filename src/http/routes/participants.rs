//! `/v1/experiments/{key}/participants`: register, read, route, accept,
//! decline, heartbeat, complete, drop; the experimenter's listing and move
//! (§5).

use crate::domain::ids::ParticipantId;
use crate::domain::routing::lifecycle::ParticipantStatus;
use crate::http::requests;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::write_status;
use crate::http::auth::{Access, Actor, Routes};
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, OptionalJsonBody, PathParams, QueryParams};
use crate::http::openapi::{DropInput, ErrorBody, MoveInput, ParticipantInput};
use crate::http::views::{ParticipantPage, ParticipantView};
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
        .routes(Access::Client, routes!(heartbeat_participant))
        .routes(Access::Client, routes!(complete_participant))
        .routes(Access::Client, routes!(drop_participant))
        .routes(Access::Client, routes!(list_participants))
        .routes(Access::Admin, routes!(move_participant))
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
    // Checked first: a refused request changes nothing.
    let within = super::wait_limit(wait.wait_seconds)?;
    // A read is a sign of life (§5 "Liveness").
    let participant = state.engine.heard_from(&key, &id).await?;
    let participant = match within {
        None => participant,
        Some(within) => {
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

/// The participant is still there (§5 "Liveness"): answers its state. A
/// waiting participant that was not live is matched again at once.
#[utoipa::path(post, path = "/v1/experiments/{key}/participants/{participant_id}/heartbeat", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path)),
    responses((status = 200, body = ParticipantView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn heartbeat_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    let id: ParticipantId = requests::path_id(&id, "participant id")?;
    let participant = state.engine.heard_from(&key, id.as_str()).await?;
    Ok(Json(ParticipantView::from(participant)).into_response())
}

/// An assigned participant completes the study; its seat stays taken (a
/// completed one answers as it is, any other status is 409).
#[utoipa::path(post, path = "/v1/experiments/{key}/participants/{participant_id}/complete", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path)),
    responses((status = 200, body = ParticipantView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn complete_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
) -> Result<Response, ApiError> {
    let id: ParticipantId = requests::path_id(&id, "participant id")?;
    let participant = state.engine.complete(&key, &id).await?;
    Ok(Json(ParticipantView::from(participant)).into_response())
}

/// The participant leaves the study: any status but `completed` becomes
/// `dropped` and its seat is freed (a dropped one answers as it is; a
/// completed one is 409). The body, `{"reason": "…"}`, may be left out.
#[utoipa::path(post, path = "/v1/experiments/{key}/participants/{participant_id}/drop", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path)),
    request_body(content = Option<DropInput>, description = "Optional"),
    responses((status = 200, body = ParticipantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn drop_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, ApiError> {
    let id: ParticipantId = requests::path_id(&id, "participant id")?;
    let reason = requests::drop_reason(body)?;
    let participant = state.engine.drop_participant(&key, &id, reason).await?;
    Ok(Json(ParticipantView::from(participant)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only participants of this status.
    #[param(inline)]
    status: Option<ParticipantStatus>,
    /// 1 to 1000, default 100.
    limit: Option<i64>,
    /// The `next` of the previous page (a participant of the experiment;
    /// an unknown one is 404).
    after: Option<String>,
}

/// The experiment's participants, oldest first (by registration), of one
/// status or all, in pages.
#[utoipa::path(get, path = "/v1/experiments/{key}/participants", tag = "routing", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ListQuery),
    responses((status = 200, body = ParticipantPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_participants(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = super::page_limit(query.limit)?;
    let page = state
        .engine
        .list_participants(&key, query.status, limit, query.after.as_deref())
        .await?;
    Ok(Json(ParticipantPage::from(page)).into_response())
}

/// An experimenter places a `new`, `waiting`, `pending` or `assigned`
/// participant in a cohort as `assigned` (event reason `moved`), within its
/// capacity (409 when full); `completed`, `dropped`, `declined` and
/// `timed_out` participants are 409.
#[utoipa::path(post, path = "/v1/experiments/{key}/participants/{participant_id}/move", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("participant_id" = String, Path)),
    request_body = MoveInput,
    responses((status = 200, body = ParticipantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn move_participant(
    State(state): State<AppState>,
    PathParams((key, id)): Ids,
    actor: Option<Extension<Actor>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let id: ParticipantId = requests::path_id(&id, "participant id")?;
    let cohort = requests::move_target(body)?;
    let participant = state.engine.move_participant(&key, &id, &cohort).await?;
    // The routing event (reason `moved`) is the audit record of the change;
    // who made it is logged with it (the event has no actor field).
    let actor = actor.and_then(|Extension(Actor(name))| name);
    tracing::info!(experiment = %key, participant = %id.as_str(), cohort = %cohort,
        actor = actor.as_deref().unwrap_or("-"), "participant moved by hand");
    Ok(Json(ParticipantView::from(participant)).into_response())
}
