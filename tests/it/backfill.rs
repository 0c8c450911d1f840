//! Backfill over HTTP (§5): a seat freed in a cohort of a group with
//! `backfill_seconds` goes, within the window, to the oldest live waiting
//! participant of the seat's composition entry, in the transaction that
//! freed it (a decline, a drop, the sweeper's acceptance timeout) or in the
//! next matching pass, before new groups form.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::helpers::{self, Backend, TestApp, TestStore};
use crate::{on_both_stores, start};

const E: &str = "/v1/experiments/backfill";
const P: &str = "/v1/experiments/backfill/participants";

/// One group without a target: a high (score ≥ 7) and a low (score < 5);
/// `group` is merged into it.
fn study(group: Value) -> Value {
    let mut doc = json!({
        "routing": {"wait_timeout_seconds": 600, "groups": [
            {"name": "Mixed", "backfill_seconds": 600,
             "composition": [
                 {"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 1, "max_count": 1},
                 {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 1, "max_count": 1}]}]}});
    for (k, v) in group.as_object().cloned().unwrap_or_default() {
        doc["routing"]["groups"][0][k] = v;
    }
    doc
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

async fn call(app: &TestApp, id: &str, action: &str) -> Value {
    app.post(&format!("{P}/{id}/{action}"), json!({}))
        .await
        .expect(200)
        .body
}

/// Read as the experimenter does: no sign of life.
async fn state(app: &TestApp, id: &str) -> Value {
    let page = app.get(&format!("{P}?limit=1000")).await.expect(200).body;
    page["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["participant_id"] == id)
        .cloned()
        .unwrap()
}

/// The audit log, oldest first.
async fn events(app: &TestApp) -> Vec<Value> {
    let mut events = app
        .get(&format!("{E}/routing/events?limit=1000"))
        .await
        .expect(200)
        .body["events"]
        .as_array()
        .cloned()
        .unwrap();
    events.reverse();
    events
}

async fn cohort(app: &TestApp, id: &Value) -> Value {
    app.get(&format!("{E}/cohorts"))
        .await
        .expect(200)
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|c| &c["id"] == id)
        .cloned()
        .unwrap()
}

fn backfilled(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["reason"] == "backfilled")
        .map(|e| {
            (
                e["participant_id"].as_str().unwrap().to_owned(),
                e["entry"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn a_freed_seat_goes_to_the_oldest_waiting_participant_of_its_entry(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(E, study(json!({"require_acceptance": true})))
        .await
        .expect(201);
    arrive(&app, "h1", 8).await;
    let l1 = arrive(&app, "l1", 2).await;
    assert_eq!(l1["status"], "pending");
    let seat = l1["cohort"]["id"].clone();
    assert!(seat.is_string());
    // Two lows and one in no entry wait: no high to go with them.
    for (id, score) in [("l2", 1), ("l3", 3), ("mid", 6)] {
        assert_eq!(arrive(&app, id, score).await["status"], "waiting");
    }

    // A high seat frees: nobody waiting sits in that entry.
    assert_eq!(call(&app, "h1", "decline").await["status"], "declined");
    for id in ["l2", "l3", "mid"] {
        assert_eq!(state(&app, id).await["status"], "waiting", "{id}");
    }
    assert_eq!(backfilled(&events(&app).await), vec![]);

    // A high arrives: it takes the open seat (pending, as the group says)
    // instead of forming a new group with the waiting lows.
    let h2 = arrive(&app, "h2", 9).await;
    assert_eq!(
        (
            h2["status"].clone(),
            h2["cohort"]["id"].clone(),
            h2["group"].clone(),
            h2["entry"].clone()
        ),
        (
            json!("pending"),
            seat.clone(),
            json!("Mixed"),
            json!("high")
        )
    );
    assert_eq!(state(&app, "l2").await["status"], "waiting");

    // A low seat frees: the oldest waiting low takes it in the same call.
    assert_eq!(call(&app, "l1", "decline").await["status"], "declined");
    let l2 = state(&app, "l2").await;
    assert_eq!(
        (
            l2["status"].clone(),
            l2["cohort"]["id"].clone(),
            l2["entry"].clone()
        ),
        (json!("pending"), seat.clone(), json!("low"))
    );
    assert_eq!(state(&app, "l3").await["status"], "waiting");
    assert_eq!(state(&app, "mid").await["status"], "waiting");

    let log = events(&app).await;
    assert_eq!(
        backfilled(&log),
        vec![
            ("h2".into(), "high".into(), "pending".into()),
            ("l2".into(), "low".into(), "pending".into())
        ]
    );
    let event = log
        .iter()
        .find(|e| e["participant_id"] == "l2" && e["reason"] == "backfilled")
        .unwrap();
    assert_eq!(
        (
            event["previous"].clone(),
            event["group"].clone(),
            event["cohort_id"].clone()
        ),
        (json!("waiting"), json!("Mixed"), seat.clone())
    );
    assert_eq!(
        cohort(&app, &seat).await["members"],
        json!({"assigned": 0, "pending": 2, "completed": 0})
    );
    // The backfilled accept like the formed.
    assert_eq!(call(&app, "l2", "accept").await["status"], "assigned");
}

async fn without_acceptance_a_dropped_seat_is_refilled_as_assigned(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(E, study(json!({}))).await.expect(201);
    arrive(&app, "h1", 8).await;
    let l1 = arrive(&app, "l1", 2).await;
    assert_eq!(l1["status"], "assigned");
    let seat = l1["cohort"]["id"].clone();
    assert_eq!(arrive(&app, "l2", 4).await["status"], "waiting");
    app.post(&format!("{P}/l1/drop"), json!({"reason": "left"}))
        .await
        .expect(200);
    let l2 = state(&app, "l2").await;
    assert_eq!(
        (l2["status"].clone(), l2["cohort"]["id"].clone()),
        (json!("assigned"), seat.clone())
    );
    assert_eq!(
        backfilled(&events(&app).await),
        vec![("l2".into(), "low".into(), "assigned".into())]
    );
    assert_eq!(
        cohort(&app, &seat).await["members"],
        json!({"assigned": 2, "pending": 0, "completed": 0})
    );
    // A completed seat stays taken: nothing to refill.
    call(&app, "l2", "complete").await;
    assert_eq!(arrive(&app, "l3", 1).await["status"], "waiting");
}

async fn the_sweepers_acceptance_timeout_is_backfilled(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(
        E,
        study(json!({"require_acceptance": true, "accept_timeout_seconds": 1})),
    )
    .await
    .expect(201);
    arrive(&app, "h1", 8).await;
    let seat = arrive(&app, "l1", 2).await["cohort"]["id"].clone();
    call(&app, "h1", "accept").await;
    assert_eq!(arrive(&app, "l2", 1).await["status"], "waiting");
    // Nobody calls: the sweeper declines l1 and gives its seat to l2 (whose
    // own acceptance deadline then runs: read the log, not its state now).
    helpers::until("the waiting low takes the timed-out seat", async || {
        !backfilled(&events(&app).await).is_empty()
    })
    .await;
    let log = events(&app).await;
    let timed_out = log
        .iter()
        .position(|e| e["participant_id"] == "l1" && e["reason"] == "accept_timeout")
        .unwrap();
    let next = &log[timed_out + 1];
    assert_eq!(
        (
            next["participant_id"].clone(),
            next["reason"].clone(),
            next["status"].clone(),
            next["cohort_id"].clone(),
            next["entry"].clone()
        ),
        (
            json!("l2"),
            json!("backfilled"),
            json!("pending"),
            seat,
            json!("low")
        )
    );
}

async fn a_seat_freed_after_the_window_is_not_refilled(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(E, study(json!({"backfill_seconds": 5})))
        .await
        .expect(201);
    arrive(&app, "h1", 8).await;
    let seat = arrive(&app, "l1", 2).await["cohort"]["id"].clone();
    let formed_at = events(&app)
        .await
        .iter()
        .find(|e| e["reason"] == "formed")
        .and_then(|e| e["at"].as_str())
        .map(|at| OffsetDateTime::parse(at, &Rfc3339).unwrap())
        .unwrap();
    // Within the window: refilled.
    arrive(&app, "l2", 1).await;
    arrive(&app, "l3", 3).await;
    call(&app, "l1", "drop").await;
    assert_eq!(state(&app, "l2").await["cohort"]["id"], seat);
    // Past it (the server's clock is this one): a seat freed stays empty.
    helpers::until("the backfill window has ended", async || {
        OffsetDateTime::now_utc() > formed_at + time::Duration::milliseconds(5_100)
    })
    .await;
    call(&app, "l2", "drop").await;
    assert_eq!(state(&app, "l3").await["status"], "waiting");
    assert_eq!(
        backfilled(&events(&app).await),
        vec![("l2".into(), "low".into(), "assigned".into())]
    );
    assert_eq!(
        cohort(&app, &seat).await["members"],
        json!({"assigned": 1, "pending": 0, "completed": 0})
    );
}

async fn backfill_is_refused_on_a_group_with_a_target(backend: Backend) {
    let (_store, app) = start!(backend);
    let mut doc = study(json!({"target_cohort": "room"}));
    doc["cohorts"] = json!([{"alias": "room"}]);
    let refused = app.put(E, doc).await.expect_error(422, "validation_failed");
    assert_eq!(
        refused.detail_paths(),
        vec!["/routing/groups/0/backfill_seconds"]
    );
    let mut doc = study(json!({"backfill_seconds": 0}));
    doc["cohorts"] = json!([{"alias": "room"}]);
    let refused = app.put(E, doc).await.expect_error(422, "validation_failed");
    assert_eq!(
        refused.detail_paths(),
        vec!["/routing/groups/0/backfill_seconds"]
    );
    // Without the target it is stored, and read back as given.
    let stored = app.put(E, study(json!({}))).await.expect(201).body;
    assert_eq!(stored["routing"]["groups"][0]["backfill_seconds"], 600);
}

/// Seats freed and arrivals at once through two replicas: no entry of a
/// cohort ever holds more than it formed with, nobody is in two cohorts, the
/// member counts agree with the members, and afterwards no waiting
/// participant fits an open seat or a ready group.
async fn declines_and_arrivals_racing_through_two_replicas_never_overfill_a_seat(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = Arc::new(TestApp::spawn(&store).await);
    let b = Arc::new(TestApp::spawn(&store).await);
    let mut doc = study(json!({"require_acceptance": true}));
    for entry in 0..2 {
        doc["routing"]["groups"][0]["composition"][entry]["min_count"] = json!(2);
        doc["routing"]["groups"][0]["composition"][entry]["max_count"] = json!(2);
    }
    a.put(E, doc).await.expect(201);
    b.get(E).await.expect(200);
    let score = |id: &str| if id.starts_with('h') { 8 } else { 2 };
    // Two groups formed through A.
    for id in ["h0", "l0", "h1", "l1", "h2", "l2", "h3", "l3"] {
        arrive(&a, id, score(id)).await;
    }
    // Highs wait (no lows to go with them).
    for id in ["h7", "h8", "h9"] {
        assert_eq!(arrive(&b, id, 8).await["status"], "waiting");
    }
    // Then at once: four leave (declines and drops), twelve arrive.
    let mut tasks = Vec::new();
    for (n, id) in ["h0", "l1", "h2", "l3"].into_iter().enumerate() {
        let app = Arc::clone(if n % 2 == 0 { &a } else { &b });
        let action = if n < 2 { "decline" } else { "drop" };
        tasks.push(tokio::spawn(async move {
            app.post(&format!("{P}/{id}/{action}"), json!({}))
                .await
                .expect(200);
        }));
    }
    for n in 0..12 {
        let app = Arc::clone(if n % 2 == 0 { &b } else { &a });
        let id = format!("{}{}", if n % 3 == 0 { 'l' } else { 'h' }, n + 10);
        tasks.push(tokio::spawn(async move {
            let s = if id.starts_with('h') { 8 } else { 2 };
            arrive(&app, &id, s).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let people: Vec<Value> = a.get(&format!("{P}?limit=1000")).await.expect(200).body
        ["participants"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(people.len(), 23);
    let seated =
        |p: &&Value| ["pending", "assigned", "completed"].contains(&p["status"].as_str().unwrap());
    let cohorts = a.get(&format!("{E}/cohorts")).await.expect(200).body;
    let cohorts = cohorts.as_array().unwrap();
    // (A third group may form from arrivals that came before the seats freed.)
    assert!(cohorts.len() >= 2);
    let waiting = |kind: char| {
        people
            .iter()
            .filter(|p| p["status"] == "waiting")
            .filter(|p| p["participant_id"].as_str().unwrap().starts_with(kind))
            .count()
    };
    for c in cohorts {
        let members: Vec<&Value> = people
            .iter()
            .filter(seated)
            .filter(|p| p["cohort"]["id"] == c["id"])
            .collect();
        let mut by_status: HashMap<&str, i64> = HashMap::new();
        let mut by_entry: HashMap<&str, usize> = HashMap::new();
        for m in &members {
            *by_status.entry(m["status"].as_str().unwrap()).or_default() += 1;
            *by_entry.entry(m["entry"].as_str().unwrap()).or_default() += 1;
        }
        for status in ["assigned", "pending", "completed"] {
            assert_eq!(
                c["members"][status].as_i64().unwrap(),
                by_status.get(status).copied().unwrap_or(0),
                "{c}"
            );
        }
        for (entry, kind) in [("high", 'h'), ("low", 'l')] {
            let held = by_entry.get(entry).copied().unwrap_or(0);
            assert!(held <= 2, "{entry} overfilled in {c}");
            assert!(
                held == 2 || waiting(kind) == 0,
                "an open {entry} seat in {c} while one waits"
            );
        }
    }
    assert!(
        waiting('h') < 2 || waiting('l') < 2,
        "a ready group was left waiting"
    );
    // Nobody in a cohort without holding a seat, nobody seated without one.
    for p in &people {
        assert_eq!(seated(&p), p["cohort"].is_object(), "{p}");
    }
}

on_both_stores!(
    declines_and_arrivals_racing_through_two_replicas_never_overfill_a_seat,
    a_freed_seat_goes_to_the_oldest_waiting_participant_of_its_entry,
    without_acceptance_a_dropped_seat_is_refilled_as_assigned,
    the_sweepers_acceptance_timeout_is_backfilled,
    a_seat_freed_after_the_window_is_not_refilled,
    backfill_is_refused_on_a_group_with_a_target,
);
