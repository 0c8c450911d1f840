//! Operating the service under hostile or long-lived conditions: clients that
//! never finish a request head, experiments created and deleted by the
//! thousand (their metrics must go with them), many studies whose timeouts
//! the sweeper must all meet.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, TestApp, TestStore};
use crate::{on_both_stores, start};

/// The header-read timeout these tests configure: short, so they run fast.
const HEAD_TIMEOUT: Duration = Duration::from_millis(300);

/// How long a test waits for something the server must do before failing:
/// many times the timeout, so that a loaded machine does not fail the test.
const PATIENCE: Duration = Duration::from_secs(10);

async fn spawn_with_head_timeout(store: &TestStore, timeout: Duration) -> TestApp {
    let mut settings = store.settings();
    settings.header_read_timeout_ms = u64::try_from(timeout.as_millis()).unwrap();
    TestApp::spawn_with(settings).await
}

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until the server closes the connection (EOF), at most [`PATIENCE`].
/// Whatever the server sent first is discarded.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut sink = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut sink))
        .await
        .expect("the server closes the connection")
        .expect("the connection ends with EOF");
}

/// Reads one response: its status line and its body (by `Content-Length`).
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.unwrap();
            assert_eq!(n, 1, "the connection closed in a response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, String::from_utf8(body).unwrap())
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_half_a_request_head_is_closed() {
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let app = spawn_with_head_timeout(&store, HEAD_TIMEOUT).await;
    let opened = Instant::now();
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    closed_by_server(&mut stream).await;
    // By the timeout, not for some other reason before it could fire (the
    // server's clock for this connection cannot start before `opened`).
    assert!(opened.elapsed() >= HEAD_TIMEOUT, "{:?}", opened.elapsed());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() {
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let app = spawn_with_head_timeout(&store, HEAD_TIMEOUT).await;
    let mut stream = connect(&app).await;
    closed_by_server(&mut stream).await;
    app.stop().await;
}

/// The default timeout, so that a slow machine between the two requests
/// cannot be mistaken for a broken keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_keep_alive_reuse_still_work_with_the_timeout_on() {
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let app = TestApp::spawn(&store).await;
    let mut stream = connect(&app).await;
    for _ in 0..2 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let (status, body) = read_response(&mut stream).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(body, r#"{"status":"ok"}"#);
    }
    app.stop().await;
}

/// A request whose head is complete but whose body is slow belongs to the
/// request timeout, not to the header-read timeout. "Slower than the
/// header-read timeout" is established without a clock: a second connection,
/// opened after the first request's head was read, is closed for its own
/// half head first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_after_a_complete_head_is_not_cut_by_the_header_timeout() {
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let app = spawn_with_head_timeout(&store, HEAD_TIMEOUT).await;
    let body = br#"{"items": []}"#;
    let mut slow = connect(&app).await;
    slow.write_all(
        format!(
            "POST /v1/assign HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The server sends 100 Continue once the handler reads the body, so the
    // head has been read by now.
    let (status, _) = read_response(&mut slow).await;
    assert!(status.starts_with("HTTP/1.1 100"), "{status}");
    slow.write_all(&body[..5]).await.unwrap();

    let mut half = connect(&app).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    closed_by_server(&mut half).await;

    slow.write_all(&body[5..]).await.unwrap();
    let (status, answer) = read_response(&mut slow).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(answer, r#"{"results":[]}"#);
    app.stop().await;
}

async fn metrics(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The lines of `/metrics` labelled with experiment `key`.
fn series_of(text: &str, key: &str) -> Vec<String> {
    let label = format!("experiment=\"{key}\"");
    text.lines()
        .filter(|l| l.contains(&label))
        .map(str::to_owned)
        .collect()
}

/// An experiment with one treatment and a one-person group, so that one
/// assignment and one routed participant give it a series of each kind.
fn counted() -> Value {
    json!({
        "treatments": [{"name": "only", "weight": 1}],
        "routing": {"groups": [{"name": "solo", "composition": [{"id": "any", "min_count": 1, "max_count": 1}]}]}
    })
}

async fn assign_and_route(app: &TestApp, key: &str, participant: &str) {
    app.post(
        &format!("/v1/experiments/{key}/assign"),
        json!({"org_id": 1, "unit_id": participant}),
    )
    .await
    .expect(200);
    app.put(
        &format!("/v1/experiments/{key}/participants/{participant}"),
        json!({"attributes": {}}),
    )
    .await
    .expect(201);
    app.post(
        &format!("/v1/experiments/{key}/participants/{participant}/route"),
        json!({}),
    )
    .await
    .expect(200);
}

async fn an_experiments_series_keep_counting_across_versions_and_leave_with_it(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/gone", counted()).await.expect(201);
    assign_and_route(&app, "gone", "p1").await;
    let mut changed = counted();
    changed["description"] = json!("a new version");
    app.put("/v1/experiments/gone", changed).await.expect(200);
    assign_and_route(&app, "gone", "p2").await;

    let text = metrics(&app).await;
    let series = series_of(&text, "gone");
    for line in [
        r#"allot_assignments_total{experiment="gone",treatment="only",reason="assigned"} 2"#,
        r#"allot_routing_status_changes_total{experiment="gone",status="assigned",reason="formed"} 2"#,
    ] {
        assert!(
            series.iter().any(|l| l == line),
            "missing {line} in:\n{text}"
        );
    }

    app.delete("/v1/experiments/gone").await.expect(204);
    let text = metrics(&app).await;
    assert_eq!(series_of(&text, "gone"), Vec::<String>::new(), "{text}");
    // Both families are still described, for the experiments that remain.
    assert!(text.contains("# TYPE allot_assignments_total counter"));

    // Created afresh, the key is a new experiment and counts from zero.
    app.put("/v1/experiments/gone", counted()).await.expect(201);
    assert!(series_of(&metrics(&app).await, "gone").iter().any(|l| l
        == r#"allot_assignments_total{experiment="gone",treatment="only",reason="assigned"} 0"#));
}

async fn series_leave_the_metrics_of_a_replica_that_did_not_delete_the_experiment(
    backend: Backend,
) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let deleter = TestApp::spawn(&store).await;
    let other = TestApp::spawn(&store).await;
    deleter
        .put("/v1/experiments/elsewhere", counted())
        .await
        .expect(201);
    // What the other replica's refresher does on its next tick, done now so
    // that the test does not wait for it.
    other.engine.refresh().await.unwrap();
    assign_and_route(&other, "elsewhere", "p").await;
    assert!(!series_of(&metrics(&other).await, "elsewhere").is_empty());

    deleter
        .delete("/v1/experiments/elsewhere")
        .await
        .expect(204);
    other.engine.refresh().await.unwrap();
    let text = metrics(&other).await;
    assert_eq!(
        series_of(&text, "elsewhere"),
        Vec::<String>::new(),
        "{text}"
    );
}

async fn create_and_delete_cycles_do_not_grow_the_metrics(backend: Backend) {
    let (_store, app) = start!(backend);
    app.put("/v1/experiments/stays", counted())
        .await
        .expect(201);
    assign_and_route(&app, "stays", "p").await;
    let cycle = |i: usize| {
        let app = &app;
        async move {
            let key = format!("cycle-{i}");
            app.put(&format!("/v1/experiments/{key}"), counted())
                .await
                .expect(201);
            assign_and_route(app, &key, "p").await;
            app.delete(&format!("/v1/experiments/{key}"))
                .await
                .expect(204);
        }
    };
    // The first cycle creates the request series every later cycle reuses.
    cycle(0).await;
    let before = metrics(&app).await;
    for i in 1..=200 {
        cycle(i).await;
    }
    let after = metrics(&app).await;
    // Only this engine's experiment-labelled lines are compared: the request
    // series come from a recorder that every test in this process shares.
    let labelled = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("experiment=\""))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(labelled(&after), labelled(&before));
    assert_eq!(labelled(&after), series_of(&after, "stays"));
}

/// An RFC 3339 time from an answer.
fn instant(value: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        value.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

async fn every_studys_waiting_participant_times_out_without_a_client_call(backend: Backend) {
    const STUDIES: usize = 30;
    let (_store, app) = start!(backend);
    // A group of two never forms around one participant: only the timeout
    // moves it. Every other study has a fallback cohort.
    let study = |i: usize| {
        json!({
            "cohorts": [{"alias": "fallback"}],
            "routing": {
                "groups": [{"name": "pair", "composition": [{"id": "any", "min_count": 2, "max_count": 2}]}],
                "wait_timeout_seconds": 1,
                "fallback_cohort": if i % 2 == 0 { json!("fallback") } else { Value::Null }
            }
        })
    };
    for i in 0..STUDIES {
        let key = format!("study-{i}");
        app.put(&format!("/v1/experiments/{key}"), study(i))
            .await
            .expect(201);
        let path = format!("/v1/experiments/{key}/participants/p");
        app.put(&path, json!({"attributes": {}})).await.expect(201);
        let routed = app
            .post(&format!("{path}/route"), json!({}))
            .await
            .expect(200);
        assert_eq!(routed.body["status"], "waiting");
    }

    // Poll every participant until none is waiting (a deadline, not a sleep:
    // the server moves them on its own clock).
    let deadline = Instant::now() + PATIENCE;
    let mut waiting: Vec<usize> = (0..STUDIES).collect();
    while !waiting.is_empty() {
        assert!(Instant::now() < deadline, "still waiting: {waiting:?}");
        let mut still = Vec::new();
        for i in waiting {
            let p = app
                .get(&format!("/v1/experiments/study-{i}/participants/p"))
                .await
                .expect(200)
                .body;
            if p["status"] == "waiting" {
                still.push(i);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    for i in 0..STUDIES {
        let events = app
            .get(&format!("/v1/experiments/study-{i}/routing/events"))
            .await
            .expect(200)
            .body;
        let (moved, routed) = (&events["events"][0], &events["events"][1]);
        let expected = if i % 2 == 0 {
            ("assigned", "fallback")
        } else {
            ("timed_out", "timeout")
        };
        assert_eq!(
            (moved["status"].as_str(), moved["reason"].as_str()),
            (Some(expected.0), Some(expected.1)),
            "study-{i}: {events}"
        );
        assert_eq!(routed["reason"], "routed", "study-{i}: {events}");
        // Within a second of the deadline, by the server's own clock.
        let waited = instant(&moved["at"]) - instant(&routed["at"]);
        assert!(
            waited >= time::Duration::seconds(1) && waited < time::Duration::seconds(2),
            "study-{i} waited {waited}"
        );
    }
}

on_both_stores!(
    every_studys_waiting_participant_times_out_without_a_client_call,
    an_experiments_series_keep_counting_across_versions_and_leave_with_it,
    series_leave_the_metrics_of_a_replica_that_did_not_delete_the_experiment,
    create_and_delete_cycles_do_not_grow_the_metrics,
);
