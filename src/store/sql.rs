//! What the two SQL dialects share besides their queries: the clauses in
//! which they differ, and the limits of the change log. The queries
//! themselves are in `queries.rs`, compiled once per dialect.

/// The few statements and clauses in which the two dialects differ.
pub(crate) struct Dialect {
    /// Makes a transaction read one consistent snapshot, if it does not already.
    pub snapshot: Option<&'static str>,
    /// Sends `$2` (the new revision) on channel `$1` ([`CHANNEL`]) to the
    /// other replicas when the writing transaction commits; none where there
    /// is no push.
    pub notify: Option<&'static str>,
    /// Appended to a `SELECT` of an experiment row that a participant write
    /// depends on: it waits for a deletion in flight and keeps one from
    /// starting until the write commits, without blocking other writers.
    pub lock_shared: &'static str,
    /// Appended to the `SELECT` of an experiment row about to be deleted.
    pub lock_exclusive: &'static str,
    /// A `FROM` item `b` reading a batch of ledger rows (`experiment`,
    /// `phase`, `org_id`, `unit_id`, `treatment`, `bucket`, `reason`,
    /// `first_seen`) from the parameters its dialect's `bind_ledger_rows`
    /// binds: a fixed number of them, whatever the batch's size.
    pub ledger_rows: &'static str,
    /// The `FROM` items `s` (a `participant_slots` row) and `p` (its
    /// participant), walked in slot order with one primary-key lookup of the
    /// participant per slot row: the candidate reads stop after a few rows
    /// only if the planner cannot pick another way, whatever its statistics
    /// say (on a freshly loaded table they say "one row", and a scan of
    /// every waiting participant per slot row then looks cheap).
    pub slot_candidates: &'static str,
}

/// Configuration changes kept in `config_changes`; a replica further behind
/// reloads everything.
pub(crate) const CHANGES_KEPT: i64 = 10_000;

/// A catch-up that would reload more entities than this one by one reloads
/// everything in one go instead.
pub(crate) const MAX_DELTA: i64 = 256;

/// The channel configuration writes are announced on.
pub(crate) const CHANNEL: &str = "allot_config";

/// The channel participant status changes are announced on (migration
/// 0011 on PostgreSQL): payload `<experiment id> <participant id>`.
pub(crate) const PARTICIPANTS_CHANNEL: &str = "allot_participants";
