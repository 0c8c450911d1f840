//! Replicas on one store agree (§1 "Versions", §3, §7 "Replicas"): a change
//! made through one replica is served by another (pushed on PostgreSQL, polled
//! as a fallback), a key one replica has not seen yet is looked up in the store
//! before a 404, writes are checked against the stored row whichever replica
//! takes them, and a key's versions continue across a deletion.
//!
//! Every test runs two (or more) real servers over HTTP on one store. None
//! calls `engine.refresh()`: that would hide exactly what is tested here. No
//! test sleeps to synchronise; where a change must travel between replicas it
//! polls back to back (each probe is a round trip) until a generous deadline,
//! and prints the measured delay instead of asserting a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{until, Answer, Backend, TestApp, TestStore};
use crate::invariants::{self, score_of};
use crate::{on_both_stores, on_postgres};

/// A refresh interval no test outlives: with it, only a notification (or a
/// look-up in the store) can bring a change to the replica in time.
const NO_POLLING_MS: u64 = 600_000;

/// Two replicas on one fresh store, or `None` (after saying so) when the
/// store is not configured.
async fn replicas(backend: Backend) -> Option<(TestStore, TestApp, TestApp)> {
    let store = TestStore::new(backend).await?;
    let a = TestApp::spawn(&store).await;
    let b = TestApp::spawn(&store).await;
    Some((store, a, b))
}

/// An assignment experiment that also takes participants (a one-person group).
fn experiment(description: &str, weights: [u32; 2]) -> Value {
    json!({"description": description,
           "treatments": [{"name": "control", "weight": weights[0]}, {"name": "treated", "weight": weights[1]}],
           "routing": {"groups": [{"name": "solo", "composition": [{"id": "any", "min_count": 1, "max_count": 1}]}]}})
}

fn flag(description: &str, rollout: u32) -> Value {
    json!({"description": description, "enabled": true,
           "rules": [{"name": "everyone", "rollout": rollout}]})
}

/// The unit every assignment here asks about.
fn unit() -> Value {
    json!({"org_id": 42, "unit_id": "pr-1"})
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50 and max of some delays, in ms, for the log.
fn summary(delays: &mut [Duration]) -> String {
    delays.sort();
    let p50 = delays[(delays.len() - 1) / 2];
    let max = delays[delays.len() - 1];
    format!(
        "p50 {:.1} ms, max {:.1} ms over {} changes",
        ms(p50),
        ms(max),
        delays.len()
    )
}

fn etag(answer: &Answer) -> String {
    answer
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("an ETag header")
        .to_owned()
}

fn version(answer: &Answer) -> i64 {
    answer.body["version"].as_i64().unwrap_or(-1)
}

// ---------------------------------------------------------------------------
// Read-through: a key one replica has not seen yet is looked up in the store.
// ---------------------------------------------------------------------------

/// Created on A, used on B at once, by every kind of call that names a key.
/// Each experiment is first named on B by a different call, so that each call
/// has to find it in the store by itself.
async fn what_one_replica_creates_the_other_serves_at_once(backend: Backend) {
    let Some((_store, a, b)) = replicas(backend).await else {
        return;
    };
    a.put("/v1/flags/gate", flag("gate", 100)).await.expect(201);
    let evaluated = b
        .post("/v1/flags/gate/evaluate", json!({"org_id": 42}))
        .await
        .expect(200)
        .body;
    assert_eq!(
        (evaluated["enabled"].clone(), evaluated["version"].clone()),
        (json!(true), json!(1)),
        "{evaluated}"
    );
    a.put("/v1/flags/shown", flag("shown", 100))
        .await
        .expect(201);
    let read = b.get("/v1/flags/shown").await.expect(200);
    assert_eq!(read.body["description"], "shown");

    let created = a
        .put("/v1/experiments/read", experiment("read", [1, 1]))
        .await
        .expect(201);
    let read = b.get("/v1/experiments/read").await.expect(200);
    assert_eq!(
        (version(&read), read.body["layout"].clone()),
        (1, created.body["layout"].clone())
    );

    a.put("/v1/experiments/assign", experiment("assign", [1, 3]))
        .await
        .expect(201);
    let on_b = b
        .post("/v1/experiments/assign/assign", unit())
        .await
        .expect(200)
        .body;
    assert_eq!(
        (on_b["version"].clone(), on_b["reason"].clone()),
        (json!(1), json!("assigned"))
    );
    let on_a = a
        .post("/v1/experiments/assign/assign", unit())
        .await
        .expect(200)
        .body;
    assert_eq!(on_a, on_b, "both replicas give the same answer");

    a.put("/v1/experiments/batch", experiment("batch", [1, 1]))
        .await
        .expect(201);
    let batch = b
        .post(
            "/v1/assign",
            json!({"items": [{"experiment": "batch", "org_id": 42, "unit_id": "pr-1"}]}),
        )
        .await
        .expect(200)
        .body;
    assert!(batch["results"][0]["error"].is_null(), "{batch}");
    assert_eq!(batch["results"][0]["version"], 1, "{batch}");

    a.put("/v1/experiments/study", experiment("study", [1, 1]))
        .await
        .expect(201);
    let registered = b
        .put(
            "/v1/experiments/study/participants/p-1",
            json!({"attributes": {"score": 3}}),
        )
        .await
        .expect(201);
    assert_eq!(registered.body["status"], "new");
    a.get("/v1/experiments/study/participants/p-1")
        .await
        .expect(200);

    // The other way round, through a write: B validates a gate that only A
    // has seen, and A assigns in the experiment that only B has written.
    a.put("/v1/flags/gate-2", flag("gate-2", 100))
        .await
        .expect(201);
    let mut gated = experiment("gated", [1, 1]);
    gated["eligibility_flag"] = json!("gate-2");
    b.put("/v1/experiments/gated", gated).await.expect(201);
    let answer = a
        .post("/v1/experiments/gated/assign", unit())
        .await
        .expect(200)
        .body;
    assert_eq!(answer["reason"], "assigned", "{answer}");
}

/// A 404 is not remembered past a write: B is asked for keys first (404),
/// then A creates them, then B is asked again at once.
async fn a_404_is_not_remembered_past_a_write(backend: Backend) {
    let Some((_store, a, b)) = replicas(backend).await else {
        return;
    };
    let participant = "/v1/experiments/late/participants/p-1";
    let attributes = json!({"attributes": {}});
    b.get("/v1/experiments/late")
        .await
        .expect_error(404, "not_found");
    b.post("/v1/experiments/late/assign", unit())
        .await
        .expect_error(404, "not_found");
    b.put(participant, attributes.clone())
        .await
        .expect_error(404, "not_found");
    b.get("/v1/flags/late-flag")
        .await
        .expect_error(404, "not_found");
    b.post("/v1/flags/late-flag/evaluate", json!({"org_id": 42}))
        .await
        .expect_error(404, "not_found");

    a.put("/v1/flags/late-flag", flag("late", 100))
        .await
        .expect(201);
    a.put("/v1/experiments/late", experiment("late", [1, 1]))
        .await
        .expect(201);

    assert_eq!(
        b.get("/v1/experiments/late").await.expect(200).body["version"],
        1
    );
    b.post("/v1/experiments/late/assign", unit())
        .await
        .expect(200);
    b.put(participant, attributes).await.expect(201);
    b.get("/v1/flags/late-flag").await.expect(200);
    b.post("/v1/flags/late-flag/evaluate", json!({"org_id": 42}))
        .await
        .expect(200);
}

// ---------------------------------------------------------------------------
// Propagation: a change on A is in force on B.
// ---------------------------------------------------------------------------

/// Weight changes on A, each followed on B by back-to-back reads until B
/// serves the new version: default settings, so on PostgreSQL this measures
/// the push, and on SQLite the polling fallback (fewer rounds: it takes up to
/// `refresh_interval_ms` each).
async fn a_weight_change_on_one_replica_is_served_by_the_other(backend: Backend) {
    let Some((_store, a, b)) = replicas(backend).await else {
        return;
    };
    let path = "/v1/experiments/weights";
    a.put(path, experiment("weights", [1, 1])).await.expect(201);
    until("B serves the new experiment", async || {
        b.get(path).await.status == 200
    })
    .await;
    let rounds = match backend {
        Backend::Postgres => 20,
        Backend::Sqlite => 3,
    };
    let mut delays = Vec::new();
    for round in 1..=rounds {
        let written = a
            .put(path, experiment("weights", [1, round + 1]))
            .await
            .expect(200);
        let new = version(&written);
        assert_eq!(new, i64::from(round) + 1);
        let took = until(&format!("B serves version {new}"), async || {
            version(&b.get(path).await) >= new
        })
        .await;
        delays.push(took);
        let answer = b.post(&format!("{path}/assign"), unit()).await.expect(200);
        assert_eq!(answer.body["version"], new, "{}", answer.body);
    }
    eprintln!(
        "{backend:?}: B served A's weight change after {}",
        summary(&mut delays)
    );
}

/// With polling pushed out of reach (`refresh_interval_ms` of ten minutes on
/// B), every kind of configuration change still reaches B: the notification
/// is the only way it can.
async fn notifications_alone_carry_every_change(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = TestApp::spawn(&store).await;
    let mut settings = store.settings();
    settings.refresh_interval_ms = NO_POLLING_MS;
    let b = TestApp::spawn_with(settings).await;
    let path = "/v1/experiments/pushed";

    a.put(path, experiment("pushed", [1, 1])).await.expect(201);
    let created = until("B serves the created experiment", async || {
        b.get(path).await.status == 200
    })
    .await;
    let mut delays = Vec::new();
    for round in 1..=5u32 {
        let new = version(
            &a.put(path, experiment("pushed", [1, round + 1]))
                .await
                .expect(200),
        );
        delays.push(
            until(&format!("B serves version {new}"), async || {
                version(&b.get(path).await) == new
            })
            .await,
        );
    }

    let flag_path = "/v1/flags/pushed-flag";
    let evaluate = format!("{flag_path}/evaluate");
    a.put(flag_path, flag("pushed", 100)).await.expect(201);
    until("B evaluates the created flag", async || {
        b.post(&evaluate, json!({"org_id": 42})).await.status == 200
    })
    .await;
    a.put(flag_path, flag("pushed", 0)).await.expect(200);
    let flag_changed = until("B evaluates the flag's version 2", async || {
        let answer = b.post(&evaluate, json!({"org_id": 42})).await;
        answer.body["version"] == 2 && answer.body["enabled"] == false
    })
    .await;

    a.delete(path).await.expect(204);
    let deleted = until("B stops serving the deleted experiment", async || {
        b.post(&format!("{path}/assign"), unit()).await.status == 404
    })
    .await;
    a.delete(flag_path).await.expect(204);
    let flag_deleted = until("B stops evaluating the deleted flag", async || {
        b.post(&evaluate, json!({"org_id": 42})).await.status == 404
    })
    .await;
    eprintln!(
        "pushed to B: create {:.1} ms; weight changes {}; flag change {:.1} ms; \
         experiment deletion {:.1} ms; flag deletion {:.1} ms",
        ms(created),
        summary(&mut delays),
        ms(flag_changed),
        ms(deleted),
        ms(flag_deleted)
    );
}

/// B's LISTEN connection is terminated by the database; a change made right
/// then still reaches B (it reconnects and catches up), and the listener
/// comes back. Polling is out of reach on B, so only the listener can help.
async fn a_killed_listener_reconnects_and_catches_up(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = TestApp::spawn(&store).await;
    let application = format!("allot_it_{}", uuid::Uuid::new_v4().simple());
    let mut settings = store.settings();
    settings.database_url = format!("{}&application_name={application}", settings.database_url);
    settings.refresh_interval_ms = NO_POLLING_MS;
    let b = TestApp::spawn_with(settings).await;
    let listeners = format!(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE application_name = '{application}' AND query ILIKE 'LISTEN%'"
    );
    until("B holds a LISTEN connection", async || {
        store.scalar(&listeners).await >= 1
    })
    .await;
    assert_eq!(
        store.scalar(&listeners).await,
        1,
        "B listens on one connection"
    );
    let old_pid = store
        .scalar(&format!(
            "SELECT pid::bigint FROM pg_stat_activity \
             WHERE application_name = '{application}' AND query ILIKE 'LISTEN%'"
        ))
        .await;

    let path = "/v1/experiments/listened";
    a.put(path, experiment("listened", [1, 1]))
        .await
        .expect(201);
    until("B serves the created experiment", async || {
        b.get(path).await.status == 200
    })
    .await;

    let killed = store
        .scalar(&format!(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) AS gone FROM pg_stat_activity \
             WHERE application_name = '{application}' AND query ILIKE 'LISTEN%') k WHERE k.gone"
        ))
        .await;
    assert_eq!(killed, 1, "one LISTEN connection was terminated");
    let new = version(
        &a.put(path, experiment("listened", [1, 2]))
            .await
            .expect(200),
    );
    let caught_up = until(
        &format!("B serves version {new} after losing its listener"),
        async || version(&b.get(path).await) == new,
    )
    .await;

    let back = until("B's LISTEN connection comes back", async || {
        store
            .scalar(&format!("{listeners} AND pid <> {old_pid}"))
            .await
            >= 1
    })
    .await;
    // And it carries changes again.
    let newer = version(
        &a.put(path, experiment("listened", [1, 3]))
            .await
            .expect(200),
    );
    let pushed = until(&format!("B serves version {newer}"), async || {
        version(&b.get(path).await) == newer
    })
    .await;
    eprintln!(
        "listener killed: B caught up after {:.1} ms; a new listener within {:.1} ms of that; \
         the next change took {:.1} ms",
        ms(caught_up),
        ms(back),
        ms(pushed)
    );
}

// ---------------------------------------------------------------------------
// Authoritative writes: checked against the stored row, on any replica.
// ---------------------------------------------------------------------------

fn count_participants(key: &str, extra: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM participants p JOIN experiments e ON e.id = p.experiment_id \
         WHERE e.key = '{key}'{extra}"
    )
}

/// B knows the experiment (it just registered someone in it); A deletes it;
/// B at once refuses a new participant and routing an existing one, and the
/// store shows that nothing was written.
async fn a_deleted_experiment_accepts_no_participant_on_another_replica(backend: Backend) {
    let Some((store, a, b)) = replicas(backend).await else {
        return;
    };
    let path = "/v1/experiments/gone";
    a.put(path, experiment("gone", [1, 1])).await.expect(201);
    until("B serves the experiment", async || {
        b.get(path).await.status == 200
    })
    .await;
    b.put(
        &format!("{path}/participants/p-before"),
        json!({"attributes": {}}),
    )
    .await
    .expect(201);

    a.delete(path).await.expect(204);
    b.put(
        &format!("{path}/participants/p-after"),
        json!({"attributes": {}}),
    )
    .await
    .expect_error(404, "not_found");
    b.post(&format!("{path}/participants/p-before/route"), json!({}))
        .await
        .expect_error(404, "not_found");
    a.put(
        &format!("{path}/participants/p-after"),
        json!({"attributes": {}}),
    )
    .await
    .expect_error(404, "not_found");

    assert_eq!(
        store
            .scalar(&count_participants(
                "gone",
                " AND p.participant_id = 'p-after'"
            ))
            .await,
        0,
        "no participant row was written for the deleted experiment"
    );
    assert_eq!(
        store.scalar(&count_participants("gone", "")).await,
        1,
        "the participant from before the deletion is kept"
    );
    assert_eq!(
        store
            .scalar(&count_participants("gone", " AND p.status = 'new'"))
            .await,
        1,
        "and it was not routed"
    );
}

/// Deleted and created again on A: B registers a participant at once, in the
/// new experiment, and both replicas read it.
async fn a_recreated_experiment_takes_participants_through_another_replica(backend: Backend) {
    let Some((_store, a, b)) = replicas(backend).await else {
        return;
    };
    let path = "/v1/experiments/again";
    a.put(path, experiment("first life", [1, 1]))
        .await
        .expect(201);
    until("B serves the experiment", async || {
        b.get(path).await.status == 200
    })
    .await;
    b.put(
        &format!("{path}/participants/p-old"),
        json!({"attributes": {}}),
    )
    .await
    .expect(201);
    a.delete(path).await.expect(204);
    a.put(path, experiment("second life", [1, 3]))
        .await
        .expect(201);

    let registered = b
        .put(
            &format!("{path}/participants/p-new"),
            json!({"attributes": {}}),
        )
        .await
        .expect(201);
    assert_eq!(registered.body["status"], "new");
    a.get(&format!("{path}/participants/p-new"))
        .await
        .expect(200);
    b.get(&format!("{path}/participants/p-new"))
        .await
        .expect(200);
    until("B serves the second life", async || {
        b.get(path).await.body["description"] == "second life"
    })
    .await;
}

/// If-Match is checked against the stored version on whichever replica takes
/// the write: read on one, write on the other (accepted), then the first
/// writes with the same, now stale, tag (412, nothing changes); then the
/// other way round; then DELETE with a stale tag (412, still there). `docs`
/// are five different documents, told apart by their `description`, so that
/// a write that wrongly went through cannot pass for a no-op.
async fn if_match_holds_across_replicas(a: &TestApp, b: &TestApp, path: &str, docs: [Value; 5]) {
    let description = |i: usize| docs[i]["description"].clone();
    a.put(path, docs[0].clone()).await.expect(201);
    until(&format!("B serves {path}"), async || {
        b.get(path).await.status == 200
    })
    .await;

    // Read on A, write on B.
    let tag = etag(&a.get(path).await.expect(200));
    assert_eq!(tag, "\"1\"");
    let written = b.put_if(path, &tag, docs[1].clone()).await.expect(200);
    assert_eq!(version(&written), 2);
    a.put_if(path, &tag, docs[2].clone())
        .await
        .expect_error(412, "version_mismatch");
    let on_b = b.get(path).await.expect(200);
    assert_eq!(
        (version(&on_b), on_b.body["description"].clone()),
        (2, description(1))
    );
    until(&format!("A serves version 2 of {path}"), async || {
        version(&a.get(path).await) >= 2
    })
    .await;
    let on_a = a.get(path).await.expect(200);
    assert_eq!(
        (version(&on_a), on_a.body["description"].clone()),
        (2, description(1)),
        "the refused write changed nothing"
    );

    // Read on B, write on A.
    let tag = etag(&b.get(path).await.expect(200));
    assert_eq!(tag, "\"2\"");
    let written = a.put_if(path, &tag, docs[3].clone()).await.expect(200);
    assert_eq!(version(&written), 3);
    b.put_if(path, &tag, docs[4].clone())
        .await
        .expect_error(412, "version_mismatch");
    let on_a = a.get(path).await.expect(200);
    assert_eq!(
        (version(&on_a), on_a.body["description"].clone()),
        (3, description(3))
    );
    until(&format!("B serves version 3 of {path}"), async || {
        version(&b.get(path).await) >= 3
    })
    .await;
    let on_b = b.get(path).await.expect(200);
    assert_eq!(
        (version(&on_b), on_b.body["description"].clone()),
        (3, description(3)),
        "the refused write changed nothing"
    );

    // DELETE with a stale tag, on either replica, deletes nothing.
    b.delete_if(path, "\"2\"")
        .await
        .expect_error(412, "version_mismatch");
    a.delete_if(path, "\"2\"")
        .await
        .expect_error(412, "version_mismatch");
    assert_eq!(version(&a.get(path).await.expect(200)), 3);
    assert_eq!(version(&b.get(path).await.expect(200)), 3);
    // With the current one it does.
    b.delete_if(path, "\"3\"").await.expect(204);
    b.get(path).await.expect_error(404, "not_found");
    until(&format!("A stops serving {path}"), async || {
        a.get(path).await.status == 404
    })
    .await;
}

async fn if_match_is_checked_against_the_store_on_either_replica(backend: Backend) {
    let Some((_store, a, b)) = replicas(backend).await else {
        return;
    };
    let experiments = [1, 2, 3, 4, 5].map(|i| experiment(&format!("document {i}"), [1, i]));
    if_match_holds_across_replicas(&a, &b, "/v1/experiments/guarded", experiments).await;
    let flags = [1, 2, 3, 4, 5].map(|i| flag(&format!("document {i}"), i * 10));
    if_match_holds_across_replicas(&a, &b, "/v1/flags/guarded", flags).await;
}

// ---------------------------------------------------------------------------
// Versions never restart.
// ---------------------------------------------------------------------------

fn versions_of(history: &Value) -> Vec<i64> {
    history
        .as_array()
        .expect("a list of versions")
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect()
}

/// Create (1), update (2), DELETE (3, a version of its own, `deleted: true`),
/// create again (4): the history stays readable on both replicas all along,
/// newest first, and no old If-Match matches the new document.
async fn experiment_versions_continue_across_a_deletion(backend: Backend) {
    let Some((_store, a, b)) = replicas(backend).await else {
        return;
    };
    let path = "/v1/experiments/phoenix";
    let history = "/v1/experiments/phoenix/versions";
    assert_eq!(
        version(&a.put(path, experiment("one", [1, 1])).await.expect(201)),
        1
    );
    assert_eq!(
        version(&a.put(path, experiment("two", [1, 1])).await.expect(200)),
        2
    );
    a.delete(path).await.expect(204);
    a.get(path).await.expect_error(404, "not_found");

    for replica in [&a, &b] {
        let listed = replica.get(history).await.expect(200).body;
        assert_eq!(versions_of(&listed), vec![3, 2, 1], "{listed}");
        for entry in listed.as_array().unwrap() {
            assert!(entry["deleted"].is_boolean(), "{entry}");
        }
        let deletion = &listed[0];
        assert_eq!(deletion["deleted"], true, "{deletion}");
        assert_eq!(deletion["config"], json!(null), "{deletion}");
        assert_eq!(deletion["layout"], json!([]), "{deletion}");
        assert_eq!(
            (listed[1]["deleted"].clone(), listed[2]["deleted"].clone()),
            (json!(false), json!(false))
        );
        assert_eq!(listed[1]["config"]["description"], "two");
    }

    // "*" needs an experiment that exists; a deleted one does not.
    a.put_if(path, "*", experiment("star", [1, 1]))
        .await
        .expect_error(412, "version_mismatch");
    a.get(path).await.expect_error(404, "not_found");

    let recreated = a.put(path, experiment("three", [1, 3])).await.expect(201);
    assert_eq!(version(&recreated), 4, "{}", recreated.body);
    assert_eq!(etag(&recreated), "\"4\"");
    assert_eq!(
        recreated.body["layout"],
        json!([{"treatment": "control", "start": 0, "end": 2500}, {"treatment": "treated", "start": 2500, "end": 10000}]),
        "a new experiment's layout starts from empty"
    );
    let listed = b.get(history).await.expect(200).body;
    assert_eq!(versions_of(&listed), vec![4, 3, 2, 1], "{listed}");
    assert_eq!(listed[0]["deleted"], false);
    assert_eq!(listed[0]["config"]["description"], "three");
    assert_eq!(listed[1]["deleted"], true);

    for stale in ["\"1\"", "\"2\"", "\"3\""] {
        a.put_if(path, stale, experiment("stale", [1, 1]))
            .await
            .expect_error(412, "version_mismatch");
        b.put_if(path, stale, experiment("stale", [1, 1]))
            .await
            .expect_error(412, "version_mismatch");
        a.delete_if(path, stale)
            .await
            .expect_error(412, "version_mismatch");
    }
    let read = a.get(path).await.expect(200);
    assert_eq!(
        (version(&read), read.body["description"].clone()),
        (4, json!("three"))
    );
    let updated = a
        .put_if(path, "\"4\"", experiment("four", [1, 3]))
        .await
        .expect(200);
    assert_eq!(version(&updated), 5);
}

/// A flag: create (1), DELETE (2), create again (3); old If-Match refused.
async fn flag_versions_continue_across_a_deletion(backend: Backend) {
    let Some((_store, a, b)) = replicas(backend).await else {
        return;
    };
    let path = "/v1/flags/phoenix";
    assert_eq!(version(&a.put(path, flag("one", 10)).await.expect(201)), 1);
    a.delete(path).await.expect(204);
    a.get(path).await.expect_error(404, "not_found");
    a.put_if(path, "*", flag("star", 10))
        .await
        .expect_error(412, "version_mismatch");

    let recreated = a.put(path, flag("three", 30)).await.expect(201);
    assert_eq!(version(&recreated), 3, "{}", recreated.body);
    assert_eq!(etag(&recreated), "\"3\"");
    assert_eq!(
        etag(&a.get(path).await.expect(200)),
        "\"3\"",
        "the ETag of a read"
    );
    for stale in ["\"1\"", "\"2\""] {
        a.put_if(path, stale, flag("stale", 50))
            .await
            .expect_error(412, "version_mismatch");
        b.put_if(path, stale, flag("stale", 50))
            .await
            .expect_error(412, "version_mismatch");
        b.delete_if(path, stale)
            .await
            .expect_error(412, "version_mismatch");
    }
    let read = a.get(path).await.expect(200);
    assert_eq!(
        (version(&read), read.body["description"].clone()),
        (3, json!("three"))
    );
    let evaluated = b
        .post(&format!("{path}/evaluate"), json!({"org_id": 42}))
        .await
        .expect(200);
    assert_eq!(evaluated.body["version"], 3);
    assert_eq!(
        version(&a.put_if(path, "\"3\"", flag("four", 40)).await.expect(200)),
        4
    );
}

// ---------------------------------------------------------------------------
// Routing through two replicas right after the study is created.
// ---------------------------------------------------------------------------

const BURST: &str = "/v1/experiments/burst";

/// 400 participants, half through each replica, all set off the moment A has
/// created the study (B has never heard of it), each registering and then
/// routing. No 404, no 5xx, and the routing invariants hold.
async fn a_burst_through_two_replicas_right_after_creation(backend: Backend) {
    let Some((_store, a, b)) = replicas(backend).await else {
        return;
    };
    let (a, b) = (Arc::new(a), Arc::new(b));
    let total = 400usize;
    let study = json!({
        "cohorts": [{"alias": "arm-pro-ai", "name": "Pro-AI", "capacity": 7}],
        "routing": {"groups": [
            {"name": "High Scorers", "target_cohort": "arm-pro-ai",
             "composition": [{"id": "high", "condition": {"score": {"$gte": 9}}, "min_count": 1, "max_count": 3}]},
            {"name": "Mixed Group", "require_acceptance": true,
             "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 2, "max_count": 2},
                             {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}]}]}});
    let started = Instant::now();
    a.put(BURST, study).await.expect(201);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let id = format!("p{i:03}");
            let url = format!("{BURST}/participants/{id}");
            let registered = app
                .put(&url, json!({"attributes": {"score": score_of(&id)}}))
                .await;
            let routed = app.post(&format!("{url}/route"), json!({})).await;
            (id, registered, routed)
        });
    }
    let mut failures = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, registered, routed) = joined.expect("client task");
        for (call, answer, wanted) in [("register", &registered, 201), ("route", &routed, 200)] {
            *statuses.entry(answer.status.as_u16()).or_default() += 1;
            if answer.status.as_u16() != wanted {
                failures.push(format!("{id} {call}: {} {}", answer.status, answer.body));
            }
        }
    }
    let elapsed = started.elapsed();
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} calls failed (statuses {statuses:?}); first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(8)]
    );
    eprintln!(
        "{backend:?}: {total} participants registered and routed through two replicas in {:.0} ms",
        ms(elapsed)
    );

    // Read everyone back through the replica that did not register them.
    let mut participants = Vec::new();
    for i in 0..total {
        let reader = if i % 2 == 0 { &b } else { &a };
        let p = reader
            .get(&format!("{BURST}/participants/p{i:03}"))
            .await
            .expect(200)
            .body;
        participants.push(p);
    }
    // Both kinds of group formed, so the checks below are not vacuous.
    for status in ["assigned", "pending", "waiting"] {
        assert!(
            participants.iter().any(|p| p["status"] == status),
            "nobody is {status}"
        );
    }
    for app in [&a, &b] {
        let (cohorts, events) = invariants::observe(app, BURST).await;
        invariants::check_study(&cohorts, &events, &participants, false);
    }
}

// ---------------------------------------------------------------------------
// Operations.
// ---------------------------------------------------------------------------

/// `/readyz` reports the store and the configuration's age on every replica;
/// `/metrics` has the revision and age gauges.
async fn readiness_and_metrics_report_the_configuration(backend: Backend) {
    let Some((_store, a, b)) = replicas(backend).await else {
        return;
    };
    a.put("/v1/experiments/ready", experiment("ready", [1, 1]))
        .await
        .expect(201);
    for replica in [&a, &b] {
        let ready = replica.get("/readyz").await.expect(200).body;
        assert_eq!(ready["status"], "ready", "{ready}");
        assert_eq!(ready["store"], "ok", "{ready}");
        assert!(
            ready["config_age_ms"].is_u64(),
            "config_age_ms is a whole number of ms: {ready}"
        );
        let text = replica.get_text("/metrics").await;
        for gauge in ["allot_config_revision", "allot_config_age_seconds"] {
            let sample = text
                .lines()
                .find(|l| !l.starts_with('#') && l.split([' ', '{']).next() == Some(gauge));
            let value = sample
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok());
            assert!(
                value.is_some_and(|v| v >= 0.0),
                "{gauge}: {sample:?} in /metrics"
            );
        }
    }
}

on_both_stores!(
    what_one_replica_creates_the_other_serves_at_once,
    a_404_is_not_remembered_past_a_write,
    a_weight_change_on_one_replica_is_served_by_the_other,
    a_deleted_experiment_accepts_no_participant_on_another_replica,
    a_recreated_experiment_takes_participants_through_another_replica,
    if_match_is_checked_against_the_store_on_either_replica,
    experiment_versions_continue_across_a_deletion,
    flag_versions_continue_across_a_deletion,
    a_burst_through_two_replicas_right_after_creation,
    readiness_and_metrics_report_the_configuration,
);

on_postgres!(
    notifications_alone_carry_every_change,
    a_killed_listener_reconnects_and_catches_up,
);
