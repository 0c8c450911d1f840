//! Experiments over HTTP (§3): lifecycle, validation, If-Match, history,
//! layouts, and a stored config that is broken.

use serde_json::{json, Value};

use crate::helpers::{Backend, TestApp};
use crate::{on_both_stores, start};

fn two_arms() -> Value {
    json!({"description": "code-review strategy", "salt": "code-review",
           "treatments": [{"name": "noop", "weight": 1, "payload": {"model": "a"}}, {"name": "cost-optimized", "weight": 1}]})
}

async fn lifecycle_create_update_resend_delete_recreate(backend: Backend) {
    let (_store, app) = start!(backend);
    let created = app
        .put("/v1/experiments/code-review", two_arms())
        .await
        .expect(201);
    let body = &created.body;
    assert_eq!(body["key"], "code-review");
    assert_eq!(body["version"], 1);
    assert_eq!(body["status"], "running");
    assert_eq!(body["hash_by"], "unit");
    assert_eq!(body["coverage"], 1.0);
    assert_eq!(body["sticky"], false);
    assert_eq!(body["treatments"][0]["payload"], json!({"model": "a"}));
    assert_eq!(body["treatments"][1]["payload"], json!(null));
    assert_eq!(
        body["layout"],
        json!([{"treatment": "noop", "start": 0, "end": 5000}, {"treatment": "cost-optimized", "start": 5000, "end": 10000}])
    );

    // An identical document (even with the read-only fields echoed back) is not a new version.
    let mut echoed = created.body.clone();
    echoed["version"] = json!(1);
    app.put("/v1/experiments/code-review", echoed)
        .await
        .expect(200);
    let again = app
        .put("/v1/experiments/code-review", two_arms())
        .await
        .expect(200);
    assert_eq!(again.body["version"], 1);

    let mut paused = two_arms();
    paused["status"] = json!("paused");
    let v2 = app
        .put("/v1/experiments/code-review", paused)
        .await
        .expect(200);
    assert_eq!(v2.body["version"], 2);
    // Pausing does not touch the layout.
    assert_eq!(v2.body["layout"], created.body["layout"]);
    let read = app.get("/v1/experiments/code-review").await.expect(200);
    assert_eq!(read.headers["etag"], "\"2\"");
    assert_eq!(read.body["status"], "paused");
    assert_eq!(
        app.get("/v1/experiments")
            .await
            .expect(200)
            .body
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    app.delete("/v1/experiments/code-review").await.expect(204);
    app.get("/v1/experiments/code-review")
        .await
        .expect_error(404, "not_found");
    app.post(
        "/v1/experiments/code-review/assign",
        json!({"org_id": 1, "unit_id": "x"}),
    )
    .await
    .expect_error(404, "not_found");
    // The history stays readable, the deletion a version of its own.
    let history = app
        .get("/v1/experiments/code-review/versions")
        .await
        .expect(200);
    let listed: Vec<(i64, bool)> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["deleted"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, vec![(3, true), (2, false), (1, false)]);
    assert_eq!(history.body[0]["config"], json!(null));
    assert_eq!(history.body[0]["layout"], json!([]));
    app.delete("/v1/experiments/code-review")
        .await
        .expect_error(404, "not_found");
    app.get("/v1/experiments/never-was/versions")
        .await
        .expect_error(404, "not_found");

    // Created afresh: a new, empty-based layout, and the versions continue
    // (an If-Match of the old incarnation can never match the new one).
    let mut three = two_arms();
    three["treatments"] = json!([{"name": "x", "weight": 1}, {"name": "y", "weight": 3}]);
    app.put_if("/v1/experiments/code-review", "2", three.clone())
        .await
        .expect_error(412, "version_mismatch");
    let recreated = app
        .put("/v1/experiments/code-review", three)
        .await
        .expect(201);
    assert_eq!(recreated.body["version"], 4);
    assert_eq!(recreated.headers["etag"], "\"4\"");
    assert_eq!(
        recreated.body["layout"],
        json!([{"treatment": "x", "start": 0, "end": 2500}, {"treatment": "y", "start": 2500, "end": 10000}])
    );
    let history = app
        .get("/v1/experiments/code-review/versions")
        .await
        .expect(200);
    assert_eq!(history.body.as_array().map(Vec::len), Some(4));
    assert_eq!(history.body[0]["version"], 4);
    assert_eq!(history.body[0]["deleted"], false);
}

async fn every_invalid_document_is_refused_and_changes_nothing(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/code-review", two_arms())
        .await
        .expect(201);
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"treatments": [["exp1"]]}), vec!["/treatments/0"]),
        (
            json!({"treatments": [["exp1", "not-a-number"]]}),
            vec!["/treatments/0"],
        ),
        (
            json!({"treatments": [{"name": "a", "weight": "1"}]}),
            vec!["/treatments/0/weight"],
        ),
        (
            json!({"treatments": [{"name": "a", "weight": -0.5}]}),
            vec!["/treatments/0/weight"],
        ),
        (
            json!({"treatments": [{"name": "a"}]}),
            vec!["/treatments/0/weight"],
        ),
        (
            json!({"treatments": [{"weight": 1}]}),
            vec!["/treatments/0/name"],
        ),
        (
            json!({"treatments": [{"name": "has space", "weight": 1}]}),
            vec!["/treatments/0/name"],
        ),
        (
            json!({"treatments": [{"name": "a", "weight": 1}, {"name": "a", "weight": 2}]}),
            vec!["/treatments/1/name"],
        ),
        (
            json!({"treatments": (0..101).map(|i| json!({"name": format!("t{i}"), "weight": 1})).collect::<Vec<_>>()}),
            vec!["/treatments"],
        ),
        (json!({"treatments": {"a": 1}}), vec!["/treatments"]),
        (json!({"coverage": 1.5}), vec!["/coverage"]),
        (json!({"coverage": -0.1}), vec!["/coverage"]),
        (json!({"status": "stopped"}), vec!["/status"]),
        (json!({"hash_by": "repo"}), vec!["/hash_by"]),
        (json!({"sticky": "yes"}), vec!["/sticky"]),
        (json!({"salt": 5}), vec!["/salt"]),
        (
            json!({"eligibility_flag": "no-such-flag"}),
            vec!["/eligibility_flag"],
        ),
        (
            json!({"eligibility_flag": "bad flag"}),
            vec!["/eligibility_flag"],
        ),
        (json!({"routing": 3}), vec!["/routing"]),
        (json!({"weights": [1, 2]}), vec!["/weights"]),
        (json!([1, 2]), vec![""]),
        (
            json!({"status": "on", "coverage": 2}),
            vec!["/status", "/coverage"],
        ),
    ];
    for (doc, paths) in cases {
        let answer = app
            .put("/v1/experiments/code-review", doc.clone())
            .await
            .expect_error(422, "validation_failed");
        assert_eq!(answer.detail_paths(), paths, "document {doc}");
    }
    // Nothing above was stored.
    let history = app
        .get("/v1/experiments/code-review/versions")
        .await
        .expect(200);
    assert_eq!(history.body.as_array().map(Vec::len), Some(1));
    app.get("/v1/experiments/no-such-flag")
        .await
        .expect_error(404, "not_found");
    // A key outside the alphabet is refused.
    app.put("/v1/experiments/bad%20key", two_arms())
        .await
        .expect_error(422, "validation_failed");
    app.put(&format!("/v1/experiments/{}", "k".repeat(201)), two_arms())
        .await
        .expect_error(422, "validation_failed");
}

async fn a_stale_if_match_is_refused_and_changes_nothing(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/e", two_arms()).await.expect(201);
    let mut changed = two_arms();
    changed["coverage"] = json!(0.5);
    app.put_if("/v1/experiments/e", "\"2\"", changed.clone())
        .await
        .expect_error(412, "version_mismatch");
    app.put_if("/v1/experiments/new", "\"1\"", changed.clone())
        .await
        .expect_error(412, "version_mismatch");
    app.get("/v1/experiments/new")
        .await
        .expect_error(404, "not_found");
    let read = app.get("/v1/experiments/e").await.expect(200);
    assert_eq!(
        (read.body["version"].clone(), read.body["coverage"].clone()),
        (json!(1), json!(1))
    );
    app.put_if("/v1/experiments/e", "\"1\"", changed)
        .await
        .expect(200);
}

async fn history_keeps_every_version_with_its_layout(backend: Backend) {
    let (_store, app) = start!(backend);
    let mut doc = two_arms();
    app.put("/v1/experiments/e", doc.clone()).await.expect(201);
    doc["treatments"] = json!([{"name": "noop", "weight": 1}, {"name": "cost-optimized", "weight": 1}, {"name": "deep", "weight": 1}]);
    app.put("/v1/experiments/e", doc.clone()).await.expect(200);
    doc["coverage"] = json!(0.5);
    app.put("/v1/experiments/e", doc.clone()).await.expect(200);

    let history = app.get("/v1/experiments/e/versions").await.expect(200).body;
    let versions: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![3, 2, 1]);
    assert_eq!(
        history[2]["config"]["treatments"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(history[0]["config"]["coverage"], 0.5);
    assert_eq!(history[2]["actor"], json!(null));
    // Adding a third equal arm moves a third of the units: each old arm gives
    // up its highest 1 667 / 1 666 buckets to the new one.
    assert_eq!(
        history[1]["layout"],
        json!([
        {"treatment": "noop", "start": 0, "end": 3334},
        {"treatment": "deep", "start": 3334, "end": 5000},
        {"treatment": "cost-optimized", "start": 5000, "end": 8333},
        {"treatment": "deep", "start": 8333, "end": 10000}])
    );
    // Halving coverage releases the top of each arm; nothing else moves.
    assert_eq!(
        history[0]["layout"],
        json!([
        {"treatment": "noop", "start": 0, "end": 1667},
        {"treatment": "deep", "start": 3334, "end": 5000},
        {"treatment": "cost-optimized", "start": 5000, "end": 6667}])
    );
}

/// A config edited by hand into something invalid answers 503 for that
/// experiment only; every other experiment keeps serving.
async fn a_broken_stored_config_fails_only_its_experiment(backend: Backend) {
    let (store, app) = start!(backend);
    app.put("/v1/experiments/healthy", two_arms())
        .await
        .expect(201);
    app.put("/v1/experiments/broken", two_arms())
        .await
        .expect(201);
    app.put("/v1/experiments/garbled", two_arms())
        .await
        .expect(201);
    app.stop().await;
    store
        .execute(
            "UPDATE experiment_versions SET config = '{\"treatments\": [[\"exp1\", \"not-a-number\"]]}' \
             WHERE experiment_id = (SELECT id FROM experiments WHERE key = 'broken')",
        )
        .await;
    store
        .execute("UPDATE experiment_versions SET layout = 'not json' WHERE experiment_id = (SELECT id FROM experiments WHERE key = 'garbled')")
        .await;
    let app = TestApp::spawn(&store).await;
    app.get("/readyz").await.expect(200);
    let broken = app
        .get("/v1/experiments/broken")
        .await
        .expect_error(503, "unavailable");
    assert!(
        broken.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/treatments/0"),
        "{}",
        broken.body
    );
    app.post(
        "/v1/experiments/broken/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect_error(503, "unavailable");
    app.post(
        "/v1/experiments/garbled/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect_error(503, "unavailable");
    app.post(
        "/v1/experiments/healthy/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect(200);
    let batch = app
        .post("/v1/assign", json!({"items": [{"experiment": "broken", "org_id": 1, "unit_id": "u"}, {"experiment": "healthy", "org_id": 1, "unit_id": "u"}]}))
        .await
        .expect(200);
    assert_eq!(batch.body["results"][0]["error"]["code"], "unavailable");
    assert_eq!(batch.body["results"][1]["reason"], "assigned");
    let listed = app.get("/v1/experiments").await.expect(200);
    assert_eq!(listed.body.as_array().map(Vec::len), Some(3));
    // Listed with its problem, not hidden and not as a config.
    let unusable = &listed.body[0];
    assert_eq!(unusable["key"], "broken", "{}", listed.body);
    assert_eq!(unusable["version"], 1);
    assert!(unusable.get("treatments").is_none());
    assert!(
        unusable["unavailable"]
            .as_str()
            .is_some_and(|m| m.contains("/treatments/0")),
        "{unusable}"
    );
    // Writing a valid document repairs it.
    app.put("/v1/experiments/broken", two_arms())
        .await
        .expect(200);
    app.post(
        "/v1/experiments/broken/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect(200);
}

/// A write on one replica is seen by another sharing the store once it
/// refreshes (it polls the store's configuration revision).
async fn a_second_replica_sees_writes_after_refreshing(backend: Backend) {
    let (store, a) = start!(backend);
    let b = TestApp::spawn(&store).await;
    a.put("/v1/experiments/e", two_arms()).await.expect(201);
    b.engine.refresh().await.expect("refresh");
    let on_b = b.get("/v1/experiments/e").await.expect(200);
    assert_eq!(
        on_b.body["layout"],
        a.get("/v1/experiments/e").await.body["layout"]
    );
    // b writes next; a catches up and both agree on version 2.
    let mut doc = two_arms();
    doc["coverage"] = json!(0.25);
    b.put("/v1/experiments/e", doc).await.expect(200);
    a.engine.refresh().await.expect("refresh");
    assert_eq!(a.get("/v1/experiments/e").await.body["version"], 2);
    let unit = json!({"org_id": 5, "unit_id": "pr-9"});
    assert_eq!(
        a.post("/v1/experiments/e/assign", unit.clone()).await.body,
        b.post("/v1/experiments/e/assign", unit).await.body
    );
}

/// Every version states its phase and the buckets it moved (§3): the
/// contract's example (a third equal arm joins two), a change that keeps
/// the layout, a new salt, a deletion and a re-creation.
async fn versions_state_their_phase_and_what_they_moved(backend: Backend) {
    let (_store, app) = start!(backend);
    let path = "/v1/experiments/code-review";
    let three = json!({"salt": "code-review", "treatments": [
        {"name": "noop", "weight": 1}, {"name": "cost-optimized", "weight": 1}, {"name": "perf", "weight": 1}]});
    app.put(path, two_arms()).await.expect(201);
    app.put(path, three.clone()).await.expect(200);
    let mut described = three.clone();
    described["description"] = json!("same layout");
    app.put(path, described).await.expect(200);
    let mut salted = three.clone();
    salted["salt"] = json!("again");
    app.put(path, salted.clone()).await.expect(200);
    app.delete(path).await.expect(204);
    app.put(path, salted).await.expect(201);

    let history = app.get(&format!("{path}/versions")).await.expect(200).body;
    let got: Vec<(i64, i64, i64)> = history
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["phase"].as_i64().unwrap(),
                v["moved"]["buckets"].as_i64().unwrap(),
            )
        })
        .collect();
    // 1 first; 2 a third arm (phase 2, a third moved); 3 a description
    // (same phase); 4 a new salt (phase 3, the layout itself unchanged);
    // 5 the deletion (ends phase 3, moves nobody); 6 re-created (phase 4):
    // its fresh layout lays the three arms out in list order, so against
    // the last live layout 3 332 buckets changed hands.
    assert_eq!(
        got,
        [
            (1, 1, 0),
            (2, 2, 3333),
            (3, 2, 0),
            (4, 3, 0),
            (5, 3, 0),
            (6, 4, 3332)
        ],
        "{history}"
    );
    let second = &history.as_array().unwrap()[4];
    assert_eq!(second["moved"]["share"], 0.3333);
    assert_eq!(
        second["moved"]["ranges"],
        json!([{"start": 3334, "end": 5000, "from": "noop", "to": "perf"},
               {"start": 8333, "end": 10000, "from": "cost-optimized", "to": "perf"}])
    );
}

on_both_stores!(
    versions_state_their_phase_and_what_they_moved,
    lifecycle_create_update_resend_delete_recreate,
    every_invalid_document_is_refused_and_changes_nothing,
    a_stale_if_match_is_refused_and_changes_nothing,
    history_keeps_every_version_with_its_layout,
    a_broken_stored_config_fails_only_its_experiment,
    a_second_replica_sees_writes_after_refreshing,
);
