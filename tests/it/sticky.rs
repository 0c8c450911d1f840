//! Sticky experiments (§4.3 step 4): first write wins, survives reweighting
//! and restarts, and concurrent first requests agree.

use serde_json::{json, Value};

use crate::helpers::{Backend, TestApp};
use crate::{on_both_stores, start};

fn sticky(weights: [u32; 2]) -> Value {
    json!({"sticky": true, "treatments": [{"name": "a", "weight": weights[0]}, {"name": "b", "weight": weights[1]}]})
}

async fn assign(app: &TestApp, unit: usize) -> Value {
    app.post(
        "/v1/experiments/s/assign",
        json!({"org_id": 7, "unit_id": format!("pr-{unit}")}),
    )
    .await
    .expect(200)
    .body
}

async fn sticky_answers_survive_reweighting_and_restarts(backend: Backend) {
    let (store, app) = start!(backend);
    app.put("/v1/experiments/s", sticky([1, 1]))
        .await
        .expect(201);
    let mut first = Vec::new();
    for unit in 0..60 {
        let answer = assign(&app, unit).await;
        assert_eq!(answer["reason"], "assigned");
        first.push(answer["treatment"].clone());
    }
    // Asked again: the stored answer, marked sticky.
    let again = assign(&app, 0).await;
    assert_eq!(
        (
            again["treatment"].clone(),
            again["reason"].clone(),
            again["bucket"].clone()
        ),
        (first[0].clone(), json!("sticky"), json!(null))
    );

    // Reweight heavily towards b: units that were in a stay in a.
    app.put("/v1/experiments/s", sticky([1, 9]))
        .await
        .expect(200);
    for (unit, treatment) in first.iter().enumerate() {
        assert_eq!(
            &assign(&app, unit).await["treatment"],
            treatment,
            "unit {unit}"
        );
    }

    // And after a restart.
    app.stop().await;
    let app = TestApp::spawn(&store).await;
    for (unit, treatment) in first.iter().enumerate() {
        let answer = assign(&app, unit).await;
        assert_eq!(
            (&answer["treatment"], &answer["reason"]),
            (treatment, &json!("sticky")),
            "unit {unit}"
        );
    }

    // Disabling a: its units are re-assigned by the layout (all to b now) and stored again.
    app.put("/v1/experiments/s", sticky([0, 1]))
        .await
        .expect(200);
    for (unit, was) in first.iter().enumerate() {
        let answer = assign(&app, unit).await;
        assert_eq!(answer["treatment"], "b");
        let expected = if *was == "a" { "assigned" } else { "sticky" };
        assert_eq!(answer["reason"], expected, "unit {unit}");
    }
    // Re-enabling a does not pull them back: b is stored and still active.
    app.put("/v1/experiments/s", sticky([1, 1]))
        .await
        .expect(200);
    for unit in 0..60 {
        assert_eq!(assign(&app, unit).await["treatment"], "b");
    }
}

async fn non_sticky_answers_are_reproduced_after_a_restart(backend: Backend) {
    let (store, app) = start!(backend);
    let mut doc = json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]});
    app.put("/v1/experiments/s", doc.clone()).await.expect(201);
    doc["treatments"] =
        json!([{"name": "a", "weight": 2}, {"name": "b", "weight": 1}, {"name": "c", "weight": 3}]);
    app.put("/v1/experiments/s", doc.clone()).await.expect(200);
    doc["coverage"] = json!(0.7);
    app.put("/v1/experiments/s", doc).await.expect(200);
    let mut before = Vec::new();
    for unit in 0..200 {
        before.push(assign(&app, unit).await);
    }
    let layout = app.get("/v1/experiments/s").await.body["layout"].clone();
    app.stop().await;
    let app = TestApp::spawn(&store).await;
    assert_eq!(app.get("/v1/experiments/s").await.body["layout"], layout);
    for (unit, answer) in before.iter().enumerate() {
        assert_eq!(&assign(&app, unit).await, answer);
    }
}

/// 32 clients ask for the same 20 units at once, on two replicas sharing the
/// store: every unit gets one answer, and it is the stored one.
async fn concurrent_first_requests_agree_on_one_stored_answer(backend: Backend) {
    let (store, a) = start!(backend);
    let b = TestApp::spawn(&store).await;
    a.put("/v1/experiments/s", sticky([1, 1])).await.expect(201);
    b.engine.refresh().await.expect("refresh");
    let a = std::sync::Arc::new(a);
    let b = std::sync::Arc::new(b);
    let mut tasks = Vec::new();
    for client in 0..32 {
        let app = if client % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for unit in 0..20 {
                seen.push(assign(&app, unit).await["treatment"].clone());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.expect("client"));
    }
    for unit in 0..20 {
        let stored = assign(&a, unit).await;
        assert_eq!(stored["reason"], "sticky");
        for seen in &all {
            assert_eq!(seen[unit], stored["treatment"], "unit {unit}");
        }
    }
}

/// A batch resolves its sticky items together, with the answers the same
/// items get one by one: stored units answer `sticky`, new ones `assigned`
/// (and are stored), a unit repeated in the batch is `sticky` the second time.
async fn a_batch_of_sticky_items_answers_as_one_by_one(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/s", sticky([1, 1]))
        .await
        .expect(201);
    app.put(
        "/v1/experiments/plain",
        json!({"treatments": [{"name": "a", "weight": 1}]}),
    )
    .await
    .expect(201);
    let before: Vec<Value> = {
        let mut v = Vec::new();
        for unit in 0..5 {
            v.push(assign(&app, unit).await);
        }
        v
    };
    let item =
        |unit: usize| json!({"experiment": "s", "org_id": 7, "unit_id": format!("pr-{unit}")});
    let items = vec![
        item(0),
        item(10),
        item(1),
        item(11),
        item(10),
        json!({"experiment": "plain", "org_id": 7, "unit_id": "x"}),
        item(12),
    ];
    let results = app
        .post("/v1/assign", json!({"items": items}))
        .await
        .expect(200)
        .body["results"]
        .clone();
    assert_eq!(results[0]["reason"], "sticky");
    assert_eq!(results[0]["treatment"], before[0]["treatment"]);
    assert_eq!(results[2]["treatment"], before[1]["treatment"]);
    assert_eq!(results[1]["reason"], "assigned");
    assert_eq!(results[3]["reason"], "assigned");
    assert_eq!(
        results[4]["reason"], "sticky",
        "the repeat sees the first one's stored answer"
    );
    assert_eq!(results[4]["treatment"], results[1]["treatment"]);
    assert_eq!(results[5]["reason"], "assigned");
    assert_eq!(results[6]["reason"], "assigned");
    for (position, unit) in [(1, 10), (3, 11), (6, 12)] {
        let single = assign(&app, unit).await;
        assert_eq!(
            (single["reason"].clone(), single["treatment"].clone()),
            (json!("sticky"), results[position]["treatment"].clone())
        );
    }
}

on_both_stores!(
    a_batch_of_sticky_items_answers_as_one_by_one,
    sticky_answers_survive_reweighting_and_restarts,
    non_sticky_answers_are_reproduced_after_a_restart,
    concurrent_first_requests_agree_on_one_stored_answer,
);
