//! Test harness: the real server on a random port against a real store.
//!
//! SQLite tests always run, each on its own file. PostgreSQL tests run when
//! `TEST_DATABASE_URL` is set (CI sets it), each in a fresh schema; without it
//! they print that they were skipped and pass.

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

/// A store of its own for one test; several apps may share it.
pub struct TestStore {
    pub url: String,
    pub backend: Backend,
    _dir: Option<TempDir>,
}

impl TestStore {
    /// `None` (after saying so) when PostgreSQL is not configured.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("allot.db").display());
                Some(Self {
                    url,
                    backend,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let Ok(base) = std::env::var(PG_ENV) else {
                    eprintln!("skipped: {PG_ENV} is not set, so this PostgreSQL test did not run");
                    return None;
                };
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let pool = sqlx::PgPool::connect(&base)
                    .await
                    .expect("connect to the test database");
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&pool)
                    .await
                    .expect("create schema");
                pool.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                Some(Self {
                    url,
                    backend,
                    _dir: None,
                })
            }
        }
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
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Declares each listed `async fn name(Backend)` as one test,
/// `postgres_only::name`, for behaviour only PostgreSQL has (notifications,
/// server-side sessions). Without `TEST_DATABASE_URL` it says it was skipped
/// and passes, like the PostgreSQL half of `on_both_stores!`.
#[macro_export]
macro_rules! on_postgres {
    ($($name:ident),* $(,)?) => {
        mod postgres_only {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
