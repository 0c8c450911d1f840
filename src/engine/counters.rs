//! The counters labelled by experiment (`allot_assignments_total`,
//! `allot_routing_status_changes_total`), kept by allot itself and rendered
//! into `/metrics` after the recorder's output.
//!
//! They are not in the `metrics` recorder because metrics-exporter-prometheus
//! 0.18 cannot remove a series: its registry is private, and its only way to
//! forget one is an idle timeout, which would also drop (and reset) the series
//! of a live experiment that is merely quiet. Every deleted experiment's
//! series would stay forever, growing `/metrics` and the process with every
//! create/delete cycle. Here an experiment's series live exactly as long as
//! the experiment is in this replica's snapshot: [`Registry::retain`] runs
//! whenever a snapshot is swapped in, whether for this replica's own delete
//! or for a reload that no longer has the experiment.
//!
//! Counting stays as cheap as it was: each snapshot entry holds its cells
//! ([`EntryCounters`]), resolved once when the entry is built, and an answer is one
//! relaxed atomic add, with no lock and no allocation.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::experiment::AssignmentReason;

use super::snapshot::Snapshot;

const ASSIGNMENTS: &str = "allot_assignments_total";
const ASSIGNMENTS_HELP: &str =
    "Assignment answers by experiment, treatment (empty: not in the experiment) and reason";
const ROUTING: &str = "allot_routing_status_changes_total";
const ROUTING_HELP: &str = "Participant status changes by experiment, new status and reason";

/// The reasons an assignment answer is counted under, in cell order.
const REASONS: [AssignmentReason; 6] = [
    AssignmentReason::Assigned,
    AssignmentReason::Sticky,
    AssignmentReason::ExperimentPaused,
    AssignmentReason::OrgNotEligible,
    AssignmentReason::NoActiveTreatments,
    AssignmentReason::NotInCoverage,
];

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every experiment's series, by key: one engine's, so that several engines
/// in one process (tests, replicas) keep theirs apart.
#[derive(Debug, Default)]
pub struct Registry {
    experiments: Mutex<HashMap<String, Arc<Series>>>,
}

/// One experiment's series.
#[derive(Debug)]
pub struct Series {
    /// The incarnation counted: a key deleted and created again starts from
    /// zero, while the versions of one incarnation keep counting.
    id: String,
    /// Per treatment ("" for answers without one), a cell per reason in
    /// [`REASONS`] order, for the treatments of the newest version built.
    /// The cells are shared with the snapshot entries, which count into them.
    assignments: Mutex<Vec<Row>>,
    /// (new status, reason) → changes. Routing runs a store transaction per
    /// batch, so a lock here costs nothing that matters.
    routing: Mutex<Vec<(&'static str, &'static str, u64)>>,
}

type Row = (String, [Arc<AtomicU64>; REASONS.len()]);

/// A snapshot entry's assignment cells: `(treatments + 1) × REASONS`, row 0
/// for answers without a treatment.
#[derive(Debug)]
pub struct EntryCounters {
    series: Arc<Series>,
    cells: Vec<Arc<AtomicU64>>,
}

impl Registry {
    /// The cells of a new snapshot entry for experiment `key` (incarnation
    /// `id`) with these treatments. A treatment the previous version had
    /// keeps its count; one it no longer has loses its series.
    pub fn register(&self, id: &str, key: &str, treatments: &[&str]) -> EntryCounters {
        let series = {
            let mut experiments = lock(&self.experiments);
            match experiments.get(key) {
                Some(series) if series.id == id => Arc::clone(series),
                _ => {
                    let series = Arc::new(Series {
                        id: id.to_owned(),
                        assignments: Mutex::default(),
                        routing: Mutex::default(),
                    });
                    experiments.insert(key.to_owned(), Arc::clone(&series));
                    series
                }
            }
        };
        let mut rows = lock(&series.assignments);
        let previous: HashMap<&str, &[Arc<AtomicU64>; REASONS.len()]> =
            rows.iter().map(|(t, cells)| (t.as_str(), cells)).collect();
        let next: Vec<Row> = std::iter::once("")
            .chain(treatments.iter().copied())
            .map(|treatment| {
                let cells = previous.get(treatment).map_or_else(
                    || std::array::from_fn(|_| Arc::default()),
                    |cells| (*cells).clone(),
                );
                (treatment.to_owned(), cells)
            })
            .collect();
        let cells = next
            .iter()
            .flat_map(|(_, cells)| cells.iter().cloned())
            .collect();
        *rows = next;
        drop(rows);
        EntryCounters { series, cells }
    }

    /// Forgets the series of every experiment `snapshot` no longer serves
    /// (deleted, or deleted and created again: another incarnation).
    pub fn retain(&self, snapshot: &Snapshot) {
        lock(&self.experiments).retain(|key, series| {
            snapshot
                .experiments
                .get(key)
                .is_some_and(|entry| entry.id == series.id)
        });
    }

    /// Appends both counters in the Prometheus text format, experiments in
    /// key order.
    pub fn render(&self, out: &mut String) {
        let mut experiments: Vec<(String, Arc<Series>)> = lock(&self.experiments)
            .iter()
            .map(|(key, series)| (escape(key), Arc::clone(series)))
            .collect();
        experiments.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let _ = writeln!(out, "# HELP {ASSIGNMENTS} {ASSIGNMENTS_HELP}");
        let _ = writeln!(out, "# TYPE {ASSIGNMENTS} counter");
        for (key, series) in &experiments {
            for (treatment, cells) in lock(&series.assignments).iter() {
                let treatment = escape(treatment);
                for (reason, cell) in REASONS.iter().zip(cells) {
                    let _ = writeln!(
                        out,
                        "{ASSIGNMENTS}{{experiment=\"{key}\",treatment=\"{treatment}\",reason=\"{}\"}} {}",
                        reason.as_str(),
                        cell.load(Ordering::Relaxed)
                    );
                }
            }
        }
        let _ = writeln!(out, "# HELP {ROUTING} {ROUTING_HELP}");
        let _ = writeln!(out, "# TYPE {ROUTING} counter");
        for (key, series) in &experiments {
            for (status, reason, count) in lock(&series.routing).iter() {
                let _ = writeln!(
                    out,
                    "{ROUTING}{{experiment=\"{key}\",status=\"{}\",reason=\"{}\"}} {count}",
                    escape(status),
                    escape(reason)
                );
            }
        }
    }
}

impl EntryCounters {
    /// Counts one answer: `treatment` is an index into the treatments.
    pub fn count(&self, treatment: Option<usize>, reason: AssignmentReason) {
        let row = treatment.map_or(0, |i| i + 1);
        let column = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        if let Some(cell) = self.cells.get(row * REASONS.len() + column) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one participant status change.
    pub fn count_routing(&self, status: &'static str, reason: &'static str) {
        let mut rows = lock(&self.series.routing);
        match rows
            .iter_mut()
            .find(|(s, r, _)| *s == status && *r == reason)
        {
            Some((_, _, count)) => *count += 1,
            None => rows.push((status, reason, 1)),
        }
    }
}

/// A label value as the text format wants it: backslash, quote and newline
/// escaped. Keys and treatment names cannot hold them, but a row edited by
/// hand in the store can.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(counters: &Registry) -> String {
        let mut out = String::new();
        counters.render(&mut out);
        out
    }

    #[test]
    fn a_new_version_keeps_the_counts_of_the_treatments_it_keeps() {
        let counters = Registry::default();
        let v1 = counters.register("id-1", "exp", &["a", "b"]);
        v1.count(Some(0), AssignmentReason::Assigned);
        v1.count(Some(1), AssignmentReason::Assigned);
        v1.count_routing("assigned", "formed");
        let v2 = counters.register("id-1", "exp", &["a", "c"]);
        v2.count(Some(0), AssignmentReason::Assigned);
        let text = rendered(&counters);
        assert!(text.contains(
            "allot_assignments_total{experiment=\"exp\",treatment=\"a\",reason=\"assigned\"} 2\n"
        ));
        assert!(!text.contains("treatment=\"b\""), "{text}");
        assert!(text.contains(
            "allot_assignments_total{experiment=\"exp\",treatment=\"c\",reason=\"assigned\"} 0\n"
        ));
        assert!(text.contains(
            "allot_routing_status_changes_total{experiment=\"exp\",status=\"assigned\",reason=\"formed\"} 1\n"
        ));
    }

    #[test]
    fn another_incarnation_of_a_key_starts_from_zero() {
        let counters = Registry::default();
        counters
            .register("id-1", "exp", &["a"])
            .count(Some(0), AssignmentReason::Assigned);
        counters.register("id-2", "exp", &["a"]);
        assert!(rendered(&counters).contains("treatment=\"a\",reason=\"assigned\"} 0\n"));
    }

    #[test]
    fn an_experiment_the_snapshot_no_longer_has_loses_its_series() {
        let counters = Registry::default();
        let cells = counters.register("id-1", "exp", &["a"]);
        cells.count_routing("assigned", "formed");
        counters.retain(&Snapshot::default());
        // Counting through a snapshot entry still in use brings nothing back.
        cells.count(Some(0), AssignmentReason::Assigned);
        cells.count_routing("assigned", "formed");
        assert!(!rendered(&counters).contains("experiment=\"exp\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
