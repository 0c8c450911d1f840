//! `/v1/experiments/{key}/cohorts` and the routing audit log (§5).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::routes;

use crate::http::auth::{Access, Routes};
use crate::http::error::ApiError;
use crate::http::extract::{PathParams, QueryParams};
use crate::http::openapi::ErrorBody;
use crate::http::views::{self, CohortView, EventPage, ParticipantView};
use crate::http::AppState;

pub fn router() -> Routes<AppState> {
    Routes::new()
        .routes(Access::Client, routes!(list_cohorts))
        .routes(Access::Client, routes!(list_cohort_participants))
        .routes(Access::Client, routes!(list_routing_events))
}

/// Every cohort of the experiment with its member counts.
#[utoipa::path(get, path = "/v1/experiments/{key}/cohorts", tag = "routing", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key")),
    responses((status = 200, body = Vec<CohortView>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn list_cohorts(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Response, ApiError> {
    let cohorts = state.engine.cohorts(&key).await?;
    Ok(Json(views::all::<_, CohortView>(cohorts)).into_response())
}

/// The participants of one cohort.
#[utoipa::path(get, path = "/v1/experiments/{key}/cohorts/{cohort_id}/participants", tag = "routing",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), ("cohort_id" = String, Path)),
    responses((status = 200, body = Vec<ParticipantView>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn list_cohort_participants(
    State(state): State<AppState>,
    PathParams((key, cohort)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let members = state.engine.cohort_participants(&key, &cohort).await?;
    Ok(Json(views::all::<_, ParticipantView>(members)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// 1 to 1000, default 100.
    limit: Option<i64>,
    /// The `next_before` of the previous page.
    before: Option<i64>,
}

/// Every status change, newest first, in pages.
#[utoipa::path(get, path = "/v1/experiments/{key}/routing/events", tag = "routing", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), Page),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_routing_events(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    QueryParams(page): QueryParams<Page>,
) -> Result<Response, ApiError> {
    let limit = super::page_limit(page.limit)?;
    let events = state
        .engine
        .routing_events(&key, limit, page.before)
        .await?;
    Ok(Json(EventPage::from(events)).into_response())
}
