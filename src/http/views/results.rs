//! The bodies of `…/results` (§8).

use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::domain::results::{Arm, Srm};
use crate::engine::results::{NotInExperiment, PhaseResults, Results};

/// An experiment's results, one entry per phase, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"experiment": "code-review", "phases": [{
    "phase": 2, "from_version": 3, "to_version": null, "started_at": "2026-11-22T10:00:00Z",
    "units": 10023,
    "treatments": [
        {"name": "noop", "buckets": 5000, "expected_share": 0.5, "units": 5012, "observed_share": 0.50005},
        {"name": "cost-optimized", "buckets": 5000, "expected_share": 0.5, "units": 5011, "observed_share": 0.49995}],
    "sticky_units": 0,
    "not_in_experiment": {"org_not_eligible": 120, "not_in_coverage": 0, "experiment_paused": 0, "no_active_treatments": 0},
    "moved_units": 12,
    "srm": {"chi_square": 0.0001, "df": 1, "p_value": 0.992, "mismatch": false},
    "dropped": 0}]}))]
pub struct ResultsView {
    pub experiment: String,
    pub phases: Vec<PhaseResultsView>,
}

/// One phase: units per treatment against the layout's exact shares.
#[derive(Debug, Serialize, ToSchema)]
pub struct PhaseResultsView {
    pub phase: i64,
    /// The phase's first version.
    pub from_version: i64,
    /// Its last version; null while it is the live phase.
    #[schema(required = true)]
    pub to_version: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Distinct units answered `assigned`, over every treatment.
    pub units: u64,
    pub treatments: Vec<ArmView>,
    /// Distinct units answered `sticky` (they outlive their bucket, so they
    /// are not compared with the layout).
    pub sticky_units: u64,
    /// Answers without a treatment, by reason (answers, not units).
    pub not_in_experiment: NotInExperimentView,
    /// Units whose treatment differs from the one they had in the latest
    /// earlier phase they were recorded in.
    pub moved_units: u64,
    /// The sample-ratio check; null below 100 units or with fewer than two
    /// treatments with buckets.
    #[schema(required = true)]
    pub srm: Option<SrmView>,
    /// Exposures lost before reaching the ledger (a full buffer, or a
    /// store outage longer than the buffer lasts).
    pub dropped: u64,
}

/// One treatment in a phase.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArmView {
    pub name: String,
    /// Its buckets in the phase's layout.
    pub buckets: u32,
    /// `buckets` over every allocated bucket.
    pub expected_share: f64,
    /// Distinct units answered `assigned` with it.
    pub units: u64,
    /// `units` over the phase's units.
    pub observed_share: f64,
}

/// Answers without a treatment, by reason.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotInExperimentView {
    pub org_not_eligible: u64,
    pub not_in_coverage: u64,
    pub experiment_paused: u64,
    pub no_active_treatments: u64,
}

/// Pearson's χ² of the assigned units against the layout's shares.
#[derive(Debug, Serialize, ToSchema)]
pub struct SrmView {
    pub chi_square: f64,
    pub df: u32,
    pub p_value: f64,
    /// p < 0.001, or a unit was assigned a treatment without buckets.
    pub mismatch: bool,
}

impl From<Results> for ResultsView {
    fn from(r: Results) -> Self {
        Self {
            experiment: r.experiment,
            phases: r.phases.into_iter().map(PhaseResultsView::from).collect(),
        }
    }
}

impl From<PhaseResults> for PhaseResultsView {
    fn from(p: PhaseResults) -> Self {
        Self {
            phase: p.phase,
            from_version: p.from_version,
            to_version: p.to_version,
            started_at: p.started_at,
            units: p.units,
            treatments: p.treatments.into_iter().map(ArmView::from).collect(),
            sticky_units: p.sticky_units,
            not_in_experiment: p.not_in_experiment.into(),
            moved_units: p.moved_units,
            srm: p.srm.map(SrmView::from),
            dropped: p.dropped,
        }
    }
}

impl From<Arm> for ArmView {
    fn from(a: Arm) -> Self {
        Self {
            name: a.name,
            buckets: a.buckets,
            expected_share: a.expected_share,
            units: a.units,
            observed_share: a.observed_share,
        }
    }
}

impl From<NotInExperiment> for NotInExperimentView {
    fn from(n: NotInExperiment) -> Self {
        Self {
            org_not_eligible: n.org_not_eligible,
            not_in_coverage: n.not_in_coverage,
            experiment_paused: n.experiment_paused,
            no_active_treatments: n.no_active_treatments,
        }
    }
}

impl From<Srm> for SrmView {
    fn from(s: Srm) -> Self {
        Self {
            chi_square: s.chi_square,
            df: s.df,
            p_value: s.p_value,
            mismatch: s.mismatch,
        }
    }
}
