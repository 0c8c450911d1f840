//! The OpenAPI 3.1 document, generated from the handlers (`#[utoipa::path]`
//! on each) and the types they serve, then completed with what every
//! operation shares ([`complete`]). Request bodies are validated by hand
//! (every problem reported with its JSON Pointer), so their shapes are
//! described by document-only types ([`inputs`]).

mod complete;
mod inputs;
mod shared;

pub use complete::complete;
pub use inputs::{
    AssignInput, BatchInput, BatchItemInput, CohortInput, DropInput, EntryInput, EvaluateInput,
    ExperimentInput, FlagInput, ForcedPinInput, GroupInput, MoveInput, OverrideInput,
    ParticipantInput, RoutingInput, RuleInput, TreatmentInput, VariableInput,
};

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::domain::problem::Problem;

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "allot",
        description = "Deterministic experiment assignment and participant-to-cohort routing.",
        license(name = "MIT", identifier = "MIT")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "flags", description = "Eligibility flags (§2)"),
        (name = "experiments", description = "Experiments and their versions (§3)"),
        (name = "assignment", description = "Pull request → treatment (§4)"),
        (name = "routing", description = "Participants, cohorts and the routing audit log (§5)"),
        (name = "operations", description = "Probes and metrics (§7)")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every non-2xx answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "validation_failed", "message": "/treatments/1/weight must be a finite number >= 0", "details": [{"path": "/treatments/1/weight", "message": "must be a finite number >= 0"}], "request_id": "4f1c2b7e-2d5a-4a8e-9d0b-6c3f1e2a7b90"}}))]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// What went wrong: a code per status, a sentence, one detail per problem and the request id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// What went wrong, one code per status (§1).
    #[schema(value_type = ErrorCode)]
    pub code: String,
    pub message: String,
    pub details: Vec<Problem>,
    pub request_id: String,
}

/// The error codes, for the document only (an answer's `code` is one of
/// these): 400, 401, 403, 404, 405, 409, 412, 413, 422, 503, 500.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    VersionMismatch,
    PayloadTooLarge,
    ValidationFailed,
    Unavailable,
    Internal,
}

/// One batch item's answer: the assignment, or `{"error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Assigned(crate::http::views::Assignment),
    Failed(ErrorBody),
}

/// The answers of a batch, in request order: each an assignment or `{"error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"results": [{"experiment": "code-review", "version": 1, "org_id": "42", "unit_id": "pr-1234", "treatment": "cost-optimized", "payload": null, "bucket": 8725, "reason": "assigned"}, {"error": {"code": "not_found", "message": "no experiment \"gone\"", "details": [], "request_id": "4f1c2b7e-2d5a-4a8e-9d0b-6c3f1e2a7b90"}}]}))]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
}

/// The process serves.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    pub status: HealthStatus,
}

/// `ok`
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
}

/// This replica should receive traffic (§7).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "store": "ok", "config_age_ms": 120}))]
pub struct Ready {
    pub status: ReadyStatus,
    /// `ok`, or `unreachable` while the store does not answer (the replica
    /// keeps serving its loaded configuration).
    pub store: StoreState,
    /// Milliseconds since the configuration was last confirmed current
    /// with the store.
    pub config_age_ms: u64,
}

/// Whether the store answered the readiness check.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    Ok,
    Unreachable,
}

/// This replica should not receive traffic (§7): it is shutting down, or
/// its configuration is older than `readiness_max_config_age_secs`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "not_ready", "reason": "shutting down"}))]
pub struct NotReady {
    pub status: NotReadyStatus,
    /// Why, in a sentence.
    pub reason: String,
}

/// `ready`
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
}

/// `not_ready`
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotReadyStatus {
    NotReady,
}
