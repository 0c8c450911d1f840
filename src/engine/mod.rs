//! The engine composes the pure rules with the store.
//!
//! It owns the in-memory [`Snapshot`](snapshot::Snapshot) of the
//! configuration, applies writes (validate → store → patch the snapshot),
//! answers assignments from the snapshot, and keeps the snapshot in step with
//! writes made by other replicas.

pub mod assign;
pub mod counters;
mod error;
pub mod experiments;
pub mod exposures;
pub mod flags;
pub mod results;
pub mod routing;
pub mod snapshot;
mod sticky;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::domain::precondition::Precondition;
use crate::store::{CatchUp, Signal, Store, StoreError};
pub(crate) use error::count_store_error;
pub use error::{EngineError, Internal, Missing, Unavailable};
use snapshot::Snapshot;

/// How long a replica waits before subscribing again after its change feed
/// broke: doubling from the first to the last.
const RESUBSCRIBE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));

/// Whether a document equals the stored text of the current version: then a
/// write makes no new version (§1, for flags and experiments alike). A
/// stored text that does not parse is never equal, so any valid write
/// repairs it.
pub(crate) fn unchanged(stored: &str, document: &Value) -> bool {
    serde_json::from_str::<Value>(stored).ok().as_ref() == Some(document)
}

/// A configuration write the store refused: `NotFound` is `missing()`, a
/// failed `If-Match` is 412 with the stored version it was checked against.
pub(crate) fn refused_write(
    e: StoreError,
    if_match: Option<&Precondition>,
    missing: impl FnOnce() -> EngineError,
) -> EngineError {
    match e {
        StoreError::NotFound => missing(),
        StoreError::VersionMismatch { current } => EngineError::VersionMismatch {
            expected: if_match.cloned().unwrap_or(Precondition::Exists),
            current,
        },
        other => other.into(),
    }
}

pub struct Engine {
    store: Arc<dyn Store>,
    snapshot: ArcSwap<Snapshot>,
    /// Serialises this process's writers so that patching the snapshot after
    /// a store write never races another patch.
    writes: Mutex<()>,
    /// Routing calls queued per experiment (see `routing::Engine::queue_call`).
    routing_queues: routing::RoutingQueues,
    /// The counters labelled by experiment, for as long as the snapshot has it.
    counters: counters::Registry,
    /// Looks at the store for keys the snapshot does not have (read-through).
    lookups: Lookups,
    /// When the snapshot was last known to equal the store's configuration.
    confirmed: std::sync::Mutex<Instant>,
    /// The exposure ledger's buffer and counts (§8).
    ledger: exposures::Ledger,
    /// The participants this replica's requests wait on (§5).
    watchers: watch::Watchers,
}

/// The store by its backend and the snapshot by its revision: a whole
/// configuration is too much for a log line.
impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store.backend())
            .field("revision", &self.snapshot.load().revision)
            .finish_non_exhaustive()
    }
}

/// Read-through lookups, one at a time: a request that misses waits for a
/// lookup that started after it arrived and shares its outcome, so however
/// many requests name unknown keys, a replica asks the store one question at
/// a time, and a key created before the request arrived is always found.
#[derive(Debug)]
struct Lookups {
    /// How many lookups have started.
    started: AtomicU64,
    /// The number of the last finished lookup and its outcome.
    last: Mutex<(u64, Result<(), EngineError>)>,
}

impl Default for Lookups {
    fn default() -> Self {
        Self {
            started: AtomicU64::new(0),
            last: Mutex::new((0, Ok(()))),
        }
    }
}

impl Engine {
    /// Loads the configuration from the store and builds the first
    /// snapshot, with the ledger's default limits.
    pub async fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        Self::load_with(store, exposures::LedgerOptions::default()).await
    }

    /// As [`Engine::load`], with the ledger's limits from the settings.
    pub async fn load_with(
        store: Arc<dyn Store>,
        ledger: exposures::LedgerOptions,
    ) -> Result<Self, StoreError> {
        experiments::store_missing_phases(store.as_ref()).await?;
        let loaded = store.load().await?;
        let counters = counters::Registry::default();
        let snapshot = Snapshot::from_loaded(loaded, &counters);
        let ledger = exposures::Ledger::new(ledger);
        ledger.track(&snapshot);
        Ok(Self {
            store,
            snapshot: ArcSwap::from_pointee(snapshot),
            writes: Mutex::new(()),
            routing_queues: routing::RoutingQueues::default(),
            counters,
            lookups: Lookups::default(),
            confirmed: std::sync::Mutex::new(Instant::now()),
            ledger,
            watchers: watch::Watchers::default(),
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
        self.ledger.track(&next);
        self.snapshot.store(Arc::new(next));
    }

    /// Installs the result of a store write that produced `revision`.
    /// If the snapshot is exactly one revision behind, `patch` builds the next
    /// one from it; otherwise other replicas wrote in between and the snapshot
    /// catches up with the store. The write itself has succeeded either way:
    /// if catching up fails, the change feed or the poll retries.
    async fn install(&self, revision: i64, patch: impl FnOnce(&Snapshot) -> Snapshot) {
        let current = self.snapshot.load_full();
        if current.revision + 1 == revision {
            self.swap(patch(&current));
            self.confirm();
        } else if current.revision < revision {
            if let Err(e) = self.catch_up_locked().await {
                e.count();
                tracing::warn!(error = %e, "catching up after a write failed; the refresher will retry");
            }
        }
    }

    /// Brings the snapshot to the store's revision, reloading only what
    /// changed since its own (the caller holds `writes`).
    async fn catch_up_locked(&self) -> Result<(), EngineError> {
        let current = self.snapshot.load_full();
        match self.store.catch_up(current.revision).await? {
            CatchUp::Current(_) => {}
            CatchUp::Delta(delta) => {
                tracing::debug!(
                    from = current.revision,
                    to = delta.revision,
                    "configuration changed"
                );
                self.swap(current.with_delta(delta, &self.counters));
            }
            CatchUp::Full(loaded) => {
                tracing::debug!(
                    from = current.revision,
                    to = loaded.revision,
                    "configuration reloaded"
                );
                self.swap(Snapshot::from_loaded(loaded, &self.counters));
            }
        }
        self.confirm();
        Ok(())
    }

    /// A write refused with 412 against a stored version this replica does
    /// not serve shows that its snapshot is behind (another replica wrote
    /// and the news has not arrived): it catches up before answering, so
    /// that its next read agrees with the refusal.
    pub(crate) async fn caught_up_after<T>(
        &self,
        result: Result<T, EngineError>,
        served: Option<i64>,
    ) -> Result<T, EngineError> {
        if let Err(EngineError::VersionMismatch { current, .. }) = &result {
            if *current != served {
                if let Err(e) = self.catch_up().await {
                    e.count();
                    tracing::warn!(error = %e, "catching up after a refused write failed; the refresher will retry");
                }
            }
        }
        result
    }

    /// Catches up with the store now.
    pub async fn catch_up(&self) -> Result<(), EngineError> {
        let _guard = self.writes.lock().await;
        self.catch_up_locked().await
    }

    /// Notes that the snapshot equals the store's configuration now.
    fn confirm(&self) {
        *self.confirmed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long ago the snapshot was last known to be current: the
    /// configuration's age, as far as this replica can tell.
    pub fn config_age(&self) -> Duration {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Catches up if the store's revision moved (a write by another replica,
    /// or by hand). Returns whether it did.
    pub async fn refresh(&self) -> Result<bool, EngineError> {
        let revision = self.store.revision().await?;
        if revision == self.snapshot.load().revision {
            self.confirm();
            return Ok(false);
        }
        let _guard = self.writes.lock().await;
        self.catch_up_locked().await?;
        Ok(true)
    }

    /// The entry `key` of the snapshot's map `entries`; a key the snapshot
    /// lacks is looked up in the store before it is called unknown (§7:
    /// create on one replica, use on another at once). A key that breaks
    /// the key syntax can never exist: no lookup.
    async fn read_through<E>(
        &self,
        key: &str,
        entries: impl Fn(&Snapshot) -> &HashMap<String, Arc<E>>,
    ) -> Result<Option<Arc<E>>, EngineError> {
        if let Some(entry) = entries(&self.snapshot()).get(key) {
            return Ok(Some(Arc::clone(entry)));
        }
        if crate::domain::ids::Key::parse(key).is_ok() {
            self.look_up().await?;
        }
        Ok(entries(&self.snapshot()).get(key).cloned())
    }

    /// Read-through: makes sure the snapshot holds every change committed
    /// before this call, sharing one look at the store with the calls that
    /// wait at the same time (see [`Lookups`]). For keys the snapshot lacks.
    pub(crate) async fn look_up(&self) -> Result<(), EngineError> {
        let wanted = self.lookups.started.load(Ordering::SeqCst) + 1;
        let mut last = self.lookups.last.lock().await;
        if last.0 >= wanted {
            return last.1.clone();
        }
        let number = self.lookups.started.fetch_add(1, Ordering::SeqCst) + 1;
        let outcome = self.refresh().await.map(|_| ());
        *last = (number, outcome.clone());
        outcome
    }

    /// Polls the store's revision every `every` until the task is dropped.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_every(every, "configuration refresh", |engine| async move {
            engine.refresh().await.map(|_| ())
        })
    }

    /// Follows the store's change feed, where it has one, until the task is
    /// aborted: each notified revision newer than the snapshot is caught up
    /// with at once, and every (re)connection catches up with whatever was
    /// missed while the feed was down.
    pub fn spawn_listener(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let (first, most) = RESUBSCRIBE_BACKOFF;
            let mut backoff = first;
            loop {
                match engine.store.subscribe().await {
                    Ok(None) => return,
                    Ok(Some(mut feed)) => loop {
                        let caught_up = match feed.next().await {
                            Ok(Signal::Changed(revision)) => {
                                if revision <= engine.snapshot.load().revision {
                                    continue;
                                }
                                engine.catch_up().await
                            }
                            Ok(Signal::Participant {
                                experiment_id,
                                participant_id,
                            }) => {
                                engine.watchers.wake(&experiment_id, &participant_id);
                                continue;
                            }
                            Ok(Signal::Connected) => {
                                tracing::debug!("configuration change feed connected");
                                engine.catch_up().await
                            }
                            Err(e) => {
                                count_store_error(&e);
                                tracing::warn!(error = %e, "the configuration change feed broke; subscribing again");
                                break;
                            }
                        };
                        backoff = first;
                        if let Err(e) = caught_up {
                            e.count();
                            tracing::warn!(error = %e, "catching up with a notified change failed; the refresher will retry");
                        }
                    },
                    Err(e) => {
                        count_store_error(&e);
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot subscribe to configuration changes; polling meanwhile");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(most);
            }
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
                    e.count();
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

/// A configuration entity (a flag, an experiment) as this replica serves
/// it: its document and the identity of its current version.
#[derive(Debug, Clone)]
pub struct Served<T> {
    pub key: String,
    pub version: i64,
    pub created_at: time::OffsetDateTime,
    pub updated_at: time::OffsetDateTime,
    pub document: T,
}

/// An entity whose stored document cannot be used (§3): listed with its
/// problem rather than hidden.
#[derive(Debug, Clone)]
pub struct Unusable {
    pub key: String,
    pub version: i64,
    pub problem: String,
}

/// One page of a listing, and the cursor of the next one if there is more.
#[derive(Debug, Clone)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

/// Snapshot entries sorted by key, each served or unusable.
fn list_sorted<E, T>(
    entries: &HashMap<String, Arc<E>>,
    serve: impl Fn(&E) -> Result<Served<T>, EngineError>,
    version: impl Fn(&E) -> i64,
) -> Vec<Result<Served<T>, Unusable>> {
    let mut keys: Vec<&String> = entries.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let entry = &entries[key];
            serve(entry).map_err(|e| Unusable {
                key: key.clone(),
                version: version(entry),
                problem: e.to_string(),
            })
        })
        .collect()
}

/// The engine on a real embedded store (no mock): two engines on one SQLite
/// file are two replicas that learn of each other only through the store.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::Engine;
    use crate::domain::ids::Key;
    use crate::store::{self, PoolOptions, Store};

    fn key(text: &str) -> Key {
        Key::parse(text).expect("a valid key")
    }

    async fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        let url = format!("sqlite://{}", dir.path().join("engine.db").display());
        let options = PoolOptions {
            max_connections: 4,
            acquire_timeout: std::time::Duration::from_secs(5),
        };
        let store = store::open(&url, &options).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    async fn replicas() -> (tempfile::TempDir, Arc<Engine>, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(Engine::load(store(&dir).await).await.unwrap());
        let b = Arc::new(Engine::load(store(&dir).await).await.unwrap());
        (dir, a, b)
    }

    #[tokio::test]
    async fn a_key_written_elsewhere_is_looked_up_before_it_is_called_unknown() {
        let (_dir, a, b) = replicas().await;
        a.put_flag(&key("f"), &json!({"enabled": true}), None, None)
            .await
            .unwrap();
        assert!(!b.snapshot().flags.contains_key("f"), "nothing told b");
        assert_eq!(b.get_flag("f").await.unwrap().version, 1);
        assert!(b.get_flag("never").await.is_err());
        // A key that breaks the key syntax never reaches the store.
        let before = b.lookups.started.load(std::sync::atomic::Ordering::SeqCst);
        assert!(b.get_flag("no spaces allowed").await.is_err());
        let after = b.lookups.started.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(before, after);
    }

    /// Twenty misses at once share lookups: the first starts one, and all
    /// that arrive while it runs share the next (the current-thread runtime
    /// makes the interleaving exact).
    #[tokio::test]
    async fn concurrent_misses_share_their_lookups() {
        let (_dir, a, b) = replicas().await;
        a.put_flag(&key("f"), &json!({"enabled": true}), None, None)
            .await
            .unwrap();
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let b = Arc::clone(&b);
                tokio::spawn(async move { b.get_flag("f").await.map(|v| v.version) })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), 1);
        }
        let started = b.lookups.started.load(std::sync::atomic::Ordering::SeqCst);
        assert!(started <= 2, "{started} lookups for 20 misses");
    }

    /// A write made while other replicas' writes have not arrived brings
    /// the snapshot to the store's revision, with every change in it.
    #[tokio::test]
    async fn a_write_behind_the_store_catches_up_with_what_it_missed() {
        let (_dir, a, b) = replicas().await;
        b.put_flag(&key("from-b"), &json!({"enabled": true}), None, None)
            .await
            .unwrap();
        b.put_experiment(&key("e-b"), &json!({}), None, None)
            .await
            .unwrap();
        a.put_flag(&key("from-a"), &json!({"enabled": false}), None, None)
            .await
            .unwrap();
        let snapshot = a.snapshot();
        assert_eq!(snapshot.revision, b.store().revision().await.unwrap());
        assert!(snapshot.flags.contains_key("from-b"));
        assert!(snapshot.flags.contains_key("from-a"));
        assert!(snapshot.experiments.contains_key("e-b"));
    }
}
