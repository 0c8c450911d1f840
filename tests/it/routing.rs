//! Participant routing over HTTP (§5): the two examples of §5,
//! overflow, waiting, server-side timeouts, validation, idempotence, cohort
//! views, the audit log, and a burst through two replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{self, Backend, TestApp, TestStore};
use crate::invariants;
use crate::{on_both_stores, start};

fn study() -> Value {
    json!({
        "description": "AI attitudes study",
        "cohorts": [{"alias": "arm-pro-ai", "name": "Pro-AI Study Arm", "description": "...", "capacity": 50},
                    {"alias": "arm-skeptic", "name": "AI-Skeptic Arm"}],
        "variables": [{"name": "persona", "default": "control", "cohort_values": {"arm-pro-ai": "pro_ai", "arm-skeptic": "skeptic"}}],
        "routing": {
            "groups": [
                {"name": "High Scorers", "target_cohort": "arm-pro-ai",
                 "composition": [{"id": "high", "condition": {"score": {"$gte": 9}}, "min_count": 1, "max_count": 5}]},
                {"name": "Mixed Group", "require_acceptance": true,
                 "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 2, "max_count": 2},
                                 {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}]}],
            "balance": false,
            "wait_timeout_seconds": 600,
            "fallback_cohort": null}})
}

const P: &str = "/v1/experiments/study/participants";

async fn arrive(app: &TestApp, id: &str, score: i64) -> Value {
    app.put(
        &format!("{P}/{id}"),
        json!({"attributes": {"score": score, "survey": {"q1": "yes"}}}),
    )
    .await
    .expect(201);
    app.post(&format!("{P}/{id}/route"), json!({}))
        .await
        .expect(200)
        .body
}

/// A participant answer without `last_seen`, which every call moves.
fn but_last_seen(mut answer: Value) -> Value {
    if let Some(map) = answer.as_object_mut() {
        map.remove("last_seen");
    }
    answer
}

async fn cohorts(app: &TestApp) -> Vec<Value> {
    app.get("/v1/experiments/study/cohorts")
        .await
        .expect(200)
        .body
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn direct_routing_with_variables(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/study", study()).await.expect(201);
    let listed = cohorts(&app).await;
    assert_eq!(listed.len(), 2, "cohorts are created with the experiment");
    let arm = listed[0].clone();
    assert_eq!(arm["alias"], "arm-pro-ai");
    assert_eq!(
        arm["members"],
        json!({"assigned": 0, "pending": 0, "completed": 0})
    );

    let registered = app
        .put(&format!("{P}/p-17"), json!({"attributes": {"score": 9}}))
        .await
        .expect(201);
    assert_eq!(registered.body["status"], "new");
    assert_eq!(registered.body["variables"], json!({"persona": "control"}));
    let routed = app
        .post(&format!("{P}/p-17/route"), json!({}))
        .await
        .expect(200)
        .body;
    assert_eq!(routed["participant_id"], "p-17");
    assert_eq!(routed["status"], "assigned");
    assert_eq!(
        routed["cohort"],
        json!({"id": arm["id"], "alias": "arm-pro-ai", "name": "Pro-AI Study Arm"})
    );
    assert_eq!(
        (routed["group"].clone(), routed["entry"].clone()),
        (json!("High Scorers"), json!("high"))
    );
    assert_eq!(routed["variables"], json!({"persona": "pro_ai"}));
    assert_eq!(routed["waiting_since"], json!(null));
    // Every call is a sign of life: only `last_seen` moves.
    assert_eq!(
        but_last_seen(app.get(&format!("{P}/p-17")).await.expect(200).body),
        but_last_seen(routed.clone())
    );

    // Routing again changes nothing.
    assert_eq!(
        but_last_seen(
            app.post(&format!("{P}/p-17/route"), json!({}))
                .await
                .expect(200)
                .body
        ),
        but_last_seen(routed)
    );
    let events = app
        .get("/v1/experiments/study/routing/events")
        .await
        .expect(200)
        .body;
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, vec!["formed", "routed"]);
    assert_eq!(events["events"][0]["previous"], "waiting");
    assert_eq!(events["events"][0]["cohort_id"], arm["id"]);
    assert_eq!(
        cohorts(&app).await[0]["members"],
        json!({"assigned": 1, "pending": 0, "completed": 0})
    );
    let members = app
        .get(&format!(
            "/v1/experiments/study/cohorts/{}/participants",
            arm["id"].as_str().unwrap()
        ))
        .await
        .expect(200)
        .body;
    assert_eq!(members.as_array().map(Vec::len), Some(1));
    assert_eq!(members[0]["participant_id"], "p-17");
}

async fn mixed_group_forms_pending_then_accept_and_decline(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/study", study()).await.expect(201);
    assert_eq!(arrive(&app, "h1", 8).await["status"], "waiting");
    assert_eq!(arrive(&app, "l1", 2).await["status"], "waiting");
    let middle = arrive(&app, "m1", 6).await;
    assert_eq!(middle["status"], "waiting");
    assert!(middle["waiting_since"].is_string());
    assert_eq!(arrive(&app, "h2", 7).await["status"], "waiting");
    let last = arrive(&app, "l2", 4).await;
    assert_eq!(last["status"], "pending");
    assert_eq!(last["group"], "Mixed Group");
    assert_eq!(last["cohort"]["alias"], json!(null));
    assert_eq!(last["cohort"]["name"], "Mixed Group #1");
    assert_eq!(last["variables"], json!({"persona": "control"}));
    let group_cohort = last["cohort"]["id"].as_str().unwrap().to_owned();
    for id in ["h1", "l1", "h2"] {
        let p = app.get(&format!("{P}/{id}")).await.expect(200).body;
        assert_eq!(
            (p["status"].clone(), p["cohort"]["id"].clone()),
            (json!("pending"), json!(group_cohort))
        );
    }
    assert_eq!(app.get(&format!("{P}/m1")).await.body["status"], "waiting");

    assert_eq!(
        app.post(&format!("{P}/h1/accept"), json!({}))
            .await
            .expect(200)
            .body["status"],
        "assigned"
    );
    assert_eq!(
        app.post(&format!("{P}/h1/accept"), json!({}))
            .await
            .expect(200)
            .body["status"],
        "assigned"
    );
    app.post(&format!("{P}/h1/decline"), json!({}))
        .await
        .expect_error(409, "conflict");
    let declined = app
        .post(&format!("{P}/l1/decline"), json!({}))
        .await
        .expect(200)
        .body;
    assert_eq!(
        (declined["status"].clone(), declined["cohort"].clone()),
        (json!("declined"), json!(null))
    );
    assert_eq!(
        app.post(&format!("{P}/l1/decline"), json!({}))
            .await
            .expect(200)
            .body["status"],
        "declined"
    );
    app.post(&format!("{P}/l1/accept"), json!({}))
        .await
        .expect_error(409, "conflict");
    app.post(&format!("{P}/m1/accept"), json!({}))
        .await
        .expect_error(409, "conflict");
    app.post(&format!("{P}/nobody/accept"), json!({}))
        .await
        .expect_error(404, "not_found");

    let group = cohorts(&app)
        .await
        .into_iter()
        .find(|c| c["id"] == group_cohort.as_str())
        .unwrap();
    assert_eq!(
        group["members"],
        json!({"assigned": 1, "pending": 2, "completed": 0}),
        "the declined seat is freed"
    );
    let events = app
        .get("/v1/experiments/study/routing/events?limit=3")
        .await
        .expect(200)
        .body;
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, vec!["declined", "accepted", "formed"]);
    assert_eq!(events["events"][0]["cohort_id"], group_cohort.as_str());
    let older = app
        .get(&format!(
            "/v1/experiments/study/routing/events?limit=100&before={}",
            events["next_before"]
        ))
        .await
        .expect(200)
        .body;
    assert_eq!(
        older["events"].as_array().map(Vec::len),
        Some(5 + 3),
        "5 routed and 3 more formed"
    );
    assert_eq!(older["next_before"], json!(null));
}

async fn a_full_target_overflows_into_a_new_cohort(backend: Backend) {
    let (_store, app) = start!(backend);
    let mut doc = study();
    doc["cohorts"][0]["capacity"] = json!(2);
    app.put("/v1/experiments/study", doc).await.expect(201);
    let mut seen = Vec::new();
    for id in ["a", "b", "c", "d", "e"] {
        seen.push(arrive(&app, id, 10).await["cohort"].clone());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[2], seen[3]);
    assert_ne!(seen[1], seen[2]);
    let listed = cohorts(&app).await;
    let arm = &listed[0];
    let overflows: Vec<&Value> = listed
        .iter()
        .filter(|c| c["overflow_of"] == arm["id"])
        .collect();
    assert_eq!(overflows.len(), 2);
    assert_eq!(overflows[0]["name"], "Pro-AI Study Arm (overflow 1)");
    assert_eq!(
        (
            overflows[0]["alias"].clone(),
            overflows[0]["capacity"].clone()
        ),
        (json!("arm-pro-ai"), json!(2))
    );
    assert_eq!(
        overflows[1]["members"],
        json!({"assigned": 1, "pending": 0, "completed": 0})
    );
    // Overflows inherit the variables.
    let e = app.get(&format!("{P}/e")).await.body;
    assert_eq!(e["variables"], json!({"persona": "pro_ai"}));
    for c in &listed {
        assert!(c["members"]["assigned"].as_u64().unwrap() <= 2);
    }
}

async fn attribute_updates_match_a_waiting_participant_from_then_on(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/study", study()).await.expect(201);
    assert_eq!(arrive(&app, "p", 6).await["status"], "waiting");
    let updated = app
        .put(&format!("{P}/p"), json!({"attributes": {"score": 9}}))
        .await
        .expect(200);
    assert_eq!(
        (
            updated.body["status"].clone(),
            updated.body["group"].clone()
        ),
        (json!("assigned"), json!("High Scorers"))
    );
    // A new participant's attribute update does not route it.
    app.put(&format!("{P}/q"), json!({"attributes": {"score": 1}}))
        .await
        .expect(201);
    assert_eq!(
        app.put(&format!("{P}/q"), json!({"attributes": {"score": 10}}))
            .await
            .expect(200)
            .body["status"],
        "new"
    );
}

async fn waiting_participants_time_out_on_the_server(backend: Backend) {
    let (_store, app) = start!(backend);
    let mut doc = study();
    doc["routing"]["wait_timeout_seconds"] = json!(1);
    app.put("/v1/experiments/study", doc.clone())
        .await
        .expect(201);
    let mut fallback = doc;
    fallback["routing"]["fallback_cohort"] = json!("arm-skeptic");
    app.put("/v1/experiments/study-fb", fallback)
        .await
        .expect(201);
    let started = Instant::now();
    assert_eq!(arrive(&app, "alone", 6).await["status"], "waiting");
    app.put(
        "/v1/experiments/study-fb/participants/alone",
        json!({"attributes": {"score": 6}}),
    )
    .await
    .expect(201);
    app.post(
        "/v1/experiments/study-fb/participants/alone/route",
        json!({}),
    )
    .await
    .expect(200);

    // No client call moves them: the sweeper does, within about a second of the deadline.
    let timed_out = wait_for_status(&app, &format!("{P}/alone"), "timed_out").await;
    let moved = wait_for_status(
        &app,
        "/v1/experiments/study-fb/participants/alone",
        "assigned",
    )
    .await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "took {waited:?}");
    assert_eq!(timed_out["cohort"], json!(null));
    assert_eq!(moved["cohort"]["alias"], "arm-skeptic");
    assert_eq!(moved["variables"], json!({"persona": "skeptic"}));
    let events = app
        .get("/v1/experiments/study-fb/routing/events")
        .await
        .body;
    assert_eq!(events["events"][0]["reason"], "fallback");
    let events = app.get("/v1/experiments/study/routing/events").await.body;
    assert_eq!(
        (
            events["events"][0]["reason"].clone(),
            events["events"][0]["previous"].clone()
        ),
        (json!("timeout"), json!("waiting"))
    );
}

/// Polls a participant until it reaches `status` (a deadline, not a sleep:
/// the server moves it on its own clock).
async fn wait_for_status(app: &TestApp, path: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = app.get(path).await.expect(200).body;
        if p["status"] == status || Instant::now() > deadline {
            assert_eq!(p["status"], status, "{path} never became {status}");
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_invalid_routing_document_is_refused(backend: Backend) {
    let (_store, app) = start!(backend);
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"cohorts": [{"alias": "a"}, {"alias": "a"}]}),
            vec!["/cohorts/1/alias"],
        ),
        (
            json!({"cohorts": [{"alias": "a", "capacity": 0}]}),
            vec!["/cohorts/0/capacity"],
        ),
        (
            json!({"cohorts": [{"alias": "bad alias"}]}),
            vec!["/cohorts/0/alias"],
        ),
        (
            json!({"cohorts": [{"name": "no alias"}]}),
            vec!["/cohorts/0/alias"],
        ),
        (
            json!({"variables": [{"name": "v", "cohort_values": {"ghost": 1}}]}),
            vec!["/variables/0/cohort_values/ghost"],
        ),
        (
            json!({"routing": {"fallback_cohort": "ghost", "groups": []}}),
            vec!["/routing/fallback_cohort"],
        ),
        (
            json!({"routing": {"groups": [{"name": "g", "target_cohort": "ghost", "composition": [{"id": "x", "min_count": 1, "max_count": 1}]}]}}),
            vec!["/routing/groups/0/target_cohort"],
        ),
        (
            json!({"routing": {"groups": [{"name": "g", "composition": [{"id": "x", "min_count": 2, "max_count": 1}]}]}}),
            vec!["/routing/groups/0/composition/0/max_count"],
        ),
        (
            json!({"routing": {"groups": [{"name": "g", "composition": [{"id": "x", "min_count": 0, "max_count": 1}]}]}}),
            vec!["/routing/groups/0/composition/0/min_count"],
        ),
        (
            json!({"routing": {"groups": [{"name": "g", "composition": [{"id": "x", "min_count": 1, "max_count": 1}, {"id": "x", "min_count": 1, "max_count": 1}]}]}}),
            vec!["/routing/groups/0/composition/1/id"],
        ),
        (
            json!({"routing": {"groups": [{"name": "g", "composition": []}]}}),
            vec!["/routing/groups/0/composition"],
        ),
        (
            json!({"routing": {"groups": [{"name": "g", "composition": [{"id": "x", "condition": {"s": {"$nope": 1}}, "min_count": 1, "max_count": 1}]}]}}),
            vec!["/routing/groups/0/composition/0/condition/s/$nope"],
        ),
        (
            json!({"cohorts": [{"alias": "small", "capacity": 3}], "routing": {"groups": [{"name": "g", "target_cohort": "small", "composition": [{"id": "x", "min_count": 2, "max_count": 2}, {"id": "y", "min_count": 2, "max_count": 2}]}]}}),
            vec!["/routing/groups/0/composition"],
        ),
        (
            json!({"routing": {"wait_timeout_seconds": 0, "groups": []}}),
            vec!["/routing/wait_timeout_seconds"],
        ),
        (
            json!({"routing": {"groups": [{"composition": [{"id": "x", "min_count": 1, "max_count": 1}]}]}}),
            vec!["/routing/groups/0/name"],
        ),
    ];
    for (doc, paths) in cases {
        let answer = app
            .put("/v1/experiments/study", doc.clone())
            .await
            .expect_error(422, "validation_failed");
        assert_eq!(answer.detail_paths(), paths, "document {doc}");
    }
    app.get("/v1/experiments/study")
        .await
        .expect_error(404, "not_found");
    app.put("/v1/experiments/study", study()).await.expect(201);
    app.put(&format!("{P}/x"), json!({"attributes": [1]}))
        .await
        .expect_error(422, "validation_failed");
    app.put(&format!("{P}/x"), json!({"attrs": {}}))
        .await
        .expect_error(422, "validation_failed");
    app.post(&format!("{P}/never-registered/route"), json!({}))
        .await
        .expect_error(404, "not_found");
    app.get(&format!("{P}/never-registered"))
        .await
        .expect_error(404, "not_found");
    app.get("/v1/experiments/study/cohorts/not-a-cohort/participants")
        .await
        .expect_error(404, "not_found");
    app.get("/v1/experiments/study/routing/events?limit=x")
        .await
        .expect_error(400, "bad_request");
    app.post("/v1/experiments/missing/participants/p/route", json!({}))
        .await
        .expect_error(404, "not_found");
}

async fn cohort_changes_that_would_strand_members_are_refused(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/study", study()).await.expect(201);
    let ids: Vec<Value> = cohorts(&app)
        .await
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    for id in ["a", "b", "c"] {
        arrive(&app, id, 10).await;
    }
    let mut smaller = study();
    smaller["cohorts"][0]["capacity"] = json!(2);
    smaller["routing"]["groups"][0]["composition"][0]["max_count"] = json!(1);
    app.put("/v1/experiments/study", smaller)
        .await
        .expect_error(409, "conflict");
    let mut without = study();
    without["cohorts"] = json!([{"alias": "arm-skeptic", "name": "AI-Skeptic Arm"}]);
    without["variables"] = json!([]);
    without["routing"] = json!(null);
    app.put("/v1/experiments/study", without)
        .await
        .expect_error(409, "conflict");
    assert_eq!(
        app.get("/v1/experiments/study").await.body["version"],
        1,
        "nothing changed"
    );

    // Removing the empty cohort and renaming the other keeps the ids.
    let mut renamed = study();
    renamed["cohorts"] = json!([{"alias": "arm-pro-ai", "name": "Renamed Arm", "capacity": 3}]);
    renamed["variables"][0]["cohort_values"] = json!({"arm-pro-ai": "pro_ai"});
    app.put("/v1/experiments/study", renamed).await.expect(200);
    let after = cohorts(&app).await;
    assert_eq!(after.len(), 1);
    assert_eq!(
        (after[0]["id"].clone(), after[0]["name"].clone()),
        (ids[0].clone(), json!("Renamed Arm"))
    );
    assert_eq!(
        app.get(&format!("{P}/a")).await.body["cohort"]["name"],
        "Renamed Arm"
    );
}

/// Every participant of the study through the experimenter's listing,
/// which (unlike a participant's own read) is not a sign of life.
async fn listed(app: &TestApp) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = match &after {
            Some(a) => format!("{P}?limit=500&after={a}"),
            None => format!("{P}?limit=500"),
        };
        let body = app.get(&page).await.expect(200).body;
        all.extend(body["participants"].as_array().cloned().unwrap_or_default());
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return all,
        }
    }
}

/// A burst with liveness on, through two servers: a quarter of the first
/// wave closes its tabs after routing (never heard from again) while the
/// others send heartbeats; once the silent ones are no longer live a second
/// wave arrives. No silent participant is grouped after it stopped being
/// live, none still waiting then is grouped at all, every invariant of the
/// plain burst holds, and nothing formable is left among the live.
async fn a_burst_with_liveness_never_groups_the_silent(backend: Backend) {
    const LIVENESS: i64 = 3;
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = Arc::new(TestApp::spawn(&store).await);
    let b = Arc::new(TestApp::spawn(&store).await);
    let doc = json!({
        "cohorts": [{"alias": "arm-pro-ai", "name": "Pro-AI", "capacity": 7}],
        "routing": {"liveness_timeout_seconds": LIVENESS, "groups": [
            {"name": "High Scorers", "target_cohort": "arm-pro-ai",
             "composition": [{"id": "high", "condition": {"score": {"$gte": 9}}, "min_count": 1, "max_count": 3}]},
            {"name": "Mixed Group", "require_acceptance": true,
             "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 2, "max_count": 2},
                             {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}]}]}});
    a.put("/v1/experiments/study", doc).await.expect(201);
    b.engine.refresh().await.expect("refresh");
    let quitter = |i: usize| i < 100 && i % 4 == 1;
    let active: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The open tabs: a heartbeat for each every 300 ms, through either server.
    let beating = {
        let (a, b, active, stop) = (a.clone(), b.clone(), active.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let ids = active.lock().unwrap().clone();
                for id in ids {
                    n += 1;
                    let app = if n % 2 == 0 { &a } else { &b };
                    app.post(&format!("{P}/{id}/heartbeat"), json!({}))
                        .await
                        .expect(200);
                }
            }
        })
    };
    let wave = |from: usize, to: usize| {
        let mut tasks = Vec::new();
        for client in 0..16 {
            let (a, b, active) = (a.clone(), b.clone(), active.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = from + client;
                while i < to {
                    let app = if i % 2 == 0 { &a } else { &b };
                    let id = format!("p{i:03}");
                    let score = invariants::SCORES[i % 8];
                    app.put(
                        &format!("{P}/{id}"),
                        json!({"attributes": {"score": score}}),
                    )
                    .await
                    .expect(201);
                    app.post(&format!("{P}/{id}/route"), json!({}))
                        .await
                        .expect(200);
                    if !quitter(i) {
                        active.lock().unwrap().push(id);
                    }
                    i += 16;
                }
            }));
        }
        tasks
    };
    for t in wave(0, 100) {
        t.await.expect("client");
    }
    // Wait until every silent participant still waiting is no longer live.
    let mut silent: Vec<String> = Vec::new();
    helpers::until("the silent participants are no longer live", async || {
        let all = listed(&a).await;
        let waiting: Vec<&Value> = all
            .iter()
            .filter(|p| {
                p["status"] == "waiting"
                    && quitter(p["participant_id"].as_str().unwrap()[1..].parse().unwrap())
            })
            .collect();
        silent = waiting
            .iter()
            .map(|p| p["participant_id"].as_str().unwrap().to_owned())
            .collect();
        waiting.iter().all(|p| p["live"] == false)
    })
    .await;
    for t in wave(100, 200) {
        t.await.expect("client");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    beating.await.expect("heartbeats");
    // A last heartbeat from every open tab still waiting.
    for p in listed(&a).await {
        let id = p["participant_id"].as_str().unwrap();
        if p["status"] == "waiting" && !quitter(id[1..].parse().unwrap()) {
            b.post(&format!("{P}/{id}/heartbeat"), json!({}))
                .await
                .expect(200);
        }
    }

    let participants = listed(&b).await;
    assert_eq!(participants.len(), 200, "nobody lost");
    let (cohorts, events) = invariants::observe(&a, "/v1/experiments/study").await;
    let quitter_id = |id: &str| quitter(id[1..].parse().unwrap());
    invariants::check_study_among(&cohorts, &events, &participants, false, &|id| {
        !quitter_id(id)
    });
    let rfc3339 = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    for p in &participants {
        let id = p["participant_id"].as_str().unwrap();
        if !quitter_id(id) {
            continue;
        }
        if silent.iter().any(|s| s == id) {
            assert_eq!(p["status"], "waiting", "{id} was grouped while silent");
        }
        // Never formed once it was no longer live.
        let last_seen = rfc3339(&p["last_seen"]);
        for e in events
            .iter()
            .filter(|e| e["participant_id"] == id && e["reason"] == "formed")
        {
            assert!(
                rfc3339(&e["at"]) <= last_seen + time::Duration::seconds(LIVENESS),
                "{id} formed at {} though last seen {last_seen}",
                e["at"]
            );
        }
    }
}

on_both_stores!(
    a_burst_with_liveness_never_groups_the_silent,
    direct_routing_with_variables,
    mixed_group_forms_pending_then_accept_and_decline,
    a_full_target_overflows_into_a_new_cohort,
    attribute_updates_match_a_waiting_participant_from_then_on,
    waiting_participants_time_out_on_the_server,
    every_invalid_routing_document_is_refused,
    cohort_changes_that_would_strand_members_are_refused,
    a_burst_through_two_replicas_keeps_every_invariant,
);

/// 300 participants routed by 32 concurrent clients through two servers on
/// one store. Afterwards: no cohort over capacity, nobody in two cohorts,
/// every formed cohort exactly matches its composition, nothing formable
/// left among the waiting, and one audit event per status change.
async fn a_burst_through_two_replicas_keeps_every_invariant(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = Arc::new(TestApp::spawn(&store).await);
    let b = Arc::new(TestApp::spawn(&store).await);
    let doc = json!({
        "cohorts": [{"alias": "arm-pro-ai", "name": "Pro-AI", "capacity": 7}],
        "routing": {"groups": [
            {"name": "High Scorers", "target_cohort": "arm-pro-ai",
             "composition": [{"id": "high", "condition": {"score": {"$gte": 9}}, "min_count": 1, "max_count": 3}]},
            {"name": "Mixed Group", "require_acceptance": true,
             "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 2, "max_count": 2},
                             {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}]}]}});
    a.put("/v1/experiments/study", doc).await.expect(201);
    b.engine.refresh().await.expect("refresh");
    let clients = 32;
    let total = 300;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let app = if client % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut i = client;
            while i < total {
                let id = format!("p{i:03}");
                let score = invariants::SCORES[i % 8];
                app.put(
                    &format!("{P}/{id}"),
                    json!({"attributes": {"score": score}}),
                )
                .await
                .expect(201);
                let routed = app
                    .post(&format!("{P}/{id}/route"), json!({}))
                    .await
                    .expect(200)
                    .body;
                if routed["status"] == "pending" && i % 3 == 0 {
                    app.post(&format!("{P}/{id}/decline"), json!({}))
                        .await
                        .expect(200);
                }
                i += clients;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    // Read everyone back through the other replica.
    let mut participants = Vec::new();
    for i in 0..total {
        let p = b.get(&format!("{P}/p{i:03}")).await.expect(200).body;
        participants.push(p);
    }
    let (cohorts, events) = invariants::observe(&a, "/v1/experiments/study").await;
    invariants::check_study(&cohorts, &events, &participants, true);
}
