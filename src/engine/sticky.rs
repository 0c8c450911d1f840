//! Steps 4 and 5 of §4.3 for sticky experiments, in one place for single
//! and batch assignments alike (a single assignment is a batch of one).
//!
//! The rule: a unit's stored treatment wins while it is active; otherwise
//! the bucket's treatment is stored, first write wins across replicas, and
//! answered. Units are resolved in rounds, with a few queries per
//! experiment per round rather than a few per unit:
//!
//! 1. what is stored: the per-version cache, then one read per experiment
//!    for the units it does not hold;
//! 2. each unit is answered from what is stored (`sticky`), from a free
//!    bucket (`not_in_coverage`), or claims its bucket's treatment;
//! 3. the claims: new rows in one multi-row insert per experiment (a row
//!    that exists meanwhile is left alone), a row holding an inactive
//!    treatment replaced only while it still holds it;
//! 4. the winners: one read per experiment. A unit whose claim won is
//!    `assigned`; one that lost a race goes to the next round, where the
//!    winner is what is stored.
//!
//! A unit repeated in a batch waits for the next round too, so every answer
//! is the one the items would have got one after another.

use crate::engine::Missing;
use crate::engine::Unavailable;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::assign::{answer, Assignment};
use super::exposures::Ledger;
use super::snapshot::ExperimentEntry;
use super::{Engine, EngineError};
use crate::domain::experiment::AssignmentReason;
use crate::domain::ids::{OrgId, UnitId};
use crate::store::StoreError;

/// More rounds than this means writers keep replacing the unit's row.
const ROUNDS: usize = 4;

/// A sticky decision whose in-memory part is done: the unit's bucket is known.
#[derive(Debug)]
pub(crate) struct StickyPending {
    pub entry: Arc<ExperimentEntry>,
    pub org_id: OrgId,
    pub unit_id: UnitId,
    pub bucket: u16,
}

/// (experiment id, org id, unit id).
type UnitKey = (String, String, String);

/// Per experiment id: its version and the (org, unit, treatment) rows to insert.
type Inserts = HashMap<String, (i64, Vec<(String, String, String)>)>;

impl StickyPending {
    /// The answer for this unit, counted.
    fn answer(
        self,
        ledger: &Ledger,
        treatment: Option<usize>,
        bucket: Option<u16>,
        reason: AssignmentReason,
    ) -> Assignment {
        answer(
            ledger,
            &self.entry,
            self.org_id,
            self.unit_id,
            treatment,
            bucket,
            reason,
        )
    }

    fn key(&self) -> UnitKey {
        (
            self.entry.id.clone(),
            self.org_id.as_str().to_owned(),
            self.unit_id.as_str().to_owned(),
        )
    }
}

/// A claim made in this round: the unit and the treatment it claimed.
struct Claim {
    at: usize,
    pending: StickyPending,
    index: usize,
}

fn no_experiment(entry: &ExperimentEntry) -> EngineError {
    Missing::Experiment(entry.key.clone()).into()
}

/// A store failure for an experiment's units; "not found" means the
/// experiment was deleted since this replica looked.
fn failed(entry: &ExperimentEntry, e: StoreError) -> EngineError {
    match e {
        StoreError::NotFound => no_experiment(entry),
        other => other.into(),
    }
}

impl Engine {
    /// Resolves sticky decisions; each answer comes back with the position
    /// it was given.
    pub(crate) async fn resolve_sticky(
        &self,
        pendings: Vec<(usize, StickyPending)>,
    ) -> Vec<(usize, Result<Assignment, EngineError>)> {
        let mut out = Vec::with_capacity(pendings.len());
        // What is stored per unit, once known: `None` is "no row".
        let mut stored: HashMap<UnitKey, Option<String>> = HashMap::new();
        let mut todo = pendings;
        for _ in 0..ROUNDS {
            if todo.is_empty() {
                break;
            }
            let mut seen = HashSet::new();
            let (now, mut later): (Vec<_>, Vec<_>) =
                todo.into_iter().partition(|(_, p)| seen.insert(p.key()));
            let mut errors = self.learn_stored(&now, &mut stored).await;

            // Answer what can be answered; claim the rest.
            let mut inserts = Inserts::new();
            let mut replaces = Vec::new();
            let mut claims = Vec::new();
            for (at, p) in now {
                if let Some(e) = errors.get(&p.entry.id) {
                    out.push((at, Err(e.clone())));
                    continue;
                }
                let Ok(experiment) = &p.entry.experiment else {
                    out.push((at, Err(EngineError::invariant("checked when decided"))));
                    continue;
                };
                let key = p.key();
                let current = stored.get(&key).cloned().flatten();
                if let Some(index) = current
                    .as_deref()
                    .and_then(|t| experiment.active_treatment(t))
                {
                    let name = experiment.config.treatments[index].name.as_str();
                    p.entry.sticky.put(&key.1, &key.2, name);
                    let bucket = None;
                    out.push((
                        at,
                        Ok(p.answer(&self.ledger, Some(index), bucket, AssignmentReason::Sticky)),
                    ));
                    continue;
                }
                let Some(index) = experiment.treatment_at(p.bucket) else {
                    let bucket = Some(p.bucket);
                    out.push((
                        at,
                        Ok(p.answer(&self.ledger, None, bucket, AssignmentReason::NotInCoverage)),
                    ));
                    continue;
                };
                let name = experiment.config.treatments[index].name.as_str().to_owned();
                match current {
                    None => inserts
                        .entry(key.0.clone())
                        .or_insert_with(|| (p.entry.version, Vec::new()))
                        .1
                        .push((key.1, key.2, name)),
                    Some(old) => replaces.push((key, name, p.entry.version, old)),
                }
                claims.push(Claim {
                    at,
                    pending: p,
                    index,
                });
            }

            // The claims, then who won.
            for (id, (version, rows)) in &inserts {
                if let Err(e) = self.store.sticky_insert_many(id, *version, rows).await {
                    errors.insert(id.clone(), e.into());
                    continue;
                }
                let keys: Vec<(String, String)> = rows
                    .iter()
                    .map(|(o, u, _)| (o.clone(), u.clone()))
                    .collect();
                for (org, unit, _) in rows {
                    stored.insert((id.clone(), org.clone(), unit.clone()), None);
                }
                match self.store.sticky_get_many(id, &keys).await {
                    Ok(found) => {
                        for (org, unit, t) in found {
                            stored.insert((id.clone(), org, unit), Some(t));
                        }
                    }
                    Err(e) => {
                        errors.insert(id.clone(), e.into());
                    }
                }
            }
            for ((id, org, unit), name, version, old) in replaces {
                let winner = self
                    .store
                    .sticky_claim(&id, &org, &unit, &name, version, Some(&old))
                    .await;
                match winner {
                    Ok(w) => {
                        stored.insert((id, org, unit), Some(w));
                    }
                    Err(StoreError::NotFound) => {
                        stored.insert((id, org, unit), None);
                    }
                    Err(e) => {
                        errors.insert(id, e.into());
                    }
                }
            }
            for Claim {
                at,
                pending: p,
                index,
            } in claims
            {
                if let Some(e) = errors.get(&p.entry.id) {
                    out.push((at, Err(e.clone())));
                    continue;
                }
                let Ok(experiment) = &p.entry.experiment else {
                    continue;
                };
                let key = p.key();
                let name = experiment.config.treatments[index].name.as_str();
                match stored.get(&key).cloned().flatten() {
                    Some(winner) if winner == name => {
                        p.entry.sticky.put(&key.1, &key.2, name);
                        let bucket = Some(p.bucket);
                        out.push((
                            at,
                            Ok(p.answer(
                                &self.ledger,
                                Some(index),
                                bucket,
                                AssignmentReason::Assigned,
                            )),
                        ));
                    }
                    // Another writer won: its treatment is what is stored now.
                    Some(_) => later.push((at, p)),
                    // Nothing stored even after a claim: the experiment is gone.
                    None => out.push((at, Err(failed(&p.entry, StoreError::NotFound)))),
                }
            }
            todo = later;
        }
        out.extend(
            todo.into_iter()
                .map(|(at, _)| (at, Err(EngineError::from(Unavailable::StickyContended)))),
        );
        out
    }

    /// Fills in `stored` for the units of `round` it does not know yet:
    /// from the per-version cache, else one read per experiment. Answers the
    /// experiments whose read failed.
    async fn learn_stored(
        &self,
        round: &[(usize, StickyPending)],
        stored: &mut HashMap<UnitKey, Option<String>>,
    ) -> HashMap<String, EngineError> {
        let mut misses: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (_, p) in round {
            let key = p.key();
            if stored.contains_key(&key) {
                continue;
            }
            match p.entry.sticky.get(&key.1, &key.2) {
                Some(t) => {
                    stored.insert(key, Some(t));
                }
                None => misses.entry(key.0).or_default().push((key.1, key.2)),
            }
        }
        let mut errors = HashMap::new();
        for (id, keys) in misses {
            match self.store.sticky_get_many(&id, &keys).await {
                Ok(found) => {
                    for (org, unit) in keys {
                        stored.insert((id.clone(), org, unit), None);
                    }
                    for (org, unit, t) in found {
                        stored.insert((id.clone(), org, unit), Some(t));
                    }
                }
                Err(e) => {
                    errors.insert(id, e.into());
                }
            }
        }
        errors
    }
}
