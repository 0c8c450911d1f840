//! What a client may send: the request bodies, as the contract states them.
//!
//! These types exist for the document only (the server reads bodies with
//! the validators of `domain`, which report every problem at its JSON
//! Pointer). They differ from the answers on purpose: a field with a
//! default is optional here (and may be `null`, which means the default),
//! unknown fields are refused (`additionalProperties: false`), and every
//! bound of the contract is stated, so a generated client checks what the
//! server will check. What JSON Schema cannot say (a treatment a pin names
//! must be listed, an alias must be defined, an eligibility flag must
//! exist) is said in the descriptions; the server answers 422 for it.
//!
//! The schemas `Id`, `Json`, `Attributes` and `Condition` they refer to are
//! written out in [`super::shared`].

use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::ToSchema;

use crate::domain::experiment::{ExperimentStatus, HashBy};
use crate::domain::ids::Key;

fn named(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn or_null(name: &str) -> Schema {
    Schema::OneOf(
        OneOfBuilder::new()
            .item(named(name))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

fn id() -> RefOr<Schema> {
    named("Id")
}

fn id_or_null() -> Schema {
    or_null("Id")
}

fn json() -> RefOr<Schema> {
    named("Json")
}

/// A field the server adds to what it serves: accepted and ignored, so a
/// body read with `GET` can be sent back with `PUT`.
fn served() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .read_only(Some(true))
            .description(Some("Served by the server; ignored on input."))
            .build(),
    )
}

fn attributes() -> Schema {
    or_null("Attributes")
}

fn condition() -> Schema {
    or_null("Condition")
}

/// A flag, as `PUT /v1/flags/{key}` takes it (§2). The body a `GET`
/// answers may be sent back unchanged: `key`, `version`, `created_at` and
/// `updated_at` are accepted and ignored.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "description": "orgs in code-review experiments",
    "enabled": true,
    "rules": [
        {"name": "early adopters", "condition": {"plan": {"$in": ["business", "enterprise"]}}, "rollout": 100},
        {"name": "everyone else", "rollout": 10}
    ]
}))]
pub struct FlagInput {
    /// Free text; default "".
    #[schema(max_length = 10000, pattern = "^[^\\u0000]*$")]
    pub description: Option<String>,
    /// `false` turns the flag off for every org, overrides included; default true.
    #[schema(default = true)]
    pub enabled: Option<bool>,
    /// Tried in order; the first whose condition matches decides. Default [].
    pub rules: Option<Vec<RuleInput>>,
    #[schema(schema_with = served)]
    pub key: Option<()>,
    #[schema(schema_with = served)]
    pub version: Option<()>,
    #[schema(schema_with = served)]
    pub created_at: Option<()>,
    #[schema(schema_with = served)]
    pub updated_at: Option<()>,
}

/// One targeting rule of a flag.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "early adopters", "condition": {"plan": "business"}, "rollout": 25.5}))]
pub struct RuleInput {
    /// 1 to 200 bytes, or null.
    #[schema(min_length = 1, max_length = 200, pattern = "^[^\\u0000]*$")]
    pub name: Option<String>,
    /// Absent or null matches every org (§6).
    #[schema(schema_with = condition)]
    pub condition: Option<()>,
    /// Percent of the matching orgs that are in, 0 to 100 with at most two
    /// decimals: an org is in when `bucket(flag key, org_id) < round(rollout × 100)`.
    #[schema(minimum = 0, maximum = 100, multiple_of = 0.01)]
    pub rollout: f64,
}

/// `{"enabled": true|false}`: an explicit per-org override.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": true}))]
pub struct OverrideInput {
    pub enabled: bool,
}

/// An experiment, as `PUT /v1/experiments/{key}` takes it (§3, §5). Every
/// field has a default, so `{}` is an experiment with no treatments. The
/// body a `GET` answers may be sent back unchanged: `key`, `version`,
/// `created_at`, `updated_at` and `layout` are accepted and ignored.
///
/// Rules beyond the field types (422 otherwise): `eligibility_flag` names
/// an existing flag; treatment names are unique; each `forced` pin names a
/// listed treatment, and no two pin the same org and unit; cohort aliases,
/// variable names, group names and composition ids (within a group) are
/// unique; `cohort_values` keys, `target_cohort` and `fallback_cohort` name
/// defined aliases; `min_count ≤ max_count`; a group's `min_count`s add up to
/// at most its target cohort's capacity; `$regex` patterns compile.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "description": "code-review strategy",
    "status": "running",
    "eligibility_flag": "organizations:code-review-experiments-enabled",
    "salt": "code-review",
    "coverage": 1.0,
    "sticky": false,
    "hash_by": "unit",
    "treatments": [
        {"name": "noop", "weight": 1, "payload": {"model": "a"}},
        {"name": "cost-optimized", "weight": 1}
    ],
    "forced": [{"org_id": 42, "unit_id": null, "treatment": "noop"}]
}))]
pub struct ExperimentInput {
    /// Free text; default "".
    #[schema(max_length = 10000, pattern = "^[^\\u0000]*$")]
    pub description: Option<String>,
    /// Default `running`; a `paused` experiment answers `treatment: null`.
    pub status: Option<ExperimentStatus>,
    /// A flag key that gates the experiment, or null (no gate).
    pub eligibility_flag: Option<Key>,
    /// Mixed into the hash; default: the experiment key.
    #[schema(min_length = 1, max_length = 200, pattern = "^[^\\u0000]*$")]
    pub salt: Option<String>,
    /// The share of buckets in the experiment, 0 to 1; default 1.
    #[schema(minimum = 0, maximum = 1, default = 1)]
    pub coverage: Option<f64>,
    /// Keep a unit's first treatment when the layout changes (§4.3); default false.
    #[schema(default = false)]
    pub sticky: Option<bool>,
    /// The randomization unit; default `unit`.
    pub hash_by: Option<HashBy>,
    /// Ordered; at most 100. Default [].
    #[schema(max_items = 100)]
    pub treatments: Option<Vec<TreatmentInput>>,
    /// Default [].
    pub cohorts: Option<Vec<CohortInput>>,
    /// Per-cohort values. Default [].
    pub variables: Option<Vec<VariableInput>>,
    /// Participant routing (§5), or null for none.
    pub routing: Option<RoutingInput>,
    /// Record this experiment's exposures (§8); default true.
    #[schema(default = true)]
    pub exposures: Option<bool>,
    /// QA pins, at most 1 000. Default [].
    #[schema(max_items = 1000)]
    pub forced: Option<Vec<ForcedPinInput>>,
    #[schema(schema_with = served)]
    pub key: Option<()>,
    #[schema(schema_with = served)]
    pub version: Option<()>,
    #[schema(schema_with = served)]
    pub created_at: Option<()>,
    #[schema(schema_with = served)]
    pub updated_at: Option<()>,
    #[schema(schema_with = served)]
    pub layout: Option<()>,
}

/// A treatment: a name, a relative weight and what the client does with it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "cost-optimized", "weight": 2, "payload": {"model": "small"}}))]
pub struct TreatmentInput {
    /// Unique within the experiment.
    pub name: Key,
    /// Relative, any finite number ≥ 0 (0 = disabled).
    #[schema(minimum = 0)]
    pub weight: f64,
    /// Any JSON, handed back with each assignment; default null.
    #[schema(schema_with = json)]
    pub payload: Option<()>,
}

/// A QA pin: this org's unit (or every unit of it, with `unit_id: null`)
/// gets this treatment, which must be listed (its weight may be 0).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"org_id": 42, "unit_id": "pr-7", "treatment": "cost-optimized"}))]
pub struct ForcedPinInput {
    #[schema(schema_with = id)]
    pub org_id: (),
    /// Null (or absent) pins every unit of the org.
    #[schema(schema_with = id_or_null)]
    pub unit_id: Option<()>,
    pub treatment: Key,
}

/// A cohort of a study (§5).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"alias": "arm-pro-ai", "name": "Pro-AI Study Arm", "capacity": 50}))]
pub struct CohortInput {
    /// Unique within the experiment.
    pub alias: Key,
    /// Default: the alias.
    #[schema(max_length = 10000, pattern = "^[^\\u0000]*$")]
    pub name: Option<String>,
    #[schema(max_length = 10000, pattern = "^[^\\u0000]*$")]
    pub description: Option<String>,
    /// At most this many `assigned`, `pending` and `completed` members;
    /// null or absent: no limit.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub capacity: Option<u64>,
}

/// A variable with a value per cohort.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "persona", "default": "control", "cohort_values": {"arm-pro-ai": "pro_ai"}}))]
pub struct VariableInput {
    /// Unique within the experiment.
    pub name: Key,
    /// For a participant in no cohort, or in a cohort not listed in
    /// `cohort_values`; default null.
    #[schema(schema_with = json)]
    pub default: Option<()>,
    /// Values by cohort alias (each a defined alias).
    #[schema(schema_with = cohort_values)]
    pub cohort_values: Option<()>,
}

fn cohort_values() -> Schema {
    Schema::OneOf(
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property_names(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some("^[A-Za-z0-9._:-]{1,200}$")),
                    ))
                    .additional_properties(Some(json())),
            )
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// How participants are put into cohorts (§5).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "groups": [{"name": "Mixed Group", "require_acceptance": true, "composition": [
        {"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 2, "max_count": 2},
        {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}]}],
    "balance": false,
    "wait_timeout_seconds": 600,
    "liveness_timeout_seconds": 30,
    "fallback_cohort": null
}))]
pub struct RoutingInput {
    /// In order; default [].
    pub groups: Option<Vec<GroupInput>>,
    /// Form the ready group whose target cohort has the fewest members; default false.
    #[schema(default = false)]
    pub balance: Option<bool>,
    /// A participant waiting longer goes to `fallback_cohort`, or times
    /// out; null: wait forever.
    #[schema(minimum = 1, maximum = 31536000)]
    pub wait_timeout_seconds: Option<u64>,
    /// A participant is live while it was heard from within this many
    /// seconds; only live waiting participants are matched. Null: everyone
    /// is live.
    #[schema(minimum = 1, maximum = 31536000)]
    pub liveness_timeout_seconds: Option<u64>,
    /// The alias of a defined cohort, or null.
    pub fallback_cohort: Option<Key>,
}

/// A group that forms when its composition is met.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "High Scorers", "target_cohort": "arm-pro-ai",
    "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 1, "max_count": 5}]}))]
pub struct GroupInput {
    /// Unique within the experiment.
    #[schema(min_length = 1, max_length = 10000, pattern = "^[^\\u0000]*$")]
    pub name: String,
    /// The alias of a defined cohort the group joins; null: each formation
    /// gets a new cohort.
    pub target_cohort: Option<Key>,
    /// Members start `pending` and must accept; default false.
    #[schema(default = false)]
    pub require_acceptance: Option<bool>,
    /// A `pending` member that has not accepted within this many seconds
    /// becomes `declined` (reason `accept_timeout`); null: no limit.
    #[schema(minimum = 1, maximum = 31536000)]
    pub accept_timeout_seconds: Option<u64>,
    /// Only without a `target_cohort` (422 otherwise): for this many seconds
    /// after one of the group's cohorts forms, a seat freed in it (decline,
    /// acceptance timeout, drop) is offered to the live waiting participants
    /// of that seat's entry, oldest first (reason `backfilled`); null: no
    /// backfill.
    #[schema(minimum = 1, maximum = 31536000)]
    pub backfill_seconds: Option<u64>,
    /// At least one entry; ids unique within the group.
    #[schema(min_items = 1)]
    pub composition: Vec<EntryInput>,
}

/// A seat kind of a group: who fits it and how many it takes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}))]
pub struct EntryInput {
    pub id: Key,
    /// Absent or null: every participant fits (§6).
    #[schema(schema_with = condition)]
    pub condition: Option<()>,
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub min_count: u64,
    /// At least `min_count`.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub max_count: u64,
}

/// `POST /v1/flags/{key}/evaluate`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"org_id": 42, "attributes": {"plan": "business"}}))]
pub struct EvaluateInput {
    #[schema(schema_with = id)]
    pub org_id: (),
    /// For rule conditions; `org_id` is always added (as a string).
    #[schema(schema_with = attributes)]
    pub attributes: Option<()>,
}

/// `POST /v1/experiments/{key}/assign`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"org_id": 42, "unit_id": "pr-1234", "attributes": {"plan": "business"}}))]
pub struct AssignInput {
    #[schema(schema_with = id)]
    pub org_id: (),
    /// The pull request (or other unit) being assigned.
    #[schema(schema_with = id)]
    pub unit_id: (),
    /// For the eligibility flag's rule conditions.
    #[schema(schema_with = attributes)]
    pub attributes: Option<()>,
}

/// One item of `POST /v1/assign`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"experiment": "code-review", "org_id": 42, "unit_id": "pr-1234"}))]
pub struct BatchItemInput {
    /// An experiment key (an unknown one is that item's 404).
    pub experiment: Key,
    #[schema(schema_with = id)]
    pub org_id: (),
    #[schema(schema_with = id)]
    pub unit_id: (),
    #[schema(schema_with = attributes)]
    pub attributes: Option<()>,
}

/// `POST /v1/assign`: up to 1 000 assignments in one call.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"items": [
    {"experiment": "code-review", "org_id": 42, "unit_id": "pr-1"},
    {"experiment": "code-review", "org_id": 42, "unit_id": "pr-2"}]}))]
pub struct BatchInput {
    #[schema(max_items = 1000)]
    pub items: Vec<BatchItemInput>,
}

/// `PUT …/participants/{participant_id}`: what the participant answered.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"attributes": {"score": 8, "survey": {"q1": "yes"}}}))]
pub struct ParticipantInput {
    /// Matched against the composition entries' conditions; default {}.
    #[schema(schema_with = attributes)]
    pub attributes: Option<()>,
}

/// `POST …/participants/{participant_id}/drop`: why, if the caller says.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "failed attention check"}))]
pub struct DropInput {
    /// At most 200 characters; recorded as the event's `detail`.
    #[schema(max_length = 200, pattern = "^[^\\u0000]*$")]
    pub reason: Option<String>,
}

/// `POST …/participants/{participant_id}/move`: the cohort to place the
/// participant in.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cohort_id": "0b5e8f7a-3c2d-4e1f-9a8b-7c6d5e4f3a2b"}))]
pub struct MoveInput {
    /// The id of one of the experiment's cohorts (as listed by `…/cohorts`).
    #[schema(min_length = 1, pattern = "^[^\\u0000]*$")]
    pub cohort_id: String,
}
