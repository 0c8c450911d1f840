//! The HTTP ceiling for the benchmark in `bench/http.sh`: a bare axum handler
//! that parses the same JSON body as `/v1/experiments/{key}/assign` and
//! answers a constant. allot's figure is reported as a share of this one.

// A tool, not the service: a failure stops it with the message given.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18182".into());
    let app = Router::new().route(
        "/v1/experiments/{key}/assign",
        post(|Json(_body): Json<Value>| async {
            Json(json!({"experiment": "code-review", "version": 1, "org_id": "42", "unit_id": "getsentry/sentry#1",
                        "treatment": "noop", "payload": null, "bucket": 1234, "reason": "assigned"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
