//! The exposure ledger and results (§8) through the real server: against
//! the Python reference (`tests/reference/ledger.py`), repeats, forced and
//! opted-out answers, exports, drops, store outages, shutdown and replicas.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::helpers::{Backend, Proxy, TestApp, TestStore};
use crate::{on_both_stores, on_postgres, start};

fn reference() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ledger_reference.json"
    ))
    .expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

#[track_caller]
fn close(got: &Value, want: &Value, tolerance: f64, what: &str) {
    let (g, w) = (got.as_f64(), want.as_f64());
    let (Some(g), Some(w)) = (g, w) else {
        panic!("{what}: {got} against {want}");
    };
    assert!(
        (g - w).abs() <= tolerance * w.abs().max(1.0),
        "{what}: {g} against {w}"
    );
}

async fn ledger_rows(store: &TestStore, experiment: &str) -> i64 {
    store
        .scalar(&format!(
            "SELECT COUNT(*) FROM exposures WHERE experiment = '{experiment}'"
        ))
        .await
}

/// Assigns `units` in batches of at most 1000; the answers, in order.
async fn assign_all(app: &TestApp, key: &str, units: &[(String, String)]) -> Vec<Value> {
    let mut answers = Vec::with_capacity(units.len());
    for chunk in units.chunks(1000) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|(org, unit)| json!({"experiment": key, "org_id": org, "unit_id": unit}))
            .collect();
        let answer = app
            .post("/v1/assign", json!({ "items": items }))
            .await
            .expect(200);
        answers.extend(
            answer.body["results"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    answers
}

/// Four phases (two arms, a third joins, reweighted, coverage halved), each
/// assigning a prefix of the units, some twice: per phase, the layout,
/// `moved`, units per arm, answers outside coverage, moved units and the
/// χ² and p-value equal the reference's (scipy's `chisquare`, 1e-9).
async fn results_match_the_reference(backend: Backend) {
    let (store, app) = start!(backend);
    let fixture = reference();
    let key = fixture["experiment"].as_str().unwrap();
    let units: Vec<(String, String)> = fixture["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u[0].as_str().unwrap().to_owned(),
                u[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let phases = fixture["phases"].as_array().unwrap();
    for p in phases {
        let n = p["phase"].as_i64().unwrap();
        let stored = app
            .put(
                &format!("/v1/experiments/{key}"),
                json!({"treatments": p["treatments"], "coverage": p["coverage"]}),
            )
            .await;
        assert!(stored.status.is_success(), "{}", stored.body);
        assert_eq!(stored.body["layout"], p["layout"], "phase {n} layout");
        let history = app
            .get(&format!("/v1/experiments/{key}/versions"))
            .await
            .expect(200);
        assert_eq!(history.body[0]["phase"], n);
        assert_eq!(history.body[0]["moved"]["buckets"], p["moved"]["buckets"]);
        assert_eq!(history.body[0]["moved"]["ranges"], p["moved"]["ranges"]);

        let count = usize::try_from(p["units_answered"].as_u64().unwrap()).unwrap();
        let first = assign_all(&app, key, &units[..count]).await;
        // Repeats add nothing to the ledger, but answers outside the
        // experiment count again.
        let repeats = assign_all(&app, key, &units[..count / 3]).await;
        let outside = |answers: &[Value]| {
            answers
                .iter()
                .filter(|a| a["reason"] == "not_in_coverage")
                .count()
        };
        assert_eq!(
            outside(&first),
            usize::try_from(p["results"]["not_in_coverage"].as_u64().unwrap()).unwrap()
        );

        let results = app
            .get(&format!("/v1/experiments/{key}/results"))
            .await
            .expect(200);
        assert_eq!(results.body["experiment"], key);
        let got = &results.body["phases"][0];
        let want = &p["results"];
        assert_eq!(got["phase"], n);
        assert_eq!(got["units"], want["units"], "phase {n}");
        assert_eq!(got["to_version"], Value::Null);
        assert_eq!(got["sticky_units"], 0);
        assert_eq!(got["dropped"], 0);
        assert_eq!(got["moved_units"], want["moved_units"], "phase {n}");
        assert_eq!(
            got["not_in_experiment"]["not_in_coverage"],
            json!(outside(&first) + outside(&repeats))
        );
        let arms = got["treatments"].as_array().unwrap();
        let want_arms = want["treatments"].as_array().unwrap();
        assert_eq!(arms.len(), want_arms.len(), "phase {n}: {arms:?}");
        for (a, w) in arms.iter().zip(want_arms) {
            assert_eq!(a["name"], w["name"]);
            assert_eq!(a["buckets"], w["buckets"]);
            assert_eq!(a["units"], w["units"], "phase {n} arm {}", w["name"]);
            close(
                &a["expected_share"],
                &w["expected_share"],
                1e-12,
                "expected_share",
            );
            close(
                &a["observed_share"],
                &w["observed_share"],
                1e-12,
                "observed_share",
            );
        }
        let srm = &got["srm"];
        close(
            &srm["chi_square"],
            &want["srm"]["chi_square"],
            1e-9,
            "chi_square",
        );
        close(&srm["p_value"], &want["srm"]["p_value"], 1e-9, "p_value");
        assert_eq!(srm["df"], want["srm"]["df"]);
        assert_eq!(srm["mismatch"], false);
    }
    // Every phase is still there, newest first, each closed by the next.
    let results = app
        .get(&format!("/v1/experiments/{key}/results"))
        .await
        .expect(200);
    let listed: Vec<i64> = results.body["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, [4, 3, 2, 1]);
    for (got, want) in results.body["phases"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .zip(phases)
    {
        assert_eq!(got["units"], want["results"]["units"]);
        assert_eq!(got["moved_units"], want["results"]["moved_units"]);
    }
    assert_eq!(results.body["phases"][1]["to_version"], 3);
    // One row per unit and phase, however often it was answered.
    let rows: i64 = phases
        .iter()
        .map(|p| p["results"]["units"].as_i64().unwrap())
        .sum();
    assert_eq!(ledger_rows(&store, key).await, rows);
}

/// Forced answers, answers of an experiment with `exposures: false`, and
/// answers without a treatment add no ledger row; the last are counted per
/// reason (answers, not units).
async fn forced_opted_out_and_outside_answers_add_no_rows(backend: Backend) {
    let (store, app) = start!(backend);
    app.put(
        "/v1/flags/business",
        json!({"enabled": true, "rules": [{"condition": {"plan": "business"}, "rollout": 100}]}),
    )
    .await
    .expect(201);
    app.put(
        "/v1/experiments/gated",
        json!({"eligibility_flag": "business",
               "treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}],
               "forced": [{"org_id": "qa", "unit_id": null, "treatment": "b"}]}),
    )
    .await
    .expect(201);
    for _ in 0..2 {
        let forced = app
            .post(
                "/v1/experiments/gated/assign",
                json!({"org_id": "qa", "unit_id": "pr-1"}),
            )
            .await
            .expect(200);
        assert_eq!(forced.body["reason"], "forced");
        let outside = app
            .post(
                "/v1/experiments/gated/assign",
                json!({"org_id": "7", "unit_id": "pr-1", "attributes": {"plan": "free"}}),
            )
            .await
            .expect(200);
        assert_eq!(outside.body["reason"], "org_not_eligible");
    }
    let inside = app
        .post(
            "/v1/experiments/gated/assign",
            json!({"org_id": "8", "unit_id": "pr-1", "attributes": {"plan": "business"}}),
        )
        .await
        .expect(200);
    assert_eq!(inside.body["reason"], "assigned");
    let mut paused = app.get("/v1/experiments/gated").await.expect(200).body;
    paused["status"] = json!("paused");
    app.put("/v1/experiments/gated", paused).await.expect(200);
    app.post(
        "/v1/experiments/gated/assign",
        json!({"org_id": "8", "unit_id": "pr-2"}),
    )
    .await
    .expect(200);

    let results = app.get("/v1/experiments/gated/results").await.expect(200);
    let phase = &results.body["phases"][0];
    assert_eq!(
        results.body["phases"].as_array().map(Vec::len),
        Some(1),
        "pausing keeps the phase"
    );
    assert_eq!(phase["units"], 1);
    assert_eq!(
        phase["not_in_experiment"],
        json!({"org_not_eligible": 2, "not_in_coverage": 0, "experiment_paused": 1, "no_active_treatments": 0})
    );
    assert_eq!(phase["srm"], Value::Null, "below 100 units");
    assert_eq!(ledger_rows(&store, "gated").await, 1);

    app.put(
        "/v1/experiments/quiet",
        json!({"exposures": false, "treatments": [{"name": "a", "weight": 1}]}),
    )
    .await
    .expect(201);
    let units: Vec<(String, String)> = (0..50).map(|i| ("1".to_owned(), format!("u{i}"))).collect();
    assign_all(&app, "quiet", &units).await;
    let quiet = app.get("/v1/experiments/quiet/results").await.expect(200);
    assert_eq!(quiet.body["phases"][0]["units"], 0);
    assert_eq!(quiet.body["phases"][0]["treatments"][0]["units"], 0);
    assert_eq!(ledger_rows(&store, "quiet").await, 0);
}

/// Parses the CSV export (RFC 4180 quoting) into rows of fields.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

/// The export streams a phase as CSV (default) or NDJSON, one row per unit
/// with the answer's treatment and bucket; ids that need quoting survive;
/// a missing phase is 404, a malformed one 400; a deleted experiment's
/// results and exposures stay readable.
async fn exports_stream_a_phase_as_csv_and_ndjson(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(
        "/v1/experiments/export",
        json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]}),
    )
    .await
    .expect(201);
    // More than one page of the export's reads (2 000 rows).
    let mut units: Vec<(String, String)> = (0..2_400)
        .map(|i| (format!("org-{}", i % 7), format!("pr-{i}")))
        .collect();
    units.push(("acme, inc".to_owned(), "say \"hi\"".to_owned()));
    units.push(("42".to_owned(), "line\nbreak".to_owned()));
    let answers = assign_all(&app, "export", &units).await;
    let expected: HashMap<(String, String), (String, u64)> = answers
        .iter()
        .map(|a| {
            (
                (
                    a["org_id"].as_str().unwrap().to_owned(),
                    a["unit_id"].as_str().unwrap().to_owned(),
                ),
                (
                    a["treatment"].as_str().unwrap().to_owned(),
                    a["bucket"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(expected.len(), units.len());

    let csv = app
        .client
        .get(app.url("/v1/experiments/export/exposures"))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let rows = parse_csv(&csv.text().await.unwrap());
    assert_eq!(
        rows[0],
        [
            "org_id",
            "unit_id",
            "treatment",
            "bucket",
            "reason",
            "first_seen"
        ]
    );
    assert_eq!(rows.len(), units.len() + 1);
    let mut keys = Vec::new();
    for r in &rows[1..] {
        let (treatment, bucket) = &expected[&(r[0].clone(), r[1].clone())];
        assert_eq!(&r[2], treatment);
        assert_eq!(r[3], bucket.to_string());
        assert_eq!(r[4], "assigned");
        assert!(
            time::OffsetDateTime::parse(&r[5], &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{}",
            r[5]
        );
        keys.push((r[0].clone(), r[1].clone()));
    }
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), keys.len(), "one row per unit");

    let ndjson = app
        .client
        .get(app.url("/v1/experiments/export/exposures?phase=1"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let text = ndjson.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), units.len());
    for l in &lines {
        let (treatment, bucket) = &expected[&(
            l["org_id"].as_str().unwrap().to_owned(),
            l["unit_id"].as_str().unwrap().to_owned(),
        )];
        assert_eq!(l["treatment"], json!(treatment));
        assert_eq!(l["bucket"], json!(bucket));
    }

    app.get("/v1/experiments/export/exposures?phase=2")
        .await
        .expect_error(404, "not_found");
    app.get("/v1/experiments/export/exposures?phase=x")
        .await
        .expect_error(400, "bad_request");
    app.get("/v1/experiments/nothing/exposures")
        .await
        .expect_error(404, "not_found");
    app.get("/v1/experiments/nothing/results")
        .await
        .expect_error(404, "not_found");

    app.delete("/v1/experiments/export").await.expect(204);
    let after = app.get("/v1/experiments/export/results").await.expect(200);
    assert_eq!(after.body["phases"][0]["units"], json!(units.len()));
    assert_eq!(
        after.body["phases"][0]["to_version"], 2,
        "the deletion closes the phase"
    );
    let rows = parse_csv(&app.get_text("/v1/experiments/export/exposures").await);
    assert_eq!(rows.len(), units.len() + 1);
}

/// With a buffer of 10 and no periodic flush in reach, a batch of 60 fresh
/// units fills the buffer: what does not fit is dropped and counted, and
/// every unit is either in the ledger or in `dropped`.
async fn a_full_buffer_counts_its_drops(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let mut settings = store.settings();
    settings.exposure_buffer = 10;
    settings.exposure_flush_ms = 3_600_000;
    let app = TestApp::spawn_with(settings).await;
    app.put(
        "/v1/experiments/tight",
        json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}),
    )
    .await
    .expect(201);
    let units: Vec<(String, String)> = (0..60).map(|i| ("1".to_owned(), format!("u{i}"))).collect();
    assign_all(&app, "tight", &units).await;
    let results = app.get("/v1/experiments/tight/results").await.expect(200);
    let phase = &results.body["phases"][0];
    let (recorded, dropped) = (
        phase["units"].as_i64().unwrap(),
        phase["dropped"].as_i64().unwrap(),
    );
    assert_eq!(recorded + dropped, 60, "{phase}");
    assert!(dropped > 0, "{phase}");
    assert_eq!(ledger_rows(&store, "tight").await, recorded);
    // A dropped unit is tried again when it is answered again.
    assign_all(&app, "tight", &units[..5]).await;
    let again = app.get("/v1/experiments/tight/results").await.expect(200);
    assert!(again.body["phases"][0]["units"].as_i64().unwrap() >= recorded);
    app.stop().await;
}

/// The store goes away while exposures are buffered: the failed flush
/// keeps them, new ones fill the rest of the buffer and the overflow is
/// counted; once the store is back, nothing that fitted is lost.
async fn a_store_outage_loses_nothing_that_fits(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let proxy = Proxy::start("127.0.0.1:5432".into()).await;
    let mut settings = store.settings();
    settings.database_url =
        settings
            .database_url
            .replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1);
    settings.db_acquire_timeout_ms = 500;
    settings.exposure_buffer = 40;
    settings.exposure_flush_ms = 3_600_000;
    let app = TestApp::spawn_with(settings).await;
    app.put(
        "/v1/experiments/outage",
        json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}),
    )
    .await
    .expect(201);
    let units: Vec<(String, String)> = (0..50).map(|i| ("1".to_owned(), format!("u{i}"))).collect();
    assign_all(&app, "outage", &units[..19]).await;
    proxy.cut();
    assert!(app.engine.flush_exposures().await.is_err());
    assert_eq!(
        app.engine.buffered_exposures(),
        19,
        "a failed flush keeps its records"
    );
    // Answers go on without the store; the buffer keeps 21 more (a flush
    // under way may hold some for a while, and puts back what fits).
    assign_all(&app, "outage", &units[19..]).await;
    assert!(app.engine.flush_exposures().await.is_err());
    assert_eq!(app.engine.buffered_exposures(), 40);
    proxy.mend();
    // The pool may first hand out a connection made before the outage.
    crate::helpers::until("a flush succeeds once the store is back", async || {
        app.engine.flush_exposures().await.is_ok()
    })
    .await;
    let results = app.get("/v1/experiments/outage/results").await.expect(200);
    let phase = &results.body["phases"][0];
    assert_eq!(phase["units"], 40, "{phase}");
    assert_eq!(phase["dropped"], 10, "{phase}");
    app.stop().await;
}

/// Two replicas answer the same units: one row per unit and phase.
async fn two_replicas_record_each_unit_once(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let a = TestApp::spawn(&store).await;
    let b = TestApp::spawn(&store).await;
    a.put(
        "/v1/experiments/shared",
        json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}),
    )
    .await
    .expect(201);
    let units: Vec<(String, String)> = (0..300)
        .map(|i| (format!("{}", i % 5), format!("u{i}")))
        .collect();
    let (x, y) = tokio::join!(
        assign_all(&a, "shared", &units),
        assign_all(&b, "shared", &units[100..])
    );
    assert_eq!(x.len() + y.len(), 500);
    let (ra, rb) = tokio::join!(
        a.get("/v1/experiments/shared/results"),
        b.get("/v1/experiments/shared/results")
    );
    ra.expect(200);
    rb.expect(200);
    let results = a.get("/v1/experiments/shared/results").await.expect(200);
    assert_eq!(results.body["phases"][0]["units"], 300);
    assert_eq!(ledger_rows(&store, "shared").await, 300);
    a.stop().await;
    b.stop().await;
}

/// Versions stored before phases were get theirs when the service starts,
/// computed as the history computes them.
async fn phases_of_older_versions_are_filled_in_at_start(backend: Backend) {
    let (store, app) = start!(backend);
    let two = json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]});
    let three = json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "c", "weight": 1}]});
    app.put("/v1/experiments/old", two.clone())
        .await
        .expect(201);
    let mut described = two.clone();
    described["description"] = json!("same layout");
    app.put("/v1/experiments/old", described).await.expect(200);
    app.put("/v1/experiments/old", three).await.expect(200);
    app.delete("/v1/experiments/old").await.expect(204);
    app.put("/v1/experiments/old", two).await.expect(201);
    let before = app
        .get("/v1/experiments/old/versions")
        .await
        .expect(200)
        .body;
    let phases = |history: &Value| -> Vec<i64> {
        history
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["phase"].as_i64().unwrap())
            .collect()
    };
    // Newest first: re-created (a new phase), deleted (ends phase 2), a
    // third arm (phase 2), a description (phase 1), created (phase 1).
    assert_eq!(phases(&before), [3, 2, 2, 1, 1]);
    app.stop().await;
    store
        .execute("UPDATE experiment_versions SET phase = NULL")
        .await;
    let app = TestApp::spawn(&store).await;
    assert_eq!(
        store
            .scalar("SELECT COUNT(*) FROM experiment_versions WHERE phase IS NULL")
            .await,
        0
    );
    let after = app
        .get("/v1/experiments/old/versions")
        .await
        .expect(200)
        .body;
    assert_eq!(phases(&after), phases(&before));
    let served = app
        .post(
            "/v1/experiments/old/assign",
            json!({"org_id": 1, "unit_id": "x"}),
        )
        .await
        .expect(200);
    assert_eq!(served.body["reason"], "assigned");
    let results = app.get("/v1/experiments/old/results").await.expect(200);
    assert_eq!(results.body["phases"][0]["phase"], 3);
    assert_eq!(results.body["phases"][0]["units"], 1);
    app.stop().await;
}

/// What a hostile client sends to the new endpoints gets the error shape:
/// phases at the edges of their type, U+0000 in keys, repeated and huge
/// parameters, and twice the same export at once.
async fn the_analysis_endpoints_refuse_hostile_input(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put(
        "/v1/experiments/h",
        json!({"treatments": [{"name": "a", "weight": 1}]}),
    )
    .await
    .expect(201);
    for phase in ["0", "-1", "9223372036854775807", "-9223372036854775808"] {
        app.get(&format!("/v1/experiments/h/exposures?phase={phase}"))
            .await
            .expect_error(404, "not_found");
    }
    app.get("/v1/experiments/h/exposures?phase=%00")
        .await
        .expect_error(422, "validation_failed");
    for phase in ["9223372036854775808", "1.5", "", "1e3"] {
        app.get(&format!("/v1/experiments/h/exposures?phase={phase}"))
            .await
            .expect_error(400, "bad_request");
    }
    for path in [
        "/v1/experiments/h%00/results",
        "/v1/experiments/h%00/exposures",
        "/v1/flags/f%00/history",
    ] {
        let answer = app.get(path).await;
        assert!(
            [404, 422].contains(&answer.status.as_u16()),
            "{path}: {}",
            answer.status
        );
        assert!(answer.body["error"]["request_id"].is_string(), "{path}");
    }
    let long = "k".repeat(8_000);
    let answer = app.get(&format!("/v1/experiments/{long}/results")).await;
    assert!(answer.status.is_client_error(), "{}", answer.status);
    for query in ["limit=1001", "limit=-1", "before=9223372036854775808"] {
        app.get(&format!("/v1/flags/f/history?{query}"))
            .await
            .expect_error(400, "bad_request");
    }
    let units: Vec<(String, String)> = (0..30).map(|i| ("1".to_owned(), format!("u{i}"))).collect();
    assign_all(&app, "h", &units).await;
    let (a, b) = tokio::join!(
        app.get_text("/v1/experiments/h/exposures"),
        app.get_text("/v1/experiments/h/exposures")
    );
    assert_eq!(a, b);
    assert_eq!(a.lines().count(), 31);
}

/// A replica killed (SIGKILL: no flush at shutdown) with exposures in its
/// buffer loses them, but not silently: its checkpoints told the store how
/// many it held per phase, and once its lease runs out the replica that
/// takes over counts them as `dropped`. Its answers without a treatment were
/// checkpointed as well, so they are not lost. The units come back into the
/// ledger when they are answered again.
async fn a_killed_replica_s_buffer_is_counted_as_dropped(backend: Backend) {
    use std::process::Stdio;
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    /// Kills the child however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        crate::helpers::allot()
            .env("ALLOT_LISTEN", "127.0.0.1:0")
            .env("ALLOT_LOG_FORMAT", "json")
            .env("ALLOT_DATABASE_URL", &store.url)
            .env("ALLOT_EXPOSURE_FLUSH_MS", "3600000")
            .env("ALLOT_EXPOSURE_LEASE_MS", "1000")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://{}", crate::helpers::serving(&mut child.0).addr());
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{base}/v1/experiments/killed"))
        .json(
            &json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}],
                      "coverage": 0.5}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let items: Vec<Value> = (0..200)
        .map(|i| json!({"experiment": "killed", "org_id": 1, "unit_id": format!("u{i}")}))
        .collect();
    let answers: Value = client
        .post(format!("{base}/v1/assign"))
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reasons = |reason: &str| {
        answers["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["reason"] == reason)
            .count()
    };
    let (assigned, outside) = (reasons("assigned"), reasons("not_in_coverage"));
    assert_eq!(assigned + outside, 200);
    assert!(assigned > 50 && outside > 50, "{assigned} {outside}");
    let held = "SELECT CAST(COALESCE(SUM(held), 0) AS BIGINT) FROM exposure_holdings WHERE experiment = 'killed'";
    let counted = "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM exposure_counts \
                   WHERE experiment = 'killed' AND kind = 'not_in_coverage'";
    crate::helpers::until("the replica checkpoints what it holds", async || {
        store.scalar(held).await == i64::try_from(assigned).unwrap()
            && store.scalar(counted).await == i64::try_from(outside).unwrap()
    })
    .await;
    // SIGKILL: no flush at shutdown.
    drop(child);
    assert_eq!(
        ledger_rows(&store, "killed").await,
        0,
        "nothing was flushed"
    );

    let mut settings = store.settings();
    settings.exposure_lease_ms = 1000;
    let app = TestApp::spawn_with(settings).await;
    let phase = async || {
        let results = app.get("/v1/experiments/killed/results").await.expect(200);
        results.body["phases"][0].clone()
    };
    crate::helpers::until("the dead replica's holdings are counted", async || {
        phase().await["dropped"] == assigned
    })
    .await;
    let after = phase().await;
    assert_eq!(after["units"], 0, "{after}");
    assert_eq!(
        after["not_in_experiment"]["not_in_coverage"], outside,
        "{after}"
    );
    assert_eq!(
        store.scalar("SELECT COUNT(*) FROM exposure_holdings").await,
        0
    );
    // Answered again, the units are recorded; what was dropped stays counted.
    let units: Vec<(String, String)> = (0..200)
        .map(|i| ("1".to_owned(), format!("u{i}")))
        .collect();
    assign_all(&app, "killed", &units).await;
    let again = phase().await;
    assert_eq!(again["units"], assigned, "{again}");
    assert_eq!(again["dropped"], assigned, "{again}");
    app.stop().await;
    assert_eq!(
        store.scalar("SELECT COUNT(*) FROM exposure_holdings").await,
        0,
        "a replica that stops cleanly leaves no holdings"
    );
}

on_both_stores!(
    the_analysis_endpoints_refuse_hostile_input,
    results_match_the_reference,
    forced_opted_out_and_outside_answers_add_no_rows,
    exports_stream_a_phase_as_csv_and_ndjson,
    a_full_buffer_counts_its_drops,
    a_killed_replica_s_buffer_is_counted_as_dropped,
    two_replicas_record_each_unit_once,
    phases_of_older_versions_are_filled_in_at_start,
);
on_postgres!(a_store_outage_loses_nothing_that_fits);
