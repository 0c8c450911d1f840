//! The SQL both backends share.
//!
//! PostgreSQL and SQLite accept the same statements here (`$n` parameters,
//! `ON CONFLICT`, `RETURNING`, partial unique indexes), and their schemas
//! store the same column types through sqlx (JSON documents as TEXT,
//! timestamps as `time::OffsetDateTime`). So the implementation is written
//! once, as a macro instantiated by `postgres.rs` and `sqlite.rs` for their
//! pool types; what really differs per dialect (connection options,
//! migrations) lives in those files.

/// Implements [`crate::store::Store`] for a struct with a `pool` field and a
/// `run_migrations` method. `$snapshot_sql` is the statement (if any) that
/// makes a transaction read one consistent snapshot.
macro_rules! impl_sql_store {
    ($store:ty, $backend:literal, $snapshot_sql:expr) => {
        use async_trait::async_trait;
        use time::OffsetDateTime;
        use $crate::store::{
            ExperimentRecord, FlagRecord, FlagWritten, Loaded, OverrideRecord, Plan, Planner, Store, StoreError,
            VersionRecord,
        };

        type FlagRow = (String, i64, String, OffsetDateTime, OffsetDateTime);
        type OverrideRow = (String, String, bool, OffsetDateTime);
        type ExperimentRow = (String, String, i64, String, String, OffsetDateTime, OffsetDateTime);

        const EXPERIMENT_SELECT: &str = "SELECT e.id, e.key, e.version, v.config, v.layout, e.created_at, e.updated_at \
             FROM experiments e JOIN experiment_versions v ON v.experiment_id = e.id AND v.version = e.version \
             WHERE e.deleted_at IS NULL";

        fn flag_record(r: FlagRow) -> FlagRecord {
            FlagRecord { key: r.0, version: r.1, config: r.2, created_at: r.3, updated_at: r.4 }
        }

        fn override_record(r: OverrideRow) -> OverrideRecord {
            OverrideRecord { flag_key: r.0, org_id: r.1, enabled: r.2, updated_at: r.3 }
        }

        fn experiment_record(r: ExperimentRow) -> ExperimentRecord {
            ExperimentRecord {
                id: r.0,
                key: r.1,
                version: r.2,
                config: r.3,
                layout: r.4,
                created_at: r.5,
                updated_at: r.6,
            }
        }

        /// The first statement of every configuration write (see the store module docs).
        const BUMP_REVISION: &str = "UPDATE config_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision";

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                self.run_migrations().await
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn revision(&self) -> Result<i64, StoreError> {
                let (revision,): (i64,) = sqlx::query_as("SELECT revision FROM config_revision WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(revision)
            }

            async fn load(&self) -> Result<Loaded, StoreError> {
                // One read transaction: every query sees the same snapshot,
                // so the rows belong to the revision read with them.
                let mut tx = self.pool.begin().await?;
                if let Some(sql) = $snapshot_sql {
                    sqlx::query(sql).execute(&mut *tx).await?;
                }
                let (revision,): (i64,) = sqlx::query_as("SELECT revision FROM config_revision WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
                let flags: Vec<FlagRow> = sqlx::query_as("SELECT key, version, config, created_at, updated_at FROM flags")
                    .fetch_all(&mut *tx)
                    .await?;
                let overrides: Vec<OverrideRow> =
                    sqlx::query_as("SELECT flag_key, org_id, enabled, updated_at FROM flag_overrides")
                        .fetch_all(&mut *tx)
                        .await?;
                let experiments: Vec<ExperimentRow> = sqlx::query_as(EXPERIMENT_SELECT).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(Loaded {
                    revision,
                    flags: flags.into_iter().map(flag_record).collect(),
                    overrides: overrides.into_iter().map(override_record).collect(),
                    experiments: experiments.into_iter().map(experiment_record).collect(),
                })
            }

            async fn put_flag(
                &self,
                key: &str,
                config: &serde_json::Value,
                expected_version: Option<i64>,
            ) -> Result<FlagWritten, StoreError> {
                let mut tx = self.pool.begin().await?;
                let (revision,): (i64,) = sqlx::query_as(BUMP_REVISION).fetch_one(&mut *tx).await?;
                let current: Option<FlagRow> =
                    sqlx::query_as("SELECT key, version, config, created_at, updated_at FROM flags WHERE key = $1")
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?;
                let text = config.to_string();
                let now = OffsetDateTime::now_utc();
                let written = match current {
                    None if expected_version.is_some() => return Err(StoreError::Stale),
                    Some(row) if expected_version.is_some_and(|v| v != row.1) => return Err(StoreError::Stale),
                    Some(row) if serde_json::from_str::<serde_json::Value>(&row.2).ok().as_ref() == Some(config) => {
                        // Nothing to write: the transaction rolls back on drop
                        // and the revision stays as it was.
                        return Ok(FlagWritten::Unchanged(flag_record(row)));
                    }
                    Some(_) => {
                        let row: FlagRow = sqlx::query_as(
                            "UPDATE flags SET version = version + 1, config = $2, updated_at = $3 WHERE key = $1 \
                             RETURNING key, version, config, created_at, updated_at",
                        )
                        .bind(key)
                        .bind(&text)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                        FlagWritten::Updated(flag_record(row), revision)
                    }
                    None => {
                        let row: FlagRow = sqlx::query_as(
                            "INSERT INTO flags (key, version, config, created_at, updated_at) VALUES ($1, 1, $2, $3, $3) \
                             RETURNING key, version, config, created_at, updated_at",
                        )
                        .bind(key)
                        .bind(&text)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                        FlagWritten::Created(flag_record(row), revision)
                    }
                };
                tx.commit().await?;
                Ok(written)
            }

            async fn delete_flag(&self, key: &str) -> Result<i64, StoreError> {
                let mut tx = self.pool.begin().await?;
                let (revision,): (i64,) = sqlx::query_as(BUMP_REVISION).fetch_one(&mut *tx).await?;
                let deleted = sqlx::query("DELETE FROM flags WHERE key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)
                    .map_err(|e| match e {
                        StoreError::MissingReference => {
                            StoreError::Conflict(format!("flag {key:?} is the eligibility flag of an experiment"))
                        }
                        other => other,
                    })?;
                if deleted.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                tx.commit().await?;
                Ok(revision)
            }

            async fn set_override(
                &self,
                flag_key: &str,
                org_id: &str,
                enabled: bool,
            ) -> Result<(OverrideRecord, bool, i64), StoreError> {
                let mut tx = self.pool.begin().await?;
                let (revision,): (i64,) = sqlx::query_as(BUMP_REVISION).fetch_one(&mut *tx).await?;
                let existing: Option<(bool,)> =
                    sqlx::query_as("SELECT enabled FROM flag_overrides WHERE flag_key = $1 AND org_id = $2")
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
                .bind(OffsetDateTime::now_utc())
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::from)
                .map_err(|e| match e {
                    StoreError::MissingReference => StoreError::NotFound,
                    other => other,
                })?;
                tx.commit().await?;
                Ok((override_record(row), existing.is_none(), revision))
            }

            async fn delete_override(&self, flag_key: &str, org_id: &str) -> Result<i64, StoreError> {
                let mut tx = self.pool.begin().await?;
                let (revision,): (i64,) = sqlx::query_as(BUMP_REVISION).fetch_one(&mut *tx).await?;
                let deleted = sqlx::query("DELETE FROM flag_overrides WHERE flag_key = $1 AND org_id = $2")
                    .bind(flag_key)
                    .bind(org_id)
                    .execute(&mut *tx)
                    .await?;
                if deleted.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                tx.commit().await?;
                Ok(revision)
            }

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
                Ok(rows.into_iter().map(override_record).collect())
            }

            async fn write_experiment(
                &self,
                key: &str,
                plan: Planner<'_>,
            ) -> Result<Option<(ExperimentRecord, i64)>, StoreError> {
                let mut tx = self.pool.begin().await?;
                // Taking the configuration lock first means the read below
                // sees every earlier write and nothing changes before ours.
                let (revision,): (i64,) = sqlx::query_as(BUMP_REVISION).fetch_one(&mut *tx).await?;
                let current: Option<ExperimentRow> = sqlx::query_as(&format!("{EXPERIMENT_SELECT} AND e.key = $1"))
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let current = current.map(experiment_record);
                let Plan::Write(new) = plan(current.as_ref()) else {
                    return Ok(None);
                };
                let now = OffsetDateTime::now_utc();
                let (id, version, created_at) = match &current {
                    None => {
                        let id = uuid::Uuid::new_v4().to_string();
                        sqlx::query(
                            "INSERT INTO experiments (id, key, version, eligibility_flag, created_at, updated_at) \
                             VALUES ($1, $2, 1, $3, $4, $4)",
                        )
                        .bind(&id)
                        .bind(key)
                        .bind(new.eligibility_flag.as_deref())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        (id, 1, now)
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
                sqlx::query(
                    "INSERT INTO experiment_versions (experiment_id, version, created_at, actor, config, layout) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&id)
                .bind(version)
                .bind(now)
                .bind(new.actor.as_deref())
                .bind(&config)
                .bind(&layout)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                let record = ExperimentRecord {
                    id,
                    key: key.to_owned(),
                    version,
                    config,
                    layout,
                    created_at,
                    updated_at: now,
                };
                Ok(Some((record, revision)))
            }

            async fn delete_experiment(&self, key: &str) -> Result<i64, StoreError> {
                let mut tx = self.pool.begin().await?;
                let (revision,): (i64,) = sqlx::query_as(BUMP_REVISION).fetch_one(&mut *tx).await?;
                // The row and its versions stay for analysis; clearing the
                // flag reference lets that flag be deleted later.
                let deleted = sqlx::query(
                    "UPDATE experiments SET deleted_at = $2, eligibility_flag = NULL WHERE key = $1 AND deleted_at IS NULL",
                )
                .bind(key)
                .bind(OffsetDateTime::now_utc())
                .execute(&mut *tx)
                .await?;
                if deleted.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                tx.commit().await?;
                Ok(revision)
            }

            async fn experiment_versions(&self, key: &str) -> Result<Vec<VersionRecord>, StoreError> {
                let rows: Vec<(i64, OffsetDateTime, Option<String>, String, String)> = sqlx::query_as(
                    "SELECT v.version, v.created_at, v.actor, v.config, v.layout FROM experiment_versions v \
                     JOIN experiments e ON e.id = v.experiment_id \
                     WHERE e.key = $1 AND e.deleted_at IS NULL ORDER BY v.version DESC",
                )
                .bind(key)
                .fetch_all(&self.pool)
                .await?;
                if rows.is_empty() {
                    return Err(StoreError::NotFound);
                }
                Ok(rows
                    .into_iter()
                    .map(|r| VersionRecord { version: r.0, created_at: r.1, actor: r.2, config: r.3, layout: r.4 })
                    .collect())
            }

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

            async fn sticky_claim(
                &self,
                experiment_id: &str,
                org_id: &str,
                unit_id: &str,
                treatment: &str,
                version: i64,
                replace: Option<&str>,
            ) -> Result<String, StoreError> {
                let now = OffsetDateTime::now_utc();
                match replace {
                    None => {
                        sqlx::query(
                            "INSERT INTO sticky_assignments (experiment_id, org_id, unit_id, treatment, version, assigned_at) \
                             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (experiment_id, org_id, unit_id) DO NOTHING",
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
                             WHERE experiment_id = $1 AND org_id = $2 AND unit_id = $3 AND treatment = $7",
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
                self.sticky_get(experiment_id, org_id, unit_id).await?.ok_or(StoreError::NotFound)
            }
        }
    };
}

pub(crate) use impl_sql_store;
