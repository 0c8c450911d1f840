//! Probes (§7): `/healthz` does no I/O; `/readyz` asks the store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::AppState;

/// How long readiness waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// 200 while the process serves; no I/O.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = crate::http::openapi::Health)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 once the store answers; 503 if it does not, or once shutdown began.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = crate::http::openapi::Readiness), (status = 503, body = crate::http::openapi::Readiness)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response()
    };
    if state.shutting_down.load(Ordering::Relaxed) {
        return not_ready("shutting down".into());
    }
    match state.engine.check_store(READY_TIMEOUT).await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => not_ready(reason),
    }
}
