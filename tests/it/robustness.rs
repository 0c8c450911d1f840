//! Malformed requests get the error shape of §1 (never a 500), request
//! ids are echoed, probes answer, and concurrent writers never corrupt state.

use std::sync::Arc;

use serde_json::json;

use crate::helpers::{Backend, TestApp, TestStore};
use crate::{on_both_stores, start};

async fn malformed_requests_get_the_error_shape(backend: Backend) {
    let (_store, app) = start!(backend);
    // Bodies that are not JSON, or not declared as JSON.
    let unreadable: [(reqwest::Method, &str, Option<&str>, &str); 5] = [
        (
            reqwest::Method::PUT,
            "/v1/flags/f",
            Some("application/json"),
            "{not json",
        ),
        (
            reqwest::Method::PUT,
            "/v1/flags/f",
            Some("text/plain"),
            "{}",
        ),
        (reqwest::Method::PUT, "/v1/flags/f", None, "{}"),
        (
            reqwest::Method::POST,
            "/v1/assign",
            Some("application/json"),
            "",
        ),
        (
            reqwest::Method::POST,
            "/v1/assign",
            Some("application/json"),
            "[1,",
        ),
    ];
    for (method, path, content_type, body) in unreadable {
        let mut request = app.client.request(method, app.url(path)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        app.send(request).await.expect_error(400, "bad_request");
    }
    app.get("/v1/nothing-here")
        .await
        .expect_error(404, "not_found");
    app.send(app.client.patch(app.url("/v1/flags")))
        .await
        .expect_error(405, "method_not_allowed");

    // Over the 1 MiB default body limit.
    let huge = format!("{{\"description\": \"{}\"}}", "x".repeat(1_100_000));
    app.send(
        app.client
            .put(app.url("/v1/flags/f"))
            .header("content-type", "application/json")
            .body(huge),
    )
    .await
    .expect_error(413, "payload_too_large");
    // Deeply nested JSON is refused by the parser, not by a stack overflow:
    // it is valid JSON over a limit of §1, so 422.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    app.send(
        app.client
            .post(app.url("/v1/assign"))
            .header("content-type", "application/json")
            .body(deep),
    )
    .await
    .expect_error(422, "validation_failed");
    // Odd but valid JSON in every field of an experiment never causes a 500.
    for doc in [
        json!(null),
        json!("x"),
        json!(1),
        json!({"treatments": [null]}),
        json!({"treatments": [{"name": null, "weight": null}]}),
        json!({"coverage": "1"}),
        json!({"description": {"a": 1}}),
        json!({"treatments": [{"name": "a", "weight": 1e-320}]}),
    ] {
        let answer = app.put("/v1/experiments/odd", doc.clone()).await;
        assert!(
            answer.status.is_success() || answer.status.as_u16() == 422,
            "{doc} -> {} {}",
            answer.status,
            answer.body
        );
    }
    // Nothing above was stored, except possibly the last valid one.
    app.get("/v1/flags/f").await.expect_error(404, "not_found");
}

async fn request_ids_are_echoed_in_headers_and_error_bodies(backend: Backend) {
    let (_store, app) = start!(backend);
    let answer = app
        .send(
            app.client
                .get(app.url("/v1/flags/missing"))
                .header("x-request-id", "trace-abc-123"),
        )
        .await;
    assert_eq!(answer.headers["x-request-id"], "trace-abc-123");
    assert_eq!(answer.body["error"]["request_id"], "trace-abc-123");
    let ok = app.get("/healthz").await.expect(200);
    assert_eq!(ok.body, json!({"status": "ok"}));
    assert!(ok
        .headers
        .get("x-request-id")
        .is_some_and(|v| !v.is_empty()));
    let ready = app.get("/readyz").await.expect(200);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["store"], "ok");
}

/// 16 writers reweight one experiment at once through two replicas: every
/// accepted write is one version, versions are contiguous, each stored layout
/// matches its own config, and both replicas end on the store's last version.
async fn concurrent_writers_leave_a_consistent_history(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = Arc::new(TestApp::spawn(&store).await);
    let b = Arc::new(TestApp::spawn(&store).await);
    a.put(
        "/v1/experiments/hot",
        json!({"treatments": [{"name": "x", "weight": 1}, {"name": "y", "weight": 1}]}),
    )
    .await
    .expect(201);
    let mut tasks = Vec::new();
    for writer in 0..16u32 {
        let app = if writer % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0;
            for round in 0..4u32 {
                let doc = json!({"treatments": [{"name": "x", "weight": 1 + writer}, {"name": "y", "weight": 1 + round}, {"name": format!("w{writer}"), "weight": 1}]});
                let answer = app.put("/v1/experiments/hot", doc).await;
                assert!(answer.status.is_success(), "{} {}", answer.status, answer.body);
                if answer.status.as_u16() == 200 {
                    accepted += 1;
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.expect("writer");
    }
    let history = a.get("/v1/experiments/hot/versions").await.expect(200).body;
    let versions: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=versions.len() as i64).rev().collect();
    assert_eq!(versions, expected, "versions are contiguous");
    assert_eq!(
        versions.len() as i64,
        1 + accepted,
        "every accepted write is one version"
    );
    for v in history.as_array().unwrap() {
        let held: i64 = v["layout"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["end"].as_i64().unwrap() - r["start"].as_i64().unwrap())
            .sum();
        assert_eq!(held, 10_000, "version {} covers every bucket", v["version"]);
        let names: Vec<&str> = v["config"]["treatments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(v["layout"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| names.contains(&r["treatment"].as_str().unwrap())));
    }
    a.engine.refresh().await.expect("refresh");
    b.engine.refresh().await.expect("refresh");
    let last = versions[0];
    assert_eq!(a.get("/v1/experiments/hot").await.body["version"], last);
    assert_eq!(b.get("/v1/experiments/hot").await.body["version"], last);
    assert_eq!(
        a.get("/v1/experiments/hot").await.body["layout"],
        history[0]["layout"]
    );
}

async fn graceful_stop_finishes_and_the_store_reopens(backend: Backend) {
    let (store, app) = start!(backend);
    app.put(
        "/v1/experiments/e",
        json!({"treatments": [{"name": "a", "weight": 1}]}),
    )
    .await
    .expect(201);
    app.stop().await;
    let app = TestApp::spawn(&store).await;
    app.get("/v1/experiments/e").await.expect(200);
}

/// An oversized body is refused before it is read, so its connection is
/// closed, and the answer says so: a client that pools connections opens a
/// new one for its next request instead of failing on the dead one.
async fn an_oversized_body_closes_its_connection_openly(backend: Backend) {
    let (_store, app) = start!(backend);
    let huge = format!("{{\"description\": \"{}\"}}", "x".repeat(1_100_000));
    for _ in 0..20 {
        let refused = app
            .send(
                app.client
                    .put(app.url("/v1/flags/f"))
                    .header("content-type", "application/json")
                    .body(huge.clone()),
            )
            .await
            .expect_error(413, "payload_too_large");
        assert_eq!(refused.headers["connection"], "close");
        // The same pooled client, at once.
        app.get("/v1/flags").await.expect(200);
    }
}

on_both_stores!(
    an_oversized_body_closes_its_connection_openly,
    malformed_requests_get_the_error_shape,
    request_ids_are_echoed_in_headers_and_error_bodies,
    concurrent_writers_leave_a_consistent_history,
    graceful_stop_finishes_and_the_store_reopens,
);
