//! Cohorts, per-cohort variables and participant routing (§5).
//!
//! * this file: the `cohorts`, `variables` and `routing` documents and their
//!   validation;
//! * [`matching`]: the pure matcher: a waiting pool in, formations out;
//! * [`lifecycle`]: participant statuses, timeouts and the audit events a
//!   routing call produces, as a pure plan the store then applies;
//! * [`pool`]: which waiting participants a routing transaction must read,
//!   so that its cost does not grow with the pool.

pub mod cohorts;
pub mod lifecycle;
pub mod matching;
pub mod pool;

use serde::Serialize;
use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};

use super::condition::{self, Condition};
use super::fields::{boolean, count, key_field, objects, optional_key, reject_unknown_at, text};
use super::ids::Key;
use super::limits;
use super::problem::{pointer, Problem};

/// A cohort defined in the experiment document.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"alias": "arm-pro-ai", "name": "Pro-AI Study Arm", "description": "", "capacity": 50}))]
pub struct CohortDef {
    pub alias: Key,
    pub name: String,
    pub description: String,
    /// Most members (assigned + pending) one cohort of this alias holds;
    /// `None` is no limit.
    #[schema(required = true)]
    pub capacity: Option<u32>,
}

/// A variable resolved per cohort: `cohort_values[alias]`, else `default`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "persona", "default": "control", "cohort_values": {"arm-pro-ai": "pro_ai"}}))]
pub struct VariableDef {
    pub name: Key,
    pub default: Value,
    pub cohort_values: Map<String, Value>,
}

/// Participant routing as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "groups": [{"name": "High Scorers", "target_cohort": "arm-pro-ai", "require_acceptance": false,
                "accept_timeout_seconds": null, "backfill_seconds": null,
                "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 1, "max_count": 5}]}],
    "balance": false, "wait_timeout_seconds": 600, "liveness_timeout_seconds": 30, "fallback_cohort": null
}))]
pub struct RoutingConfig {
    pub groups: Vec<GroupDef>,
    pub balance: bool,
    // Parsed to whole seconds from 1 to one year; `waiting_cutoff` below is
    // the overflow-free way to use it.
    /// A participant waiting longer than this many seconds (1 to 31536000)
    /// goes to the fallback cohort, or to `timed_out`; null waits forever.
    #[schema(required = true)]
    pub wait_timeout_seconds: Option<u64>,
    /// A participant is live while it was heard from within this many
    /// seconds (1 to 31536000); only live waiting participants are matched.
    /// Null: everyone is live.
    #[schema(required = true)]
    pub liveness_timeout_seconds: Option<u64>,
    #[schema(required = true)]
    pub fallback_cohort: Option<Key>,
}

impl RoutingConfig {
    /// The `waiting_since` at or before which a waiting participant is
    /// overdue at `now`; `None` when nobody can be (no timeout, or one that
    /// reaches back before the earliest representable time).
    ///
    /// Parsing keeps the timeout within a year, but the field is public and
    /// the arithmetic must not panic whatever it holds: the subtraction is
    /// checked, never `now - Duration` (which panics out of range) nor
    /// `u64 as i64` (which turned u64::MAX into -1 second: everyone overdue).
    pub fn waiting_cutoff(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        waiting_cutoff(self.wait_timeout_seconds, now)
    }

    /// The `last_seen` at or after which a participant is live at `now`;
    /// `None` when everyone is (no liveness timeout, or one reaching back
    /// before the earliest representable time).
    pub fn live_cutoff(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        waiting_cutoff(self.liveness_timeout_seconds, now)
    }
}

/// Whether a participant last heard from at `last_seen` is live under a
/// [`RoutingConfig::live_cutoff`].
pub fn is_live(last_seen: OffsetDateTime, cutoff: Option<OffsetDateTime>) -> bool {
    cutoff.is_none_or(|c| last_seen >= c)
}

/// The time `seconds` after `from`, or `None` when it is not representable
/// (checked, like [`waiting_cutoff`]: never panics whatever it is given).
pub fn deadline(from: OffsetDateTime, seconds: Option<u64>) -> Option<OffsetDateTime> {
    let seconds = i64::try_from(seconds?).ok()?;
    from.checked_add(Duration::seconds(seconds))
}

/// [`RoutingConfig::waiting_cutoff`] for a timeout held on its own (the
/// store's routing scope carries only the seconds).
pub fn waiting_cutoff(timeout_seconds: Option<u64>, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let seconds = i64::try_from(timeout_seconds?).ok()?;
    now.checked_sub(Duration::seconds(seconds))
}

/// A routing group as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "Mixed Group", "target_cohort": null, "require_acceptance": true,
    "accept_timeout_seconds": 120, "backfill_seconds": 300,
    "composition": [{"id": "any", "min_count": 2, "max_count": 4}]}))]
pub struct GroupDef {
    pub name: String,
    #[schema(required = true)]
    pub target_cohort: Option<Key>,
    pub require_acceptance: bool,
    /// A `pending` member not accepted within this many seconds (1 to
    /// 31536000) becomes `declined` (reason `accept_timeout`); null: no limit.
    #[schema(required = true)]
    pub accept_timeout_seconds: Option<u64>,
    /// For this many seconds (1 to 31536000) after one of the group's
    /// cohorts forms, a seat freed in it (decline, acceptance timeout, drop)
    /// is offered to the live waiting participants of that seat's
    /// composition entry, oldest first. Only for a group without a
    /// `target_cohort`; null: freed seats stay empty.
    #[schema(required = true)]
    pub backfill_seconds: Option<u64>,
    pub composition: Vec<EntryDef>,
}

/// A composition entry as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EntryDef {
    pub id: Key,
    /// Absent when the entry takes everyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::domain::condition::stored_schema)]
    pub condition: Option<Value>,
    pub min_count: u32,
    pub max_count: u32,
}

/// Routing with its composition conditions compiled.
#[derive(Debug, Clone)]
pub struct CompiledRouting {
    pub config: RoutingConfig,
    /// `conditions[group][entry]`.
    conditions: Vec<Vec<Condition>>,
}

impl CompiledRouting {
    pub fn new(config: RoutingConfig) -> Self {
        let conditions = config
            .groups
            .iter()
            .map(|g| {
                g.composition
                    .iter()
                    .map(|e| {
                        e.condition
                            .as_ref()
                            .map_or_else(Condition::always, Condition::compile)
                    })
                    .collect()
            })
            .collect();
        Self { config, conditions }
    }

    /// The first entry of `group` whose condition the attributes match.
    pub fn entry_for(&self, group: usize, attributes: &Value) -> Option<usize> {
        self.conditions
            .get(group)?
            .iter()
            .position(|c| c.matches(attributes))
    }

    /// Every seat the attributes can take: per group, the entry they sit in
    /// (if any), in config order.
    pub fn slots_of(&self, attributes: &Value) -> Vec<pool::Slot> {
        (0..self.conditions.len())
            .filter_map(|group| {
                self.entry_for(group, attributes)
                    .map(|entry| pool::Slot { group, entry })
            })
            .collect()
    }
}

/// Resolves every variable for a cohort alias (`None`: no cohort, or a
/// cohort without an alias, gets the defaults).
pub fn resolve_variables(variables: &[VariableDef], alias: Option<&str>) -> Map<String, Value> {
    variables
        .iter()
        .map(|v| {
            let value = alias
                .and_then(|a| v.cohort_values.get(a))
                .unwrap_or(&v.default)
                .clone();
            (v.name.as_str().to_owned(), value)
        })
        .collect()
}

/// Parses `cohorts`: aliases unique, capacity ≥ 1 or absent.
pub fn parse_cohorts(value: Option<&Value>, problems: &mut Vec<Problem>) -> Vec<CohortDef> {
    let mut out: Vec<CohortDef> = Vec::new();
    for (at, map) in objects(value, "/cohorts", "a cohort", problems) {
        reject_unknown_at(
            map,
            &["alias", "name", "description", "capacity"],
            &at,
            problems,
        );
        let alias = key_field(map, "alias", &at, problems);
        let name = text(map, "name", &at, false, problems);
        let description = text(map, "description", &at, false, problems);
        let capacity = match map.get("capacity") {
            None | Some(Value::Null) => None,
            Some(_) => count(map, "capacity", &at, problems),
        };
        if let Some(alias) = alias {
            if out.iter().any(|c| c.alias == alias) {
                problems.push(Problem::new(
                    pointer(&at, "alias"),
                    format!("duplicate cohort alias {alias:?}"),
                ));
                continue;
            }
            let name = if name.is_empty() {
                alias.as_str().to_owned()
            } else {
                name
            };
            out.push(CohortDef {
                alias,
                name,
                description,
                capacity,
            });
        }
    }
    out
}

fn check_alias(alias: &Key, cohorts: &[CohortDef], at: String, problems: &mut Vec<Problem>) {
    if !cohorts.iter().any(|c| &c.alias == alias) {
        problems.push(Problem::new(
            at,
            format!("names no defined cohort (no alias {alias:?})"),
        ));
    }
}

/// Parses `variables`: names unique, `cohort_values` keys are defined aliases.
pub fn parse_variables(
    value: Option<&Value>,
    cohorts: &[CohortDef],
    problems: &mut Vec<Problem>,
) -> Vec<VariableDef> {
    let mut out: Vec<VariableDef> = Vec::new();
    for (at, map) in objects(value, "/variables", "a variable", problems) {
        reject_unknown_at(map, &["name", "default", "cohort_values"], &at, problems);
        let name = key_field(map, "name", &at, problems);
        let default = map.get("default").cloned().unwrap_or(Value::Null);
        let cohort_values = match map.get("cohort_values") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(values)) => {
                for alias in values.keys() {
                    let here = pointer(&pointer(&at, "cohort_values"), alias);
                    match Key::parse(alias) {
                        Ok(k) => check_alias(&k, cohorts, here, problems),
                        Err(e) => problems.push(Problem::new(here, e)),
                    }
                }
                values.clone()
            }
            Some(_) => {
                problems.push(Problem::new(
                    pointer(&at, "cohort_values"),
                    "must be an object keyed by cohort alias",
                ));
                Map::new()
            }
        };
        if let Some(name) = name {
            if out.iter().any(|v| v.name == name) {
                problems.push(Problem::new(
                    pointer(&at, "name"),
                    format!("duplicate variable {name:?}"),
                ));
                continue;
            }
            out.push(VariableDef {
                name,
                default,
                cohort_values,
            });
        }
    }
    out
}

/// Parses `routing` (null or absent: no routing).
pub fn parse_routing(
    value: Option<&Value>,
    cohorts: &[CohortDef],
    problems: &mut Vec<Problem>,
) -> Option<RoutingConfig> {
    let map = match value {
        None | Some(Value::Null) => return None,
        Some(Value::Object(m)) => m,
        Some(_) => {
            problems.push(Problem::new("/routing", "must be an object or null"));
            return None;
        }
    };
    let at = "/routing";
    reject_unknown_at(
        map,
        &[
            "groups",
            "balance",
            "wait_timeout_seconds",
            "liveness_timeout_seconds",
            "fallback_cohort",
        ],
        at,
        problems,
    );
    let balance = boolean(map, "balance", "/routing", false, problems);
    let wait_timeout_seconds = seconds(map, "wait_timeout_seconds", at, problems);
    let liveness_timeout_seconds = seconds(map, "liveness_timeout_seconds", at, problems);
    let fallback_cohort = optional_key(map, "fallback_cohort", at, problems);
    if let Some(alias) = &fallback_cohort {
        check_alias(alias, cohorts, "/routing/fallback_cohort".into(), problems);
    }
    let mut groups: Vec<GroupDef> = Vec::new();
    for (gat, g) in objects(map.get("groups"), "/routing/groups", "a group", problems) {
        reject_unknown_at(
            g,
            &[
                "name",
                "target_cohort",
                "require_acceptance",
                "accept_timeout_seconds",
                "backfill_seconds",
                "composition",
            ],
            &gat,
            problems,
        );
        let name = text(g, "name", &gat, true, problems);
        if !name.is_empty() && groups.iter().any(|x| x.name == name) {
            problems.push(Problem::new(
                pointer(&gat, "name"),
                format!("duplicate group name {name:?}"),
            ));
        }
        let target_cohort = optional_key(g, "target_cohort", &gat, problems);
        if let Some(alias) = &target_cohort {
            check_alias(alias, cohorts, pointer(&gat, "target_cohort"), problems);
        }
        let require_acceptance = boolean(g, "require_acceptance", &gat, false, problems);
        let accept_timeout_seconds = seconds(g, "accept_timeout_seconds", &gat, problems);
        let backfill_seconds = seconds(g, "backfill_seconds", &gat, problems);
        if backfill_seconds.is_some() && target_cohort.is_some() {
            problems.push(Problem::new(
                pointer(&gat, "backfill_seconds"),
                "only a group without a target_cohort can backfill (its cohorts are the ones it forms)",
            ));
        }
        let cat = pointer(&gat, "composition");
        let mut composition: Vec<EntryDef> = Vec::new();
        for (eat, e) in objects(g.get("composition"), &cat, "a composition entry", problems) {
            reject_unknown_at(
                e,
                &["id", "condition", "min_count", "max_count"],
                &eat,
                problems,
            );
            let id = key_field(e, "id", &eat, problems);
            let condition = match e.get("condition") {
                None | Some(Value::Null) => None,
                Some(c) => {
                    problems.extend(condition::validate(c, &pointer(&eat, "condition")));
                    Some(c.clone())
                }
            };
            let min_count = count(e, "min_count", &eat, problems);
            let max_count = count(e, "max_count", &eat, problems);
            if let (Some(min), Some(max)) = (min_count, max_count) {
                if min > max {
                    problems.push(Problem::new(
                        pointer(&eat, "max_count"),
                        "must be >= min_count",
                    ));
                }
            }
            if let Some(id) = id {
                if composition.iter().any(|x| x.id == id) {
                    problems.push(Problem::new(
                        pointer(&eat, "id"),
                        format!("duplicate composition id {id:?} in this group"),
                    ));
                }
                composition.push(EntryDef {
                    id,
                    condition,
                    min_count: min_count.unwrap_or(1),
                    max_count: max_count.unwrap_or(1),
                });
            }
        }
        // An empty (or absent) list; a list of broken entries is reported per entry.
        let listed = g
            .get("composition")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if listed == 0 {
            problems.push(Problem::new(cat, "needs at least one composition entry"));
        }
        if let Some(capacity) = target_cohort
            .as_ref()
            .and_then(|a| cohorts.iter().find(|c| &c.alias == a))
            .and_then(|c| c.capacity)
        {
            let needed: u64 = composition.iter().map(|e| u64::from(e.min_count)).sum();
            if needed > u64::from(capacity) {
                problems.push(Problem::new(
                    pointer(&gat, "composition"),
                    format!("the min_counts add up to {needed}, more than the target cohort's capacity {capacity}"),
                ));
            }
        }
        groups.push(GroupDef {
            name,
            target_cohort,
            require_acceptance,
            accept_timeout_seconds,
            backfill_seconds,
            composition,
        });
    }
    if problems.is_empty() {
        // Matching may test a participant against every entry of every group.
        let cost = super::flag::total_cost(
            groups
                .iter()
                .flat_map(|g| &g.composition)
                .filter_map(|e| e.condition.as_ref()),
        );
        if let Err(problem) = condition::check_cost(&cost, "/routing/groups") {
            problems.push(problem);
        }
    }
    Some(RoutingConfig {
        groups,
        balance,
        wait_timeout_seconds,
        liveness_timeout_seconds,
        fallback_cohort,
    })
}

/// An optional duration field (`*_seconds`): whole seconds within §1's
/// limits, or null/absent for none.
fn seconds(
    map: &Map<String, Value>,
    field: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<u64> {
    match map.get(field) {
        None | Some(Value::Null) => None,
        Some(v) => match limits::duration_seconds(v) {
            Ok(seconds) => Some(seconds),
            Err(e) => {
                problems.push(Problem::new(
                    pointer(at, field),
                    format!("{e}, or null for no timeout"),
                ));
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Parsed = (Vec<CohortDef>, Vec<VariableDef>, Option<RoutingConfig>);

    fn parse(doc: Value) -> Result<Parsed, Vec<String>> {
        let mut problems = Vec::new();
        let cohorts = parse_cohorts(doc.get("cohorts"), &mut problems);
        let variables = parse_variables(doc.get("variables"), &cohorts, &mut problems);
        let routing = parse_routing(doc.get("routing"), &cohorts, &mut problems);
        if problems.is_empty() {
            Ok((cohorts, variables, routing))
        } else {
            Err(problems.into_iter().map(|p| p.path).collect())
        }
    }

    #[test]
    fn the_contract_example_parses() {
        let (cohorts, variables, routing) = parse(json!({
            "cohorts": [{"alias": "arm-pro-ai", "name": "Pro-AI Study Arm", "description": "...", "capacity": 50},
                        {"alias": "arm-skeptic", "name": "AI-Skeptic Arm"}],
            "variables": [{"name": "persona", "default": "control", "cohort_values": {"arm-pro-ai": "pro_ai", "arm-skeptic": "skeptic"}}],
            "routing": {"groups": [
                {"name": "High Scorers", "target_cohort": "arm-pro-ai",
                 "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 1, "max_count": 5}]},
                {"name": "Mixed Group", "require_acceptance": true,
                 "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 2, "max_count": 2},
                                 {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}]}],
                "balance": false, "wait_timeout_seconds": 600, "fallback_cohort": null}}))
        .unwrap();
        assert_eq!(cohorts[0].capacity, Some(50));
        assert_eq!(cohorts[1].capacity, None);
        let routing = routing.unwrap();
        assert_eq!(routing.groups[1].composition[1].min_count, 2);
        assert_eq!(
            resolve_variables(&variables, Some("arm-skeptic"))["persona"],
            "skeptic"
        );
        assert_eq!(resolve_variables(&variables, None)["persona"], "control");
    }

    fn one_group(routing: Value) -> Value {
        let mut routing = routing;
        routing["groups"] =
            json!([{"name": "g", "composition": [{"id": "e", "min_count": 1, "max_count": 1}]}]);
        json!({ "routing": routing })
    }

    #[test]
    fn wait_timeouts_are_whole_seconds_up_to_a_year() {
        for (given, want) in [
            (json!(1), 1),
            (json!(600), 600),
            (json!(600.0), 600),
            (json!(31_536_000), 31_536_000),
        ] {
            let (_, _, routing) =
                parse(one_group(json!({ "wait_timeout_seconds": given }))).unwrap();
            assert_eq!(routing.unwrap().wait_timeout_seconds, Some(want));
        }
        for bad in [
            json!(0),
            json!(-1),
            json!(0.5),
            json!(600.5),
            json!(31_536_001),
            json!(1_000_000_000_000u64),
            json!(u64::MAX),
            json!(1e300),
            json!("600"),
            json!([600]),
        ] {
            assert_eq!(
                parse(one_group(json!({ "wait_timeout_seconds": bad }))).unwrap_err(),
                vec!["/routing/wait_timeout_seconds"],
                "{bad}"
            );
        }
    }

    #[test]
    fn liveness_and_acceptance_timeouts_are_durations() {
        let (_, _, routing) = parse(
            json!({"routing": {"liveness_timeout_seconds": 30, "groups": [
            {"name": "g", "require_acceptance": true, "accept_timeout_seconds": 120,
             "composition": [{"id": "e", "min_count": 1, "max_count": 1}]}]}}),
        )
        .unwrap();
        let routing = routing.unwrap();
        assert_eq!(routing.liveness_timeout_seconds, Some(30));
        assert_eq!(routing.groups[0].accept_timeout_seconds, Some(120));
        let (_, _, absent) = parse(one_group(json!({}))).unwrap();
        let absent = absent.unwrap();
        assert_eq!(absent.liveness_timeout_seconds, None);
        assert_eq!(absent.groups[0].accept_timeout_seconds, None);
        for bad in [json!(0), json!(1.5), json!("30"), json!(31_536_001)] {
            let problems = parse(
                json!({"routing": {"liveness_timeout_seconds": bad, "groups": [
                {"name": "g", "accept_timeout_seconds": bad,
                 "composition": [{"id": "e", "min_count": 1, "max_count": 1}]}]}}),
            )
            .unwrap_err();
            assert_eq!(
                problems,
                vec![
                    "/routing/liveness_timeout_seconds",
                    "/routing/groups/0/accept_timeout_seconds"
                ],
                "{bad}"
            );
        }
    }

    #[test]
    fn backfill_is_a_duration_for_a_group_without_a_target() {
        let doc = |target: Value, backfill: Value| {
            json!({"cohorts": [{"alias": "a"}], "routing": {"groups": [
                {"name": "g", "target_cohort": target, "backfill_seconds": backfill,
                 "composition": [{"id": "e", "min_count": 1, "max_count": 1}]}]}})
        };
        let (_, _, routing) = parse(doc(Value::Null, json!(300))).unwrap();
        assert_eq!(routing.unwrap().groups[0].backfill_seconds, Some(300));
        let (_, _, routing) = parse(doc(Value::Null, Value::Null)).unwrap();
        assert_eq!(routing.unwrap().groups[0].backfill_seconds, None);
        let (_, _, routing) = parse(doc(json!("a"), Value::Null)).unwrap();
        assert_eq!(routing.unwrap().groups[0].backfill_seconds, None);
        for bad in [
            json!(0),
            json!(1.5),
            json!("30"),
            json!(31_536_001),
            json!(-1),
        ] {
            assert_eq!(
                parse(doc(Value::Null, bad.clone())).unwrap_err(),
                vec!["/routing/groups/0/backfill_seconds"],
                "{bad}"
            );
        }
        assert_eq!(
            parse(doc(json!("a"), json!(300))).unwrap_err(),
            vec!["/routing/groups/0/backfill_seconds"]
        );
    }

    #[test]
    fn liveness_and_deadlines_never_overflow() {
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        assert!(is_live(now, None));
        let cutoff = Some(now - Duration::seconds(30));
        assert!(is_live(now - Duration::seconds(30), cutoff));
        assert!(!is_live(now - Duration::seconds(31), cutoff));
        assert_eq!(deadline(now, None), None);
        assert_eq!(deadline(now, Some(10)), Some(now + Duration::seconds(10)));
        assert_eq!(deadline(now, Some(u64::MAX)), None);
        let latest = time::PrimitiveDateTime::MAX.assume_utc();
        assert_eq!(deadline(latest, Some(1)), None);
    }

    #[test]
    fn counts_reach_u32_max_and_no_further() {
        let doc = |capacity: Value, min: Value, max: Value| {
            json!({"cohorts": [{"alias": "a", "capacity": capacity}],
                   "routing": {"groups": [{"name": "g", "target_cohort": "a",
                       "composition": [{"id": "e", "min_count": min, "max_count": max}]}]}})
        };
        let (cohorts, _, routing) =
            parse(doc(json!(u32::MAX), json!(u32::MAX), json!(u32::MAX))).unwrap();
        assert_eq!(cohorts[0].capacity, Some(u32::MAX));
        assert_eq!(
            routing.unwrap().groups[0].composition[0].min_count,
            u32::MAX
        );
        let (_, _, routing) = parse(doc(json!(3.0), json!(1.0), json!(2))).unwrap();
        assert_eq!(routing.unwrap().groups[0].composition[0].max_count, 2);
        for bad in [
            json!(u64::from(u32::MAX) + 1),
            json!(u64::MAX),
            json!(1e300),
            json!(2.5),
            json!(-1),
            json!(0),
            json!("3"),
        ] {
            let problems = parse(doc(bad.clone(), bad.clone(), bad.clone())).unwrap_err();
            assert_eq!(
                problems,
                vec![
                    "/cohorts/0/capacity",
                    "/routing/groups/0/composition/0/min_count",
                    "/routing/groups/0/composition/0/max_count",
                ],
                "{bad}"
            );
        }
    }

    #[test]
    fn the_waiting_cutoff_never_overflows() {
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        let config = |t: Option<u64>| RoutingConfig {
            groups: Vec::new(),
            balance: false,
            wait_timeout_seconds: t,
            liveness_timeout_seconds: None,
            fallback_cohort: None,
        };
        assert_eq!(config(None).waiting_cutoff(now), None);
        assert_eq!(
            config(Some(60)).waiting_cutoff(now),
            Some(now - Duration::seconds(60))
        );
        // Only parsing keeps these out; built by hand they mean "never".
        for t in [1_000_000_000_000, i64::MAX as u64, u64::MAX] {
            assert_eq!(config(Some(t)).waiting_cutoff(now), None, "{t}");
        }
        let earliest = time::PrimitiveDateTime::MIN.assume_utc();
        assert_eq!(config(Some(1)).waiting_cutoff(earliest), None);
    }

    #[test]
    fn every_rule_of_section_5_is_checked() {
        let problems = parse(json!({
            "cohorts": [{"alias": "a", "capacity": 0}, {"alias": "a"}, {"alias": "b", "capacity": 2}],
            "variables": [{"name": "v", "cohort_values": {"nope": 1}}],
            "routing": {"fallback_cohort": "missing", "groups": [
                {"name": "g1", "target_cohort": "ghost", "composition": []},
                {"name": "g2", "composition": [{"id": "x", "min_count": 3, "max_count": 2}, {"id": "x", "min_count": 0, "max_count": 1}]},
                {"name": "g3", "target_cohort": "b", "composition": [{"id": "x", "min_count": 2, "max_count": 2}, {"id": "y", "min_count": 1, "max_count": 1}]}]}}))
        .unwrap_err();
        assert_eq!(
            problems,
            vec![
                "/cohorts/0/capacity",
                "/cohorts/1/alias",
                "/variables/0/cohort_values/nope",
                "/routing/fallback_cohort",
                "/routing/groups/0/target_cohort",
                "/routing/groups/0/composition",
                "/routing/groups/1/composition/0/max_count",
                "/routing/groups/1/composition/1/min_count",
                "/routing/groups/1/composition/1/id",
                "/routing/groups/2/composition",
            ]
        );
    }
}
