//! PostgreSQL, the production store: schema in `migrations/postgres`.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::sql::impl_sql_store;
use super::PoolOptions;

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, options: &PoolOptions) -> Result<Self, super::StoreError> {
        let connect = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        Ok(Self { pool })
    }

    async fn run_migrations(&self) -> Result<(), super::StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| super::StoreError::Other(format!("migration failed: {e}")))
    }
}

// READ COMMITTED would let each query of a load see a different commit.
impl_sql_store!(
    PgStore,
    sqlx::Postgres,
    "postgres",
    Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
);
