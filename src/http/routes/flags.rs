//! `/v1/flags`: eligibility flags, their per-org overrides and evaluation (§2).

use crate::domain::ids::OrgId;
use crate::http::requests;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::{versioned, write_status};
use crate::http::auth::{Access, Actor, Routes};
use crate::http::error::ApiError;
use crate::http::extract::{IfMatch, JsonBody, PathParams, QueryParams};
use crate::http::openapi::{ErrorBody, EvaluateInput, FlagInput, OverrideInput};
use crate::http::views::{
    self, FlagEvaluation, FlagHistoryPage, FlagListEntry, FlagView, OverridePage, OverrideView,
};
use crate::http::AppState;

pub fn router() -> Routes<AppState> {
    Routes::new()
        .routes(Access::Client, routes!(list_flags))
        .routes(Access::Client, routes!(get_flag))
        .routes(Access::Admin, routes!(put_flag, delete_flag))
        .routes(Access::Client, routes!(list_overrides))
        .routes(Access::Admin, routes!(put_override, delete_override))
        .routes(Access::Client, routes!(evaluate_flag))
        .routes(Access::Client, routes!(flag_history))
}

/// Every flag, by key.
#[utoipa::path(get, path = "/v1/flags", tag = "flags", security(("bearer" = [])),
    responses((status = 200, body = Vec<FlagListEntry>), (status = 401, body = ErrorBody)))]
async fn list_flags(State(state): State<AppState>) -> Response {
    Json(views::all::<_, FlagListEntry>(state.engine.list_flags())).into_response()
}

/// One flag (`ETag` is its version).
#[utoipa::path(get, path = "/v1/flags/{key}", tag = "flags", security(("bearer" = [])),
    params(("key" = String, Path, description = "Flag key")),
    responses((status = 200, body = FlagView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn get_flag(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Response, ApiError> {
    let flag = state.engine.get_flag(&key).await?;
    Ok(versioned(
        StatusCode::OK,
        flag.version,
        FlagView::from(flag),
    ))
}

/// Creates (201) or updates (200) a flag; an identical document makes no new version.
#[utoipa::path(put, path = "/v1/flags/{key}", tag = "flags", security(("bearer" = [])),
    params(("key" = String, Path, description = "Flag key"),
           ("If-Match" = Option<String>, Header, description = "Only if this is the current version")),
    request_body = FlagInput,
    responses((status = 200, body = FlagView), (status = 201, body = FlagView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 412, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn put_flag(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    IfMatch(if_match): IfMatch,
    actor: Option<Extension<Actor>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let key = requests::path_key(&key, "flag")?;
    let actor = actor.and_then(|Extension(Actor(name))| name);
    let (flag, outcome) = state
        .engine
        .put_flag(&key, &body, if_match, actor.as_deref())
        .await?;
    Ok(versioned(
        write_status(outcome),
        flag.version,
        FlagView::from(flag),
    ))
}

/// Deletes a flag and its overrides (409 while an experiment uses it).
#[utoipa::path(delete, path = "/v1/flags/{key}", tag = "flags", security(("bearer" = [])),
    params(("key" = String, Path, description = "Flag key"),
           ("If-Match" = Option<String>, Header, description = "Only if this is the current version")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn delete_flag(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    IfMatch(if_match): IfMatch,
    actor: Option<Extension<Actor>>,
) -> Result<StatusCode, ApiError> {
    let actor = actor.and_then(|Extension(Actor(name))| name);
    state
        .engine
        .delete_flag(&key, if_match, actor.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// 1 to 1000, default 100.
    limit: Option<i64>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// A flag's per-org overrides, by org id, in pages.
#[utoipa::path(get, path = "/v1/flags/{key}/orgs", tag = "flags", security(("bearer" = [])),
    params(("key" = String, Path, description = "Flag key"), Page),
    responses((status = 200, body = OverridePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_overrides(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    QueryParams(page): QueryParams<Page>,
) -> Result<Response, ApiError> {
    let limit = super::page_limit(page.limit)?;
    let page = state
        .engine
        .list_overrides(&key, limit, page.after.as_deref())
        .await?;
    Ok(Json(OverridePage::from(page)).into_response())
}

/// Sets an org's explicit decision (201 new, 200 replaced).
#[utoipa::path(put, path = "/v1/flags/{key}/orgs/{org_id}", tag = "flags", security(("bearer" = [])),
    params(("key" = String, Path, description = "Flag key"), ("org_id" = String, Path, description = "Org id")),
    request_body = OverrideInput,
    responses((status = 200, body = OverrideView), (status = 201, body = OverrideView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn put_override(
    State(state): State<AppState>,
    PathParams((key, org_id)): PathParams<(String, String)>,
    actor: Option<Extension<Actor>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let org: OrgId = requests::path_id(&org_id, "org id")?;
    let enabled = requests::override_enabled(&body)?;
    let actor = actor.and_then(|Extension(Actor(name))| name);
    let (record, outcome) = state
        .engine
        .set_override(&key, &org, enabled, actor.as_deref())
        .await?;
    Ok((write_status(outcome), Json(OverrideView::from(record))).into_response())
}

/// Removes an org's override.
#[utoipa::path(delete, path = "/v1/flags/{key}/orgs/{org_id}", tag = "flags", security(("bearer" = [])),
    params(("key" = String, Path, description = "Flag key"), ("org_id" = String, Path, description = "Org id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_override(
    State(state): State<AppState>,
    PathParams((key, org_id)): PathParams<(String, String)>,
    actor: Option<Extension<Actor>>,
) -> Result<StatusCode, ApiError> {
    let actor = actor.and_then(|Extension(Actor(name))| name);
    state
        .engine
        .delete_override(&key, &org_id, actor.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Evaluates the flag for an org, with the reason.
#[utoipa::path(post, path = "/v1/flags/{key}/evaluate", tag = "flags", security(("bearer" = [])),
    params(("key" = String, Path, description = "Flag key")),
    request_body = EvaluateInput,
    responses((status = 200, body = FlagEvaluation), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn evaluate_flag(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (org, attributes) = requests::evaluation(body)?;
    let evaluation = state.engine.evaluate_flag(&key, org, attributes).await?;
    Ok(Json(FlagEvaluation::from(evaluation)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryPage {
    /// 1 to 1000, default 100.
    limit: Option<i64>,
    /// The `next_before` of the previous page.
    before: Option<i64>,
}

/// The flag's audit trail, newest first, in pages: every write and every
/// override change with the token that made it (§2). Readable after the
/// flag is deleted.
#[utoipa::path(get, path = "/v1/flags/{key}/history", tag = "flags", security(("bearer" = [])),
    params(("key" = String, Path, description = "Flag key"), HistoryPage),
    responses((status = 200, body = FlagHistoryPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn flag_history(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    QueryParams(page): QueryParams<HistoryPage>,
) -> Result<Response, ApiError> {
    let limit = super::page_limit(page.limit)?;
    let events = state.engine.flag_history(&key, limit, page.before).await?;
    Ok(Json(FlagHistoryPage::from(events)).into_response())
}
