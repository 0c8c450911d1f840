//! Auth (§1): every endpoint × no token, unknown token, client, admin; the
//! token's name as the actor of versions; probes stay open.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{Backend, TestApp, TestStore};
use crate::on_both_stores;

const ADMIN: &str = "admin-token-0123456789";
const CLIENT: &str = "client-token-0123456789";

/// (method, path, body, may a client call it?)
fn endpoints() -> Vec<(Method, &'static str, Value, bool)> {
    let assign = json!({"org_id": 1, "unit_id": "u"});
    vec![
        (Method::GET, "/v1/flags", json!(null), true),
        (Method::GET, "/v1/flags/f", json!(null), true),
        (Method::PUT, "/v1/flags/f", json!({"rules": []}), false),
        (Method::DELETE, "/v1/flags/other", json!(null), false),
        (Method::GET, "/v1/flags/f/orgs", json!(null), true),
        (
            Method::PUT,
            "/v1/flags/f/orgs/7",
            json!({"enabled": true}),
            false,
        ),
        (Method::DELETE, "/v1/flags/f/orgs/7", json!(null), false),
        (
            Method::POST,
            "/v1/flags/f/evaluate",
            json!({"org_id": 1}),
            true,
        ),
        (Method::GET, "/v1/experiments", json!(null), true),
        (Method::GET, "/v1/experiments/e", json!(null), true),
        (
            Method::PUT,
            "/v1/experiments/e",
            json!({"treatments": [{"name": "a", "weight": 1}]}),
            false,
        ),
        (Method::DELETE, "/v1/experiments/gone", json!(null), false),
        (Method::GET, "/v1/experiments/e/versions", json!(null), true),
        (
            Method::POST,
            "/v1/experiments/e/assign",
            assign.clone(),
            true,
        ),
        (
            Method::POST,
            "/v1/assign",
            json!({"items": [{"experiment": "e", "org_id": 1, "unit_id": "u"}]}),
            true,
        ),
        (
            Method::PUT,
            "/v1/experiments/e/participants/p",
            json!({"attributes": {}}),
            true,
        ),
        (
            Method::GET,
            "/v1/experiments/e/participants/p",
            json!(null),
            true,
        ),
        (
            Method::POST,
            "/v1/experiments/e/participants/p/route",
            json!({}),
            true,
        ),
        (
            Method::POST,
            "/v1/experiments/e/participants/p/accept",
            json!({}),
            true,
        ),
        (
            Method::POST,
            "/v1/experiments/e/participants/p/decline",
            json!({}),
            true,
        ),
        (Method::GET, "/v1/experiments/e/cohorts", json!(null), true),
        (
            Method::GET,
            "/v1/experiments/e/cohorts/none/participants",
            json!(null),
            true,
        ),
        (
            Method::GET,
            "/v1/experiments/e/routing/events",
            json!(null),
            true,
        ),
    ]
}

async fn call(
    app: &TestApp,
    method: &Method,
    path: &str,
    body: &Value,
    token: Option<&str>,
) -> crate::helpers::Answer {
    let mut request = app.client.request(method.clone(), app.url(path));
    if !body.is_null() {
        request = request.json(body);
    }
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    app.send(request).await
}

async fn every_endpoint_answers_each_kind_of_caller_as_the_contract_says(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let mut settings = store.settings();
    settings.auth.tokens =
        allot::config::parse_tokens(&format!("ops:admin:{ADMIN},pipeline:client:{CLIENT}"))
            .unwrap();
    let app = TestApp::spawn_with(settings).await;
    let admin = Some(ADMIN);
    call(
        &app,
        &Method::PUT,
        "/v1/flags/f",
        &json!({"rules": []}),
        admin,
    )
    .await
    .expect(201);
    call(
        &app,
        &Method::PUT,
        "/v1/experiments/e",
        &json!({"treatments": [{"name": "a", "weight": 1}]}),
        admin,
    )
    .await
    .expect(201);

    for (method, path, body, client_ok) in endpoints() {
        let none = call(&app, &method, path, &body, None)
            .await
            .expect_error(401, "unauthorized");
        assert_eq!(
            none.headers["www-authenticate"], "Bearer",
            "{method} {path}"
        );
        call(&app, &method, path, &body, Some("not-a-token"))
            .await
            .expect_error(401, "unauthorized");
        let client = call(&app, &method, path, &body, Some(CLIENT)).await;
        if client_ok {
            assert!(
                ![401, 403].contains(&client.status.as_u16()),
                "client {method} {path}: {}",
                client.status
            );
        } else {
            client.expect_error(403, "forbidden");
        }
        let admin = call(&app, &method, path, &body, admin).await;
        assert!(
            ![401, 403].contains(&admin.status.as_u16()),
            "admin {method} {path}: {}",
            admin.status
        );
    }
    // Probes are never authenticated; an unknown path is a 404 for anyone.
    app.get("/healthz").await.expect(200);
    app.get("/readyz").await.expect(200);
    app.get("/v1/nowhere").await.expect_error(404, "not_found");

    // The token's name is the actor of the versions it writes.
    call(
        &app,
        &Method::PUT,
        "/v1/experiments/e",
        &json!({"treatments": [{"name": "a", "weight": 2}]}),
        admin,
    )
    .await
    .expect(200);
    let history = call(
        &app,
        &Method::GET,
        "/v1/experiments/e/versions",
        &json!(null),
        Some(CLIENT),
    )
    .await
    .expect(200)
    .body;
    assert_eq!(history[0]["actor"], "ops");
}

on_both_stores!(every_endpoint_answers_each_kind_of_caller_as_the_contract_says);
