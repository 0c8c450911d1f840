//! Operating the service under hostile or long-lived conditions: clients that
//! never finish a request head.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, TestApp, TestStore};

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
