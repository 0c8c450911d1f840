//! Participant lifecycle (§5): what one routing call changes.
//!
//! `new → waiting → (pending → assigned | declined) | assigned | timed_out`;
//! `assigned → completed`; every status but `completed` → `dropped`.
//!
//! Liveness: with `liveness_timeout_seconds`, matching takes only the
//! waiting participants heard from recently enough ([`super::is_live`]); the
//! others keep their place in the pool (and their wait timeout runs). Being
//! heard from (`last_seen`) is written outside the routing lock, so the plan
//! only reads it.
//!
//! [`plan`] is pure: given the experiment's routing state as read under its
//! lock (cohorts with their member counts, the waiting pool, the participants
//! the calls are about) and the calls, in arrival order, it returns every
//! participant change, every new cohort, every audit event and each call's
//! answer. The store writes them in the same transaction it read the state
//! in. Overdue waiting participants are timed out first; then each call's
//! operation applies, followed by matching until no group is ready. Several
//! calls in one transaction behave exactly as the same calls one after
//! another.
//!
//! Backfill: a cohort formed by a group with `backfill_seconds` keeps a
//! window ([`BackfillWindow`]) for that long; after each call's operation
//! (and so before matching forms new groups) every seat open in a window is
//! offered to the live waiting participants of its composition entry,
//! oldest first ([`fill_open_seats`]). A seat opens when its member leaves
//! the cohort (decline, acceptance timeout, drop, move).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::matching::form_all;
use super::pool::Slot;
use super::{deadline, is_live, CohortDef, CompiledRouting};

/// Where a participant is in the study's lifecycle (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantStatus {
    New,
    Waiting,
    Pending,
    Assigned,
    Declined,
    TimedOut,
    Completed,
    Dropped,
}

impl ParticipantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantStatus::New => "new",
            ParticipantStatus::Waiting => "waiting",
            ParticipantStatus::Pending => "pending",
            ParticipantStatus::Assigned => "assigned",
            ParticipantStatus::Declined => "declined",
            ParticipantStatus::TimedOut => "timed_out",
            ParticipantStatus::Completed => "completed",
            ParticipantStatus::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "new" => ParticipantStatus::New,
            "waiting" => ParticipantStatus::Waiting,
            "pending" => ParticipantStatus::Pending,
            "assigned" => ParticipantStatus::Assigned,
            "declined" => ParticipantStatus::Declined,
            "timed_out" => ParticipantStatus::TimedOut,
            "completed" => ParticipantStatus::Completed,
            "dropped" => ParticipantStatus::Dropped,
            _ => return None,
        })
    }
}

/// Why a status changed, as the audit log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoutingReason {
    Routed,
    Formed,
    Accepted,
    Declined,
    Timeout,
    Fallback,
    AcceptTimeout,
    Completed,
    Dropped,
    Backfilled,
    Moved,
}

impl RoutingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingReason::Routed => "routed",
            RoutingReason::Formed => "formed",
            RoutingReason::Accepted => "accepted",
            RoutingReason::Declined => "declined",
            RoutingReason::Timeout => "timeout",
            RoutingReason::Fallback => "fallback",
            RoutingReason::AcceptTimeout => "accept_timeout",
            RoutingReason::Completed => "completed",
            RoutingReason::Dropped => "dropped",
            RoutingReason::Backfilled => "backfilled",
            RoutingReason::Moved => "moved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "routed" => RoutingReason::Routed,
            "formed" => RoutingReason::Formed,
            "accepted" => RoutingReason::Accepted,
            "declined" => RoutingReason::Declined,
            "timeout" => RoutingReason::Timeout,
            "fallback" => RoutingReason::Fallback,
            "accept_timeout" => RoutingReason::AcceptTimeout,
            "completed" => RoutingReason::Completed,
            "dropped" => RoutingReason::Dropped,
            "backfilled" => RoutingReason::Backfilled,
            "moved" => RoutingReason::Moved,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    pub id: String,
    pub status: ParticipantStatus,
    pub attributes: Value,
    pub cohort_id: Option<String>,
    /// The group and entry it was formed by (kept after accept/decline).
    pub group: Option<String>,
    pub entry: Option<String>,
    pub waiting_since: Option<OffsetDateTime>,
    /// Arrival order in the waiting pool: oldest first is lowest first.
    pub wait_seq: i64,
    pub updated_at: OffsetDateTime,
    /// When a participant call last came in (registration, route, read,
    /// heartbeat…); written outside routing transactions, never by a plan.
    pub last_seen: OffsetDateTime,
    /// While `pending` in a group with `accept_timeout_seconds`: when the
    /// seat is given up unless accepted.
    pub accept_by: Option<OffsetDateTime>,
}

impl Participant {
    /// Heard from at or after `cutoff` ([`super::RoutingConfig::live_cutoff`]).
    pub fn is_live(&self, cutoff: Option<OffsetDateTime>) -> bool {
        is_live(self.last_seen, cutoff)
    }

    /// Pending past its acceptance deadline at `now`.
    pub fn acceptance_expired(&self, now: OffsetDateTime) -> bool {
        self.status == ParticipantStatus::Pending && self.accept_by.is_some_and(|t| t <= now)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cohort {
    pub id: String,
    /// The defined alias (overflows inherit it); `None` for a cohort a
    /// group without a target created.
    pub alias: Option<String>,
    pub name: String,
    pub description: String,
    pub capacity: Option<u32>,
    pub overflow_of: Option<String>,
    /// The group that created it, for cohorts without an alias.
    pub group: Option<String>,
    pub assigned: u32,
    pub pending: u32,
    /// Completed members keep their seat: they count for capacity and
    /// balance like assigned and pending ones.
    pub completed: u32,
}

impl Cohort {
    /// The seats taken: assigned, pending and completed members. The
    /// counts come from the store and a capacity may be u32::MAX, so the
    /// sum saturates instead of overflowing.
    pub fn members(&self) -> u32 {
        u32::try_from(self.seats()).unwrap_or(u32::MAX)
    }

    fn seats(&self) -> u64 {
        u64::from(self.assigned) + u64::from(self.pending) + u64::from(self.completed)
    }

    /// Whether `n` more members fit under the capacity.
    pub fn has_room_for(&self, n: u32) -> bool {
        // In u64: members + n can pass u32::MAX.
        self.capacity
            .is_none_or(|c| self.seats() + u64::from(n) <= u64::from(c))
    }
}

/// One composition entry's seats in a cohort with a backfill window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySeats {
    /// The composition entry's id.
    pub entry: String,
    /// The seats the cohort formed with in this entry.
    pub formed: u32,
    /// The members of this entry it holds now: assigned, pending and
    /// completed ones whose entry this is.
    pub held: u32,
}

impl EntrySeats {
    /// Seats freed and not refilled.
    pub fn open(&self) -> u32 {
        self.formed.saturating_sub(self.held)
    }
}

/// A cohort formed by a group with `backfill_seconds`, while seats freed in
/// it are refilled (§5 "Backfill").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillWindow {
    pub cohort_id: String,
    /// The group that formed it.
    pub group: String,
    /// The end of the window (exclusive): formation time plus the group's
    /// `backfill_seconds`, fixed at formation.
    pub until: OffsetDateTime,
    /// Per composition entry, in the group's order.
    pub seats: Vec<EntrySeats>,
}

/// An entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = RoutingEvent)]
pub struct Event {
    pub participant_id: String,
    pub status: ParticipantStatus,
    #[schema(required = true)]
    pub previous: Option<ParticipantStatus>,
    #[schema(required = true)]
    pub group: Option<String>,
    #[schema(required = true)]
    pub entry: Option<String>,
    #[schema(required = true)]
    pub cohort_id: Option<String>,
    pub reason: RoutingReason,
    /// A drop's reason, as the caller gave it; null otherwise.
    #[schema(required = true)]
    pub detail: Option<String>,
}

/// An experiment's routing state, read under its lock.
#[derive(Debug, Clone)]
pub struct State {
    pub now: OffsetDateTime,
    /// Unique per routing transaction; orders arrivals in the pool.
    pub seq: i64,
    /// Every cohort with an alias (defined and overflow), in creation order,
    /// plus the subject's cohort; each with its member counts.
    pub cohorts: Vec<Cohort>,
    /// How many cohorts each group without a target has created so far.
    pub group_cohorts: HashMap<String, u32>,
    /// Waiting participants, oldest first: at least those that can matter
    /// ([`super::pool`]: for the arrivals and the open backfill windows);
    /// the whole pool after a config change (`reslot_all`).
    pub waiting: Vec<Participant>,
    /// The participants the calls are about, those that exist.
    pub subjects: Vec<Participant>,
    /// Pending participants whose acceptance deadline has passed, earliest
    /// deadline first: all of them, whatever the operation.
    pub expired: Vec<Participant>,
    /// Every cohort whose backfill window is still open (`until` after
    /// `now`), in creation order, with its seats per entry: all of them,
    /// whatever the operation (any call may free a seat, an acceptance
    /// timeout included). `waiting` holds the oldest candidates of each of
    /// its entries, enough for every seat it could refill.
    pub backfill_windows: Vec<BackfillWindow>,
    /// Waiting participants (in `waiting`) whose attributes changed since
    /// their slots were computed ([`super::pool`]): matched again and
    /// slotted anew.
    pub stale: Vec<String>,
    /// The stored slots were computed for another config version: `waiting`
    /// is the whole pool, every member is slotted anew and matched.
    pub reslot_all: bool,
}

/// Most calls planned in one transaction; `wait_seq` leaves room for them.
pub const MAX_CALLS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Route,
    Accept,
    Decline,
    /// `assigned → completed`; the seat stays taken.
    Complete,
    /// Any status but `completed` → `dropped`, with the caller's reason;
    /// the seat is freed.
    Drop(Option<String>),
    /// An experimenter places the participant in this cohort (by id) as
    /// `assigned`, within its capacity.
    Move(String),
    /// Timeouts and a full matching pass: the background sweeper, and after
    /// a waiting participant's attributes or the routing config changed.
    Sweep,
}

impl Operation {
    /// Whether the operation can form groups (a matching pass follows it).
    ///
    /// After every routing call no group is ready. A route adds one member,
    /// so a group it makes ready must include it; accepting, declining and
    /// timing out only remove members, which never makes a group ready.
    pub fn forms_groups(&self) -> bool {
        matches!(self, Operation::Route | Operation::Sweep)
    }
}

/// Why an operation is refused; nothing is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// A move names no cohort of the experiment.
    NoCohort(String),
    Conflict(String),
}

/// What the store writes.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub new_cohorts: Vec<Cohort>,
    /// Final state of every participant that changed (insert or update).
    pub participants: Vec<Participant>,
    pub events: Vec<Event>,
    /// Per call, in order: the participant right after its operation (and
    /// the matching it triggered), or why it was refused.
    pub answers: Vec<Result<Participant, Refusal>>,
    /// How each cohort's member counts move, in the order first moved.
    pub deltas: Vec<MemberDelta>,
    /// The backfill windows of cohorts this plan created (in
    /// `new_cohorts`), with the seats each formed with.
    pub new_windows: Vec<BackfillWindow>,
    /// Waiting participants whose stored slots are replaced by these (a
    /// participant that left the pool, any in `participants` not waiting,
    /// loses its slots).
    pub slotted: Vec<Slotted>,
    /// Every stored slot of the experiment is replaced by `slotted`.
    pub reslot_all: bool,
}

/// A waiting participant's slots ([`super::pool`]), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slotted {
    pub participant_id: String,
    pub wait_seq: i64,
    pub slots: Vec<Slot>,
}

/// How a cohort's member counts move: (cohort id, assigned, pending,
/// completed).
pub type MemberDelta = (String, i64, i64, i64);

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.new_cohorts.is_empty()
            && self.participants.is_empty()
            && self.events.is_empty()
            && self.slotted.is_empty()
            && !self.reslot_all
    }

    /// The net change of each cohort's members (assigned, pending,
    /// completed) these changes make; cohorts whose counts do not move are
    /// left out. Kept as the plan moves members, not derived from the
    /// events: a move leaves one cohort for another, and a seat given up
    /// may be in a cohort the plan did not read.
    pub fn member_deltas(&self) -> Vec<MemberDelta> {
        self.deltas
            .iter()
            .filter(|d| d.1 != 0 || d.2 != 0 || d.3 != 0)
            .cloned()
            .collect()
    }
}

/// The experiment's study design, as the plan needs it.
#[derive(Debug)]
pub struct Study<'a> {
    pub routing: Option<&'a CompiledRouting>,
    pub cohorts: &'a [CohortDef],
}

struct Work<'a> {
    study: &'a Study<'a>,
    now: OffsetDateTime,
    cohorts: Vec<Cohort>,
    group_cohorts: HashMap<String, u32>,
    new_cohorts: Vec<Cohort>,
    changed: Vec<Participant>,
    events: Vec<Event>,
    deltas: Vec<MemberDelta>,
    /// Open backfill windows, as the plan changes their seats.
    windows: Vec<BackfillWindow>,
    new_windows: Vec<BackfillWindow>,
    new_id: &'a mut dyn FnMut() -> String,
}

impl Work<'_> {
    /// Records a status change and its event.
    fn change(
        &mut self,
        p: Participant,
        status: ParticipantStatus,
        reason: RoutingReason,
    ) -> Participant {
        self.change_with(p, status, reason, None)
    }

    /// [`Self::change`] with the event's `detail`.
    fn change_with(
        &mut self,
        mut p: Participant,
        status: ParticipantStatus,
        reason: RoutingReason,
        detail: Option<String>,
    ) -> Participant {
        let previous = p.status;
        p.status = status;
        p.updated_at = self.now;
        if status != ParticipantStatus::Waiting {
            p.waiting_since = None;
        }
        if status != ParticipantStatus::Pending {
            p.accept_by = None;
        }
        self.events.push(Event {
            participant_id: p.id.clone(),
            status,
            previous: Some(previous),
            group: p.group.clone(),
            entry: p.entry.clone(),
            cohort_id: p.cohort_id.clone(),
            reason,
            detail,
        });
        self.keep(p.clone());
        p
    }

    fn keep(&mut self, p: Participant) {
        match self.changed.iter_mut().find(|c| c.id == p.id) {
            Some(slot) => *slot = p,
            None => self.changed.push(p),
        }
    }

    /// Moves a cohort's count of members in `status` by `delta`: in the
    /// cohorts read (for capacity) and in the deltas the store applies.
    fn count(&mut self, cohort_id: &str, status: ParticipantStatus, delta: i32) {
        if !matches!(
            status,
            ParticipantStatus::Assigned | ParticipantStatus::Pending | ParticipantStatus::Completed
        ) {
            return;
        }
        if let Some(c) = self.cohorts.iter_mut().find(|c| c.id == cohort_id) {
            let n = match status {
                ParticipantStatus::Assigned => &mut c.assigned,
                ParticipantStatus::Pending => &mut c.pending,
                _ => &mut c.completed,
            };
            *n = n.saturating_add_signed(delta);
        }
        let i = match self.deltas.iter().position(|d| d.0 == cohort_id) {
            Some(i) => i,
            None => {
                self.deltas.push((cohort_id.to_owned(), 0, 0, 0));
                self.deltas.len() - 1
            }
        };
        let slot = &mut self.deltas[i];
        let n = match status {
            ParticipantStatus::Assigned => &mut slot.1,
            ParticipantStatus::Pending => &mut slot.2,
            _ => &mut slot.3,
        };
        *n += i64::from(delta);
    }

    /// Gives up the seat `p` holds (assigned or pending) and records the
    /// change to `status`; the participant then belongs to no cohort, and
    /// the event names the seat given up.
    fn leave(
        &mut self,
        p: Participant,
        status: ParticipantStatus,
        reason: RoutingReason,
        detail: Option<String>,
    ) -> Participant {
        self.unseat(&p);
        if let Some(c) = p.cohort_id.clone() {
            self.count(&c, p.status, -1);
        }
        let mut left = self.change_with(p, status, reason, detail);
        left.cohort_id = None;
        self.keep(left.clone());
        left
    }

    /// `p` gives up the seat of its entry in its cohort: if the cohort has
    /// an open backfill window, that seat opens.
    fn unseat(&mut self, p: &Participant) {
        if !matches!(
            p.status,
            ParticipantStatus::Assigned | ParticipantStatus::Pending | ParticipantStatus::Completed
        ) {
            return;
        }
        let (Some(cohort), Some(entry)) = (&p.cohort_id, &p.entry) else {
            return;
        };
        if let Some(seat) = self
            .windows
            .iter_mut()
            .filter(|w| &w.cohort_id == cohort)
            .flat_map(|w| w.seats.iter_mut())
            .find(|s| &s.entry == entry)
        {
            seat.held = seat.held.saturating_sub(1);
        }
    }

    /// The first cohort of `alias` (the defined one, then its overflows in
    /// creation order) with room for `n`, or a new overflow cohort.
    fn join(&mut self, alias: &str, n: u32) -> String {
        if let Some(c) = self
            .cohorts
            .iter()
            .filter(|c| c.alias.as_deref() == Some(alias))
            .find(|c| c.has_room_for(n))
        {
            return c.id.clone();
        }
        let defined = self
            .cohorts
            .iter()
            .find(|c| c.alias.as_deref() == Some(alias) && c.overflow_of.is_none())
            .cloned();
        let def = self
            .study
            .cohorts
            .iter()
            .find(|c| c.alias.as_str() == alias);
        let overflows = self
            .cohorts
            .iter()
            .filter(|c| c.alias.as_deref() == Some(alias) && c.overflow_of.is_some())
            .count();
        let base_name = defined
            .as_ref()
            .map(|d| d.name.clone())
            .or_else(|| def.map(|d| d.name.clone()))
            .unwrap_or_else(|| alias.to_owned());
        let cohort = Cohort {
            id: (self.new_id)(),
            alias: Some(alias.to_owned()),
            name: format!("{base_name} (overflow {})", overflows + 1),
            description: defined
                .as_ref()
                .map(|d| d.description.clone())
                .unwrap_or_default(),
            capacity: def
                .and_then(|d| d.capacity)
                .or(defined.as_ref().and_then(|d| d.capacity)),
            overflow_of: defined.map(|d| d.id),
            group: None,
            assigned: 0,
            pending: 0,
            completed: 0,
        };
        let id = cohort.id.clone();
        self.cohorts.push(cohort.clone());
        self.new_cohorts.push(cohort);
        id
    }

    /// A new cohort for a group without a target: `"<group name> #<n>"`.
    fn create_for_group(&mut self, group: &str) -> String {
        let made = self.group_cohorts.entry(group.to_owned()).or_default();
        // The count comes from the store; it only names the cohort.
        *made = made.saturating_add(1);
        let n = *made;

        let cohort = Cohort {
            id: (self.new_id)(),
            alias: None,
            name: format!("{group} #{n}"),
            description: String::new(),
            capacity: None,
            overflow_of: None,
            group: Some(group.to_owned()),
            assigned: 0,
            pending: 0,
            completed: 0,
        };
        let id = cohort.id.clone();
        self.cohorts.push(cohort.clone());
        self.new_cohorts.push(cohort);
        id
    }
}

/// Plans the routing calls `calls` (participant id, operation), in order
/// (see the module docs).
pub fn plan(
    study: &Study<'_>,
    state: State,
    calls: &[(String, Operation)],
    new_id: &mut dyn FnMut() -> String,
) -> Changes {
    let State {
        now,
        seq,
        cohorts,
        group_cohorts,
        waiting,
        subjects,
        expired,
        backfill_windows,
        stale,
        reslot_all,
    } = state;
    let mut work = Work {
        study,
        now,
        cohorts,
        group_cohorts,
        new_cohorts: Vec::new(),
        changed: Vec::new(),
        events: Vec::new(),
        deltas: Vec::new(),
        windows: backfill_windows,
        new_windows: Vec::new(),
        new_id,
    };
    // Everyone this plan knows, as it changes; the pool holds ids, oldest first.
    let mut known: HashMap<String, Participant> =
        subjects.into_iter().map(|p| (p.id.clone(), p)).collect();
    let mut pool: Vec<String> = Vec::with_capacity(waiting.len() + calls.len());

    // 1. Timeouts, before anything else sees the pool.
    let cutoff = study.routing.and_then(|r| r.config.waiting_cutoff(now));
    let fallback = study
        .routing
        .and_then(|r| r.config.fallback_cohort.as_ref())
        .map(|k| k.as_str().to_owned());
    for p in waiting {
        let overdue = match (cutoff, p.waiting_since) {
            (Some(cutoff), Some(since)) => since <= cutoff,
            _ => false,
        };
        let p = if !overdue {
            pool.push(p.id.clone());
            p
        } else if let Some(alias) = &fallback {
            let mut p = p;
            let cohort = work.join(alias, 1);
            p.cohort_id = Some(cohort.clone());
            p.group = None;
            p.entry = None;
            work.count(&cohort, ParticipantStatus::Assigned, 1);
            work.change(p, ParticipantStatus::Assigned, RoutingReason::Fallback)
        } else {
            work.change(p, ParticipantStatus::TimedOut, RoutingReason::Timeout)
        };
        known.insert(p.id.clone(), p);
    }

    // 1b. Acceptance timeouts: the seat is given up. The store reads every
    // expired participant; subjects are checked too, so that the rule does
    // not depend on what was read.
    let mut late: Vec<Participant> = subjects_expired(&known, now);
    let mut seen: HashSet<String> = HashSet::new();
    late.splice(0..0, expired);
    for p in late {
        if !seen.insert(p.id.clone()) {
            continue;
        }
        let p = known.get(&p.id).cloned().unwrap_or(p);
        if !p.acceptance_expired(now) {
            continue;
        }
        let p = work.leave(
            p,
            ParticipantStatus::Declined,
            RoutingReason::AcceptTimeout,
            None,
        );
        known.insert(p.id.clone(), p);
    }

    // 1c. Participants matched on what the stored slots do not know yet
    // (new attributes, a new config version) are matched now, whatever the
    // calls, so that after this transaction no group is ready.
    // Open backfill seats first, as in every matching pass.
    if reslot_all || !stale.is_empty() {
        fill_open_seats(&mut work, &mut known, &mut pool);
        form_groups(&mut work, &mut known, &mut pool);
    }

    // 2. Each call: its operation, then matching if it can form a group.
    let mut answers = Vec::with_capacity(calls.len());
    for (index, (id, operation)) in calls.iter().enumerate() {
        let result = match (operation, known.get(id).cloned()) {
            // A sweep is about the whole pool, whoever it names.
            (Operation::Sweep, _) => Ok(()),
            (_, None) => Err(Refusal::NotFound),
            (Operation::Route, Some(mut p)) if p.status == ParticipantStatus::New => {
                p.waiting_since = Some(now);
                // `seq` comes from the store: saturate rather than overflow
                // (no store reaches 2^53 routing transactions).
                p.wait_seq = seq
                    .saturating_mul(MAX_CALLS as i64)
                    .saturating_add(index as i64);
                let p = work.change(p, ParticipantStatus::Waiting, RoutingReason::Routed);
                pool.push(p.id.clone());
                known.insert(p.id.clone(), p);
                Ok(())
            }
            (Operation::Accept, Some(p)) if p.status == ParticipantStatus::Pending => {
                if let Some(c) = p.cohort_id.clone() {
                    work.count(&c, ParticipantStatus::Pending, -1);
                    work.count(&c, ParticipantStatus::Assigned, 1);
                }
                let p = work.change(p, ParticipantStatus::Assigned, RoutingReason::Accepted);
                known.insert(p.id.clone(), p);
                Ok(())
            }
            (Operation::Decline, Some(p)) if p.status == ParticipantStatus::Pending => {
                let declined = work.leave(
                    p,
                    ParticipantStatus::Declined,
                    RoutingReason::Declined,
                    None,
                );
                known.insert(declined.id.clone(), declined);
                Ok(())
            }
            (Operation::Complete, Some(p)) if p.status == ParticipantStatus::Assigned => {
                if let Some(c) = p.cohort_id.clone() {
                    work.count(&c, ParticipantStatus::Assigned, -1);
                    work.count(&c, ParticipantStatus::Completed, 1);
                }
                let p = work.change(p, ParticipantStatus::Completed, RoutingReason::Completed);
                known.insert(p.id.clone(), p);
                Ok(())
            }
            (Operation::Complete, Some(p)) if p.status != ParticipantStatus::Completed => {
                Err(Refusal::Conflict(format!(
                    "participant is {}, not assigned: only an assigned participant can complete",
                    p.status.as_str()
                )))
            }
            (Operation::Drop(_), Some(p)) if p.status == ParticipantStatus::Completed => {
                Err(Refusal::Conflict(
                    "participant is completed: a completed participant cannot be dropped".into(),
                ))
            }
            (Operation::Drop(reason), Some(p)) if p.status != ParticipantStatus::Dropped => {
                let dropped = work.leave(
                    p,
                    ParticipantStatus::Dropped,
                    RoutingReason::Dropped,
                    reason.clone(),
                );
                known.insert(dropped.id.clone(), dropped);
                Ok(())
            }
            (Operation::Move(cohort), Some(p)) => match move_to(&mut work, p, cohort) {
                Ok(p) => {
                    known.insert(p.id.clone(), p);
                    Ok(())
                }
                Err(refusal) => Err(refusal),
            },
            (Operation::Accept, Some(p)) if p.status != ParticipantStatus::Assigned => {
                Err(Refusal::Conflict(format!(
                    "participant is {}, not pending: only a pending participant can accept",
                    p.status.as_str()
                )))
            }
            (Operation::Decline, Some(p)) if p.status != ParticipantStatus::Declined => {
                Err(Refusal::Conflict(format!(
                    "participant is {}, not pending: only a pending participant can decline",
                    p.status.as_str()
                )))
            }
            // Routing anyone but a new participant, accepting an assigned
            // one, declining a declined one, completing a completed one and
            // dropping a dropped one change nothing.
            _ => Ok(()),
        };
        // Seats freed by this call (or by the timeouts before it), and
        // arrivals who fit a seat open already: refilled before matching
        // forms new groups.
        fill_open_seats(&mut work, &mut known, &mut pool);
        if result.is_ok() && operation.forms_groups() {
            form_groups(&mut work, &mut known, &mut pool);
        }
        answers.push(result.and_then(|()| known.get(id).cloned().ok_or(Refusal::NotFound)));
    }

    // 3. Slots for the waiting participants this transaction (re)placed in
    // the pool: every one after a config change, else the new arrivals,
    // those heard from again or with new attributes, and the stale ones.
    let mut slotted = Vec::new();
    if let Some(routing) = study.routing {
        let mut fresh: HashSet<&str> = HashSet::new();
        if !reslot_all {
            fresh.extend(work.changed.iter().map(|p| p.id.as_str()));
            fresh.extend(
                calls
                    .iter()
                    .filter(|(_, op)| op.forms_groups())
                    .map(|(id, _)| id.as_str()),
            );
            fresh.extend(stale.iter().map(String::as_str));
        }
        for id in &pool {
            if !reslot_all && !fresh.contains(id.as_str()) {
                continue;
            }
            if let Some(p) = known.get(id) {
                if p.status == ParticipantStatus::Waiting {
                    slotted.push(Slotted {
                        participant_id: p.id.clone(),
                        wait_seq: p.wait_seq,
                        slots: routing.slots_of(&p.attributes),
                    });
                }
            }
        }
    }
    Changes {
        new_cohorts: work.new_cohorts,
        participants: work.changed,
        events: work.events,
        answers,
        deltas: work.deltas,
        new_windows: work.new_windows,
        slotted,
        reslot_all,
    }
}

/// The participants a transaction with these calls adds to what matching
/// sees ([`super::pool`]): a new participant routed, a waiting one a sweep
/// names (heard from again, or with new attributes), and the stale ones.
pub fn arrivals<'a>(
    calls: &[(String, Operation)],
    subjects: &'a [Participant],
    stale: &'a [Participant],
) -> Vec<&'a Value> {
    let arriving = |p: &Participant| {
        calls.iter().any(|(id, op)| {
            *id == p.id
                && match op {
                    Operation::Route => p.status == ParticipantStatus::New,
                    Operation::Sweep => p.status == ParticipantStatus::Waiting,
                    _ => false,
                }
        })
    };
    subjects
        .iter()
        .filter(|p| arriving(p))
        .chain(stale)
        .map(|p| &p.attributes)
        .collect()
}

/// The subjects past their acceptance deadline, by id (a stable order).
fn subjects_expired(known: &HashMap<String, Participant>, now: OffsetDateTime) -> Vec<Participant> {
    let mut late: Vec<Participant> = known
        .values()
        .filter(|p| p.acceptance_expired(now))
        .cloned()
        .collect();
    late.sort_by(|a, b| a.id.cmp(&b.id));
    late
}

/// An experimenter's move (§5): a `new`, `waiting`, `pending` or `assigned`
/// participant becomes `assigned` in the cohort `cohort`, if it has room.
fn move_to(work: &mut Work<'_>, p: Participant, cohort: &str) -> Result<Participant, Refusal> {
    let Some(target) = work.cohorts.iter().find(|c| c.id == cohort) else {
        return Err(Refusal::NoCohort(cohort.to_owned()));
    };
    match p.status {
        ParticipantStatus::New
        | ParticipantStatus::Waiting
        | ParticipantStatus::Pending
        | ParticipantStatus::Assigned => {}
        other => {
            return Err(Refusal::Conflict(format!(
            "participant is {}: only a new, waiting, pending or assigned participant can be moved",
            other.as_str()
        )))
        }
    }
    let here = p.cohort_id.as_deref() == Some(cohort);
    if here && p.status == ParticipantStatus::Assigned {
        // Already there: nothing to change.
        return Ok(p);
    }
    // A participant pending in this very cohort already holds its seat.
    if !here && !target.has_room_for(1) {
        return Err(Refusal::Conflict(format!(
            "cohort {cohort:?} is full (capacity {})",
            target.capacity.unwrap_or(u32::MAX)
        )));
    }
    let mut p = p;
    // It leaves its entry's seat, whatever cohort it goes to.
    work.unseat(&p);
    if let Some(old) = p.cohort_id.clone() {
        work.count(&old, p.status, -1);
    }
    work.count(cohort, ParticipantStatus::Assigned, 1);
    p.cohort_id = Some(cohort.to_owned());
    // Placed by hand, not formed by a group.
    p.group = None;
    p.entry = None;
    Ok(work.change(p, ParticipantStatus::Assigned, RoutingReason::Moved))
}

/// Backfill (§5): offers every seat open in a cohort within its backfill
/// window to the live waiting participants of the seat's composition entry
/// (the first entry of the group whose condition they match, as in
/// matching), oldest first; those taken leave the pool and join the cohort,
/// `pending` or `assigned` as the group says (reason `backfilled`).
/// Windows are taken in creation order, seats in composition order. A
/// window whose group or entry is no longer configured refills nothing.
fn fill_open_seats(
    work: &mut Work<'_>,
    known: &mut HashMap<String, Participant>,
    pool: &mut Vec<String>,
) {
    let Some(routing) = work.study.routing else {
        return;
    };
    let now = work.now;
    if !work
        .windows
        .iter()
        .any(|w| w.until > now && w.seats.iter().any(|s| s.open() > 0))
    {
        return;
    }
    let cutoff = routing.config.live_cutoff(now);
    let mut taken: HashSet<String> = HashSet::new();
    for w in 0..work.windows.len() {
        let window = work.windows[w].clone();
        if window.until <= now {
            continue;
        }
        let Some(g) = routing
            .config
            .groups
            .iter()
            .position(|g| g.name == window.group)
        else {
            continue;
        };
        let group = &routing.config.groups[g];
        for (s, seat) in window.seats.iter().enumerate() {
            let open = seat.open() as usize;
            if open == 0 {
                continue;
            }
            let Some(e) = group
                .composition
                .iter()
                .position(|x| x.id.as_str() == seat.entry)
            else {
                continue;
            };
            let takers: Vec<String> = pool
                .iter()
                .filter(|id| !taken.contains(*id))
                .filter_map(|id| known.get(id))
                .filter(|p| p.status == ParticipantStatus::Waiting && p.is_live(cutoff))
                .filter(|p| routing.entry_for(g, &p.attributes) == Some(e))
                .take(open)
                .map(|p| p.id.clone())
                .collect();
            let status = if group.require_acceptance {
                ParticipantStatus::Pending
            } else {
                ParticipantStatus::Assigned
            };
            for id in takers {
                let Some(mut p) = known.get(&id).cloned() else {
                    continue;
                };
                p.cohort_id = Some(window.cohort_id.clone());
                p.group = Some(group.name.clone());
                p.entry = Some(seat.entry.clone());
                p.accept_by = match status {
                    ParticipantStatus::Pending => deadline(now, group.accept_timeout_seconds),
                    _ => None,
                };
                work.count(&window.cohort_id, status, 1);
                work.windows[w].seats[s].held = work.windows[w].seats[s].held.saturating_add(1);
                let p = work.change(p, status, RoutingReason::Backfilled);
                taken.insert(p.id.clone());
                known.insert(p.id.clone(), p);
            }
        }
    }
    pool.retain(|id| !taken.contains(id));
}

/// Matching until no group is ready; formed members leave the pool.
fn form_groups(
    work: &mut Work<'_>,
    known: &mut HashMap<String, Participant>,
    pool: &mut Vec<String>,
) {
    let Some(routing) = work.study.routing else {
        return;
    };
    let mut alias_members: HashMap<String, u64> = HashMap::new();
    for c in &work.cohorts {
        if let Some(a) = &c.alias {
            let members = alias_members.entry(a.clone()).or_default();
            *members = members.saturating_add(c.seats());
        }
    }
    // Those who left the pool (dropped, moved) go; those not live stay,
    // in their place, but are not matched.
    pool.retain(|id| {
        known
            .get(id)
            .is_some_and(|p| p.status == ParticipantStatus::Waiting)
    });
    let cutoff = routing.config.live_cutoff(work.now);
    let live: Vec<(usize, &Participant)> = pool
        .iter()
        .enumerate()
        .filter_map(|(i, id)| known.get(id).map(|p| (i, p)))
        .filter(|(_, p)| p.is_live(cutoff))
        .collect();
    let attributes: Vec<&Value> = live.iter().map(|(_, p)| &p.attributes).collect();
    let live: Vec<usize> = live.iter().map(|(i, _)| *i).collect();
    let formations = form_all(routing, work.study.cohorts, &attributes, &mut alias_members);
    let mut formed = vec![false; pool.len()];
    for formation in formations {
        let group = &routing.config.groups[formation.group];
        let size = u32::try_from(formation.seats.len()).unwrap_or(u32::MAX);
        let cohort = match &group.target_cohort {
            Some(alias) => work.join(alias.as_str(), size),
            None => work.create_for_group(&group.name),
        };
        if let (None, Some(until)) = (
            &group.target_cohort,
            deadline(work.now, group.backfill_seconds),
        ) {
            let window = BackfillWindow {
                cohort_id: cohort.clone(),
                group: group.name.clone(),
                until,
                seats: group
                    .composition
                    .iter()
                    .enumerate()
                    .map(|(e, def)| {
                        let n = formation.seats.iter().filter(|s| s.entry == e).count();
                        let n = u32::try_from(n).unwrap_or(u32::MAX);
                        EntrySeats {
                            entry: def.id.as_str().to_owned(),
                            formed: n,
                            held: n,
                        }
                    })
                    .collect(),
            };
            work.windows.push(window.clone());
            work.new_windows.push(window);
        }
        let status = if group.require_acceptance {
            ParticipantStatus::Pending
        } else {
            ParticipantStatus::Assigned
        };
        let accept_by = match status {
            ParticipantStatus::Pending => deadline(work.now, group.accept_timeout_seconds),
            _ => None,
        };
        for seat in &formation.seats {
            let Some(&member) = live.get(seat.member) else {
                continue;
            };
            formed[member] = true;
            let Some(mut p) = known.get(&pool[member]).cloned() else {
                continue;
            };
            p.cohort_id = Some(cohort.clone());
            p.group = Some(group.name.clone());
            p.entry = Some(group.composition[seat.entry].id.as_str().to_owned());
            p.accept_by = accept_by;
            work.count(&cohort, status, 1);
            let p = work.change(p, status, RoutingReason::Formed);
            known.insert(p.id.clone(), p);
        }
    }
    let mut i = 0;
    pool.retain(|_| {
        i += 1;
        !formed[i - 1]
    });
}

#[cfg(test)]
mod tests {

    use super::super::{parse_cohorts, parse_routing};
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    struct Lab {
        routing: CompiledRouting,
        defs: Vec<CohortDef>,
        cohorts: Vec<Cohort>,
        people: Vec<Participant>,
        now: OffsetDateTime,
        seq: i64,
        events: Vec<Event>,
        ids: u32,
        /// Backfill windows as the store keeps them: `held` is recounted
        /// from the people at every call.
        windows: Vec<BackfillWindow>,
    }

    impl Lab {
        fn new(doc: Value) -> Self {
            let mut problems = Vec::new();
            let defs = parse_cohorts(doc.get("cohorts"), &mut problems);
            let routing = CompiledRouting::new(
                parse_routing(doc.get("routing"), &defs, &mut problems).unwrap(),
            );
            assert!(problems.is_empty(), "{problems:?}");
            let cohorts = defs
                .iter()
                .map(|d| Cohort {
                    id: format!("def-{}", d.alias),
                    alias: Some(d.alias.as_str().to_owned()),
                    name: d.name.clone(),
                    description: String::new(),
                    capacity: d.capacity,
                    overflow_of: None,
                    group: None,
                    assigned: 0,
                    pending: 0,
                    completed: 0,
                })
                .collect();
            Self {
                routing,
                defs,
                cohorts,
                people: Vec::new(),
                now: T0,
                seq: 0,
                events: Vec::new(),
                ids: 0,
                windows: Vec::new(),
            }
        }

        /// Every window with `held` recounted from the people, as the store reads it.
        fn recounted_windows(&self) -> Vec<BackfillWindow> {
            self.windows
                .iter()
                .map(|w| {
                    let mut w = w.clone();
                    for seat in &mut w.seats {
                        seat.held = self
                            .people
                            .iter()
                            .filter(|p| {
                                p.cohort_id.as_deref() == Some(&w.cohort_id)
                                    && p.entry.as_deref() == Some(&seat.entry)
                                    && matches!(
                                        p.status,
                                        ParticipantStatus::Assigned
                                            | ParticipantStatus::Pending
                                            | ParticipantStatus::Completed
                                    )
                            })
                            .count() as u32;
                    }
                    w
                })
                .collect()
        }

        /// The windows still open now, as the store reads them.
        fn open_windows(&self) -> Vec<BackfillWindow> {
            self.recounted_windows()
                .into_iter()
                .filter(|w| w.until > self.now)
                .collect()
        }

        fn call(&mut self, id: &str, op: Operation) -> Result<Participant, Refusal> {
            self.call_many(&[(id, op)]).remove(0)
        }

        /// Several calls planned in one transaction.
        fn call_many(&mut self, calls: &[(&str, Operation)]) -> Vec<Result<Participant, Refusal>> {
            self.seq += 1;
            let mut waiting: Vec<Participant> = self
                .people
                .iter()
                .filter(|p| p.status == ParticipantStatus::Waiting)
                .cloned()
                .collect();
            waiting.sort_by_key(|p| p.wait_seq);
            let mut group_cohorts = HashMap::new();
            for c in self.cohorts.iter().filter(|c| c.alias.is_none()) {
                *group_cohorts
                    .entry(c.group.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            let state = State {
                now: self.now,
                seq: self.seq,
                cohorts: self.cohorts.clone(),
                group_cohorts,
                waiting,
                subjects: self
                    .people
                    .iter()
                    .filter(|p| calls.iter().any(|(id, _)| *id == p.id))
                    .cloned()
                    .collect(),
                expired: {
                    let mut late: Vec<Participant> = self
                        .people
                        .iter()
                        .filter(|p| p.acceptance_expired(self.now))
                        .cloned()
                        .collect();
                    late.sort_by_key(|p| p.accept_by);
                    late
                },
                backfill_windows: self.open_windows(),
                stale: Vec::new(),
                reslot_all: false,
            };
            let study = Study {
                routing: Some(&self.routing),
                cohorts: &self.defs,
            };
            let mut ids = self.ids;
            let calls: Vec<(String, Operation)> = calls
                .iter()
                .map(|(id, op)| (id.to_string(), op.clone()))
                .collect();
            let changes = plan(&study, state, &calls, &mut || {
                ids += 1;
                format!("gen-{ids}")
            });
            self.ids = ids;
            self.cohorts.extend(changes.new_cohorts);
            self.windows.extend(changes.new_windows);
            for p in changes.participants {
                match self.people.iter_mut().find(|x| x.id == p.id) {
                    Some(slot) => *slot = p,
                    None => self.people.push(p),
                }
            }
            self.events.extend(changes.events);
            // The store applies the deltas to its counters; they must agree
            // with a recount from the people.
            let mut counted = self.cohorts.clone();
            for (id, a, p, d) in changes.deltas {
                if let Some(c) = counted.iter_mut().find(|c| c.id == id) {
                    c.assigned = u32::try_from(i64::from(c.assigned) + a).unwrap();
                    c.pending = u32::try_from(i64::from(c.pending) + p).unwrap();
                    c.completed = u32::try_from(i64::from(c.completed) + d).unwrap();
                }
            }
            // Recount from the people, as the store's counts would be.
            for c in &mut self.cohorts {
                c.assigned = self
                    .people
                    .iter()
                    .filter(|p| {
                        p.cohort_id.as_deref() == Some(&c.id)
                            && p.status == ParticipantStatus::Assigned
                    })
                    .count() as u32;
                c.pending = self
                    .people
                    .iter()
                    .filter(|p| {
                        p.cohort_id.as_deref() == Some(&c.id)
                            && p.status == ParticipantStatus::Pending
                    })
                    .count() as u32;
                c.completed = self
                    .people
                    .iter()
                    .filter(|p| {
                        p.cohort_id.as_deref() == Some(&c.id)
                            && p.status == ParticipantStatus::Completed
                    })
                    .count() as u32;
            }
            let view = |cs: &[Cohort]| -> Vec<(String, u32, u32, u32)> {
                cs.iter()
                    .map(|c| (c.id.clone(), c.assigned, c.pending, c.completed))
                    .collect()
            };
            assert_eq!(
                view(&counted),
                view(&self.cohorts),
                "deltas disagree with a recount"
            );
            // No entry of a backfilled cohort ever holds more than it formed with.
            for w in self.recounted_windows() {
                for seat in &w.seats {
                    assert!(seat.held <= seat.formed, "{w:?}");
                }
            }
            changes.answers
        }

        /// Registration happens outside routing transactions; here it is a
        /// row appearing with status `new`.
        fn register(&mut self, id: &str, attributes: Value) {
            match self.people.iter_mut().find(|p| p.id == id) {
                Some(p) => p.attributes = attributes,
                None => self.people.push(Participant {
                    id: id.to_owned(),
                    status: ParticipantStatus::New,
                    attributes,
                    cohort_id: None,
                    group: None,
                    entry: None,
                    waiting_since: None,
                    wait_seq: 0,
                    updated_at: self.now,
                    last_seen: self.now,
                    accept_by: None,
                }),
            }
        }

        fn arrive(&mut self, id: &str, score: i64) -> Participant {
            self.register(id, json!({"score": score}));
            self.call(id, Operation::Route).unwrap()
        }
    }

    fn study() -> Value {
        json!({
            "cohorts": [{"alias": "arm-pro-ai", "name": "Pro-AI Study Arm", "capacity": 2}],
            "routing": {"wait_timeout_seconds": 60, "groups": [
                {"name": "High Scorers", "target_cohort": "arm-pro-ai",
                 "composition": [{"id": "high", "condition": {"score": {"$gte": 9}}, "min_count": 1, "max_count": 5}]},
                {"name": "Mixed Group", "require_acceptance": true,
                 "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 2, "max_count": 2},
                                 {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}]}]}})
    }

    #[test]
    fn a_high_scorer_is_assigned_directly_and_the_target_overflows_when_full() {
        let mut lab = Lab::new(study());
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let p = lab.arrive(id, 10);
            assert_eq!(p.status, ParticipantStatus::Assigned);
            let want = if i < 2 { "def-arm-pro-ai" } else { "gen-1" };
            assert_eq!(p.cohort_id.as_deref(), Some(want));
        }
        let overflow = lab.cohorts.iter().find(|c| c.id == "gen-1").unwrap();
        assert_eq!(overflow.name, "Pro-AI Study Arm (overflow 1)");
        assert_eq!(overflow.overflow_of.as_deref(), Some("def-arm-pro-ai"));
        assert_eq!(
            (overflow.capacity, overflow.alias.as_deref()),
            (Some(2), Some("arm-pro-ai"))
        );
    }

    #[test]
    fn a_mixed_group_forms_pending_and_accept_or_decline_settles_each_seat() {
        let mut lab = Lab::new(study());
        assert_eq!(lab.arrive("h1", 8).status, ParticipantStatus::Waiting);
        assert_eq!(lab.arrive("l1", 2).status, ParticipantStatus::Waiting);
        assert_eq!(lab.arrive("h2", 7).status, ParticipantStatus::Waiting);
        let last = lab.arrive("l2", 1);
        assert_eq!(last.status, ParticipantStatus::Pending);
        assert_eq!(
            (last.group.as_deref(), last.entry.as_deref()),
            (Some("Mixed Group"), Some("low"))
        );
        let cohort = lab
            .cohorts
            .iter()
            .find(|c| Some(&c.id) == last.cohort_id.as_ref())
            .unwrap();
        assert_eq!(
            (cohort.name.as_str(), cohort.pending),
            ("Mixed Group #1", 4)
        );

        assert_eq!(
            lab.call("h1", Operation::Accept).unwrap().status,
            ParticipantStatus::Assigned
        );
        assert_eq!(
            lab.call("h1", Operation::Accept).unwrap().status,
            ParticipantStatus::Assigned
        );
        assert!(matches!(
            lab.call("h1", Operation::Decline),
            Err(Refusal::Conflict(_))
        ));
        let declined = lab.call("l1", Operation::Decline).unwrap();
        assert_eq!(
            (declined.status, declined.cohort_id),
            (ParticipantStatus::Declined, None)
        );
        assert_eq!(
            lab.call("l1", Operation::Decline).unwrap().status,
            ParticipantStatus::Declined
        );
        let cohort = lab
            .cohorts
            .iter()
            .find(|c| Some(&c.id) == last.cohort_id.as_ref())
            .unwrap();
        assert_eq!((cohort.assigned, cohort.pending), (1, 2));
        let reasons: Vec<&str> = lab.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec![
                "routed", "routed", "routed", "routed", "formed", "formed", "formed", "formed",
                "accepted", "declined"
            ]
        );
        assert!(matches!(
            lab.call("nobody", Operation::Accept),
            Err(Refusal::NotFound)
        ));
        assert!(matches!(
            lab.call("nobody", Operation::Route),
            Err(Refusal::NotFound)
        ));
    }

    #[test]
    fn an_unmatched_participant_waits_then_times_out_or_falls_back() {
        let mut lab = Lab::new(study());
        lab.arrive("mid", 6);
        lab.now = T0 + time::Duration::seconds(59);
        assert_eq!(
            lab.call("mid", Operation::Sweep).unwrap().status,
            ParticipantStatus::Waiting
        );
        lab.now = T0 + time::Duration::seconds(60);
        let p = lab.call("mid", Operation::Sweep).unwrap();
        assert_eq!(p.status, ParticipantStatus::TimedOut);
        assert_eq!(lab.events.last().unwrap().reason, RoutingReason::Timeout);

        let mut doc = study();
        doc["routing"]["fallback_cohort"] = json!("arm-pro-ai");
        let mut lab = Lab::new(doc);
        lab.arrive("mid", 6);
        lab.now = T0 + time::Duration::seconds(61);
        // Any routing call (here another participant's) applies timeouts.
        lab.register("other", json!({}));
        lab.call("other", Operation::Route).unwrap();
        let mid = lab.people.iter().find(|p| p.id == "mid").unwrap();
        assert_eq!(
            (mid.status, mid.cohort_id.as_deref()),
            (ParticipantStatus::Assigned, Some("def-arm-pro-ai"))
        );
        let last = lab
            .events
            .iter()
            .rev()
            .find(|e| e.participant_id == "mid")
            .unwrap();
        assert_eq!(last.reason, RoutingReason::Fallback);
    }

    fn person<'a>(lab: &'a Lab, id: &str) -> &'a Participant {
        lab.people.iter().find(|p| p.id == id).unwrap()
    }

    fn seen(lab: &mut Lab, id: &str, at: OffsetDateTime) {
        lab.people
            .iter_mut()
            .find(|p| p.id == id)
            .unwrap()
            .last_seen = at;
    }

    fn pairs(extra: Value) -> Value {
        let mut doc = json!({
            "cohorts": [{"alias": "room", "capacity": 2}],
            "routing": {"wait_timeout_seconds": 600, "groups": [
                {"name": "Pair", "target_cohort": "room",
                 "composition": [{"id": "any", "min_count": 2, "max_count": 2}]}]}});
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                doc["routing"][k] = v;
            }
        }
        doc
    }

    #[test]
    fn a_silent_participant_keeps_its_place_and_is_matched_once_heard_from() {
        let mut lab = Lab::new(pairs(json!({"liveness_timeout_seconds": 30})));
        lab.arrive("quiet", 1);
        lab.now = T0 + time::Duration::seconds(31);
        // Not heard from for 31 s: not live, so a newcomer waits.
        let newcomer = lab.arrive("new", 1);
        assert_eq!(newcomer.status, ParticipantStatus::Waiting);
        let quiet = person(&lab, "quiet");
        assert_eq!(
            (quiet.status, quiet.waiting_since),
            (ParticipantStatus::Waiting, Some(T0))
        );
        // Heard from again (the store's `touch`), then a matching pass.
        let now = lab.now;
        seen(&mut lab, "quiet", now);
        let quiet = lab.call("quiet", Operation::Sweep).unwrap();
        assert_eq!(quiet.status, ParticipantStatus::Assigned);
        assert_eq!(person(&lab, "new").status, ParticipantStatus::Assigned);

        // Without a liveness timeout everyone is live, however long silent.
        let mut lab = Lab::new(pairs(json!({})));
        lab.arrive("quiet", 1);
        lab.now = T0 + time::Duration::seconds(500);
        assert_eq!(lab.arrive("new", 1).status, ParticipantStatus::Assigned);
    }

    #[test]
    fn the_wait_timeout_runs_for_a_participant_that_is_not_live() {
        let mut lab = Lab::new(pairs(json!({"liveness_timeout_seconds": 30})));
        lab.arrive("quiet", 1);
        lab.now = T0 + time::Duration::seconds(600);
        assert_eq!(
            lab.call("quiet", Operation::Sweep).unwrap().status,
            ParticipantStatus::TimedOut
        );
    }

    #[test]
    fn an_unaccepted_seat_is_given_up_at_the_deadline() {
        let mut doc = pairs(json!({}));
        doc["routing"]["groups"][0]["require_acceptance"] = json!(true);
        doc["routing"]["groups"][0]["accept_timeout_seconds"] = json!(10);
        let mut lab = Lab::new(doc);
        lab.arrive("a", 1);
        let b = lab.arrive("b", 1);
        assert_eq!(b.status, ParticipantStatus::Pending);
        assert_eq!(b.accept_by, Some(T0 + time::Duration::seconds(10)));
        lab.call("a", Operation::Accept).unwrap();
        assert_eq!(person(&lab, "a").accept_by, None);
        lab.now = T0 + time::Duration::seconds(9);
        lab.call("", Operation::Sweep).ok();
        assert_eq!(person(&lab, "b").status, ParticipantStatus::Pending);
        lab.now = T0 + time::Duration::seconds(10);
        lab.call("", Operation::Sweep).ok();
        let b = person(&lab, "b");
        assert_eq!(
            (b.status, b.cohort_id.as_deref(), b.accept_by),
            (ParticipantStatus::Declined, None, None)
        );
        let event = lab.events.last().unwrap();
        assert_eq!(
            (event.reason, event.cohort_id.as_deref()),
            (RoutingReason::AcceptTimeout, Some("def-room"))
        );
        assert_eq!((lab.cohorts[0].assigned, lab.cohorts[0].pending), (1, 0));
        // Accepting after the deadline, before any sweep, is too late too.
        let mut doc = pairs(json!({}));
        doc["routing"]["groups"][0]["require_acceptance"] = json!(true);
        doc["routing"]["groups"][0]["accept_timeout_seconds"] = json!(10);
        let mut lab = Lab::new(doc);
        lab.arrive("a", 1);
        lab.arrive("b", 1);
        lab.now = T0 + time::Duration::seconds(11);
        assert!(matches!(
            lab.call("a", Operation::Accept),
            Err(Refusal::Conflict(_))
        ));
        assert_eq!(person(&lab, "a").status, ParticipantStatus::Declined);
    }

    #[test]
    fn a_completed_seat_stays_taken_and_a_dropped_one_is_freed() {
        let mut lab = Lab::new(pairs(json!({})));
        lab.arrive("a", 1);
        lab.arrive("b", 1);
        assert!(matches!(
            lab.call("nobody", Operation::Complete),
            Err(Refusal::NotFound)
        ));
        let a = lab.call("a", Operation::Complete).unwrap();
        assert_eq!(
            (a.status, a.cohort_id.as_deref()),
            (ParticipantStatus::Completed, Some("def-room"))
        );
        assert_eq!(
            lab.call("a", Operation::Complete).unwrap().status,
            ParticipantStatus::Completed
        );
        assert!(matches!(
            lab.call("a", Operation::Drop(None)),
            Err(Refusal::Conflict(_))
        ));
        let room = &lab.cohorts[0];
        assert_eq!((room.assigned, room.completed, room.members()), (1, 1, 2));
        // The room is full: the next pair overflows.
        lab.arrive("c", 1);
        assert_eq!(
            lab.arrive("d", 1).cohort_id.as_deref(),
            Some("gen-1"),
            "a completed seat is still taken"
        );
        let b = lab.call("b", Operation::Drop(Some("left".into()))).unwrap();
        assert_eq!((b.status, b.cohort_id), (ParticipantStatus::Dropped, None));
        let event = lab.events.last().unwrap();
        assert_eq!(
            (
                event.reason,
                event.detail.as_deref(),
                event.cohort_id.as_deref()
            ),
            (RoutingReason::Dropped, Some("left"), Some("def-room"))
        );
        assert_eq!(
            lab.call("b", Operation::Drop(Some("again".into())))
                .unwrap()
                .status,
            ParticipantStatus::Dropped
        );
        assert_eq!(lab.events.last().unwrap().detail.as_deref(), Some("left"));
        assert!(matches!(
            lab.call("b", Operation::Complete),
            Err(Refusal::Conflict(_))
        ));
        assert_eq!(lab.cohorts[0].members(), 1);
        // A waiting participant dropped leaves the pool.
        lab.arrive("w", 1);
        lab.call("w", Operation::Drop(None)).unwrap();
        assert_eq!(lab.arrive("x", 1).status, ParticipantStatus::Waiting);
    }

    #[test]
    fn a_move_respects_capacity_and_refuses_finished_participants() {
        let mut lab = Lab::new(pairs(json!({})));
        lab.arrive("a", 1);
        lab.arrive("b", 1);
        lab.register("n", json!({}));
        assert!(matches!(
            lab.call("n", Operation::Move("nowhere".into())),
            Err(Refusal::NoCohort(_))
        ));
        assert!(matches!(
            lab.call("n", Operation::Move("def-room".into())),
            Err(Refusal::Conflict(_))
        ));
        lab.call("b", Operation::Drop(None)).unwrap();
        let n = lab.call("n", Operation::Move("def-room".into())).unwrap();
        assert_eq!(
            (n.status, n.cohort_id.as_deref(), n.group.as_deref()),
            (ParticipantStatus::Assigned, Some("def-room"), None)
        );
        assert_eq!(lab.events.last().unwrap().reason, RoutingReason::Moved);
        // Moving within its own cohort changes nothing.
        let before = lab.events.len();
        lab.call("n", Operation::Move("def-room".into())).unwrap();
        assert_eq!(lab.events.len(), before);
        // Dropped: refused.
        assert!(matches!(
            lab.call("b", Operation::Move("def-room".into())),
            Err(Refusal::Conflict(_))
        ));
        lab.call("a", Operation::Complete).unwrap();
        assert!(matches!(
            lab.call("a", Operation::Move("def-room".into())),
            Err(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn new_attributes_of_a_waiting_participant_are_matched_from_then_on() {
        let mut lab = Lab::new(study());
        lab.arrive("p", 6);
        lab.register("p", json!({"score": 9}));
        let p = lab.call("p", Operation::Sweep).unwrap();
        assert_eq!(
            (p.status, p.group.as_deref()),
            (ParticipantStatus::Assigned, Some("High Scorers"))
        );
        // Routing again is idempotent.
        assert_eq!(
            lab.call("p", Operation::Route).unwrap().status,
            ParticipantStatus::Assigned
        );
        assert_eq!(
            lab.events
                .iter()
                .filter(|e| e.participant_id == "p")
                .count(),
            2
        );
    }

    /// Counts and sequence numbers come from the store; at their limits
    /// they must neither overflow nor panic.
    #[test]
    fn store_counts_at_their_limits_do_not_overflow() {
        let lab = Lab::new(json!({
            "cohorts": [{"alias": "arm", "capacity": u32::MAX}],
            "routing": {"wait_timeout_seconds": 31_536_000, "groups": [
                {"name": "to arm", "target_cohort": "arm", "composition": [{"id": "any", "min_count": 1, "max_count": 1}]},
                {"name": "free", "composition": [{"id": "any", "min_count": 1, "max_count": 1}]}]}}));
        let mut full = lab.cohorts.clone();
        full[0].assigned = u32::MAX;
        full[0].pending = u32::MAX;
        let person = |id: &str| Participant {
            id: id.to_owned(),
            status: ParticipantStatus::New,
            attributes: json!({}),
            cohort_id: None,
            group: None,
            entry: None,
            waiting_since: None,
            wait_seq: 0,
            updated_at: T0,
            last_seen: T0,
            accept_by: None,
        };
        let state = State {
            now: T0,
            seq: i64::MAX,
            cohorts: full,
            group_cohorts: HashMap::from([("free".to_owned(), u32::MAX)]),
            waiting: vec![Participant {
                status: ParticipantStatus::Waiting,
                // Waiting since the earliest time there is: overdue, and
                // the subtraction must not underflow.
                waiting_since: Some(time::PrimitiveDateTime::MIN.assume_utc()),
                ..person("old")
            }],
            subjects: vec![person("p")],
            expired: Vec::new(),
            backfill_windows: Vec::new(),
            stale: Vec::new(),
            reslot_all: false,
        };
        let study = Study {
            routing: Some(&lab.routing),
            cohorts: &lab.defs,
        };
        let mut n = 0;
        let changes = plan(
            &study,
            state,
            &[("p".to_owned(), Operation::Route)],
            &mut || {
                n += 1;
                format!("gen-{n}")
            },
        );
        let p = changes.answers[0].clone().unwrap();
        assert_eq!(p.status, ParticipantStatus::Assigned);
        // The defined cohort is full at u32::MAX members: an overflow is made.
        assert_eq!(p.cohort_id.as_deref(), Some("gen-1"));
        assert_eq!(p.wait_seq, i64::MAX);
        let old = changes.participants.iter().find(|x| x.id == "old").unwrap();
        assert_eq!(old.status, ParticipantStatus::TimedOut);
    }

    /// Mixed Group (two high, two low) without a target, with backfill.
    fn backfilled(extra: Value) -> Value {
        let mut doc = study();
        doc["routing"]["groups"][1]["backfill_seconds"] = json!(300);
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                doc["routing"]["groups"][1][k] = v;
            }
        }
        doc
    }

    /// Forms the Mixed Group from h1, h2 (score 8) and l1, l2 (score 2) at T0.
    fn form_mixed(lab: &mut Lab) -> String {
        for (id, score) in [("h1", 8), ("h2", 8), ("l1", 2), ("l2", 2)] {
            lab.arrive(id, score);
        }
        let cohort = person(lab, "h1").cohort_id.clone().unwrap();
        for id in ["h1", "h2", "l1", "l2"] {
            assert_eq!(person(lab, id).cohort_id.as_deref(), Some(cohort.as_str()));
        }
        cohort
    }

    fn members(lab: &Lab, cohort: &str) -> Vec<(String, ParticipantStatus, String)> {
        let mut m: Vec<_> = lab
            .people
            .iter()
            .filter(|p| p.cohort_id.as_deref() == Some(cohort))
            .map(|p| (p.id.clone(), p.status, p.entry.clone().unwrap_or_default()))
            .collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        m
    }

    #[test]
    fn a_freed_seat_goes_to_the_oldest_live_waiting_participant_of_its_entry() {
        let mut lab = Lab::new(backfilled(json!({"accept_timeout_seconds": 60})));
        let cohort = form_mixed(&mut lab);
        assert_eq!(lab.windows.len(), 1);
        assert_eq!(
            lab.windows[0].until,
            T0 + time::Duration::seconds(300),
            "the window runs from the formation"
        );
        // Two highs wait (a group needs two lows too), and one in no entry.
        lab.now = T0 + time::Duration::seconds(5);
        lab.arrive("h3", 8);
        lab.arrive("mid", 6);
        lab.arrive("h4", 7);
        // A low seat frees: no low waits, so nobody takes it (the highs sit
        // in the other entry, the middle one in none).
        lab.call("l1", Operation::Decline).unwrap();
        assert_eq!(person(&lab, "h3").status, ParticipantStatus::Waiting);
        assert_eq!(person(&lab, "mid").status, ParticipantStatus::Waiting);
        // A high seat frees: the oldest waiting high takes it, pending as the
        // group says, with the group's acceptance deadline.
        lab.now = T0 + time::Duration::seconds(10);
        lab.call("h1", Operation::Drop(None)).unwrap();
        let h3 = person(&lab, "h3");
        assert_eq!(
            (
                h3.status,
                h3.cohort_id.as_deref(),
                h3.group.as_deref(),
                h3.entry.as_deref()
            ),
            (
                ParticipantStatus::Pending,
                Some(cohort.as_str()),
                Some("Mixed Group"),
                Some("high")
            )
        );
        assert_eq!(h3.accept_by, Some(T0 + time::Duration::seconds(70)));
        let event = lab.events.last().unwrap();
        assert_eq!(
            (
                event.participant_id.as_str(),
                event.reason,
                event.previous,
                event.cohort_id.as_deref()
            ),
            (
                "h3",
                RoutingReason::Backfilled,
                Some(ParticipantStatus::Waiting),
                Some(cohort.as_str())
            )
        );
        assert_eq!(person(&lab, "h4").status, ParticipantStatus::Waiting);
        // An arrival that fits the open low seat takes it before any new group forms.
        let l3 = lab.arrive("l3", 1);
        assert_eq!(
            (l3.status, l3.cohort_id.as_deref(), l3.entry.as_deref()),
            (
                ParticipantStatus::Pending,
                Some(cohort.as_str()),
                Some("low")
            )
        );
        assert_eq!(
            members(&lab, &cohort),
            vec![
                ("h2".into(), ParticipantStatus::Pending, "high".into()),
                ("h3".into(), ParticipantStatus::Pending, "high".into()),
                ("l2".into(), ParticipantStatus::Pending, "low".into()),
                ("l3".into(), ParticipantStatus::Pending, "low".into()),
            ]
        );
        let c = lab.cohorts.iter().find(|c| c.id == cohort).unwrap();
        assert_eq!((c.pending, c.assigned), (4, 0));
    }

    #[test]
    fn an_acceptance_timeout_is_backfilled_in_the_same_sweep_and_a_silent_participant_is_skipped() {
        let mut doc = backfilled(json!({"accept_timeout_seconds": 10}));
        doc["routing"]["liveness_timeout_seconds"] = json!(30);
        doc["routing"]["wait_timeout_seconds"] = json!(600);
        let mut lab = Lab::new(doc);
        let cohort = form_mixed(&mut lab);
        for id in ["h1", "h2", "l1"] {
            lab.call(id, Operation::Accept).unwrap();
        }
        lab.arrive("quiet", 1);
        lab.now = T0 + time::Duration::seconds(5);
        lab.arrive("loud", 1);
        // At the deadline quiet is not live (heard from 40 s ago), loud is.
        lab.now = T0 + time::Duration::seconds(40);
        seen(&mut lab, "loud", T0 + time::Duration::seconds(40));
        lab.call("", Operation::Sweep).ok();
        assert_eq!(person(&lab, "l2").status, ParticipantStatus::Declined);
        let loud = person(&lab, "loud");
        assert_eq!(
            (loud.status, loud.cohort_id.as_deref()),
            (ParticipantStatus::Pending, Some(cohort.as_str()))
        );
        assert_eq!(loud.accept_by, Some(T0 + time::Duration::seconds(50)));
        assert_eq!(person(&lab, "quiet").status, ParticipantStatus::Waiting);
    }

    #[test]
    fn without_acceptance_the_backfilled_one_is_assigned() {
        let mut doc = backfilled(json!({}));
        doc["routing"]["groups"][1]["require_acceptance"] = json!(false);
        let mut lab = Lab::new(doc);
        let cohort = form_mixed(&mut lab);
        lab.arrive("l3", 3);
        assert_eq!(person(&lab, "l3").status, ParticipantStatus::Waiting);
        lab.call("l2", Operation::Drop(Some("left".into())))
            .unwrap();
        let l3 = person(&lab, "l3");
        assert_eq!(
            (l3.status, l3.cohort_id.as_deref()),
            (ParticipantStatus::Assigned, Some(cohort.as_str()))
        );
        let c = lab.cohorts.iter().find(|c| c.id == cohort).unwrap();
        assert_eq!(c.assigned, 4);
    }

    #[test]
    fn a_seat_freed_after_the_window_is_not_refilled() {
        let mut lab = Lab::new(backfilled(json!({})));
        lab.now = T0;
        let cohort = form_mixed(&mut lab);
        lab.now = T0 + time::Duration::seconds(299);
        lab.arrive("l3", 1);
        lab.arrive("l4", 1);
        lab.call("l1", Operation::Decline).unwrap();
        assert_eq!(
            person(&lab, "l3").cohort_id.as_deref(),
            Some(cohort.as_str())
        );
        // The window ends 300 s after the formation (exclusive).
        lab.now = T0 + time::Duration::seconds(300);
        lab.call("l2", Operation::Decline).unwrap();
        assert_eq!(person(&lab, "l4").status, ParticipantStatus::Waiting);
        assert!(!lab
            .events
            .iter()
            .any(|e| e.participant_id == "l4" && e.reason == RoutingReason::Backfilled));
    }

    #[test]
    fn a_member_moved_out_frees_its_seat_and_one_moved_in_takes_none() {
        let mut lab = Lab::new(backfilled(json!({})));
        let cohort = form_mixed(&mut lab);
        lab.arrive("h3", 8);
        lab.call("h1", Operation::Move("def-arm-pro-ai".into()))
            .unwrap();
        let h3 = person(&lab, "h3");
        assert_eq!(
            (h3.status, h3.cohort_id.as_deref(), h3.entry.as_deref()),
            (
                ParticipantStatus::Pending,
                Some(cohort.as_str()),
                Some("high")
            )
        );
        // Someone moved in by hand holds no entry's seat: the seats stay
        // as formed, and a freed one is still refilled.
        lab.register("by-hand", json!({"score": 1}));
        lab.call("by-hand", Operation::Move(cohort.clone()))
            .unwrap();
        lab.arrive("l3", 1);
        assert_eq!(person(&lab, "l3").status, ParticipantStatus::Waiting);
        lab.call("l1", Operation::Decline).unwrap();
        assert_eq!(
            person(&lab, "l3").cohort_id.as_deref(),
            Some(cohort.as_str())
        );
        assert_eq!(members(&lab, &cohort).len(), 5);
    }

    #[test]
    fn a_group_without_backfill_leaves_freed_seats_empty() {
        let mut lab = Lab::new(study());
        form_mixed(&mut lab);
        assert!(lab.windows.is_empty());
        lab.arrive("l3", 1);
        lab.call("l1", Operation::Decline).unwrap();
        assert_eq!(person(&lab, "l3").status, ParticipantStatus::Waiting);
    }

    use proptest::prelude::*;

    fn op_strategy() -> impl Strategy<Value = (usize, Operation)> {
        (
            0usize..12,
            prop_oneof![
                4 => Just(Operation::Route),
                1 => Just(Operation::Accept),
                1 => Just(Operation::Decline),
                1 => Just(Operation::Sweep),
                1 => Just(Operation::Complete),
                1 => Just(Operation::Drop(Some("left".to_owned()))),
                1 => Just(Operation::Move("def-arm-pro-ai".to_owned())),
            ],
        )
    }

    proptest! {
        /// Calls planned together in one transaction leave exactly the state
        /// and audit log the same calls leave one by one.
        #[test]
        fn batched_calls_equal_the_same_calls_one_by_one(
            scores in prop::collection::vec(0i64..11, 12),
            ops in prop::collection::vec(op_strategy(), 1..40),
            cuts in prop::collection::vec(1usize..6, 40),
            backfill in any::<bool>(),
        ) {
            let doc = if backfill { backfilled(json!({})) } else { study() };
            let mut one = Lab::new(doc.clone());
            let mut many = Lab::new(doc);
            for (i, score) in scores.iter().enumerate() {
                one.register(&format!("p{i}"), json!({"score": score}));
                many.register(&format!("p{i}"), json!({"score": score}));
            }
            let calls: Vec<(String, Operation)> = ops.iter().map(|(i, op)| (format!("p{i}"), op.clone())).collect();
            let mut answers_one = Vec::new();
            for (id, op) in &calls {
                answers_one.push(one.call(id, op.clone()).map(|p| (p.status, p.cohort_id)));
            }
            let mut answers_many = Vec::new();
            let mut rest: &[(String, Operation)] = &calls;
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap_or(&1)).min(rest.len());
                let batch: Vec<(&str, Operation)> = rest[..n].iter().map(|(id, op)| (id.as_str(), op.clone())).collect();
                answers_many.extend(many.call_many(&batch).into_iter().map(|r| r.map(|p| (p.status, p.cohort_id))));
                rest = &rest[n..];
            }
            prop_assert_eq!(answers_one, answers_many);
            let view = |lab: &Lab| -> Vec<(String, ParticipantStatus, Option<String>, Option<String>)> {
                lab.people.iter().map(|p| (p.id.clone(), p.status, p.cohort_id.clone(), p.entry.clone())).collect()
            };
            prop_assert_eq!(view(&one), view(&many));
            let log = |lab: &Lab| -> Vec<(String, ParticipantStatus, RoutingReason)> {
                lab.events.iter().map(|e| (e.participant_id.clone(), e.status, e.reason)).collect()
            };
            prop_assert_eq!(log(&one), log(&many));
        }
    }
}
