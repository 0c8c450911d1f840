//! The engine composes the pure rules with the store.
//!
//! It owns the in-memory [`Snapshot`](snapshot::Snapshot) of the
//! configuration, applies writes (validate → store → patch the snapshot),
//! answers assignments from the snapshot, and keeps the snapshot in step with
//! writes made by other replicas.

pub mod assign;
pub mod counters;
pub mod experiments;
pub mod flags;
pub mod routing;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::domain::precondition::Precondition;
use crate::domain::problem::Problem;
use crate::store::{Store, StoreError};
use snapshot::Snapshot;

/// Why an engine operation did not succeed; the HTTP layer maps each to the
/// contract's status and code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("the request breaks {} rule(s)", .0.len())]
    Validation(Vec<Problem>),
    #[error("If-Match is {expected}, but {}", current.map_or("there is no current version".to_owned(), |v| format!("the current version is {v}")))]
    VersionMismatch {
        expected: Precondition,
        current: Option<i64>,
    },
    #[error("{0}")]
    Conflict(String),
    /// Unavailable for a reason that may be shown (a broken stored config
    /// names its problem, §3).
    #[error("{0}")]
    Unavailable(String),
    /// The store failed; the cause is kept, typed, for the log only.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// An invariant of allot's own broke; the message is for the log only.
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub fn validation(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![Problem::new(path, message)])
    }

    /// The same error for a document nested at `prefix` (a JSON Pointer) of
    /// a larger body, as a batch item is.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::Validation(problems) => Self::Validation(
                problems
                    .into_iter()
                    .map(|p| Problem::new(format!("{prefix}{}", p.path), p.message))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Counts a store failure in `allot_store_errors_total` (the outcomes that
/// are answers, like "not found", are not failures).
pub(crate) fn count_store_error(e: &StoreError) {
    let kind = match e {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Database(_) | StoreError::Other(_) => "other",
        _ => return,
    };
    metrics::counter!("allot_store_errors_total", "kind" => kind).increment(1);
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        count_store_error(&e);
        match e {
            StoreError::NotFound => EngineError::NotFound("not found".into()),
            StoreError::Conflict(m) => EngineError::Conflict(m),
            other => EngineError::Store(Arc::new(other)),
        }
    }
}

pub struct Engine {
    store: Arc<dyn Store>,
    snapshot: ArcSwap<Snapshot>,
    /// Serialises this process's writers so that patching the snapshot after
    /// a store write never races another patch.
    writes: Mutex<()>,
    /// Routing calls queued per experiment (see `routing::Engine::answer`).
    routing_queues: routing::RoutingQueues,
    /// The counters labelled by experiment, for as long as the snapshot has it.
    counters: counters::Registry,
}

impl Engine {
    /// Loads the configuration from the store and builds the first snapshot.
    pub async fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let loaded = store.load().await?;
        let counters = counters::Registry::default();
        Ok(Self {
            store,
            snapshot: ArcSwap::from_pointee(Snapshot::from_loaded(loaded, &counters)),
            writes: Mutex::new(()),
            routing_queues: routing::RoutingQueues::default(),
            counters,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The current snapshot (a cheap reference-counted handle).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Appends the counters labelled by experiment to `/metrics` text.
    pub fn render_experiment_metrics(&self, out: &mut String) {
        self.counters.render(out);
    }

    /// Swaps in `next` (the caller holds `writes`) and drops the counters of
    /// the experiments it no longer has: this is where an experiment leaves
    /// service on this replica, whoever deleted it.
    fn swap(&self, next: Snapshot) {
        self.counters.retain(&next);
        self.snapshot.store(Arc::new(next));
    }

    /// Installs the result of a store write that produced `revision`.
    /// If the snapshot is exactly one revision behind, `patch` builds the next
    /// one from it; otherwise another replica wrote in between and the whole
    /// configuration is reloaded. The write itself has succeeded either way:
    /// if the reload fails, the refresher catches up later.
    async fn install(&self, revision: i64, patch: impl FnOnce(&Snapshot) -> Snapshot) {
        let current = self.snapshot.load_full();
        if current.revision + 1 == revision {
            self.swap(patch(&current));
        } else if current.revision < revision {
            if let Err(e) = self.reload_locked().await {
                tracing::warn!(error = %e, "reloading the configuration after a write failed; the refresher will retry");
            }
        }
    }

    async fn reload_locked(&self) -> Result<(), EngineError> {
        let loaded = self.store.load().await?;
        if loaded.revision != self.snapshot.load().revision {
            self.swap(Snapshot::from_loaded(loaded, &self.counters));
        }
        Ok(())
    }

    /// Reloads the snapshot if the store's revision moved (a write by another
    /// replica, or by hand). Returns whether it reloaded.
    pub async fn refresh(&self) -> Result<bool, EngineError> {
        let revision = self.store.revision().await?;
        if revision == self.snapshot.load().revision {
            return Ok(false);
        }
        let _guard = self.writes.lock().await;
        self.reload_locked().await?;
        Ok(true)
    }

    /// Polls the store's revision every `every` until the task is dropped.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_every(every, "configuration refresh", |engine| async move {
            engine.refresh().await.map(|_| ())
        })
    }

    /// Runs `job` every `every` until the task is aborted; a failure is
    /// logged (as `what`) and the job runs again on the next tick.
    pub(crate) fn spawn_every<F, Fut>(
        self: &Arc<Self>,
        every: Duration,
        what: &'static str,
        job: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), EngineError>> + Send,
    {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(e) = job(Arc::clone(&engine)).await {
                    tracing::warn!(error = %e, "{what} failed; it runs again on the next tick");
                }
            }
        })
    }

    /// Readiness: the store answers within `timeout`.
    pub async fn check_store(&self, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("store {}: {e}", self.store.backend())),
            Err(_) => Err(format!(
                "store {} did not answer within {timeout:?}",
                self.store.backend()
            )),
        }
    }
}

/// Lists snapshot entries sorted by key. An entry whose stored document
/// cannot be used is listed as `{"key", "version", "unavailable": why}`
/// instead of being hidden.
fn list_sorted<E, V: Serialize>(
    entries: &HashMap<String, Arc<E>>,
    view: impl Fn(&E) -> Result<V, EngineError>,
    version: impl Fn(&E) -> i64,
) -> Vec<Value> {
    let mut keys: Vec<&String> = entries.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let entry = &entries[key];
            match view(entry) {
                Ok(v) => serde_json::to_value(v).unwrap_or(Value::Null),
                Err(e) => {
                    json!({"key": key, "version": version(entry), "unavailable": e.to_string()})
                }
            }
        })
        .collect()
}
