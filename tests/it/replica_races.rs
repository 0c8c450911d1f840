//! The same write at once through two replicas: the store's transaction
//! decides, never a replica's cached copy (§1 Versions, §7 Replicas).

use std::sync::Arc;

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::helpers::{Backend, TestApp, TestStore};
use crate::on_both_stores;

/// Reads rows straight from the store, as an analyst would: the creation
/// times of the key's participants, and when the key was deleted.
async fn participant_times(store: &TestStore, key: &str) -> (Vec<OffsetDateTime>, OffsetDateTime) {
    crate::on_pool!(store, pool => {
        let rows: Vec<(OffsetDateTime,)> = sqlx::query_as(
            "SELECT p.created_at FROM participants p JOIN experiments e ON e.id = p.experiment_id \
             WHERE e.key = $1",
        )
        .bind(key)
        .fetch_all(&pool)
        .await
        .unwrap();
        let (at,): (OffsetDateTime,) = sqlx::query_as("SELECT deleted_at FROM experiments WHERE key = $1")
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap();
        (rows.into_iter().map(|r| r.0).collect(), at)
    })
}

fn study() -> Value {
    json!({"cohorts": [{"alias": "all", "name": "Everyone"}],
           "routing": {"groups": [{"name": "Solo", "target_cohort": "all",
               "composition": [{"id": "any", "min_count": 1, "max_count": 1}]}]}})
}

/// 40 registrations through B while A deletes the experiment: each is
/// answered 201 or 404, the store holds exactly the 201s, and every stored
/// participant was written before the deletion (none after `deleted_at`).
async fn registrations_racing_a_delete_are_ordered_before_it_or_refused(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = Arc::new(TestApp::spawn(&store).await);
    let b = Arc::new(TestApp::spawn(&store).await);
    a.put("/v1/experiments/race", study()).await.expect(201);
    // B learns of it by read-through.
    b.get("/v1/experiments/race").await.expect(200);

    let mut tasks = Vec::new();
    for i in 0..40 {
        let b = Arc::clone(&b);
        tasks.push(tokio::spawn(async move {
            let path = format!("/v1/experiments/race/participants/p{i}");
            b.put(&path, json!({"attributes": {"i": i}}))
                .await
                .status
                .as_u16()
        }));
        if i == 10 {
            let a = Arc::clone(&a);
            tasks.push(tokio::spawn(async move {
                a.delete("/v1/experiments/race").await.status.as_u16() + 1000
            }));
        }
    }
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            1204 => {}
            201 => created += 1,
            404 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    let (times, deleted_at) = participant_times(&store, "race").await;
    assert_eq!(times.len(), created, "stored participants = the 201s");
    assert!(
        times.iter().all(|t| *t <= deleted_at),
        "a participant was written after the deletion at {deleted_at}: {times:?}"
    );
    // And afterwards nobody gets in, through either replica.
    for app in [&a, &b] {
        app.put(
            "/v1/experiments/race/participants/late",
            json!({"attributes": {}}),
        )
        .await
        .expect_error(404, "not_found");
    }
    assert_eq!(participant_times(&store, "race").await.0.len(), created);
}

/// 20 writers with the same `If-Match: "1"` through two replicas: exactly
/// one wins, every other is 412, and both replicas end on version 2 with
/// the winner's document.
async fn one_if_match_wins_across_replicas(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = Arc::new(TestApp::spawn(&store).await);
    let b = Arc::new(TestApp::spawn(&store).await);
    let doc =
        |w: u32| json!({"treatments": [{"name": "x", "weight": 1}, {"name": "y", "weight": w}]});
    a.put("/v1/experiments/contended", doc(1)).await.expect(201);
    let mut tasks = Vec::new();
    for w in 2..22u32 {
        let app = Arc::clone(if w % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            let answer = app.put_if("/v1/experiments/contended", "1", doc(w)).await;
            (w, answer.status.as_u16(), answer.body)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (w, status, body) = task.await.unwrap();
        match status {
            200 => winners.push(w),
            412 => assert_eq!(body["error"]["code"], "version_mismatch"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins: {winners:?}");
    for app in [&a, &b] {
        app.engine.refresh().await.unwrap();
        let read = app.get("/v1/experiments/contended").await.expect(200);
        assert_eq!(read.body["version"], 2);
        assert_eq!(read.body["treatments"][1]["weight"], winners[0]);
    }
}

/// Two deletions at once through two replicas: one 204, one 404, and one
/// deletion in the history.
async fn one_of_two_concurrent_deletes_wins(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = Arc::new(TestApp::spawn(&store).await);
    let b = Arc::new(TestApp::spawn(&store).await);
    a.put(
        "/v1/experiments/twice",
        json!({"treatments": [{"name": "x", "weight": 1}]}),
    )
    .await
    .expect(201);
    b.get("/v1/experiments/twice").await.expect(200);
    let (one, two) = tokio::join!(
        a.delete("/v1/experiments/twice"),
        b.delete("/v1/experiments/twice")
    );
    let mut statuses = [one.status.as_u16(), two.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 404]);
    let history = a
        .get("/v1/experiments/twice/versions")
        .await
        .expect(200)
        .body;
    let deletions = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["deleted"] == true)
        .count();
    assert_eq!(deletions, 1, "{history}");
    assert_eq!(history[0]["version"], 2);
}

on_both_stores!(
    registrations_racing_a_delete_are_ordered_before_it_or_refused,
    one_if_match_wins_across_replicas,
    one_of_two_concurrent_deletes_wins,
);
