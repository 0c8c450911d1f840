//! Auth (§1) through the real server: every route of the OpenAPI document ×
//! no token, unknown token, client token, admin token, against the contract's
//! rule as written below (not the routes' declarations, which this checks);
//! `/metrics` opened by `auth.metrics_public`; unknown routes answering the
//! same to everyone; the token's name as the actor of versions.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{Answer, Backend, TestApp, TestStore};
use crate::on_both_stores;

const ADMIN: &str = "admin-token-0123456789";
const CLIENT: &str = "client-token-0123456789";

/// Who may call an endpoint, per §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    AnyToken,
    Admin,
}

/// §1: the probes and the document are open, `/metrics` too when
/// `metrics_public`; a client may read, and evaluate, assign, register and
/// route participants (and their heartbeat, accept, decline, complete and
/// drop); everything else needs an admin, an experimenter's move included.
fn needs(method: &Method, template: &str, metrics_public: bool) -> Needs {
    match (method.as_str(), template) {
        (_, "/healthz" | "/readyz" | "/openapi.json") => Needs::Nothing,
        (_, "/metrics") if metrics_public => Needs::Nothing,
        ("GET" | "HEAD", _) => Needs::AnyToken,
        (
            "POST",
            "/v1/flags/{key}/evaluate"
            | "/v1/experiments/{key}/assign"
            | "/v1/assign"
            | "/v1/experiments/{key}/participants/{participant_id}/route"
            | "/v1/experiments/{key}/participants/{participant_id}/accept"
            | "/v1/experiments/{key}/participants/{participant_id}/decline"
            | "/v1/experiments/{key}/participants/{participant_id}/heartbeat"
            | "/v1/experiments/{key}/participants/{participant_id}/complete"
            | "/v1/experiments/{key}/participants/{participant_id}/drop",
        ) => Needs::AnyToken,
        ("PUT", "/v1/experiments/{key}/participants/{participant_id}") => Needs::AnyToken,
        _ => Needs::Admin,
    }
}

/// A concrete path for a route template: every `{param}` gets a valid value.
fn fill(template: &str) -> String {
    let key = if template.starts_with("/v1/flags") {
        "f"
    } else {
        "e"
    };
    let path = template
        .replace("{key}", key)
        .replace("{org_id}", "7")
        .replace("{participant_id}", "p")
        .replace("{cohort_id}", "none");
    assert!(
        !path.contains('{'),
        "give the parameters of {template} a value in `fill`"
    );
    path
}

/// (method, template) of every operation of the OpenAPI document, HEAD for
/// every GET, and the document's own route.
fn every_route() -> Vec<(Method, String)> {
    let document: Value = allot::http::openapi_document();
    let mut routes = vec![(Method::GET, "/openapi.json".to_owned())];
    for (template, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if method == Method::GET {
                routes.push((Method::HEAD, template.clone()));
            }
            routes.push((method, template.clone()));
        }
    }
    routes
}

async fn call(app: &TestApp, method: &Method, path: &str, token: Option<&str>) -> Answer {
    let mut request = app.client.request(method.clone(), app.url(path));
    if [Method::POST, Method::PUT].contains(method) {
        request = request.json(&json!({}));
    }
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    // Not `app.send`: `/metrics` answers text, kept here as a JSON string.
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = match text.as_str() {
        "" => Value::Null,
        _ => serde_json::from_str(&text).unwrap_or(Value::String(text)),
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn spawn(store: &TestStore, metrics_public: bool) -> TestApp {
    let mut settings = store.settings();
    settings.auth.tokens =
        allot::config::parse_tokens(&format!("ops:admin:{ADMIN},pipeline:client:{CLIENT}"))
            .unwrap();
    settings.auth.metrics_public = metrics_public;
    TestApp::spawn_with(settings).await
}

/// A 401 with the contract's body (none for HEAD) and `WWW-Authenticate: Bearer`.
#[track_caller]
fn assert_unauthorized(answer: Answer, what: &str) {
    assert_eq!(answer.status.as_u16(), 401, "{what}");
    assert_eq!(answer.headers["www-authenticate"], "Bearer", "{what}");
    if !answer.body.is_null() {
        answer.expect_error(401, "unauthorized");
    }
}

#[track_caller]
fn assert_let_through(answer: &Answer, what: &str) {
    assert!(
        ![401, 403].contains(&answer.status.as_u16()),
        "{what}: {} {}",
        answer.status,
        answer.body
    );
}

async fn every_route_answers_each_kind_of_caller_as_the_contract_says(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let mut seen = Vec::new();
    for metrics_public in [false, true] {
        let app = spawn(&store, metrics_public).await;
        // Something to find, so that permitted calls reach their handlers.
        for (path, body) in [
            ("/v1/flags/f", json!({"rules": []})),
            (
                "/v1/experiments/e",
                json!({"treatments": [{"name": "a", "weight": 1}]}),
            ),
        ] {
            let put = app.client.put(app.url(path)).bearer_auth(ADMIN).json(&body);
            assert!(app.send(put).await.status.is_success(), "{path}");
        }
        for (method, template) in every_route() {
            let needs = needs(&method, &template, metrics_public);
            seen.push(needs);
            let path = fill(&template);
            let what = format!("{method} {path} (metrics_public: {metrics_public})");

            let none = call(&app, &method, &path, None).await;
            let unknown = call(&app, &method, &path, Some("not-a-token")).await;
            if needs == Needs::Nothing {
                assert_let_through(&none, &format!("no token, {what}"));
                assert_let_through(&unknown, &format!("unknown token, {what}"));
            } else {
                assert_unauthorized(none, &format!("no token, {what}"));
                assert_unauthorized(unknown, &format!("unknown token, {what}"));
            }

            let client = call(&app, &method, &path, Some(CLIENT)).await;
            if needs == Needs::Admin {
                assert_eq!(client.status.as_u16(), 403, "client, {what}");
                if method != Method::HEAD {
                    client.expect_error(403, "forbidden");
                }
            } else {
                assert_let_through(&client, &format!("client, {what}"));
            }

            let admin = call(&app, &method, &path, Some(ADMIN)).await;
            assert_let_through(&admin, &format!("admin, {what}"));
        }
        app.stop().await;
    }
    // The walk met every kind of route, so it cannot pass by finding none.
    for kind in [Needs::Nothing, Needs::AnyToken, Needs::Admin] {
        assert!(seen.contains(&kind), "no route needs {kind:?}");
    }
}

async fn unknown_routes_answer_the_same_with_or_without_a_token(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = spawn(&store, false).await;
    for token in [None, Some("not-a-token"), Some(CLIENT), Some(ADMIN)] {
        call(&app, &Method::GET, "/v1/nowhere", token)
            .await
            .expect_error(404, "not_found");
        call(&app, &Method::PATCH, "/v1/flags", token)
            .await
            .expect_error(405, "method_not_allowed");
        call(&app, &Method::POST, "/v1/flags/f", token)
            .await
            .expect_error(405, "method_not_allowed");
    }
}

async fn the_token_name_is_the_actor_of_the_versions_it_writes(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = spawn(&store, false).await;
    for weight in [1, 2] {
        app.send(
            app.client
                .put(app.url("/v1/experiments/e"))
                .bearer_auth(ADMIN)
                .json(&json!({"treatments": [{"name": "a", "weight": weight}]})),
        )
        .await
        .expect(if weight == 1 { 201 } else { 200 });
    }
    let history = call(
        &app,
        &Method::GET,
        "/v1/experiments/e/versions",
        Some(CLIENT),
    )
    .await
    .expect(200)
    .body;
    assert_eq!(history[0]["actor"], "ops");
    assert_eq!(history[1]["actor"], "ops");
}

on_both_stores!(
    every_route_answers_each_kind_of_caller_as_the_contract_says,
    unknown_routes_answer_the_same_with_or_without_a_token,
    the_token_name_is_the_actor_of_the_versions_it_writes,
);
