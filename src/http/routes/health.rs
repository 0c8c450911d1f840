//! Probes (§7): `/healthz` does no I/O; `/readyz` asks the store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::http::AppState;

/// How long readiness waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

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
