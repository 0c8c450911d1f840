//! The HTTP surface: the router and its middleware stack.

pub mod auth;
pub mod error;
pub mod extract;
pub mod routes;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{header, HeaderName};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::config::Settings;
use crate::engine::Engine;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Set when shutdown begins, so `/readyz` turns 503 at once.
    pub shutting_down: Arc<AtomicBool>,
    /// Renders `/metrics`; `None` if the process has another recorder.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The whole application router.
pub fn router(state: AppState, settings: &Settings) -> Router {
    let request_id = HeaderName::from_static(error::REQUEST_ID);
    let auth = auth::Auth::new(&settings.auth);
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    Router::new()
        .merge(routes::health::router())
        .merge(routes::flags::router())
        .merge(routes::experiments::router())
        .merge(routes::assign::router())
        .merge(routes::participants::router())
        .merge(routes::cohorts::router())
        .merge(routes::metrics::router())
        // Matched routes only: an unknown path is a plain 404 for everyone.
        .route_layer(axum::middleware::from_fn_with_state(auth, auth::authenticate))
        // Tell the request metrics which route template answered.
        .route_layer(axum::middleware::from_fn(mark_route))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // Bodies over the limit are refused by the JSON extractor with a 413.
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .with_state(state)
        .layer(
            // Outermost first.
            ServiceBuilder::new()
                // Tokens never reach the logs.
                .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
                // Keep the client's x-request-id, or make one.
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                // Echo it on every response.
                .layer(PropagateRequestIdLayer::new(request_id))
                // One span per request, carrying the request id.
                .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                    let id = req.headers().get(error::REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
                }))
                // Requests by route and status, and their latency.
                .layer(axum::middleware::from_fn(count_request))
                // Turn every ApiError into the contract's body, with the id.
                .layer(axum::middleware::from_fn(error::render_errors))
                // A request that runs too long answers 503 instead of hanging.
                .layer(axum::middleware::from_fn_with_state(timeout, limit_time))
                // A panic becomes a 500 in the same shape instead of a dropped connection.
                .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
                    axum::response::IntoResponse::into_response(ApiError::internal("handler panicked"))
                })),
        )
}

/// Middleware: copies the matched route template into the response.
async fn mark_route(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// Middleware: `allot_http_requests_total` and `allot_http_request_duration_seconds`,
/// labelled by route template (never the raw path, whose ids are unbounded).
async fn count_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let status = response.status().as_u16().to_string();
    metrics::histogram!("allot_http_request_duration_seconds", "method" => method.to_string(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("allot_http_requests_total", "method" => method.to_string(), "route" => route, "status" => status)
        .increment(1);
    response
}

/// Middleware: gives up on a request after `limit`.
async fn limit_time(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::unavailable(format!(
            "the request did not finish within {limit:?}"
        ))),
    }
}
