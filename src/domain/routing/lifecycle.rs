//! Participant lifecycle (§5): what one routing call changes.
//!
//! `new → waiting → (pending → assigned | declined) | assigned | timed_out`.
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

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::matching::form_all;
use super::{CohortDef, CompiledRouting};

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
}

impl Cohort {
    /// Assigned plus pending. The counts come from the store and a capacity
    /// may be u32::MAX, so the sum saturates instead of overflowing.
    pub fn members(&self) -> u32 {
        self.assigned.saturating_add(self.pending)
    }

    fn has_room_for(&self, n: u32) -> bool {
        // In u64: members + n can pass u32::MAX.
        self.capacity.is_none_or(|c| {
            u64::from(self.assigned) + u64::from(self.pending) + u64::from(n) <= u64::from(c)
        })
    }
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
    /// Waiting participants, oldest first: all of them when the operation
    /// can form groups ([`Operation::forms_groups`]), else at least every
    /// overdue one.
    pub waiting: Vec<Participant>,
    /// The participants the calls are about, those that exist.
    pub subjects: Vec<Participant>,
}

/// Most calls planned in one transaction; `wait_seq` leaves room for them.
pub const MAX_CALLS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Route,
    Accept,
    Decline,
    /// Timeouts and a full matching pass: the background sweeper, and after
    /// a waiting participant's attributes or the routing config changed.
    Sweep,
}

impl Operation {
    /// Whether the operation can form groups, and so needs the whole pool.
    ///
    /// After every routing call no group is ready. A route adds one member,
    /// so a group it makes ready must include it; accepting, declining and
    /// timing out only remove members, which never makes a group ready.
    pub fn forms_groups(self) -> bool {
        matches!(self, Operation::Route | Operation::Sweep)
    }
}

/// Why an operation is refused; nothing is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
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
}

/// How a cohort's member counts move: (cohort id, assigned, pending).
pub type MemberDelta = (String, i64, i64);

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.new_cohorts.is_empty() && self.participants.is_empty() && self.events.is_empty()
    }

    /// The net change of each cohort's members (assigned, pending) that
    /// these events make: -1 for the status left, +1 for the status taken,
    /// on the event's cohort. Cohorts whose counts do not move are left out.
    pub fn member_deltas(&self) -> Vec<MemberDelta> {
        let weight = |s: ParticipantStatus| match s {
            ParticipantStatus::Assigned => (1, 0),
            ParticipantStatus::Pending => (0, 1),
            _ => (0, 0),
        };
        let mut deltas: Vec<MemberDelta> = Vec::new();
        for e in &self.events {
            let Some(cohort) = e.cohort_id.as_deref() else {
                continue;
            };
            let (a_new, p_new) = weight(e.status);
            let (a_old, p_old) = e.previous.map_or((0, 0), weight);
            let (da, dp) = (a_new - a_old, p_new - p_old);
            if da == 0 && dp == 0 {
                continue;
            }
            match deltas.iter_mut().find(|d| d.0 == cohort) {
                Some(d) => {
                    d.1 += da;
                    d.2 += dp;
                }
                None => deltas.push((cohort.to_owned(), da, dp)),
            }
        }
        deltas.retain(|d| d.1 != 0 || d.2 != 0);
        deltas
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
    new_id: &'a mut dyn FnMut() -> String,
}

impl Work<'_> {
    /// Records a status change and its event.
    fn change(
        &mut self,
        mut p: Participant,
        status: ParticipantStatus,
        reason: RoutingReason,
    ) -> Participant {
        let previous = p.status;
        p.status = status;
        p.updated_at = self.now;
        if status != ParticipantStatus::Waiting {
            p.waiting_since = None;
        }
        self.events.push(Event {
            participant_id: p.id.clone(),
            status,
            previous: Some(previous),
            group: p.group.clone(),
            entry: p.entry.clone(),
            cohort_id: p.cohort_id.clone(),
            reason,
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

    fn count(&mut self, cohort_id: &str, status: ParticipantStatus, delta: i32) {
        if let Some(c) = self.cohorts.iter_mut().find(|c| c.id == cohort_id) {
            let n = match status {
                ParticipantStatus::Assigned => &mut c.assigned,
                ParticipantStatus::Pending => &mut c.pending,
                _ => return,
            };
            *n = n.saturating_add_signed(delta);
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
    } = state;
    let mut work = Work {
        study,
        now,
        cohorts,
        group_cohorts,
        new_cohorts: Vec::new(),
        changed: Vec::new(),
        events: Vec::new(),
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
                if let Some(c) = &p.cohort_id {
                    work.count(c, ParticipantStatus::Pending, -1);
                }
                // The event names the seat given up; the participant then
                // belongs to no cohort.
                let mut declined =
                    work.change(p, ParticipantStatus::Declined, RoutingReason::Declined);
                declined.cohort_id = None;
                work.keep(declined.clone());
                known.insert(declined.id.clone(), declined);
                Ok(())
            }
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
            // Routing anyone but a new participant, accepting an assigned one
            // and declining a declined one change nothing.
            _ => Ok(()),
        };
        if result.is_ok() && operation.forms_groups() {
            form_groups(&mut work, &mut known, &mut pool);
        }
        answers.push(result.and_then(|()| known.get(id).cloned().ok_or(Refusal::NotFound)));
    }
    Changes {
        new_cohorts: work.new_cohorts,
        participants: work.changed,
        events: work.events,
        answers,
    }
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
            *members = members.saturating_add(u64::from(c.assigned) + u64::from(c.pending));
        }
    }
    let attributes: Vec<&Value> = pool
        .iter()
        .filter_map(|id| known.get(id))
        .map(|p| &p.attributes)
        .collect();
    let formations = form_all(routing, work.study.cohorts, &attributes, &mut alias_members);
    let mut formed = vec![false; pool.len()];
    for formation in formations {
        let group = &routing.config.groups[formation.group];
        let size = u32::try_from(formation.seats.len()).unwrap_or(u32::MAX);
        let cohort = match &group.target_cohort {
            Some(alias) => work.join(alias.as_str(), size),
            None => work.create_for_group(&group.name),
        };
        let status = if group.require_acceptance {
            ParticipantStatus::Pending
        } else {
            ParticipantStatus::Assigned
        };
        for seat in &formation.seats {
            formed[seat.member] = true;
            let Some(mut p) = known.get(&pool[seat.member]).cloned() else {
                continue;
            };
            p.cohort_id = Some(cohort.clone());
            p.group = Some(group.name.clone());
            p.entry = Some(group.composition[seat.entry].id.as_str().to_owned());
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

    #[test]
    fn member_deltas_net_each_cohort_s_status_changes() {
        let event = |cohort: Option<&str>,
                     previous: Option<ParticipantStatus>,
                     status: ParticipantStatus| Event {
            participant_id: "p".into(),
            status,
            previous,
            group: None,
            entry: None,
            cohort_id: cohort.map(Into::into),
            reason: RoutingReason::Formed,
        };
        let changes = Changes {
            events: vec![
                event(
                    Some("a"),
                    Some(ParticipantStatus::Waiting),
                    ParticipantStatus::Pending,
                ),
                event(
                    Some("a"),
                    Some(ParticipantStatus::Pending),
                    ParticipantStatus::Assigned,
                ),
                event(
                    Some("b"),
                    Some(ParticipantStatus::Waiting),
                    ParticipantStatus::Pending,
                ),
                event(
                    Some("b"),
                    Some(ParticipantStatus::Pending),
                    ParticipantStatus::Declined,
                ),
                event(
                    Some("c"),
                    Some(ParticipantStatus::Waiting),
                    ParticipantStatus::Assigned,
                ),
                event(
                    None,
                    Some(ParticipantStatus::New),
                    ParticipantStatus::Waiting,
                ),
            ],
            ..Changes::default()
        };
        assert_eq!(
            changes.member_deltas(),
            vec![("a".to_owned(), 1, 0), ("c".to_owned(), 1, 0)]
        );
    }
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
            }
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
            };
            let study = Study {
                routing: Some(&self.routing),
                cohorts: &self.defs,
            };
            let mut ids = self.ids;
            let calls: Vec<(String, Operation)> =
                calls.iter().map(|(id, op)| (id.to_string(), *op)).collect();
            let changes = plan(&study, state, &calls, &mut || {
                ids += 1;
                format!("gen-{ids}")
            });
            self.ids = ids;
            self.cohorts.extend(changes.new_cohorts);
            for p in changes.participants {
                match self.people.iter_mut().find(|x| x.id == p.id) {
                    Some(slot) => *slot = p,
                    None => self.people.push(p),
                }
            }
            self.events.extend(changes.events);
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

    use proptest::prelude::*;

    fn op_strategy() -> impl Strategy<Value = (usize, Operation)> {
        (
            0usize..12,
            prop_oneof![
                4 => Just(Operation::Route),
                1 => Just(Operation::Accept),
                1 => Just(Operation::Decline),
                1 => Just(Operation::Sweep),
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
        ) {
            let mut one = Lab::new(study());
            let mut many = Lab::new(study());
            for (i, score) in scores.iter().enumerate() {
                one.register(&format!("p{i}"), json!({"score": score}));
                many.register(&format!("p{i}"), json!({"score": score}));
            }
            let calls: Vec<(String, Operation)> = ops.iter().map(|(i, op)| (format!("p{i}"), *op)).collect();
            let mut answers_one = Vec::new();
            for (id, op) in &calls {
                answers_one.push(one.call(id, *op).map(|p| (p.status, p.cohort_id)));
            }
            let mut answers_many = Vec::new();
            let mut rest: &[(String, Operation)] = &calls;
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap_or(&1)).min(rest.len());
                let batch: Vec<(&str, Operation)> = rest[..n].iter().map(|(id, op)| (id.as_str(), *op)).collect();
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
