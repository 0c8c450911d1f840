//! The waiting pool as routing reads it (§5 "Matching"): a transaction reads
//! only the candidates of the groups its arrivals can complete, through the
//! stored slots, and the result is still the contract's: a participant whose
//! new attributes were never matched, a config change, and the slots kept in
//! step with the pool.

use serde_json::{json, Value};

use crate::helpers::{Backend, TestApp, TestStore};
use crate::{on_both_stores, start};

const P: &str = "/v1/experiments/pairs/participants";

/// One high (score ≥ 7) and one low (score < 5) scorer form a pair; a
/// middle scorer sits nowhere.
fn pairs(min_high: u32) -> Value {
    json!({"routing": {"groups": [{"name": "Pair", "composition": [
        {"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": min_high, "max_count": 2},
        {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 1, "max_count": 1}]}]}})
}

async fn arrive(app: &TestApp, id: &str, score: i64) -> Value {
    app.put(
        &format!("{P}/{id}"),
        json!({"attributes": {"score": score}}),
    )
    .await
    .expect(201);
    app.post(&format!("{P}/{id}/route"), json!({}))
        .await
        .expect(200)
        .body
}

async fn status(app: &TestApp, id: &str) -> String {
    app.get(&format!("{P}/{id}")).await.expect(200).body["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn experiment_id(app: &TestApp, key: &str) -> String {
    let loaded = app.engine.store().load().await.unwrap();
    loaded
        .experiments
        .into_iter()
        .find(|e| e.key == key)
        .map(|e| e.id)
        .unwrap()
}

async fn slot_rows(store: &TestStore) -> i64 {
    store.scalar("SELECT COUNT(*) FROM participant_slots").await
}

/// A registration replaced a waiting participant's attributes, and the
/// matching pass that follows it never ran (the replica stopped in
/// between): the participant is still matched on its new attributes by the
/// next arrival, not on the slots of its old ones.
async fn new_attributes_whose_matching_never_ran_are_matched_by_the_next_arrival(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/pairs", pairs(1)).await.expect(201);
    assert_eq!(arrive(&app, "p", 6).await["status"], "waiting");
    // The store's registration alone, as the endpoint does it before its
    // matching pass.
    let id = experiment_id(&app, "pairs").await;
    app.engine
        .store()
        .register(&id, "p", &json!({"score": 8}))
        .await
        .unwrap();
    assert_eq!(status(&app, "p").await, "waiting");
    let low = arrive(&app, "q", 1).await;
    assert_eq!(low["status"], "assigned");
    assert_eq!(status(&app, "p").await, "assigned");
}

/// Slots follow the pool: written when a participant starts waiting,
/// removed when it leaves it; one that sits in no entry has none.
async fn slots_are_kept_for_waiting_participants_only(backend: Backend) {
    let (store, app) = start!(backend);
    app.put("/v1/experiments/pairs", pairs(2)).await.expect(201);
    arrive(&app, "h1", 9).await;
    arrive(&app, "mid", 6).await;
    assert_eq!(slot_rows(&store).await, 1);
    arrive(&app, "l1", 1).await;
    assert_eq!(slot_rows(&store).await, 2);
    // The second high scorer completes the pair: three leave the pool.
    assert_eq!(arrive(&app, "h2", 8).await["status"], "assigned");
    assert_eq!(slot_rows(&store).await, 0);
    assert_eq!(status(&app, "mid").await, "waiting");
    // A waiting participant dropped loses its slots.
    arrive(&app, "h3", 7).await;
    assert_eq!(slot_rows(&store).await, 1);
    app.post(&format!("{P}/h3/drop"), json!({}))
        .await
        .expect(200);
    assert_eq!(slot_rows(&store).await, 0);
}

/// A new config version makes the stored slots meaningless (entries are
/// positions in the config): the next routing transaction reads the whole
/// pool, slots it again, and forms what the new version allows.
async fn a_config_change_slots_the_pool_again_and_matches_it(backend: Backend) {
    let (store, app) = start!(backend);
    app.put("/v1/experiments/pairs", pairs(2)).await.expect(201);
    arrive(&app, "h1", 9).await;
    arrive(&app, "l1", 1).await;
    arrive(&app, "l2", 2).await;
    assert_eq!(status(&app, "h1").await, "waiting");
    // Lowering the minimum lets h1 pair with the oldest low scorer.
    app.put("/v1/experiments/pairs", pairs(1)).await.expect(200);
    assert_eq!(status(&app, "h1").await, "assigned");
    assert_eq!(status(&app, "l1").await, "assigned");
    assert_eq!(status(&app, "l2").await, "waiting");
    assert_eq!(slot_rows(&store).await, 1);
    assert_eq!(
        store
            .scalar("SELECT COUNT(*) FROM experiments WHERE slots_version = version")
            .await,
        1
    );
    // Slots that claim an older version are recomputed, whatever they say:
    // here they say l2 sits nowhere.
    store
        .execute("UPDATE experiments SET slots_version = version - 1")
        .await;
    store.execute("DELETE FROM participant_slots").await;
    assert_eq!(arrive(&app, "h2", 8).await["status"], "assigned");
    assert_eq!(status(&app, "l2").await, "assigned");
}

/// A group of 250 entries: an arrival that sits in it reads every entry
/// (in several statements), and the result is still right.
async fn a_group_with_hundreds_of_entries_is_read_in_full(backend: Backend) {
    let (_store, app) = start!(backend);
    let wide: Vec<Value> = (0..250)
        .map(|i| json!({"id": format!("e{i}"), "condition": {"k": i}, "min_count": 1, "max_count": 1}))
        .collect();
    let doc = json!({"routing": {"groups": [
        {"name": "Wide", "composition": wide},
        {"name": "Twins", "composition": [{"id": "last", "condition": {"k": 249}, "min_count": 2, "max_count": 2}]}]}});
    app.put("/v1/experiments/pairs", doc).await.expect(201);
    for (id, status) in [("a", "waiting"), ("b", "assigned")] {
        app.put(&format!("{P}/{id}"), json!({"attributes": {"k": 249}}))
            .await
            .expect(201);
        let routed = app
            .post(&format!("{P}/{id}/route"), json!({}))
            .await
            .expect(200);
        assert_eq!(routed.body["status"], status, "{}", routed.body);
    }
    assert_eq!(status(&app, "a").await, "assigned");
}

/// A group without a target names its cohorts "<group> #<n>" in order,
/// from a count kept per group rather than counted each time.
async fn a_group_s_cohorts_are_numbered_in_order(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/pairs", pairs(1)).await.expect(201);
    for n in 0..3 {
        arrive(&app, &format!("h{n}"), 9).await;
        let low = arrive(&app, &format!("l{n}"), 1).await;
        assert_eq!(low["cohort"]["name"], format!("Pair #{}", n + 1), "{low}");
    }
}

on_both_stores!(
    a_group_s_cohorts_are_numbered_in_order,
    a_group_with_hundreds_of_entries_is_read_in_full,
    new_attributes_whose_matching_never_ran_are_matched_by_the_next_arrival,
    slots_are_kept_for_waiting_participants_only,
    a_config_change_slots_the_pool_again_and_matches_it,
);
