//! Flag operations: upsert, delete, overrides, evaluation (§2).

use crate::engine::{Internal, Missing, Unavailable};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::snapshot::FlagEntry;
use super::{Engine, EngineError, Page, Served, Unusable};
use crate::domain::flag::{FlagConfig, FlagReason};
use crate::domain::ids::{Key, OrgId};
use crate::domain::precondition::Precondition;
use crate::store::{
    FlagEventRecord, FlagRecord, FlagWritten, OverrideRecord, OverrideWritten, Plan, StoreError,
};

/// A flag as served.
pub type ServedFlag = Served<FlagConfig>;

/// A flag's decision for one org, with the reason (§2).
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub flag: String,
    pub org_id: String,
    pub enabled: bool,
    pub reason: FlagReason,
    pub rule: Option<String>,
    pub version: i64,
}

/// How a write went: the HTTP layer answers 201 for `Created`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

fn serve(entry: &FlagEntry) -> Result<ServedFlag, EngineError> {
    let flag = entry
        .flag
        .as_ref()
        .map_err(|e| EngineError::from(Unavailable::BrokenConfig(e.clone())))?;
    Ok(Served {
        key: entry.key.clone(),
        version: entry.version,
        created_at: entry.created_at,
        updated_at: entry.updated_at,
        document: flag.config.clone(),
    })
}

fn not_found(key: &str) -> EngineError {
    Missing::Flag(key.to_owned()).into()
}

impl Engine {
    /// The flag `key` as this replica serves it, looked up in the store
    /// before it is called unknown (see `experiment_entry`).
    async fn flag_entry(&self, key: &str) -> Result<Arc<FlagEntry>, EngineError> {
        self.read_through(key, |s| &s.flags)
            .await?
            .ok_or_else(|| not_found(key))
    }

    /// Every flag, by key; one whose stored document cannot be used is
    /// listed with its problem instead.
    pub fn list_flags(&self) -> Vec<Result<ServedFlag, Unusable>> {
        super::list_sorted(&self.snapshot().flags, serve, |f| f.version)
    }

    pub async fn get_flag(&self, key: &str) -> Result<ServedFlag, EngineError> {
        serve(&*self.flag_entry(key).await?)
    }

    pub async fn put_flag(
        &self,
        key: &Key,
        doc: &Value,
        if_match: Option<Precondition>,
        actor: Option<&str>,
    ) -> Result<(ServedFlag, Outcome), EngineError> {
        let served = self.snapshot().flags.get(key.as_str()).map(|f| f.version);
        let result = self.write_flag(key, doc, if_match, actor).await;
        self.caught_up_after(result, served).await
    }

    async fn write_flag(
        &self,
        key: &Key,
        doc: &Value,
        if_match: Option<Precondition>,
        actor: Option<&str>,
    ) -> Result<(ServedFlag, Outcome), EngineError> {
        let config = FlagConfig::parse(doc).map_err(EngineError::Validation)?;
        let document =
            serde_json::to_value(&config).map_err(|e| EngineError::from(Internal::from(e)))?;
        // Why the planner abandoned, when it did.
        let verdict: Mutex<Option<Result<FlagRecord, EngineError>>> = Mutex::new(None);
        let plan = |current: Option<&FlagRecord>| -> Plan<Value> {
            let mut why = verdict.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(expected) = &if_match {
                if !expected.admits(current.map(|c| c.version)) {
                    *why = Some(Err(EngineError::VersionMismatch {
                        expected: expected.clone(),
                        current: current.map(|c| c.version),
                    }));
                    return Plan::Abandon;
                }
            }
            match current {
                Some(c) if super::unchanged(&c.config, &document) => {
                    *why = Some(Ok(c.clone()));
                    Plan::Abandon
                }
                _ => Plan::Write(document.clone()),
            }
        };
        let _guard = self.writes.lock().await;
        let written = self.store.write_flag(key.as_str(), &plan, actor).await?;
        let (record, outcome) = match written {
            Some(FlagWritten {
                record,
                revision,
                created,
            }) => {
                let patch = record.clone();
                self.install(revision, move |s| s.with_flag(revision, patch))
                    .await;
                let outcome = if created {
                    Outcome::Created
                } else {
                    Outcome::Updated
                };
                (record, outcome)
            }
            None => match verdict.into_inner().unwrap_or_else(|p| p.into_inner()) {
                Some(Ok(unchanged)) => (unchanged, Outcome::Unchanged),
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(EngineError::invariant(
                        "the flag write was abandoned without a reason",
                    ))
                }
            },
        };
        Ok((
            Served {
                key: record.key,
                version: record.version,
                created_at: record.created_at,
                updated_at: record.updated_at,
                document: config,
            },
            outcome,
        ))
    }

    /// Deletes the flag and its overrides; the deletion is a version of its
    /// own, checked against `if_match` in the store's transaction.
    pub async fn delete_flag(
        &self,
        key: &str,
        if_match: Option<Precondition>,
        actor: Option<&str>,
    ) -> Result<(), EngineError> {
        let served = self.snapshot().flags.get(key).map(|f| f.version);
        let result = self.remove_flag(key, if_match, actor).await;
        self.caught_up_after(result, served).await
    }

    async fn remove_flag(
        &self,
        key: &str,
        if_match: Option<Precondition>,
        actor: Option<&str>,
    ) -> Result<(), EngineError> {
        let _guard = self.writes.lock().await;
        let revision = self
            .store
            .delete_flag(key, if_match.as_ref(), actor)
            .await
            .map_err(|e| super::refused_write(e, if_match.as_ref(), || not_found(key)))?;
        self.install(revision, |s| {
            let mut next = s.next(revision);
            next.flags.remove(key);
            next
        })
        .await;
        Ok(())
    }

    pub async fn set_override(
        &self,
        key: &str,
        org: &OrgId,
        enabled: bool,
        actor: Option<&str>,
    ) -> Result<(OverrideRecord, Outcome), EngineError> {
        let _guard = self.writes.lock().await;
        let OverrideWritten {
            record,
            created,
            revision,
        } = self
            .store
            .set_override(key, org.as_str(), enabled, actor)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => not_found(key),
                other => other.into(),
            })?;
        self.install(revision, |s| {
            s.with_override(revision, key, org.as_str(), Some(enabled))
        })
        .await;
        Ok((
            record,
            if created {
                Outcome::Created
            } else {
                Outcome::Updated
            },
        ))
    }

    pub async fn delete_override(
        &self,
        key: &str,
        org_id: &str,
        actor: Option<&str>,
    ) -> Result<(), EngineError> {
        let _guard = self.writes.lock().await;
        let revision = self
            .store
            .delete_override(key, org_id, actor)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => EngineError::from(Missing::Override {
                    flag: key.to_owned(),
                    org: org_id.to_owned(),
                }),
                other => other.into(),
            })?;
        self.install(revision, |s| s.with_override(revision, key, org_id, None))
            .await;
        Ok(())
    }

    /// `GET /v1/flags/{key}/history`: newest first, in pages; readable
    /// after the flag is deleted.
    pub async fn flag_history(
        &self,
        key: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Page<FlagEventRecord, i64>, EngineError> {
        let mut events = self
            .store
            .flag_history(key, limit + 1, before)
            .await?
            .ok_or_else(|| not_found(key))?;
        let more = events.len() as i64 > limit;
        events.truncate(limit.max(0) as usize);
        let next = if more {
            events.last().map(|e| e.id)
        } else {
            None
        };
        Ok(Page {
            items: events,
            next,
        })
    }

    pub async fn list_overrides(
        &self,
        key: &str,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Page<OverrideRecord, String>, EngineError> {
        self.flag_entry(key).await?;
        let mut records = self.store.list_overrides(key, limit + 1, after).await?;
        let more = records.len() as i64 > limit;
        records.truncate(limit.max(0) as usize);
        let next = if more {
            records.last().map(|r| r.org_id.clone())
        } else {
            None
        };
        Ok(Page {
            items: records,
            next,
        })
    }

    /// `POST /v1/flags/{key}/evaluate`: answered from the snapshot, no I/O
    /// (unless the key is unknown: then the store is asked first).
    pub async fn evaluate_flag(
        &self,
        key: &str,
        org: OrgId,
        attributes: Map<String, Value>,
    ) -> Result<Evaluation, EngineError> {
        let entry = self.flag_entry(key).await?;
        let decision = entry
            .decide(org.as_str(), attributes)
            .map_err(|e| EngineError::from(Unavailable::BrokenConfig(e.to_owned())))?;
        Ok(Evaluation {
            flag: entry.key.clone(),
            enabled: decision.enabled,
            reason: decision.reason,
            rule: decision.rule.map(str::to_owned),
            version: entry.version,
            org_id: org.into_string(),
        })
    }
}
