//! Why an engine operation did not succeed, typed: the HTTP layer maps each
//! kind to the status and code of §1, and keeps the causes for the log.

use std::sync::Arc;

use crate::domain::precondition::Precondition;
use crate::domain::problem::Problem;
use crate::store::StoreError;

/// Why an engine operation did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// Something the request names does not exist (404).
    #[error(transparent)]
    NotFound(#[from] Missing),
    /// The request breaks rules of §1 or §3 (422), each with its JSON Pointer.
    #[error("the request breaks {} rule(s)", .0.len())]
    Validation(Vec<Problem>),
    /// `If-Match` does not admit the current version (412).
    #[error("If-Match is {expected}, but {}", current.map_or("there is no current version".to_owned(), |v| format!("the current version is {v}")))]
    VersionMismatch {
        expected: Precondition,
        current: Option<i64>,
    },
    /// A rule of the domain refuses the change in its present state (409),
    /// in that rule's words (a cohort that still has members, a flag in use,
    /// a participant in the wrong status).
    #[error("{0}")]
    Conflict(String),
    /// The request is valid but cannot be answered now (503); the reason
    /// may be shown.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The store failed; the cause is kept, typed, for the log only.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// An invariant of allot's own broke (500); for the log only.
    #[error(transparent)]
    Internal(#[from] Internal),
}

/// What a request named that does not exist.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Missing {
    #[error("no flag {0:?}")]
    Flag(String),
    #[error("no experiment {0:?}")]
    Experiment(String),
    #[error("no participant {0:?}")]
    Participant(String),
    #[error("flag {flag:?} has no override for org {org:?}")]
    Override { flag: String, org: String },
    #[error("no cohort {cohort:?} in experiment {experiment:?}")]
    Cohort { experiment: String, cohort: String },
    #[error("experiment {experiment:?} has no phase {phase}")]
    Phase { experiment: String, phase: i64 },
    /// The store found nothing where the caller did not say what it looked for.
    #[error("not found")]
    Unnamed,
}

/// Why a valid request cannot be answered now; every reason may be shown.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// The stored configuration of the entity does not validate any more
    /// (§3): the message names its problem.
    #[error("{0}")]
    BrokenConfig(String),
    /// The experiment's eligibility flag cannot be evaluated.
    #[error("the eligibility flag of experiment {experiment:?} cannot be evaluated: {problem}")]
    BrokenGate { experiment: String, problem: String },
    /// The stored layout of an experiment version is not valid JSON.
    #[error("stored layout of experiment {experiment:?} is malformed: {source}")]
    MalformedLayout {
        experiment: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// Other replicas kept changing or deleting the experiment while this
    /// one was routing for it.
    #[error("experiment {0:?} kept changing while routing; try again")]
    RoutingContended(String),
    /// The experiment kept being deleted and created while registering.
    #[error("experiment {0:?} kept being deleted and created while registering; try again")]
    RegistrationContended(String),
    /// Concurrent writers kept changing a sticky assignment.
    #[error("the sticky assignment kept changing under concurrent writers; try again")]
    StickyContended,
}

/// An invariant of allot's own that broke.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Internal {
    /// A step that its caller ensured cannot happen happened.
    #[error("invariant broken: {0}")]
    Invariant(&'static str),
    /// A normalised document failed to serialise.
    #[error("cannot serialise a document")]
    Encode(#[source] Arc<serde_json::Error>),
    /// The task that runs an experiment's routing calls went away before
    /// answering.
    #[error("the routing worker stopped")]
    RoutingWorkerStopped,
}

impl EngineError {
    /// Counts the store failure this error carries, if any, in
    /// `allot_store_errors_total`.
    pub fn count(&self) {
        if let Self::Store(e) = self {
            count_store_error(e);
        }
    }

    pub fn validation(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![Problem::new(path, message)])
    }

    /// A step its caller ensured cannot happen.
    pub(crate) fn invariant(what: &'static str) -> Self {
        Self::Internal(Internal::Invariant(what))
    }

    /// The same error for a document nested at `prefix` (a JSON Pointer) of
    /// a larger body, as a batch item is.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::Validation(problems) => Self::Validation(
                problems
                    .into_iter()
                    .map(|p| Problem::new(format!("{prefix}{}", p.path), p.message))
                    .collect(),
            ),
            other => other,
        }
    }
}

impl From<serde_json::Error> for Internal {
    fn from(e: serde_json::Error) -> Self {
        Self::Encode(Arc::new(e))
    }
}

/// Counts a store failure in `allot_store_errors_total` (the outcomes that
/// are answers, like "not found", are not failures).
pub(crate) fn count_store_error(e: &StoreError) {
    let kind = match e {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Database(_) | StoreError::Other(_) => "other",
        _ => return,
    };
    metrics::counter!("allot_store_errors_total", "kind" => kind).increment(1);
}

/// Maps a store outcome to the engine's terms. It counts nothing: a store
/// failure is counted where it is decided what becomes of it (answered to a
/// client, or logged by a background task), with [`EngineError::count`].
impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Missing::Unnamed.into(),
            StoreError::VersionMismatch { current } => EngineError::VersionMismatch {
                expected: Precondition::Exists,
                current,
            },
            StoreError::Conflict(m) => EngineError::Conflict(m),
            other => EngineError::Store(Arc::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_shown_reason_keeps_its_cause_for_the_log() {
        let parse = serde_json::from_str::<serde_json::Value>("[1,").expect_err("truncated");
        let text = parse.to_string();
        let e = EngineError::from(Unavailable::MalformedLayout {
            experiment: "checkout".into(),
            source: Arc::new(parse),
        });
        assert!(e
            .to_string()
            .starts_with("stored layout of experiment \"checkout\""));
        let cause = e.source().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some(text.as_str()));
    }

    #[test]
    fn a_store_failure_keeps_the_database_error() {
        let e = EngineError::from(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        assert!(matches!(e, EngineError::Store(_)));
        let cause = e.source().map(ToString::to_string);
        assert_eq!(cause, Some(sqlx::Error::PoolTimedOut.to_string()));
    }

    #[test]
    fn outcomes_of_the_store_that_are_answers_are_not_failures() {
        assert!(matches!(
            EngineError::from(StoreError::NotFound),
            EngineError::NotFound(Missing::Unnamed)
        ));
        assert!(matches!(
            EngineError::from(StoreError::Conflict("in use".into())),
            EngineError::Conflict(m) if m == "in use"
        ));
    }
}
