//! Waiting for a change (§5): `GET …/participants/{id}?wait_seconds=N&
//! status=S` holds the request until the participant's status is no longer
//! `S`, whichever replica changed it.
//!
//! A waiting request registers its participant here and then holds no
//! database connection: it re-reads the participant only when woken. Wakes
//! come from the store's change feed on PostgreSQL (every routing event is
//! notified to every replica as it commits, migration 0011), with a re-read
//! of the statuses of every waited-on participant each
//! [`RECHECK_EVERY`] in case a notification was lost. On SQLite, where one
//! process writes and events are numbered in commit order, a task reads the
//! events written since its last look every [`POLL_EVERY`].
//!
//! A held long-poll is a sign of life (§5 "Liveness"): the participant's tab
//! is open and waiting for the answer. With a liveness timeout, the replica
//! holding it marks its participant heard from again every third of that
//! timeout ([`KEEP_ALIVE_EVERY`] at most often), in one statement per
//! experiment, so a front end may wait longer than the timeout without
//! going silent; one that had gone silent meanwhile is matched again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::routing::RoutedParticipant;
use super::{count_store_error, Engine, EngineError};
use crate::domain::routing::lifecycle::ParticipantStatus;

/// How often a replica re-reads the statuses waited on, where changes are
/// pushed to it (a lost notification costs at most this much delay).
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// How often a replica reads the new routing events, where changes are not
/// pushed.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Events read per query by the poll.
const EVENTS_PER_READ: i64 = 5_000;

/// How often a replica looks for held long-polls whose participants are
/// due to be marked heard from again.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(500);

/// (experiment id, participant id).
type Key = (String, String);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One waited-on participant: its wake-up signal, and the statuses its
/// requests wait to see change, with how many wait on each.
#[derive(Debug)]
struct Slot {
    wake: watch::Sender<()>,
    awaited: HashMap<&'static str, usize>,
    /// When this replica last marked the participant heard from (a
    /// long-poll begins with that).
    heard: tokio::time::Instant,
}

/// Woken requests re-reading their participant at once, at most: a group
/// of ten thousand forming wakes ten thousand polls, whose reads would
/// otherwise all wait for the store's few connections and fail when the
/// wait for one runs out. In turn, they answer within about a second.
const CONCURRENT_REREADS: usize = 8;

/// The participants this replica's requests wait on.
#[derive(Debug)]
pub struct Watchers {
    slots: Mutex<HashMap<Key, Slot>>,
    /// Permits to re-read a woken participant ([`CONCURRENT_REREADS`]).
    rereads: tokio::sync::Semaphore,
    /// Shutdown began: nobody waits any more.
    closed: std::sync::atomic::AtomicBool,
}

/// One waiting request's registration; dropping it unregisters.
#[derive(Debug)]
pub struct Waiter<'a> {
    watchers: &'a Watchers,
    key: Key,
    status: &'static str,
    woken: watch::Receiver<()>,
}

impl Waiter<'_> {
    /// Until the participant may have changed since registration or the
    /// last wake-up.
    pub async fn woken(&mut self) {
        // The sender lives as long as a waiter does.
        let _ = self.woken.changed().await;
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut slots = lock(&self.watchers.slots);
        if let Some(slot) = slots.get_mut(&self.key) {
            if let Some(n) = slot.awaited.get_mut(self.status) {
                *n -= 1;
                if *n == 0 {
                    slot.awaited.remove(self.status);
                }
            }
            if slot.awaited.is_empty() {
                slots.remove(&self.key);
            }
        }
    }
}

impl Default for Watchers {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
            rereads: tokio::sync::Semaphore::new(CONCURRENT_REREADS),
            closed: std::sync::atomic::AtomicBool::default(),
        }
    }
}

impl Watchers {
    /// Registers a request waiting for participant `participant_id` of
    /// experiment `experiment_id` to leave `status`. Register before
    /// reading the participant: a change committed after the read wakes it.
    pub fn register(
        &self,
        experiment_id: &str,
        participant_id: &str,
        status: &'static str,
    ) -> Waiter<'_> {
        let key = (experiment_id.to_owned(), participant_id.to_owned());
        let mut slots = lock(&self.slots);
        let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
            wake: watch::channel(()).0,
            awaited: HashMap::new(),
            heard: tokio::time::Instant::now(),
        });
        *slot.awaited.entry(status).or_default() += 1;
        let mut woken = slot.wake.subscribe();
        woken.mark_unchanged();
        Waiter {
            watchers: self,
            key,
            status,
            woken,
        }
    }

    /// Wakes the requests waiting on this participant, if any.
    pub fn wake(&self, experiment_id: &str, participant_id: &str) {
        let slots = lock(&self.slots);
        if let Some(slot) = slots.get(&(experiment_id.to_owned(), participant_id.to_owned())) {
            slot.wake.send_replace(());
        }
    }

    /// Wakes every waiting request and lets none wait from now on.
    fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for slot in lock(&self.slots).values() {
            slot.wake.send_replace(());
        }
    }

    fn closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        lock(&self.slots)
            .values()
            .map(|s| s.awaited.values().sum::<usize>())
            .sum()
    }

    fn keys(&self) -> Vec<Key> {
        lock(&self.slots).keys().cloned().collect()
    }

    /// The held participants not marked heard from for `every(experiment
    /// id)` (`None`: never due), marked as heard from now.
    fn due(&self, every: impl Fn(&str) -> Option<Duration>) -> Vec<Key> {
        let now = tokio::time::Instant::now();
        let mut slots = lock(&self.slots);
        let mut due = Vec::new();
        for (key, slot) in slots.iter_mut() {
            if every(&key.0).is_some_and(|e| now.duration_since(slot.heard) >= e) {
                slot.heard = now;
                due.push(key.clone());
            }
        }
        due
    }

    /// Wakes the requests whose participant's stored status is not the one
    /// they wait on (a missed notification), and those whose participant
    /// is gone.
    fn wake_changed(&self, stored: &HashMap<Key, String>) {
        let slots = lock(&self.slots);
        for (key, slot) in slots.iter() {
            let moved = match stored.get(key) {
                Some(status) => slot.awaited.keys().any(|s| *s != status.as_str()),
                None => true,
            };
            if moved {
                slot.wake.send_replace(());
            }
        }
    }
}

impl Engine {
    /// Wakes waiting requests as participants change (see the module
    /// documentation), until the task is aborted. Where the store pushes
    /// changes, the engine's listener delivers them and this task only
    /// re-reads statuses every [`RECHECK_EVERY`] while requests wait.
    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        let keeper = Arc::clone(self);
        let keep_alive = async move {
            let mut ticker = tokio::time::interval(KEEP_ALIVE_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(e) = keeper.keep_alive_held().await {
                    e.count();
                    tracing::warn!(error = %e, "marking held long-polls heard from failed");
                }
            }
        };
        let watch = async move {
            if engine.store.announces_participants() {
                loop {
                    tokio::time::sleep(RECHECK_EVERY).await;
                    if let Err(e) = engine.recheck_waiters().await {
                        count_store_error(&e);
                        tracing::warn!(error = %e, "re-reading the statuses waited on failed");
                    }
                }
            }
            let mut last = None;
            loop {
                match engine.poll_events(last).await {
                    Ok(newest) => last = Some(newest),
                    Err(e) => {
                        count_store_error(&e);
                        tracing::warn!(error = %e, "reading participant changes failed");
                    }
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
        };
        tokio::spawn(async move {
            tokio::join!(watch, keep_alive);
        })
    }

    /// Marks the participants of held long-polls heard from again, every
    /// third of their experiment's liveness timeout; matches again those
    /// that had gone silent.
    async fn keep_alive_held(self: &Arc<Self>) -> Result<(), EngineError> {
        let snapshot = self.snapshot();
        // Experiment id → (key, liveness timeout).
        let studies: HashMap<&str, (&str, Duration)> = snapshot
            .experiments
            .values()
            .filter_map(|entry| {
                let routing = entry.experiment.as_ref().ok()?.routing.as_ref()?;
                let timeout = Duration::from_secs(routing.config.liveness_timeout_seconds?);
                Some((entry.id.as_str(), (entry.key.as_str(), timeout)))
            })
            .collect();
        if studies.is_empty() {
            return Ok(());
        }
        let due = self
            .watchers
            .due(|id| studies.get(id).map(|(_, timeout)| *timeout / 3));
        let mut by_experiment: HashMap<String, Vec<String>> = HashMap::new();
        for (experiment, participant) in due {
            by_experiment
                .entry(experiment)
                .or_default()
                .push(participant);
        }
        for (experiment, participants) in by_experiment {
            let Some((key, timeout)) = studies.get(experiment.as_str()) else {
                continue;
            };
            let now = time::OffsetDateTime::now_utc();
            let cutoff = time::Duration::try_from(*timeout)
                .ok()
                .and_then(|t| now.checked_sub(t))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let back = self
                .store
                .keep_alive(&experiment, &participants, cutoff)
                .await?;
            for id in back {
                if let Ok(id) = crate::domain::ids::ParticipantId::parse(&id) {
                    self.rematch_participant(key, &id).await?;
                }
            }
        }
        Ok(())
    }

    /// `GET …/participants/{id}?wait_seconds=…&status=…`: the participant
    /// as soon as its status is not `status` (absent: the status it has
    /// now), or after `within` with its state then.
    pub async fn wait_for_participant(
        &self,
        key: &str,
        participant_id: &str,
        status: Option<ParticipantStatus>,
        within: Duration,
    ) -> Result<RoutedParticipant, EngineError> {
        let deadline = tokio::time::Instant::now() + within;
        let experiment_id = self.routable(key).await?.id.clone();
        let status = match status {
            Some(s) => s,
            None => {
                self.get_participant(key, participant_id)
                    .await?
                    .participant
                    .status
            }
        };
        let mut waiter = self
            .watchers
            .register(&experiment_id, participant_id, status.as_str());
        loop {
            let now = {
                // Never closed, so a permit always comes.
                let _permit = self.watchers.rereads.acquire().await;
                self.get_participant(key, participant_id).await?
            };
            if now.participant.status != status || self.watchers.closed() {
                return Ok(now);
            }
            if tokio::time::timeout_at(deadline, waiter.woken())
                .await
                .is_err()
            {
                // The state now, should a change have gone unannounced.
                return self.get_participant(key, participant_id).await;
            }
        }
    }

    /// Requests of this replica waiting for a change now.
    pub fn waiting_requests(&self) -> usize {
        self.watchers.waiting()
    }

    /// Shutdown began: requests waiting for a change answer at once.
    pub fn stop_waiting(&self) {
        self.watchers.close();
    }

    async fn recheck_waiters(&self) -> Result<(), crate::store::StoreError> {
        let keys = self.watchers.keys();
        if keys.is_empty() {
            return Ok(());
        }
        let stored: HashMap<Key, String> = self
            .store
            .participant_statuses(&keys)
            .await?
            .into_iter()
            .map(|(e, p, s)| ((e, p), s))
            .collect();
        self.watchers.wake_changed(&stored);
        Ok(())
    }

    /// Reads the events after `last` (all of them, page by page) and wakes
    /// their participants' requests; answers the newest event id seen.
    async fn poll_events(&self, last: Option<i64>) -> Result<i64, crate::store::StoreError> {
        let Some(mut last) = last else {
            return self.store.newest_event_id().await;
        };
        loop {
            let events = self.store.events_after(last, EVENTS_PER_READ).await?;
            let full = i64::try_from(events.len()).unwrap_or(i64::MAX) >= EVENTS_PER_READ;
            for (id, experiment, participant) in events {
                self.watchers.wake(&experiment, &participant);
                last = id;
            }
            if !full {
                return Ok(last);
            }
        }
    }
}
