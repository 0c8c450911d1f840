//! The edge middleware: what every request goes through once, in one place
//! (one boxed future instead of four): the request span, the request timeout,
//! the error body of §1 with the request id, and the request metrics.
//!
//! The span (method, route, request id, then status and latency) is at DEBUG
//! level: at the default INFO a per-request span costs about a tenth of the
//! service's throughput. Errors are logged at INFO and above with the same
//! fields either way, so a failed request is always traceable by its id.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::error::{self, ApiError, REQUEST_ID};

/// The longest a request may ask to wait for a change (`wait_seconds`, §5).
pub const MAX_WAIT_SECONDS: u64 = 60;

/// The `wait_seconds` a request asks for (at most [`MAX_WAIT_SECONDS`]):
/// its time limit is that much longer. Whether the value is valid is its
/// handler's business.
fn asked_wait(query: Option<&str>) -> Duration {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("wait_seconds="))
        .filter_map(|v| v.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(MAX_WAIT_SECONDS)))
        .max()
        .unwrap_or_default()
}

pub async fn edge(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let limit = limit + asked_wait(request.uri().query());
    // A header value clone shares its bytes: the happy path copies nothing.
    let request_id = request.headers().get(REQUEST_ID).cloned();
    let method = static_method(request.method());
    let started = Instant::now();
    let span = tracing::debug_span!(
        "request",
        method,
        path = %request.uri().path(),
        request_id = request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default(),
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let mut response =
        match tokio::time::timeout(limit, next.run(request).instrument(span.clone())).await {
            Ok(response) => response,
            Err(_) => ApiError::unavailable(format!("the request did not finish within {limit:?}"))
                .into_response(),
        };
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| intern(m.as_str()));
    if let Some(error) = response.extensions_mut().remove::<ApiError>() {
        response = error::render(error, request_id.as_ref(), &response, method, route);
    }
    let elapsed = started.elapsed();
    if !span.is_disabled() {
        span.record("route", route);
        span.record("status", response.status().as_u16());
        span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
        span.in_scope(|| tracing::debug!("answered"));
    }
    metrics::histogram!("allot_http_request_duration_seconds", "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
    metrics::counter!(
        "allot_http_requests_total",
        "method" => method,
        "route" => route,
        "status" => static_status(response.status().as_u16())
    )
    .increment(1);
    response
}

/// Label values as `&'static str`, so that counting a request allocates
/// nothing. Route templates are a fixed, small set: each is leaked once.
fn intern(route: &str) -> &'static str {
    static ROUTES: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());
    if let Some(known) = ROUTES
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|r| **r == route)
    {
        return known;
    }
    let mut routes = ROUTES.write().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = routes.iter().find(|r| **r == route) {
        return known;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    routes.push(leaked);
    leaked
}

fn static_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn static_status(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        412 => "412",
        413 => "413",
        422 => "422",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
