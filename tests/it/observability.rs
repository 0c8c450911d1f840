//! `/metrics` after traffic, and readiness turning 503 when shutdown starts.

use serde_json::json;

use crate::helpers::Backend;
use crate::{on_both_stores, start};

async fn metrics_describe_the_traffic_that_passed(backend: Backend) {
    let (_store, app) = start!(backend);
    let key = format!(
        "metrics-{}",
        match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    );
    app.put(&format!("/v1/experiments/{key}"), json!({
        "treatments": [{"name": "only", "weight": 1}],
        "routing": {"groups": [{"name": "solo", "composition": [{"id": "any", "min_count": 1, "max_count": 1}]}]}}))
        .await
        .expect(201);
    app.post(
        &format!("/v1/experiments/{key}/assign"),
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect(200);
    app.put(
        &format!("/v1/experiments/{key}/participants/p"),
        json!({"attributes": {}}),
    )
    .await
    .expect(201);
    app.post(
        &format!("/v1/experiments/{key}/participants/p/route"),
        json!({}),
    )
    .await
    .expect(200);
    app.get("/v1/no-such-thing")
        .await
        .expect_error(404, "not_found");

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for needle in [
        "allot_http_requests_total{method=\"POST\",route=\"/v1/experiments/{key}/assign\",status=\"200\"}".to_owned(),
        "allot_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}".to_owned(),
        "allot_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/experiments/{key}/assign\"".to_owned(),
        format!("allot_assignments_total{{experiment=\"{key}\",treatment=\"only\",reason=\"assigned\"}} 1"),
        format!("allot_routing_status_changes_total{{experiment=\"{key}\",status=\"assigned\",reason=\"formed\"}} 1"),
        "allot_db_pool_connections{state=\"idle\"}".to_owned(),
        "allot_db_pool_max_connections".to_owned(),
        "allot_config_revision".to_owned(),
    ] {
        assert!(text.contains(&needle), "missing {needle} in:\n{text}");
    }
}

on_both_stores!(metrics_describe_the_traffic_that_passed);
