//! The exposure ledger's writer (§8): answers are recorded without delaying
//! or failing them.
//!
//! An answer `assigned` or `sticky` for a unit this replica has not recorded
//! in the phase yet goes into a bounded in-memory buffer; answers without a
//! treatment add one to an atomic cell of their snapshot entry. A background
//! task flushes both to the store every `exposure_flush_ms` (sooner when
//! the buffer is half full) and once more at shutdown, in one transaction
//! per flush; the store keeps one row per (experiment, phase, org, unit).
//!
//! - **Repeats cost nothing**: a per-replica cache of the units already
//!   buffered (hashes, two generations of at most `exposure_cache` entries
//!   each) answers "seen" without touching the buffer. A unit the cache has
//!   forgotten is buffered again and the store's `ON CONFLICT DO NOTHING`
//!   absorbs it. Two units whose 64-bit hashes collide in one generation
//!   would record only the first: with a million units cached, the chance
//!   of any collision is about 3 in 100 million.
//! - **Nothing is lost silently**: a record that finds the buffer full is
//!   counted as dropped for its phase, and so is every record a failed
//!   flush cannot put back; the counts reach the store with the next flush
//!   that succeeds and are shown in the results (`dropped`).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;

use super::snapshot::{ExperimentEntry, Snapshot};
use crate::domain::experiment::AssignmentReason;
use crate::store::{CountIncrement, ExposureRecord, Store, StoreError};

/// The answers without a treatment, counted per phase, in cell order.
const NULL_REASONS: [AssignmentReason; 4] = [
    AssignmentReason::OrgNotEligible,
    AssignmentReason::NotInCoverage,
    AssignmentReason::ExperimentPaused,
    AssignmentReason::NoActiveTreatments,
];

/// The counter kind of records lost before reaching the ledger.
pub const DROPPED: &str = "dropped";

/// Shards of the cache of recorded units, so that answers on different
/// threads rarely wait for one another.
const SHARDS: usize = 16;

/// A phase's counter: (experiment, phase, kind).
type Counter = (Arc<str>, i64, &'static str);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The ledger's limits, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct LedgerOptions {
    /// Records the buffer holds between flushes (`exposure_buffer`).
    pub buffer: usize,
    /// Units each generation of the cache remembers (`exposure_cache`).
    pub cache: usize,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            buffer: 100_000,
            cache: 1_000_000,
        }
    }
}

/// One snapshot entry's phase, and its answers without a treatment not yet
/// flushed. Shared by the entry and the ledger: the ledger drains it on
/// every flush and forgets it once the entry is gone and it is empty.
#[derive(Debug)]
pub struct PhaseCells {
    pub experiment: Arc<str>,
    pub phase: i64,
    /// Per [`NULL_REASONS`].
    null_answers: [AtomicU64; NULL_REASONS.len()],
    /// Whether the ledger already tracks these cells.
    tracked: AtomicBool,
}

impl PhaseCells {
    pub fn new(experiment: &str, phase: i64) -> Self {
        Self {
            experiment: Arc::from(experiment),
            phase,
            null_answers: Default::default(),
            tracked: AtomicBool::new(false),
        }
    }
}

/// The units recorded lately, as hashes: two generations, the older
/// dropped when the newer fills up.
#[derive(Debug, Default)]
struct Generations {
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

#[derive(Debug)]
pub struct Ledger {
    options: LedgerOptions,
    hasher: RandomState,
    seen: [Mutex<Generations>; SHARDS],
    buffer: Mutex<Vec<ExposureRecord>>,
    /// Counts waiting for the next successful flush: (experiment, phase,
    /// kind) → count. Kinds are answer reasons and [`DROPPED`].
    pending: Mutex<HashMap<Counter, u64>>,
    /// The cells of every snapshot entry that may hold counts.
    cells: Mutex<Vec<Arc<PhaseCells>>>,
    /// One flush at a time (the periodic one and the shutdown one).
    flushing: tokio::sync::Mutex<()>,
    /// Records taken out of the buffer by the flush under way.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Wakes the flusher early when the buffer is half full.
    pub(crate) wake: tokio::sync::Notify,
}

impl Ledger {
    pub fn new(options: LedgerOptions) -> Self {
        Self {
            options,
            hasher: RandomState::new(),
            seen: Default::default(),
            buffer: Mutex::new(Vec::new()),
            pending: Mutex::default(),
            cells: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Records one answer of `entry` (a no-op for experiments with
    /// `exposures: false` and for forced answers).
    pub fn record(
        &self,
        entry: &ExperimentEntry,
        org_id: &str,
        unit_id: &str,
        treatment: Option<&str>,
        bucket: Option<u16>,
        reason: AssignmentReason,
    ) {
        let Some(cells) = entry.exposure_cells() else {
            return;
        };
        match (reason, treatment) {
            (AssignmentReason::Assigned | AssignmentReason::Sticky, Some(treatment)) => {
                self.expose(cells, org_id, unit_id, treatment, bucket, reason);
            }
            (AssignmentReason::Forced, _) => {}
            _ => {
                if let Some(i) = NULL_REASONS.iter().position(|r| *r == reason) {
                    cells.null_answers[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn expose(
        &self,
        cells: &PhaseCells,
        org_id: &str,
        unit_id: &str,
        treatment: &str,
        bucket: Option<u16>,
        reason: AssignmentReason,
    ) {
        let hash = self
            .hasher
            .hash_one((&*cells.experiment, cells.phase, org_id, unit_id));
        let shard = &self.seen[usize::try_from(hash % SHARDS as u64).unwrap_or(0)];
        {
            let seen = lock(shard);
            if seen.current.contains(&hash) || seen.previous.contains(&hash) {
                return;
            }
        }
        let record = ExposureRecord {
            experiment: Arc::clone(&cells.experiment),
            phase: cells.phase,
            org_id: org_id.to_owned(),
            unit_id: unit_id.to_owned(),
            treatment: treatment.to_owned(),
            bucket,
            reason: reason.as_str(),
            first_seen: OffsetDateTime::now_utc(),
        };
        let buffered = {
            let mut buffer = lock(&self.buffer);
            if buffer.len() >= self.options.buffer {
                false
            } else {
                buffer.push(record);
                if buffer.len() == self.options.buffer / 2 {
                    self.wake.notify_one();
                }
                true
            }
        };
        if !buffered {
            self.count_dropped(&cells.experiment, cells.phase, 1);
            return;
        }
        // Only a buffered unit counts as seen: a dropped one is tried again.
        let per_shard = (self.options.cache / SHARDS).max(1);
        let mut seen = lock(shard);
        if seen.current.len() >= per_shard {
            seen.previous = std::mem::take(&mut seen.current);
        }
        seen.current.insert(hash);
    }

    fn count_dropped(&self, experiment: &Arc<str>, phase: i64, n: u64) {
        metrics::counter!("allot_exposures_dropped_total").increment(n);
        *lock(&self.pending)
            .entry((Arc::clone(experiment), phase, DROPPED))
            .or_default() += n;
    }

    /// Starts tracking the cells of every entry of `snapshot` (a new
    /// snapshot's new entries; the others are tracked already).
    pub fn track(&self, snapshot: &Snapshot) {
        let fresh: Vec<Arc<PhaseCells>> = snapshot
            .experiments
            .values()
            .filter_map(|e| e.exposure_cells_arc())
            .filter(|c| !c.tracked.swap(true, Ordering::Relaxed))
            .collect();
        if !fresh.is_empty() {
            lock(&self.cells).extend(fresh);
        }
    }

    /// Units cached as recorded, for the gauge.
    fn cached(&self) -> usize {
        self.seen
            .iter()
            .map(|s| {
                let s = lock(s);
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// Moves the cells' counts into `pending`, forgetting the cells of
    /// entries no snapshot holds any more.
    fn harvest(&self) {
        let mut cells = lock(&self.cells);
        let mut pending = lock(&self.pending);
        for c in cells.iter() {
            for (reason, cell) in NULL_REASONS.iter().zip(&c.null_answers) {
                let n = cell.swap(0, Ordering::Relaxed);
                if n > 0 {
                    *pending
                        .entry((Arc::clone(&c.experiment), c.phase, reason.as_str()))
                        .or_default() += n;
                }
            }
        }
        // Only the ledger holds them: no answer can count into them again.
        cells.retain(|c| Arc::strong_count(c) > 1);
    }

    /// Writes what is buffered and counted to the store, in one
    /// transaction. On failure everything that fits goes back into the
    /// buffer for the next flush, and the rest is counted as dropped.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let _one = self.flushing.lock().await;
        self.harvest();
        let records = {
            let mut buffer = lock(&self.buffer);
            self.in_flight.store(buffer.len(), Ordering::Relaxed);
            std::mem::take(&mut *buffer)
        };
        let counts: Vec<CountIncrement> = lock(&self.pending)
            .drain()
            .map(|((experiment, phase, kind), count)| CountIncrement {
                experiment,
                phase,
                kind,
                treatment: String::new(),
                count,
            })
            .collect();
        metrics::gauge!("allot_exposure_cache_entries").set(self.cached() as f64);
        if records.is_empty() && counts.is_empty() {
            metrics::gauge!("allot_exposure_buffer_records").set(0.0);
            return Ok(0);
        }
        match store.record_exposures(&records, &counts).await {
            Ok(()) => {
                self.in_flight.store(0, Ordering::Relaxed);
                metrics::counter!("allot_exposures_flushed_total").increment(records.len() as u64);
                metrics::gauge!("allot_exposure_buffer_records")
                    .set(lock(&self.buffer).len() as f64);
                Ok(records.len())
            }
            Err(e) => {
                self.restore(records, counts);
                Err(e)
            }
        }
    }

    fn restore(&self, records: Vec<ExposureRecord>, counts: Vec<CountIncrement>) {
        {
            let mut pending = lock(&self.pending);
            for c in counts {
                *pending.entry((c.experiment, c.phase, c.kind)).or_default() += c.count;
            }
        }
        let mut lost: HashMap<(Arc<str>, i64), u64> = HashMap::new();
        {
            let mut buffer = lock(&self.buffer);
            self.in_flight.store(0, Ordering::Relaxed);
            let room = self.options.buffer.saturating_sub(buffer.len());
            let mut records = records.into_iter();
            buffer.extend(records.by_ref().take(room));
            for r in records {
                *lost.entry((r.experiment, r.phase)).or_default() += 1;
            }
            metrics::gauge!("allot_exposure_buffer_records").set(buffer.len() as f64);
        }
        for ((experiment, phase), n) in lost {
            self.count_dropped(&experiment, phase, n);
        }
    }

    /// Records not written yet: in the buffer, or in a flush under way
    /// (which puts them back if it fails).
    pub fn buffered(&self) -> usize {
        lock(&self.buffer).len() + self.in_flight.load(Ordering::Relaxed)
    }
}
