//! Experiment operations: validated upsert with layouts, delete, history (§3).

use crate::engine::{Internal, Missing, Unavailable};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use time::OffsetDateTime;

use super::flags::Outcome;
use super::snapshot::{parse_experiment, parse_stored, ExperimentEntry};
use super::{Engine, EngineError, Served, Unusable};
use crate::domain::experiment::{ExperimentConfig, HashBy};
use crate::domain::ids::Key;
use crate::domain::layout::Range;
use crate::domain::phase::{self, Moved};
use crate::domain::precondition::Precondition;
use crate::store::{ExperimentRecord, ExperimentWritten, NewVersion, Plan, Store, StoreError};

/// An experiment's document and the layout its current version serves.
#[derive(Debug, Clone)]
pub struct Definition {
    pub config: ExperimentConfig,
    pub layout: Vec<Range>,
}

/// An experiment as served.
pub type ServedExperiment = Served<Definition>;

/// One stored version of an experiment, as its history lists it.
#[derive(Debug, Clone)]
pub struct ExperimentVersion {
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub actor: Option<String>,
    /// This version deleted the experiment (its config is null).
    pub deleted: bool,
    pub config: Value,
    pub layout: Value,
    /// The phase the version belongs to (§3).
    pub phase: u32,
    /// The buckets it moved from the previous live version's layout.
    pub moved: Moved,
}

fn not_found(key: &str) -> EngineError {
    Missing::Experiment(key.to_string()).into()
}

fn serve(entry: &ExperimentEntry) -> Result<ServedExperiment, EngineError> {
    let experiment = entry
        .experiment
        .as_ref()
        .map_err(|e| EngineError::from(Unavailable::BrokenConfig(e.clone())))?;
    Ok(Served {
        key: entry.key.clone(),
        version: entry.version,
        created_at: entry.created_at,
        updated_at: entry.updated_at,
        document: Definition {
            config: experiment.config.clone(),
            layout: experiment.ranges(),
        },
    })
}

/// How a stored version randomizes, read from its normalised document
/// (which always states `salt` and `hash_by`); `None` for a deletion. A
/// hand-edited document without them randomizes unlike any other.
fn randomization<'a>(deleted: bool, config: &'a Value, ranges: &'a [Range]) -> phase::Step<'a> {
    if deleted {
        return None;
    }
    Some(phase::Randomization {
        salt: config["salt"].as_str().unwrap_or_default(),
        hash_by: match config["hash_by"].as_str() {
            Some("org") => HashBy::Org,
            _ => HashBy::Unit,
        },
        ranges,
    })
}

/// Parses stored JSON text for the history answer; text that is not JSON
/// (a hand-edited row) is shown as the string it is.
fn stored_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

impl Engine {
    /// The experiment `key` as this replica serves it. A key the snapshot
    /// does not have is looked up in the store before it is called unknown
    /// (§7: create on one replica, use on another at once).
    pub(crate) async fn experiment_entry(
        &self,
        key: &str,
    ) -> Result<Arc<ExperimentEntry>, EngineError> {
        self.read_through(key, |s| &s.experiments)
            .await?
            .ok_or_else(|| not_found(key))
    }

    /// Every experiment, by key; one whose stored config cannot be used is
    /// listed with its problem instead.
    pub fn list_experiments(&self) -> Vec<Result<ServedExperiment, Unusable>> {
        super::list_sorted(&self.snapshot().experiments, serve, |e| e.version)
    }

    pub async fn get_experiment(&self, key: &str) -> Result<ServedExperiment, EngineError> {
        serve(&*self.experiment_entry(key).await?)
    }

    /// Validates and stores a new version (or nothing, for an identical
    /// document), computing its layout from the previous version's. The
    /// previous version is read under the store's configuration lock, so
    /// concurrent writers, on any replica, are applied one after another.
    pub async fn put_experiment(
        &self,
        key: &Key,
        doc: &Value,
        if_match: Option<Precondition>,
        actor: Option<String>,
    ) -> Result<(ServedExperiment, Outcome), EngineError> {
        let served = self
            .snapshot()
            .experiments
            .get(key.as_str())
            .map(|e| e.version);
        let result = self.write_experiment(key, doc, if_match, actor).await;
        self.caught_up_after(result, served).await
    }

    async fn write_experiment(
        &self,
        key: &Key,
        doc: &Value,
        if_match: Option<Precondition>,
        actor: Option<String>,
    ) -> Result<(ServedExperiment, Outcome), EngineError> {
        let config = ExperimentConfig::parse(key, doc).map_err(EngineError::Validation)?;
        let document =
            serde_json::to_value(&config).map_err(|e| EngineError::from(Internal::from(e)))?;
        // A stored version that cannot be used (edited by hand) is repaired by
        // any valid write, an identical document included. Its layout then
        // grows from the newest version that was valid, or from empty.
        let known = self.snapshot().experiments.get(key.as_str()).cloned();
        let fallback: Vec<Range> = match &known {
            Some(entry) if entry.experiment.is_err() => self.last_valid_layout(key.as_str()).await,
            _ => Vec::new(),
        };
        // Why the planner abandoned, when it did.
        let verdict: Mutex<Option<Result<ExperimentRecord, EngineError>>> = Mutex::new(None);
        let plan = |current: Option<&ExperimentRecord>| -> Plan<NewVersion> {
            let abandon = |why| {
                *verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Plan::Abandon
            };
            if let Some(expected) = &if_match {
                if !expected.admits(current.map(|c| c.version)) {
                    return abandon(Err(EngineError::VersionMismatch {
                        expected: expected.clone(),
                        current: current.map(|c| c.version),
                    }));
                }
            }
            // The stored version's verdict: this replica's snapshot already
            // has it when it is the same version (no parsing under the
            // configuration lock); otherwise parse the record.
            let stored = |c: &ExperimentRecord| match &known {
                Some(entry) if entry.id == c.id && entry.version == c.version => entry
                    .experiment
                    .as_ref()
                    .map(|e| e.ranges())
                    .map_err(Clone::clone),
                _ => parse_experiment(c).map(|e| e.ranges()),
            };
            let previous: Vec<Range> = match current.map(|c| (c, stored(c))) {
                Some((c, Ok(ranges))) => {
                    if super::unchanged(&c.config, &document) {
                        return abandon(Ok(c.clone()));
                    }
                    ranges
                }
                Some((c, Err(why))) => {
                    tracing::warn!(experiment = %c.key, version = c.version, problem = %why,
                        "the stored version cannot be used; this write repairs it");
                    fallback.clone()
                }
                None => Vec::new(),
            };
            let ranges = config
                .layout_from(&previous)
                .ranges(&config.treatment_names());
            // The live version's randomization, read as the history reads
            // it, so that a stored phase always equals the one computed.
            let starts_phase = current.is_none_or(|c| {
                let stored_config = stored_json(&c.config);
                let stored_ranges: Vec<Range> = serde_json::from_str(&c.layout).unwrap_or_default();
                randomization(false, &stored_config, &stored_ranges)
                    != randomization(false, &document, &ranges)
            });
            match serde_json::to_value(&ranges) {
                Ok(layout) => Plan::Write(NewVersion {
                    starts_phase,
                    config: document.clone(),
                    layout,
                    eligibility_flag: config
                        .eligibility_flag
                        .as_ref()
                        .map(|k| k.as_str().to_owned()),
                    actor: actor.clone(),
                    cohorts: config.cohorts.clone(),
                }),
                Err(e) => abandon(Err(EngineError::from(Internal::from(e)))),
            }
        };
        let guard = self.writes.lock().await;
        let written = match self.store.write_experiment(key.as_str(), &plan).await {
            Err(e @ StoreError::VersionMismatch { .. }) => {
                return Err(super::refused_write(e, if_match.as_ref(), || {
                    not_found(key.as_str())
                }))
            }
            Err(StoreError::MissingReference) => {
                let flag = config
                    .eligibility_flag
                    .as_ref()
                    .map(|k| k.as_str())
                    .unwrap_or_default();
                return Err(EngineError::validation(
                    "/eligibility_flag",
                    format!("no flag {flag:?}"),
                ));
            }
            other => other?,
        };
        match written {
            Some(ExperimentWritten {
                record,
                revision,
                created,
            }) => {
                let outcome = if created {
                    Outcome::Created
                } else {
                    Outcome::Updated
                };
                let patch = record.clone();
                self.install(revision, move |s| {
                    s.with_experiment(revision, patch, &self.counters)
                })
                .await;
                drop(guard);
                if config.routing.is_some() {
                    // New groups or minimums may make waiting participants
                    // formable now; the write itself has succeeded either way.
                    if let Err(e) = self.rematch(key.as_str()).await {
                        e.count();
                        tracing::warn!(experiment = %key, error = %e, "matching after a config change failed; the sweeper retries");
                    }
                }
                Ok((self.serve_record(record, config)?, outcome))
            }
            None => match verdict.into_inner().unwrap_or_else(|p| p.into_inner()) {
                Some(Ok(unchanged)) => {
                    Ok((self.serve_record(unchanged, config)?, Outcome::Unchanged))
                }
                Some(Err(e)) => Err(e),
                None => Err(EngineError::invariant(
                    "the experiment write was abandoned without a reason",
                )),
            },
        }
    }

    fn serve_record(
        &self,
        record: ExperimentRecord,
        config: ExperimentConfig,
    ) -> Result<ServedExperiment, EngineError> {
        let layout = serde_json::from_str(&record.layout).map_err(|e| {
            EngineError::from(Unavailable::MalformedLayout {
                experiment: record.key.clone(),
                source: Arc::new(e),
            })
        })?;
        Ok(Served {
            key: record.key,
            version: record.version,
            created_at: record.created_at,
            updated_at: record.updated_at,
            document: Definition { config, layout },
        })
    }

    /// The layout of the newest stored version that can be used, or none.
    /// A failure to read the history only costs movement: the new layout
    /// then starts empty.
    async fn last_valid_layout(&self, key: &str) -> Vec<Range> {
        match self.store.experiment_versions(key).await {
            Ok(versions) => versions
                .iter()
                .find_map(|v| parse_stored(key, &v.config, &v.layout).ok())
                .map(|e| e.ranges())
                .unwrap_or_default(),
            Err(e) => {
                super::count_store_error(&e);
                tracing::warn!(experiment = key, error = %e, "cannot read the history to repair from; the new layout starts empty");
                Vec::new()
            }
        }
    }

    /// Takes the experiment out of service; the deletion is a version of
    /// its own, checked against `if_match` in the store's transaction.
    pub async fn delete_experiment(
        &self,
        key: &str,
        if_match: Option<Precondition>,
        actor: Option<String>,
    ) -> Result<(), EngineError> {
        let served = self.snapshot().experiments.get(key).map(|e| e.version);
        let result = self.remove_experiment(key, if_match, actor).await;
        self.caught_up_after(result, served).await
    }

    async fn remove_experiment(
        &self,
        key: &str,
        if_match: Option<Precondition>,
        actor: Option<String>,
    ) -> Result<(), EngineError> {
        let _guard = self.writes.lock().await;
        let revision = self
            .store
            .delete_experiment(key, if_match.as_ref(), actor.as_deref())
            .await
            .map_err(|e| super::refused_write(e, if_match.as_ref(), || not_found(key)))?;
        self.install(revision, |s| {
            let mut next = s.next(revision);
            next.experiments.remove(key);
            next
        })
        .await;
        Ok(())
    }

    pub async fn experiment_versions(
        &self,
        key: &str,
    ) -> Result<Vec<ExperimentVersion>, EngineError> {
        let records = self
            .store
            .experiment_versions(key)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => not_found(key),
                other => other.into(),
            })?;
        // Phases run oldest first; the history is served newest first.
        let mut records = records;
        records.reverse();
        let documents: Vec<(Value, Value, Vec<Range>)> = records
            .iter()
            .map(|r| {
                let ranges = serde_json::from_str(&r.layout).unwrap_or_default();
                (stored_json(&r.config), stored_json(&r.layout), ranges)
            })
            .collect();
        let history: Vec<phase::Step<'_>> = records
            .iter()
            .zip(&documents)
            .map(|(r, (config, _, ranges))| randomization(r.deleted, config, ranges))
            .collect();
        let phases = phase::phases(&history);
        let mut versions: Vec<ExperimentVersion> = records
            .into_iter()
            .zip(documents)
            .zip(phases)
            .map(
                |((r, (config, layout, _)), (phase, moved))| ExperimentVersion {
                    version: r.version,
                    created_at: r.created_at,
                    actor: r.actor,
                    deleted: r.deleted,
                    config,
                    layout,
                    // The stored phase is the one the ledger records under.
                    phase: r.phase.and_then(|p| u32::try_from(p).ok()).unwrap_or(phase),
                    moved,
                },
            )
            .collect();
        versions.reverse();
        Ok(versions)
    }
}

/// Stores the phase of every version stored before phases were, computed
/// from its key's history as `/versions` computes it. Runs before a replica
/// loads its snapshot; replicas starting together compute the same phases,
/// and a phase already stored is kept.
pub(crate) async fn store_missing_phases(store: &dyn Store) -> Result<(), StoreError> {
    for key in store.keys_without_phases().await? {
        let mut records = store.experiment_versions(&key).await?;
        records.reverse();
        let documents: Vec<(Value, Vec<Range>)> = records
            .iter()
            .map(|r| {
                let ranges = serde_json::from_str(&r.layout).unwrap_or_default();
                (stored_json(&r.config), ranges)
            })
            .collect();
        let history: Vec<phase::Step<'_>> = records
            .iter()
            .zip(&documents)
            .map(|(r, (config, ranges))| randomization(r.deleted, config, ranges))
            .collect();
        let phases: Vec<(String, i64, i64)> = records
            .iter()
            .zip(phase::phases(&history))
            .filter(|(r, _)| r.phase.is_none())
            .map(|(r, (phase, _))| (r.experiment_id.clone(), r.version, i64::from(phase)))
            .collect();
        tracing::info!(experiment = %key, versions = phases.len(), "storing the phases of versions written before phases were");
        store.set_phases(&phases).await?;
    }
    Ok(())
}
