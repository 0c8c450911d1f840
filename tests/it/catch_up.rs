//! How a replica catches up with the store: only the changed entities when
//! it knows what changed, everything when it cannot know (§7 Replicas).

use std::sync::Arc;

use serde_json::json;

use crate::helpers::{Backend, TestApp, TestStore};
use crate::on_both_stores;

/// Two replicas on one store whose poll is ten minutes away: a change
/// reaches the other only by a notification (PostgreSQL), a look-up, or the
/// test's own refresh.
async fn replicas_that_do_not_poll(backend: Backend) -> Option<(TestStore, TestApp, TestApp)> {
    let store = TestStore::new(backend).await?;
    let mut settings = store.settings();
    settings.refresh_interval_ms = 600_000;
    let a = TestApp::spawn_with(settings.clone()).await;
    let b = TestApp::spawn_with(settings).await;
    Some((store, a, b))
}

/// A revision bumped by hand, with no record of what it changed (an
/// operator's repair in SQL): the other replica reloads everything and
/// serves the edited row.
async fn a_revision_without_its_change_reloads_everything(backend: Backend) {
    // No polling: only this test's own refresh can see the hand edit.
    let Some((store, a, b)) = replicas_that_do_not_poll(backend).await else {
        return;
    };
    a.put(
        "/v1/flags/edited",
        json!({"description": "as written", "enabled": true}),
    )
    .await
    .expect(201);
    b.get("/v1/flags/edited").await.expect(200);
    store
        .execute(
            "UPDATE flags SET config = '{\"description\": \"edited by hand\", \"enabled\": true, \"rules\": []}' \
             WHERE key = 'edited'",
        )
        .await;
    store
        .execute("UPDATE config_revision SET revision = revision + 1 WHERE id = 1")
        .await;
    b.engine.refresh().await.unwrap();
    let served = b.get("/v1/flags/edited").await.expect(200);
    assert_eq!(served.body["description"], "edited by hand");
    // The next ordinary write is applied by changes again.
    a.put(
        "/v1/flags/edited",
        json!({"description": "third", "enabled": true}),
    )
    .await
    .expect(200);
    b.engine.refresh().await.unwrap();
    assert_eq!(
        b.get("/v1/flags/edited").await.expect(200).body["description"],
        "third"
    );
}

/// 300 writes (more than one catch-up reloads one by one) while the other
/// replica does not look: afterwards it serves exactly what the writer does.
async fn a_replica_far_behind_catches_up_in_one_go(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = Arc::new(TestApp::spawn(&store).await);
    let b = TestApp::spawn(&store).await;
    for i in 0..300u32 {
        let key = format!("/v1/experiments/e{}", i % 50);
        let doc =
            json!({"treatments": [{"name": "x", "weight": 1}, {"name": "y", "weight": i + 1}]});
        let status = a.put(&key, doc).await.status.as_u16();
        assert!(matches!(status, 200 | 201), "{status}");
    }
    a.put("/v1/flags/f", json!({"enabled": true}))
        .await
        .expect(201);
    a.put("/v1/flags/f/orgs/7", json!({"enabled": false}))
        .await
        .expect(201);
    a.delete("/v1/experiments/e49").await.expect(204);
    b.engine.refresh().await.unwrap();
    assert_eq!(
        a.engine.snapshot().revision,
        b.engine.snapshot().revision,
        "both replicas serve the store's revision"
    );
    assert_eq!(
        a.get("/v1/experiments").await.expect(200).body,
        b.get("/v1/experiments").await.expect(200).body
    );
    assert_eq!(
        b.post("/v1/flags/f/evaluate", json!({"org_id": 7}))
            .await
            .expect(200)
            .body["reason"],
        "override"
    );
    b.get("/v1/experiments/e49")
        .await
        .expect_error(404, "not_found");
}

/// A write refused with 412 on a replica that served an older version
/// shows that replica it is behind: it catches up before answering, so
/// its next read agrees with the refusal (polling is out of the way here).
async fn a_refused_write_brings_its_replica_up_to_date(backend: Backend) {
    let Some((_store, a, b)) = replicas_that_do_not_poll(backend).await else {
        return;
    };
    a.put(
        "/v1/flags/f",
        json!({"description": "one", "enabled": true}),
    )
    .await
    .expect(201);
    a.put("/v1/experiments/e", json!({"description": "one"}))
        .await
        .expect(201);
    assert_eq!(b.get("/v1/flags/f").await.expect(200).body["version"], 1);
    assert_eq!(
        b.get("/v1/experiments/e").await.expect(200).body["version"],
        1
    );
    // Changed through A; on SQLite nothing tells B (no notifications, and
    // its poll is ten minutes away).
    a.put(
        "/v1/flags/f",
        json!({"description": "two", "enabled": true}),
    )
    .await
    .expect(200);
    a.put("/v1/experiments/e", json!({"description": "two"}))
        .await
        .expect(200);
    b.put_if(
        "/v1/flags/f",
        "1",
        json!({"description": "stale", "enabled": true}),
    )
    .await
    .expect_error(412, "version_mismatch");
    b.delete_if("/v1/experiments/e", "\"1\"")
        .await
        .expect_error(412, "version_mismatch");
    let flag = b.get("/v1/flags/f").await.expect(200);
    assert_eq!(
        (
            flag.body["version"].clone(),
            flag.body["description"].clone()
        ),
        (json!(2), json!("two"))
    );
    let experiment = b.get("/v1/experiments/e").await.expect(200);
    assert_eq!(experiment.body["version"], 2);
}

on_both_stores!(
    a_refused_write_brings_its_replica_up_to_date,
    a_revision_without_its_change_reloads_everything,
    a_replica_far_behind_catches_up_in_one_go,
);
