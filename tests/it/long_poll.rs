//! Waiting for a change (§5): `GET …/participants/{id}?wait_seconds=N&
//! status=S` answers as soon as the status is no longer `S`, whichever
//! replica changed it, or after N seconds with the state then.
//!
//! No test sleeps to synchronise: a poll is known to be held when the
//! replica counts it among its waiting requests.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{until, Backend, TestApp, TestStore};
use crate::{on_both_stores, start};

const P: &str = "/v1/experiments/pairs/participants";

/// Two participants form a group; one alone waits.
fn pairs() -> Value {
    json!({"routing": {"groups": [{"name": "Pair",
        "composition": [{"id": "any", "min_count": 2, "max_count": 2}]}]}})
}

async fn waiting(app: &TestApp, id: &str) {
    app.put(&format!("{P}/{id}"), json!({"attributes": {}}))
        .await
        .expect(201);
    let routed = app
        .post(&format!("{P}/{id}/route"), json!({}))
        .await
        .expect(200);
    assert_eq!(routed.body["status"], "waiting");
}

/// Starts a long-poll of `id` on `app` and waits until `app` holds it.
async fn hold(
    app: &TestApp,
    id: &str,
    query: &str,
) -> tokio::task::JoinHandle<(u16, Value, Duration)> {
    let before = app.engine.waiting_requests();
    let request = app.client.get(app.url(&format!("{P}/{id}?{query}")));
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let answer = request.send().await.expect("the poll is answered");
        let status = answer.status().as_u16();
        let body = answer.json().await.expect("a JSON answer");
        (status, body, started.elapsed())
    });
    until("the replica holds the poll", async || {
        app.engine.waiting_requests() > before
    })
    .await;
    poll
}

/// A poll on a waiting participant answers when the group forms, long
/// before its wait runs out.
async fn a_poll_answers_when_the_group_forms(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/pairs", pairs()).await.expect(201);
    waiting(&app, "p-1").await;
    let poll = hold(&app, "p-1", "wait_seconds=30&status=waiting").await;
    app.put(&format!("{P}/p-2"), json!({"attributes": {}}))
        .await
        .expect(201);
    app.post(&format!("{P}/p-2/route"), json!({}))
        .await
        .expect(200);
    let (status, body, took) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "assigned", "{body}");
    assert!(body["cohort"]["id"].is_string(), "{body}");
    assert!(
        took < Duration::from_secs(30),
        "woken, not timed out: {took:?}"
    );
    assert_eq!(app.engine.waiting_requests(), 0, "the poll is forgotten");
}

/// The same poll twice at once (two tabs of one participant), one naming
/// the status and one not: both are held, both answer the formation, and
/// neither stays registered.
async fn two_polls_of_one_participant_both_answer(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/pairs", pairs()).await.expect(201);
    waiting(&app, "p-1").await;
    let first = hold(&app, "p-1", "wait_seconds=30&status=waiting").await;
    let second = hold(&app, "p-1", "wait_seconds=30").await;
    assert_eq!(app.engine.waiting_requests(), 2);
    waiting_or_formed(&app, "p-2").await;
    for poll in [first, second] {
        let (status, body, took) = poll.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["status"], "assigned", "{body}");
        assert!(
            took < Duration::from_secs(30),
            "woken, not timed out: {took:?}"
        );
    }
    assert_eq!(app.engine.waiting_requests(), 0);
}

/// Registers and routes `id`, whatever it becomes.
async fn waiting_or_formed(app: &TestApp, id: &str) {
    app.put(&format!("{P}/{id}"), json!({"attributes": {}}))
        .await
        .expect(201);
    app.post(&format!("{P}/{id}/route"), json!({}))
        .await
        .expect(200);
}

/// Nothing happens: the poll answers after `wait_seconds` with the state
/// as it is (without `status`, it waits on the status the participant has
/// now). A participant whose status is not the one named answers at once.
async fn an_idle_poll_answers_after_its_wait(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/pairs", pairs()).await.expect(201);
    waiting(&app, "p-1").await;
    let started = Instant::now();
    let idle = app
        .get(&format!("{P}/p-1?wait_seconds=1&status=waiting"))
        .await
        .expect(200);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(idle.body["status"], "waiting");
    let started = Instant::now();
    let idle = app
        .get(&format!("{P}/p-1?wait_seconds=1"))
        .await
        .expect(200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "default: the status now"
    );
    assert_eq!(idle.body["status"], "waiting");
    // Not `new` any more: at once (the wait of 60 s would fail the test's
    // request timeout long before).
    let at_once = app
        .get(&format!("{P}/p-1?wait_seconds=60&status=new"))
        .await
        .expect(200);
    assert_eq!(at_once.body["status"], "waiting");
    assert_eq!(app.engine.waiting_requests(), 0);
}

/// Bad waits are 400s with the error shape, an unknown participant a 404,
/// and none of them is held.
async fn bad_waits_are_refused(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/pairs", pairs()).await.expect(201);
    waiting(&app, "p-1").await;
    for query in [
        "wait_seconds=0",
        "wait_seconds=61",
        "wait_seconds=-1",
        "wait_seconds=9223372036854775808",
        "wait_seconds=soon",
        "wait_seconds=5&status=gone",
    ] {
        app.get(&format!("{P}/p-1?{query}"))
            .await
            .expect_error(400, "bad_request");
    }
    // U+0000 anywhere in a request is refused as in every other query (§1).
    app.get(&format!("{P}/p-1?wait_seconds=5&status=%00"))
        .await
        .expect_error(422, "validation_failed");
    app.get(&format!("{P}/nobody?wait_seconds=5"))
        .await
        .expect_error(404, "not_found");
    app.get("/v1/experiments/nothing/participants/p-1?wait_seconds=5")
        .await
        .expect_error(404, "not_found");
    assert_eq!(app.engine.waiting_requests(), 0);
}

/// A poll held by replica A answers when replica B forms the group (B's
/// change reaches A by notification on PostgreSQL, by A reading the
/// events on SQLite).
async fn a_poll_on_one_replica_answers_a_change_on_another(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = TestApp::spawn(&store).await;
    let b = TestApp::spawn(&store).await;
    a.put("/v1/experiments/pairs", pairs()).await.expect(201);
    waiting(&a, "p-1").await;
    let poll = hold(&a, "p-1", "wait_seconds=30&status=waiting").await;
    b.put(&format!("{P}/p-2"), json!({"attributes": {}}))
        .await
        .expect(201);
    let formed = b
        .post(&format!("{P}/p-2/route"), json!({}))
        .await
        .expect(200);
    assert_eq!(formed.body["status"], "assigned");
    let (status, body, took) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "assigned", "{body}");
    assert_eq!(body["cohort"], formed.body["cohort"]);
    assert!(
        took < Duration::from_secs(30),
        "woken, not timed out: {took:?}"
    );
    eprintln!("replica A answered its poll {took:?} after it began");
    a.stop().await;
    b.stop().await;
}

/// Shutdown does not wait for held polls: they answer at once, with the
/// state as it is.
async fn shutdown_answers_held_polls(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/pairs", pairs()).await.expect(201);
    waiting(&app, "p-1").await;
    let poll = hold(&app, "p-1", "wait_seconds=60&status=waiting").await;
    let started = Instant::now();
    app.stop().await;
    let (status, body, _) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "waiting");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the server stopped without waiting out the poll"
    );
}

/// A held poll is a sign of life: with a liveness timeout of one second, a
/// participant whose front end holds a five-second poll stays live (its
/// `last_seen` moves on while the poll is held) and is grouped by the next
/// arrival, which answers the poll.
async fn a_held_poll_keeps_its_participant_live(backend: Backend) {
    let (_store, app) = start!(backend);
    let mut doc = pairs();
    doc["routing"]["liveness_timeout_seconds"] = json!(1);
    app.put("/v1/experiments/pairs", doc).await.expect(201);
    waiting(&app, "p-1").await;
    let listed = async || {
        app.get(&format!("{P}?status=waiting"))
            .await
            .expect(200)
            .body["participants"][0]
            .clone()
    };
    let first_seen = listed().await["last_seen"].clone();
    let poll = hold(&app, "p-1", "wait_seconds=5&status=waiting").await;
    let started = Instant::now();
    // Read through the experimenter's listing, which is no sign of life.
    until(
        "the held poll marks its participant heard from again",
        async || {
            let p = listed().await;
            p["last_seen"] != first_seen
                && p["live"] == true
                && started.elapsed() > Duration::from_millis(1500)
        },
    )
    .await;
    assert_eq!(listed().await["live"], true, "still live after the timeout");
    app.put(&format!("{P}/p-2"), json!({"attributes": {}}))
        .await
        .expect(201);
    let partner = app
        .post(&format!("{P}/p-2/route"), json!({}))
        .await
        .expect(200);
    assert_eq!(partner.body["status"], "assigned", "{}", partner.body);
    let (status, body, _) = poll.await.unwrap();
    assert_eq!((status, body["status"].clone()), (200, json!("assigned")));
}

on_both_stores!(
    a_held_poll_keeps_its_participant_live,
    a_poll_answers_when_the_group_forms,
    two_polls_of_one_participant_both_answer,
    an_idle_poll_answers_after_its_wait,
    bad_waits_are_refused,
    a_poll_on_one_replica_answers_a_change_on_another,
    shutdown_answers_held_polls,
);
