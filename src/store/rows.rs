//! The rows the SQL reads, by column name, and their mapping into the
//! store's records and the domain's types.
//!
//! `sqlx::FromRow` is derived generically over the row type, so one struct
//! serves PostgreSQL and SQLite alike; a field's name is its column's name
//! (or alias) in the `SELECT`.

use time::OffsetDateTime;

use super::{
    Change, CountRecord, ExperimentRecord, FlagEventRecord, FlagRecord, LedgerRow, OverrideRecord,
    StoreError, VersionRecord,
};
use crate::domain::routing::lifecycle::{
    Cohort, Event, Participant, ParticipantStatus, RoutingReason,
};
use crate::store::EventRecord;

/// `SELECT key, version, config, created_at, updated_at FROM flags`.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct FlagRow {
    key: String,
    pub(super) version: i64,
    config: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl From<FlagRow> for FlagRecord {
    fn from(r: FlagRow) -> Self {
        FlagRecord {
            key: r.key,
            version: r.version,
            config: r.config,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `SELECT flag_key, org_id, enabled, updated_at FROM flag_overrides`.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct OverrideRow {
    flag_key: String,
    org_id: String,
    enabled: bool,
    pub(super) updated_at: OffsetDateTime,
}

impl From<OverrideRow> for OverrideRecord {
    fn from(r: OverrideRow) -> Self {
        OverrideRecord {
            flag_key: r.flag_key,
            org_id: r.org_id,
            enabled: r.enabled,
            updated_at: r.updated_at,
        }
    }
}

/// A live experiment with its current version's config and layout.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ExperimentRow {
    id: String,
    key: String,
    version: i64,
    config: String,
    layout: String,
    phase: Option<i64>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl From<ExperimentRow> for ExperimentRecord {
    fn from(r: ExperimentRow) -> Self {
        ExperimentRecord {
            id: r.id,
            key: r.key,
            version: r.version,
            config: r.config,
            layout: r.layout,
            phase: r.phase,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// One stored experiment version.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct VersionRow {
    experiment_id: String,
    version: i64,
    created_at: OffsetDateTime,
    actor: Option<String>,
    config: String,
    layout: String,
    deleted: bool,
    phase: Option<i64>,
}

impl From<VersionRow> for VersionRecord {
    fn from(r: VersionRow) -> Self {
        VersionRecord {
            experiment_id: r.experiment_id,
            version: r.version,
            created_at: r.created_at,
            actor: r.actor,
            config: r.config,
            layout: r.layout,
            deleted: r.deleted,
            phase: r.phase,
        }
    }
}

/// One row of `config_changes`.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ChangeRow {
    kind: String,
    key: String,
    org_id: Option<String>,
}

impl ChangeRow {
    /// The change, or `None` for a row allot did not write.
    pub(super) fn change(self) -> Option<Change> {
        Change::from_parts(&self.kind, self.key, self.org_id)
    }
}

/// The participant columns every participant query selects.
pub(super) const PARTICIPANT_COLUMNS: &str = "participant_id, status, attributes, cohort_id, \
     group_name, entry, waiting_since, wait_seq, updated_at, last_seen, accept_by";

/// A participant, selected with [`PARTICIPANT_COLUMNS`].
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ParticipantRow {
    participant_id: String,
    status: String,
    attributes: String,
    cohort_id: Option<String>,
    group_name: Option<String>,
    entry: Option<String>,
    waiting_since: Option<OffsetDateTime>,
    wait_seq: i64,
    updated_at: OffsetDateTime,
    last_seen: Option<OffsetDateTime>,
    accept_by: Option<OffsetDateTime>,
}

impl TryFrom<ParticipantRow> for Participant {
    type Error = StoreError;

    fn try_from(r: ParticipantRow) -> Result<Self, StoreError> {
        let status = ParticipantStatus::parse(&r.status).ok_or_else(|| {
            StoreError::Other(format!(
                "participant {:?} has unknown status {:?}",
                r.participant_id, r.status
            ))
        })?;
        Ok(Participant {
            id: r.participant_id,
            status,
            attributes: serde_json::from_str(&r.attributes).unwrap_or(serde_json::Value::Null),
            cohort_id: r.cohort_id,
            group: r.group_name,
            entry: r.entry,
            waiting_since: r.waiting_since,
            wait_seq: r.wait_seq,
            updated_at: r.updated_at,
            // Rows from before migration 0010 were last heard from when
            // they last changed.
            last_seen: r.last_seen.unwrap_or(r.updated_at),
            accept_by: r.accept_by,
        })
    }
}

/// Cohorts with their member counts (kept by the routing transactions,
/// see migration 0003); append a `WHERE` clause.
pub(super) const COHORT_SELECT: &str = "SELECT c.id, c.alias, c.name, c.description, c.capacity, \
     c.overflow_of, c.group_name, c.assigned_members, c.pending_members, c.completed_members FROM cohorts c";

/// A cohort, selected with [`COHORT_SELECT`].
#[derive(Debug, sqlx::FromRow)]
pub(super) struct CohortRow {
    id: String,
    alias: Option<String>,
    name: String,
    description: String,
    capacity: Option<i64>,
    overflow_of: Option<String>,
    group_name: Option<String>,
    assigned_members: i64,
    pending_members: i64,
    completed_members: i64,
}

impl From<CohortRow> for Cohort {
    fn from(r: CohortRow) -> Self {
        Cohort {
            id: r.id,
            alias: r.alias,
            name: r.name,
            description: r.description,
            capacity: r.capacity.and_then(|c| u32::try_from(c).ok()),
            overflow_of: r.overflow_of,
            group: r.group_name,
            assigned: u32::try_from(r.assigned_members).unwrap_or(u32::MAX),
            pending: u32::try_from(r.pending_members).unwrap_or(u32::MAX),
            completed: u32::try_from(r.completed_members).unwrap_or(u32::MAX),
        }
    }
}

/// A defined cohort of an experiment with its members, for synchronising
/// the defined cohorts with a new version.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DefinedCohortRow {
    pub(super) id: String,
    pub(super) alias: Option<String>,
    pub(super) overflow_of: Option<String>,
    pub(super) members: i64,
}

/// One routing event.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    id: i64,
    at: OffsetDateTime,
    participant_id: String,
    status: String,
    previous: Option<String>,
    group_name: Option<String>,
    entry: Option<String>,
    cohort_id: Option<String>,
    reason: String,
    detail: Option<String>,
}

impl TryFrom<EventRow> for EventRecord {
    type Error = StoreError;

    fn try_from(r: EventRow) -> Result<Self, StoreError> {
        let id = r.id;
        let bad =
            |what: &str| StoreError::Other(format!("routing event {id} has an unknown {what}"));
        Ok(EventRecord {
            id,
            at: r.at,
            event: Event {
                participant_id: r.participant_id,
                status: ParticipantStatus::parse(&r.status).ok_or_else(|| bad("status"))?,
                previous: match &r.previous {
                    Some(p) => {
                        Some(ParticipantStatus::parse(p).ok_or_else(|| bad("previous status"))?)
                    }
                    None => None,
                },
                group: r.group_name,
                entry: r.entry,
                cohort_id: r.cohort_id,
                reason: RoutingReason::parse(&r.reason).ok_or_else(|| bad("reason"))?,
                detail: r.detail,
            },
        })
    }
}

/// One of a phase's counters.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct CountRow {
    phase: i64,
    kind: String,
    treatment: String,
    count: i64,
}

impl From<CountRow> for CountRecord {
    fn from(r: CountRow) -> Self {
        CountRecord {
            phase: r.phase,
            kind: r.kind,
            treatment: r.treatment,
            count: r.count,
        }
    }
}

/// One ledger row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct LedgerRowRaw {
    org_id: String,
    unit_id: String,
    treatment: String,
    bucket: Option<i32>,
    reason: String,
    first_seen: OffsetDateTime,
}

impl From<LedgerRowRaw> for LedgerRow {
    fn from(r: LedgerRowRaw) -> Self {
        LedgerRow {
            org_id: r.org_id,
            unit_id: r.unit_id,
            treatment: r.treatment,
            bucket: r.bucket,
            reason: r.reason,
            first_seen: r.first_seen,
        }
    }
}

/// One flag history event.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct FlagEventRow {
    id: i64,
    at: OffsetDateTime,
    actor: Option<String>,
    action: String,
    version: i64,
    org_id: Option<String>,
    enabled: Option<bool>,
    config: Option<String>,
}

impl From<FlagEventRow> for FlagEventRecord {
    fn from(r: FlagEventRow) -> Self {
        FlagEventRecord {
            id: r.id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            version: r.version,
            org_id: r.org_id,
            enabled: r.enabled,
            config: r.config,
        }
    }
}
