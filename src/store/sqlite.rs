//! Embedded SQLite, the zero-setup default: schema in `migrations/sqlite`.
//!
//! WAL journaling lets readers proceed while one writer writes; the busy
//! timeout makes a second writer wait for the lock instead of failing.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::sql::Dialect;
use super::{ChangeFeed, ExposureRecord, PoolOptions, StoreError};

#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str, options: &PoolOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        if let Some(dir) = connect.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Other(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        Ok(Self { pool })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Other(format!("migration failed: {e}")))
    }

    /// SQLite has no push: other processes on the file learn of changes by
    /// polling the revision.
    async fn subscribe_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        Ok(None)
    }
}

/// The shared implementation of [`Store`](super::Store), compiled for this
/// dialect.
#[path = "queries.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per dialect, on purpose: see queries.rs"
)]
mod queries;

type Backend = SqliteStore;
type Db = sqlx::Sqlite;
const BACKEND: &str = "sqlite";
const DIALECT: Dialect = Dialect {
    // In WAL mode a transaction's first read fixes its snapshot already.
    snapshot: None,
    notify: None,
    // One writer at a time: a guarded statement cannot interleave with
    // a deletion.
    lock_shared: "",
    lock_exclusive: "",
    ledger_rows: "(SELECT json_extract(j.value, '$.experiment') AS experiment, \
                  json_extract(j.value, '$.phase') AS phase, json_extract(j.value, '$.org_id') AS org_id, \
                  json_extract(j.value, '$.unit_id') AS unit_id, json_extract(j.value, '$.treatment') AS treatment, \
                  json_extract(j.value, '$.bucket') AS bucket, json_extract(j.value, '$.reason') AS reason, \
                  json_extract(j.value, '$.first_seen') AS first_seen FROM json_each($1) AS j) AS b",
    // SQLite never reorders the tables of a CROSS JOIN: slots outside.
    slot_candidates: "participant_slots s CROSS JOIN participants p \
                      ON p.experiment_id = s.experiment_id AND p.participant_id = s.participant_id",
};

/// An exposure as the ledger's JSON parameter carries it.
#[derive(serde::Serialize)]
struct LedgerInput<'a> {
    experiment: &'a str,
    phase: i64,
    org_id: &'a str,
    unit_id: &'a str,
    treatment: &'a str,
    bucket: Option<u16>,
    reason: &'a str,
    /// RFC 3339, which SQLite compares as text.
    first_seen: String,
}

/// Binds a batch of ledger rows as [`Dialect::ledger_rows`] reads them: one
/// JSON array, whatever its size.
fn bind_ledger_rows<'q, O>(
    query: sqlx::query::QueryAs<'q, Db, O, sqlx::sqlite::SqliteArguments<'q>>,
    rows: &[&'q ExposureRecord],
) -> Result<sqlx::query::QueryAs<'q, Db, O, sqlx::sqlite::SqliteArguments<'q>>, StoreError> {
    let rows: Vec<LedgerInput<'_>> = rows
        .iter()
        .map(|r| LedgerInput {
            experiment: &r.experiment,
            phase: r.phase,
            org_id: &r.org_id,
            unit_id: &r.unit_id,
            treatment: &r.treatment,
            bucket: r.bucket,
            reason: r.reason,
            first_seen: r
                .first_seen
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        })
        .collect();
    let json = serde_json::to_string(&rows)
        .map_err(|e| StoreError::Other(format!("cannot encode exposures: {e}")))?;
    Ok(query.bind(json))
}
