//! Assignment over HTTP (§4.3): every reason, the documented bucket, hash_by,
//! and the batch endpoint.

use allot::domain::hash::bucket;
use serde_json::{json, Value};

use crate::helpers::Backend;
use crate::{on_both_stores, start};

const FLAG: &str = "organizations:code-review-experiments-enabled";

async fn every_reason_in_the_documented_order(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(
        &format!("/v1/flags/{FLAG}"),
        json!({"rules": [{"condition": {"plan": "business"}, "rollout": 100}]}),
    )
    .await
    .expect(201);
    let mut doc = json!({"eligibility_flag": FLAG, "salt": "code-review",
        "treatments": [{"name": "noop", "weight": 1}, {"name": "cost-optimized", "weight": 1, "payload": {"model": "b"}}]});
    app.put("/v1/experiments/code-review", doc.clone())
        .await
        .expect(201);
    let assign = |org: Value, unit: &str, plan: &str| {
        let body = json!({"org_id": org, "unit_id": unit, "attributes": {"plan": plan}});
        let app = &app;
        async move {
            app.post("/v1/experiments/code-review/assign", body)
                .await
                .expect(200)
                .body
        }
    };

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

on_both_stores!(
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
