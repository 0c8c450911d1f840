//! Probes (§7): `/healthz` does no I/O; `/readyz` reports the store and
//! the configuration's age, and is unready only while shutting down or when
//! the configuration is older than `readiness_max_config_age_secs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa_axum::routes;

use crate::http::auth::{Access, Routes};
use crate::http::AppState;

/// How long readiness waits for the store before calling it unreachable.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router() -> Routes<AppState> {
    Routes::new()
        .routes(Access::Open, routes!(healthz))
        .routes(Access::Open, routes!(readyz))
}

/// 200 while the process serves; no I/O.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = crate::http::openapi::Health)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 while serving, with the store's state and the configuration's age: a
/// store outage alone does not make a replica unready, since it keeps
/// answering from its loaded configuration. 503 once shutdown began, or when
/// the configuration is older than `readiness_max_config_age_secs`.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = crate::http::openapi::Ready), (status = 503, body = crate::http::openapi::NotReady)))]
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
    let store = match state.engine.check_store(STORE_TIMEOUT).await {
        Ok(()) => "ok",
        Err(why) => {
            tracing::warn!(reason = %why, "readiness: the store is unreachable; serving the loaded configuration");
            "unreachable"
        }
    };
    let age = state.engine.config_age();
    if let Some(max) = state.max_config_age {
        if age > max {
            return not_ready(format!(
                "the configuration was last confirmed current {} ms ago, more than readiness_max_config_age_secs ({} s); the store is {store}",
                age.as_millis(),
                max.as_secs()
            ));
        }
    }
    let config_age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    Json(json!({"status": "ready", "store": store, "config_age_ms": config_age_ms})).into_response()
}
