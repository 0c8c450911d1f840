//! Deciding a unit's treatment (§4.3), single and batch.
//!
//! The decision is taken from the snapshot without awaiting anything; only a
//! sticky experiment goes on to read (through a per-version cache) and write
//! its stored assignment.

use crate::engine::{Missing, Unavailable};
use std::sync::Arc;

use serde_json::{Map, Value};
use tracing::Instrument;

use super::exposures::Ledger;
use super::snapshot::{ExperimentEntry, Snapshot};
use super::sticky::StickyPending;
use super::{Engine, EngineError};
use crate::domain::experiment::{AssignmentReason, Precheck};
use crate::domain::ids::{Key, OrgId, UnitId};
use crate::domain::problem::pointer;

/// At most this many items in one batch.
pub const MAX_BATCH: usize = 1000;

/// The answer for one unit.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub experiment: String,
    pub version: i64,
    pub org_id: String,
    pub unit_id: String,
    /// `null` means not in the experiment; `reason` says why.
    pub treatment: Option<String>,
    pub payload: Value,
    /// `null` when the decision did not need the bucket.
    pub bucket: Option<u16>,
    pub reason: AssignmentReason,
}

/// One item of a batch: the experiment key and the request, or why the
/// item could not be read.
pub type BatchItem = Result<(String, AssignRequest), EngineError>;

/// A parsed assignment request.
#[derive(Debug)]
pub struct AssignRequest {
    pub org_id: OrgId,
    pub unit_id: UnitId,
    pub attributes: Map<String, Value>,
}

enum Step {
    Done(Assignment),
    Sticky(StickyPending),
    /// The snapshot has no experiment under the key (the request is given
    /// back, to decide again once the store has been asked).
    Unknown(AssignRequest),
}

/// Builds an answer, counts it and records it for the ledger.
pub(crate) fn answer(
    ledger: &Ledger,
    entry: &ExperimentEntry,
    org_id: OrgId,
    unit_id: UnitId,
    treatment: Option<usize>,
    bucket: Option<u16>,
    reason: AssignmentReason,
) -> Assignment {
    entry.counters.count(treatment, reason);
    let chosen = treatment.and_then(|i| {
        entry
            .experiment
            .as_ref()
            .ok()
            .and_then(|e| e.config.treatments.get(i))
    });
    ledger.record(
        entry,
        org_id.as_str(),
        unit_id.as_str(),
        chosen.map(|t| t.name.as_str()),
        bucket,
        reason,
    );
    Assignment {
        experiment: entry.key.clone(),
        version: entry.version,
        org_id: org_id.into_string(),
        unit_id: unit_id.into_string(),
        treatment: chosen.map(|t| t.name.as_str().to_owned()),
        payload: chosen.map_or(Value::Null, |t| t.payload.clone()),
        bucket,
        reason,
    }
}

/// Steps 1–3 and, for non-sticky experiments, step 5 of §4.3: pure reads of
/// the snapshot.
fn decide(
    snapshot: &Snapshot,
    ledger: &Ledger,
    key: &str,
    request: AssignRequest,
) -> Result<Step, EngineError> {
    let Some(entry) = snapshot.experiments.get(key) else {
        return Ok(Step::Unknown(request));
    };
    let experiment = entry
        .experiment
        .as_ref()
        .map_err(|e| EngineError::from(Unavailable::BrokenConfig(e.clone())))?;
    let AssignRequest {
        org_id,
        unit_id,
        attributes,
    } = request;

    let mut broken_gate = None;
    let precheck = experiment.precheck(org_id.as_str(), unit_id.as_str(), |flag_key: &Key| {
        let Some(flag_entry) = snapshot.flags.get(flag_key.as_str()) else {
            return false;
        };
        match flag_entry.decide(org_id.as_str(), attributes) {
            Ok(decision) => decision.enabled,
            Err(e) => {
                broken_gate = Some(e.to_owned());
                false
            }
        }
    });
    if let Some(e) = broken_gate {
        return Err(Unavailable::BrokenGate {
            experiment: key.to_owned(),
            problem: e,
        }
        .into());
    }
    match precheck {
        Precheck::Out(reason) => {
            return Ok(Step::Done(answer(
                ledger, entry, org_id, unit_id, None, None, reason,
            )));
        }
        // A QA pin: no eligibility, no bucket, nothing stored (§4.3 1a).
        Precheck::Forced(treatment) => {
            return Ok(Step::Done(answer(
                ledger,
                entry,
                org_id,
                unit_id,
                Some(treatment),
                None,
                AssignmentReason::Forced,
            )));
        }
        Precheck::Continue => {}
    }
    let bucket = experiment.bucket(org_id.as_str(), unit_id.as_str());
    if experiment.config.sticky {
        return Ok(Step::Sticky(StickyPending {
            entry: Arc::clone(entry),
            org_id,
            unit_id,
            bucket,
        }));
    }
    let treatment = experiment.treatment_at(bucket);
    let reason = if treatment.is_some() {
        AssignmentReason::Assigned
    } else {
        AssignmentReason::NotInCoverage
    };
    Ok(Step::Done(answer(
        ledger,
        entry,
        org_id,
        unit_id,
        treatment,
        Some(bucket),
        reason,
    )))
}

impl Engine {
    /// `POST /v1/experiments/{key}/assign`.
    pub async fn assign(
        &self,
        key: &str,
        request: AssignRequest,
    ) -> Result<Assignment, EngineError> {
        // At DEBUG only: a span per assignment would cost the hot path.
        let span = tracing::debug_span!(
            "assign",
            experiment = key,
            org_id = request.org_id.as_str(),
            unit_id = request.unit_id.as_str()
        );
        let mut step =
            span.in_scope(|| decide(&self.snapshot.load(), &self.ledger, key, request))?;
        // A key this replica does not know yet is looked up in the store
        // before it is called unknown (§7); a known key costs nothing more.
        if let Step::Unknown(request) = step {
            self.experiment_entry(key).await?;
            step = span.in_scope(|| decide(&self.snapshot.load(), &self.ledger, key, request))?;
        }
        match step {
            Step::Unknown(_) => Err(Missing::Experiment(key.to_string()).into()),
            Step::Done(assignment) => Ok(assignment),
            Step::Sticky(pending) => {
                let resolved = self.resolve_sticky(vec![(0, pending)]).instrument(span);
                resolved.await.pop().map_or_else(
                    || Err(EngineError::invariant("a sticky decision went unanswered")),
                    |(_, answer)| answer,
                )
            }
        }
    }

    /// `POST /v1/assign`: every item answered in order; an item's error does
    /// not fail the others.
    pub async fn assign_batch(
        &self,
        items: Vec<BatchItem>,
    ) -> Vec<Result<Assignment, EngineError>> {
        // Every decision from one snapshot; sticky ones are then resolved
        // together (see `engine::sticky`).
        let mut results: Vec<Option<Result<Assignment, EngineError>>> =
            Vec::with_capacity(items.len());
        let mut sticky = Vec::new();
        // Keys this replica does not know yet: one look at the store for
        // all of them. If it fails, only their items fail.
        let lookup = {
            let snapshot = self.snapshot.load();
            let unknown = items
                .iter()
                .flatten()
                .any(|(k, _)| !snapshot.experiments.contains_key(k) && Key::parse(k).is_ok());
            if unknown {
                self.look_up().await
            } else {
                Ok(())
            }
        };
        {
            let snapshot = self.snapshot.load();
            for (i, item) in items.into_iter().enumerate() {
                let step = item.and_then(|(k, request)| {
                    match (decide(&snapshot, &self.ledger, &k, request), &lookup) {
                        (Ok(Step::Unknown(_)), Err(failed)) => Err(failed.clone()),
                        (Ok(Step::Unknown(_)), Ok(())) => {
                            Err(Missing::Experiment(k.clone()).into())
                        }
                        (step, _) => step,
                    }
                });
                match step {
                    Ok(Step::Done(assignment)) => results.push(Some(Ok(assignment))),
                    Ok(Step::Sticky(pending)) => {
                        results.push(None);
                        sticky.push((i, pending));
                    }
                    // Turned into an error above.
                    Ok(Step::Unknown(_)) => results.push(Some(Err(EngineError::invariant(
                        "an unknown experiment was not refused",
                    )))),
                    Err(e) => results.push(Some(Err(e))),
                }
            }
        }
        for (i, answer) in self.resolve_sticky(sticky).await {
            results[i] = Some(answer);
        }
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| Err(EngineError::invariant("a batch item was not answered")))
                    // Pointers are built only for the items that failed.
                    .map_err(|e| e.within(&pointer("/items", i)))
            })
            .collect()
    }
}
