//! Hostile input on both stores (§1): U+0000 anywhere, numbers at
//! the edges of their types, the bounded-work limits, `If-Match: *`, the
//! bearer scheme in any case, concurrent registrations, and a stored
//! configuration broken by hand. Every refusal is the error shape of §1
//! and changes nothing; nothing here is ever a 500.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::{Backend, TestApp};
use crate::{on_both_stores, start};

fn study() -> Value {
    json!({
        "treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}],
        "sticky": true,
        "cohorts": [{"alias": "arm", "name": "Arm", "capacity": 10}],
        "routing": {"groups": [{"name": "solo", "target_cohort": "arm",
            "composition": [{"id": "any", "min_count": 1, "max_count": 1}]}]}
    })
}

/// Every string position a client can write, with a NUL in it, answers 422
/// pointing at it, and nothing is stored: PostgreSQL and SQLite alike.
async fn nul_is_refused_everywhere_with_a_pointer(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/flags/f", json!({"rules": [{"rollout": 100}]}))
        .await
        .expect(201);
    app.put("/v1/experiments/s", study()).await.expect(201);

    let nul = "x\u{0}y";
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "PUT",
            "/v1/flags/g",
            json!({"description": nul}),
            "/description",
        ),
        (
            "PUT",
            "/v1/flags/g",
            json!({"rules": [{"name": nul, "rollout": 1}]}),
            "/rules/0/name",
        ),
        (
            "PUT",
            "/v1/flags/g",
            json!({"rules": [{"condition": {"plan": nul}, "rollout": 1}]}),
            "/rules/0/condition/plan",
        ),
        (
            "PUT",
            "/v1/flags/g",
            json!({"rules": [{"condition": {nul: 1}, "rollout": 1}]}),
            "/rules/0/condition/x\u{0}y",
        ),
        (
            "PUT",
            "/v1/experiments/t",
            json!({"description": nul}),
            "/description",
        ),
        ("PUT", "/v1/experiments/t", json!({"salt": nul}), "/salt"),
        (
            "PUT",
            "/v1/experiments/t",
            json!({"treatments": [{"name": "a", "weight": 1, "payload": {"deep": [nul]}}]}),
            "/treatments/0/payload/deep/0",
        ),
        (
            "PUT",
            "/v1/experiments/t",
            json!({"cohorts": [{"alias": "c", "name": nul}]}),
            "/cohorts/0/name",
        ),
        (
            "PUT",
            "/v1/experiments/t",
            json!({"cohorts": [{"alias": "c", "description": nul}]}),
            "/cohorts/0/description",
        ),
        (
            "PUT",
            "/v1/experiments/t",
            json!({"routing": {"groups": [{"name": "g\u{0}", "composition": [{"id": "x", "min_count": 1, "max_count": 1}]}]}}),
            "/routing/groups/0/name",
        ),
        (
            "PUT",
            "/v1/experiments/t",
            json!({"variables": [{"name": "v", "default": nul}]}),
            "/variables/0/default",
        ),
        (
            "POST",
            "/v1/experiments/s/assign",
            json!({"org_id": nul, "unit_id": "u"}),
            "/org_id",
        ),
        (
            "POST",
            "/v1/experiments/s/assign",
            json!({"org_id": 1, "unit_id": nul}),
            "/unit_id",
        ),
        (
            "POST",
            "/v1/experiments/s/assign",
            json!({"org_id": 1, "unit_id": "u", "attributes": {"k": nul}}),
            "/attributes/k",
        ),
        (
            "POST",
            "/v1/assign",
            json!({"items": [{"experiment": "s", "org_id": 1, "unit_id": nul}]}),
            "/items/0/unit_id",
        ),
        (
            "POST",
            "/v1/flags/f/evaluate",
            json!({"org_id": 1, "attributes": {"a": [nul]}}),
            "/attributes/a/0",
        ),
        (
            "PUT",
            "/v1/flags/f/orgs/1",
            json!({"enabled": true, "note": nul}),
            "/note",
        ),
        (
            "PUT",
            "/v1/experiments/s/participants/p",
            json!({"attributes": {"score": nul}}),
            "/attributes/score",
        ),
    ];
    for (method, path, body, pointer) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let answer = app
            .send(app.client.request(method, app.url(path)).json(&body))
            .await
            .expect_error(422, "validation_failed");
        assert_eq!(
            answer.detail_paths(),
            vec![pointer.to_owned()],
            "{path} {body}"
        );
    }
    // In the URL: ids and cursors.
    for (method, path) in [
        ("PUT", "/v1/experiments/s/participants/p%00"),
        ("POST", "/v1/experiments/s/participants/p%00/route"),
        ("GET", "/v1/experiments/s/participants/p%00"),
        ("PUT", "/v1/flags/f/orgs/o%00"),
        ("DELETE", "/v1/flags/f/orgs/o%00"),
        ("GET", "/v1/flags/f/orgs?after=a%00"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        app.send(
            app.client
                .request(method, app.url(path))
                .json(&json!({"enabled": true})),
        )
        .await
        .expect_error(422, "validation_failed");
    }
    // Nothing was stored, and everything still works.
    app.get("/v1/flags/g").await.expect_error(404, "not_found");
    app.get("/v1/experiments/t")
        .await
        .expect_error(404, "not_found");
    app.get("/v1/experiments/s/participants/p")
        .await
        .expect_error(404, "not_found");
    assert_eq!(
        app.get("/v1/flags/f/orgs").await.expect(200).body["overrides"],
        json!([])
    );
    app.post(
        "/v1/experiments/s/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect(200);
    app.put("/v1/experiments/s/participants/p", json!({}))
        .await
        .expect(201);
    let routed = app
        .post("/v1/experiments/s/participants/p/route", json!({}))
        .await
        .expect(200);
    assert_eq!(routed.body["status"], "assigned");
}

/// Numbers at the edges of their types either work correctly or are 422,
/// on every path; none is a 400, a 500 or a hang.
async fn numbers_at_the_edges_work_or_are_refused(backend: Backend) {
    let (_store, app) = start!(backend);
    // Weights are relative: any finite weights give a correct layout.
    let one = app
        .put(
            "/v1/experiments/big",
            json!({"treatments": [{"name": "a", "weight": 1e305}]}),
        )
        .await
        .expect(201);
    assert_eq!(
        one.body["layout"],
        json!([{"treatment": "a", "start": 0, "end": 10000}])
    );
    let two = app
        .put(
            "/v1/experiments/huge",
            json!({"treatments": [{"name": "a", "weight": 1e308}, {"name": "b", "weight": 1e308}]}),
        )
        .await
        .expect(201);
    assert_eq!(
        two.body["layout"],
        json!([{"treatment": "a", "start": 0, "end": 5000}, {"treatment": "b", "start": 5000, "end": 10000}])
    );
    let tiny = app
        .put(
            "/v1/experiments/tiny",
            json!({"treatments": [{"name": "a", "weight": 5e-324}, {"name": "b", "weight": 0}], "coverage": 5e-324}),
        )
        .await
        .expect(201);
    assert_eq!(tiny.body["layout"], json!([]));
    app.put(
        "/v1/experiments/tiny",
        json!({"treatments": [{"name": "a", "weight": 5e-324}, {"name": "b", "weight": 0}], "coverage": -0.0}),
    )
    .await
    .expect(200);

    // Literals no f64 holds, and fractions or negatives where a whole number is meant.
    let raw = |path: &str, body: &'static str| {
        app.client
            .put(app.url(path))
            .header("content-type", "application/json")
            .body(body)
    };
    let overflow = app
        .send(raw(
            "/v1/experiments/x",
            r#"{"treatments": [{"name": "a", "weight": 1e400}]}"#,
        ))
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(overflow.detail_paths(), vec!["/treatments/0/weight"]);
    app.send(raw("/v1/flags/x", r#"{"rules": [{"rollout": -1e999}]}"#))
        .await
        .expect_error(422, "validation_failed");
    for (doc, pointer) in [
        (json!({"coverage": 1.0000001}), "/coverage"),
        (json!({"coverage": -1e-300}), "/coverage"),
        (
            json!({"treatments": [{"name": "a", "weight": -5e-324}]}),
            "/treatments/0/weight",
        ),
        (
            json!({"cohorts": [{"alias": "c", "capacity": 4_294_967_296u64}]}),
            "/cohorts/0/capacity",
        ),
        (
            json!({"cohorts": [{"alias": "c", "capacity": 1.5}]}),
            "/cohorts/0/capacity",
        ),
        (
            json!({"cohorts": [{"alias": "c", "capacity": -1}]}),
            "/cohorts/0/capacity",
        ),
    ] {
        let answer = app
            .put("/v1/experiments/x", doc.clone())
            .await
            .expect_error(422, "validation_failed");
        assert_eq!(answer.detail_paths(), vec![pointer.to_owned()], "{doc}");
    }
    app.put(
        "/v1/experiments/cap",
        json!({"cohorts": [{"alias": "c", "capacity": 4_294_967_295u64}]}),
    )
    .await
    .expect(201);
    for rollout in [json!(100.001), json!(-0.01), json!(1e308)] {
        app.put("/v1/flags/x", json!({"rules": [{"rollout": rollout}]}))
            .await
            .expect_error(422, "validation_failed");
    }
    app.put(
        "/v1/flags/x",
        json!({"rules": [{"rollout": -0.0}, {"rollout": 100}]}),
    )
    .await
    .expect(201);

    // Ids: non-negative integers up to u64::MAX mean their decimal string.
    let max = app
        .post(
            "/v1/experiments/big/assign",
            json!({"org_id": u64::MAX, "unit_id": 0}),
        )
        .await
        .expect(200);
    assert_eq!(max.body["org_id"], "18446744073709551615");
    assert_eq!(max.body["unit_id"], "0");
    for org in [
        json!(-1),
        json!(1.5),
        json!(18446744073709551616.0),
        json!(1e300),
    ] {
        let answer = app
            .post(
                "/v1/experiments/big/assign",
                json!({"org_id": org, "unit_id": "u"}),
            )
            .await
            .expect_error(422, "validation_failed");
        assert_eq!(answer.detail_paths(), vec!["/org_id"], "{org}");
    }

    // Durations: whole seconds from 1 to a year.
    let routing = |timeout: Value| {
        json!({"cohorts": [{"alias": "c"}], "routing": {"wait_timeout_seconds": timeout,
            "groups": [{"name": "g", "composition": [{"id": "x", "min_count": 2, "max_count": 2}]}]}})
    };
    for timeout in [
        json!(1_000_000_000_000u64),
        json!(u64::MAX),
        json!(31_536_001),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1e300),
        json!("600"),
    ] {
        let answer = app
            .put("/v1/experiments/timed", routing(timeout.clone()))
            .await
            .expect_error(422, "validation_failed");
        assert_eq!(
            answer.detail_paths(),
            vec!["/routing/wait_timeout_seconds"],
            "{timeout}"
        );
    }
    app.put("/v1/experiments/timed", routing(json!(31_536_000)))
        .await
        .expect(201);
    app.put("/v1/experiments/timed/participants/p", json!({}))
        .await
        .expect(201);
    let waiting = app
        .post("/v1/experiments/timed/participants/p/route", json!({}))
        .await
        .expect(200);
    assert_eq!(waiting.body["status"], "waiting");

    // Paging numbers at their edges are a bad query, never a crash.
    for query in [
        "limit=9223372036854775807",
        "limit=0",
        "limit=-9223372036854775808",
        "limit=99999999999999999999",
        "before=99999999999999999999",
        "limit=1.5",
    ] {
        app.get(&format!("/v1/experiments/timed/routing/events?{query}"))
            .await
            .expect_error(400, "bad_request");
    }
    for before in ["-9223372036854775808", "9223372036854775807", "0"] {
        app.get(&format!(
            "/v1/experiments/timed/routing/events?limit=1000&before={before}"
        ))
        .await
        .expect(200);
    }
}

/// Over a limit of §1 is 422 (413 for the body) with a message naming it.
async fn the_limits_of_bounded_work_are_enforced_and_named(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(
        "/v1/experiments/e",
        json!({"treatments": [{"name": "a", "weight": 1}]}),
    )
    .await
    .expect(201);
    app.put("/v1/experiments/r", study()).await.expect(201);
    app.put("/v1/flags/f", json!({"rules": [{"rollout": 100}]}))
        .await
        .expect(201);

    let big = json!({"blob": "x".repeat(16 * 1024)});
    let mut deep = json!(1);
    for _ in 0..33 {
        deep = json!({ "a": deep });
    }
    for (path, body, pointer, limit) in [
        (
            "/v1/experiments/e/assign",
            json!({"org_id": 1, "unit_id": "u", "attributes": big}),
            "/attributes",
            "16384",
        ),
        (
            "/v1/experiments/e/assign",
            json!({"org_id": 1, "unit_id": "u", "attributes": deep}),
            "/attributes",
            "32",
        ),
        (
            "/v1/assign",
            json!({"items": [{"experiment": "e", "org_id": 1, "unit_id": "u", "attributes": big}]}),
            "/items/0/attributes",
            "16384",
        ),
        (
            "/v1/flags/f/evaluate",
            json!({"org_id": 1, "attributes": big}),
            "/attributes",
            "16384",
        ),
    ] {
        let answer = app.post(path, body).await;
        let answer = if path == "/v1/assign" {
            let item = &answer.expect(200).body["results"][0]["error"];
            assert_eq!(item["code"], "validation_failed");
            assert_eq!(item["details"][0]["path"], pointer);
            assert!(item["message"].as_str().unwrap().contains(limit), "{item}");
            continue;
        } else {
            answer.expect_error(422, "validation_failed")
        };
        assert_eq!(answer.detail_paths(), vec![pointer.to_owned()]);
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(limit),
            "{}",
            answer.body
        );
    }
    let answer = app
        .put(
            "/v1/experiments/r/participants/p",
            json!({"attributes": {"blob": "x".repeat(16 * 1024)}}),
        )
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(answer.detail_paths(), vec!["/attributes"]);
    app.get("/v1/experiments/r/participants/p")
        .await
        .expect_error(404, "not_found");

    // A list over 10 000 entries, and a condition over 64 KiB.
    let long: Vec<u32> = (0..10_001).collect();
    let answer = app
        .put(
            "/v1/flags/g",
            json!({"rules": [{"condition": {"n": {"$nin": long}}, "rollout": 100}]}),
        )
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(answer.detail_paths(), vec!["/rules/0/condition/n/$nin"]);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("10000"));
    let wide: serde_json::Map<String, Value> = (0..3000)
        .map(|i| (format!("field-{i:05}"), json!("some value here")))
        .collect();
    let answer = app
        .put(
            "/v1/flags/g",
            json!({"rules": [{"condition": wide, "rollout": 100}]}),
        )
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(answer.detail_paths(), vec!["/rules/0/condition"]);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("65536"));
    app.get("/v1/flags/g").await.expect_error(404, "not_found");

    // Conditions each within the limits, whose work together is not: a flag
    // may try every rule, matching may try every composition entry.
    let scan = json!({"tags": {"$elemMatch": {"$gt": 1}}});
    let rules: Vec<Value> = (0..300)
        .map(|_| json!({"condition": scan, "rollout": 100}))
        .collect();
    let answer = app
        .put("/v1/flags/g", json!({"rules": rules}))
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(answer.detail_paths(), vec!["/rules"]);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2000000"));
    let groups: Vec<Value> = (0..300)
        .map(|i| json!({"name": format!("g{i}"), "composition": [{"id": "x", "condition": scan, "min_count": 1, "max_count": 1}]}))
        .collect();
    let answer = app
        .put("/v1/experiments/x", json!({"routing": {"groups": groups}}))
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(answer.detail_paths(), vec!["/routing/groups"]);

    // Nesting deeper than a body may go is refused with the limit named.
    let abyss = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let answer = app
        .send(
            app.client
                .post(app.url("/v1/assign"))
                .header("content-type", "application/json")
                .body(abyss),
        )
        .await
        .expect_error(422, "validation_failed");
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("64"));
}

/// The worst requests the limits allow finish, and `/healthz` answers while
/// they run.
async fn the_worst_allowed_requests_leave_the_probes_answering(backend: Backend) {
    let (_store, app) = start!(backend);
    let list: Vec<u32> = (0..10_000).collect();
    app.put(
        "/v1/flags/heavy",
        json!({"rules": [{"condition": {"tags": {"$nin": list.clone()}, "ids": {"$all": list[..1300].to_vec()}}, "rollout": 100}]}),
    )
    .await
    .expect(201);
    // As many numbers as 16 KiB of attributes hold.
    // Every tag passes the `$nin` (none is listed) and every listed id is
    // present, so both operators do all their work.
    let tags: Vec<u32> = (20_000..21_300).collect();
    let ids: Vec<u32> = (0..1_300).collect();
    let body = json!({"org_id": 1, "attributes": {"tags": tags, "ids": ids}});
    assert!(serde_json::to_string(&body["attributes"]).unwrap().len() <= 16 * 1024);
    let app = Arc::new(app);
    let heavy: Vec<_> = (0..16)
        .map(|_| {
            let app = Arc::clone(&app);
            let body = body.clone();
            tokio::spawn(async move { app.post("/v1/flags/heavy/evaluate", body).await })
        })
        .collect();
    for _ in 0..20 {
        app.get("/healthz").await.expect(200);
    }
    for task in heavy {
        let answer = task.await.unwrap().expect(200);
        assert_eq!(answer.body["reason"], "rule");
    }
}

/// `If-Match: *` means "exists"; a list matches any of its versions; a
/// version no store could hold is stale, not malformed.
async fn if_match_star_and_lists(backend: Backend) {
    let (_store, app) = start!(backend);
    let doc = json!({"rules": [{"rollout": 10}]});
    app.put_if("/v1/flags/f", "*", doc.clone())
        .await
        .expect_error(412, "version_mismatch");
    app.get("/v1/flags/f").await.expect_error(404, "not_found");
    app.put("/v1/flags/f", doc.clone()).await.expect(201);
    let star = app
        .put_if("/v1/flags/f", "*", json!({"rules": [{"rollout": 20}]}))
        .await
        .expect(200);
    assert_eq!(star.body["version"], 2);
    app.put_if(
        "/v1/flags/f",
        "\"1\", \"2\"",
        json!({"rules": [{"rollout": 30}]}),
    )
    .await
    .expect(200);
    for stale in ["\"99999999999999999999\"", "\"abc\"", "W/\"2\""] {
        app.put_if("/v1/flags/f", stale, doc.clone())
            .await
            .expect_error(412, "version_mismatch");
    }
    app.put_if("/v1/flags/f", "", doc.clone())
        .await
        .expect_error(400, "bad_request");

    let experiment = json!({"treatments": [{"name": "a", "weight": 1}]});
    app.put_if("/v1/experiments/e", "*", experiment.clone())
        .await
        .expect_error(412, "version_mismatch");
    app.get("/v1/experiments/e")
        .await
        .expect_error(404, "not_found");
    app.put("/v1/experiments/e", experiment).await.expect(201);
    app.put_if(
        "/v1/experiments/e",
        "*",
        json!({"treatments": [{"name": "a", "weight": 2}]}),
    )
    .await
    .expect(200);
}

/// The bearer scheme is matched in any case; the token is not.
async fn the_bearer_scheme_is_case_insensitive(backend: Backend) {
    let Some(store) = crate::helpers::TestStore::new(backend).await else {
        return;
    };
    let mut settings = store.settings();
    settings.auth.tokens = allot::config::parse_tokens("ops:admin:s3cret-token").unwrap();
    let app = TestApp::spawn_with(settings).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        app.send(
            app.client
                .get(app.url("/v1/flags"))
                .header("authorization", format!("{scheme} s3cret-token")),
        )
        .await
        .expect(200);
    }
    for value in [
        "Bearer S3CRET-TOKEN",
        "Basic s3cret-token",
        "Bearer",
        "s3cret-token",
    ] {
        app.send(
            app.client
                .get(app.url("/v1/flags"))
                .header("authorization", value),
        )
        .await
        .expect_error(401, "unauthorized");
    }
}

/// Registering one new participant many times at once, through two
/// replicas, answers 201 exactly once.
async fn concurrent_registrations_create_once(backend: Backend) {
    let (store, a) = start!(backend);
    a.put("/v1/experiments/s", study()).await.expect(201);
    let b = Arc::new(TestApp::spawn(&store).await);
    let a = Arc::new(a);
    for round in 0..5 {
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let app = if i % 2 == 0 {
                    Arc::clone(&a)
                } else {
                    Arc::clone(&b)
                };
                tokio::spawn(async move {
                    app.put(
                        &format!("/v1/experiments/s/participants/p{round}"),
                        json!({"attributes": {"i": i}}),
                    )
                    .await
                    .status
                    .as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for call in calls {
            statuses.push(call.await.unwrap());
        }
        statuses.sort_unstable();
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 200),
            "{statuses:?}"
        );
    }
}

/// A layout edited by hand is detected on load, answers 503 on every
/// replica alike, and re-sending the valid document repairs it from the
/// last valid layout (so no unit moves).
async fn a_broken_stored_layout_is_detected_and_repaired(backend: Backend) {
    let (store, app) = start!(backend);
    let doc = json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]});
    let created = app.put("/v1/experiments/e", doc.clone()).await.expect(201);
    let layout = created.body["layout"].clone();
    let disabled = json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 0}]});
    app.put("/v1/experiments/w", disabled.clone())
        .await
        .expect(201);
    app.stop().await;
    store
        .execute(
            "UPDATE experiment_versions SET layout = '[{\"treatment\": \"ghost\", \"start\": 0, \"end\": 20000}]' \
             WHERE experiment_id = (SELECT id FROM experiments WHERE key = 'e')",
        )
        .await;
    // Valid ranges, but a disabled arm holding buckets.
    store
        .execute(
            "UPDATE experiment_versions SET layout = '[{\"treatment\": \"a\", \"start\": 0, \"end\": 5000}, {\"treatment\": \"b\", \"start\": 5000, \"end\": 10000}]' \
             WHERE experiment_id = (SELECT id FROM experiments WHERE key = 'w')",
        )
        .await;
    let a = TestApp::spawn(&store).await;
    let b = TestApp::spawn(&store).await;
    for app in [&a, &b] {
        for key in ["e", "w"] {
            app.get(&format!("/v1/experiments/{key}"))
                .await
                .expect_error(503, "unavailable");
            app.post(
                &format!("/v1/experiments/{key}/assign"),
                json!({"org_id": 1, "unit_id": "u"}),
            )
            .await
            .expect_error(503, "unavailable");
        }
    }
    // The same document again repairs it: a new version, the old layout.
    let repaired = a.put("/v1/experiments/e", doc).await.expect(200);
    assert_eq!(repaired.body["version"], 2);
    assert_eq!(repaired.body["layout"], layout);
    let fixed = a.put("/v1/experiments/w", disabled).await.expect(200);
    assert_eq!(
        fixed.body["layout"],
        json!([{"treatment": "a", "start": 0, "end": 10000}])
    );
    a.post(
        "/v1/experiments/e/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect(200);
}

/// A client that announces a body and stalls gets a 400 (its fault), not
/// the request timeout's 503.
async fn a_stalled_body_is_the_clients_fault(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_store, app) = start!(backend);
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(
            b"POST /v1/assign HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"items\": [",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // The request timeout (10 s) would answer 503; the body's own bound comes first.
    let read = tokio::time::timeout(std::time::Duration::from_secs(9), async {
        loop {
            let n = stream.read(&mut buffer).await.unwrap_or(0);
            answer.extend_from_slice(&buffer[..n]);
            if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a stalled body");
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

/// What the replica work added, as a hostile client would use it: If-Match
/// on DELETE at the edges of its syntax and of i64, U+0000 in the new URL
/// positions, keys far over the limit, a hundred unknown keys at once (the
/// store lookups they share), and the same deletion twice at once. Every
/// answer is the error shape with its status, never a 5xx, and a refused
/// request changes nothing.
async fn the_replica_additions_refuse_hostile_input(backend: Backend) {
    let (_store, app) = start!(backend);
    let app = Arc::new(app);
    app.put("/v1/flags/f", json!({"enabled": true}))
        .await
        .expect(201);
    app.put(
        "/v1/experiments/e",
        json!({"treatments": [{"name": "a", "weight": 1}]}),
    )
    .await
    .expect(201);
    for (path, version) in [("/v1/flags/f", 1), ("/v1/experiments/e", 1)] {
        for bad in ["abc", "\"1", "1,", "W/", ""] {
            app.delete_if(path, bad)
                .await
                .expect_error(400, "bad_request");
        }
        for stale in [
            "\"0\"",
            "\"-1\"",
            "\"9223372036854775807\"",
            "\"9223372036854775808\"",
            "\"99999999999999999999999999\"",
            "\"x\"",
        ] {
            app.delete_if(path, stale)
                .await
                .expect_error(412, "version_mismatch");
        }
        // Nothing was deleted by any of them.
        assert_eq!(app.get(path).await.expect(200).body["version"], version);
    }
    app.delete_if("/v1/flags/never", "*")
        .await
        .expect_error(412, "version_mismatch");
    for path in ["/v1/flags/f%00", "/v1/experiments/e%00"] {
        app.delete(path)
            .await
            .expect_error(422, "validation_failed");
    }
    for path in [
        "/v1/flags/f%00",
        "/v1/experiments/e%00",
        "/v1/experiments/e%00/versions",
    ] {
        app.get(path).await.expect_error(422, "validation_failed");
    }
    let huge = "k".repeat(10_000);
    app.get(&format!("/v1/experiments/{huge}/versions"))
        .await
        .expect_error(404, "not_found");
    app.delete(&format!("/v1/experiments/{huge}"))
        .await
        .expect_error(404, "not_found");
    app.post(
        &format!("/v1/experiments/{huge}/assign"),
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect_error(404, "not_found");

    // A hundred unknown keys at once: every one 404, the probes answer.
    let unknown: Vec<_> = (0..100)
        .map(|i| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                app.post(
                    &format!("/v1/experiments/unknown-{i}/assign"),
                    json!({"org_id": i, "unit_id": "u"}),
                )
                .await
                .status
                .as_u16()
            })
        })
        .collect();
    for call in unknown {
        assert_eq!(call.await.unwrap(), 404);
    }
    app.get("/readyz").await.expect(200);

    // The same deletion twice at once, for flags as for experiments.
    for path in ["/v1/flags/f", "/v1/experiments/e"] {
        let (one, two) = tokio::join!(app.delete(path), app.delete(path));
        let mut statuses = [one.status.as_u16(), two.status.as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [204, 404], "{path}");
    }
    let history = app.get("/v1/experiments/e/versions").await.expect(200).body;
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
}

/// What this session's additions accept, used as a hostile client would:
/// forced pins at the edges of the id rules, U+0000, unrepresentable
/// numbers, 1 000 pins, the same document twice at once; a flag sent back
/// with garbage in its served fields.
async fn the_session_additions_refuse_hostile_input(backend: Backend) {
    let (_store, app) = start!(backend);
    let arms = json!([{"name": "a", "weight": 1}, {"name": "b", "weight": 0}]);
    let pins = |forced: Value| json!({"treatments": arms, "forced": forced});
    for (forced, path) in [
        (
            json!([{"org_id": "\u{0}", "treatment": "a"}]),
            "/forced/0/org_id",
        ),
        (
            json!([{"org_id": 1, "unit_id": "u\u{0}", "treatment": "a"}]),
            "/forced/0/unit_id",
        ),
        (
            json!([{"org_id": 1, "treatment": "a\u{0}"}]),
            "/forced/0/treatment",
        ),
        (
            json!([{"org_id": 1.5, "treatment": "a"}]),
            "/forced/0/org_id",
        ),
        (
            json!([{"org_id": 1, "unit_id": "x".repeat(257), "treatment": "a"}]),
            "/forced/0/unit_id",
        ),
        (
            json!([{"org_id": 1, "treatment": 7}]),
            "/forced/0/treatment",
        ),
        (json!([[1, "a"]]), "/forced/0"),
    ] {
        let refused = app
            .put("/v1/experiments/pins", pins(forced.clone()))
            .await
            .expect(422);
        assert_eq!(refused.detail_paths(), [path], "{forced}");
    }
    // A number no float holds is refused by the body reader, with its pointer.
    let raw = r#"{"treatments": [{"name": "a", "weight": 1}], "forced": [{"org_id": 1e400, "treatment": "a"}]}"#;
    let refused = app
        .send(
            app.client
                .put(app.url("/v1/experiments/pins"))
                .header("content-type", "application/json")
                .body(raw),
        )
        .await
        .expect(422);
    assert_eq!(refused.detail_paths(), ["/forced/0/org_id"]);
    app.get("/v1/experiments/pins").await.expect(404);

    // The largest org id, and exactly 1 000 pins, the same document twice at once.
    let mut many: Vec<Value> = (0..999)
        .map(|i| json!({"org_id": i, "unit_id": "u", "treatment": "b"}))
        .collect();
    many.push(json!({"org_id": u64::MAX, "unit_id": null, "treatment": "b"}));
    let doc = pins(Value::Array(many));
    let (one, two) = tokio::join!(
        app.put("/v1/experiments/pins", doc.clone()),
        app.put("/v1/experiments/pins", doc.clone())
    );
    let mut statuses = [one.status.as_u16(), two.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 201]);
    assert_eq!(one.body["version"], 1);
    assert_eq!(two.body["version"], 1);
    assert_eq!(one.body["forced"][999]["org_id"], u64::MAX.to_string());
    let pinned = app
        .post(
            "/v1/experiments/pins/assign",
            json!({"org_id": u64::MAX, "unit_id": "any"}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(
        (&pinned["treatment"], &pinned["reason"]),
        (&json!("b"), &json!("forced"))
    );

    // A flag sent back with garbage in the fields the server adds: ignored
    // when it is JSON the body reader accepts, refused when it is not.
    app.put("/v1/flags/f", json!({"enabled": true}))
        .await
        .expect(201);
    let mut read = app.get("/v1/flags/f").await.expect(200).body;
    read["version"] = json!("not a version");
    read["key"] = json!("another-key");
    read["created_at"] = json!([1, 2, 3]);
    let again = app.put("/v1/flags/f", read.clone()).await.expect(200).body;
    assert_eq!((&again["key"], &again["version"]), (&json!("f"), &json!(1)));
    read["updated_at"] = json!("\u{0}");
    let refused = app.put("/v1/flags/f", read).await.expect(422);
    assert_eq!(refused.detail_paths(), ["/updated_at"]);
}

on_both_stores!(
    the_session_additions_refuse_hostile_input,
    a_stalled_body_is_the_clients_fault,
    the_replica_additions_refuse_hostile_input,
    nul_is_refused_everywhere_with_a_pointer,
    numbers_at_the_edges_work_or_are_refused,
    the_limits_of_bounded_work_are_enforced_and_named,
    the_worst_allowed_requests_leave_the_probes_answering,
    if_match_star_and_lists,
    the_bearer_scheme_is_case_insensitive,
    concurrent_registrations_create_once,
    a_broken_stored_layout_is_detected_and_repaired,
);

/// The application's backends waiting on a lock, once there is one.
async fn blocked_backend(admin: &sqlx::PgPool, application: &str) -> i32 {
    blocked_backend_but(admin, application, None).await
}

/// As [`blocked_backend`], but not `terminated` (a backend that was just
/// terminated may still be listed, waiting, for a moment).
async fn blocked_backend_but(
    admin: &sqlx::PgPool,
    application: &str,
    terminated: Option<i32>,
) -> i32 {
    let mut blocked = None;
    crate::helpers::until_within(
        "the call blocks on the lock",
        std::time::Duration::from_secs(20),
        async || {
            blocked = sqlx::query_as::<_, (i32,)>(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock' \
                 AND pid <> $2 LIMIT 1",
            )
            .bind(application)
            .bind(terminated.unwrap_or(0))
            .fetch_optional(admin)
            .await
            .unwrap()
            .map(|(pid,)| pid);
            blocked.is_some()
        },
    )
    .await;
    blocked.unwrap_or_default()
}

async fn terminate(admin: &sqlx::PgPool, pid: i32) {
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(admin)
        .await
        .unwrap();
}

fn unavailable_count(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("allot_store_errors_total{kind=\"unavailable\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

/// A PostgreSQL backend terminated mid-call (SQLSTATE 57P01, as in a fast
/// shutdown or a failover) is never a 500: a routing call is retried once in
/// a new transaction, a sticky assignment answers 503, the 503 body carries
/// no driver text, and every such error is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(allot_test_pg),
    ignore = "set TEST_DATABASE_URL to run on PostgreSQL"
)]
async fn postgres_backend_terminated_mid_call_is_retried_or_503() {
    let Some(store) = crate::helpers::TestStore::new(Backend::Postgres).await else {
        return;
    };
    let application = format!("allot_{}", uuid::Uuid::new_v4().simple());
    let mut settings = store.settings();
    settings.database_url = format!("{}&application_name={application}", store.url);
    let app = Arc::new(TestApp::spawn_with(settings).await);
    app.put("/v1/experiments/s", study()).await.expect(201);
    for p in ["p1", "p2"] {
        app.put(&format!("/v1/experiments/s/participants/{p}"), json!({}))
            .await
            .expect(201);
    }
    let admin = sqlx::PgPool::connect(&store.url).await.unwrap();
    let counted = unavailable_count(app.get_text("/metrics").await.as_str());
    let lock_routing = || async {
        let mut tx = admin.begin().await.unwrap();
        sqlx::query(
            "SELECT routing_seq FROM experiments WHERE key = 's' AND deleted_at IS NULL FOR UPDATE",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        tx
    };

    // Terminated once: the retry succeeds once the lock is released.
    let lock = lock_routing().await;
    let call = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            app.post("/v1/experiments/s/participants/p1/route", json!({}))
                .await
        })
    };
    let first = blocked_backend(&admin, &application).await;
    terminate(&admin, first).await;
    blocked_backend_but(&admin, &application, Some(first)).await;
    lock.commit().await.unwrap();
    let routed = call.await.unwrap().expect(200);
    assert_eq!(routed.body["status"], "assigned");

    // Terminated twice: 503, opaque, and nothing changed.
    let lock = lock_routing().await;
    let call = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            app.post("/v1/experiments/s/participants/p2/route", json!({}))
                .await
        })
    };
    let first = blocked_backend(&admin, &application).await;
    terminate(&admin, first).await;
    terminate(
        &admin,
        blocked_backend_but(&admin, &application, Some(first)).await,
    )
    .await;
    let refused = call.await.unwrap().expect_error(503, "unavailable");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("terminat") && !message.contains("administrator"),
        "{message}"
    );
    lock.commit().await.unwrap();
    let p2 = app
        .get("/v1/experiments/s/participants/p2")
        .await
        .expect(200);
    assert_eq!(p2.body["status"], "new");

    // A sticky claim waiting on a concurrent insert of the same unit.
    let mut claim = admin.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO sticky_assignments (experiment_id, org_id, unit_id, treatment, version, assigned_at) \
         SELECT id, '1', 'u', 'a', 1, now() FROM experiments WHERE key = 's' AND deleted_at IS NULL",
    )
    .execute(&mut *claim)
    .await
    .unwrap();
    let call = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            app.post(
                "/v1/experiments/s/assign",
                json!({"org_id": 1, "unit_id": "u"}),
            )
            .await
        })
    };
    terminate(&admin, blocked_backend(&admin, &application).await).await;
    call.await.unwrap().expect_error(503, "unavailable");
    claim.rollback().await.unwrap();
    app.post(
        "/v1/experiments/s/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect(200);

    let now = unavailable_count(app.get_text("/metrics").await.as_str());
    assert!(now >= counted + 4.0, "counted {counted} then {now}");
}
