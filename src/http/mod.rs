//! The HTTP surface: the router and its middleware stack.

pub mod auth;
pub mod body;
pub mod edge;
pub mod error;
pub mod extract;
pub mod openapi;
pub(crate) mod requests;
pub mod routes;
pub mod views;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::{AuthSettings, Settings};
use crate::engine::Engine;
use auth::{Access, Auth, Routes};
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Set when shutdown begins, so `/readyz` turns 503 at once.
    pub shutting_down: Arc<AtomicBool>,
    /// `/readyz` turns 503 when the configuration is older than this.
    pub max_config_age: Option<Duration>,
    /// Renders `/metrics`; `None` if the process has another recorder.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("engine", &self.engine)
            .field("shutting_down", &self.shutting_down)
            .field("max_config_age", &self.max_config_age)
            .finish_non_exhaustive()
    }
}

/// Every documented route, for the router and the OpenAPI document alike,
/// each behind the check of the access its module declares (`auth`).
fn api(auth: &Auth) -> OpenApiRouter<AppState> {
    Routes::new()
        .merge(routes::health::router())
        .merge(routes::flags::router())
        .merge(routes::experiments::router())
        .merge(routes::results::router())
        .merge(routes::assign::router())
        .merge(routes::participants::router())
        .merge(routes::cohorts::router())
        .merge(routes::metrics::router())
        .into_router(openapi::ApiDoc::openapi(), auth)
}

/// The OpenAPI 3.1 document of every endpoint (`allot openapi`, `/openapi.json`).
pub fn openapi_document() -> serde_json::Value {
    // The checks leave no trace in the document, so no tokens are needed.
    document(api(&Auth::new(&AuthSettings::default())).into_openapi())
}

/// The document the annotations give, completed with what every operation
/// shares.
fn document(generated: utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(generated).unwrap_or_default();
    openapi::complete(&mut doc);
    doc
}

/// The whole application router.
pub fn router(state: AppState, settings: &Settings) -> Router {
    let request_id = HeaderName::from_static(error::REQUEST_ID);
    let auth = Auth::new(&settings.auth);
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let (api, generated) = api(&auth).split_for_parts();
    let document: Arc<str> = serde_json::to_string_pretty(&document(generated))
        .unwrap_or_default()
        .into();
    api.route(
        "/openapi.json",
        // Not in the document it serves, so not among `api`'s routes: guarded here.
        auth.guard(
            Access::Open,
            axum::routing::get(move || {
                let document = Arc::clone(&document);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        document.to_string(),
                    )
                }
            }),
        ),
    )
    // Neither fallback is guarded: an unknown path or method is a plain 404
    // or 405 for everyone.
    .fallback(|| async { ApiError::not_found("no such route") })
    .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
    // Bodies over the limit are refused by the JSON extractor with a 413.
    .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
    .with_state(state)
    .layer(
        // Outermost first.
        ServiceBuilder::new()
            // Tokens never reach the logs.
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
            ]))
            // Keep the client's x-request-id, or make one.
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            // Echo it on every response.
            .layer(PropagateRequestIdLayer::new(request_id))
            // Request span, timeout, error bodies with the request id, metrics.
            .layer(axum::middleware::from_fn_with_state(timeout, edge::edge))
            // A panic becomes a 500 in the same shape instead of a dropped connection.
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                |panic: Box<dyn std::any::Any + Send>| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    axum::response::IntoResponse::into_response(ApiError::internal(format!(
                        "handler panicked: {what}"
                    )))
                },
            )),
    )
}
