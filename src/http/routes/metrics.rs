//! `GET /metrics`: Prometheus text (§7). Authenticated unless
//! `auth.metrics_public` is set.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa_axum::routes;

use crate::http::auth::{Access, Routes};
use crate::http::error::ApiError;
use crate::http::AppState;

pub fn router() -> Routes<AppState> {
    Routes::new().routes(Access::Metrics, routes!(metrics))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("bearer" = [])),
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = crate::http::openapi::ErrorBody),
              (status = 503, body = crate::http::openapi::ErrorBody)))]
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("no metrics recorder is installed in this process"))?;
    // Gauges that describe the moment are read now rather than kept current.
    let (open, idle, max) = state.engine.store().pool_status();
    metrics::gauge!("allot_db_pool_connections", "state" => "idle").set(f64::from(idle));
    metrics::gauge!("allot_db_pool_connections", "state" => "in_use")
        .set(f64::from(open.saturating_sub(idle)));
    metrics::gauge!("allot_db_pool_max_connections").set(f64::from(max));
    metrics::gauge!("allot_config_revision").set(state.engine.snapshot().revision as f64);
    metrics::gauge!("allot_config_age_seconds").set(state.engine.config_age().as_secs_f64());
    handle.run_upkeep();
    let mut text = handle.render();
    // Kept apart from the recorder so that they can be removed with their
    // experiment (see `engine::counters`).
    state.engine.render_experiment_metrics(&mut text);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
