//! Participant routing (contract §5): register, route, accept, decline, read,
//! cohort views, the audit log, and the timeout sweeper.
//!
//! Every call that can change state runs as one store transaction under the
//! experiment's routing lock; the pure plan in `domain::routing::lifecycle`
//! decides what changes. The configuration the plan uses must be the stored
//! version the lock sees; if this replica's snapshot is behind, it reloads
//! and plans again.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::flags::{path_id, Outcome};
use super::snapshot::ExperimentEntry;
use super::{Engine, EngineError};
use crate::domain::experiment::Experiment;
use crate::domain::routing::lifecycle::{
    self, Cohort, Operation, Participant, Reason, Refusal, Status, Study,
};
use crate::domain::routing::resolve_variables;
use crate::store::{PlanError, RouteScope, Routed, StoreError};

/// How many times a call re-plans after finding its configuration stale.
const PLAN_ATTEMPTS: usize = 3;

#[derive(Debug, Serialize)]
pub struct CohortRef {
    pub id: String,
    pub alias: Option<String>,
    pub name: String,
}

/// A participant as every routing call answers it.
#[derive(Debug, Serialize)]
pub struct ParticipantView {
    pub participant_id: String,
    pub status: Status,
    pub cohort: Option<CohortRef>,
    pub group: Option<String>,
    pub entry: Option<String>,
    pub variables: Map<String, Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub waiting_since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Serialize)]
pub struct Members {
    pub assigned: u32,
    pub pending: u32,
}

#[derive(Debug, Serialize)]
pub struct CohortView {
    pub id: String,
    pub alias: Option<String>,
    pub name: String,
    pub description: String,
    pub capacity: Option<u32>,
    pub members: Members,
    pub overflow_of: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EventView {
    /// Cursor: pass as `before` for older events.
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub participant_id: String,
    pub status: Status,
    pub previous: Option<Status>,
    pub group: Option<String>,
    pub entry: Option<String>,
    pub cohort_id: Option<String>,
    pub reason: Reason,
}

#[derive(Debug, Serialize)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Pass as `before` for the next (older) page; null on the last page.
    pub next_before: Option<i64>,
}

fn participant_view(
    p: &Participant,
    cohorts: &[Cohort],
    experiment: &Experiment,
) -> ParticipantView {
    let cohort = p
        .cohort_id
        .as_ref()
        .and_then(|id| cohorts.iter().find(|c| &c.id == id));
    ParticipantView {
        participant_id: p.id.clone(),
        status: p.status,
        cohort: cohort.map(|c| CohortRef {
            id: c.id.clone(),
            alias: c.alias.clone(),
            name: c.name.clone(),
        }),
        group: p.group.clone(),
        entry: p.entry.clone(),
        variables: resolve_variables(
            &experiment.config.variables,
            cohort.and_then(|c| c.alias.as_deref()),
        ),
        waiting_since: p.waiting_since,
        updated_at: p.updated_at,
    }
}

fn no_participant(id: &str) -> EngineError {
    EngineError::NotFound(format!("no participant {id:?}"))
}

impl Engine {
    fn routable(&self, key: &str) -> Result<Arc<ExperimentEntry>, EngineError> {
        let entry = self.experiment_entry(key)?;
        if let Err(e) = &entry.experiment {
            return Err(EngineError::Unavailable(e.clone()));
        }
        Ok(entry)
    }

    /// Runs one routing call; returns what was written and the entry it was
    /// planned with.
    async fn run_routing(
        &self,
        key: &str,
        participant_id: &str,
        operation: Operation,
    ) -> Result<(Routed, Arc<ExperimentEntry>), EngineError> {
        for _ in 0..PLAN_ATTEMPTS {
            let entry = self.routable(key)?;
            let outcome = {
                let Ok(experiment) = &entry.experiment else {
                    return Err(EngineError::Internal("checked above".into()));
                };
                let scope = RouteScope {
                    full_pool: operation.forms_groups(),
                    wait_timeout_seconds: experiment
                        .routing
                        .as_ref()
                        .and_then(|r| r.config.wait_timeout_seconds),
                };
                let planner = |version: i64, state: lifecycle::State| {
                    if version != entry.version {
                        return Err(PlanError::StaleConfig);
                    }
                    let study = Study {
                        routing: experiment.routing.as_ref(),
                        cohorts: &experiment.config.cohorts,
                    };
                    lifecycle::plan(&study, state, participant_id, operation, &mut || {
                        uuid::Uuid::new_v4().to_string()
                    })
                    .map_err(PlanError::Refused)
                };
                self.store
                    .route(&entry.id, participant_id, scope, &planner)
                    .await
            };
            match outcome {
                Ok(Ok(routed)) => return Ok((routed, entry)),
                Ok(Err(PlanError::Refused(Refusal::NotFound))) => {
                    return Err(no_participant(participant_id))
                }
                Ok(Err(PlanError::Refused(Refusal::Conflict(m)))) => {
                    return Err(EngineError::Conflict(m))
                }
                // Our snapshot is behind the store (another replica changed or
                // deleted the experiment): catch up and plan again.
                Ok(Err(PlanError::StaleConfig)) | Err(StoreError::NotFound) => {
                    self.refresh().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Unavailable(format!(
            "experiment {key:?} kept changing while routing; try again"
        )))
    }

    async fn answer(
        &self,
        key: &str,
        participant_id: &str,
        operation: Operation,
    ) -> Result<ParticipantView, EngineError> {
        let id = path_id(participant_id, "participant id")?;
        let (routed, entry) = self.run_routing(key, id.as_str(), operation).await?;
        let Ok(experiment) = &entry.experiment else {
            return Err(EngineError::Internal(
                "routed with a broken experiment".into(),
            ));
        };
        let subject = routed
            .changes
            .subject
            .as_ref()
            .ok_or_else(|| no_participant(id.as_str()))?;
        Ok(participant_view(subject, &routed.cohorts, experiment))
    }

    /// `PUT …/participants/{id}`: registers (201) or replaces attributes
    /// (200; the status does not change). A waiting participant is matched
    /// with its new attributes at once.
    pub async fn register_participant(
        &self,
        key: &str,
        participant_id: &str,
        body: Value,
    ) -> Result<(ParticipantView, Outcome), EngineError> {
        let id = path_id(participant_id, "participant id")?;
        let Value::Object(mut body) = body else {
            return Err(EngineError::validation(
                "",
                "must be an object like {\"attributes\": {...}}",
            ));
        };
        if let Some(extra) = body.keys().find(|k| k.as_str() != "attributes") {
            return Err(EngineError::validation(
                format!("/{extra}"),
                "unknown field",
            ));
        }
        let attributes = match body.remove("attributes") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v,
            Some(_) => return Err(EngineError::validation("/attributes", "must be an object")),
        };
        let entry = self.routable(key)?;
        let (participant, created) = self
            .store
            .register(&entry.id, id.as_str(), &attributes)
            .await?;
        let outcome = if created {
            Outcome::Created
        } else {
            Outcome::Updated
        };
        let view = if participant.status == Status::Waiting {
            self.answer(key, id.as_str(), Operation::Sweep).await?
        } else {
            self.get_participant(key, id.as_str()).await?
        };
        Ok((view, outcome))
    }

    /// `POST …/route`: a new participant joins the waiting pool and matching
    /// runs; any other status answers as it is.
    pub async fn route_participant(
        &self,
        key: &str,
        participant_id: &str,
    ) -> Result<ParticipantView, EngineError> {
        self.answer(key, participant_id, Operation::Route).await
    }

    pub async fn accept(
        &self,
        key: &str,
        participant_id: &str,
    ) -> Result<ParticipantView, EngineError> {
        self.answer(key, participant_id, Operation::Accept).await
    }

    pub async fn decline(
        &self,
        key: &str,
        participant_id: &str,
    ) -> Result<ParticipantView, EngineError> {
        self.answer(key, participant_id, Operation::Decline).await
    }

    pub async fn get_participant(
        &self,
        key: &str,
        participant_id: &str,
    ) -> Result<ParticipantView, EngineError> {
        let entry = self.routable(key)?;
        let Ok(experiment) = &entry.experiment else {
            return Err(EngineError::Internal("checked above".into()));
        };
        let p = self
            .store
            .participant(&entry.id, participant_id)
            .await?
            .ok_or_else(|| no_participant(participant_id))?;
        let cohorts = self.store.cohorts(&entry.id).await?;
        Ok(participant_view(&p, &cohorts, experiment))
    }

    pub async fn cohorts(&self, key: &str) -> Result<Vec<CohortView>, EngineError> {
        let entry = self.experiment_entry(key)?;
        Ok(self
            .store
            .cohorts(&entry.id)
            .await?
            .into_iter()
            .map(|c| CohortView {
                id: c.id,
                alias: c.alias,
                name: c.name,
                description: c.description,
                capacity: c.capacity,
                members: Members {
                    assigned: c.assigned,
                    pending: c.pending,
                },
                overflow_of: c.overflow_of,
            })
            .collect())
    }

    pub async fn cohort_participants(
        &self,
        key: &str,
        cohort_id: &str,
    ) -> Result<Vec<ParticipantView>, EngineError> {
        let entry = self.routable(key)?;
        let Ok(experiment) = &entry.experiment else {
            return Err(EngineError::Internal("checked above".into()));
        };
        let cohorts = self.store.cohorts(&entry.id).await?;
        if !cohorts.iter().any(|c| c.id == cohort_id) {
            return Err(EngineError::NotFound(format!(
                "no cohort {cohort_id:?} in experiment {key:?}"
            )));
        }
        let members = self.store.cohort_participants(&entry.id, cohort_id).await?;
        Ok(members
            .iter()
            .map(|p| participant_view(p, &cohorts, experiment))
            .collect())
    }

    pub async fn routing_events(
        &self,
        key: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<EventPage, EngineError> {
        let entry = self.experiment_entry(key)?;
        let mut records = self
            .store
            .routing_events(&entry.id, limit + 1, before)
            .await?;
        let more = records.len() as i64 > limit;
        records.truncate(limit.max(0) as usize);
        let next_before = if more {
            records.last().map(|r| r.id)
        } else {
            None
        };
        let events = records
            .into_iter()
            .map(|r| EventView {
                id: r.id,
                at: r.at,
                participant_id: r.event.participant_id,
                status: r.event.status,
                previous: r.event.previous,
                group: r.event.group,
                entry: r.event.entry,
                cohort_id: r.event.cohort_id,
                reason: r.event.reason,
            })
            .collect();
        Ok(EventPage {
            events,
            next_before,
        })
    }

    /// Times out overdue waiting participants (and re-runs matching) in every
    /// experiment with a wait timeout. Safe on several replicas at once: each
    /// experiment's sweep runs under its routing lock, and a sweep that finds
    /// nothing to do writes nothing.
    pub async fn sweep(&self) -> Result<usize, EngineError> {
        let now = OffsetDateTime::now_utc();
        let snapshot = self.snapshot();
        let mut swept = 0;
        for entry in snapshot.experiments.values() {
            let Some(timeout) = entry
                .experiment
                .as_ref()
                .ok()
                .and_then(|e| e.routing.as_ref())
                .and_then(|r| r.config.wait_timeout_seconds)
            else {
                continue;
            };
            let cutoff = now - time::Duration::seconds(timeout as i64);
            if self.store.has_overdue(&entry.id, cutoff).await? {
                self.run_routing(&entry.key, "", Operation::Sweep).await?;
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// Re-runs matching for one experiment (after its routing config changed).
    pub async fn rematch(&self, key: &str) -> Result<(), EngineError> {
        self.run_routing(key, "", Operation::Sweep)
            .await
            .map(|_| ())
    }

    /// Sweeps every `every` until the task is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(e) = engine.sweep().await {
                    tracing::warn!(error = %e, "routing timeout sweep failed; retrying on the next tick");
                }
            }
        })
    }
}
