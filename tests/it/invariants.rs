//! What a study's routing must hold however its participants arrived
//! (bursts, two replicas, declines): checked on what the API answers. The
//! studies checked here are the "high scorers" design of routing.rs and
//! replicas.rs: a direct group for scores ≥ 9 and a mixed group of two
//! highs (≥ 7) and two lows (< 5).

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use crate::helpers::TestApp;

/// The scores participant `p<n>` answers in the burst tests.
pub const SCORES: [i64; 8] = [10, 8, 2, 6, 7, 1, 9, 3];

pub fn score_of(id: &str) -> i64 {
    SCORES[id[1..].parse::<usize>().unwrap() % SCORES.len()]
}

/// The study's cohorts and its whole audit log, oldest event first.
pub async fn observe(app: &TestApp, study: &str) -> (Vec<Value>, Vec<Value>) {
    let cohorts = app
        .get(&format!("{study}/cohorts"))
        .await
        .expect(200)
        .body
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut events = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let page = match before {
            Some(b) => format!("{study}/routing/events?limit=1000&before={b}"),
            None => format!("{study}/routing/events?limit=1000"),
        };
        let body = app.get(&page).await.expect(200).body;
        events.extend(body["events"].as_array().cloned().unwrap_or_default());
        match body["next_before"].as_i64() {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    events.reverse();
    (cohorts, events)
}

/// No cohort over capacity or miscounted; every participant in a known
/// state, and in a cohort exactly when that state holds a seat; each one's
/// events chaining from `new` to where it is, through at most one cohort;
/// every group-made cohort one formation of four seats (fewer members only
/// where seats were declined, if `declines` happened); nothing formable
/// left waiting.
pub fn check_study(cohorts: &[Value], events: &[Value], participants: &[Value], declines: bool) {
    check_study_among(cohorts, events, participants, declines, &|_| true);
}

/// [`check_study`], where "nothing formable left waiting" counts only the
/// waiting participants `matchable` names (e.g. the live ones).
pub fn check_study_among(
    cohorts: &[Value],
    events: &[Value],
    participants: &[Value],
    declines: bool,
    matchable: &dyn Fn(&str) -> bool,
) {
    let known: BTreeSet<&str> = cohorts.iter().filter_map(|c| c["id"].as_str()).collect();
    let states = [
        "new",
        "waiting",
        "pending",
        "assigned",
        "declined",
        "timed_out",
        "completed",
        "dropped",
    ];
    let mut members_of: HashMap<&str, Vec<&Value>> = HashMap::new();
    for p in participants {
        let status = p["status"].as_str().unwrap_or_default();
        assert!(states.contains(&status), "an unknown state: {p}");
        let seated = matches!(status, "assigned" | "pending" | "completed");
        match p["cohort"]["id"].as_str() {
            Some(c) => {
                assert!(seated, "in a cohort but {status}: {p}");
                assert!(known.contains(c), "in a cohort that is not listed: {p}");
                members_of.entry(c).or_default().push(p);
            }
            None => assert!(!seated, "{status} without a cohort: {p}"),
        }
    }
    for c in cohorts {
        let id = c["id"].as_str().unwrap();
        let people = members_of.get(id).cloned().unwrap_or_default();
        let members = people.len() as u64;
        let counted = ["assigned", "pending", "completed"]
            .iter()
            .map(|s| c["members"][s].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(members, counted, "cohort {} counts its members", c["name"]);
        if let Some(capacity) = c["capacity"].as_u64() {
            assert!(
                members <= capacity,
                "cohort {} holds {members} > {capacity}",
                c["name"]
            );
        }
        if c["alias"].is_null() {
            let highs = people.iter().filter(|p| p["entry"] == "high").count();
            let lows = people.iter().filter(|p| p["entry"] == "low").count();
            if declines {
                assert!(
                    highs <= 2 && lows <= 2,
                    "cohort {}: {highs} high, {lows} low",
                    c["name"]
                );
            } else {
                assert_eq!((highs, lows), (2, 2), "cohort {}: one formation", c["name"]);
            }
            let formed = events
                .iter()
                .filter(|e| e["cohort_id"] == id && e["reason"] == "formed")
                .count();
            assert_eq!(formed, 4, "cohort {} formed once, with 4 seats", c["name"]);
        }
    }
    let mut chains: HashMap<&str, Vec<&Value>> = HashMap::new();
    for e in events {
        chains
            .entry(e["participant_id"].as_str().unwrap())
            .or_default()
            .push(e);
    }
    let (mut highs, mut lows) = (0, 0);
    for p in participants {
        let id = p["participant_id"].as_str().unwrap();
        let chain = chains.get(id).cloned().unwrap_or_default();
        let mut status = json!("new");
        for e in &chain {
            assert_eq!(e["previous"], status, "{id}: {chain:?}");
            status = e["status"].clone();
        }
        assert_eq!(status, p["status"], "{id}: its events end where it is");
        let seats: BTreeSet<&str> = chain
            .iter()
            .filter_map(|e| e["cohort_id"].as_str())
            .collect();
        assert!(seats.len() <= 1, "{id} was seated in {seats:?}");
        if p["status"] == "waiting" && matchable(id) {
            let score = score_of(id);
            assert!(score < 9, "{id} with score {score} is waiting");
            if score >= 7 {
                highs += 1;
            } else if score < 5 {
                lows += 1;
            }
        }
    }
    assert!(
        highs < 2 || lows < 2,
        "a mixed group is still formable: {highs} highs, {lows} lows waiting"
    );
}
