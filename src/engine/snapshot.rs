//! The in-memory configuration snapshot read by every decision.
//!
//! A [`Snapshot`] is immutable. Writers build a new one (patching the entry
//! they changed, sharing every other entry by `Arc`) and swap it in
//! atomically; readers never lock and never wait for I/O. A stored document
//! that no longer parses becomes a broken entry that answers 503 for itself
//! only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use time::OffsetDateTime;

use super::counters::{EntryCounters, Registry};
use super::exposures::PhaseCells;
use crate::domain::experiment::{Experiment, ExperimentConfig};
use crate::domain::flag::{CompiledFlag, FlagConfig, FlagDecision};
use crate::domain::ids::Key;
use crate::domain::layout::Range;
use crate::domain::problem::Problem;
use crate::store::{Delta, ExperimentRecord, FlagRecord, Loaded};

/// Sticky assignments remembered per experiment version, at most this many.
const STICKY_CACHE_CAPACITY: usize = 100_000;

#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store's configuration revision this snapshot reflects.
    pub revision: i64,
    pub flags: HashMap<String, Arc<FlagEntry>>,
    pub experiments: HashMap<String, Arc<ExperimentEntry>>,
}

#[derive(Debug)]
pub struct FlagEntry {
    pub key: String,
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The compiled flag, or why its stored document cannot be used;
    /// shared, so that an override change does not copy the compiled rules.
    pub flag: Result<Arc<CompiledFlag>, String>,
    pub overrides: HashMap<String, bool>,
}

#[derive(Debug)]
pub struct ExperimentEntry {
    pub id: String,
    pub key: String,
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The experiment with its layout, or why its stored version cannot be used.
    pub experiment: Result<Experiment, String>,
    /// Stored sticky treatments seen at this version. Safe to cache: a stored
    /// assignment only changes once its treatment is inactive, which takes a
    /// new version, and a new version is a new entry with an empty cache.
    pub sticky: StickyCache,
    /// This experiment's counters (assignments, routing changes), resolved
    /// once per entry so that counting an answer allocates nothing.
    pub counters: EntryCounters,
    /// The version's phase and its answers not yet in the ledger; `None`
    /// when it records no exposures (`exposures: false`, an unusable
    /// config, or a phase not known yet).
    pub exposures: Option<Arc<PhaseCells>>,
}

#[derive(Debug, Default)]
pub struct StickyCache(Mutex<HashMap<String, String>>);

impl StickyCache {
    fn key(org_id: &str, unit_id: &str) -> String {
        // Length-prefixed so that ("a:b", "c") and ("a", "b:c") differ.
        format!("{}:{org_id}{unit_id}", org_id.len())
    }

    pub fn get(&self, org_id: &str, unit_id: &str) -> Option<String> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&Self::key(org_id, unit_id)).cloned()
    }

    pub fn put(&self, org_id: &str, unit_id: &str, treatment: &str) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.len() >= STICKY_CACHE_CAPACITY {
            map.clear();
        }
        map.insert(Self::key(org_id, unit_id), treatment.to_owned());
    }
}

fn describe(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                if p.path.is_empty() { "/" } else { &p.path },
                p.message
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl FlagEntry {
    /// Evaluates the flag for an org (§2): its override, else its rules
    /// against `attributes`, which gain `org_id` as a string. The flag gate
    /// of an assignment and `…/evaluate` both decide here. `Err` names why
    /// the stored flag cannot be used.
    pub fn decide(
        &self,
        org_id: &str,
        mut attributes: serde_json::Map<String, Value>,
    ) -> Result<FlagDecision<'_>, &str> {
        let flag = self.flag.as_ref().map_err(String::as_str)?;
        attributes.insert("org_id".into(), Value::String(org_id.to_owned()));
        let attributes = Value::Object(attributes);
        Ok(flag.evaluate(
            &self.key,
            org_id,
            self.overrides.get(org_id).copied(),
            &attributes,
        ))
    }

    pub fn from_record(record: FlagRecord, overrides: HashMap<String, bool>) -> Self {
        let flag = serde_json::from_str::<Value>(&record.config)
            .map_err(|e| format!("stored flag {:?} is not valid JSON: {e}", record.key))
            .and_then(|doc| {
                FlagConfig::parse(&doc).map_err(|p| {
                    format!("stored flag {:?} is invalid: {}", record.key, describe(&p))
                })
            })
            .map(|config| Arc::new(FlagConfig::compile(config)));
        Self {
            key: record.key,
            version: record.version,
            created_at: record.created_at,
            updated_at: record.updated_at,
            flag,
            overrides,
        }
    }
}

impl ExperimentEntry {
    pub fn from_record(record: ExperimentRecord, counters: &Registry) -> Self {
        let experiment = parse_experiment(&record);
        let treatments = experiment
            .as_ref()
            .map(|e| e.config.treatment_names())
            .unwrap_or_default();
        let counters = counters.register(&record.id, &record.key, &treatments);
        let exposures = match (&experiment, record.phase) {
            (Ok(e), Some(phase)) if e.config.exposures => {
                Some(Arc::new(PhaseCells::new(&record.key, phase)))
            }
            _ => None,
        };
        Self {
            id: record.id,
            key: record.key,
            version: record.version,
            created_at: record.created_at,
            updated_at: record.updated_at,
            experiment,
            sticky: StickyCache::default(),
            counters,
            exposures,
        }
    }

    /// Where this version's answers are counted for the ledger, if it
    /// records them.
    pub fn exposure_cells(&self) -> Option<&PhaseCells> {
        self.exposures.as_deref()
    }

    pub(crate) fn exposure_cells_arc(&self) -> Option<Arc<PhaseCells>> {
        self.exposures.clone()
    }
}

/// The experiment a stored record holds, or why it cannot be used: the same
/// verdict on every replica, since it depends on the record alone.
pub(crate) fn parse_experiment(record: &ExperimentRecord) -> Result<Experiment, String> {
    parse_stored(&record.key, &record.config, &record.layout)
}

/// As [`parse_experiment`], for any stored version's config and layout text.
pub(crate) fn parse_stored(name: &str, config: &str, layout: &str) -> Result<Experiment, String> {
    let key = Key::parse(name).map_err(|e| format!("stored experiment key {name:?} {e}"))?;
    let doc: Value = serde_json::from_str(config)
        .map_err(|e| format!("stored config of experiment {name:?} is not valid JSON: {e}"))?;
    let config = ExperimentConfig::parse(&key, &doc).map_err(|p| {
        format!(
            "stored config of experiment {name:?} is invalid: {}",
            describe(&p)
        )
    })?;
    let ranges: Vec<Range> = serde_json::from_str(layout)
        .map_err(|e| format!("stored layout of experiment {name:?} is malformed: {e}"))?;
    Experiment::from_stored(config, &ranges)
        .map_err(|e| format!("stored layout of experiment {name:?}: {e}"))
}

impl Snapshot {
    pub fn from_loaded(loaded: Loaded, counters: &Registry) -> Self {
        let mut overrides: HashMap<String, HashMap<String, bool>> = HashMap::new();
        for o in loaded.overrides {
            overrides
                .entry(o.flag_key)
                .or_default()
                .insert(o.org_id, o.enabled);
        }
        let flags = loaded
            .flags
            .into_iter()
            .map(|f| {
                let own = overrides.remove(&f.key).unwrap_or_default();
                (f.key.clone(), Arc::new(FlagEntry::from_record(f, own)))
            })
            .collect();
        let experiments = loaded
            .experiments
            .into_iter()
            .map(|e| {
                (
                    e.key.clone(),
                    Arc::new(ExperimentEntry::from_record(e, counters)),
                )
            })
            .collect();
        Self {
            revision: loaded.revision,
            flags,
            experiments,
        }
    }

    /// The snapshot at `delta.revision`: this one with the changed entities
    /// replaced (or removed) and every other entry shared. An experiment
    /// whose stored version did not change keeps its entry (and its cache).
    pub fn with_delta(&self, delta: Delta, counters: &Registry) -> Self {
        let mut next = self.next(delta.revision);
        for (key, flag) in delta.flags {
            match flag {
                Some((record, overrides)) => {
                    let overrides = overrides
                        .into_iter()
                        .map(|o| (o.org_id, o.enabled))
                        .collect();
                    next.flags
                        .insert(key, Arc::new(FlagEntry::from_record(record, overrides)));
                }
                None => {
                    next.flags.remove(&key);
                }
            }
        }
        let mut by_flag: HashMap<String, Vec<(String, Option<bool>)>> = HashMap::new();
        for (flag, org_id, enabled) in delta.overrides {
            by_flag.entry(flag).or_default().push((org_id, enabled));
        }
        for (flag, changes) in by_flag {
            next.set_overrides(&flag, changes);
        }
        for (key, experiment) in delta.experiments {
            match experiment {
                Some(record) => {
                    let same = next
                        .experiments
                        .get(&key)
                        .is_some_and(|e| e.id == record.id && e.version == record.version);
                    if !same {
                        next.experiments.insert(
                            key,
                            Arc::new(ExperimentEntry::from_record(record, counters)),
                        );
                    }
                }
                None => {
                    next.experiments.remove(&key);
                }
            }
        }
        next
    }

    /// A copy sharing every entry, at a new revision, for a writer to patch.
    pub fn next(&self, revision: i64) -> Self {
        Self {
            revision,
            flags: self.flags.clone(),
            experiments: self.experiments.clone(),
        }
    }

    /// A new snapshot with `record` as the current version of its flag,
    /// keeping the flag's overrides.
    pub fn with_flag(&self, revision: i64, record: FlagRecord) -> Self {
        let mut next = self.next(revision);
        let overrides = self
            .flags
            .get(&record.key)
            .map(|f| f.overrides.clone())
            .unwrap_or_default();
        next.flags.insert(
            record.key.clone(),
            Arc::new(FlagEntry::from_record(record, overrides)),
        );
        next
    }

    /// A new snapshot with one override set (`Some`) or removed (`None`).
    pub fn with_override(
        &self,
        revision: i64,
        flag_key: &str,
        org_id: &str,
        enabled: Option<bool>,
    ) -> Self {
        let mut next = self.next(revision);
        next.set_overrides(flag_key, [(org_id.to_owned(), enabled)]);
        next
    }

    /// Sets (`Some`) or removes (`None`) overrides of a flag this snapshot
    /// has, in place: the flag's entry is copied once, however many change.
    fn set_overrides(
        &mut self,
        flag_key: &str,
        changes: impl IntoIterator<Item = (String, Option<bool>)>,
    ) {
        let Some(entry) = self.flags.get(flag_key) else {
            return;
        };
        let mut overrides = entry.overrides.clone();
        for (org_id, enabled) in changes {
            match enabled {
                Some(e) => overrides.insert(org_id, e),
                None => overrides.remove(&org_id),
            };
        }
        let patched = FlagEntry {
            key: entry.key.clone(),
            version: entry.version,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
            flag: entry.flag.clone(),
            overrides,
        };
        self.flags.insert(flag_key.to_owned(), Arc::new(patched));
    }

    pub fn with_experiment(
        &self,
        revision: i64,
        record: ExperimentRecord,
        counters: &Registry,
    ) -> Self {
        let mut next = self.next(revision);
        next.experiments.insert(
            record.key.clone(),
            Arc::new(ExperimentEntry::from_record(record, counters)),
        );
        next
    }
}
