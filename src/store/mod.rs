//! Persistence: one [`Store`] trait, a PostgreSQL and an SQLite implementation.
//!
//! The store only persists and locks; it does not interpret configs. Every
//! configuration write runs in one transaction whose first statement bumps the
//! single-row `config_revision` counter: that row lock serialises configuration
//! writers across replicas on PostgreSQL, and takes SQLite's write lock up
//! front (no deferred-transaction upgrade deadlocks). The same transaction
//! records what it changed under the new revision (`config_changes`) and, on
//! PostgreSQL, notifies every replica as it commits; a replica then asks
//! [`Store::catch_up`] for the entities changed since its own revision.
//! Writes are checked against the stored rows inside their transaction
//! (If-Match, existence, deletion), never against a replica's cached copy.

mod postgres;
mod rows;
mod sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use crate::domain::precondition::Precondition;
use crate::domain::routing::lifecycle::{BackfillWindow, Changes, Cohort, Participant, State};
use crate::domain::routing::pool::EntryRead;
use crate::domain::routing::CohortDef;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// `If-Match` does not admit the stored version (`None`: there is no
    /// live entity), checked inside the write's transaction.
    #[error("the stored version is {current:?}")]
    VersionMismatch { current: Option<i64> },
    /// A referenced row does not exist (an eligibility flag that is not
    /// live), found by the check the write makes in its transaction.
    #[error("missing reference")]
    MissingReference,
    /// The change would break a reference (e.g. deleting a flag in use).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached, went away (a restart, a fast
    /// shutdown, a broken connection) or is out of capacity: not the
    /// client's fault, and worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused a statement for a reason that is allot's, not
    /// the client's.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Stored data allot cannot read, or a setup step that failed.
    #[error("store error: {0}")]
    Other(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            // A connection that broke or never came up (a reset, a refused or
            // garbled handshake, a crashed worker) is the store being
            // unreachable, not the client's fault.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => StoreError::Unavailable(e),
            // A constraint violation is not mapped to an outcome here:
            // configuration writes are serialised and check their references
            // in their transaction, and participant and sticky writes insert
            // with ON CONFLICT, so a violation is a bug and stays one.
            sqlx::Error::Database(db) if went_away(db.as_ref()) => StoreError::Unavailable(e),
            _ => StoreError::Database(e),
        }
    }
}

/// Database errors that mean "the server or the connection went away, or is
/// out of capacity": transient, and never the client's fault.
fn went_away(db: &dyn sqlx::error::DatabaseError) -> bool {
    let code = db.code();
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        sqlite_went_away(code.as_deref())
    } else {
        postgres_went_away(code.as_deref())
    }
}

/// SQLSTATEs: class 08 (connection exception), 57P0x (admin or crash
/// shutdown, cannot connect now, database dropped), class 53 (insufficient
/// resources: too many connections, disk full, out of memory), 40001 and
/// 40P01 (serialization failure, deadlock: retryable by definition), 55P03
/// (lock not available) and 57014 (statement cancelled, e.g. by a timeout).
fn postgres_went_away(code: Option<&str>) -> bool {
    code.is_some_and(|code| {
        code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P0")
            || matches!(code, "40001" | "40P01" | "55P03" | "57014")
    })
}

/// Extended result codes, the primary code in the low byte: BUSY (5),
/// LOCKED (6), IOERR (10), FULL (13), CANTOPEN (14).
fn sqlite_went_away(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14))
}

#[derive(Debug, Clone)]
pub struct FlagRecord {
    pub key: String,
    pub version: i64,
    /// The stored JSON text, parsed by the engine (a hand-edited row may not parse).
    pub config: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct OverrideRecord {
    pub flag_key: String,
    pub org_id: String,
    pub enabled: bool,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct ExperimentRecord {
    /// Generated per incarnation of a key: a deleted and re-created
    /// experiment starts afresh while the old rows stay for analysis.
    pub id: String,
    pub key: String,
    pub version: i64,
    /// The stored JSON text of the current version's config.
    pub config: String,
    /// The stored JSON text of the current version's layout ranges.
    pub layout: String,
    /// The current version's phase (§3); `None` only for a version stored
    /// before phases were, until the engine fills it in.
    pub phase: Option<i64>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct VersionRecord {
    /// The incarnation the version belongs to.
    pub experiment_id: String,
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub actor: Option<String>,
    pub config: String,
    pub layout: String,
    /// The version that deleted the experiment (its config is `null`).
    pub deleted: bool,
    /// Its phase, as stored (`None`: stored before phases were).
    pub phase: Option<i64>,
}

/// One change of a flag or of its overrides, as its history lists it (§2).
#[derive(Debug, Clone)]
pub struct FlagEventRecord {
    pub id: i64,
    pub at: OffsetDateTime,
    pub actor: Option<String>,
    /// `created`, `updated`, `deleted`, `override_set`, `override_removed`.
    pub action: String,
    pub version: i64,
    pub org_id: Option<String>,
    pub enabled: Option<bool>,
    /// The stored document's text (created, updated).
    pub config: Option<String>,
}

/// One exposure for the ledger (§8): the first `assigned` or `sticky`
/// answer a replica saw for a unit in a phase.
#[derive(Debug, Clone)]
pub struct ExposureRecord {
    /// The experiment's key: phases number on across its incarnations.
    pub experiment: Arc<str>,
    pub phase: i64,
    pub org_id: String,
    pub unit_id: String,
    pub treatment: String,
    pub bucket: Option<u16>,
    /// `assigned` or `sticky`.
    pub reason: &'static str,
    pub first_seen: OffsetDateTime,
}

/// The counter kind of ledger records lost before reaching the store: to a
/// full buffer, a failed flush, or a replica that died holding them.
pub const DROPPED: &str = "dropped";

/// What one replica holds of the ledger in memory (§8), written with each of
/// its flushes and checkpoints so that the records of a replica that dies
/// before writing them are counted as dropped by another.
#[derive(Debug, Clone)]
pub struct Holdings {
    /// The replica (a UUID per process).
    pub replica: Arc<str>,
    /// Records held per (experiment, phase); empty deletes the replica's rows.
    pub held: Vec<(Arc<str>, i64, u64)>,
    /// Now, in milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// Other replicas' rows last renewed before this (milliseconds since the
    /// epoch) are of replicas that died: their records count as dropped.
    pub stale_before_ms: i64,
}

/// An amount to add to one of a phase's counters: answers without a
/// treatment by reason, or records dropped (`treatment` empty).
#[derive(Debug, Clone)]
pub struct CountIncrement {
    pub experiment: Arc<str>,
    pub phase: i64,
    pub kind: &'static str,
    pub treatment: String,
    pub count: u64,
}

/// One of a phase's counters, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRecord {
    pub phase: i64,
    /// `assigned`, `sticky`, `moved` (per treatment: ledger rows), a reason
    /// without a treatment, or `dropped` (answers or records).
    pub kind: String,
    pub treatment: String,
    pub count: i64,
}

/// One row of the ledger, as exported.
#[derive(Debug, Clone)]
pub struct LedgerRow {
    pub org_id: String,
    pub unit_id: String,
    pub treatment: String,
    pub bucket: Option<i32>,
    pub reason: String,
    pub first_seen: OffsetDateTime,
}

/// Everything the in-memory snapshot is built from, read consistently.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub revision: i64,
    pub flags: Vec<FlagRecord>,
    pub overrides: Vec<OverrideRecord>,
    pub experiments: Vec<ExperimentRecord>,
}

/// What one configuration revision changed: the entity a replica reloads
/// to catch up with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// A flag with its overrides (created, updated or deleted).
    Flag(String),
    /// One org override of a flag.
    Override { flag: String, org_id: String },
    /// The live experiment under a key (created, updated or deleted).
    Experiment(String),
}

impl Change {
    /// As stored in `config_changes`: (kind, key, org_id).
    pub(crate) fn parts(&self) -> (&'static str, &str, Option<&str>) {
        match self {
            Change::Flag(key) => ("flag", key, None),
            Change::Override { flag, org_id } => ("override", flag, Some(org_id)),
            Change::Experiment(key) => ("experiment", key, None),
        }
    }

    /// The inverse of [`Change::parts`]; `None` for a row allot did not write.
    pub(crate) fn from_parts(kind: &str, key: String, org_id: Option<String>) -> Option<Self> {
        match (kind, org_id) {
            ("flag", None) => Some(Change::Flag(key)),
            ("override", Some(org_id)) => Some(Change::Override { flag: key, org_id }),
            ("experiment", None) => Some(Change::Experiment(key)),
            _ => None,
        }
    }
}

/// A live flag and every override of it.
pub type FlagWithOverrides = (FlagRecord, Vec<OverrideRecord>);

/// The entities that changed after a revision, as they are now.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// The revision the entities are read at.
    pub revision: i64,
    /// Each changed flag with all its overrides, or `None` if it is gone.
    pub flags: Vec<(String, Option<FlagWithOverrides>)>,
    /// Changed overrides of flags not in `flags`: `None` if removed.
    pub overrides: Vec<(String, String, Option<bool>)>,
    /// Each changed experiment key with its live experiment, if any.
    pub experiments: Vec<(String, Option<ExperimentRecord>)>,
}

impl Delta {
    /// The entities to reload for `changes`, each once, in first-seen order;
    /// a flag's reload covers its overrides.
    pub fn entities(changes: Vec<Change>) -> Vec<Change> {
        let flags: std::collections::HashSet<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Flag(key) => Some(key.clone()),
                _ => None,
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        changes
            .into_iter()
            .filter(|c| match c {
                Change::Override { flag, .. } => !flags.contains(flag),
                _ => true,
            })
            .filter(|c| seen.insert(c.clone()))
            .collect()
    }
}

/// How a snapshot at some revision catches up with the store.
#[derive(Debug, Clone)]
pub enum CatchUp {
    /// Nothing changed: the store is at this revision.
    Current(i64),
    /// Only these entities changed.
    Delta(Delta),
    /// Too much changed, or what changed is unknown: everything.
    Full(Loaded),
}

/// What a [`ChangeFeed`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A configuration write committed with this revision.
    Changed(i64),
    /// The feed (re)connected: changes may have been missed before.
    Connected,
    /// A participant's status changed (a routing event was written).
    Participant {
        experiment_id: String,
        participant_id: String,
    },
}

/// Configuration changes pushed by the store as they commit.
#[async_trait]
pub trait ChangeFeed: Send {
    /// Waits for the next signal. An error means the feed is broken:
    /// subscribe again.
    async fn next(&mut self) -> Result<Signal, StoreError>;
}

/// An experiment version that was stored.
#[derive(Debug, Clone)]
pub struct ExperimentWritten {
    pub record: ExperimentRecord,
    pub revision: i64,
    /// No live experiment had the key before (a first or a new incarnation).
    pub created: bool,
}

/// A flag version that was stored.
#[derive(Debug, Clone)]
pub struct FlagWritten {
    pub record: FlagRecord,
    pub revision: i64,
    /// No live flag had the key before (a first or a new incarnation).
    pub created: bool,
}

/// A new experiment version, as the engine plans it.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub config: Value,
    pub layout: Value,
    pub eligibility_flag: Option<String>,
    pub actor: Option<String>,
    /// The version starts a phase (§3): its randomization differs from
    /// the live version's, or there is no live version. Otherwise it
    /// continues the live version's phase.
    pub starts_phase: bool,
    /// The defined cohorts: created, updated or removed with the version
    /// (removing one with members, or shrinking it below them, is a
    /// [`StoreError::Conflict`] and nothing is written).
    pub cohorts: Vec<CohortDef>,
}

/// The engine's decision, given the entity's current version (or `None`)
/// read under the configuration lock: what to write, if anything.
#[derive(Debug, Clone)]
pub enum Plan<T> {
    Write(T),
    /// Write nothing (unchanged document, failed precondition, …).
    Abandon,
}

/// Plans a write from the current version of a `R`; called once, inside
/// the store's transaction, so nothing can change between the read and the
/// write. The store interprets no document: every rule is the planner's.
pub type Planner<'a, R, T> = &'a (dyn Fn(Option<&R>) -> Plan<T> + Send + Sync);

/// The routing planner's configuration is not the stored version it was
/// given: nothing was written; catch up and plan again.
#[derive(Debug, Clone, Copy)]
pub struct StaleConfig;

/// Plans routing calls from the experiment's stored version and its routing
/// state, read under the experiment's routing lock, in two steps: which
/// waiting participants to read, then the changes.
pub trait RoutePlanner: Send + Sync {
    /// The entries whose candidates the transaction must read
    /// ([`crate::domain::routing::pool`]), given the participants the calls
    /// are about and the waiting ones with stale slots.
    fn pool(
        &self,
        version: i64,
        subjects: &[Participant],
        stale: &[Participant],
        backfill: &[BackfillWindow],
    ) -> Result<Vec<EntryRead>, StaleConfig>;
    fn plan(&self, version: i64, state: State) -> Result<Changes, StaleConfig>;
}

/// A routing call that was applied: the changes, and the cohorts it read
/// (every aliased one and the subject's) plus those it created.
#[derive(Debug, Clone)]
pub struct Routed {
    pub changes: Changes,
    pub cohorts: Vec<Cohort>,
}

/// How a routing transaction ended.
#[derive(Debug, Clone)]
pub enum RouteOutcome {
    /// The plan was applied (or changed nothing).
    Routed(Routed),
    /// The planner's configuration is not the stored version: nothing was
    /// written; catch up and plan again.
    Stale,
}

/// An override that was stored.
#[derive(Debug, Clone)]
pub struct OverrideWritten {
    pub record: OverrideRecord,
    /// There was no override for this org before.
    pub created: bool,
    pub revision: i64,
}

/// What a routing transaction must read beyond the subject and the cohorts.
/// The waiting pool is read as the planner's [`RoutePlanner::pool`] says
/// (the whole pool only when the stored slots are for another version),
/// with every overdue participant.
#[derive(Debug, Clone)]
pub struct RouteScope {
    pub wait_timeout_seconds: Option<u64>,
    /// Candidates read for an entry are live ones only.
    pub liveness_timeout_seconds: Option<u64>,
    /// Cohorts the calls name (a move's target), read with the others.
    pub cohort_ids: Vec<String>,
}

/// A participant heard from (see [`Store::touch`]).
#[derive(Debug, Clone)]
pub struct Touched {
    /// As stored afterwards.
    pub participant: Participant,
    /// Its `last_seen` before this call.
    pub previously_seen: OffsetDateTime,
}

/// The experiments the timeout sweeper asks about: (id, the `waiting_since`
/// at or before which a waiting participant is overdue, if it has a wait
/// timeout).
pub type SweepCutoff<'a> = (&'a str, Option<OffsetDateTime>);

/// One stored audit event with its cursor.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub id: i64,
    pub at: OffsetDateTime,
    pub event: crate::domain::routing::lifecycle::Event,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "postgres" or "sqlite", for logs and probes.
    fn backend(&self) -> &'static str;
    /// The connection pool: (open, idle, max), for metrics.
    fn pool_status(&self) -> (u32, u32, u32);
    async fn migrate(&self) -> Result<(), StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    /// The configuration revision: bumped by every configuration write.
    async fn revision(&self) -> Result<i64, StoreError>;
    async fn load(&self) -> Result<Loaded, StoreError>;
    /// What changed after revision `since`, read consistently with the
    /// revision it brings the caller to.
    async fn catch_up(&self, since: i64) -> Result<CatchUp, StoreError>;
    /// A feed of configuration changes as they commit, where the store
    /// pushes them (PostgreSQL); `None` where replicas only poll.
    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError>;

    /// Reads the live flag `key` under the configuration lock, asks `plan`
    /// what to do, and stores the document it returns as the next version
    /// (a deleted flag's key continues its versions). `None` when it
    /// abandoned.
    /// The write and its history event are one transaction; `actor` is
    /// the token's name.
    async fn write_flag(
        &self,
        key: &str,
        plan: Planner<'_, FlagRecord, Value>,
        actor: Option<&str>,
    ) -> Result<Option<FlagWritten>, StoreError>;
    /// Deletes a flag and its overrides (the deletion is a version);
    /// [`StoreError::Conflict`] while a live experiment names it. Returns the
    /// new revision.
    async fn delete_flag(
        &self,
        key: &str,
        expected: Option<&Precondition>,
        actor: Option<&str>,
    ) -> Result<i64, StoreError>;
    /// Sets an org override of a live flag ([`StoreError::NotFound`] if
    /// there is none).
    async fn set_override(
        &self,
        flag_key: &str,
        org_id: &str,
        enabled: bool,
        actor: Option<&str>,
    ) -> Result<OverrideWritten, StoreError>;
    async fn delete_override(
        &self,
        flag_key: &str,
        org_id: &str,
        actor: Option<&str>,
    ) -> Result<i64, StoreError>;
    /// The flag's history events, newest first, with ids below `before`;
    /// `None` when no flag ever had the key.
    async fn flag_history(
        &self,
        flag_key: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Option<Vec<FlagEventRecord>>, StoreError>;
    async fn list_overrides(
        &self,
        flag_key: &str,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<OverrideRecord>, StoreError>;

    /// Reads the live experiment `key` under the configuration lock, asks
    /// `plan` what to do, and stores the new version it returns (a new
    /// incarnation when there is none, continuing the key's versions).
    /// `None` when it abandoned.
    async fn write_experiment(
        &self,
        key: &str,
        plan: Planner<'_, ExperimentRecord, NewVersion>,
    ) -> Result<Option<ExperimentWritten>, StoreError>;
    /// Takes the live experiment out of service, recording the deletion as
    /// a version by `actor`. Returns the new revision.
    async fn delete_experiment(
        &self,
        key: &str,
        expected: Option<&Precondition>,
        actor: Option<&str>,
    ) -> Result<i64, StoreError>;
    /// Every version of every incarnation of `key`, newest first.
    async fn experiment_versions(&self, key: &str) -> Result<Vec<VersionRecord>, StoreError>;
    /// The keys with a version whose phase is not stored (written before
    /// phases were).
    async fn keys_without_phases(&self) -> Result<Vec<String>, StoreError>;
    /// Stores the phase of versions that have none: (incarnation, version,
    /// phase). A phase already stored is kept.
    async fn set_phases(&self, phases: &[(String, i64, i64)]) -> Result<(), StoreError>;

    /// Adds exposures to the ledger (one row per experiment, phase, org and
    /// unit: a row already there is kept) and `counts` to the counters, in
    /// one transaction. The counters of the rows actually added (per
    /// treatment: `assigned`, `sticky`, `moved`) are kept in the same
    /// transaction. The same transaction replaces the replica's
    /// `holdings`, and adds to the `dropped` counters what replicas that
    /// stopped renewing theirs held (deleting their rows); it answers that
    /// number of records.
    async fn record_exposures(
        &self,
        exposures: &[ExposureRecord],
        counts: &[CountIncrement],
        holdings: &Holdings,
    ) -> Result<u64, StoreError>;
    /// Every counter of every phase of the experiment `key`.
    async fn exposure_counts(&self, key: &str) -> Result<Vec<CountRecord>, StoreError>;
    /// Up to `limit` ledger rows of a phase, by (org, unit), after `after`.
    async fn ledger_page(
        &self,
        key: &str,
        phase: i64,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<LedgerRow>, StoreError>;

    /// The stored sticky treatment of a unit, if any.
    async fn sticky_get(
        &self,
        experiment_id: &str,
        org_id: &str,
        unit_id: &str,
    ) -> Result<Option<String>, StoreError>;
    /// The stored sticky treatments of several units, as (org, unit, treatment).
    async fn sticky_get_many(
        &self,
        experiment_id: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String, String)>, StoreError>;
    /// Stores (org, unit, treatment) rows where none exists (first write
    /// wins); read them back with [`Store::sticky_get_many`] to learn the winners.
    async fn sticky_insert_many(
        &self,
        experiment_id: &str,
        version: i64,
        rows: &[(String, String, String)],
    ) -> Result<(), StoreError>;
    /// First write wins: stores `treatment` unless a row exists, or, with
    /// `replace = Some(old)`, replaces the row only while it still holds
    /// `old`. Returns what is stored afterwards.
    async fn sticky_claim(
        &self,
        experiment_id: &str,
        org_id: &str,
        unit_id: &str,
        treatment: &str,
        version: i64,
        replace: Option<&str>,
    ) -> Result<String, StoreError>;

    /// Runs routing calls for experiment `experiment_id` in one transaction:
    /// lock the experiment's routing, read its state (the participants
    /// `participant_ids` as subjects), plan, write the changes and their
    /// events. Writes nothing when the plan changes nothing.
    async fn route(
        &self,
        experiment_id: &str,
        participant_ids: &[String],
        scope: RouteScope,
        planner: &dyn RoutePlanner,
    ) -> Result<RouteOutcome, StoreError>;
    /// Registers a participant (status `new`) or replaces its attributes,
    /// without the routing lock. Returns it and whether it was created;
    /// [`StoreError::NotFound`] if the experiment is deleted.
    async fn register(
        &self,
        experiment_id: &str,
        participant_id: &str,
        attributes: &Value,
    ) -> Result<(Participant, bool), StoreError>;
    async fn participant(
        &self,
        experiment_id: &str,
        participant_id: &str,
    ) -> Result<Option<Participant>, StoreError>;
    /// Records that a participant was heard from now (`last_seen` only moves
    /// forward), without the routing lock; `None` if there is no such
    /// participant.
    async fn touch(
        &self,
        experiment_id: &str,
        participant_id: &str,
    ) -> Result<Option<Touched>, StoreError>;
    /// Participants oldest first (by registration, then id), of one status
    /// or all, after the participant `after`; `None` when `after` names no
    /// participant of the experiment.
    async fn list_participants(
        &self,
        experiment_id: &str,
        status: Option<&str>,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Option<Vec<Participant>>, StoreError>;
    /// Every cohort of the experiment in creation order, with member counts.
    async fn cohorts(&self, experiment_id: &str) -> Result<Vec<Cohort>, StoreError>;
    /// The experiment's cohorts among `ids` (a participant answer names its
    /// own: reading every cohort for it would cost more the more groups formed).
    async fn cohorts_named(
        &self,
        experiment_id: &str,
        ids: &[&str],
    ) -> Result<Vec<Cohort>, StoreError>;
    async fn cohort_participants(
        &self,
        experiment_id: &str,
        cohort_id: &str,
    ) -> Result<Vec<Participant>, StoreError>;
    /// The id of the newest routing event (0 when there is none).
    async fn newest_event_id(&self) -> Result<i64, StoreError>;
    /// The routing events written after event `after` (ids in commit order
    /// only where one writer commits at a time: SQLite), oldest first, at
    /// most `limit`: (event id, experiment id, participant id).
    async fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError>;
    /// The statuses of these participants, (experiment id, participant id),
    /// as stored: (experiment id, participant id, status).
    async fn participant_statuses(
        &self,
        participants: &[(String, String)],
    ) -> Result<Vec<(String, String, String)>, StoreError>;
    /// Participants of one experiment whose long-polls this replica holds
    /// are still there: their `last_seen` becomes now. Answers those that
    /// were waiting and not live (heard from before `live_cutoff`), whom
    /// matching must see again.
    async fn keep_alive(
        &self,
        experiment_id: &str,
        participant_ids: &[String],
        live_cutoff: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError>;
    /// Whether the store's feed announces participant changes
    /// ([`Signal::Participant`]); where it does not, replicas read them
    /// with [`Store::events_after`].
    fn announces_participants(&self) -> bool;
    /// Audit events, newest first, with ids below `before`.
    async fn routing_events(
        &self,
        experiment_id: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<EventRecord>, StoreError>;
    /// Of the experiments in `cutoffs`, those with a participant waiting
    /// since its cutoff or earlier, or a pending participant whose
    /// acceptance deadline is `now` or earlier, in one query however many
    /// there are (the timeout sweeper asks on every tick, on every replica).
    async fn overdue_experiments(
        &self,
        cutoffs: &[SweepCutoff<'_>],
        now: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::{postgres_went_away, sqlite_went_away, Change, Delta};

    #[test]
    fn a_change_is_stored_and_read_back_as_itself() {
        for change in [
            Change::Flag("f".into()),
            Change::Override {
                flag: "f".into(),
                org_id: "42".into(),
            },
            Change::Experiment("e".into()),
        ] {
            let (kind, key, org) = change.parts();
            let back = Change::from_parts(kind, key.to_owned(), org.map(str::to_owned));
            assert_eq!(back, Some(change));
        }
        // Rows allot did not write are not guessed at.
        assert_eq!(
            Change::from_parts("flag", "f".into(), Some("1".into())),
            None
        );
        assert_eq!(Change::from_parts("override", "f".into(), None), None);
        assert_eq!(Change::from_parts("cohort", "c".into(), None), None);
    }

    #[test]
    fn each_changed_entity_is_reloaded_once_and_a_flag_covers_its_overrides() {
        let o = |flag: &str, org: &str| Change::Override {
            flag: flag.into(),
            org_id: org.into(),
        };
        let changes = vec![
            o("f", "1"),
            Change::Experiment("e".into()),
            o("g", "1"),
            Change::Flag("f".into()),
            o("g", "1"),
            Change::Experiment("e".into()),
            o("g", "2"),
            o("f", "3"),
        ];
        assert_eq!(
            Delta::entities(changes),
            vec![
                Change::Experiment("e".into()),
                o("g", "1"),
                Change::Flag("f".into()),
                o("g", "2"),
            ]
        );
    }

    #[test]
    fn codes_that_mean_the_store_went_away_are_recognised() {
        for code in [
            "57P01", "57P02", "57P03", "08006", "08003", "08P01", "53300", "53100", "40001",
            "40P01",
        ] {
            assert!(postgres_went_away(Some(code)), "{code}");
        }
        for code in ["23505", "23503", "42P01", "22021", "5", "10"] {
            assert!(!postgres_went_away(Some(code)), "{code}");
        }
        for code in ["5", "6", "517", "261", "10", "266", "13", "14"] {
            assert!(sqlite_went_away(Some(code)), "{code}");
        }
        for code in ["19", "2067", "1", "11", "08006"] {
            assert!(!sqlite_went_away(Some(code)), "{code}");
        }
        assert!(!postgres_went_away(None) && !sqlite_went_away(None));
    }
}

/// Pool and timeout settings shared by both backends.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    pub acquire_timeout: std::time::Duration,
}

/// Opens the store a URL names: `postgres://` or `postgresql://` selects
/// PostgreSQL, `sqlite:` an SQLite file.
pub async fn open(url: &str, pool: &PoolOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, pool).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, pool).await?))
    } else {
        Err(StoreError::Other(format!(
            "unsupported database URL scheme in {:?}: use postgres:// or sqlite:",
            url.split(':').next().unwrap_or_default()
        )))
    }
}
