//! `/metrics` after traffic, and readiness turning 503 when shutdown starts.

use serde_json::json;

use crate::helpers::{Backend, Proxy};
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
        "allot_config_age_seconds".to_owned(),
    ] {
        assert!(text.contains(&needle), "missing {needle} in:\n{text}");
    }
}

/// Asks `/readyz` until `done` holds for its answer (status, body).
async fn wait_for_readiness(
    app: &crate::helpers::TestApp,
    what: &str,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    crate::helpers::until(&format!("readyz {what}"), async || {
        let answer = app.get("/readyz").await;
        last = answer.body;
        done(answer.status.as_u16(), &last)
    })
    .await;
    last
}

/// PostgreSQL goes away (every connection cut, new ones refused) and comes
/// back. A store outage alone leaves the replica ready (§7: taking every
/// replica out because their shared database blinked would turn a partial
/// outage into a total one), saying `store: unreachable` and letting the
/// configuration's age grow; a replica with `readiness_max_config_age_secs`
/// turns unready once its configuration is older than that. No restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(allot_test_pg),
    ignore = "set TEST_DATABASE_URL to run on PostgreSQL"
)]
async fn postgres_readiness_follows_the_store_going_away_and_coming_back() {
    let Some(store) = crate::helpers::TestStore::new(Backend::Postgres).await else {
        return;
    };
    let proxy = Proxy::start("127.0.0.1:5432".into()).await;
    let mut settings = store.settings();
    let url = settings
        .database_url
        .replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1);
    assert_ne!(
        url, settings.database_url,
        "the test database URL names 127.0.0.1:5432"
    );
    settings.database_url = url;
    settings.db_acquire_timeout_ms = 500;
    settings.refresh_interval_ms = 100;
    let app = crate::helpers::TestApp::spawn_with(settings.clone()).await;
    settings.readiness_max_config_age_secs = 1;
    let strict = crate::helpers::TestApp::spawn_with(settings).await;
    let ready = app.get("/readyz").await.expect(200).body;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["store"], "ok");
    assert!(ready["config_age_ms"].as_u64().is_some(), "{ready}");
    strict.get("/readyz").await.expect(200);
    app.put(
        "/v1/experiments/e",
        json!({"treatments": [{"name": "a", "weight": 1}]}),
    )
    .await
    .expect(201);

    proxy.cut();
    let down = wait_for_readiness(&app, "store: unreachable", |status, body| {
        status == 200 && body["store"] == "unreachable"
    })
    .await;
    assert_eq!(down["status"], "ready");
    let strict_down = wait_for_readiness(&strict, "503", |status, _| status == 503).await;
    assert_eq!(strict_down["status"], "not_ready");
    assert!(
        strict_down["reason"]
            .as_str()
            .is_some_and(|r| r.contains("readiness_max_config_age_secs")),
        "{strict_down}"
    );
    // The age grows while nothing can confirm the configuration, and the
    // replica without a limit stays ready.
    wait_for_readiness(&app, "ready with config_age_ms >= 1500", |status, body| {
        status == 200
            && body["config_age_ms"]
                .as_u64()
                .is_some_and(|age| age >= 1500)
    })
    .await;
    // Non-sticky assignment needs no store: it keeps answering.
    app.post(
        "/v1/experiments/e/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect(200);
    // An unknown key cannot be confirmed unknown without the store.
    app.post(
        "/v1/experiments/unknown/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect_error(503, "unavailable");
    // A write needs the store: 503 unavailable, never a hang or a 500.
    app.put(
        "/v1/experiments/e",
        json!({"treatments": [{"name": "a", "weight": 2}]}),
    )
    .await
    .expect_error(503, "unavailable");

    proxy.mend();
    let back = wait_for_readiness(&strict, "ready again", |status, body| {
        status == 200 && body["store"] == "ok"
    })
    .await;
    assert!(back["config_age_ms"].as_u64().unwrap() < 1000, "{back}");
    wait_for_readiness(&app, "store: ok", |status, body| {
        status == 200 && body["store"] == "ok"
    })
    .await;
    app.put(
        "/v1/experiments/e",
        json!({"treatments": [{"name": "a", "weight": 2}]}),
    )
    .await
    .expect(200);
}

/// `/readyz` turns 503 the moment shutdown begins (the flag the shutdown
/// signal sets), before the listener has even stopped.
async fn readiness_turns_503_as_soon_as_shutdown_begins(backend: Backend) {
    use tower::ServiceExt;
    let Some(store) = crate::helpers::TestStore::new(backend).await else {
        return;
    };
    let app = crate::helpers::TestApp::spawn(&store).await;
    let state = allot::http::AppState {
        engine: app.engine.clone(),
        shutting_down: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        max_config_age: None,
        metrics: None,
    };
    let router = allot::http::router(state.clone(), &store.settings());
    let ask = |router: axum::Router| async move {
        let request = axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap();
        router.oneshot(request).await.unwrap()
    };
    assert_eq!(ask(router.clone()).await.status(), 200);
    state
        .shutting_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let answer = ask(router).await;
    assert_eq!(answer.status(), 503);
    let body = axum::body::to_bytes(answer.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        json!({"status": "not_ready", "reason": "shutting down"})
    );
}

on_both_stores!(
    metrics_describe_the_traffic_that_passed,
    readiness_turns_503_as_soon_as_shutdown_begins,
);
