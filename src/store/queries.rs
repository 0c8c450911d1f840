//! The [`Store`] implementation both backends share, written once.
//!
//! PostgreSQL and SQLite accept the same statements here (`$n` parameters,
//! `ON CONFLICT`, `RETURNING`, partial unique indexes), and their schemas
//! store the same column types through sqlx (JSON documents as TEXT,
//! timestamps as `time::OffsetDateTime`). This file is therefore compiled
//! twice, as a child module of `postgres.rs` and of `sqlite.rs`
//! (`#[path = "queries.rs"] mod queries;`). Each parent names what differs:
//!
//! - `Db`, the sqlx database type;
//! - `Backend`, its store struct (with a `pool` field and `run_migrations`
//!   and `subscribe_feed` methods);
//! - `BACKEND`, the name reported in logs and `/readyz`;
//! - `DIALECT`, the few clauses the dialects spell differently.
//!
//! Each `Store` method runs in a debug span named after it, with the backend.
//!
//! Unlike a generic implementation over `sqlx::Database`, the code sees
//! concrete types, so it needs no trait bounds for every bound value and
//! decoded row; unlike a `macro_rules!` body, rustfmt, rust-analyzer and
//! compiler messages treat it as the ordinary Rust it is.

use std::collections::BTreeMap;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{Backend, Db, BACKEND, DIALECT};
use crate::domain::precondition::Precondition;
use crate::domain::routing::lifecycle::{
    BackfillWindow, Cohort, EntrySeats, Participant, ParticipantStatus, State,
};
use crate::domain::routing::CohortDef;
use crate::store::rows::{
    ChangeRow, CohortRow, CountRow, DefinedCohortRow, EventRow, ExperimentRow, FlagEventRow,
    FlagRow, LedgerRowRaw, OverrideRow, ParticipantRow, VersionRow, COHORT_SELECT,
    PARTICIPANT_COLUMNS,
};
use crate::store::sql::{CHANGES_KEPT, CHANNEL, MAX_DELTA};
use crate::store::{
    CatchUp, Change, ChangeFeed, CountIncrement, CountRecord, Delta, EventRecord, ExperimentRecord,
    ExperimentWritten, ExposureRecord, FlagEventRecord, FlagRecord, FlagWritten, Holdings,
    LedgerRow, Loaded, OverrideRecord, Plan, Planner, RoutePlanner, RouteScope, Routed,
    StaleConfig, Store, StoreError, SweepCutoff, Touched, VersionRecord, DROPPED,
};

type Tx<'t> = sqlx::Transaction<'t, Db>;

/// Ledger rows per `INSERT`: well below either database's limits, and
/// large enough that a flush is a few statements.
const EXPOSURES_PER_STATEMENT: usize = 5_000;

/// One flag history event, written by the transaction of its change.
#[allow(clippy::too_many_arguments, reason = "one column each")]
async fn flag_event(
    tx: &mut Tx<'_>,
    flag_key: &str,
    at: OffsetDateTime,
    actor: Option<&str>,
    action: &str,
    version: i64,
    org_id: Option<&str>,
    enabled: Option<bool>,
    config: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO flag_events (flag_key, at, actor, action, version, org_id, enabled, config) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(flag_key)
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(version)
    .bind(org_id)
    .bind(enabled)
    .bind(config)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The stored version of flag `$1`, deleted or not.
async fn flag_version(tx: &mut Tx<'_>, key: &str) -> Result<i64, StoreError> {
    let (version,): (i64,) = sqlx::query_as("SELECT version FROM flags WHERE key = $1")
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
    Ok(version)
}

/// Selects the experiment `$1` if it is live (not deleted).
const LIVE_EXPERIMENT: &str =
    "SELECT 1 FROM experiments e WHERE e.id = $1 AND e.deleted_at IS NULL";

async fn next_cohort_seq(tx: &mut Tx<'_>, experiment_id: &str) -> Result<i64, StoreError> {
    let (seq,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(MAX(created_seq), 0) + 1 FROM cohorts WHERE experiment_id = $1",
    )
    .bind(experiment_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(seq)
}

async fn insert_cohort(
    tx: &mut Tx<'_>,
    experiment_id: &str,
    c: &Cohort,
    seq: i64,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO cohorts (id, experiment_id, alias, name, description, capacity, overflow_of, group_name, created_seq, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&c.id)
    .bind(experiment_id)
    .bind(c.alias.as_deref())
    .bind(&c.name)
    .bind(&c.description)
    .bind(c.capacity.map(i64::from))
    .bind(c.overflow_of.as_deref())
    .bind(c.group.as_deref())
    .bind(seq)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if c.alias.is_none() {
        sqlx::query(
            "INSERT INTO group_cohort_counts (experiment_id, group_name, made) VALUES ($1, $2, 1) \
             ON CONFLICT (experiment_id, group_name) DO UPDATE SET made = group_cohort_counts.made + 1",
        )
        .bind(experiment_id)
        .bind(c.group.as_deref().unwrap_or_default())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The cohorts of the experiment whose backfill window is open at `now`
/// (§5 "Backfill"), in creation order, with their seats per entry: those
/// they formed with (`cohort_seats`) and the members of the entry they hold
/// now (counted on `participants_by_cohort`). Read under the routing lock.
async fn read_backfill_windows(
    tx: &mut Tx<'_>,
    experiment_id: &str,
    now: OffsetDateTime,
) -> Result<Vec<BackfillWindow>, StoreError> {
    let rows: Vec<(String, Option<String>, OffsetDateTime, String, i64, i64)> = sqlx::query_as(
        "SELECT c.id, c.group_name, c.backfill_until, s.entry, s.seats, \
         (SELECT COUNT(*) FROM participants p WHERE p.cohort_id = c.id AND p.entry = s.entry \
          AND p.status IN ('assigned', 'pending', 'completed')) \
         FROM cohorts c JOIN cohort_seats s ON s.cohort_id = c.id \
         WHERE c.experiment_id = $1 AND c.backfill_until IS NOT NULL AND c.backfill_until > $2 \
         ORDER BY c.created_seq, s.position",
    )
    .bind(experiment_id)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let mut windows: Vec<BackfillWindow> = Vec::new();
    for (cohort_id, group, until, entry, formed, held) in rows {
        let seat = EntrySeats {
            entry,
            // Stored from u32 counts; clamped rather than trusted.
            formed: u32::try_from(formed.max(0)).unwrap_or(u32::MAX),
            held: u32::try_from(held.max(0)).unwrap_or(u32::MAX),
        };
        match windows.last_mut() {
            Some(w) if w.cohort_id == cohort_id => w.seats.push(seat),
            _ => windows.push(BackfillWindow {
                cohort_id,
                group: group.unwrap_or_default(),
                until,
                seats: vec![seat],
            }),
        }
    }
    Ok(windows)
}

/// Stores the backfill windows of cohorts a routing plan created: the end
/// of each window and the seats per entry it formed with.
async fn write_backfill_windows(
    tx: &mut Tx<'_>,
    windows: &[BackfillWindow],
) -> Result<(), StoreError> {
    for w in windows {
        sqlx::query("UPDATE cohorts SET backfill_until = $2 WHERE id = $1")
            .bind(&w.cohort_id)
            .bind(w.until)
            .execute(&mut **tx)
            .await?;
        for (position, seat) in w.seats.iter().enumerate() {
            sqlx::query(
                "INSERT INTO cohort_seats (cohort_id, position, entry, seats) VALUES ($1, $2, $3, $4)",
            )
            .bind(&w.cohort_id)
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .bind(&seat.entry)
            .bind(i64::from(seat.formed))
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// Makes the defined cohorts match `defs`, as planned by
/// [`cohorts::sync`](crate::domain::routing::cohorts::sync) from the
/// stored ones and their members, read in this transaction.
async fn sync_cohorts(
    tx: &mut Tx<'_>,
    experiment_id: &str,
    defs: &[CohortDef],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    use crate::domain::routing::cohorts::{self, StoredCohort};
    let rows: Vec<DefinedCohortRow> = sqlx::query_as(
        "SELECT c.id, c.alias, c.overflow_of, \
         (SELECT COUNT(*) FROM participants p WHERE p.cohort_id = c.id AND p.status IN ('assigned', 'pending', 'completed')) AS members \
         FROM cohorts c WHERE c.experiment_id = $1 AND c.alias IS NOT NULL",
    )
    .bind(experiment_id)
    .fetch_all(&mut **tx)
    .await?;
    let stored: Vec<StoredCohort> = rows
        .into_iter()
        .map(|r| StoredCohort {
            id: r.id,
            alias: r.alias.unwrap_or_default(),
            overflow_of: r.overflow_of,
            members: u64::try_from(r.members).unwrap_or_default(),
        })
        .collect();
    let plan = cohorts::sync(&stored, defs).map_err(StoreError::Conflict)?;
    for alias in &plan.removed {
        sqlx::query("DELETE FROM cohorts WHERE experiment_id = $1 AND alias = $2 AND overflow_of IS NOT NULL")
            .bind(experiment_id)
            .bind(alias)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM cohorts WHERE experiment_id = $1 AND alias = $2")
            .bind(experiment_id)
            .bind(alias)
            .execute(&mut **tx)
            .await?;
    }
    for (id, def) in &plan.kept {
        sqlx::query("UPDATE cohorts SET name = $2, description = $3, capacity = $4 WHERE id = $1")
            .bind(id)
            .bind(&def.name)
            .bind(&def.description)
            .bind(def.capacity.map(i64::from))
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE cohorts SET description = $2, capacity = $3 WHERE overflow_of = $1")
            .bind(id)
            .bind(&def.description)
            .bind(def.capacity.map(i64::from))
            .execute(&mut **tx)
            .await?;
    }
    let mut seq = next_cohort_seq(tx, experiment_id).await?;
    for def in &plan.created {
        let cohort = Cohort {
            id: uuid::Uuid::new_v4().to_string(),
            alias: Some(def.alias.as_str().to_owned()),
            name: def.name.clone(),
            description: def.description.clone(),
            capacity: def.capacity,
            overflow_of: None,
            group: None,
            assigned: 0,
            pending: 0,
            completed: 0,
        };
        insert_cohort(tx, experiment_id, &cohort, seq, now).await?;
        seq += 1;
    }
    Ok(())
}

const FLAG_SELECT: &str = "SELECT key, version, config, created_at, updated_at FROM flags";
const EXPERIMENT_SELECT: &str = "SELECT e.id, e.key, e.version, v.config, v.layout, v.phase, e.created_at, e.updated_at \
     FROM experiments e JOIN experiment_versions v ON v.experiment_id = e.id AND v.version = e.version \
     WHERE e.deleted_at IS NULL";

/// The current time at the precision both stores keep (PostgreSQL
/// stores microseconds), so an answer read back equals the one given.
fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

/// The first statement of every configuration write (see the store module docs).
const BUMP_REVISION: &str =
    "UPDATE config_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision";

/// Begins a configuration write: the transaction and its new revision
/// (bumping it first takes the configuration lock). The change is
/// recorded with the revision and, where the dialect can, announced
/// to the other replicas; both take effect only if the write commits.
async fn config_write(
    pool: &sqlx::Pool<Db>,
    change: &Change,
) -> Result<(Tx<'static>, i64), StoreError> {
    let mut tx = pool.begin().await?;
    let (revision,): (i64,) = sqlx::query_as(BUMP_REVISION).fetch_one(&mut *tx).await?;
    let (kind, key, org_id) = change.parts();
    sqlx::query(
        "INSERT INTO config_changes (revision, kind, key, org_id, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(revision)
    .bind(kind)
    .bind(key)
    .bind(org_id)
    .bind(now_micros())
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM config_changes WHERE revision <= $1")
        .bind(revision - CHANGES_KEPT)
        .execute(&mut *tx)
        .await?;
    if let Some(notify) = DIALECT.notify {
        sqlx::query(notify)
            .bind(CHANNEL)
            .bind(revision.to_string())
            .execute(&mut *tx)
            .await?;
    }
    Ok((tx, revision))
}

/// Every live flag, override and experiment, in `tx`'s snapshot.
async fn load_all(tx: &mut Tx<'_>, revision: i64) -> Result<Loaded, StoreError> {
    let flags: Vec<FlagRow> = sqlx::query_as(&format!("{FLAG_SELECT} WHERE deleted_at IS NULL"))
        .fetch_all(&mut **tx)
        .await?;
    let overrides: Vec<OverrideRow> =
        sqlx::query_as("SELECT flag_key, org_id, enabled, updated_at FROM flag_overrides")
            .fetch_all(&mut **tx)
            .await?;
    let experiments: Vec<ExperimentRow> = sqlx::query_as(EXPERIMENT_SELECT)
        .fetch_all(&mut **tx)
        .await?;
    Ok(Loaded {
        revision,
        flags: flags.into_iter().map(FlagRecord::from).collect(),
        overrides: overrides.into_iter().map(OverrideRecord::from).collect(),
        experiments: experiments
            .into_iter()
            .map(ExperimentRecord::from)
            .collect(),
    })
}

/// Begins a read-only transaction that sees one consistent snapshot,
/// and reads the configuration revision in it.
async fn snapshot_read(pool: &sqlx::Pool<Db>) -> Result<(Tx<'static>, i64), StoreError> {
    let mut tx = pool.begin().await?;
    if let Some(sql) = DIALECT.snapshot {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    let (revision,): (i64,) = sqlx::query_as("SELECT revision FROM config_revision WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    Ok((tx, revision))
}

/// `sql` (ending in `IN`) followed by the list of `keys`, bound.
fn in_list(sql: String, keys: &[String]) -> sqlx::QueryBuilder<'static, Db> {
    let mut q = sqlx::QueryBuilder::<Db>::new(sql);
    q.push(" (");
    let mut list = q.separated(", ");
    for key in keys {
        list.push_bind(key.clone());
    }
    q.push(")");
    q
}

/// Appends `(item, item, …)`, each bound: the list after an `IN`.
fn push_list<'q>(q: &mut sqlx::QueryBuilder<'q, Db>, items: impl IntoIterator<Item = &'q str>) {
    q.push("(");
    let mut list = q.separated(", ");
    for item in items {
        list.push_bind(item);
    }
    q.push(")");
}

/// Rows as records, by their key.
fn by_key<R, T: From<R>>(
    rows: Vec<R>,
    key: impl Fn(&T) -> &String,
) -> std::collections::HashMap<String, T> {
    rows.into_iter()
        .map(T::from)
        .map(|record| (key(&record).clone(), record))
        .collect()
}

/// The current state of `entities` (at most [`MAX_DELTA`]
/// of them): one query per kind, however many changed.
async fn read_delta(
    tx: &mut Tx<'_>,
    revision: i64,
    entities: Vec<Change>,
) -> Result<Delta, StoreError> {
    let mut flag_keys = Vec::new();
    let mut pairs = Vec::new();
    let mut experiment_keys = Vec::new();
    for change in entities {
        match change {
            Change::Flag(key) => flag_keys.push(key),
            Change::Override { flag, org_id } => pairs.push((flag, org_id)),
            Change::Experiment(key) => experiment_keys.push(key),
        }
    }
    let mut delta = Delta {
        revision,
        ..Delta::default()
    };
    if !flag_keys.is_empty() {
        let mut q = in_list(
            format!("{FLAG_SELECT} WHERE deleted_at IS NULL AND key IN"),
            &flag_keys,
        );
        let rows = q.build_query_as::<FlagRow>().fetch_all(&mut **tx).await?;
        let mut live = by_key(rows, |r: &FlagRecord| &r.key);
        let mut q = in_list(
            "SELECT flag_key, org_id, enabled, updated_at FROM flag_overrides WHERE flag_key IN"
                .to_owned(),
            &flag_keys,
        );
        let mut overrides: std::collections::HashMap<String, Vec<OverrideRecord>> =
            std::collections::HashMap::new();
        for row in q
            .build_query_as::<OverrideRow>()
            .fetch_all(&mut **tx)
            .await?
        {
            let record = OverrideRecord::from(row);
            overrides
                .entry(record.flag_key.clone())
                .or_default()
                .push(record);
        }
        for key in flag_keys {
            let record = live
                .remove(&key)
                .map(|r| (r, overrides.remove(&key).unwrap_or_default()));
            delta.flags.push((key, record));
        }
    }
    if !pairs.is_empty() {
        let mut q = sqlx::QueryBuilder::<Db>::new(
            "SELECT flag_key, org_id, enabled, updated_at FROM flag_overrides WHERE (flag_key, org_id) IN (",
        );
        let mut list = q.separated(", ");
        for (flag, org) in &pairs {
            list.push("(")
                .push_bind_unseparated(flag.as_str())
                .push_unseparated(", ");
            list.push_bind_unseparated(org.as_str())
                .push_unseparated(")");
        }
        q.push(")");
        let found: std::collections::HashMap<(String, String), bool> = q
            .build_query_as::<OverrideRow>()
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|row| {
                let record = OverrideRecord::from(row);
                ((record.flag_key, record.org_id), record.enabled)
            })
            .collect();
        for (flag, org) in pairs {
            let enabled = found.get(&(flag.clone(), org.clone())).copied();
            delta.overrides.push((flag, org, enabled));
        }
    }
    if !experiment_keys.is_empty() {
        let mut q = in_list(
            format!("{EXPERIMENT_SELECT} AND e.key IN"),
            &experiment_keys,
        );
        let rows = q
            .build_query_as::<ExperimentRow>()
            .fetch_all(&mut **tx)
            .await?;
        let mut live = by_key(rows, |r: &ExperimentRecord| &r.key);
        for key in experiment_keys {
            let record = live.remove(&key);
            delta.experiments.push((key, record));
        }
    }
    Ok(delta)
}

/// The live flag `key`, if any, in `tx`.
async fn live_flag(tx: &mut Tx<'_>, key: &str) -> Result<Option<FlagRecord>, StoreError> {
    let row: Option<FlagRow> = sqlx::query_as(&format!(
        "{FLAG_SELECT} WHERE key = $1 AND deleted_at IS NULL"
    ))
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(FlagRecord::from))
}

/// The live experiment `key`, if any, in `tx`.
async fn live_experiment(
    tx: &mut Tx<'_>,
    key: &str,
) -> Result<Option<ExperimentRecord>, StoreError> {
    let row: Option<ExperimentRow> = sqlx::query_as(&format!("{EXPERIMENT_SELECT} AND e.key = $1"))
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(ExperimentRecord::from))
}

/// Checks `expected` (If-Match) against the stored version (`None`:
/// there is no live entity).
fn precondition(expected: Option<&Precondition>, current: Option<i64>) -> Result<(), StoreError> {
    match expected {
        Some(p) if !p.admits(current) => Err(StoreError::VersionMismatch { current }),
        _ => Ok(()),
    }
}

/// Ends a write that removed `rows` rows: none is [`StoreError::NotFound`]
/// (and the transaction rolls back), else it commits.
async fn finish_removal(tx: Tx<'static>, rows: u64, revision: i64) -> Result<i64, StoreError> {
    if rows == 0 {
        return Err(StoreError::NotFound);
    }
    tx.commit().await?;
    Ok(revision)
}

#[async_trait]
impl Store for Backend {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn pool_status(&self) -> (u32, u32, u32) {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        (
            self.pool.size(),
            idle,
            self.pool.options().get_max_connections(),
        )
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn migrate(&self) -> Result<(), StoreError> {
        self.run_migrations().await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn revision(&self) -> Result<i64, StoreError> {
        let (revision,): (i64,) =
            sqlx::query_as("SELECT revision FROM config_revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(revision)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn load(&self) -> Result<Loaded, StoreError> {
        // One read transaction: every query sees the same snapshot,
        // so the rows belong to the revision read with them.
        let (mut tx, revision) = snapshot_read(&self.pool).await?;
        let loaded = load_all(&mut tx, revision).await?;
        tx.commit().await?;
        Ok(loaded)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn catch_up(&self, since: i64) -> Result<CatchUp, StoreError> {
        let (mut tx, revision) = snapshot_read(&self.pool).await?;
        if revision == since {
            tx.commit().await?;
            return Ok(CatchUp::Current(revision));
        }
        // Behind by more than a delta is worth, or ahead of the store
        // (a database restored from a backup): start over.
        if revision < since || revision - since > MAX_DELTA {
            let loaded = load_all(&mut tx, revision).await?;
            tx.commit().await?;
            return Ok(CatchUp::Full(loaded));
        }
        let rows: Vec<ChangeRow> = sqlx::query_as(
            "SELECT kind, key, org_id FROM config_changes WHERE revision > $1 ORDER BY revision",
        )
        .bind(since)
        .fetch_all(&mut *tx)
        .await?;
        let changes: Option<Vec<Change>> = rows.into_iter().map(ChangeRow::change).collect();
        // A revision without its change (pruned, or bumped by hand):
        // what changed is unknown, so everything is reloaded.
        let changes = match changes {
            Some(changes) if i64::try_from(changes.len()).ok() == Some(revision - since) => changes,
            _ => {
                let loaded = load_all(&mut tx, revision).await?;
                tx.commit().await?;
                return Ok(CatchUp::Full(loaded));
            }
        };
        let delta = read_delta(&mut tx, revision, Delta::entities(changes)).await?;
        tx.commit().await?;
        Ok(CatchUp::Delta(delta))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        self.subscribe_feed().await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn write_flag(
        &self,
        key: &str,
        plan: Planner<'_, FlagRecord, serde_json::Value>,
        actor: Option<&str>,
    ) -> Result<Option<FlagWritten>, StoreError> {
        let (mut tx, revision) = config_write(&self.pool, &Change::Flag(key.to_owned())).await?;
        // The row of a deleted flag stays (deleted_at set) so that its
        // versions continue when the key is created again.
        let row: Option<(i64,)> = sqlx::query_as("SELECT version FROM flags WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        let current = live_flag(&mut tx, key).await?;
        let Plan::Write(config) = plan(current.as_ref()) else {
            // The transaction rolls back on drop: no revision is used.
            return Ok(None);
        };
        let text = config.to_string();
        let now = now_micros();
        let row: FlagRow = match row {
            // The next version; a deleted flag's row comes back to
            // life as a flag created now.
            Some(_) => {
                sqlx::query_as(
                    "UPDATE flags SET version = version + 1, config = $2, updated_at = $3, \
                     created_at = CASE WHEN deleted_at IS NULL THEN created_at ELSE $3 END, deleted_at = NULL \
                     WHERE key = $1 RETURNING key, version, config, created_at, updated_at",
                )
                .bind(key)
                .bind(&text)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
            }
            None => {
                sqlx::query_as(
                    "INSERT INTO flags (key, version, config, created_at, updated_at) VALUES ($1, 1, $2, $3, $3) \
                     RETURNING key, version, config, created_at, updated_at",
                )
                .bind(key)
                .bind(&text)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let action = if current.is_none() {
            "created"
        } else {
            "updated"
        };
        flag_event(
            &mut tx,
            key,
            now,
            actor,
            action,
            row.version,
            None,
            None,
            Some(&text),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(FlagWritten {
            record: FlagRecord::from(row),
            revision,
            created: current.is_none(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn delete_flag(
        &self,
        key: &str,
        expected: Option<&Precondition>,
        actor: Option<&str>,
    ) -> Result<i64, StoreError> {
        let (mut tx, revision) = config_write(&self.pool, &Change::Flag(key.to_owned())).await?;
        let current = live_flag(&mut tx, key).await?;
        precondition(expected, current.as_ref().map(|c| c.version))?;
        if current.is_none() {
            return Err(StoreError::NotFound);
        }
        // Configuration writers are serialised by the revision row, so
        // no experiment can take this flag between here and the commit.
        let users: Vec<(String,)> =
            sqlx::query_as("SELECT key FROM experiments WHERE eligibility_flag = $1 AND deleted_at IS NULL ORDER BY key LIMIT 1")
                .bind(key)
                .fetch_all(&mut *tx)
                .await?;
        if let Some((user,)) = users.first() {
            return Err(StoreError::Conflict(format!(
                "flag {key:?} is the eligibility flag of experiment {user:?}"
            )));
        }
        sqlx::query("DELETE FROM flag_overrides WHERE flag_key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        // The deletion is a version of its own.
        let now = now_micros();
        let (version,): (i64,) = sqlx::query_as(
            "UPDATE flags SET version = version + 1, updated_at = $2, deleted_at = $2 WHERE key = $1 RETURNING version",
        )
        .bind(key)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        flag_event(
            &mut tx, key, now, actor, "deleted", version, None, None, None,
        )
        .await?;
        tx.commit().await?;
        Ok(revision)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn set_override(
        &self,
        flag_key: &str,
        org_id: &str,
        enabled: bool,
        actor: Option<&str>,
    ) -> Result<crate::store::OverrideWritten, StoreError> {
        let change = Change::Override {
            flag: flag_key.to_owned(),
            org_id: org_id.to_owned(),
        };
        let (mut tx, revision) = config_write(&self.pool, &change).await?;
        if live_flag(&mut tx, flag_key).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        let existing: Option<(bool,)> = sqlx::query_as(
            "SELECT enabled FROM flag_overrides WHERE flag_key = $1 AND org_id = $2",
        )
        .bind(flag_key)
        .bind(org_id)
        .fetch_optional(&mut *tx)
        .await?;
        let row: OverrideRow = sqlx::query_as(
            "INSERT INTO flag_overrides (flag_key, org_id, enabled, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (flag_key, org_id) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at \
             RETURNING flag_key, org_id, enabled, updated_at",
        )
        .bind(flag_key)
        .bind(org_id)
        .bind(enabled)
        .bind(now_micros())
        .fetch_one(&mut *tx)
        .await?;
        let version = flag_version(&mut tx, flag_key).await?;
        flag_event(
            &mut tx,
            flag_key,
            row.updated_at,
            actor,
            "override_set",
            version,
            Some(org_id),
            Some(enabled),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(crate::store::OverrideWritten {
            record: OverrideRecord::from(row),
            created: existing.is_none(),
            revision,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn delete_override(
        &self,
        flag_key: &str,
        org_id: &str,
        actor: Option<&str>,
    ) -> Result<i64, StoreError> {
        let change = Change::Override {
            flag: flag_key.to_owned(),
            org_id: org_id.to_owned(),
        };
        let (mut tx, revision) = config_write(&self.pool, &change).await?;
        let deleted = sqlx::query("DELETE FROM flag_overrides WHERE flag_key = $1 AND org_id = $2")
            .bind(flag_key)
            .bind(org_id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() > 0 {
            let version = flag_version(&mut tx, flag_key).await?;
            flag_event(
                &mut tx,
                flag_key,
                now_micros(),
                actor,
                "override_removed",
                version,
                Some(org_id),
                None,
                None,
            )
            .await?;
        }
        finish_removal(tx, deleted.rows_affected(), revision).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn flag_history(
        &self,
        flag_key: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Option<Vec<FlagEventRecord>>, StoreError> {
        let known: Option<(i64,)> = sqlx::query_as("SELECT version FROM flags WHERE key = $1")
            .bind(flag_key)
            .fetch_optional(&self.pool)
            .await?;
        if known.is_none() {
            return Ok(None);
        }
        let rows: Vec<FlagEventRow> = sqlx::query_as(
            "SELECT id, at, actor, action, version, org_id, enabled, config FROM flag_events \
             WHERE flag_key = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(flag_key)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(rows.into_iter().map(FlagEventRecord::from).collect()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn list_overrides(
        &self,
        flag_key: &str,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<OverrideRecord>, StoreError> {
        let rows: Vec<OverrideRow> = sqlx::query_as(
            "SELECT flag_key, org_id, enabled, updated_at FROM flag_overrides \
             WHERE flag_key = $1 AND org_id > $2 ORDER BY org_id LIMIT $3",
        )
        .bind(flag_key)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(OverrideRecord::from).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn write_experiment(
        &self,
        key: &str,
        plan: Planner<'_, ExperimentRecord, crate::store::NewVersion>,
    ) -> Result<Option<ExperimentWritten>, StoreError> {
        // Taking the configuration lock first means the read below
        // sees every earlier write and nothing changes before ours.
        let (mut tx, revision) =
            config_write(&self.pool, &Change::Experiment(key.to_owned())).await?;
        let current = live_experiment(&mut tx, key).await?;
        let Plan::Write(new) = plan(current.as_ref()) else {
            return Ok(None);
        };
        // A deleted flag's row stays, so the foreign key alone would
        // not refuse it.
        if let Some(flag) = &new.eligibility_flag {
            if live_flag(&mut tx, flag).await?.is_none() {
                return Err(StoreError::MissingReference);
            }
        }
        let now = now_micros();
        let (id, version, created_at) = match &current {
            None => {
                // A new incarnation continues the key's versions: an
                // old If-Match can never match the new document.
                let (last,): (i64,) = sqlx::query_as(
                    "SELECT COALESCE(MAX(v.version), 0) FROM experiment_versions v \
                     JOIN experiments e ON e.id = v.experiment_id WHERE e.key = $1",
                )
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
                let id = uuid::Uuid::new_v4().to_string();
                sqlx::query(
                    "INSERT INTO experiments (id, key, version, eligibility_flag, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind(&id)
                .bind(key)
                .bind(last + 1)
                .bind(new.eligibility_flag.as_deref())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                (id, last + 1, now)
            }
            Some(c) => {
                let (version,): (i64,) = sqlx::query_as(
                    "UPDATE experiments SET version = version + 1, eligibility_flag = $2, updated_at = $3 \
                     WHERE id = $1 RETURNING version",
                )
                .bind(&c.id)
                .bind(new.eligibility_flag.as_deref())
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                (c.id.clone(), version, c.created_at)
            }
        };
        let config = new.config.to_string();
        let layout = new.layout.to_string();
        // Phases number on across the key's incarnations (§3).
        let phase = match current.as_ref().and_then(|c| c.phase) {
            Some(phase) if !new.starts_phase => phase,
            _ => {
                let (last,): (i64,) = sqlx::query_as(
                    "SELECT COALESCE(MAX(v.phase), 0) FROM experiment_versions v \
                     JOIN experiments e ON e.id = v.experiment_id WHERE e.key = $1",
                )
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
                last + 1
            }
        };
        sqlx::query(
            "INSERT INTO experiment_versions (experiment_id, version, created_at, actor, config, layout, phase) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(version)
        .bind(now)
        .bind(new.actor.as_deref())
        .bind(&config)
        .bind(&layout)
        .bind(phase)
        .execute(&mut *tx)
        .await?;
        sync_cohorts(&mut tx, &id, &new.cohorts, now).await?;
        tx.commit().await?;
        let record = ExperimentRecord {
            id,
            key: key.to_owned(),
            version,
            config,
            layout,
            phase: Some(phase),
            created_at,
            updated_at: now,
        };
        Ok(Some(ExperimentWritten {
            record,
            revision,
            created: current.is_none(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn delete_experiment(
        &self,
        key: &str,
        expected: Option<&Precondition>,
        actor: Option<&str>,
    ) -> Result<i64, StoreError> {
        let (mut tx, revision) =
            config_write(&self.pool, &Change::Experiment(key.to_owned())).await?;
        // The exclusive row lock waits for participant writes in
        // flight, and those that come later see the deletion.
        let current: Option<(String, i64)> = sqlx::query_as(&format!(
            "SELECT id, version FROM experiments WHERE key = $1 AND deleted_at IS NULL{}",
            DIALECT.lock_exclusive
        ))
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        precondition(expected, current.as_ref().map(|c| c.1))?;
        let Some((id, _)) = current else {
            return Err(StoreError::NotFound);
        };
        // The row and its versions stay for analysis; clearing the
        // flag reference lets that flag be deleted later. The deletion
        // is a version of its own.
        let now = now_micros();
        let (version,): (i64,) = sqlx::query_as(
            "UPDATE experiments SET version = version + 1, updated_at = $2, deleted_at = $2, eligibility_flag = NULL \
             WHERE id = $1 RETURNING version",
        )
        .bind(&id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        // The deletion ends the live version's phase and keeps its number.
        sqlx::query(
            "INSERT INTO experiment_versions (experiment_id, version, created_at, actor, config, layout, deleted, phase) \
             SELECT $1, $2, $3, $4, 'null', '[]', TRUE, \
             (SELECT p.phase FROM experiment_versions p WHERE p.experiment_id = $1 AND p.version = $2 - 1)",
        )
        .bind(&id)
        .bind(version)
        .bind(now)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revision)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn experiment_versions(&self, key: &str) -> Result<Vec<VersionRecord>, StoreError> {
        // Every incarnation of the key: deleted ones stay readable.
        let rows: Vec<VersionRow> = sqlx::query_as(
            "SELECT v.experiment_id, v.version, v.created_at, v.actor, v.config, v.layout, v.deleted, v.phase \
             FROM experiment_versions v \
             JOIN experiments e ON e.id = v.experiment_id \
             WHERE e.key = $1 ORDER BY e.created_at DESC, v.version DESC",
        )
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(StoreError::NotFound);
        }
        Ok(rows.into_iter().map(VersionRecord::from).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn keys_without_phases(&self) -> Result<Vec<String>, StoreError> {
        let keys: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT e.key FROM experiment_versions v JOIN experiments e ON e.id = v.experiment_id \
             WHERE v.phase IS NULL ORDER BY e.key",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(keys.into_iter().map(|(k,)| k).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn set_phases(&self, phases: &[(String, i64, i64)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, version, phase) in phases {
            sqlx::query(
                "UPDATE experiment_versions SET phase = $3 \
                 WHERE experiment_id = $1 AND version = $2 AND phase IS NULL",
            )
            .bind(id)
            .bind(version)
            .bind(phase)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, exposures = exposures.len()))]
    async fn record_exposures(
        &self,
        exposures: &[ExposureRecord],
        counts: &[CountIncrement],
        holdings: &Holdings,
    ) -> Result<u64, StoreError> {
        // Rows and counters in one order (the ledger key's), so that
        // concurrent flushes from several replicas wait for one another
        // instead of deadlocking, and neighbouring rows land on the same
        // index pages.
        let mut sorted: Vec<&ExposureRecord> = exposures.iter().collect();
        sorted.sort_unstable_by(|a, b| {
            (&*a.experiment, &a.org_id, &a.unit_id, a.phase).cmp(&(
                &*b.experiment,
                &b.org_id,
                &b.unit_id,
                b.phase,
            ))
        });
        let mut totals: BTreeMap<(String, i64, String, String), i64> = BTreeMap::new();
        for c in counts {
            *totals
                .entry((
                    c.experiment.to_string(),
                    c.phase,
                    c.kind.to_owned(),
                    c.treatment.clone(),
                ))
                .or_default() += i64::try_from(c.count).unwrap_or(i64::MAX);
        }
        let mut tx = self.pool.begin().await?;
        for chunk in sorted.chunks(EXPOSURES_PER_STATEMENT) {
            let added: Vec<(String, i64, String, String, bool)> = super::bind_ledger_rows(sqlx::query_as(&format!(
                "INSERT INTO exposures (experiment, phase, org_id, unit_id, treatment, bucket, reason, first_seen, moved) \
                 SELECT b.experiment, b.phase, b.org_id, b.unit_id, b.treatment, b.bucket, b.reason, b.first_seen, \
                 COALESCE((SELECT p.treatment <> b.treatment FROM exposures p \
                   WHERE p.experiment = b.experiment AND p.org_id = b.org_id AND p.unit_id = b.unit_id \
                   AND p.phase < b.phase ORDER BY p.phase DESC LIMIT 1), FALSE) \
                 FROM {} WHERE TRUE \
                 ON CONFLICT DO NOTHING RETURNING experiment, phase, treatment, reason, moved",
                DIALECT.ledger_rows
            )), chunk)?
            .fetch_all(&mut *tx)
            .await?;
            for (experiment, phase, treatment, reason, moved) in added {
                if moved {
                    *totals
                        .entry((
                            experiment.clone(),
                            phase,
                            "moved".to_owned(),
                            treatment.clone(),
                        ))
                        .or_default() += 1;
                }
                *totals
                    .entry((experiment, phase, reason, treatment))
                    .or_default() += 1;
            }
        }
        // What dead replicas held counts as dropped; then this replica's
        // own holdings, which no other replica writes (it claims them only
        // once they are stale, and deletes them as it claims them).
        let claimed: Vec<(String, i64, i64)> = sqlx::query_as(
            "DELETE FROM exposure_holdings WHERE replica <> $1 AND renewed_ms < $2 \
             RETURNING experiment, phase, held",
        )
        .bind(&*holdings.replica)
        .bind(holdings.stale_before_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut lost = 0_u64;
        for (experiment, phase, held) in claimed {
            lost += u64::try_from(held).unwrap_or(0);
            *totals
                .entry((experiment, phase, DROPPED.to_owned(), String::new()))
                .or_default() += held;
        }
        sqlx::query("DELETE FROM exposure_holdings WHERE replica = $1")
            .bind(&*holdings.replica)
            .execute(&mut *tx)
            .await?;
        // Four binds a row, well under either dialect's limit per statement.
        for chunk in holdings.held.chunks(1_000) {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "INSERT INTO exposure_holdings (replica, experiment, phase, held, renewed_ms) ",
            );
            q.push_values(chunk, |mut row, (experiment, phase, held)| {
                row.push_bind(&*holdings.replica)
                    .push_bind(&**experiment)
                    .push_bind(*phase)
                    .push_bind(i64::try_from(*held).unwrap_or(i64::MAX))
                    .push_bind(holdings.now_ms);
            });
            q.build().execute(&mut *tx).await?;
        }
        for ((experiment, phase, kind, treatment), count) in totals {
            sqlx::query(
                "INSERT INTO exposure_counts (experiment, phase, kind, treatment, count) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (experiment, phase, kind, treatment) DO UPDATE SET count = exposure_counts.count + excluded.count",
            )
            .bind(experiment)
            .bind(phase)
            .bind(kind)
            .bind(treatment)
            .bind(count)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(lost)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn exposure_counts(&self, key: &str) -> Result<Vec<CountRecord>, StoreError> {
        let rows: Vec<CountRow> = sqlx::query_as(
            "SELECT phase, kind, treatment, count FROM exposure_counts WHERE experiment = $1 \
             ORDER BY phase, kind, treatment",
        )
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(CountRecord::from).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn ledger_page(
        &self,
        key: &str,
        phase: i64,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        const COLUMNS: &str =
            "SELECT org_id, unit_id, treatment, bucket, reason, first_seen FROM exposures \
             WHERE experiment = $1 AND phase = $2";
        let rows: Vec<LedgerRowRaw> = match after {
            None => {
                sqlx::query_as(&format!("{COLUMNS} ORDER BY org_id, unit_id LIMIT $3"))
                    .bind(key)
                    .bind(phase)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            Some((org_id, unit_id)) => {
                sqlx::query_as(&format!(
                    // A row-value comparison, which both databases read
                    // as a range of the primary key's index: each page
                    // starts where the last one ended.
                    "{COLUMNS} AND (org_id, unit_id) > ($3, $4) \
                     ORDER BY org_id, unit_id LIMIT $5"
                ))
                .bind(key)
                .bind(phase)
                .bind(org_id)
                .bind(unit_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows.into_iter().map(LedgerRow::from).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn sticky_get(
        &self,
        experiment_id: &str,
        org_id: &str,
        unit_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT treatment FROM sticky_assignments WHERE experiment_id = $1 AND org_id = $2 AND unit_id = $3",
        )
        .bind(experiment_id)
        .bind(org_id)
        .bind(unit_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn sticky_get_many(
        &self,
        experiment_id: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut found = Vec::new();
        for chunk in keys.chunks(400) {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "SELECT org_id, unit_id, treatment FROM sticky_assignments WHERE experiment_id = ",
            );
            q.push_bind(experiment_id)
                .push(" AND (org_id, unit_id) IN (");
            let mut list = q.separated(", ");
            for (org, unit) in chunk {
                list.push("(")
                    .push_bind_unseparated(org.as_str())
                    .push_unseparated(", ");
                list.push_bind_unseparated(unit.as_str())
                    .push_unseparated(")");
            }
            q.push(")");
            let rows: Vec<(String, String, String)> =
                q.build_query_as().fetch_all(&self.pool).await?;
            found.extend(rows);
        }
        Ok(found)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn sticky_insert_many(
        &self,
        experiment_id: &str,
        version: i64,
        rows: &[(String, String, String)],
    ) -> Result<(), StoreError> {
        let now = now_micros();
        for chunk in rows.chunks(200) {
            let mut q =
                sqlx::QueryBuilder::<Db>::new("WITH claims (org_id, unit_id, treatment) AS (");
            q.push_values(chunk, |mut row, (org, unit, treatment)| {
                row.push_bind(org.as_str())
                    .push_bind(unit.as_str())
                    .push_bind(treatment.as_str());
            });
            // Nothing is stored for an experiment deleted meanwhile.
            q.push(
                ") INSERT INTO sticky_assignments (experiment_id, org_id, unit_id, treatment, version, assigned_at) \
                 SELECT ",
            );
            q.push_bind(experiment_id)
                .push(", c.org_id, c.unit_id, c.treatment, ");
            q.push_bind(version).push(", ").push_bind(now);
            q.push(" FROM claims c WHERE EXISTS (SELECT 1 FROM experiments e WHERE e.id = ");
            q.push_bind(experiment_id);
            q.push(" AND e.deleted_at IS NULL) ON CONFLICT (experiment_id, org_id, unit_id) DO NOTHING");
            q.build().execute(&self.pool).await?;
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn sticky_claim(
        &self,
        experiment_id: &str,
        org_id: &str,
        unit_id: &str,
        treatment: &str,
        version: i64,
        replace: Option<&str>,
    ) -> Result<String, StoreError> {
        let now = now_micros();
        match replace {
            None => {
                sqlx::query(
                    "INSERT INTO sticky_assignments (experiment_id, org_id, unit_id, treatment, version, assigned_at) \
                     SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS \
                     (SELECT 1 FROM experiments e WHERE e.id = $1 AND e.deleted_at IS NULL) \
                     ON CONFLICT (experiment_id, org_id, unit_id) DO NOTHING",
                )
                .bind(experiment_id)
                .bind(org_id)
                .bind(unit_id)
                .bind(treatment)
                .bind(version)
                .bind(now)
                .execute(&self.pool)
                .await?;
            }
            Some(old) => {
                sqlx::query(
                    "UPDATE sticky_assignments SET treatment = $4, version = $5, assigned_at = $6 \
                     WHERE experiment_id = $1 AND org_id = $2 AND unit_id = $3 AND treatment = $7 \
                     AND EXISTS (SELECT 1 FROM experiments e WHERE e.id = $1 AND e.deleted_at IS NULL)",
                )
                .bind(experiment_id)
                .bind(org_id)
                .bind(unit_id)
                .bind(treatment)
                .bind(version)
                .bind(now)
                .bind(old)
                .execute(&self.pool)
                .await?;
            }
        }
        // What is stored now, unless the experiment was deleted
        // meanwhile (then there is no answer to give).
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT s.treatment FROM sticky_assignments s JOIN experiments e ON e.id = s.experiment_id \
             WHERE s.experiment_id = $1 AND s.org_id = $2 AND s.unit_id = $3 AND e.deleted_at IS NULL",
        )
        .bind(experiment_id)
        .bind(org_id)
        .bind(unit_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(t,)| t).ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn route(
        &self,
        experiment_id: &str,
        participant_ids: &[String],
        scope: RouteScope,
        planner: &dyn RoutePlanner,
    ) -> Result<crate::store::RouteOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The experiment row is the routing lock (see migration 0002).
        let locked: Option<(i64, i64, Option<i64>)> = sqlx::query_as(
            "UPDATE experiments SET routing_seq = routing_seq + 1 WHERE id = $1 AND deleted_at IS NULL \
             RETURNING routing_seq, version, slots_version",
        )
        .bind(experiment_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (seq, version, slots_version) = locked.ok_or(StoreError::NotFound)?;
        // Slots computed for another config version say nothing: read the
        // whole pool and compute them all again.
        let reslot_all = slots_version != Some(version);
        let now = now_micros();

        let mut subjects = Vec::new();
        if !participant_ids.is_empty() {
            let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE experiment_id = "
            ));
            q.push_bind(experiment_id).push(" AND participant_id IN ");
            push_list(&mut q, participant_ids.iter().map(String::as_str));
            let rows: Vec<ParticipantRow> = q.build_query_as().fetch_all(&mut *tx).await?;
            subjects = rows
                .into_iter()
                .map(Participant::try_from)
                .collect::<Result<Vec<_>, _>>()?;
        }
        // Cohorts whose freed seats are refilled now (see `read_backfill_windows`).
        let backfill = read_backfill_windows(&mut tx, experiment_id, now).await?;
        // Every aliased cohort (joins and balance need them), the
        // subjects' own cohorts (their answers name them), those the
        // calls name (a move's target) and those with a backfill window
        // (a participant backfilled joins one).
        // The aliased ones in creation order (on cohorts_aliased: a study
        // may have formed thousands of cohorts without an alias), then the
        // others named.
        let mut cohort_rows: Vec<CohortRow> = sqlx::query_as(&format!(
            "{COHORT_SELECT} WHERE c.experiment_id = $1 AND c.alias IS NOT NULL ORDER BY c.created_seq"
        ))
        .bind(experiment_id)
        .fetch_all(&mut *tx)
        .await?;
        let own: Vec<&str> = subjects
            .iter()
            .filter_map(|p| p.cohort_id.as_deref())
            .chain(scope.cohort_ids.iter().map(String::as_str))
            .chain(backfill.iter().map(|w| w.cohort_id.as_str()))
            .collect();
        if !own.is_empty() {
            let mut q =
                sqlx::QueryBuilder::<Db>::new(format!("{COHORT_SELECT} WHERE c.experiment_id = "));
            q.push_bind(experiment_id)
                .push(" AND c.alias IS NULL AND c.id IN ");
            push_list(&mut q, own.iter().copied());
            q.push(" ORDER BY c.created_seq");
            cohort_rows.extend(q.build_query_as::<CohortRow>().fetch_all(&mut *tx).await?);
        }
        let cohorts: Vec<Cohort> = cohort_rows.into_iter().map(Cohort::from).collect();
        let made: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT group_name, made FROM group_cohort_counts WHERE experiment_id = $1",
        )
        .bind(experiment_id)
        .fetch_all(&mut *tx)
        .await?;
        let group_cohorts = made
            .into_iter()
            .map(|(g, n)| (g.unwrap_or_default(), u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
        let waiting = read_pool(
            &mut tx,
            experiment_id,
            &scope,
            now,
            reslot_all,
            &backfill,
            version,
            &subjects,
            planner,
        )
        .await?;
        let Some((waiting, stale)) = waiting else {
            return Ok(crate::store::RouteOutcome::Stale);
        };
        // Pending past their acceptance deadline (on participants_accept_by).
        let expired_rows: Vec<ParticipantRow> = sqlx::query_as(&format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE experiment_id = $1 AND status = 'pending' \
             AND accept_by <= $2 ORDER BY accept_by, participant_id"
        ))
        .bind(experiment_id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let expired = expired_rows
            .into_iter()
            .map(Participant::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let state = State {
            now,
            seq,
            cohorts: cohorts.clone(),
            group_cohorts,
            waiting,
            subjects,
            expired,
            backfill_windows: backfill,
            stale: stale.clone(),
            reslot_all,
        };
        let stale_ids = stale;
        let changes = match planner.plan(version, state) {
            Ok(changes) => changes,
            Err(StaleConfig) => return Ok(crate::store::RouteOutcome::Stale),
        };
        if changes.is_empty() {
            // Nothing to write: roll back, the sequence bump included.
            return Ok(crate::store::RouteOutcome::Routed(Routed {
                changes,
                cohorts,
            }));
        }
        let mut cohort_seq = next_cohort_seq(&mut tx, experiment_id).await?;
        for c in &changes.new_cohorts {
            insert_cohort(&mut tx, experiment_id, c, cohort_seq, now).await?;
            cohort_seq += 1;
        }
        write_backfill_windows(&mut tx, &changes.new_windows).await?;
        // Multi-row statements, in chunks well under every bind limit.
        for chunk in changes.participants.chunks(200) {
            let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                "INSERT INTO participants (experiment_id, {PARTICIPANT_COLUMNS}, created_at) "
            ));
            q.push_values(chunk, |mut row, p| {
                row.push_bind(experiment_id)
                    .push_bind(p.id.as_str())
                    .push_bind(p.status.as_str())
                    .push_bind(p.attributes.to_string())
                    .push_bind(p.cohort_id.as_deref())
                    .push_bind(p.group.as_deref())
                    .push_bind(p.entry.as_deref())
                    .push_bind(p.waiting_since)
                    .push_bind(p.wait_seq)
                    .push_bind(p.updated_at)
                    .push_bind(p.last_seen)
                    .push_bind(p.accept_by)
                    .push_bind(p.updated_at);
            });
            // Attributes are the registration's to write, and `last_seen`
            // the participant calls' (see `register` and `touch`), never a
            // routing transaction's.
            q.push(
                " ON CONFLICT (experiment_id, participant_id) DO UPDATE SET status = excluded.status, \
                 cohort_id = excluded.cohort_id, group_name = excluded.group_name, entry = excluded.entry, \
                 waiting_since = excluded.waiting_since, wait_seq = excluded.wait_seq, updated_at = excluded.updated_at, \
                 accept_by = excluded.accept_by",
            );
            q.build().execute(&mut *tx).await?;
        }
        // Member counters follow the status changes.
        let deltas = changes.member_deltas();
        for (cohort, da, dp, dc) in deltas {
            sqlx::query(
                "UPDATE cohorts SET assigned_members = assigned_members + $2, pending_members = pending_members + $3, \
                 completed_members = completed_members + $4 WHERE id = $1",
            )
            .bind(&cohort)
            .bind(da)
            .bind(dp)
            .bind(dc)
            .execute(&mut *tx)
            .await?;
        }
        for chunk in changes.events.chunks(200) {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "INSERT INTO routing_events (experiment_id, at, participant_id, status, previous, group_name, entry, cohort_id, reason, detail) ",
            );
            q.push_values(chunk, |mut row, e| {
                row.push_bind(experiment_id)
                    .push_bind(now)
                    .push_bind(e.participant_id.as_str())
                    .push_bind(e.status.as_str())
                    .push_bind(e.previous.map(ParticipantStatus::as_str))
                    .push_bind(e.group.as_deref())
                    .push_bind(e.entry.as_deref())
                    .push_bind(e.cohort_id.as_deref())
                    .push_bind(e.reason.as_str())
                    .push_bind(e.detail.as_deref());
            });
            q.build().execute(&mut *tx).await?;
        }
        write_slots(&mut tx, experiment_id, version, &changes, &stale_ids).await?;
        tx.commit().await?;
        let mut all = cohorts;
        all.extend(changes.new_cohorts.iter().cloned());
        Ok(crate::store::RouteOutcome::Routed(Routed {
            changes,
            cohorts: all,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn register(
        &self,
        experiment_id: &str,
        participant_id: &str,
        attributes: &serde_json::Value,
    ) -> Result<(Participant, bool), StoreError> {
        let now = now_micros();
        let attributes = attributes.to_string();
        // Insert-or-nothing first: of any number of concurrent
        // registrations (through any replicas) exactly one inserts,
        // so exactly one answers "created". A check-then-insert would
        // let several see "no row yet". One statement, committed on
        // its own: the experiment must be live, and stays so until it
        // commits (on PostgreSQL a shared key lock, which a deletion
        // waits for, and a deletion that committed first is seen;
        // SQLite's single writer gives the same order).
        let inserted: Option<ParticipantRow> = sqlx::query_as(&format!(
            "WITH live AS (SELECT e.id FROM experiments e WHERE e.id = $1 AND e.deleted_at IS NULL{}) \
             INSERT INTO participants (experiment_id, participant_id, status, attributes, wait_seq, created_at, updated_at, last_seen) \
             SELECT live.id, $2, 'new', $3, 0, $4, $4, $4 FROM live WHERE TRUE \
             ON CONFLICT (experiment_id, participant_id) DO NOTHING \
             RETURNING {PARTICIPANT_COLUMNS}",
            DIALECT.lock_shared
        ))
        .bind(experiment_id)
        .bind(participant_id)
        .bind(&attributes)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok((Participant::try_from(row)?, true));
        }
        // Only the attributes change; routing transactions never write
        // them, so neither overwrites the other.
        let row: Option<ParticipantRow> = sqlx::query_as(&format!(
            "UPDATE participants SET attributes = $3, updated_at = $4, last_seen = $4, \
             slots_stale = (status = 'waiting') \
             WHERE experiment_id = $1 AND participant_id = $2 AND EXISTS ({LIVE_EXPERIMENT}) \
             RETURNING {PARTICIPANT_COLUMNS}"
        ))
        .bind(experiment_id)
        .bind(participant_id)
        .bind(&attributes)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        // Neither inserted nor updated: the experiment is gone.
        let row = row.ok_or(StoreError::NotFound)?;
        Ok((Participant::try_from(row)?, false))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn participant(
        &self,
        experiment_id: &str,
        participant_id: &str,
    ) -> Result<Option<Participant>, StoreError> {
        let row: Option<ParticipantRow> = sqlx::query_as(&format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE experiment_id = $1 AND participant_id = $2"
        ))
        .bind(experiment_id)
        .bind(participant_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Participant::try_from).transpose()
    }

    /// Two statements, not one: neither dialect's `UPDATE … RETURNING`
    /// gives the value replaced. Two concurrent touches may both see the
    /// older `last_seen`; the first to read it always does, which is what
    /// the engine needs (the call that brings a participant back runs
    /// matching).
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn touch(
        &self,
        experiment_id: &str,
        participant_id: &str,
    ) -> Result<Option<Touched>, StoreError> {
        let Some(mut participant) = self.participant(experiment_id, participant_id).await? else {
            return Ok(None);
        };
        let previously_seen = participant.last_seen;
        let now = now_micros();
        if now > previously_seen {
            sqlx::query(
                "UPDATE participants SET last_seen = $3 \
                 WHERE experiment_id = $1 AND participant_id = $2 AND (last_seen IS NULL OR last_seen < $3)",
            )
            .bind(experiment_id)
            .bind(participant_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
            participant.last_seen = now;
        }
        Ok(Some(Touched {
            participant,
            previously_seen,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn list_participants(
        &self,
        experiment_id: &str,
        status: Option<&str>,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Option<Vec<Participant>>, StoreError> {
        let mut q = sqlx::QueryBuilder::<Db>::new(format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE experiment_id = "
        ));
        q.push_bind(experiment_id);
        if let Some(after) = after {
            let cursor: Option<(OffsetDateTime,)> = sqlx::query_as(
                "SELECT created_at FROM participants WHERE experiment_id = $1 AND participant_id = $2",
            )
            .bind(experiment_id)
            .bind(after)
            .fetch_optional(&self.pool)
            .await?;
            let Some((created_at,)) = cursor else {
                return Ok(None);
            };
            // (created_at, participant_id) after the cursor's, spelt out:
            // both dialects use participants_by_age for it.
            q.push(" AND (created_at > ")
                .push_bind(created_at)
                .push(" OR (created_at = ")
                .push_bind(created_at)
                .push(" AND participant_id > ")
                .push_bind(after.to_owned())
                .push("))");
        }
        if let Some(status) = status {
            q.push(" AND status = ").push_bind(status.to_owned());
        }
        q.push(" ORDER BY created_at, participant_id LIMIT ")
            .push_bind(limit);
        let rows: Vec<ParticipantRow> = q.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(Participant::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn cohorts(&self, experiment_id: &str) -> Result<Vec<Cohort>, StoreError> {
        let rows: Vec<CohortRow> = sqlx::query_as(&format!(
            "{COHORT_SELECT} WHERE c.experiment_id = $1 ORDER BY c.created_seq"
        ))
        .bind(experiment_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Cohort::from).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn cohorts_named(
        &self,
        experiment_id: &str,
        ids: &[&str],
    ) -> Result<Vec<Cohort>, StoreError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(500) {
            let mut q =
                sqlx::QueryBuilder::<Db>::new(format!("{COHORT_SELECT} WHERE c.experiment_id = "));
            q.push_bind(experiment_id).push(" AND c.id IN ");
            push_list(&mut q, chunk.iter().copied());
            let rows: Vec<CohortRow> = q.build_query_as().fetch_all(&self.pool).await?;
            found.extend(rows.into_iter().map(Cohort::from));
        }
        Ok(found)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn cohort_participants(
        &self,
        experiment_id: &str,
        cohort_id: &str,
    ) -> Result<Vec<Participant>, StoreError> {
        let rows: Vec<ParticipantRow> = sqlx::query_as(&format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE experiment_id = $1 AND cohort_id = $2 ORDER BY participant_id"
        ))
        .bind(experiment_id)
        .bind(cohort_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Participant::try_from).collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn newest_event_id(&self) -> Result<i64, StoreError> {
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM routing_events")
            .fetch_one(&self.pool)
            .await?;
        Ok(newest.unwrap_or(0))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, experiment_id, participant_id FROM routing_events WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn participant_statuses(
        &self,
        participants: &[(String, String)],
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        // Two binds a participant, far below either dialect's limit.
        let mut found = Vec::with_capacity(participants.len());
        for chunk in participants.chunks(1_000) {
            let mut q =
                sqlx::QueryBuilder::<Db>::new("WITH wanted (experiment_id, participant_id) AS (");
            q.push_values(chunk, |mut row, (experiment, participant)| {
                row.push_bind(experiment).push_bind(participant);
            });
            q.push(
                ") SELECT p.experiment_id, p.participant_id, p.status FROM participants p \
                 JOIN wanted w ON p.experiment_id = w.experiment_id AND p.participant_id = w.participant_id",
            );
            found.extend(
                q.build_query_as::<(String, String, String)>()
                    .fetch_all(&self.pool)
                    .await?,
            );
        }
        Ok(found)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn keep_alive(
        &self,
        experiment_id: &str,
        participant_ids: &[String],
        live_cutoff: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let now = now_micros();
        let mut back = Vec::new();
        for chunk in participant_ids.chunks(1_000) {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "SELECT participant_id FROM participants WHERE status = 'waiting' AND COALESCE(last_seen, updated_at) < ",
            );
            q.push_bind(live_cutoff)
                .push(" AND experiment_id = ")
                .push_bind(experiment_id)
                .push(" AND participant_id IN ");
            push_list(&mut q, chunk.iter().map(String::as_str));
            back.extend(
                q.build_query_as::<(String,)>()
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(|(id,)| id),
            );
            let mut q = sqlx::QueryBuilder::<Db>::new("UPDATE participants SET last_seen = ");
            q.push_bind(now)
                .push(" WHERE (last_seen IS NULL OR last_seen < ")
                .push_bind(now)
                .push(") AND experiment_id = ")
                .push_bind(experiment_id)
                .push(" AND participant_id IN ");
            push_list(&mut q, chunk.iter().map(String::as_str));
            q.build().execute(&self.pool).await?;
        }
        Ok(back)
    }

    fn announces_participants(&self) -> bool {
        DIALECT.notify.is_some()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn routing_events(
        &self,
        experiment_id: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT id, at, participant_id, status, previous, group_name, entry, cohort_id, reason, detail FROM routing_events \
             WHERE experiment_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(experiment_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(EventRecord::try_from).collect()
    }

    /// The experiments' (id, cutoff) pairs travel as a `VALUES` list,
    /// and one `EXISTS` probe per pair runs on the partial index of
    /// waiting participants (migration 0004): one statement per tick
    /// instead of one per experiment. The alternative, a deadline
    /// column kept on every waiting participant, would copy
    /// `wait_timeout_seconds` out of the configuration into rows that
    /// every timeout change would have to rewrite; here the timeout
    /// stays where it is defined and the sweeper applies it.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn overdue_experiments(
        &self,
        cutoffs: &[SweepCutoff<'_>],
        now: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        // Two binds a pair: under SQLite's 32 766 and PostgreSQL's
        // 65 535 binds per statement, so one statement up to 10 000
        // experiments with a wait timeout.
        const PAIRS_PER_STATEMENT: usize = 10_000;
        let mut overdue = Vec::new();
        for chunk in cutoffs.chunks(PAIRS_PER_STATEMENT) {
            let mut q =
                sqlx::QueryBuilder::<Db>::new("WITH deadlines (experiment_id, cutoff) AS (");
            q.push_values(chunk, |mut row, (id, cutoff)| {
                row.push_bind(*id).push_bind(*cutoff);
            });
            // A null cutoff (no wait timeout) matches no waiting participant.
            // Acceptance deadlines are stored with each pending participant
            // (migration 0010), probed on participants_accept_by.
            q.push(
                ") SELECT d.experiment_id FROM deadlines d WHERE EXISTS (SELECT 1 FROM participants p \
                 WHERE p.experiment_id = d.experiment_id AND p.status = 'waiting' AND p.waiting_since <= d.cutoff) \
                 OR EXISTS (SELECT 1 FROM participants p WHERE p.experiment_id = d.experiment_id \
                 AND p.status = 'pending' AND p.accept_by <= ",
            );
            q.push_bind(now).push(")");
            let rows: Vec<(String,)> = q.build_query_as().fetch_all(&self.pool).await?;
            overdue.extend(rows.into_iter().map(|(id,)| id));
        }
        Ok(overdue)
    }
}

/// The waiting participants a routing transaction plans with
/// ([`crate::domain::routing::pool`]), oldest first, and the ids of the stale
/// ones among them; `None` when the planner finds its config stale.
///
/// The whole pool when `reslot_all`; otherwise the waiting subjects, the
/// waiting participants with stale slots, every overdue one, and the oldest
/// live, not overdue candidates of each entry the planner asks for (given
/// the arrivals and the open backfill windows).
#[allow(clippy::too_many_arguments)]
async fn read_pool(
    tx: &mut sqlx::Transaction<'_, Db>,
    experiment_id: &str,
    scope: &RouteScope,
    now: OffsetDateTime,
    reslot_all: bool,
    backfill: &[BackfillWindow],
    version: i64,
    subjects: &[Participant],
    planner: &dyn RoutePlanner,
) -> Result<Option<(Vec<Participant>, Vec<String>)>, StoreError> {
    let decode = |rows: Vec<ParticipantRow>| {
        rows.into_iter()
            .map(Participant::try_from)
            .collect::<Result<Vec<_>, _>>()
    };
    if reslot_all {
        let rows: Vec<ParticipantRow> = sqlx::query_as(&format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE experiment_id = $1 AND status = 'waiting' ORDER BY wait_seq"
        ))
        .bind(experiment_id)
        .fetch_all(&mut **tx)
        .await?;
        if planner.pool(version, subjects, &[], backfill).is_err() {
            return Ok(None);
        }
        return Ok(Some((decode(rows)?, Vec::new())));
    }
    let stale_rows: Vec<ParticipantRow> = sqlx::query_as(&format!(
        "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE experiment_id = $1 AND status = 'waiting' \
         AND slots_stale ORDER BY wait_seq"
    ))
    .bind(experiment_id)
    .fetch_all(&mut **tx)
    .await?;
    let stale = decode(stale_rows)?;
    let Ok(reads) = planner.pool(version, subjects, &stale, backfill) else {
        return Ok(None);
    };
    // A timeout too long to subtract makes nobody overdue (and nobody
    // silent): the earliest time there is.
    let cutoff = |seconds: Option<u64>| {
        seconds.map(|t| {
            crate::domain::routing::waiting_cutoff(Some(t), now)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        })
    };
    let overdue_cutoff = cutoff(scope.wait_timeout_seconds);
    let live_cutoff = cutoff(scope.liveness_timeout_seconds);
    let overdue_rows: Vec<ParticipantRow> = match overdue_cutoff {
        Some(overdue) => {
            sqlx::query_as(&format!(
                "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE experiment_id = $1 AND status = 'waiting' \
                 AND waiting_since <= $2 ORDER BY wait_seq"
            ))
            .bind(experiment_id)
            .bind(overdue)
            .fetch_all(&mut **tx)
            .await?
        }
        None => Vec::new(),
    };
    let mut pool: BTreeMap<(i64, String), Participant> = BTreeMap::new();
    let mut add = |p: Participant| {
        pool.insert((p.wait_seq, p.id.clone()), p);
    };
    for p in subjects
        .iter()
        .filter(|p| p.status == ParticipantStatus::Waiting)
    {
        add(p.clone());
    }
    let stale_ids = stale.iter().map(|p| p.id.clone()).collect();
    for p in stale {
        add(p);
    }
    for p in decode(overdue_rows)? {
        add(p);
    }
    let columns = PARTICIPANT_COLUMNS
        .split(", ")
        .map(|c| format!("p.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    // One statement for the entry reads: on participant_slots' primary
    // key, each entry's rows in pool order, joined to their participants to
    // skip the silent and the overdue.
    // (In chunks: six binds a read stay far below either dialect's limit
    // however many entries a config has.)
    for chunk in reads.chunks(100) {
        let mut q = sqlx::QueryBuilder::<Db>::new("");
        for (i, read) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            q.push(format!(
                "SELECT * FROM (SELECT {columns} FROM {} WHERE s.experiment_id = ",
                DIALECT.slot_candidates
            ));
            q.push_bind(experiment_id)
                .push(" AND s.grp = ")
                .push_bind(i64::try_from(read.slot.group).unwrap_or(i64::MAX))
                .push(" AND s.entry = ")
                .push_bind(i64::try_from(read.slot.entry).unwrap_or(i64::MAX))
                .push(" AND p.status = 'waiting'");
            if let Some(live) = live_cutoff {
                q.push(" AND COALESCE(p.last_seen, p.updated_at) >= ")
                    .push_bind(live);
            }
            if let Some(overdue) = overdue_cutoff {
                q.push(" AND p.waiting_since > ").push_bind(overdue);
            }
            q.push(" ORDER BY s.wait_seq");
            if let Some(limit) = read.limit {
                q.push(" LIMIT ")
                    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
            }
            q.push(format!(") r{i}"));
        }
        let rows: Vec<ParticipantRow> = q.build_query_as().fetch_all(&mut **tx).await?;
        for p in decode(rows)? {
            add(p);
        }
    }
    Ok(Some((pool.into_values().collect(), stale_ids)))
}

/// Keeps `participant_slots` in step with the pool: a participant that left
/// it loses its slots, one (re)placed in it gets `slotted`'s; after a config
/// change all are replaced and stamped with the version.
async fn write_slots(
    tx: &mut sqlx::Transaction<'_, Db>,
    experiment_id: &str,
    version: i64,
    changes: &crate::domain::routing::lifecycle::Changes,
    stale: &[String],
) -> Result<(), StoreError> {
    if changes.reslot_all {
        sqlx::query("DELETE FROM participant_slots WHERE experiment_id = $1")
            .bind(experiment_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE experiments SET slots_version = $2 WHERE id = $1")
            .bind(experiment_id)
            .bind(version)
            .execute(&mut **tx)
            .await?;
    } else {
        // Those that were waiting before this transaction have slots: the
        // ones that left the pool, and the ones slotted again without
        // having just started to wait.
        let started: std::collections::HashSet<&str> = changes
            .events
            .iter()
            .filter(|e| e.status == ParticipantStatus::Waiting)
            .map(|e| e.participant_id.as_str())
            .collect();
        let gone: Vec<&str> = changes
            .events
            .iter()
            .filter(|e| e.previous == Some(ParticipantStatus::Waiting))
            .map(|e| e.participant_id.as_str())
            .chain(
                changes
                    .slotted
                    .iter()
                    .map(|s| s.participant_id.as_str())
                    .filter(|id| !started.contains(id)),
            )
            .collect();
        for chunk in gone.chunks(200) {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "DELETE FROM participant_slots WHERE experiment_id = ",
            );
            q.push_bind(experiment_id).push(" AND participant_id IN ");
            push_list(&mut q, chunk.iter().copied());
            q.build().execute(&mut **tx).await?;
        }
    }
    let rows: Vec<(&str, i64, i64, i64)> = changes
        .slotted
        .iter()
        .flat_map(|s| {
            s.slots.iter().map(move |slot| {
                (
                    s.participant_id.as_str(),
                    s.wait_seq,
                    i64::try_from(slot.group).unwrap_or(i64::MAX),
                    i64::try_from(slot.entry).unwrap_or(i64::MAX),
                )
            })
        })
        .collect();
    for chunk in rows.chunks(200) {
        let mut q = sqlx::QueryBuilder::<Db>::new(
            "INSERT INTO participant_slots (experiment_id, grp, entry, wait_seq, participant_id) ",
        );
        q.push_values(chunk, |mut row, (id, seq, group, entry)| {
            row.push_bind(experiment_id)
                .push_bind(*group)
                .push_bind(*entry)
                .push_bind(*seq)
                .push_bind(*id);
        });
        q.build().execute(&mut **tx).await?;
    }
    // Slotted on the attributes this transaction read.
    if changes.reslot_all {
        sqlx::query(
            "UPDATE participants SET slots_stale = FALSE WHERE experiment_id = $1 AND slots_stale",
        )
        .bind(experiment_id)
        .execute(&mut **tx)
        .await?;
        return Ok(());
    }
    for chunk in stale.chunks(200) {
        let mut q = sqlx::QueryBuilder::<Db>::new(
            "UPDATE participants SET slots_stale = FALSE WHERE slots_stale AND experiment_id = ",
        );
        q.push_bind(experiment_id).push(" AND participant_id IN ");
        push_list(&mut q, chunk.iter().map(String::as_str));
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}
