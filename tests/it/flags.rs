//! Eligibility flags over HTTP (§2): rules, rollout, overrides, reasons,
//! versions and If-Match.

use allot::domain::hash::bucket;
use serde_json::json;

use crate::helpers::Backend;
use crate::{on_both_stores, start};

const FLAG: &str = "organizations:code-review-experiments-enabled";

fn seed_flag() -> serde_json::Value {
    json!({"description": "orgs in code-review experiments", "enabled": true,
           "rules": [{"name": "early adopters", "condition": {"plan": {"$in": ["business", "enterprise"]}}, "rollout": 100},
                     {"name": "everyone else", "rollout": 10}]})
}

async fn rules_rollout_overrides_and_reasons(backend: Backend) {
    let (_store, app) = start!(backend);
    let created = app
        .put(&format!("/v1/flags/{FLAG}"), seed_flag())
        .await
        .expect(201);
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.headers["etag"], "\"1\"");

    let eval = |org: serde_json::Value, plan: &str| {
        let app = &app;
        let body = json!({"org_id": org, "attributes": {"plan": plan}});
        async move {
            app.post(&format!("/v1/flags/{FLAG}/evaluate"), body)
                .await
                .expect(200)
                .body
        }
    };
    let biz = eval(json!(42), "business").await;
    assert_eq!(
        biz,
        json!({"flag": FLAG, "org_id": "42", "enabled": true, "reason": "rule", "rule": "early adopters", "version": 1})
    );

    // Rollout 10% of the rest: exactly the orgs whose bucket is below 1000.
    for org in 0..40u32 {
        let answer = eval(json!(org), "free").await;
        assert_eq!(answer["rule"], "everyone else");
        assert_eq!(
            answer["enabled"],
            bucket(&[FLAG, &org.to_string()]) < 1000,
            "org {org}"
        );
    }

    // An override beats the rules; removing it restores them.
    app.put(
        &format!("/v1/flags/{FLAG}/orgs/42"),
        json!({"enabled": false}),
    )
    .await
    .expect(201);
    app.put(
        &format!("/v1/flags/{FLAG}/orgs/42"),
        json!({"enabled": false}),
    )
    .await
    .expect(200);
    let overridden = eval(json!("42"), "business").await;
    assert_eq!(
        (
            overridden["enabled"].clone(),
            overridden["reason"].clone(),
            overridden["rule"].clone()
        ),
        (json!(false), json!("override"), json!(null))
    );
    app.delete(&format!("/v1/flags/{FLAG}/orgs/42"))
        .await
        .expect(204);
    app.delete(&format!("/v1/flags/{FLAG}/orgs/42"))
        .await
        .expect_error(404, "not_found");
    assert_eq!(eval(json!(42), "business").await["reason"], "rule");

    // The org_id attribute is always the org, whatever the client sends.
    app.put(
        "/v1/flags/only-org-7",
        json!({"rules": [{"name": "seven", "condition": {"org_id": "7"}, "rollout": 100}]}),
    )
    .await
    .expect(201);
    let seven = app
        .post(
            "/v1/flags/only-org-7/evaluate",
            json!({"org_id": 7, "attributes": {"org_id": "8"}}),
        )
        .await
        .expect(200);
    assert_eq!(seven.body["enabled"], true);
    let eight = app
        .post(
            "/v1/flags/only-org-7/evaluate",
            json!({"org_id": 8, "attributes": {"org_id": "7"}}),
        )
        .await
        .expect(200);
    assert_eq!(eight.body["reason"], "default");

    // Disabled beats everything, overrides included.
    app.put(
        &format!("/v1/flags/{FLAG}/orgs/42"),
        json!({"enabled": true}),
    )
    .await
    .expect(201);
    let mut off = seed_flag();
    off["enabled"] = json!(false);
    app.put(&format!("/v1/flags/{FLAG}"), off).await.expect(200);
    let disabled = eval(json!(42), "business").await;
    assert_eq!(
        (
            disabled["enabled"].clone(),
            disabled["reason"].clone(),
            disabled["version"].clone()
        ),
        (json!(false), json!("flag_disabled"), json!(2))
    );
}

async fn versions_if_match_and_identical_resends(backend: Backend) {
    let (_store, app) = start!(backend);
    let path = format!("/v1/flags/{FLAG}");
    app.put(&path, seed_flag()).await.expect(201);
    // Same document again: no new version.
    let again = app.put(&path, seed_flag()).await.expect(200);
    assert_eq!(again.body["version"], 1);

    let mut changed = seed_flag();
    changed["rules"][1]["rollout"] = json!(20.5);
    app.put_if(&path, "\"7\"", changed.clone())
        .await
        .expect_error(412, "version_mismatch");
    assert_eq!(
        app.get(&path).await.expect(200).body["rules"][1]["rollout"],
        10.0
    );
    let updated = app
        .put_if(&path, "\"1\"", changed.clone())
        .await
        .expect(200);
    assert_eq!(updated.body["version"], 2);
    assert_eq!(updated.headers["etag"], "\"2\"");
    // Unquoted If-Match works too; a stale one is refused.
    app.put_if(&path, "1", seed_flag())
        .await
        .expect_error(412, "version_mismatch");
    app.put_if(&path, "2", seed_flag()).await.expect(200);
    app.put_if(&path, "not-a-version", seed_flag())
        .await
        .expect_error(400, "bad_request");
    // If-Match on a flag that does not exist yet fails too.
    app.put_if("/v1/flags/new-one", "\"1\"", seed_flag())
        .await
        .expect_error(412, "version_mismatch");
    app.get("/v1/flags/new-one")
        .await
        .expect_error(404, "not_found");

    let listed = app.get("/v1/flags").await.expect(200);
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1));
    assert_eq!(listed.body[0]["key"], FLAG);
}

async fn invalid_flags_are_refused_and_change_nothing(backend: Backend) {
    let (_store, app) = start!(backend);
    let path = format!("/v1/flags/{FLAG}");
    app.put(&path, seed_flag()).await.expect(201);
    let bad = app
        .put(
            &path,
            json!({"enabled": "yes", "rules": [
            {"name": "r", "condition": {"plan": {"$bogus": 1}}, "rollout": 5},
            {"condition": {"ua": {"$regex": "(unclosed"}}, "rollout": 5},
            {"rollout": 100.5}, {"rollout": 33.333}, {"condition": [1], "rollout": 1}]}),
        )
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(
        bad.detail_paths(),
        vec![
            "/enabled",
            "/rules/0/condition/plan/$bogus",
            "/rules/1/condition/ua/$regex",
            "/rules/2/rollout",
            "/rules/3/rollout",
            "/rules/4/condition"
        ]
    );
    let unchanged = app.get(&path).await.expect(200);
    assert_eq!(unchanged.body["version"], 1);
    assert_eq!(unchanged.body["rules"][0]["name"], "early adopters");

    app.put("/v1/flags/bad key!", seed_flag())
        .await
        .expect_error(422, "validation_failed");
    app.put(
        &format!("/v1/flags/{FLAG}/orgs/42"),
        json!({"enabled": "no"}),
    )
    .await
    .expect_error(422, "validation_failed");
    app.put("/v1/flags/missing/orgs/42", json!({"enabled": true}))
        .await
        .expect_error(404, "not_found");
    app.post("/v1/flags/missing/evaluate", json!({"org_id": 1}))
        .await
        .expect_error(404, "not_found");
    let eval = app
        .post(
            &format!("/v1/flags/{FLAG}/evaluate"),
            json!({"org_id": -4, "attributes": []}),
        )
        .await
        .expect_error(422, "validation_failed");
    // Every problem of the body is named, not only the first.
    assert_eq!(eval.detail_paths(), vec!["/org_id", "/attributes"]);
    app.post(
        &format!("/v1/flags/{FLAG}/evaluate"),
        json!({"org_id": 1, "attributes": "x"}),
    )
    .await
    .expect_error(422, "validation_failed");
}

async fn overrides_are_listed_in_pages(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(&format!("/v1/flags/{FLAG}"), seed_flag())
        .await
        .expect(201);
    for org in ["a", "b", "c", "d", "e"] {
        app.put(
            &format!("/v1/flags/{FLAG}/orgs/{org}"),
            json!({"enabled": org != "c"}),
        )
        .await
        .expect(201);
    }
    let first = app
        .get(&format!("/v1/flags/{FLAG}/orgs?limit=2"))
        .await
        .expect(200);
    let orgs: Vec<&str> = first.body["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["org_id"].as_str().unwrap())
        .collect();
    assert_eq!(orgs, vec!["a", "b"]);
    assert_eq!(first.body["next"], "b");
    let rest = app
        .get(&format!("/v1/flags/{FLAG}/orgs?limit=10&after=b"))
        .await
        .expect(200);
    assert_eq!(rest.body["overrides"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        rest.body["overrides"][0],
        json!({"flag": FLAG, "org_id": "c", "enabled": false, "updated_at": rest.body["overrides"][0]["updated_at"]})
    );
    assert_eq!(rest.body["next"], json!(null));
    app.get(&format!("/v1/flags/{FLAG}/orgs?limit=abc"))
        .await
        .expect_error(400, "bad_request");
    app.get(&format!("/v1/flags/{FLAG}/orgs?limit=0"))
        .await
        .expect_error(400, "bad_request");
    app.get("/v1/flags/missing/orgs")
        .await
        .expect_error(404, "not_found");
}

async fn a_flag_named_by_an_experiment_cannot_be_deleted(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(&format!("/v1/flags/{FLAG}"), seed_flag())
        .await
        .expect(201);
    app.put(
        &format!("/v1/flags/{FLAG}/orgs/9"),
        json!({"enabled": true}),
    )
    .await
    .expect(201);
    app.put(
        "/v1/experiments/gated",
        json!({"eligibility_flag": FLAG, "treatments": [{"name": "a", "weight": 1}]}),
    )
    .await
    .expect(201);
    app.delete(&format!("/v1/flags/{FLAG}"))
        .await
        .expect_error(409, "conflict");
    app.get(&format!("/v1/flags/{FLAG}")).await.expect(200);
    app.delete("/v1/experiments/gated").await.expect(204);
    app.delete(&format!("/v1/flags/{FLAG}")).await.expect(204);
    app.get(&format!("/v1/flags/{FLAG}"))
        .await
        .expect_error(404, "not_found");
    app.delete(&format!("/v1/flags/{FLAG}"))
        .await
        .expect_error(404, "not_found");
    // Re-created, its versions continue (the deletion was version 2) and it
    // has no overrides.
    app.put_if(&format!("/v1/flags/{FLAG}"), "1", seed_flag())
        .await
        .expect_error(412, "version_mismatch");
    let recreated = app
        .put(&format!("/v1/flags/{FLAG}"), seed_flag())
        .await
        .expect(201);
    assert_eq!(recreated.body["version"], 3);
    let page = app.get(&format!("/v1/flags/{FLAG}/orgs")).await.expect(200);
    assert_eq!(page.body["overrides"], json!([]));
}

/// A flag read with GET goes back with PUT as it is (§1): the served fields
/// are ignored, the identical document makes no new version, and an edit
/// made to the read document is a new one.
async fn a_read_flag_can_be_sent_back(backend: Backend) {
    let (_store, app) = start!(backend);
    let path = format!("/v1/flags/{FLAG}");
    app.put(&path, seed_flag()).await.expect(201);
    let read = app.get(&path).await.expect(200).body;
    for served in ["key", "version", "created_at", "updated_at"] {
        assert!(read.get(served).is_some(), "{served} is served: {read}");
    }
    let again = app.put(&path, read.clone()).await.expect(200).body;
    assert_eq!(again, read, "nothing changed, not even the version");
    let mut edited = read.clone();
    edited["rules"][1]["rollout"] = json!(20);
    let edited = app.put(&path, edited).await.expect(200).body;
    assert_eq!(edited["version"], 2);
    assert_eq!(edited["rules"][1]["rollout"], 20);
    // Fields the server does not serve are still refused.
    let mut unknown = read;
    unknown["layout"] = json!([]);
    let refused = app.put(&path, unknown).await.expect(422);
    assert_eq!(refused.detail_paths(), ["/layout"]);
}

/// Every flag write and override change is in the flag's history, newest
/// first, with the name of the token that made it; pages follow
/// `next_before`; the history outlives the flag.
async fn history_records_each_change_with_its_actor(backend: Backend) {
    let Some(store) = crate::helpers::TestStore::new(backend).await else {
        return;
    };
    let mut settings = store.settings();
    settings.auth.tokens =
        allot::config::parse_tokens("ops:admin:ops-token-0123456789,ci:admin:ci-token-0123456789")
            .unwrap();
    let app = crate::helpers::TestApp::spawn_with(settings).await;
    let send = async |token: &str,
                      method: reqwest::Method,
                      path: &str,
                      body: Option<serde_json::Value>| {
        let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        app.send(request).await
    };
    use reqwest::Method;
    let ops = "ops-token-0123456789";
    let ci = "ci-token-0123456789";
    send(
        ops,
        Method::PUT,
        "/v1/flags/gate",
        Some(json!({"enabled": true})),
    )
    .await
    .expect(201);
    send(
        ci,
        Method::PUT,
        "/v1/flags/gate",
        Some(json!({"enabled": true, "description": "d"})),
    )
    .await
    .expect(200);
    // The same document again is no change and no event.
    send(
        ci,
        Method::PUT,
        "/v1/flags/gate",
        Some(json!({"enabled": true, "description": "d"})),
    )
    .await
    .expect(200);
    send(
        ops,
        Method::PUT,
        "/v1/flags/gate/orgs/42",
        Some(json!({"enabled": false})),
    )
    .await
    .expect(201);
    send(ci, Method::DELETE, "/v1/flags/gate/orgs/42", None)
        .await
        .expect(204);
    // Removing an override that is not there changes nothing.
    send(ci, Method::DELETE, "/v1/flags/gate/orgs/42", None)
        .await
        .expect_error(404, "not_found");
    send(ops, Method::DELETE, "/v1/flags/gate", None)
        .await
        .expect(204);

    let history = send(ci, Method::GET, "/v1/flags/gate/history", None)
        .await
        .expect(200);
    let events = history.body["events"].as_array().unwrap();
    let summary: Vec<(&str, &str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("deleted", "ops", 3),
            ("override_removed", "ci", 2),
            ("override_set", "ops", 2),
            ("updated", "ci", 2),
            ("created", "ops", 1),
        ]
    );
    assert_eq!(events[2]["org_id"], "42");
    assert_eq!(events[2]["enabled"], false);
    assert_eq!(events[1]["enabled"], serde_json::Value::Null);
    assert_eq!(events[3]["config"]["description"], "d");
    assert_eq!(events[0]["config"], serde_json::Value::Null);
    assert_eq!(history.body["next_before"], serde_json::Value::Null);

    let first = send(ci, Method::GET, "/v1/flags/gate/history?limit=2", None)
        .await
        .expect(200);
    assert_eq!(first.body["events"].as_array().map(Vec::len), Some(2));
    let before = first.body["next_before"].as_i64().unwrap();
    let second = send(
        ci,
        Method::GET,
        &format!("/v1/flags/gate/history?limit=2&before={before}"),
        None,
    )
    .await
    .expect(200);
    assert_eq!(second.body["events"][0]["action"], "override_set");
    send(ci, Method::GET, "/v1/flags/gate/history?limit=0", None)
        .await
        .expect_error(400, "bad_request");
    send(ci, Method::GET, "/v1/flags/gate/history?before=x", None)
        .await
        .expect_error(400, "bad_request");
    send(ci, Method::GET, "/v1/flags/never/history", None)
        .await
        .expect_error(404, "not_found");
    app.stop().await;
}

on_both_stores!(
    history_records_each_change_with_its_actor,
    a_read_flag_can_be_sent_back,
    rules_rollout_overrides_and_reasons,
    versions_if_match_and_identical_resends,
    invalid_flags_are_refused_and_change_nothing,
    overrides_are_listed_in_pages,
    a_flag_named_by_an_experiment_cannot_be_deleted,
);
