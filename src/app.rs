//! Building and running the service: settings → store → engine → router →
//! bound listener. [`Application::build`] binds (port 0 works, for tests);
//! [`Application::run_until`] serves until a shutdown future completes.
//!
//! Connections are served with hyper directly rather than `axum::serve`,
//! which has no way to bound how long a client may take to send a request
//! head: without that bound, connections that send half a head stay open
//! forever and exhaust the process's file descriptors.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Settings;
use crate::engine::Engine;
use crate::http::{self, AppState};
use crate::store::{self, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store at {url}: {source}")]
    Store { url: String, source: StoreError },
    #[error("cannot open the store at {url}: no connection within {limit:?}")]
    StoreTimeout { url: String, limit: Duration },
    #[error("cannot load the configuration from the store: {0}")]
    Load(StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Opens the configured store and, if configured, runs its migrations.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StartError> {
    let url = settings.database_url();
    let fail = |source| StartError::Store {
        url: settings.redacted_database_url(),
        source,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let limit = settings.pool_options().acquire_timeout;
        match tokio::time::timeout(limit, first_connection(&url)).await {
            Ok(result) => result.map_err(fail)?,
            Err(_) => {
                return Err(StartError::StoreTimeout {
                    url: settings.redacted_database_url(),
                    limit,
                })
            }
        }
    }
    let store = store::open(&url, &settings.pool_options())
        .await
        .map_err(fail)?;
    if settings.run_migrations {
        store.migrate().await.map_err(fail)?;
    }
    Ok(store)
}

/// One connection to PostgreSQL, made and closed before the pool's first.
/// The pool retries a refused connection until its acquire timeout and then
/// reports only "pool timed out"; this attempt reports why the server cannot
/// be reached (refused, unknown host, password, TLS), at once.
async fn first_connection(url: &str) -> Result<(), StoreError> {
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use sqlx::Connection;
    // A URL that does not parse is store::open's to report.
    let Ok(options) = url.parse::<PgConnectOptions>() else {
        return Ok(());
    };
    let connection = PgConnection::connect_with(&options).await?;
    // Failing to say goodbye politely is no reason not to start.
    let _ = connection.close().await;
    Ok(())
}

/// An error and its causes on one line, each said once: a cause that its
/// effect's message already quotes (as `cannot listen on …: {source}` does)
/// is not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let store = open_store(&settings).await?;
        let metrics = crate::telemetry::metrics();
        let engine = Engine::load_with(store, settings.ledger_options())
            .await
            .map_err(StartError::Load)?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: settings.listen.clone(),
                source,
            })?;
        let state = AppState {
            engine: Arc::new(engine),
            shutting_down: Arc::new(AtomicBool::new(false)),
            max_config_age: (settings.readiness_max_config_age_secs > 0)
                .then(|| Duration::from_secs(settings.readiness_max_config_age_secs)),
            metrics,
        };
        Ok(Self {
            listener,
            state,
            settings,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.state.engine)
    }

    /// Serves until `shutdown` completes; then stops accepting, marks the
    /// service not ready and gives in-flight requests `shutdown_timeout_secs`.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            state,
            settings,
        } = self;
        let refresher = state
            .engine
            .spawn_refresher(Duration::from_millis(settings.refresh_interval_ms));
        let listener_task = state.engine.spawn_listener();
        // Histograms keep raw samples until upkeep folds them into buckets.
        let upkeep = state.metrics.clone().map(|handle| {
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(5));
                loop {
                    ticker.tick().await;
                    handle.run_upkeep();
                }
            })
        });
        let sweeper = state
            .engine
            .spawn_sweeper(Duration::from_millis(settings.sweep_interval_ms));
        let flusher = state
            .engine
            .spawn_exposure_flusher(Duration::from_millis(settings.exposure_flush_ms));
        let watcher = state.engine.spawn_watcher();
        let router = http::router(state.clone(), &settings);
        if settings.auth.tokens.is_empty() {
            tracing::warn!(
                "no auth token is configured: every endpoint is open to anyone who can reach it"
            );
        }
        let flag = Arc::clone(&state.shutting_down);
        let engine = Arc::clone(&state.engine);
        let (began_tx, began_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            flag.store(true, Ordering::Relaxed);
            // Requests waiting for a change answer now, with the state as it is.
            engine.stop_waiting();
            tracing::info!("shutting down: draining in-flight requests");
            let _ = began_tx.send(());
        };
        tracing::info!(addr = %listener.local_addr()?, store = state.engine.store().backend(), "allot is serving");
        let header_read_timeout = Duration::from_millis(settings.header_read_timeout_ms);
        let serve = serve(listener, router, header_read_timeout, signal);
        let grace = Duration::from_secs(settings.shutdown_timeout_secs);
        let deadline = async move {
            if began_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            () = serve => Ok(()),
            () = deadline => {
                tracing::warn!(?grace, "in-flight requests did not finish in time; exiting anyway");
                Ok(())
            }
        };
        refresher.abort();
        listener_task.abort();
        sweeper.abort();
        flusher.abort();
        watcher.abort();
        // The last exposures answered before shutdown (§8).
        match state.engine.flush_exposures().await {
            Ok(n) => tracing::info!(exposures = n, "exposures written at shutdown"),
            Err(e) => tracing::error!(
                error = %e,
                lost = state.engine.buffered_exposures(),
                "cannot write the last exposures at shutdown: they are lost; another replica (or the next start) counts what the last checkpoint held as dropped once exposure_lease_ms has passed"
            ),
        }
        if let Some(upkeep) = upkeep {
            upkeep.abort();
        }
        result
    }
}

/// Serves HTTP/1.1 on `listener` until `signal` completes; then stops
/// accepting and waits until every open connection has finished its
/// in-flight request and closed (idle ones close at once).
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    header_read_timeout: Duration,
    signal: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut http = hyper::server::conn::http1::Builder::new();
    // The timer runs from the moment a connection waits for a request head
    // (on opening, and after each response) until the head is complete; the
    // body is the request timeout's business.
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connections = GracefulShutdown::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // A peer that gave up before being accepted is its own business.
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        continue;
                    }
                    // Out of file descriptors, most likely: accepting again at
                    // once would spin; closing connections will free some.
                    tracing::error!(error = %e, "cannot accept connections; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = &mut signal => break,
                    }
                }
            },
            () = &mut signal => break,
        };
        // Small answers go out at once rather than waiting on Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and malformed requests: the client's doing.
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// Asks the service listening on `listen` for `/readyz`; `Ok` on 200.
///
/// A plain HTTP/1.1 request over TCP, so that the binary can probe itself in
/// a container without curl. A wildcard listen address is probed on loopback.
pub async fn healthcheck(listen: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
        let status_line = String::from_utf8_lossy(&head[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        if status_line.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("not ready: {status_line}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .map_err(|_| format!("{addr} did not answer within 3 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let refused = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let bind = StartError::Bind {
            addr: "127.0.0.1:80".into(),
            source: refused(),
        };
        assert_eq!(
            error_chain(&bind),
            format!("cannot listen on 127.0.0.1:80: {}", refused())
        );
        assert_eq!(
            error_chain(&Outer(refused())),
            format!("outer: {}", refused())
        );
    }
}
