//! Which waiting participants a routing transaction reads (§5 "Matching"),
//! so that its cost follows the groups its arrivals can complete, not the
//! size of the waiting pool.
//!
//! Every routing transaction that can add to the pool runs matching until no
//! group is ready. Readiness only grows when members join the pool (removing
//! members never makes a group ready), so after a transaction whose
//! *arrivals* are A (participants that became waiting, or waiting ones heard
//! from again or with new attributes):
//!
//! * a group none of A sits in is not ready, before or after any formation;
//! * each formation takes at least one arrival (the group was not ready
//!   without them: some entry holds fewer than its `min_count` old members,
//!   and the formation takes at least `min_count` from it), so at most |A|
//!   groups form;
//! * each formation takes at most `S` members, the largest sum of
//!   `max_count`s among those groups.
//!
//! So for every entry of a group an arrival sits in, the `(|A| + 1) × S`
//! oldest live candidates decide exactly what the whole pool would: the
//! matcher never looks further down an entry's list than that. Those
//! candidates (read through the stored [`Slot`]s), the arrivals themselves
//! and the overdue participants make the pool a transaction plans with.
//! The property test below checks the result against the whole pool.
//!
//! Backfill (§5) takes, for each open seat of a cohort's window, the oldest
//! live candidate of the seat's entry. A transaction fills at most `B`
//! seats, the seats its open windows formed with; so the entries of those
//! windows are read too, and every read allows `2B` more candidates (the
//! fills themselves, and members other fills and formations took first).

use serde_json::Value;

use super::CompiledRouting;

/// A composition entry a participant can sit in: positions in the routing
/// config (`groups[group].composition[entry]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub group: usize,
    pub entry: usize,
}

/// An entry's oldest live, not overdue waiting participants to read; `limit`
/// `None` reads them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRead {
    pub slot: Slot,
    pub limit: Option<usize>,
}

/// Above this many candidates per entry a read takes the entry whole: the
/// formations it allows would place that many participants anyway.
pub const MAX_ENTRY_READ: usize = 10_000;

/// The entries a transaction with these arrivals (their attributes) and
/// these backfill seats (each entry of an open window with the seats it
/// formed with) must read, in config order.
pub fn entry_reads(
    routing: &CompiledRouting,
    arrivals: &[&Value],
    backfill: &[(Slot, u32)],
) -> Vec<EntryRead> {
    let groups = &routing.config.groups;
    let mut relevant = vec![false; groups.len()];
    for attributes in arrivals {
        for slot in routing.slots_of(attributes) {
            relevant[slot.group] = true;
        }
    }
    let mut filled: Vec<Slot> = backfill
        .iter()
        .map(|(slot, _)| *slot)
        .filter(|slot| {
            groups
                .get(slot.group)
                .is_some_and(|g| slot.entry < g.composition.len())
        })
        .collect();
    let fills = backfill
        .iter()
        .map(|(_, seats)| u64::from(*seats))
        .fold(0u64, u64::saturating_add);
    let seats = |g: usize| -> u64 {
        groups[g]
            .composition
            .iter()
            .map(|e| u64::from(e.max_count))
            .fold(0u64, u64::saturating_add)
    };
    let most = (0..groups.len())
        .filter(|&g| relevant[g] || filled.iter().any(|s| s.group == g))
        .map(seats)
        .max()
        .unwrap_or(0);
    let arrivals = u64::try_from(arrivals.len()).unwrap_or(u64::MAX);
    let needed = arrivals
        .saturating_add(1)
        .saturating_mul(most)
        .saturating_add(fills.saturating_mul(2));
    let limit = usize::try_from(needed)
        .ok()
        .filter(|&n| n <= MAX_ENTRY_READ);
    let mut slots: Vec<Slot> = groups
        .iter()
        .enumerate()
        .filter(|(g, _)| relevant[*g])
        .flat_map(|(group, def)| (0..def.composition.len()).map(move |entry| Slot { group, entry }))
        .collect();
    slots.append(&mut filled);
    slots.sort();
    slots.dedup();
    slots
        .into_iter()
        .map(|slot| EntryRead { slot, limit })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::matching::form_all;
    use super::super::{parse_cohorts, parse_routing, CohortDef};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::{BTreeSet, HashMap};

    fn setup(doc: &Value) -> (CompiledRouting, Vec<CohortDef>) {
        let mut problems = Vec::new();
        let cohorts = parse_cohorts(doc.get("cohorts"), &mut problems);
        let routing = parse_routing(doc.get("routing"), &cohorts, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        (CompiledRouting::new(routing), cohorts)
    }

    /// What the store's candidate read returns for `reads` from `pool`
    /// (oldest first): per entry the oldest `limit` members sitting in it,
    /// plus the arrivals, as pool indices in age order.
    fn read(
        routing: &CompiledRouting,
        pool: &[Value],
        reads: &[EntryRead],
        arrivals: &[usize],
    ) -> Vec<usize> {
        let mut taken: BTreeSet<usize> = arrivals.iter().copied().collect();
        for r in reads {
            let sitting = (0..pool.len())
                .filter(|&m| routing.entry_for(r.slot.group, &pool[m]) == Some(r.slot.entry));
            match r.limit {
                Some(n) => taken.extend(sitting.take(n)),
                None => taken.extend(sitting),
            }
        }
        taken.into_iter().collect()
    }

    /// The formations of the members `members` of `pool` (indices, oldest
    /// first) as (group, [(entry, pool index)] in seat order).
    fn formed(
        routing: &CompiledRouting,
        cohorts: &[CohortDef],
        pool: &[Value],
        members: &[usize],
    ) -> Vec<(usize, Vec<(usize, usize)>)> {
        let attributes: Vec<&Value> = members.iter().map(|&m| &pool[m]).collect();
        form_all(routing, cohorts, &attributes, &mut HashMap::new())
            .into_iter()
            .map(|f| {
                let seats = f
                    .seats
                    .iter()
                    .map(|s| (s.entry, members[s.member]))
                    .collect();
                (f.group, seats)
            })
            .collect()
    }

    #[test]
    fn only_the_groups_an_arrival_sits_in_are_read() {
        let (routing, _) = setup(&json!({"routing": {"groups": [
            {"name": "high", "composition": [{"id": "h", "condition": {"s": {"$gte": 7}}, "min_count": 2, "max_count": 3}]},
            {"name": "mixed", "composition": [
                {"id": "h", "condition": {"s": {"$gte": 7}}, "min_count": 1, "max_count": 1},
                {"id": "l", "condition": {"s": {"$lt": 5}}, "min_count": 1, "max_count": 2}]}]}}));
        let low = json!({"s": 1});
        let reads = entry_reads(&routing, &[&low], &[]);
        let slots: Vec<Slot> = reads.iter().map(|r| r.slot).collect();
        assert_eq!(
            slots,
            vec![Slot { group: 1, entry: 0 }, Slot { group: 1, entry: 1 }]
        );
        // One arrival: two formations' worth of the larger group (3 seats).
        assert!(reads.iter().all(|r| r.limit == Some(6)));
        let middle = json!({"s": 6});
        assert!(entry_reads(&routing, &[&middle], &[]).is_empty());
    }

    #[test]
    fn the_entries_of_open_backfill_windows_are_read_with_room_for_their_fills() {
        let (routing, _) = setup(&json!({"routing": {"groups": [
            {"name": "high", "target_cohort": null, "composition": [{"id": "h", "condition": {"s": {"$gte": 7}}, "min_count": 2, "max_count": 3}]},
            {"name": "mixed", "composition": [
                {"id": "h", "condition": {"s": {"$gte": 7}}, "min_count": 1, "max_count": 1},
                {"id": "l", "condition": {"s": {"$lt": 5}}, "min_count": 1, "max_count": 2}]}]}}));
        // No arrival: only the window's entry, with room for two fills twice
        // over and one formation of the largest group read.
        let reads = entry_reads(&routing, &[], &[(Slot { group: 1, entry: 1 }, 2)]);
        assert_eq!(
            reads,
            vec![EntryRead {
                slot: Slot { group: 1, entry: 1 },
                limit: Some(3 + 4)
            }]
        );
        // A window naming an entry the config no longer has reads nothing.
        assert!(entry_reads(&routing, &[], &[(Slot { group: 1, entry: 5 }, 2)]).is_empty());
    }

    #[test]
    fn a_group_without_a_useful_bound_is_read_whole() {
        let (routing, _) = setup(&json!({"routing": {"groups": [
            {"name": "all", "composition": [{"id": "a", "min_count": 1, "max_count": u32::MAX}]}]}}));
        let any = json!({});
        assert_eq!(entry_reads(&routing, &[&any], &[])[0].limit, None);
    }

    /// A random config like the matcher's property test: up to three groups
    /// of up to three entries over a small attribute space.
    fn config() -> impl Strategy<Value = Value> {
        let entry = (0u8..4, 1u32..3, 0u32..3).prop_map(|(k, min, extra)| {
            json!({"condition": if k == 3 { json!({}) } else { json!({"k": {"$in": [k, (k + 1) % 3]}}) },
                   "min_count": min, "max_count": min + extra})
        });
        let group = (
            prop::collection::vec(entry, 1..4),
            prop::option::of(0usize..2),
        );
        (
            prop::collection::vec(group, 1..4),
            any::<bool>(),
            prop::collection::vec(prop::option::of(4u32..9), 2),
        )
            .prop_map(|(groups, balance, caps)| {
                let groups: Vec<Value> = groups
                    .into_iter()
                    .enumerate()
                    .map(|(g, (entries, target))| {
                        let composition: Vec<Value> = entries
                            .into_iter()
                            .enumerate()
                            .map(|(i, mut e)| {
                                e["id"] = json!(format!("e{i}"));
                                e
                            })
                            .collect();
                        let needed: u64 = composition
                            .iter()
                            .map(|e| e["min_count"].as_u64().unwrap_or(0))
                            .sum();
                        let target =
                            target.filter(|t| caps[*t].is_none_or(|c| u64::from(c) >= needed));
                        json!({"name": format!("g{g}"), "target_cohort": target.map(|t| format!("c{t}")),
                               "composition": composition})
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
        /// From a settled pool (matching ran to the end) plus new arrivals,
        /// matching the candidates read gives exactly what matching the
        /// whole pool gives.
        #[test]
        fn reading_the_candidates_forms_what_the_whole_pool_forms(
            doc in config(),
            old in prop::collection::vec(0u8..5, 0..60),
            new in prop::collection::vec(0u8..5, 1..6),
        ) {
            let (routing, cohorts) = setup(&doc);
            // Settle the old pool: what matching would have left waiting.
            let old: Vec<Value> = old.iter().map(|k| json!({"k": k})).collect();
            let refs: Vec<&Value> = old.iter().collect();
            let mut used = vec![false; old.len()];
            for f in form_all(&routing, &cohorts, &refs, &mut HashMap::new()) {
                for s in f.seats {
                    used[s.member] = true;
                }
            }
            let mut pool: Vec<Value> = old.iter().zip(&used).filter(|(_, u)| !**u).map(|(v, _)| v.clone()).collect();
            let first_arrival = pool.len();
            pool.extend(new.iter().map(|k| json!({"k": k})));
            let arrivals: Vec<usize> = (first_arrival..pool.len()).collect();

            let whole: Vec<usize> = (0..pool.len()).collect();
            let expected = formed(&routing, &cohorts, &pool, &whole);

            let attrs: Vec<&Value> = arrivals.iter().map(|&i| &pool[i]).collect();
            let reads = entry_reads(&routing, &attrs, &[]);
            let part = read(&routing, &pool, &reads, &arrivals);
            let got = formed(&routing, &cohorts, &pool, &part);
            prop_assert_eq!(got, expected);
        }
    }
}
