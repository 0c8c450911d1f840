//! Test harness: the real server on a random port against a real store.
//!
//! SQLite tests always run, each on its own file. PostgreSQL tests run when
//! `TEST_DATABASE_URL` is set (CI sets it), each in a schema of its own that
//! is dropped when the test ends, even by a panic. Without the variable, the
//! PostgreSQL tests that [`on_both_stores!`] and [`on_postgres!`] declare are
//! compiled `#[ignore]`d (see `build.rs`), so libtest reports them as
//! ignored, with the reason, rather than as passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::app::Application;
use allot::config::Settings;
use allot::engine::Engine;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PG_ENV: &str = "TEST_DATABASE_URL";

/// The PostgreSQL test database, if one is configured.
fn pg_base_url() -> Option<String> {
    std::env::var(PG_ENV)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// How long a condition polled with [`until`] may take before the test
/// calls it lost. It only separates "slow" from "never": no test asserts
/// a time.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `probe` back to back (each probe is a round trip to a server or
/// the store; no sleeps) until it holds; panics naming `what` after
/// [`PATIENCE`]. Answers how long it took.
pub async fn until(what: &str, probe: impl AsyncFnMut() -> bool) -> Duration {
    until_within(what, PATIENCE, probe).await
}

/// [`until`] with a limit of its own.
pub async fn until_within(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if probe().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: still not so after {limit:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// `TEST_LOG=1` (or a filter, e.g. `TEST_LOG=allot=trace,sqlx=debug`) shows
/// the servers' logs in the output of a failing test (libtest captures it
/// like the test's own output).
fn init_test_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(filter) = std::env::var("TEST_LOG") else {
            return;
        };
        let filter = if filter == "1" {
            "allot=debug,info".to_owned()
        } else {
            filter
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Built with the PostgreSQL tests on (`TEST_DATABASE_URL` was set): their
/// variable is gone, which is a mistake.
#[cfg(allot_test_pg)]
fn pg_missing<T>() -> Option<T> {
    panic!("{PG_ENV} was set when the tests were built but is not set now");
}

/// Built with the PostgreSQL tests ignored, yet one runs.
#[cfg(not(allot_test_pg))]
fn pg_missing<T>() -> Option<T> {
    eprintln!("skipped: {PG_ENV} is not set, so this PostgreSQL test did not run");
    None
}

/// A store of its own for one test; several apps may share it.
pub struct TestStore {
    pub url: String,
    pub backend: Backend,
    _dir: Option<TempDir>,
    pg_schema: Option<PgSchema>,
}

impl TestStore {
    /// `None` (after saying so) when PostgreSQL is not configured. That
    /// happens only to a test run although it was compiled ignored (e.g. with
    /// `--include-ignored`), or declared without the macros: when the tests
    /// were built with `TEST_DATABASE_URL`, its absence now is a failure.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("allot.db").display());
                Some(Self {
                    url,
                    backend,
                    _dir: Some(dir),
                    pg_schema: None,
                })
            }
            Backend::Postgres => {
                let Some(base) = pg_base_url() else {
                    return pg_missing();
                };
                let schema = PgSchema::create(base.clone()).await;
                let sep = if base.contains('?') { '&' } else { '?' };
                // The application name lets the schema's clean-up find the
                // connections of this test's servers (a test that names its
                // own, later in the URL, overrides it).
                let url = format!(
                    "{base}{sep}options=-c%20search_path%3D{name}&application_name={name}",
                    name = schema.name
                );
                Some(Self {
                    url,
                    backend,
                    _dir: None,
                    pg_schema: Some(schema),
                })
            }
        }
    }

    /// The PostgreSQL schema this store lives in (`None` for SQLite).
    pub fn schema(&self) -> Option<&str> {
        self.pg_schema.as_ref().map(|s| s.name.as_str())
    }

    /// Runs SQL directly against the store, as an operator editing by hand would.
    pub async fn execute(&self, sql: &str) {
        crate::on_pool!(self, pool => {
            sqlx::query(sql).execute(&pool).await.expect("execute");
        });
    }

    /// Runs a query that answers one integer (e.g. a `COUNT(*)`) directly
    /// against the store, bypassing every replica's cache.
    pub async fn scalar(&self, sql: &str) -> i64 {
        crate::on_pool!(self, pool => {
            let value: i64 = sqlx::query_scalar(sql)
                .fetch_one(&pool)
                .await
                .expect("scalar query");
            value
        })
    }

    pub fn settings(&self) -> Settings {
        let mut s = Settings::defaults().expect("defaults");
        s.listen = "127.0.0.1:0".into();
        s.database_url = self.url.clone();
        s.db_max_connections = 8;
        s.shutdown_timeout_secs = 5;
        s
    }
}

/// A fresh PostgreSQL schema (`t_<uuid>`) for one test, dropped with it.
struct PgSchema {
    base: String,
    name: String,
}

impl PgSchema {
    async fn create(base: String) -> Self {
        use sqlx::Connection;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        // One connection, not a pool: a pool retries a refused connection
        // until it times out and then reports only the time-out.
        let mut connection = tokio::time::timeout(PATIENCE, sqlx::PgConnection::connect(&base))
            .await
            .unwrap_or_else(|_| panic!("{PG_ENV}: no connection within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("{PG_ENV}: cannot connect to the test database: {e}"));
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut connection)
            .await
            .expect("create schema");
        let _ = connection.close().await;
        Self { base, name }
    }
}

/// Drops the schema and everything in it when the test ends, whether it
/// passed or panicked. `.ci/run` also drops leftovers (from a killed run)
/// before testing.
impl Drop for PgSchema {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        // A runtime of its own on a thread of its own: drop cannot await, and
        // the test's runtime may be the one unwinding.
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(drop_schema(&base, &name))
                .map_err(|e| e.to_string())
        });
        let join = || cleanup.join();
        // Waiting on a runtime worker would stall the tasks it runs.
        let outcome = match tokio::runtime::Handle::try_current() {
            Ok(runtime)
                if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(join)
            }
            _ => join(),
        };
        let problem = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => "the clean-up panicked".to_owned(),
        };
        eprintln!("cannot drop the test schema {}: {problem}", self.name);
    }
}

async fn drop_schema(base: &str, name: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(base).await?;
    // The test's servers may still be shutting down, in a transaction that
    // holds locks on the schema's tables: end their sessions first.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut connection)
    .await?;
    sqlx::query("SET lock_timeout = '10s'")
        .execute(&mut connection)
        .await?;
    // A server that names its own application may still run a query; the
    // drop then waits for it, and may be chosen as a deadlock's victim.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .execute(&mut connection)
            .await
        {
            Ok(_) => break,
            Err(e) if attempts >= 3 => return Err(e),
            Err(_) => {}
        }
    }
    connection.close().await
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub engine: Arc<Engine>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

/// A decoded answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn spawn(store: &TestStore) -> Self {
        Self::spawn_with(store.settings()).await
    }

    pub async fn spawn_with(settings: Settings) -> Self {
        init_test_logs();
        let app = Application::build(settings)
            .await
            .expect("the server starts");
        let base = format!("http://{}", app.local_addr().expect("bound"));
        let engine = app.engine();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        Self {
            base,
            client: reqwest::Client::new(),
            engine,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Graceful shutdown; waits until the server has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task")
                .expect("server exits cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A GET whose body is not JSON (e.g. `/metrics`), as text.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.text().await.expect("body")
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.send(self.client.put(self.url(path)).json(&body)).await
    }

    pub async fn put_if(&self, path: &str, version: &str, body: Value) -> Answer {
        self.send(
            self.client
                .put(self.url(path))
                .header("if-match", version)
                .json(&body),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.client.delete(self.url(path))).await
    }

    pub async fn delete_if(&self, path: &str, version: &str) -> Answer {
        self.send(
            self.client
                .delete(self.url(path))
                .header("if-match", version),
        )
        .await
    }
}

impl Answer {
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }

    /// Asserts the error shape of §1 with this status and code.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        let error = &self.body["error"];
        assert_eq!(error["code"], code, "body: {}", self.body);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {}",
            self.body
        );
        assert!(error["details"].is_array(), "body: {}", self.body);
        let id = self
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id header");
        assert_eq!(error["request_id"], id, "body: {}", self.body);
        self
    }

    /// The `path`s of the error's details, in order.
    pub fn detail_paths(&self) -> Vec<String> {
        self.body["error"]["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|p| p["path"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The `allot` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_allot");

/// The binary, as a command with none of this process's `ALLOT_*` variables
/// (nor `RUST_LOG`, nor `NO_COLOR`): each test says what it sets.
pub fn allot() -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ALLOT_") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG");
    command.env_remove("NO_COLOR");
    command
}

/// A started `allot` child, read up to its "allot is serving" line.
pub struct Serving {
    /// Its stdout lines before the serving line.
    pub before: Vec<String>,
    /// The serving line itself.
    pub line: String,
    /// The rest of its stdout.
    pub lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Serving {
    /// Where it serves (JSON logs only; see [`serving_addr`]).
    pub fn addr(&self) -> String {
        serving_addr(&self.line)
    }
}

/// Reads `child`'s stdout (piped) until it says it is serving.
pub fn serving(child: &mut std::process::Child) -> Serving {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut before = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("allot is serving") {
            return Serving {
                before,
                line,
                lines,
            };
        }
        before.push(line);
    }
    panic!(
        "the service did not start; it logged:\n{}",
        before.join("\n")
    );
}

/// The address in the service's JSON "allot is serving" line: it listens on
/// port 0 and says which port it got, so no test hands a port it freed to a
/// child that might lose it to another process.
pub fn serving_addr(line: &str) -> String {
    let log: serde_json::Value = serde_json::from_str(line).expect("json logs");
    let addr = log["addr"]
        .as_str()
        .expect("the serving line names its address");
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    addr.to_owned()
}

/// Waits for `child` to exit, at most `limit`; kills it and fails after that.
/// (A plain thread in a synchronous test: std has no wait with a timeout.)
#[allow(clippy::disallowed_methods)]
pub fn exit_within(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process was still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `command` to its end, with its output captured, and fails (killing
/// it) if that takes longer than `limit`. A thread waits for the process and
/// hands over its output, so nothing polls.
pub fn output_within(
    command: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn allot");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("the process's output"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("the process was still running after {limit:?}");
        }
    }
}

crate::on_postgres!(a_test_schema_is_dropped_when_the_test_ends_even_by_a_panic);

/// The harness's own promise: no `t_*` schema outlives its test.
async fn a_test_schema_is_dropped_when_the_test_ends_even_by_a_panic(backend: Backend) {
    async fn exists(schema: &str) -> bool {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&pg_base_url().unwrap())
            .await
            .unwrap();
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut connection)
            .await
            .unwrap()
    }
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = TestApp::spawn(&store).await;
    app.get("/readyz").await.expect(200);
    let schema = store.schema().unwrap().to_owned();
    assert!(exists(&schema).await);
    drop(store);
    assert!(!exists(&schema).await, "{schema} outlived its store");

    // A test that panics while its server runs.
    let (tx, rx) = oneshot::channel();
    let panicked = tokio::spawn(async move {
        let store = TestStore::new(backend).await.unwrap();
        let app = TestApp::spawn(&store).await;
        app.get("/readyz").await.expect(200);
        tx.send(store.schema().unwrap().to_owned()).unwrap();
        panic!("the test fails");
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    let schema = rx.await.unwrap();
    assert!(!exists(&schema).await, "{schema} outlived a panic");
}

/// Declares each listed `async fn name(Backend)` as two tests, `sqlite::name`
/// and `postgres::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(allot_test_pg), ignore = "set TEST_DATABASE_URL to run on PostgreSQL")]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Declares each listed `async fn name(Backend)` as one test,
/// `postgres_only::name`, for behaviour only PostgreSQL has (notifications,
/// server-side sessions). Without `TEST_DATABASE_URL` they are ignored, like
/// the PostgreSQL half of `on_both_stores!`.
#[macro_export]
macro_rules! on_postgres {
    ($($name:ident),* $(,)?) => {
        mod postgres_only {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(allot_test_pg), ignore = "set TEST_DATABASE_URL to run on PostgreSQL")]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Evaluates `$body` with `$pool` a fresh connection pool to the test
/// store (`TestStore`), whichever backend it is, and closes the pool after:
/// one body of SQL for both stores.
#[macro_export]
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store.backend {
            $crate::helpers::Backend::Sqlite => {
                let $pool = sqlx::SqlitePool::connect(&$store.url)
                    .await
                    .expect("connect");
                let out = $body;
                $pool.close().await;
                out
            }
            $crate::helpers::Backend::Postgres => {
                let $pool = sqlx::PgPool::connect(&$store.url).await.expect("connect");
                let out = $body;
                $pool.close().await;
                out
            }
        }
    };
}

/// Starts a store and an app for a test, or returns from it when skipped.
#[macro_export]
macro_rules! start {
    ($backend:expr) => {{
        let Some(store) = $crate::helpers::TestStore::new($backend).await else {
            return;
        };
        let app = $crate::helpers::TestApp::spawn(&store).await;
        (store, app)
    }};
}

/// A TCP proxy between allot and PostgreSQL that the test can cut and mend.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, l) = (open.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the store "is gone"
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(link);
            }
        });
        Self {
            addr,
            open,
            links,
            accept,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn mend(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
