//! Participant routing (§5): register, route, accept, decline, complete,
//! drop, move, heartbeat, read, the experimenter's listing, cohort views,
//! the audit log, and the timeout sweeper (wait and acceptance timeouts, and
//! the backfill of the seats they free).
//!
//! Liveness: every participant call records that the participant was heard
//! from (`Store::touch`, outside the routing lock). A waiting participant
//! that was not live is matched again as soon as it is heard from: the call
//! runs a matching pass.
//!
//! Every call that can change state runs as one store transaction under the
//! experiment's routing lock; the pure plan in `domain::routing::lifecycle`
//! decides what changes. The configuration the plan uses must be the stored
//! version the lock sees; if this replica's snapshot is behind, it reloads
//! and plans again.

use crate::engine::{Missing, Unavailable};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::flags::Outcome;
use super::snapshot::ExperimentEntry;
use super::{Engine, EngineError, Page};
use crate::domain::experiment::Experiment;
use crate::domain::ids::ParticipantId;
use crate::domain::routing::lifecycle::{
    self, Cohort, Operation, Participant, ParticipantStatus, Refusal, Study,
};
use crate::domain::routing::pool::{entry_reads, EntryRead, Slot};
use crate::domain::routing::{is_live, resolve_variables};
use crate::store::{
    EventRecord, RouteOutcome, RoutePlanner, RouteScope, Routed, StaleConfig, StoreError,
};

/// How many times a call re-plans after finding its configuration stale.
const PLAN_ATTEMPTS: usize = 3;

/// Most calls planned in one transaction.
const MAX_BATCH: usize = 256;

/// Experiments a sweep runs routing transactions for at once.
const SWEEP_CONCURRENCY: usize = 4;

/// Routing calls waiting for their experiment's next transaction, by key.
#[derive(Default)]
pub(crate) struct RoutingQueues(std::sync::Mutex<HashMap<String, Queue>>);

impl RoutingQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
pub(crate) struct Queue {
    calls: Vec<Call>,
    /// A task is running this experiment's transactions.
    draining: bool,
}

struct Call {
    participant_id: String,
    operation: Operation,
    reply: oneshot::Sender<Result<RoutedParticipant, EngineError>>,
}

/// Forgets an experiment's queue when its drain task ends, however it ends,
/// so that the next call starts a new one; calls still queued (only after a
/// panic) are dropped and their callers get an error rather than waiting.
struct DrainGuard<'a> {
    engine: &'a Engine,
    key: &'a str,
}

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        let mut queues = self.engine.routing_queues.lock();
        if queues
            .get(self.key)
            .is_some_and(|q| q.draining && std::thread::panicking())
        {
            queues.remove(self.key);
        }
    }
}

/// A participant as every routing call answers it: with its cohort, and
/// the variables that cohort resolves to (§5).
#[derive(Debug, Clone)]
pub struct RoutedParticipant {
    pub participant: Participant,
    pub cohort: Option<Cohort>,
    pub variables: Map<String, Value>,
    /// Heard from within the experiment's liveness timeout (always, without one).
    pub live: bool,
}

fn with_cohort(p: Participant, cohorts: &[Cohort], experiment: &Experiment) -> RoutedParticipant {
    let cohort = p
        .cohort_id
        .as_ref()
        .and_then(|id| cohorts.iter().find(|c| &c.id == id));
    let live_cutoff = experiment
        .routing
        .as_ref()
        .and_then(|r| r.config.live_cutoff(OffsetDateTime::now_utc()));
    RoutedParticipant {
        live: is_live(p.last_seen, live_cutoff),
        cohort: cohort.cloned(),
        variables: resolve_variables(
            &experiment.config.variables,
            cohort.and_then(|c| c.alias.as_deref()),
        ),
        participant: p,
    }
}

/// Plans a batch of routing calls against the configuration of one version
/// (see [`crate::store::RoutePlanner`]).
struct Planner<'a> {
    version: i64,
    experiment: &'a Experiment,
    calls: &'a [(String, Operation)],
}

impl Planner<'_> {
    fn check(&self, version: i64) -> Result<(), StaleConfig> {
        if version == self.version {
            Ok(())
        } else {
            Err(StaleConfig)
        }
    }
}

impl RoutePlanner for Planner<'_> {
    fn pool(
        &self,
        version: i64,
        subjects: &[Participant],
        stale: &[Participant],
        backfill: &[lifecycle::BackfillWindow],
    ) -> Result<Vec<EntryRead>, StaleConfig> {
        self.check(version)?;
        let Some(routing) = self.experiment.routing.as_ref() else {
            return Ok(Vec::new());
        };
        let arrivals = lifecycle::arrivals(self.calls, subjects, stale);
        // Each open window's entries, by position in this version's config
        // (a group or entry removed since refills nothing).
        let groups = &routing.config.groups;
        let seats: Vec<(Slot, u32)> = backfill
            .iter()
            .filter_map(|w| {
                let group = groups.iter().position(|g| g.name == w.group)?;
                Some((group, w))
            })
            .flat_map(|(group, w)| {
                w.seats.iter().filter_map(move |seat| {
                    let entry = groups[group]
                        .composition
                        .iter()
                        .position(|e| e.id.as_str() == seat.entry)?;
                    Some((Slot { group, entry }, seat.formed))
                })
            })
            .collect();
        Ok(entry_reads(routing, &arrivals, &seats))
    }

    fn plan(
        &self,
        version: i64,
        state: lifecycle::State,
    ) -> Result<lifecycle::Changes, StaleConfig> {
        self.check(version)?;
        let study = Study {
            routing: self.experiment.routing.as_ref(),
            cohorts: &self.experiment.config.cohorts,
        };
        Ok(lifecycle::plan(&study, state, self.calls, &mut || {
            uuid::Uuid::new_v4().to_string()
        }))
    }
}

impl Engine {
    /// The cohorts these participants are in (only those: a study may have
    /// formed thousands).
    async fn cohorts_of(
        &self,
        experiment_id: &str,
        participants: &[&Participant],
    ) -> Result<Vec<Cohort>, EngineError> {
        let mut ids: Vec<&str> = participants
            .iter()
            .filter_map(|p| p.cohort_id.as_deref())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.store.cohorts_named(experiment_id, &ids).await?)
    }
}

fn no_participant(id: &str) -> EngineError {
    Missing::Participant(id.to_owned()).into()
}

impl Engine {
    pub(super) async fn routable(&self, key: &str) -> Result<Arc<ExperimentEntry>, EngineError> {
        let entry = self.experiment_entry(key).await?;
        if let Err(e) = &entry.experiment {
            return Err(Unavailable::BrokenConfig(e.clone()).into());
        }
        Ok(entry)
    }

    /// Runs routing calls for experiment `key` in one store transaction;
    /// returns what was written and the entry it was planned with.
    async fn run_routing(
        &self,
        key: &str,
        calls: &[(String, Operation)],
    ) -> Result<(Routed, Arc<ExperimentEntry>), EngineError> {
        let ids: Vec<String> = calls
            .iter()
            .filter(|(id, _)| !id.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        let mut stale = 0;
        let mut retried = false;
        loop {
            let entry = self.routable(key).await?;
            let outcome = {
                let Ok(experiment) = &entry.experiment else {
                    return Err(EngineError::invariant("checked above"));
                };
                let routing = experiment.routing.as_ref();
                let scope = RouteScope {
                    wait_timeout_seconds: routing.and_then(|r| r.config.wait_timeout_seconds),
                    liveness_timeout_seconds: routing
                        .and_then(|r| r.config.liveness_timeout_seconds),
                    cohort_ids: calls
                        .iter()
                        .filter_map(|(_, op)| match op {
                            Operation::Move(cohort) => Some(cohort.clone()),
                            _ => None,
                        })
                        .collect(),
                };
                let planner = Planner {
                    version: entry.version,
                    experiment,
                    calls,
                };
                self.store.route(&entry.id, &ids, scope, &planner).await
            };
            match outcome {
                Ok(RouteOutcome::Routed(routed)) => {
                    for e in &routed.changes.events {
                        entry
                            .counters
                            .count_routing(e.status.as_str(), e.reason.as_str());
                    }
                    return Ok((routed, entry));
                }
                // Our snapshot is behind the store (another replica changed or
                // deleted the experiment): catch up and plan again.
                Ok(RouteOutcome::Stale) | Err(StoreError::NotFound) => {
                    stale += 1;
                    if stale >= PLAN_ATTEMPTS {
                        return Err(Unavailable::RoutingContended(key.to_owned()).into());
                    }
                    self.catch_up().await?;
                }
                // The connection or the server went away mid-transaction
                // (a failover, a fast shutdown): nothing was committed, or
                // the commit's answer was lost, and every routing operation
                // is idempotent on the state it left. One more try in a new
                // transaction turns a blip into a success.
                Err(e @ StoreError::Unavailable(_)) if !retried => {
                    super::count_store_error(&e);
                    tracing::warn!(experiment = key, error = %e, "routing transaction interrupted; retrying once");
                    retried = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Queues a routing call for its experiment and waits for the answer.
    ///
    /// Calls for one experiment are serialised by the store's routing lock
    /// anyway; instead of queueing on that lock one transaction each, the
    /// calls that arrive while a transaction runs are planned together in the
    /// next one, in arrival order, with the same result as one by one.
    async fn queue_call(
        self: &Arc<Self>,
        key: &str,
        id: &ParticipantId,
        operation: Operation,
    ) -> Result<RoutedParticipant, EngineError> {
        self.routable(key).await?;
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queues = self.routing_queues.lock();
            let queue = queues.entry(key.to_owned()).or_default();
            queue.calls.push(Call {
                participant_id: id.as_str().to_owned(),
                operation,
                reply,
            });
            !std::mem::replace(&mut queue.draining, true)
        };
        if lead {
            let engine = Arc::clone(self);
            let key = key.to_owned();
            // Spawned, so that a caller who goes away does not strand the others.
            tokio::spawn(async move { engine.drain(&key).await });
        }
        answer
            .await
            .map_err(|_| EngineError::invariant("the routing worker stopped"))?
    }

    /// Runs queued calls for `key`, a batch per transaction, until none are left.
    async fn drain(&self, key: &str) {
        let _reset = DrainGuard { engine: self, key };
        loop {
            let batch: Vec<Call> = {
                let mut queues = self.routing_queues.lock();
                let Some(queue) = queues.get_mut(key) else {
                    return;
                };
                if queue.calls.is_empty() {
                    queues.remove(key);
                    return;
                }
                let n = queue.calls.len().min(MAX_BATCH);
                queue.calls.drain(..n).collect()
            };
            let calls: Vec<(String, Operation)> = batch
                .iter()
                .map(|c| (c.participant_id.clone(), c.operation.clone()))
                .collect();
            match self.run_routing(key, &calls).await {
                Ok((routed, entry)) => {
                    let Routed { changes, cohorts } = routed;
                    for (call, answer) in batch.into_iter().zip(changes.answers) {
                        let view = match (&entry.experiment, answer) {
                            (Ok(experiment), Ok(p)) => Ok(with_cohort(p, &cohorts, experiment)),
                            (_, Err(Refusal::NotFound)) => {
                                Err(no_participant(&call.participant_id))
                            }
                            (_, Err(Refusal::NoCohort(cohort))) => Err(Missing::Cohort {
                                experiment: key.to_owned(),
                                cohort,
                            }
                            .into()),
                            (_, Err(Refusal::Conflict(m))) => Err(EngineError::Conflict(m)),
                            (Err(e), _) => Err(Unavailable::BrokenConfig(e.clone()).into()),
                        };
                        let _ = call.reply.send(view);
                    }
                }
                Err(e) => {
                    for call in batch {
                        let _ = call.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// `PUT …/participants/{id}`: registers (201) or replaces attributes
    /// (200; the status does not change). A waiting participant is matched
    /// with its new attributes at once.
    pub async fn register_participant(
        self: &Arc<Self>,
        key: &str,
        id: &ParticipantId,
        attributes: Value,
    ) -> Result<(RoutedParticipant, Outcome), EngineError> {
        // Checked against the stored experiment: one deleted (or deleted and
        // created afresh) on another replica is caught up with, then the
        // registration goes to the key's live experiment, if there is one.
        let mut entry = self.routable(key).await?;
        let mut attempts = 0;
        let (participant, created) = loop {
            match self
                .store
                .register(&entry.id, id.as_str(), &attributes)
                .await
            {
                Err(StoreError::NotFound) if attempts < PLAN_ATTEMPTS => {
                    attempts += 1;
                    self.catch_up().await?;
                    let live = self.routable(key).await?;
                    if live.id == entry.id {
                        return Err(Missing::Experiment(key.to_string()).into());
                    }
                    entry = live;
                }
                Err(StoreError::NotFound) => {
                    return Err(Unavailable::RegistrationContended(key.to_owned()).into())
                }
                other => break other?,
            }
        };
        let outcome = if created {
            Outcome::Created
        } else {
            Outcome::Updated
        };
        let view = if participant.status == ParticipantStatus::Waiting {
            self.queue_call(key, id, Operation::Sweep).await?
        } else {
            self.get_participant(key, id.as_str()).await?
        };
        Ok((view, outcome))
    }

    /// `POST …/route`: a new participant joins the waiting pool and matching
    /// runs; any other status answers as it is.
    pub async fn route_participant(
        self: &Arc<Self>,
        key: &str,
        participant_id: &ParticipantId,
    ) -> Result<RoutedParticipant, EngineError> {
        // Heard from first, so that the matching the route runs sees the
        // participant live. An unknown one is the route's own 404.
        let entry = self.routable(key).await?;
        self.store.touch(&entry.id, participant_id.as_str()).await?;
        self.queue_call(key, participant_id, Operation::Route).await
    }

    pub async fn accept(
        self: &Arc<Self>,
        key: &str,
        participant_id: &ParticipantId,
    ) -> Result<RoutedParticipant, EngineError> {
        self.settle(key, participant_id, Operation::Accept).await
    }

    pub async fn decline(
        self: &Arc<Self>,
        key: &str,
        participant_id: &ParticipantId,
    ) -> Result<RoutedParticipant, EngineError> {
        self.settle(key, participant_id, Operation::Decline).await
    }

    /// `POST …/complete`: assigned → completed (the seat stays taken).
    pub async fn complete(
        self: &Arc<Self>,
        key: &str,
        participant_id: &ParticipantId,
    ) -> Result<RoutedParticipant, EngineError> {
        self.settle(key, participant_id, Operation::Complete).await
    }

    /// `POST …/drop`: any status but completed → dropped, freeing the seat.
    pub async fn drop_participant(
        self: &Arc<Self>,
        key: &str,
        participant_id: &ParticipantId,
        reason: Option<String>,
    ) -> Result<RoutedParticipant, EngineError> {
        self.settle(key, participant_id, Operation::Drop(reason))
            .await
    }

    /// `POST …/move` (admin): places the participant in a cohort as assigned.
    /// An experimenter's call, not the participant's: it is not a sign of life.
    pub async fn move_participant(
        self: &Arc<Self>,
        key: &str,
        participant_id: &ParticipantId,
        cohort_id: &str,
    ) -> Result<RoutedParticipant, EngineError> {
        self.queue_call(key, participant_id, Operation::Move(cohort_id.to_owned()))
            .await
    }

    /// A participant's own call that changes its status: once it succeeded
    /// (a refused call changes nothing, `last_seen` included), the
    /// participant was heard from.
    async fn settle(
        self: &Arc<Self>,
        key: &str,
        participant_id: &ParticipantId,
        operation: Operation,
    ) -> Result<RoutedParticipant, EngineError> {
        let mut view = self.queue_call(key, participant_id, operation).await?;
        let entry = self.routable(key).await?;
        if let Some(touched) = self.store.touch(&entry.id, participant_id.as_str()).await? {
            view.participant.last_seen = touched.participant.last_seen;
            view.live = true;
        }
        Ok(view)
    }

    /// `GET …/participants/{id}` and `POST …/heartbeat`: the participant was
    /// heard from. One waiting and not live until now runs a matching pass
    /// (it may complete a group); otherwise the stored state answers.
    pub async fn heard_from(
        self: &Arc<Self>,
        key: &str,
        participant_id: &str,
    ) -> Result<RoutedParticipant, EngineError> {
        let entry = self.routable(key).await?;
        let Ok(experiment) = &entry.experiment else {
            return Err(EngineError::invariant("checked above"));
        };
        let touched = self
            .store
            .touch(&entry.id, participant_id)
            .await?
            .ok_or_else(|| no_participant(participant_id))?;
        let cutoff = experiment
            .routing
            .as_ref()
            .and_then(|r| r.config.live_cutoff(OffsetDateTime::now_utc()));
        let back = touched.participant.status == ParticipantStatus::Waiting
            && !is_live(touched.previously_seen, cutoff);
        if back {
            if let Ok(id) = ParticipantId::parse(participant_id) {
                return self.queue_call(key, &id, Operation::Sweep).await;
            }
        }
        let cohorts = self.cohorts_of(&entry.id, &[&touched.participant]).await?;
        Ok(with_cohort(touched.participant, &cohorts, experiment))
    }

    /// A waiting participant heard from again after going silent: a
    /// matching pass with it in the pool.
    pub(super) async fn rematch_participant(
        self: &Arc<Self>,
        key: &str,
        participant_id: &ParticipantId,
    ) -> Result<(), EngineError> {
        self.queue_call(key, participant_id, Operation::Sweep)
            .await
            .map(|_| ())
    }

    /// `GET /v1/experiments/{key}/participants`: oldest first, of one status
    /// or all, after the participant `after` (404 when it names no
    /// participant of the experiment: the cursor is a participant id).
    pub async fn list_participants(
        &self,
        key: &str,
        status: Option<ParticipantStatus>,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Page<RoutedParticipant, String>, EngineError> {
        let entry = self.routable(key).await?;
        let Ok(experiment) = &entry.experiment else {
            return Err(EngineError::invariant("checked above"));
        };
        let Some(mut listed) = self
            .store
            .list_participants(
                &entry.id,
                status.map(ParticipantStatus::as_str),
                limit + 1,
                after,
            )
            .await?
        else {
            return Err(no_participant(after.unwrap_or_default()));
        };
        let more = listed.len() as i64 > limit;
        listed.truncate(limit.max(0) as usize);
        let next = if more {
            listed.last().map(|p| p.id.clone())
        } else {
            None
        };
        let cohorts = self
            .cohorts_of(&entry.id, &listed.iter().collect::<Vec<_>>())
            .await?;
        Ok(Page {
            items: listed
                .into_iter()
                .map(|p| with_cohort(p, &cohorts, experiment))
                .collect(),
            next,
        })
    }

    pub async fn get_participant(
        &self,
        key: &str,
        participant_id: &str,
    ) -> Result<RoutedParticipant, EngineError> {
        let entry = self.routable(key).await?;
        let Ok(experiment) = &entry.experiment else {
            return Err(EngineError::invariant("checked above"));
        };
        let p = self
            .store
            .participant(&entry.id, participant_id)
            .await?
            .ok_or_else(|| no_participant(participant_id))?;
        let cohorts = self.cohorts_of(&entry.id, &[&p]).await?;
        Ok(with_cohort(p, &cohorts, experiment))
    }

    pub async fn cohorts(&self, key: &str) -> Result<Vec<Cohort>, EngineError> {
        let entry = self.experiment_entry(key).await?;
        Ok(self.store.cohorts(&entry.id).await?)
    }

    pub async fn cohort_participants(
        &self,
        key: &str,
        cohort_id: &str,
    ) -> Result<Vec<RoutedParticipant>, EngineError> {
        let entry = self.routable(key).await?;
        let Ok(experiment) = &entry.experiment else {
            return Err(EngineError::invariant("checked above"));
        };
        let cohorts = self.store.cohorts_named(&entry.id, &[cohort_id]).await?;
        if !cohorts.iter().any(|c| c.id == cohort_id) {
            return Err(Missing::Cohort {
                experiment: key.to_owned(),
                cohort: cohort_id.to_owned(),
            }
            .into());
        }
        let members = self.store.cohort_participants(&entry.id, cohort_id).await?;
        Ok(members
            .into_iter()
            .map(|p| with_cohort(p, &cohorts, experiment))
            .collect())
    }

    pub async fn routing_events(
        &self,
        key: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Page<EventRecord, i64>, EngineError> {
        let entry = self.experiment_entry(key).await?;
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
        Ok(Page {
            items: records,
            next: next_before,
        })
    }

    /// Times out overdue waiting participants and pending participants past
    /// their acceptance deadline (and re-runs matching) in every experiment. One store query finds the experiments
    /// that have an overdue participant, however many experiments there are
    /// (an idle replica with a thousand studies used to run a thousand
    /// queries a tick); only those run a routing transaction. Safe on several
    /// replicas at once: each experiment's sweep runs under its routing lock,
    /// and a sweep that finds nothing to do writes nothing.
    pub async fn sweep(self: &Arc<Self>) -> Result<usize, EngineError> {
        let now = OffsetDateTime::now_utc();
        let snapshot = self.snapshot();
        // Every experiment with routing: its wait timeout (if any) is applied
        // here, and acceptance deadlines are stored with the pending
        // participants, so one given before the group's timeout was changed
        // or removed still holds.
        let cutoffs: Vec<crate::store::SweepCutoff<'_>> = snapshot
            .experiments
            .values()
            .filter_map(|entry| {
                let routing = entry.experiment.as_ref().ok()?.routing.as_ref()?;
                Some((entry.id.as_str(), routing.config.waiting_cutoff(now)))
            })
            .collect();
        if cutoffs.is_empty() {
            return Ok(0);
        }
        let overdue: std::collections::HashSet<String> = self
            .store
            .overdue_experiments(&cutoffs, now)
            .await?
            .into_iter()
            .collect();
        let keys: Vec<String> = snapshot
            .experiments
            .values()
            .filter(|entry| overdue.contains(&entry.id))
            .map(|entry| entry.key.clone())
            .collect();
        // A few at a time, so that a burst of deadlines on many experiments
        // is still met within the second, without taking the whole pool.
        let mut running = tokio::task::JoinSet::new();
        let mut swept = 0;
        let mut finished = |done: Result<
            (String, Result<(), EngineError>),
            tokio::task::JoinError,
        >| {
            match done {
                Ok((_, Ok(()))) => swept += 1,
                Ok((key, Err(e))) => {
                    e.count();
                    tracing::warn!(experiment = %key, error = %e, "sweeping an experiment failed; it runs again on the next tick");
                }
                Err(e) => tracing::warn!(error = %e, "a sweep task failed"),
            }
        };
        for key in keys {
            if running.len() >= SWEEP_CONCURRENCY {
                if let Some(done) = running.join_next().await {
                    finished(done);
                }
            }
            let engine = Arc::clone(self);
            running.spawn(async move {
                let result = engine
                    .run_routing(&key, &[(String::new(), Operation::Sweep)])
                    .await
                    .map(|_| ());
                (key, result)
            });
        }
        while let Some(done) = running.join_next().await {
            finished(done);
        }
        Ok(swept)
    }

    /// Re-runs matching for one experiment (after its routing config changed).
    pub async fn rematch(&self, key: &str) -> Result<(), EngineError> {
        self.run_routing(key, &[(String::new(), Operation::Sweep)])
            .await
            .map(|_| ())
    }

    /// Sweeps every `every` until the task is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_every(every, "routing timeout sweep", |engine| async move {
            engine.sweep().await.map(|_| ())
        })
    }
}
