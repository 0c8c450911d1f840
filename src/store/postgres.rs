//! PostgreSQL, the production store: schema in `migrations/postgres`.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::sql::{Dialect, CHANNEL, PARTICIPANTS_CHANNEL};
use super::{ChangeFeed, ExposureRecord, PoolOptions, Signal, StoreError};

#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// One connection of its own for LISTEN, outside the request pool, so
    /// that a busy pool never delays a notification.
    listen_pool: PgPool,
}

/// Notifications on [`CHANNEL`], sent by every configuration write as it
/// commits (the payload is the new revision), and on
/// [`PARTICIPANTS_CHANNEL`], sent by every routing event.
struct PgFeed {
    listener: PgListener,
    /// Not yet said that the feed is connected.
    announce: bool,
}

#[async_trait::async_trait]
impl ChangeFeed for PgFeed {
    async fn next(&mut self) -> Result<Signal, StoreError> {
        if std::mem::take(&mut self.announce) {
            return Ok(Signal::Connected);
        }
        // `None`: the connection was lost and made again, and whatever was
        // notified in between is lost.
        Ok(match self.listener.try_recv().await? {
            Some(n) if n.channel() == PARTICIPANTS_CHANNEL => match n.payload().split_once(' ') {
                Some((experiment, participant)) => Signal::Participant {
                    experiment_id: experiment.to_owned(),
                    participant_id: participant.to_owned(),
                },
                None => Signal::Connected,
            },
            Some(n) => n
                .payload()
                .parse()
                .map_or(Signal::Connected, Signal::Changed),
            None => Signal::Connected,
        })
    }
}

impl PgStore {
    pub async fn connect(url: &str, options: &PoolOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await?;
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect);
        Ok(Self { pool, listen_pool })
    }

    async fn subscribe_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        let mut listener = PgListener::connect_with(&self.listen_pool).await?;
        listener.listen_all([CHANNEL, PARTICIPANTS_CHANNEL]).await?;
        Ok(Some(Box::new(PgFeed {
            listener,
            announce: true,
        })))
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Other(format!("migration failed: {e}")))
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

type Backend = PgStore;
type Db = sqlx::Postgres;
const BACKEND: &str = "postgres";
const DIALECT: Dialect = Dialect {
    // READ COMMITTED would let each query of a load see a different commit.
    snapshot: Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
    notify: Some("SELECT pg_notify($1, $2)"),
    // KEY SHARE does not wait for routing transactions (they update the
    // row, not its key) nor for other participant writes; FOR UPDATE
    // waits for all of them.
    lock_shared: " FOR KEY SHARE",
    lock_exclusive: " FOR UPDATE",
    // One array per column, sent in binary: the server decodes them
    // several times faster than it parses the same rows from JSON.
    ledger_rows:
        "UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::INTEGER[], \
                  $7::TEXT[], $8::TIMESTAMPTZ[]) \
                  AS b(experiment, phase, org_id, unit_id, treatment, bucket, reason, first_seen)",
    // OFFSET 0 keeps the lateral subquery from being merged into a join the
    // planner would reorder: each slot row looks its participant up by key.
    slot_candidates: "participant_slots s CROSS JOIN LATERAL (SELECT * FROM participants q \
                      WHERE q.experiment_id = s.experiment_id AND q.participant_id = s.participant_id OFFSET 0) p",
};

/// Binds a batch of ledger rows as [`Dialect::ledger_rows`] reads them.
fn bind_ledger_rows<'q, O>(
    query: sqlx::query::QueryAs<'q, Db, O, sqlx::postgres::PgArguments>,
    rows: &[&'q ExposureRecord],
) -> Result<sqlx::query::QueryAs<'q, Db, O, sqlx::postgres::PgArguments>, StoreError> {
    let column =
        |f: fn(&'q ExposureRecord) -> &'q str| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    Ok(query
        .bind(column(|r| &r.experiment))
        .bind(rows.iter().map(|r| r.phase).collect::<Vec<_>>())
        .bind(column(|r| &r.org_id))
        .bind(column(|r| &r.unit_id))
        .bind(column(|r| &r.treatment))
        .bind(
            rows.iter()
                .map(|r| r.bucket.map(i32::from))
                .collect::<Vec<_>>(),
        )
        .bind(column(|r| r.reason))
        .bind(rows.iter().map(|r| r.first_seen).collect::<Vec<_>>()))
}
