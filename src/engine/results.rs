//! Results and exposure exports (§8), read from the ledger and the history.
//!
//! Both stay readable after the experiment is deleted, like its versions.
//! Before reading, this replica flushes its own buffered exposures, so that
//! an analyst sees every answer this replica gave; other replicas' answers
//! arrive within their `exposure_flush_ms`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::stream::{self, Stream};
use time::OffsetDateTime;

use super::experiments::ExperimentVersion;
use super::exposures::CHECKPOINT_EVERY;
use super::{Engine, EngineError, Missing};
use crate::domain::layout::Range;
use crate::domain::results::{self, Arm, Observed, Srm};
use crate::store::{CountRecord, LedgerRow, StoreError};

/// Ledger rows read per store round trip while exporting.
const EXPORT_PAGE: i64 = 2_000;

/// One phase's results.
#[derive(Debug, Clone)]
pub struct PhaseResults {
    pub phase: i64,
    pub from_version: i64,
    /// `None` while the phase is the live one.
    pub to_version: Option<i64>,
    pub started_at: OffsetDateTime,
    /// Distinct units answered `assigned`, over every treatment.
    pub units: u64,
    pub treatments: Vec<Arm>,
    pub sticky_units: u64,
    pub not_in_experiment: NotInExperiment,
    pub moved_units: u64,
    pub srm: Option<Srm>,
    pub dropped: u64,
}

/// Answers without a treatment, by reason.
#[derive(Debug, Clone, Default)]
pub struct NotInExperiment {
    pub org_not_eligible: u64,
    pub not_in_coverage: u64,
    pub experiment_paused: u64,
    pub no_active_treatments: u64,
}

/// An experiment's results, newest phase first.
#[derive(Debug, Clone)]
pub struct Results {
    pub experiment: String,
    pub phases: Vec<PhaseResults>,
}

/// What a phase's counters hold.
#[derive(Debug, Default)]
struct Tally {
    observed: Observed,
    sticky: u64,
    moved: u64,
    dropped: u64,
    out: NotInExperiment,
}

fn count(c: &CountRecord) -> u64 {
    u64::try_from(c.count).unwrap_or_default()
}

fn tallies(counts: Vec<CountRecord>) -> BTreeMap<i64, Tally> {
    let mut by_phase: BTreeMap<i64, Tally> = BTreeMap::new();
    for c in counts {
        let n = count(&c);
        let t = by_phase.entry(c.phase).or_default();
        match c.kind.as_str() {
            "assigned" => t.observed.assigned.push((c.treatment, n)),
            "sticky" => t.sticky += n,
            "moved" => t.moved += n,
            "dropped" => t.dropped += n,
            "org_not_eligible" => t.out.org_not_eligible += n,
            "not_in_coverage" => t.out.not_in_coverage += n,
            "experiment_paused" => t.out.experiment_paused += n,
            "no_active_treatments" => t.out.no_active_treatments += n,
            // A counter a later version of allot may keep.
            _ => {}
        }
    }
    by_phase
}

/// The treatments a version lists, by name, in order.
fn treatment_names(version: &ExperimentVersion) -> Vec<String> {
    version.config["treatments"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The phases of a history (newest version first) with their tallies.
fn phases(versions: &[ExperimentVersion], mut tallies: BTreeMap<i64, Tally>) -> Vec<PhaseResults> {
    // Oldest first within each phase.
    let mut by_phase: BTreeMap<i64, Vec<&ExperimentVersion>> = BTreeMap::new();
    for v in versions.iter().rev() {
        by_phase.entry(i64::from(v.phase)).or_default().push(v);
    }
    let newest = versions.first();
    let live_phase = newest.filter(|v| !v.deleted).map(|v| i64::from(v.phase));
    let mut out: Vec<PhaseResults> = by_phase
        .into_iter()
        .filter_map(|(phase, members)| {
            let first = members.first()?;
            let last = members.last()?;
            let live: Vec<&&ExperimentVersion> = members.iter().filter(|v| !v.deleted).collect();
            let layout: Vec<Range> = live
                .first()
                .and_then(|v| serde_json::from_value(v.layout.clone()).ok())
                .unwrap_or_default();
            let names = live.last().map(|v| treatment_names(v)).unwrap_or_default();
            let tally = tallies.remove(&phase).unwrap_or_default();
            let treatments = results::arms(&names, &layout, &tally.observed);
            let units = treatments.iter().map(|a| a.units).sum();
            Some(PhaseResults {
                phase,
                from_version: first.version,
                to_version: (live_phase != Some(phase)).then_some(last.version),
                started_at: first.created_at,
                units,
                srm: results::srm(&treatments),
                treatments,
                sticky_units: tally.sticky,
                not_in_experiment: tally.out,
                moved_units: tally.moved,
                dropped: tally.dropped,
            })
        })
        .collect();
    out.reverse();
    out
}

impl Engine {
    /// Writes this replica's buffered exposures now; a failure is logged
    /// and left to the next periodic flush.
    pub async fn flush_exposures(&self) -> Result<usize, EngineError> {
        self.ledger.flush(self.store.as_ref()).await.map_err(|e| {
            super::count_store_error(&e);
            EngineError::from(e)
        })
    }

    /// Exposures buffered and not yet written.
    pub fn buffered_exposures(&self) -> usize {
        self.ledger.buffered()
    }

    /// Flushes this replica's exposures every `interval`, or sooner when
    /// the buffer fills up, and checkpoints what it holds in between
    /// (every [`CHECKPOINT_EVERY`] at most).
    pub fn spawn_exposure_flusher(
        self: &std::sync::Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let engine = std::sync::Arc::clone(self);
        let tick = interval.min(CHECKPOINT_EVERY);
        tokio::spawn(async move {
            let mut flushed = tokio::time::Instant::now();
            loop {
                let full = tokio::select! {
                    () = tokio::time::sleep(tick) => flushed.elapsed() >= interval,
                    () = engine.ledger.wake.notified() => true,
                };
                if full {
                    flushed = tokio::time::Instant::now();
                    if let Err(e) = engine.flush_exposures().await {
                        tracing::warn!(error = %e, buffered = engine.ledger.buffered(), "writing exposures failed; kept for the next flush");
                    }
                } else if let Err(e) = engine.ledger.checkpoint(engine.store.as_ref()).await {
                    super::count_store_error(&e);
                    tracing::warn!(error = %e, "checkpointing the exposure buffer failed; retried on the next tick");
                }
            }
        })
    }

    /// `GET /v1/experiments/{key}/results`.
    pub async fn results(&self, key: &str) -> Result<Results, EngineError> {
        if let Err(e) = self.flush_exposures().await {
            tracing::warn!(error = %e, "results read without this replica's latest exposures");
        }
        let versions = self.experiment_versions(key).await?;
        let counts = self.store.exposure_counts(key).await?;
        Ok(Results {
            experiment: key.to_owned(),
            phases: phases(&versions, tallies(counts)),
        })
    }

    /// The phase an export reads: `requested`, which must be one of the
    /// experiment's, or the newest.
    pub async fn export_phase(
        &self,
        key: &str,
        requested: Option<i64>,
    ) -> Result<i64, EngineError> {
        if let Err(e) = self.flush_exposures().await {
            tracing::warn!(error = %e, "export read without this replica's latest exposures");
        }
        let versions = self.experiment_versions(key).await?;
        let newest = versions
            .iter()
            .map(|v| i64::from(v.phase))
            .max()
            .unwrap_or(1);
        match requested {
            None => Ok(newest),
            Some(p) if versions.iter().any(|v| i64::from(v.phase) == p) => Ok(p),
            Some(p) => Err(Missing::Phase {
                experiment: key.to_owned(),
                phase: p,
            }
            .into()),
        }
    }

    /// One phase's ledger rows by (org, unit), read a page at a time, so
    /// that an export holds one page in memory however large the phase.
    pub fn ledger_rows(
        &self,
        key: &str,
        phase: i64,
    ) -> impl Stream<Item = Result<LedgerRow, StoreError>> + Send + 'static {
        struct Cursor {
            store: std::sync::Arc<dyn crate::store::Store>,
            key: String,
            after: Option<(String, String)>,
            page: std::vec::IntoIter<LedgerRow>,
            done: bool,
        }
        let cursor = Cursor {
            store: std::sync::Arc::clone(&self.store),
            key: key.to_owned(),
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        };
        stream::try_unfold(cursor, move |mut c| async move {
            loop {
                if let Some(row) = c.page.next() {
                    c.after = Some((row.org_id.clone(), row.unit_id.clone()));
                    return Ok(Some((row, c)));
                }
                if c.done {
                    return Ok(None);
                }
                let after = c.after.as_ref().map(|(o, u)| (o.as_str(), u.as_str()));
                let rows = c
                    .store
                    .ledger_page(&c.key, phase, after, EXPORT_PAGE)
                    .await?;
                c.done = i64::try_from(rows.len()).unwrap_or_default() < EXPORT_PAGE;
                c.page = rows.into_iter();
            }
        })
    }
}
