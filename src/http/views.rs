//! The bodies the API answers with: the wire form of what the engine
//! returns, and the schemas the OpenAPI document gives for them. A change to
//! what a client sees is made here, not in the engine.

mod results;

pub use results::{ArmView, NotInExperimentView, PhaseResultsView, ResultsView, SrmView};

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::domain::experiment::{AssignmentReason, ExperimentConfig};
use crate::domain::flag::{FlagConfig, FlagReason};
use crate::domain::layout::Range;
use crate::domain::phase::Moved;
use crate::domain::routing::lifecycle::{self, Cohort, ParticipantStatus};
use crate::engine::assign;
use crate::engine::experiments::{ExperimentVersion, ServedExperiment};
use crate::engine::flags::{Evaluation, ServedFlag};
use crate::engine::routing::RoutedParticipant;
use crate::engine::{Page, Unusable};
use crate::store::{EventRecord, FlagEventRecord, OverrideRecord};

/// A flag as served.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"key": "organizations:code-review-experiments-enabled", "description": "orgs in code-review experiments", "enabled": true, "rules": [{"name": "everyone else", "rollout": 10}], "version": 3, "created_at": "2026-11-20T09:00:00Z", "updated_at": "2026-11-22T10:00:00Z"}))]
pub struct FlagView {
    pub key: String,
    #[serde(flatten)]
    pub config: FlagConfig,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<ServedFlag> for FlagView {
    fn from(f: ServedFlag) -> Self {
        Self {
            key: f.key,
            config: f.document,
            version: f.version,
            created_at: f.created_at,
            updated_at: f.updated_at,
        }
    }
}

/// An entry of a listing whose stored document cannot be used (§3): its
/// key and version, and why.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"key": "legacy-review", "version": 4, "unavailable": "/treatments/0/weight must be a finite number >= 0"}))]
pub struct UnusableView {
    pub key: String,
    pub version: i64,
    pub unavailable: String,
}

impl From<Unusable> for UnusableView {
    fn from(u: Unusable) -> Self {
        Self {
            key: u.key,
            version: u.version,
            unavailable: u.problem,
        }
    }
}

/// One entry of `GET /v1/flags`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum FlagListEntry {
    Flag(FlagView),
    Unusable(UnusableView),
}

impl From<Result<ServedFlag, Unusable>> for FlagListEntry {
    fn from(entry: Result<ServedFlag, Unusable>) -> Self {
        match entry {
            Ok(f) => Self::Flag(f.into()),
            Err(u) => Self::Unusable(u.into()),
        }
    }
}

/// An explicit per-org override of a flag.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverrideView {
    pub flag: String,
    pub org_id: String,
    pub enabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<OverrideRecord> for OverrideView {
    fn from(r: OverrideRecord) -> Self {
        Self {
            flag: r.flag_key,
            org_id: r.org_id,
            enabled: r.enabled,
            updated_at: r.updated_at,
        }
    }
}

/// A page of a flag's per-org overrides, by org id.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"overrides": [{"flag": "organizations:code-review-experiments-enabled", "org_id": "42", "enabled": true, "updated_at": "2026-11-22T10:00:00Z"}], "next": null}))]
pub struct OverridePage {
    pub overrides: Vec<OverrideView>,
    /// Pass as `after` to get the next page; null on the last page.
    #[schema(required = true)]
    pub next: Option<String>,
}

impl From<Page<OverrideRecord, String>> for OverridePage {
    fn from(page: Page<OverrideRecord, String>) -> Self {
        Self {
            overrides: page.items.into_iter().map(Into::into).collect(),
            next: page.next,
        }
    }
}

/// Whether an org is eligible, and why (§2).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"flag": "organizations:code-review-experiments-enabled", "org_id": "42", "enabled": true, "reason": "rule", "rule": "early adopters", "version": 3}))]
pub struct FlagEvaluation {
    pub flag: String,
    pub org_id: String,
    pub enabled: bool,
    pub reason: FlagReason,
    #[schema(required = true)]
    pub rule: Option<String>,
    pub version: i64,
}

impl From<Evaluation> for FlagEvaluation {
    fn from(e: Evaluation) -> Self {
        Self {
            flag: e.flag,
            org_id: e.org_id,
            enabled: e.enabled,
            reason: e.reason,
            rule: e.rule,
            version: e.version,
        }
    }
}

/// An experiment as served: its config, identity and current layout.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"key": "code-review", "description": "code-review strategy", "status": "running", "eligibility_flag": null, "salt": "code-review", "coverage": 1, "sticky": false, "hash_by": "unit", "treatments": [{"name": "noop", "weight": 1, "payload": {"model": "a"}}, {"name": "cost-optimized", "weight": 1, "payload": null}], "cohorts": [], "variables": [], "routing": null, "exposures": true, "forced": [], "version": 1, "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z", "layout": [{"treatment": "noop", "start": 0, "end": 5000}, {"treatment": "cost-optimized", "start": 5000, "end": 10000}]}))]
pub struct ExperimentView {
    pub key: String,
    #[serde(flatten)]
    pub config: ExperimentConfig,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub layout: Vec<Range>,
}

impl From<ServedExperiment> for ExperimentView {
    fn from(e: ServedExperiment) -> Self {
        Self {
            key: e.key,
            config: e.document.config,
            version: e.version,
            created_at: e.created_at,
            updated_at: e.updated_at,
            layout: e.document.layout,
        }
    }
}

/// One entry of `GET /v1/experiments`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ExperimentListEntry {
    Experiment(Box<ExperimentView>),
    Unusable(UnusableView),
}

impl From<Result<ServedExperiment, Unusable>> for ExperimentListEntry {
    fn from(entry: Result<ServedExperiment, Unusable>) -> Self {
        match entry {
            Ok(e) => Self::Experiment(Box::new(e.into())),
            Err(u) => Self::Unusable(u.into()),
        }
    }
}

/// One accepted version of an experiment, its phase and what it moved (§3).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"version": 2, "created_at": "2026-11-22T10:00:00Z", "actor": "deploy-bot", "deleted": false, "config": {"description": "", "status": "running", "eligibility_flag": null, "salt": "code-review", "coverage": 1, "sticky": false, "hash_by": "unit", "treatments": [{"name": "noop", "weight": 1, "payload": null}, {"name": "cost-optimized", "weight": 1, "payload": null}, {"name": "perf", "weight": 1, "payload": null}], "cohorts": [], "variables": [], "routing": null, "exposures": true, "forced": []}, "layout": [{"treatment": "noop", "start": 0, "end": 3334}], "phase": 2, "moved": {"buckets": 3333, "share": 0.3333, "ranges": [{"start": 3334, "end": 5000, "from": "noop", "to": "perf"}]}}))]
pub struct VersionView {
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[schema(required = true)]
    pub actor: Option<String>,
    /// This version deleted the experiment (its config is null).
    pub deleted: bool,
    /// The experiment document of this version; null for a deletion.
    #[schema(value_type = Option<crate::domain::experiment::ExperimentConfig>, required = true)]
    pub config: Value,
    /// The layout of this version (empty for a deletion).
    #[schema(value_type = Vec<crate::domain::layout::Range>)]
    pub layout: Value,
    /// The phase the version belongs to: a version that changes the layout,
    /// the salt or `hash_by` starts the next one (§3).
    pub phase: u32,
    /// What changed hands against the previous live version's layout.
    pub moved: MovedView,
}

impl From<ExperimentVersion> for VersionView {
    fn from(v: ExperimentVersion) -> Self {
        Self {
            version: v.version,
            created_at: v.created_at,
            actor: v.actor,
            deleted: v.deleted,
            config: v.config,
            layout: v.layout,
            phase: v.phase,
            moved: v.moved.into(),
        }
    }
}

/// The buckets a version moved: their count, share of the 10 000, and
/// ranges (with the documented hash, the exact units).
#[derive(Debug, Serialize, ToSchema)]
pub struct MovedView {
    pub buckets: u32,
    pub share: f64,
    pub ranges: Vec<MovedRangeView>,
}

/// Buckets `[start, end)` that went from one treatment to another (`null`:
/// a free bucket).
#[derive(Debug, Serialize, ToSchema)]
pub struct MovedRangeView {
    pub start: u16,
    pub end: u16,
    #[schema(required = true)]
    pub from: Option<String>,
    #[schema(required = true)]
    pub to: Option<String>,
}

impl From<Moved> for MovedView {
    fn from(m: Moved) -> Self {
        Self {
            buckets: m.buckets,
            share: m.share,
            ranges: m
                .ranges
                .into_iter()
                .map(|r| MovedRangeView {
                    start: r.start,
                    end: r.end,
                    from: r.from,
                    to: r.to,
                })
                .collect(),
        }
    }
}

/// The answer for one unit.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"experiment": "code-review", "version": 1, "org_id": "42", "unit_id": "pr-1234", "treatment": "cost-optimized", "payload": null, "bucket": 8725, "reason": "assigned"}))]
pub struct Assignment {
    pub experiment: String,
    pub version: i64,
    pub org_id: String,
    pub unit_id: String,
    /// `null` means not in the experiment; `reason` says why.
    #[schema(required = true)]
    pub treatment: Option<String>,
    pub payload: Value,
    /// `null` when the decision did not need the bucket.
    #[schema(required = true)]
    pub bucket: Option<u16>,
    pub reason: AssignmentReason,
}

impl From<assign::Assignment> for Assignment {
    fn from(a: assign::Assignment) -> Self {
        Self {
            experiment: a.experiment,
            version: a.version,
            org_id: a.org_id,
            unit_id: a.unit_id,
            treatment: a.treatment,
            payload: a.payload,
            bucket: a.bucket,
            reason: a.reason,
        }
    }
}

/// The cohort a participant is in.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "0b5e8f7a-3c2d-4e1f-9a8b-7c6d5e4f3a2b", "alias": "arm-pro-ai", "name": "Pro-AI Study Arm"}))]
pub struct CohortRef {
    pub id: String,
    #[schema(required = true)]
    pub alias: Option<String>,
    pub name: String,
}

/// A participant as every routing call answers it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"participant_id": "p-17", "status": "assigned", "cohort": {"id": "0b5e8f7a-3c2d-4e1f-9a8b-7c6d5e4f3a2b", "alias": "arm-pro-ai", "name": "Pro-AI Study Arm"}, "group": "High Scorers", "entry": "high", "variables": {"persona": "pro_ai"}, "waiting_since": null, "last_seen": "2026-11-22T10:00:00Z", "live": true, "updated_at": "2026-11-22T10:00:00Z"}))]
pub struct ParticipantView {
    pub participant_id: String,
    pub status: ParticipantStatus,
    #[schema(required = true)]
    pub cohort: Option<CohortRef>,
    #[schema(required = true)]
    pub group: Option<String>,
    #[schema(required = true)]
    pub entry: Option<String>,
    pub variables: Map<String, Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub waiting_since: Option<OffsetDateTime>,
    /// When a participant call (register, route, read, heartbeat, accept,
    /// decline, complete, drop) last came in.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Heard from within `routing.liveness_timeout_seconds` (always true
    /// without one); only live waiting participants are matched.
    pub live: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<RoutedParticipant> for ParticipantView {
    fn from(r: RoutedParticipant) -> Self {
        let p = r.participant;
        Self {
            participant_id: p.id,
            status: p.status,
            cohort: r.cohort.map(|c| CohortRef {
                id: c.id,
                alias: c.alias,
                name: c.name,
            }),
            group: p.group,
            entry: p.entry,
            variables: r.variables,
            waiting_since: p.waiting_since,
            last_seen: p.last_seen,
            live: r.live,
            updated_at: p.updated_at,
        }
    }
}

/// Seats taken in a cohort, by status: all three count for capacity.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"assigned": 12, "pending": 2, "completed": 5}))]
pub struct Members {
    pub assigned: u32,
    pub pending: u32,
    pub completed: u32,
}

/// A cohort with its members (§5).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "0b5e8f7a-3c2d-4e1f-9a8b-7c6d5e4f3a2b", "alias": "arm-pro-ai", "name": "Pro-AI Study Arm", "description": "", "capacity": 50, "members": {"assigned": 12, "pending": 2, "completed": 5}, "overflow_of": null}))]
pub struct CohortView {
    pub id: String,
    #[schema(required = true)]
    pub alias: Option<String>,
    pub name: String,
    pub description: String,
    #[schema(required = true)]
    pub capacity: Option<u32>,
    pub members: Members,
    #[schema(required = true)]
    pub overflow_of: Option<String>,
}

impl From<Cohort> for CohortView {
    fn from(c: Cohort) -> Self {
        Self {
            id: c.id,
            alias: c.alias,
            name: c.name,
            description: c.description,
            capacity: c.capacity,
            members: Members {
                assigned: c.assigned,
                pending: c.pending,
                completed: c.completed,
            },
            overflow_of: c.overflow_of,
        }
    }
}

/// One status change of a participant, with its cursor `id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Cursor: pass as `before` for older events.
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten)]
    pub event: lifecycle::Event,
}

/// A page of the routing audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"events": [{"id": 7, "at": "2026-11-22T10:00:00Z", "participant_id": "p-17", "status": "assigned", "previous": "waiting", "group": "High Scorers", "entry": "high", "cohort_id": "0b5e8f7a-3c2d-4e1f-9a8b-7c6d5e4f3a2b", "reason": "formed", "detail": null}], "next_before": null}))]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Pass as `before` for the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_before: Option<i64>,
}

impl From<Page<EventRecord, i64>> for EventPage {
    fn from(page: Page<EventRecord, i64>) -> Self {
        Self {
            events: page
                .items
                .into_iter()
                .map(|r| EventView {
                    id: r.id,
                    at: r.at,
                    event: r.event,
                })
                .collect(),
            next_before: page.next,
        }
    }
}

/// A page of an experiment's participants, oldest first (§5).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"participants": [{"participant_id": "p-17", "status": "waiting", "cohort": null, "group": null, "entry": null, "variables": {"persona": "control"}, "waiting_since": "2026-11-22T10:00:00Z", "last_seen": "2026-11-22T10:00:05Z", "live": true, "updated_at": "2026-11-22T10:00:00Z"}], "next": null}))]
pub struct ParticipantPage {
    pub participants: Vec<ParticipantView>,
    /// Pass as `after` for the next page; null on the last page.
    #[schema(required = true)]
    pub next: Option<String>,
}

impl From<Page<RoutedParticipant, String>> for ParticipantPage {
    fn from(page: Page<RoutedParticipant, String>) -> Self {
        Self {
            participants: all(page.items),
            next: page.next,
        }
    }
}

/// Converts each item of a list into its wire form.
pub(crate) fn all<T, V: From<T>>(items: Vec<T>) -> Vec<V> {
    items.into_iter().map(V::from).collect()
}

/// One change of a flag or of its overrides (§2).
#[derive(Debug, Serialize, ToSchema)]
pub struct FlagEventView {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The name of the token used; null with auth off.
    #[schema(required = true)]
    pub actor: Option<String>,
    #[schema(value_type = FlagAction)]
    pub action: String,
    /// The flag's version after the change (override changes keep it).
    pub version: i64,
    /// The override's org (override changes), else null.
    #[schema(required = true)]
    pub org_id: Option<String>,
    /// The override's value (`override_set`), else null.
    #[schema(required = true)]
    pub enabled: Option<bool>,
    /// The stored document (`created`, `updated`), else null.
    #[schema(value_type = Option<crate::domain::flag::FlagConfig>, required = true)]
    pub config: Option<Value>,
}

/// What a flag history event records (for the document: the store keeps
/// the action as text).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagAction {
    Created,
    Updated,
    Deleted,
    OverrideSet,
    OverrideRemoved,
}

/// A page of a flag's history, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"events": [
    {"id": 7, "at": "2026-11-22T10:00:00Z", "actor": "deploy-bot", "action": "override_set",
     "version": 3, "org_id": "42", "enabled": true, "config": null}],
    "next_before": 6}))]
pub struct FlagHistoryPage {
    pub events: Vec<FlagEventView>,
    /// Pass as `before` for the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_before: Option<i64>,
}

impl From<Page<FlagEventRecord, i64>> for FlagHistoryPage {
    fn from(page: Page<FlagEventRecord, i64>) -> Self {
        Self {
            events: page
                .items
                .into_iter()
                .map(|e| FlagEventView {
                    id: e.id,
                    at: e.at,
                    actor: e.actor,
                    action: e.action,
                    version: e.version,
                    org_id: e.org_id,
                    enabled: e.enabled,
                    config: e.config.as_deref().map(|c| {
                        serde_json::from_str(c).unwrap_or_else(|_| Value::String(c.to_owned()))
                    }),
                })
                .collect(),
            next_before: page.next,
        }
    }
}
