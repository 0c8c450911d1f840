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
//! - **Nor with a replica that dies**: what the buffer holds per phase is
//!   checkpointed to the store (`exposure_holdings`) every
//!   [`CHECKPOINT_EVERY`] while it changes, with the counts of answers
//!   without a treatment, and renewed four times per lease. A replica's
//!   checkpoints and flushes also claim the holdings of replicas that did
//!   not renew theirs within the lease (`exposure_lease_ms`): those count as
//!   dropped. What a replica takes in after its last checkpoint before it
//!   dies (at most [`CHECKPOINT_EVERY`] of answers) is beyond counting; a
//!   replica cut off from the store for longer than the lease has its
//!   records counted as dropped and may still write them later (an
//!   overcount, never an undercount).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::snapshot::{ExperimentEntry, Snapshot};
use crate::domain::experiment::AssignmentReason;
use crate::store::{CountIncrement, ExposureRecord, Holdings, Store, StoreError, DROPPED};

/// The answers without a treatment, counted per phase, in cell order.
const NULL_REASONS: [AssignmentReason; 4] = [
    AssignmentReason::OrgNotEligible,
    AssignmentReason::NotInCoverage,
    AssignmentReason::ExperimentPaused,
    AssignmentReason::NoActiveTreatments,
];

/// How often a replica checkpoints what its buffer holds, while that
/// changes (or every flush interval, if that is shorter).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Shards of the cache of recorded units, so that answers on different
/// threads rarely wait for one another.
const SHARDS: usize = 16;

/// A phase's counter: (experiment, phase, kind).
type Counter = (Arc<str>, i64, &'static str);

/// Records held per (experiment, phase).
type Held = HashMap<(Arc<str>, i64), u64>;

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
    /// How long a replica's checkpoint stands for it (`exposure_lease_ms`):
    /// holdings older than this are of a replica that died.
    pub lease: Duration,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            buffer: 100_000,
            cache: 1_000_000,
            lease: Duration::from_secs(30),
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

/// The records not written yet, and how many per phase.
#[derive(Debug, Default)]
struct Buffer {
    records: Vec<ExposureRecord>,
    held: Held,
}

impl Buffer {
    fn push(&mut self, record: ExposureRecord) {
        *self
            .held
            .entry((Arc::clone(&record.experiment), record.phase))
            .or_default() += 1;
        self.records.push(record);
    }
}

/// The holdings the store last took from this replica, and when.
#[derive(Debug, Default)]
struct Checkpointed {
    held: Held,
    at: Option<Instant>,
}

#[derive(Debug)]
pub struct Ledger {
    options: LedgerOptions,
    hasher: RandomState,
    seen: [Mutex<Generations>; SHARDS],
    /// This process, in the store's holdings.
    replica: Arc<str>,
    buffer: Mutex<Buffer>,
    checkpointed: Mutex<Checkpointed>,
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
            replica: Arc::from(uuid::Uuid::new_v4().to_string()),
            buffer: Mutex::default(),
            checkpointed: Mutex::default(),
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
            if buffer.records.len() >= self.options.buffer {
                false
            } else {
                buffer.push(record);
                if buffer.records.len() == self.options.buffer / 2 {
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

    /// The counts waiting for a flush, taken out.
    fn take_counts(&self) -> Vec<CountIncrement> {
        lock(&self.pending)
            .drain()
            .map(|((experiment, phase, kind), count)| CountIncrement {
                experiment,
                phase,
                kind,
                treatment: String::new(),
                count,
            })
            .collect()
    }

    /// Whether the store must hear of `held`: it changed since the last
    /// checkpoint, or a quarter of the lease went by (which also claims
    /// the holdings of replicas that died).
    fn checkpoint_due(&self, held: &Held) -> bool {
        let last = lock(&self.checkpointed);
        last.held != *held
            || last
                .at
                .is_none_or(|at| at.elapsed() >= self.options.lease / 4)
    }

    fn holdings(&self, held: &Held) -> Holdings {
        let now_ms = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX);
        let lease = i64::try_from(self.options.lease.as_millis()).unwrap_or(i64::MAX);
        Holdings {
            replica: Arc::clone(&self.replica),
            held: held
                .iter()
                .map(|((experiment, phase), n)| (Arc::clone(experiment), *phase, *n))
                .collect(),
            now_ms,
            stale_before_ms: now_ms.saturating_sub(lease),
        }
    }

    fn checkpointed(&self, held: Held, claimed: u64) {
        *lock(&self.checkpointed) = Checkpointed {
            held,
            at: Some(Instant::now()),
        };
        if claimed > 0 {
            metrics::counter!("allot_exposures_dropped_total").increment(claimed);
            tracing::warn!(
                records = claimed,
                "exposures held by a replica that stopped without writing them are counted as dropped"
            );
        }
    }

    /// Writes what is buffered and counted to the store, in one
    /// transaction. On failure everything that fits goes back into the
    /// buffer for the next flush, and the rest is counted as dropped.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let _one = self.flushing.lock().await;
        self.harvest();
        let records = {
            let mut buffer = lock(&self.buffer);
            self.in_flight
                .store(buffer.records.len(), Ordering::Relaxed);
            buffer.held.clear();
            std::mem::take(&mut buffer.records)
        };
        let counts = self.take_counts();
        metrics::gauge!("allot_exposure_cache_entries").set(self.cached() as f64);
        // Once this flush is written the replica holds nothing but what
        // arrives meanwhile, which the next checkpoint declares.
        let held = Held::new();
        if records.is_empty() && counts.is_empty() && !self.checkpoint_due(&held) {
            metrics::gauge!("allot_exposure_buffer_records").set(0.0);
            return Ok(0);
        }
        match store
            .record_exposures(&records, &counts, &self.holdings(&held))
            .await
        {
            Ok(claimed) => {
                self.in_flight.store(0, Ordering::Relaxed);
                self.checkpointed(held, claimed);
                metrics::counter!("allot_exposures_flushed_total").increment(records.len() as u64);
                metrics::gauge!("allot_exposure_buffer_records")
                    .set(lock(&self.buffer).records.len() as f64);
                Ok(records.len())
            }
            Err(e) => {
                self.restore(records, counts);
                Err(e)
            }
        }
    }

    /// Declares to the store what the buffer holds, with the counts of
    /// answers without a treatment, if either changed (or the lease needs
    /// renewing); the records stay buffered for the next flush.
    pub async fn checkpoint(&self, store: &dyn Store) -> Result<(), StoreError> {
        let _one = self.flushing.lock().await;
        self.harvest();
        let held = lock(&self.buffer).held.clone();
        let counts = self.take_counts();
        if counts.is_empty() && !self.checkpoint_due(&held) {
            return Ok(());
        }
        match store
            .record_exposures(&[], &counts, &self.holdings(&held))
            .await
        {
            Ok(claimed) => {
                self.checkpointed(held, claimed);
                Ok(())
            }
            Err(e) => {
                self.restore(Vec::new(), counts);
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
            let room = self.options.buffer.saturating_sub(buffer.records.len());
            let mut records = records.into_iter();
            for r in records.by_ref().take(room) {
                buffer.push(r);
            }
            for r in records {
                *lost.entry((r.experiment, r.phase)).or_default() += 1;
            }
            metrics::gauge!("allot_exposure_buffer_records").set(buffer.records.len() as f64);
        }
        for ((experiment, phase), n) in lost {
            self.count_dropped(&experiment, phase, n);
        }
    }

    /// Records not written yet: in the buffer, or in a flush under way
    /// (which puts them back if it fails).
    pub fn buffered(&self) -> usize {
        lock(&self.buffer).records.len() + self.in_flight.load(Ordering::Relaxed)
    }
}
