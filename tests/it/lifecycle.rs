//! The participant lifecycle over HTTP (§5, issue 12): liveness and the
//! heartbeat, the acceptance timeout applied by the server, completion and
//! dropout with their seat accounting, the experimenter's listing and move.

use serde_json::{json, Value};

use crate::helpers::{self, Backend, TestApp};
use crate::{on_both_stores, start};

const E: &str = "/v1/experiments/life";
const P: &str = "/v1/experiments/life/participants";

/// One cohort `room` of capacity 2; a group forms as soon as `min` people
/// wait (up to `max`) and joins it; `routing` is merged into the routing.
fn study(min: u32, max: u32, group: Value, routing: Value) -> Value {
    let mut doc = json!({
        "cohorts": [{"alias": "room", "name": "Room", "capacity": 2}],
        "variables": [{"name": "arm", "default": "none", "cohort_values": {"room": "room"}}],
        "routing": {"wait_timeout_seconds": 600, "groups": [
            {"name": "G", "target_cohort": "room",
             "composition": [{"id": "any", "min_count": min, "max_count": max}]}]}});
    for (k, v) in group.as_object().cloned().unwrap_or_default() {
        doc["routing"]["groups"][0][k] = v;
    }
    for (k, v) in routing.as_object().cloned().unwrap_or_default() {
        doc["routing"][k] = v;
    }
    doc
}

async fn register(app: &TestApp, id: &str) {
    app.put(&format!("{P}/{id}"), json!({"attributes": {}}))
        .await
        .expect(201);
}

async fn arrive(app: &TestApp, id: &str) -> Value {
    register(app, id).await;
    app.post(&format!("{P}/{id}/route"), json!({}))
        .await
        .expect(200)
        .body
}

async fn call(app: &TestApp, id: &str, action: &str) -> helpers::Answer {
    app.post(&format!("{P}/{id}/{action}"), json!({})).await
}

/// Lists participants without being one: the listing is no sign of life.
async fn listed(app: &TestApp, query: &str) -> Value {
    app.get(&format!("{P}?{query}")).await.expect(200).body
}

async fn listed_one(app: &TestApp, id: &str) -> Value {
    let page = listed(app, "limit=1000").await;
    page["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["participant_id"] == id)
        .cloned()
        .unwrap()
}

async fn events(app: &TestApp) -> Vec<Value> {
    app.get(&format!("{E}/routing/events?limit=1000"))
        .await
        .expect(200)
        .body["events"]
        .as_array()
        .cloned()
        .unwrap()
}

async fn room(app: &TestApp) -> Value {
    app.get(&format!("{E}/cohorts")).await.expect(200).body[0].clone()
}

async fn a_silent_participant_is_not_grouped_until_it_sends_a_heartbeat(backend: Backend) {
    let (_store, app) = start!(backend);
    let doc = study(2, 2, json!({}), json!({"liveness_timeout_seconds": 2}));
    app.put(E, doc).await.expect(201);
    let quiet = arrive(&app, "quiet").await;
    assert_eq!(
        (quiet["status"].clone(), quiet["live"].clone()),
        (json!("waiting"), json!(true))
    );
    assert!(quiet["last_seen"].is_string());

    // The tab closed: nothing is heard from it until it is no longer live.
    helpers::until("the silent participant is no longer live", async || {
        listed_one(&app, "quiet").await["live"] == false
    })
    .await;
    let newcomer = arrive(&app, "newcomer").await;
    assert_eq!(
        newcomer["status"], "waiting",
        "not grouped with a silent participant"
    );
    let still = listed_one(&app, "quiet").await;
    assert_eq!(
        (still["status"].clone(), still["waiting_since"].clone()),
        (json!("waiting"), quiet["waiting_since"].clone()),
        "it keeps its place"
    );

    // Back: the heartbeat answers its state after a matching pass.
    let back = call(&app, "quiet", "heartbeat").await.expect(200).body;
    assert_eq!(
        (back["status"].clone(), back["live"].clone()),
        (json!("assigned"), json!(true))
    );
    assert_eq!(back["cohort"]["alias"], "room");
    assert_eq!(back["variables"], json!({"arm": "room"}));
    assert_eq!(listed_one(&app, "newcomer").await["status"], "assigned");

    // A heartbeat of anyone else answers its state; an unknown one is 404.
    assert_eq!(
        call(&app, "newcomer", "heartbeat").await.expect(200).body["status"],
        "assigned"
    );
    call(&app, "nobody", "heartbeat")
        .await
        .expect_error(404, "not_found");
    // A read is heard from too (a client that only polls its state).
    helpers::until("the participant is no longer live", async || {
        listed_one(&app, "newcomer").await["live"] == false
    })
    .await;
    assert_eq!(
        app.get(&format!("{P}/newcomer")).await.expect(200).body["live"],
        true
    );
}

async fn without_a_liveness_timeout_everyone_is_live(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(E, study(2, 2, json!({}), json!({})))
        .await
        .expect(201);
    assert_eq!(arrive(&app, "a").await["live"], true);
    let read = app.get(&format!("{P}/a")).await.expect(200).body;
    assert_eq!(
        (read["status"].clone(), read["live"].clone()),
        (json!("waiting"), json!(true))
    );
    let page = listed(&app, "").await;
    assert_eq!(page["participants"][0]["live"], true);
}

async fn an_unaccepted_seat_is_freed_by_the_server_at_the_deadline(backend: Backend) {
    let (_store, app) = start!(backend);
    let mut doc = study(
        1,
        1,
        json!({"require_acceptance": true, "accept_timeout_seconds": 1}),
        json!({}),
    );
    doc["cohorts"][0]["capacity"] = json!(1);
    app.put(E, doc).await.expect(201);
    let late = arrive(&app, "late").await;
    assert_eq!(late["status"], "pending");
    let seat = late["cohort"]["id"].clone();
    assert_eq!(room(&app).await["members"]["pending"], 1);

    // Nobody calls: the sweeper declines it, within about a second of the
    // deadline (one second after the group formed).
    let took = helpers::until("the pending participant is declined", async || {
        let page = listed(&app, "status=declined").await;
        page["participants"]
            .as_array()
            .is_some_and(|p| p.len() == 1)
    })
    .await;
    assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
    let declined = listed_one(&app, "late").await;
    assert_eq!(
        (declined["status"].clone(), declined["cohort"].clone()),
        (json!("declined"), json!(null))
    );
    let event = events(&app).await[0].clone();
    assert_eq!(
        (
            event["reason"].clone(),
            event["previous"].clone(),
            event["status"].clone(),
            event["cohort_id"].clone(),
            event["detail"].clone(),
        ),
        (
            json!("accept_timeout"),
            json!("pending"),
            json!("declined"),
            seat.clone(),
            json!(null)
        )
    );
    assert_eq!(
        room(&app).await["members"],
        json!({"assigned": 0, "pending": 0, "completed": 0})
    );
    // The seat is free: the next one takes it, in the same (capacity 1) cohort.
    let next = arrive(&app, "next").await;
    assert_eq!(
        (next["status"].clone(), next["cohort"]["id"].clone()),
        (json!("pending"), seat)
    );
    // Accepting in time keeps the seat.
    assert_eq!(
        call(&app, "next", "accept").await.expect(200).body["status"],
        "assigned"
    );
    call(&app, "late", "accept")
        .await
        .expect_error(409, "conflict");
}

async fn complete_and_drop_move_through_the_lifecycle(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(E, study(1, 1, json!({}), json!({})))
        .await
        .expect(201);
    register(&app, "new").await;
    call(&app, "new", "complete")
        .await
        .expect_error(409, "conflict");
    call(&app, "nobody", "complete")
        .await
        .expect_error(404, "not_found");
    call(&app, "nobody", "drop")
        .await
        .expect_error(404, "not_found");

    let a = arrive(&app, "a").await;
    assert_eq!(a["status"], "assigned");
    let done = call(&app, "a", "complete").await.expect(200).body;
    assert_eq!(
        (done["status"].clone(), done["cohort"]["alias"].clone()),
        (json!("completed"), json!("room"))
    );
    assert_eq!(done["variables"], json!({"arm": "room"}));
    // Repeating answers the state; a completed participant cannot drop.
    assert_eq!(
        call(&app, "a", "complete").await.expect(200).body["status"],
        "completed"
    );
    call(&app, "a", "drop").await.expect_error(409, "conflict");
    call(&app, "a", "accept")
        .await
        .expect_error(409, "conflict");

    // Drop from new, with a reason; then again, which changes nothing.
    let dropped = app
        .post(
            &format!("{P}/new/drop"),
            json!({"reason": "failed attention check"}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(
        (dropped["status"].clone(), dropped["cohort"].clone()),
        (json!("dropped"), json!(null))
    );
    let before = events(&app).await.len();
    assert_eq!(
        app.post(&format!("{P}/new/drop"), json!({"reason": "again"}))
            .await
            .expect(200)
            .body["status"],
        "dropped"
    );
    // A drop without any body, as `curl -X POST` sends it.
    let b = arrive(&app, "b").await;
    assert_eq!(b["status"], "assigned");
    let bare = app
        .send(app.client.post(app.url(&format!("{P}/b/drop"))))
        .await
        .expect(200)
        .body;
    assert_eq!(bare["status"], "dropped");
    call(&app, "b", "complete")
        .await
        .expect_error(409, "conflict");
    call(&app, "new", "route").await.expect(200);

    let log = events(&app).await;
    assert_eq!(log.len(), before + 3, "b: routed, formed, dropped");
    let of = |id: &str, reason: &str| {
        log.iter()
            .find(|e| e["participant_id"] == id && e["reason"] == reason)
            .cloned()
            .unwrap_or_else(|| panic!("no {reason} event for {id}"))
    };
    let completed = of("a", "completed");
    assert_eq!(
        (
            completed["previous"].clone(),
            completed["status"].clone(),
            completed["detail"].clone()
        ),
        (json!("assigned"), json!("completed"), json!(null))
    );
    assert_eq!(completed["cohort_id"], a["cohort"]["id"]);
    let new_dropped = of("new", "dropped");
    assert_eq!(
        (
            new_dropped["previous"].clone(),
            new_dropped["detail"].clone(),
            new_dropped["cohort_id"].clone()
        ),
        (json!("new"), json!("failed attention check"), json!(null))
    );
    let b_dropped = of("b", "dropped");
    assert_eq!(
        (
            b_dropped["previous"].clone(),
            b_dropped["detail"].clone(),
            b_dropped["cohort_id"].clone()
        ),
        (json!("assigned"), json!(null), b["cohort"]["id"].clone())
    );
    assert!(
        log.iter().all(|e| e.get("detail").is_some()),
        "detail is always sent"
    );
}

async fn a_dropped_seat_is_freed_and_a_completed_one_is_not(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(E, study(1, 1, json!({}), json!({})))
        .await
        .expect(201);
    let a = arrive(&app, "a").await;
    let b = arrive(&app, "b").await;
    let room_id = a["cohort"]["id"].clone();
    assert_eq!(b["cohort"]["id"], room_id, "both fit the room (capacity 2)");

    call(&app, "a", "complete").await.expect(200);
    assert_eq!(
        room(&app).await["members"],
        json!({"assigned": 1, "pending": 0, "completed": 1})
    );
    let c = arrive(&app, "c").await;
    assert_ne!(
        c["cohort"]["id"], room_id,
        "a completed seat stays taken: c overflows"
    );
    assert_eq!(c["cohort"]["name"], "Room (overflow 1)");

    call(&app, "b", "drop").await.expect(200);
    assert_eq!(
        room(&app).await["members"],
        json!({"assigned": 0, "pending": 0, "completed": 1})
    );
    let d = arrive(&app, "d").await;
    assert_eq!(d["cohort"]["id"], room_id, "the dropped seat is free again");
    let members = app
        .get(&format!(
            "{E}/cohorts/{}/participants",
            room_id.as_str().unwrap()
        ))
        .await
        .expect(200)
        .body;
    let mut ids: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["participant_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a", "d"]);
}

async fn a_bad_drop_reason_is_refused_and_changes_nothing(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(E, study(1, 1, json!({}), json!({})))
        .await
        .expect(201);
    arrive(&app, "a").await;
    let before = events(&app).await;
    let at_most = "x".repeat(200);
    let too_long = "é".repeat(201);
    for (body, path) in [
        (json!({ "reason": too_long }), "/reason"),
        (json!({"reason": "nul \u{0} inside"}), "/reason"),
        (json!({"reason": 42}), "/reason"),
        (json!({"why": "x"}), "/why"),
        (json!(["x"]), ""),
    ] {
        let answer = app
            .post(&format!("{P}/a/drop"), body.clone())
            .await
            .expect_error(422, "validation_failed");
        assert_eq!(answer.detail_paths(), [path], "{body}");
    }
    let not_json = app
        .client
        .post(app.url(&format!("{P}/a/drop")))
        .header("content-type", "application/json")
        .body("{\"reason\": ");
    app.send(not_json).await.expect_error(400, "bad_request");
    let a = listed_one(&app, "a").await;
    assert_eq!(a["status"], "assigned", "nothing changed");
    assert_eq!(events(&app).await, before, "nothing was logged");
    assert_eq!(room(&app).await["members"]["assigned"], 1);

    let dropped = app
        .post(&format!("{P}/a/drop"), json!({ "reason": at_most }))
        .await
        .expect(200)
        .body;
    assert_eq!(dropped["status"], "dropped");
    assert_eq!(events(&app).await[0]["detail"], json!(at_most));
}

async fn the_listing_is_oldest_first_paged_and_filtered(backend: Backend) {
    let (_store, app) = start!(backend);
    // Pairs: with an odd number arriving, the last one waits.
    app.put(E, study(2, 2, json!({}), json!({})))
        .await
        .expect(201);
    let ids = ["p-c", "p-a", "p-e", "p-b", "p-d"];
    for id in ids {
        arrive(&app, id).await;
    }
    register(&app, "p-new").await;
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &after {
            Some(a) => format!("limit=2&after={a}"),
            None => "limit=2".to_owned(),
        };
        let page = listed(&app, &query).await;
        pages += 1;
        let items = page["participants"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|p| p["participant_id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), seen.last().map(String::as_str));
                after = Some(next.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["p-c", "p-a", "p-e", "p-b", "p-d", "p-new"],
        "oldest first"
    );
    assert_eq!(pages, 3);

    let waiting = listed(&app, "status=waiting").await;
    assert_eq!(waiting["next"], json!(null));
    let ids: Vec<&str> = waiting["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["participant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p-d"]);
    let assigned = listed(&app, "status=assigned&limit=3").await;
    assert_eq!(assigned["participants"].as_array().map(Vec::len), Some(3));
    assert_eq!(assigned["next"], "p-e");
    let rest = listed(&app, "status=assigned&limit=3&after=p-e").await;
    assert_eq!(rest["participants"][0]["participant_id"], "p-b");
    assert_eq!(rest["next"], json!(null));
    assert_eq!(
        listed(&app, "status=new").await["participants"][0]["participant_id"],
        "p-new"
    );
    assert_eq!(
        listed(&app, "status=dropped").await["participants"],
        json!([])
    );

    for bad in ["status=sleeping", "limit=0", "limit=1001"] {
        app.get(&format!("{P}?{bad}"))
            .await
            .expect_error(400, "bad_request");
    }
    // The cursor is a participant id: an unknown one is 404.
    app.get(&format!("{P}?after=nobody"))
        .await
        .expect_error(404, "not_found");
    app.get("/v1/experiments/nope/participants")
        .await
        .expect_error(404, "not_found");
}

async fn an_experimenter_moves_participants_within_capacity(backend: Backend) {
    const ADMIN: &str = "admin-token-0123456789";
    const CLIENT: &str = "client-token-0123456789";
    let Some(store) = helpers::TestStore::new(backend).await else {
        return;
    };
    let mut settings = store.settings();
    settings.auth.tokens =
        allot::config::parse_tokens(&format!("ops:admin:{ADMIN},study:client:{CLIENT}")).unwrap();
    let app = TestApp::spawn_with(settings).await;
    let as_role = |token: &'static str, path: String, body: Value| {
        app.client
            .post(app.url(&path))
            .bearer_auth(token)
            .json(&body)
    };
    let mut doc = study(2, 2, json!({}), json!({}));
    doc["cohorts"] = json!([{"alias": "room", "name": "Room", "capacity": 2},
                            {"alias": "side", "name": "Side", "capacity": 1}]);
    app.send(app.client.put(app.url(E)).bearer_auth(ADMIN).json(&doc))
        .await
        .expect(201);
    let cohorts = app
        .send(
            app.client
                .get(app.url(&format!("{E}/cohorts")))
                .bearer_auth(CLIENT),
        )
        .await
        .expect(200)
        .body;
    let side = cohorts[1]["id"].as_str().unwrap().to_owned();
    let room_id = cohorts[0]["id"].as_str().unwrap().to_owned();
    for id in ["w", "x", "n", "d"] {
        app.send(
            app.client
                .put(app.url(&format!("{P}/{id}")))
                .bearer_auth(CLIENT)
                .json(&json!({"attributes": {}})),
        )
        .await
        .expect(201);
    }
    app.send(as_role(CLIENT, format!("{P}/w/route"), json!({})))
        .await
        .expect(200);
    let to_side = json!({ "cohort_id": side });

    // A client may not move anyone.
    app.send(as_role(CLIENT, format!("{P}/w/move"), to_side.clone()))
        .await
        .expect_error(403, "forbidden");
    assert_eq!(listed_one_as(&app, CLIENT, "w").await["status"], "waiting");

    // A waiting participant leaves the pool for the side cohort.
    let moved = app
        .send(as_role(ADMIN, format!("{P}/w/move"), to_side.clone()))
        .await
        .expect(200)
        .body;
    assert_eq!(
        (
            moved["status"].clone(),
            moved["cohort"]["alias"].clone(),
            moved["group"].clone()
        ),
        (json!("assigned"), json!("side"), json!(null))
    );
    assert_eq!(moved["waiting_since"], json!(null));
    // Full (capacity 1): 409, nothing changes.
    app.send(as_role(ADMIN, format!("{P}/n/move"), to_side.clone()))
        .await
        .expect_error(409, "conflict");
    assert_eq!(listed_one_as(&app, CLIENT, "n").await["status"], "new");
    // Moving where it already is answers its state.
    app.send(as_role(ADMIN, format!("{P}/w/move"), to_side.clone()))
        .await
        .expect(200);
    // A new participant moves from nowhere into the room; then to... the
    // full side cohort again: refused.
    let n = app
        .send(as_role(
            ADMIN,
            format!("{P}/n/move"),
            json!({ "cohort_id": room_id }),
        ))
        .await
        .expect(200)
        .body;
    assert_eq!(n["cohort"]["alias"], "room");
    // Refused statuses: dropped (and completed, declined, timed_out alike).
    app.send(as_role(CLIENT, format!("{P}/d/drop"), json!({})))
        .await
        .expect(200);
    app.send(as_role(
        ADMIN,
        format!("{P}/d/move"),
        json!({ "cohort_id": room_id }),
    ))
    .await
    .expect_error(409, "conflict");
    app.send(as_role(CLIENT, format!("{P}/n/complete"), json!({})))
        .await
        .expect(200);
    app.send(as_role(
        ADMIN,
        format!("{P}/n/move"),
        json!({ "cohort_id": room_id }),
    ))
    .await
    .expect_error(409, "conflict");
    // Unknown cohort or participant: 404; a body without a cohort id: 422.
    app.send(as_role(
        ADMIN,
        format!("{P}/x/move"),
        json!({"cohort_id": "nope"}),
    ))
    .await
    .expect_error(404, "not_found");
    app.send(as_role(
        ADMIN,
        format!("{P}/nobody/move"),
        json!({ "cohort_id": room_id }),
    ))
    .await
    .expect_error(404, "not_found");
    let missing = app
        .send(as_role(ADMIN, format!("{P}/x/move"), json!({})))
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(missing.detail_paths(), ["/cohort_id"]);

    let log = app
        .send(
            app.client
                .get(app.url(&format!("{E}/routing/events")))
                .bearer_auth(CLIENT),
        )
        .await
        .expect(200)
        .body;
    let moves: Vec<&Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "moved")
        .collect();
    assert_eq!(moves.len(), 2);
    assert_eq!(
        (
            moves[1]["participant_id"].clone(),
            moves[1]["previous"].clone(),
            moves[1]["cohort_id"].clone()
        ),
        (json!("w"), json!("waiting"), json!(side))
    );
    let cohorts = app
        .send(
            app.client
                .get(app.url(&format!("{E}/cohorts")))
                .bearer_auth(CLIENT),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(
        cohorts[0]["members"],
        json!({"assigned": 0, "pending": 0, "completed": 1})
    );
    assert_eq!(
        cohorts[1]["members"],
        json!({"assigned": 1, "pending": 0, "completed": 0})
    );
    app.stop().await;
}

async fn listed_one_as(app: &TestApp, token: &str, id: &str) -> Value {
    let page = app
        .send(
            app.client
                .get(app.url(&format!("{P}?limit=1000")))
                .bearer_auth(token),
        )
        .await
        .expect(200)
        .body;
    page["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["participant_id"] == id)
        .cloned()
        .unwrap()
}

on_both_stores!(
    a_silent_participant_is_not_grouped_until_it_sends_a_heartbeat,
    without_a_liveness_timeout_everyone_is_live,
    an_unaccepted_seat_is_freed_by_the_server_at_the_deadline,
    complete_and_drop_move_through_the_lifecycle,
    a_dropped_seat_is_freed_and_a_completed_one_is_not,
    a_bad_drop_reason_is_refused_and_changes_nothing,
    the_listing_is_oldest_first_paged_and_filtered,
    an_experimenter_moves_participants_within_capacity,
);
