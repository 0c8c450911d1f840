//! The matcher (§5 "Matching"): a waiting pool in, formations out.
//!
//! Repeat until no group is ready: each pool member sits in the first
//! composition entry of each group whose condition it matches; a group is
//! ready when every entry holds at least `min_count`; the first ready group
//! (or, with `balance`, the one whose target cohort has the fewest members)
//! forms with up to `max_count` of the oldest members per entry, and at most
//! its target cohort's capacity in all (every entry keeping its `min_count`,
//! the remaining seats going to the oldest).

use std::collections::HashMap;

use serde_json::Value;

use super::{CohortDef, CompiledRouting};

/// One seat of a formation: a pool member and the entry it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// Index into the pool as given (oldest first).
    pub member: usize,
    /// Index of the composition entry in the group.
    pub entry: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formation {
    /// Index of the group in the routing config.
    pub group: usize,
    /// The seats, oldest member first.
    pub seats: Vec<Seat>,
}

/// Forms every group that can be formed from `pool` (oldest first), in the
/// order the rules pick them. `alias_members` holds the members (assigned +
/// pending) per cohort alias, for `balance`; it is updated as formations
/// join their targets.
pub fn form_all(
    routing: &CompiledRouting,
    cohorts: &[CohortDef],
    pool: &[&Value],
    alias_members: &mut HashMap<String, u64>,
) -> Vec<Formation> {
    let groups = &routing.config.groups;
    // Which entry each member sits in, per group: evaluated once.
    let slots: Vec<Vec<Option<usize>>> = (0..groups.len())
        .map(|g| {
            pool.iter()
                .map(|attrs| routing.entry_for(g, attrs))
                .collect()
        })
        .collect();
    let mut taken = vec![false; pool.len()];
    let mut formations = Vec::new();
    while let Some(formation) = next(routing, cohorts, &slots, &taken, alias_members) {
        for seat in &formation.seats {
            taken[seat.member] = true;
        }
        if let Some(alias) = &groups[formation.group].target_cohort {
            let members = alias_members.entry(alias.as_str().to_owned()).or_default();
            *members = members.saturating_add(formation.seats.len() as u64);
        }
        formations.push(formation);
    }
    formations
}

/// The members of each entry of group `g`, oldest first.
fn candidates(slots: &[Option<usize>], taken: &[bool], entries: usize) -> Vec<Vec<usize>> {
    let mut lists = vec![Vec::new(); entries];
    for (member, slot) in slots.iter().enumerate() {
        if let (Some(entry), false) = (slot, taken[member]) {
            lists[*entry].push(member);
        }
    }
    lists
}

fn next(
    routing: &CompiledRouting,
    cohorts: &[CohortDef],
    slots: &[Vec<Option<usize>>],
    taken: &[bool],
    alias_members: &HashMap<String, u64>,
) -> Option<Formation> {
    let config = &routing.config;
    let mut chosen: Option<(usize, Vec<Vec<usize>>, u64)> = None;
    for (g, group) in config.groups.iter().enumerate() {
        let lists = candidates(&slots[g], taken, group.composition.len());
        let ready = group
            .composition
            .iter()
            .zip(&lists)
            .all(|(entry, list)| list.len() >= entry.min_count as usize);
        if !ready {
            continue;
        }
        if !config.balance {
            chosen = Some((g, lists, 0));
            break;
        }
        // Groups without a target count as largest; ties go to the earlier.
        let size = group.target_cohort.as_ref().map_or(u64::MAX, |a| {
            alias_members.get(a.as_str()).copied().unwrap_or(0)
        });
        if chosen.as_ref().is_none_or(|c| size < c.2) {
            chosen = Some((g, lists, size));
        }
    }
    let (g, lists, _) = chosen?;
    let group = &config.groups[g];
    let capacity = group
        .target_cohort
        .as_ref()
        .and_then(|a| cohorts.iter().find(|c| &c.alias == a))
        .and_then(|c| c.capacity)
        .map_or(usize::MAX, |c| c as usize);

    // Every entry keeps its min_count; the seats left under the capacity go
    // to the oldest of the remaining candidates, each entry up to max_count.
    let mut seats: Vec<Seat> = Vec::new();
    let mut extras: Vec<Seat> = Vec::new();
    for (entry, (def, list)) in group.composition.iter().zip(&lists).enumerate() {
        // The group is ready, so every list holds at least its min_count;
        // the bounds are clamped anyway so that a config built by hand (min
        // above max, counts up to u32::MAX) cannot make a slice panic.
        let min = (def.min_count as usize).min(list.len());
        let max = (def.max_count as usize).clamp(min, list.len());
        seats.extend(list[..min].iter().map(|&member| Seat { member, entry }));
        extras.extend(list[min..max].iter().map(|&member| Seat { member, entry }));
    }
    extras.sort_by_key(|s| s.member);
    let room = capacity.saturating_sub(seats.len());
    seats.extend(extras.into_iter().take(room));
    seats.sort_by_key(|s| s.member);
    Some(Formation { group: g, seats })
}

#[cfg(test)]
mod tests {
    use super::super::{parse_cohorts, parse_routing};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn setup(doc: Value) -> (CompiledRouting, Vec<CohortDef>) {
        let mut problems = Vec::new();
        let cohorts = parse_cohorts(doc.get("cohorts"), &mut problems);
        let routing = parse_routing(doc.get("routing"), &cohorts, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        (CompiledRouting::new(routing), cohorts)
    }

    fn scores(values: &[i64]) -> Vec<Value> {
        values.iter().map(|s| json!({"score": s})).collect()
    }

    fn mixed() -> Value {
        json!({"routing": {"groups": [{"name": "Mixed", "composition": [
            {"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 2, "max_count": 2},
            {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}]}]}})
    }

    #[test]
    fn two_high_and_two_low_form_a_group_and_the_middle_waits() {
        let (routing, cohorts) = setup(mixed());
        let pool = scores(&[8, 6, 2, 9, 3, 10]);
        let refs: Vec<&Value> = pool.iter().collect();
        let formed = form_all(&routing, &cohorts, &refs, &mut HashMap::new());
        assert_eq!(formed.len(), 1);
        let members: Vec<usize> = formed[0].seats.iter().map(|s| s.member).collect();
        assert_eq!(members, vec![0, 2, 3, 4]);
    }

    #[test]
    fn a_target_capacity_caps_a_formation_keeping_every_min() {
        let (routing, cohorts) = setup(json!({
            "cohorts": [{"alias": "arm", "capacity": 3}],
            "routing": {"groups": [{"name": "G", "target_cohort": "arm", "composition": [
                {"id": "a", "condition": {"k": "a"}, "min_count": 1, "max_count": 5},
                {"id": "b", "condition": {"k": "b"}, "min_count": 1, "max_count": 5}]}]}}));
        let pool: Vec<Value> = ["a", "a", "a", "a", "b"]
            .iter()
            .map(|k| json!({"k": k}))
            .collect();
        let refs: Vec<&Value> = pool.iter().collect();
        let formed = form_all(&routing, &cohorts, &refs, &mut HashMap::new());
        // Group 1: b keeps its one seat, the two oldest a's fill the rest. The
        // remaining a's cannot form again without a b.
        assert_eq!(formed.len(), 1);
        let members: Vec<usize> = formed[0].seats.iter().map(|s| s.member).collect();
        assert_eq!(members, vec![0, 1, 4]);
    }

    #[test]
    fn balance_picks_the_target_with_fewest_members() {
        let (routing, cohorts) = setup(json!({
            "cohorts": [{"alias": "x"}, {"alias": "y"}],
            "routing": {"balance": true, "groups": [
                {"name": "to x", "target_cohort": "x", "composition": [{"id": "any", "min_count": 1, "max_count": 1}]},
                {"name": "to y", "target_cohort": "y", "composition": [{"id": "any", "min_count": 1, "max_count": 1}]}]}}));
        let pool = scores(&[1, 2, 3, 4]);
        let refs: Vec<&Value> = pool.iter().collect();
        let mut members = HashMap::from([("x".to_owned(), 1u64)]);
        let formed = form_all(&routing, &cohorts, &refs, &mut members);
        let groups: Vec<usize> = formed.iter().map(|f| f.group).collect();
        assert_eq!(groups, vec![1, 0, 1, 0]);
        assert_eq!(members["x"], 3);
        assert_eq!(members["y"], 2);
    }

    #[test]
    fn counts_at_u32_max_neither_overflow_nor_form_a_group_too_soon() {
        let (routing, cohorts) = setup(json!({
            "cohorts": [{"alias": "big", "capacity": u32::MAX}],
            "routing": {"balance": true, "groups": [
                {"name": "never", "composition": [{"id": "a", "min_count": u32::MAX, "max_count": u32::MAX}]},
                {"name": "all", "target_cohort": "big", "composition": [{"id": "a", "min_count": 1, "max_count": u32::MAX}]}]}}));
        let pool = scores(&[1, 2, 3]);
        let refs: Vec<&Value> = pool.iter().collect();
        let mut members = HashMap::from([("big".to_owned(), u64::MAX - 1)]);
        let formed = form_all(&routing, &cohorts, &refs, &mut members);
        assert_eq!(formed.len(), 1);
        assert_eq!(formed[0].group, 1);
        assert_eq!(formed[0].seats.len(), 3);
        assert_eq!(members["big"], u64::MAX);
    }

    #[test]
    fn a_hand_built_config_with_min_above_max_cannot_make_the_matcher_panic() {
        let (mut routing, cohorts) = setup(mixed());
        routing.config.groups[0].composition[0].min_count = 3;
        routing.config.groups[0].composition[0].max_count = 1;
        let pool = scores(&[8, 9, 10, 1, 2]);
        let refs: Vec<&Value> = pool.iter().collect();
        let formed = form_all(&routing, &cohorts, &refs, &mut HashMap::new());
        assert_eq!(formed.len(), 1);
        assert_eq!(formed[0].seats.len(), 5);
    }

    /// A random routing config: up to three groups of up to three entries
    /// over a small attribute space, with optional target capacities.
    fn config() -> impl Strategy<Value = Value> {
        let entry = (0u8..4, 1u32..3, 0u32..3).prop_map(|(k, min, extra)| {
            json!({"condition": if k == 3 { json!({}) } else { json!({"k": k}) }, "min_count": min, "max_count": min + extra})
        });
        let group = (
            prop::collection::vec(entry, 1..4),
            any::<bool>(),
            prop::option::of(0usize..2),
        );
        (prop::collection::vec(group, 1..4), any::<bool>(), prop::collection::vec(prop::option::of(1u32..8), 2))
            .prop_map(|(groups, balance, caps)| {
                let groups: Vec<Value> = groups
                    .into_iter()
                    .enumerate()
                    .map(|(g, (entries, _, target))| {
                        let composition: Vec<Value> = entries
                            .into_iter()
                            .enumerate()
                            .map(|(i, mut e)| {
                                e["id"] = json!(format!("e{i}"));
                                e
                            })
                            .collect();
                        let needed: u64 = composition.iter().map(|e| e["min_count"].as_u64().unwrap()).sum();
                        // Only target a cohort whose capacity fits the mins.
                        let target = target.filter(|t| caps[*t].is_none_or(|c| u64::from(c) >= needed));
                        json!({"name": format!("g{g}"), "target_cohort": target.map(|t| format!("c{t}")), "composition": composition})
                    })
                    .collect();
                let cohorts: Vec<Value> = caps
                    .iter()
                    .enumerate()
                    .map(|(i, c)| json!({"alias": format!("c{i}"), "capacity": c}))
                    .collect();
                json!({"cohorts": cohorts, "routing": {"balance": balance, "groups": groups}})
            })
    }

    proptest! {
        #[test]
        fn formations_respect_the_rules_and_leave_no_ready_group(doc in config(), ks in prop::collection::vec(0u8..4, 0..30)) {
            let (routing, cohorts) = setup(doc);
            let pool: Vec<Value> = ks.iter().map(|k| json!({"k": k})).collect();
            let refs: Vec<&Value> = pool.iter().collect();
            let formed = form_all(&routing, &cohorts, &refs, &mut HashMap::new());
            let mut used = vec![false; pool.len()];
            for f in &formed {
                let group = &routing.config.groups[f.group];
                let capacity = group.target_cohort.as_ref()
                    .and_then(|a| cohorts.iter().find(|c| &c.alias == a)).and_then(|c| c.capacity);
                if let Some(c) = capacity {
                    prop_assert!(f.seats.len() <= c as usize);
                }
                for (e, def) in group.composition.iter().enumerate() {
                    let n = f.seats.iter().filter(|s| s.entry == e).count() as u32;
                    prop_assert!(n >= def.min_count && n <= def.max_count);
                }
                for s in &f.seats {
                    prop_assert!(!used[s.member], "a member formed twice");
                    used[s.member] = true;
                    // Each seat's member really sits in that entry.
                    prop_assert_eq!(routing.entry_for(f.group, &pool[s.member]), Some(s.entry));
                }
                // Oldest first: no unused member of an entry is older than a
                // seated one of the same entry, unless capacity cut extras
                // (then only members younger than every extra are skipped).
                for e in 0..group.composition.len() {
                    let seated: Vec<usize> = f.seats.iter().filter(|s| s.entry == e).map(|s| s.member).collect();
                    if let Some(&youngest) = seated.iter().max() {
                        for m in 0..youngest {
                            if routing.entry_for(f.group, &pool[m]) == Some(e) && !seated.contains(&m) {
                                prop_assert!(formed.iter().any(|g| g.seats.iter().any(|s| s.member == m)) && used[m],
                                    "member {} skipped for a younger one", m);
                            }
                        }
                    }
                }
            }
            // Nothing left is ready.
            for (g, group) in routing.config.groups.iter().enumerate() {
                let ready = group.composition.iter().enumerate().all(|(e, def)| {
                    (0..pool.len()).filter(|&m| !used[m] && routing.entry_for(g, &pool[m]) == Some(e)).count() >= def.min_count as usize
                });
                prop_assert!(!ready, "group {} is still ready", g);
            }
        }
    }
}
