//! Assignment over HTTP (§4.3): every reason, the documented bucket, hash_by,
//! and the batch endpoint.

use allot::domain::hash::bucket;
use serde_json::{json, Value};

use crate::helpers::{Backend, TestApp};
use crate::{on_both_stores, start};

const FLAG: &str = "organizations:code-review-experiments-enabled";

/// The eligibility flag: orgs on the business plan only.
async fn business_only(app: &TestApp) {
    app.put(
        &format!("/v1/flags/{FLAG}"),
        json!({"rules": [{"condition": {"plan": "business"}, "rollout": 100}]}),
    )
    .await
    .expect(201);
}

/// `code-review`'s answer for a unit of an org on `plan`.
async fn assign_unit(app: &TestApp, org: Value, unit: &str, plan: &str) -> Value {
    let body = json!({"org_id": org, "unit_id": unit, "attributes": {"plan": plan}});
    app.post("/v1/experiments/code-review/assign", body)
        .await
        .expect(200)
        .body
}

async fn every_reason_in_the_documented_order(backend: Backend) {
    let (_store, app) = start!(backend);
    business_only(&app).await;
    let mut doc = json!({"eligibility_flag": FLAG, "salt": "code-review",
        "treatments": [{"name": "noop", "weight": 1}, {"name": "cost-optimized", "weight": 1, "payload": {"model": "b"}}]});
    app.put("/v1/experiments/code-review", doc.clone())
        .await
        .expect(201);
    let assign =
        |org: Value, unit: &'static str, plan: &'static str| assign_unit(&app, org, unit, plan);

    let a = assign(json!(42), "getsentry/sentry#107230", "business").await;
    let b = bucket(&["code-review", "42", "getsentry/sentry#107230"]);
    assert_eq!(a["bucket"], b);
    let want = if b < 5000 {
        ("noop", json!(null))
    } else {
        ("cost-optimized", json!({"model": "b"}))
    };
    assert_eq!(
        a,
        json!({"experiment": "code-review", "version": 1, "org_id": "42", "unit_id": "getsentry/sentry#107230",
                         "treatment": want.0, "payload": want.1, "bucket": b, "reason": "assigned"})
    );
    // The same question gets the same answer.
    assert_eq!(
        assign(json!("42"), "getsentry/sentry#107230", "business").await,
        a
    );

    let out = assign(json!(42), "pr", "free").await;
    assert_eq!(
        (
            out["treatment"].clone(),
            out["reason"].clone(),
            out["bucket"].clone()
        ),
        (json!(null), json!("org_not_eligible"), json!(null))
    );

    doc["coverage"] = json!(0.0);
    app.put("/v1/experiments/code-review", doc.clone())
        .await
        .expect(200);
    let uncovered = assign(json!(42), "pr", "business").await;
    assert_eq!(
        (uncovered["reason"].clone(), uncovered["bucket"].clone()),
        (
            json!("not_in_coverage"),
            json!(bucket(&["code-review", "42", "pr"]))
        )
    );

    doc["treatments"] =
        json!([{"name": "noop", "weight": 0}, {"name": "cost-optimized", "weight": 0}]);
    app.put("/v1/experiments/code-review", doc.clone())
        .await
        .expect(200);
    assert_eq!(
        assign(json!(42), "pr", "business").await["reason"],
        "no_active_treatments"
    );
    // Not eligible is decided before no active treatments.
    assert_eq!(
        assign(json!(42), "pr", "free").await["reason"],
        "org_not_eligible"
    );

    doc["status"] = json!("paused");
    app.put("/v1/experiments/code-review", doc)
        .await
        .expect(200);
    let paused = assign(json!(42), "pr", "free").await;
    assert_eq!(
        (paused["reason"].clone(), paused["version"].clone()),
        (json!("experiment_paused"), json!(4))
    );
}

async fn hash_by_org_gives_every_unit_of_an_org_one_treatment(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/org-level", json!({"hash_by": "org", "treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]})).await.expect(201);
    for org in 0..20 {
        let b = bucket(&["org-level", &org.to_string()]);
        let mut seen = Vec::new();
        for unit in 0..5 {
            let answer = app
                .post(
                    "/v1/experiments/org-level/assign",
                    json!({"org_id": org, "unit_id": format!("pr-{unit}")}),
                )
                .await
                .expect(200)
                .body;
            assert_eq!(answer["bucket"], b);
            seen.push(answer["treatment"].clone());
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "org {org} got {seen:?}");
    }
}

async fn a_bad_batch_item_fails_alone(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(
        "/v1/experiments/e",
        json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}),
    )
    .await
    .expect(201);
    let single = app
        .post(
            "/v1/experiments/e/assign",
            json!({"org_id": 1, "unit_id": "pr-1"}),
        )
        .await
        .expect(200)
        .body;
    let answer = app
        .post(
            "/v1/assign",
            json!({"items": [
            {"experiment": "e", "org_id": 1, "unit_id": "pr-1"},
            {"experiment": "e", "org_id": 1.5, "unit_id": "pr-2"},
            {"experiment": "missing", "org_id": 1, "unit_id": "pr-3"},
            {"experiment": "e", "unit_id": "pr-4", "attributes": 3},
            "not an object",
            {"experiment": "e", "org_id": "2", "unit_id": 77}]}),
        )
        .await
        .expect(200);
    let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    let results = answer.body["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 6);
    assert_eq!(results[0], single);
    assert_eq!(results[1]["error"]["code"], "validation_failed");
    assert_eq!(results[1]["error"]["details"][0]["path"], "/items/1/org_id");
    assert_eq!(results[1]["error"]["request_id"], id.as_str());
    assert_eq!(results[2]["error"]["code"], "not_found");
    let paths: Vec<&str> = results[3]["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["/items/3/org_id", "/items/3/attributes"]);
    assert_eq!(
        results[4]["error"]["details"][0]["path"],
        "/items/4/experiment"
    );
    assert_eq!(
        (results[5]["org_id"].clone(), results[5]["unit_id"].clone()),
        (json!("2"), json!("77"))
    );

    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"experiment": "e", "org_id": 1, "unit_id": i}))
        .collect();
    app.post("/v1/assign", json!({"items": too_many}))
        .await
        .expect_error(422, "validation_failed");
    let full: Vec<Value> = (0..1000)
        .map(|i| json!({"experiment": "e", "org_id": 1, "unit_id": i}))
        .collect();
    let answer = app
        .post("/v1/assign", json!({"items": full}))
        .await
        .expect(200);
    assert_eq!(answer.body["results"].as_array().map(Vec::len), Some(1000));
    app.post("/v1/assign", json!({"things": []}))
        .await
        .expect_error(422, "validation_failed");
}

async fn bad_single_requests_get_422_with_every_problem(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(
        "/v1/experiments/e",
        json!({"treatments": [{"name": "a", "weight": 1}]}),
    )
    .await
    .expect(201);
    let answer = app
        .post(
            "/v1/experiments/e/assign",
            json!({"org_id": true, "unit_id": "", "attributes": [1]}),
        )
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(
        answer.detail_paths(),
        vec!["/org_id", "/unit_id", "/attributes"]
    );
    let long = "x".repeat(257);
    app.post(
        "/v1/experiments/e/assign",
        json!({"org_id": long, "unit_id": "u"}),
    )
    .await
    .expect_error(422, "validation_failed");
    app.post("/v1/experiments/e/assign", json!([]))
        .await
        .expect_error(422, "validation_failed");
    app.post(
        "/v1/experiments/missing/assign",
        json!({"org_id": 1, "unit_id": "u"}),
    )
    .await
    .expect_error(404, "not_found");
}

/// QA pins (§3 `forced`, §4.3 step 1a): a unit's pin beats its org's, a
/// pin needs no eligibility and no bucket and may name a disabled arm,
/// pausing still wins, and a sticky experiment stores nothing for a pin.
async fn forced_pins_answer_before_eligibility_and_bucket(backend: Backend) {
    let (_store, app) = start!(backend);
    business_only(&app).await;
    let mut doc = json!({"eligibility_flag": FLAG, "sticky": true,
        "treatments": [{"name": "noop", "weight": 1}, {"name": "cost-optimized", "weight": 1},
                       {"name": "retired", "weight": 0, "payload": {"model": "old"}}],
        "forced": [{"org_id": 7, "unit_id": null, "treatment": "noop"},
                   {"org_id": "7", "unit_id": "pr-1", "treatment": "retired"},
                   {"org_id": 8, "unit_id": 99, "treatment": "cost-optimized"}]});
    let served = app
        .put("/v1/experiments/code-review", doc.clone())
        .await
        .expect(201)
        .body;
    assert_eq!(served["exposures"], true);
    assert_eq!(
        served["forced"][0],
        json!({"org_id": "7", "unit_id": null, "treatment": "noop"})
    );
    assert_eq!(served["forced"][2]["unit_id"], "99");
    let assign = |org: Value, unit: &'static str| assign_unit(&app, org, unit, "free");
    // Org 7 is not eligible (plan free), but pinned.
    let unit = assign(json!(7), "pr-1").await;
    assert_eq!(
        (
            &unit["treatment"],
            &unit["reason"],
            &unit["bucket"],
            &unit["payload"]
        ),
        (
            &json!("retired"),
            &json!("forced"),
            &Value::Null,
            &json!({"model": "old"})
        )
    );
    let org = assign(json!(7), "pr-2").await;
    assert_eq!(
        (&org["treatment"], &org["reason"]),
        (&json!("noop"), &json!("forced"))
    );
    let one = assign(json!(8), "99").await;
    assert_eq!(
        (&one["treatment"], &one["reason"]),
        (&json!("cost-optimized"), &json!("forced"))
    );
    let other = assign(json!(8), "98").await;
    assert_eq!(other["reason"], "org_not_eligible");
    // Without the pin, the sticky experiment stored nothing for org 7's
    // unit: it gets its bucket's treatment (plan business: eligible).
    doc["forced"] = json!([]);
    app.put("/v1/experiments/code-review", doc.clone())
        .await
        .expect(200);
    let unpinned = assign_unit(&app, json!(7), "pr-1", "business").await;
    assert_eq!(unpinned["reason"], "assigned");
    assert_ne!(unpinned["treatment"], "retired");
    // Pausing comes first.
    doc["status"] = json!("paused");
    doc["forced"] = json!([{"org_id": 7, "unit_id": null, "treatment": "noop"}]);
    app.put("/v1/experiments/code-review", doc)
        .await
        .expect(200);
    assert_eq!(
        assign(json!(7), "pr-2").await["reason"],
        "experiment_paused"
    );
}

/// Pins that cannot be honoured are refused, each at its pointer, and
/// nothing is stored.
async fn invalid_forced_pins_are_refused(backend: Backend) {
    let (_store, app) = start!(backend);
    let arms = json!([{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]);
    for (forced, paths) in [
        (json!("all"), vec!["/forced"]),
        (
            json!([{"org_id": 1, "treatment": "c"}]),
            vec!["/forced/0/treatment"],
        ),
        (
            json!([{"unit_id": "u", "treatment": "a"}]),
            vec!["/forced/0/org_id"],
        ),
        (
            json!([{"org_id": -1, "treatment": "a"}]),
            vec!["/forced/0/org_id"],
        ),
        (
            json!([{"org_id": 1, "unit_id": "", "treatment": "a"}]),
            vec!["/forced/0/unit_id"],
        ),
        (
            json!([{"org_id": 1, "treatment": "a", "extra": 1}]),
            vec!["/forced/0/extra"],
        ),
        (
            json!([{"org_id": 1, "treatment": "a"}, {"org_id": "1", "unit_id": null, "treatment": "b"}]),
            vec!["/forced/1"],
        ),
        (
            json!(vec![json!({"org_id": 1, "treatment": "a"}); 1001]),
            vec!["/forced"],
        ),
    ] {
        let refused = app
            .put(
                "/v1/experiments/pins",
                json!({"treatments": arms, "forced": forced}),
            )
            .await
            .expect(422);
        assert_eq!(refused.detail_paths(), paths, "{forced}");
    }
    app.get("/v1/experiments/pins").await.expect(404);
    app.put(
        "/v1/experiments/pins",
        json!({"treatments": arms, "exposures": "no"}),
    )
    .await
    .expect(422);
    let quiet = app
        .put(
            "/v1/experiments/pins",
            json!({"treatments": arms, "exposures": false}),
        )
        .await
        .expect(201);
    assert_eq!(quiet.body["exposures"], false);
}

/// Request bodies are as strict as the document says: an unknown field is
/// refused (a misspelt `atributes` would otherwise be ignored silently), in
/// a batch in its item's slot; and `42.0`, an integer to JSON Schema, is the
/// id `"42"`.
async fn unknown_fields_are_refused_and_whole_floats_are_ids(backend: Backend) {
    let (_store, app) = start!(backend);
    business_only(&app).await;
    app.put(
        "/v1/experiments/code-review",
        json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}),
    )
    .await
    .expect(201);
    let refused = app
        .post(
            "/v1/experiments/code-review/assign",
            json!({"org_id": 1, "unit_id": "u", "atributes": {"plan": "business"}}),
        )
        .await
        .expect(422);
    assert_eq!(refused.body["error"]["details"][0]["path"], "/atributes");
    let refused = app
        .post(
            &format!("/v1/flags/{FLAG}/evaluate"),
            json!({"org_id": 1, "plan": "business"}),
        )
        .await
        .expect(422);
    assert_eq!(refused.body["error"]["details"][0]["path"], "/plan");
    app.post("/v1/assign", json!({"items": [], "extra": 1}))
        .await
        .expect(422);
    let batch = app
        .post(
            "/v1/assign",
            json!({"items": [
                {"experiment": "code-review", "org_id": 1, "unit_id": "u", "attributes": {"plan": "business"}, "x": 1},
                {"experiment": "", "org_id": 1, "unit_id": "u"},
                {"experiment": "code-review", "org_id": 1, "unit_id": "u", "attributes": {"plan": "business"}}]}),
        )
        .await
        .expect(200);
    let results = &batch.body["results"];
    assert_eq!(results[0]["error"]["details"][0]["path"], "/items/0/x");
    assert_eq!(results[1]["error"]["code"], "validation_failed");
    assert_eq!(results[2]["reason"], "assigned", "{}", batch.body);

    let as_float = app
        .post(
            "/v1/experiments/code-review/assign",
            json!({"org_id": 42.0, "unit_id": 7.0, "attributes": {"plan": "business"}}),
        )
        .await
        .expect(200);
    let as_integer = assign_unit(&app, json!(42), "7", "business").await;
    assert_eq!(as_float.body["org_id"], "42");
    assert_eq!(as_float.body["unit_id"], "7");
    assert_eq!(as_float.body["bucket"], as_integer["bucket"]);
    app.post(
        "/v1/experiments/code-review/assign",
        json!({"org_id": 42.5, "unit_id": "u"}),
    )
    .await
    .expect(422);
}

on_both_stores!(
    unknown_fields_are_refused_and_whole_floats_are_ids,
    forced_pins_answer_before_eligibility_and_bucket,
    invalid_forced_pins_are_refused,
    every_reason_in_the_documented_order,
    hash_by_org_gives_every_unit_of_an_org_one_treatment,
    a_bad_batch_item_fails_alone,
    bad_single_requests_get_422_with_every_problem,
);

/// 100 000 units over weights 3:2:1 land as the weights say: a chi-square
/// test with 2 degrees of freedom at p > 0.001 (critical value 13.816).
#[test]
fn units_spread_over_weights_3_2_1_within_a_chi_square_bound() {
    use allot::domain::experiment::{Experiment, ExperimentConfig};
    use allot::domain::ids::Key;
    let key = Key::parse("distribution").unwrap();
    let config = ExperimentConfig::parse(
        &key,
        &json!({"treatments": [
        {"name": "a", "weight": 3}, {"name": "b", "weight": 2}, {"name": "c", "weight": 1}]}),
    )
    .unwrap();
    let layout = config.layout_from(&[]);
    let experiment = Experiment::new(config, layout);
    let mut counts = [0f64; 3];
    for unit in 0..100_000 {
        let b = experiment.bucket("org-1", &format!("getsentry/sentry#{unit}"));
        counts[experiment.treatment_at(b).expect("full coverage")] += 1.0;
    }
    let expected = [50_000.0, 100_000.0 / 3.0, 100_000.0 / 6.0];
    let chi2: f64 = counts
        .iter()
        .zip(expected)
        .map(|(o, e)| (o - e).powi(2) / e)
        .sum();
    assert!(chi2 < 13.816, "chi-square {chi2} for counts {counts:?}");
}
