//! Weights to buckets, moving as few units as possible (contract §4.2).
//!
//! A [`Layout`] maps each of the 10 000 buckets to a treatment (by its index in
//! the experiment's treatment list) or to nothing. Every accepted change of
//! treatments or coverage computes the new layout from the previous version's
//! stored one: over-allocated treatments release their highest buckets, then
//! under-allocated ones take the lowest free buckets. So the number of units
//! that change treatment is exactly the sum of the decreases.

use serde::{Deserialize, Serialize};

use super::hash::BUCKETS;

const SLOTS: usize = BUCKETS as usize;
const FREE: u16 = u16::MAX;

/// A run of buckets `[start, end)` held by one treatment, as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Range {
    pub treatment: String,
    pub start: u16,
    pub end: u16,
}

/// A treatment as the layout sees it: a name and a weight (validated finite, ≥ 0).
#[derive(Debug, Clone, Copy)]
pub struct Weighted<'a> {
    pub name: &'a str,
    pub weight: f64,
}

/// Bucket → treatment index. Immutable once built; read on every assignment.
#[derive(Clone, PartialEq, Eq)]
pub struct Layout {
    slots: Box<[u16]>,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout")
            .field("counts", &self.counts_by_index())
            .finish()
    }
}

/// How many buckets each treatment should hold (§4.2 step 1).
///
/// `total = floor(coverage × 10000 + 0.5)`; each treatment with weight > 0
/// gets `floor(total × w / W)`, and the remainder goes one each to the
/// largest fractional parts, ties to the earlier treatment.
pub fn targets(weights: &[f64], coverage: f64) -> Vec<u32> {
    let total = (coverage * f64::from(BUCKETS) + 0.5)
        .floor()
        .clamp(0.0, f64::from(BUCKETS)) as u32;
    let sum: f64 = weights.iter().filter(|w| **w > 0.0).sum();
    let mut out = vec![0u32; weights.len()];
    if sum <= 0.0 || !sum.is_finite() || total == 0 {
        return out;
    }
    let mut fractions = Vec::with_capacity(weights.len());
    let mut given: i64 = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            let exact = f64::from(total) * w / sum;
            let floor = exact.floor();
            out[i] = floor as u32;
            given += floor as i64;
            fractions.push((i, exact - floor));
        }
    }
    // Largest fraction first; the stable sort keeps list order among ties.
    fractions.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut left = i64::from(total) - given;
    let mut cursor = fractions.iter().cycle();
    while left > 0 {
        if let Some(&(i, _)) = cursor.next() {
            out[i] += 1;
        }
        left -= 1;
    }
    // Rounding in f64 can in theory overshoot by a bucket; take it back from
    // the smallest fractions so the targets always add up to `total`.
    let mut back = fractions.iter().rev().cycle();
    while left < 0 {
        if let Some(&(i, _)) = back.next() {
            if out[i] > 0 {
                out[i] -= 1;
                left += 1;
            }
        }
    }
    out
}

impl Layout {
    /// An empty layout: every bucket free.
    pub fn empty() -> Self {
        Self {
            slots: vec![FREE; SLOTS].into_boxed_slice(),
        }
    }

    /// Rebuilds a layout from stored ranges. Refuses ranges that overlap, leave
    /// the 0..10000 space, or name a treatment that is not in `names`.
    pub fn from_ranges(ranges: &[Range], names: &[&str]) -> Result<Self, String> {
        let mut slots = vec![FREE; SLOTS];
        for r in ranges {
            let index = names
                .iter()
                .position(|n| *n == r.treatment)
                .ok_or_else(|| format!("layout names unknown treatment {:?}", r.treatment))?;
            if r.start >= r.end || usize::from(r.end) > SLOTS {
                return Err(format!("layout range {}..{} is invalid", r.start, r.end));
            }
            for slot in &mut slots[usize::from(r.start)..usize::from(r.end)] {
                if *slot != FREE {
                    return Err(format!("layout ranges overlap at {}..{}", r.start, r.end));
                }
                *slot = index as u16;
            }
        }
        Ok(Self {
            slots: slots.into_boxed_slice(),
        })
    }

    /// The next layout: start from `previous` (ranges naming treatments by
    /// name, as stored), release over-allocations from the top, grow
    /// under-allocations from the bottom.
    pub fn rebalance(previous: &[Range], treatments: &[Weighted<'_>], coverage: f64) -> Self {
        let mut slots = vec![FREE; SLOTS];
        let mut counts = vec![0u32; treatments.len()];
        for r in previous {
            // A treatment that is no longer listed gives up all of its buckets.
            let Some(index) = treatments.iter().position(|t| t.name == r.treatment) else {
                continue;
            };
            let end = usize::from(r.end).min(SLOTS);
            for slot in slots.iter_mut().take(end).skip(usize::from(r.start)) {
                if *slot == FREE {
                    *slot = index as u16;
                    counts[index] += 1;
                }
            }
        }
        let weights: Vec<f64> = treatments.iter().map(|t| t.weight).collect();
        let targets = targets(&weights, coverage);

        for (index, &target) in targets.iter().enumerate() {
            let mut excess = counts[index].saturating_sub(target);
            for slot in slots.iter_mut().rev() {
                if excess == 0 {
                    break;
                }
                if *slot == index as u16 {
                    *slot = FREE;
                    excess -= 1;
                    counts[index] -= 1;
                }
            }
        }
        for (index, &target) in targets.iter().enumerate() {
            let mut missing = target.saturating_sub(counts[index]);
            for slot in slots.iter_mut() {
                if missing == 0 {
                    break;
                }
                if *slot == FREE {
                    *slot = index as u16;
                    missing -= 1;
                    counts[index] += 1;
                }
            }
        }
        Self {
            slots: slots.into_boxed_slice(),
        }
    }

    /// The treatment index holding `bucket`, or `None` for a free bucket.
    #[inline]
    pub fn treatment_at(&self, bucket: u16) -> Option<usize> {
        match self.slots.get(usize::from(bucket)) {
            Some(&FREE) | None => None,
            Some(&index) => Some(usize::from(index)),
        }
    }

    /// Merged runs sorted by start, naming treatments by `names[index]`.
    pub fn ranges(&self, names: &[&str]) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::new();
        for (bucket, &slot) in self.slots.iter().enumerate() {
            if slot == FREE {
                continue;
            }
            let bucket = bucket as u16;
            match out.last_mut() {
                Some(last)
                    if last.end == bucket
                        && names.get(usize::from(slot)) == Some(&last.treatment.as_str()) =>
                {
                    last.end = bucket + 1;
                }
                _ => out.push(Range {
                    treatment: names
                        .get(usize::from(slot))
                        .copied()
                        .unwrap_or_default()
                        .to_owned(),
                    start: bucket,
                    end: bucket + 1,
                }),
            }
        }
        out
    }

    /// Buckets held per treatment index (length = highest index + 1).
    pub fn counts_by_index(&self) -> Vec<u32> {
        let mut counts = Vec::new();
        for &slot in self.slots.iter() {
            if slot != FREE {
                let i = usize::from(slot);
                if counts.len() <= i {
                    counts.resize(i + 1, 0);
                }
                counts[i] += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn named(weights: &[f64]) -> Vec<String> {
        (0..weights.len()).map(|i| format!("t{i}")).collect()
    }

    fn weighted<'a>(names: &'a [String], weights: &[f64]) -> Vec<Weighted<'a>> {
        names
            .iter()
            .zip(weights)
            .map(|(n, &w)| Weighted { name: n, weight: w })
            .collect()
    }

    fn owner_of(layout: &Layout, names: &[String]) -> Vec<Option<String>> {
        (0..BUCKETS)
            .map(|b| layout.treatment_at(b).map(|i| names[i].clone()))
            .collect()
    }

    #[test]
    fn equal_weights_split_evenly_and_leftovers_go_to_the_earliest() {
        assert_eq!(targets(&[1.0, 1.0], 1.0), vec![5000, 5000]);
        assert_eq!(targets(&[1.0, 1.0, 1.0], 1.0), vec![3334, 3333, 3333]);
        assert_eq!(targets(&[1.0, 0.0, 1.0], 0.5), vec![2500, 0, 2500]);
        assert_eq!(targets(&[0.0, 0.0], 1.0), vec![0, 0]);
        assert_eq!(targets(&[1.0], 0.00005), vec![1]);
    }

    #[test]
    fn adding_a_third_equal_treatment_moves_a_third_of_units() {
        let two = named(&[1.0, 1.0]);
        let first = Layout::rebalance(&[], &weighted(&two, &[1.0, 1.0]), 1.0);
        let three = named(&[1.0, 1.0, 1.0]);
        let names: Vec<&str> = two.iter().map(String::as_str).collect();
        let second = Layout::rebalance(
            &first.ranges(&names),
            &weighted(&three, &[1.0, 1.0, 1.0]),
            1.0,
        );
        let moved = owner_of(&first, &two)
            .iter()
            .zip(owner_of(&second, &three))
            .filter(|(a, b)| **a != *b)
            .count();
        assert_eq!(moved, 3333);
    }

    #[test]
    fn ranges_round_trip_through_storage() {
        let names = named(&[3.0, 2.0, 1.0]);
        let layout = Layout::rebalance(&[], &weighted(&names, &[3.0, 2.0, 1.0]), 0.7);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ranges = layout.ranges(&refs);
        assert_eq!(Layout::from_ranges(&ranges, &refs).unwrap(), layout);
        assert!(ranges.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn stored_ranges_that_overlap_or_name_strangers_are_refused() {
        let r = |t: &str, s, e| Range {
            treatment: t.into(),
            start: s,
            end: e,
        };
        assert!(Layout::from_ranges(&[r("a", 0, 10), r("a", 5, 12)], &["a"]).is_err());
        assert!(Layout::from_ranges(&[r("b", 0, 10)], &["a"]).is_err());
        assert!(Layout::from_ranges(&[r("a", 10, 10)], &["a"]).is_err());
        assert!(Layout::from_ranges(&[r("a", 0, 10_001)], &["a"]).is_err());
    }

    /// The largest-remainder rule of §4.2 has Hamilton's "Alabama paradox":
    /// with weights 1:3:3, 3 buckets give 1/1/1 but 4 give 0/2/2, so raising
    /// coverage by one bucket moves a unit. This pins the exact rule.
    #[test]
    fn a_tiny_coverage_raise_can_shrink_a_target() {
        assert_eq!(targets(&[1.0, 3.0, 3.0], 0.0003), vec![1, 1, 1]);
        assert_eq!(targets(&[1.0, 3.0, 3.0], 0.0004), vec![0, 2, 2]);
    }

    /// One step of an experiment's life: weights for up to five treatments
    /// (`None` = not listed) and a coverage.
    fn step() -> impl Strategy<Value = (Vec<Option<f64>>, f64)> {
        (
            prop::collection::vec(
                prop::option::weighted(
                    0.8,
                    prop_oneof![Just(0.0), 0.0f64..10.0, (1u32..5u32).prop_map(f64::from)],
                ),
                5,
            ),
            prop_oneof![Just(1.0), Just(0.0), 0.0f64..=1.0],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn every_change_moves_the_minimum_and_hits_every_target(steps in prop::collection::vec(step(), 1..6)) {
            let all: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
            let mut previous: Vec<Range> = Vec::new();
            let mut before: Vec<Option<String>> = vec![None; usize::from(BUCKETS)];
            for (weights, coverage) in steps {
                let listed: Vec<(String, f64)> = all.iter().zip(&weights)
                    .filter_map(|(n, w)| w.map(|w| (n.clone(), w))).collect();
                let names: Vec<String> = listed.iter().map(|(n, _)| n.clone()).collect();
                let ws: Vec<f64> = listed.iter().map(|(_, w)| *w).collect();
                let layout = Layout::rebalance(&previous, &weighted(&names, &ws), coverage);

                // Every treatment holds exactly its target.
                let want = targets(&ws, coverage);
                let mut have = layout.counts_by_index();
                have.resize(names.len(), 0);
                prop_assert_eq!(&have, &want);

                // Same inputs, same layout.
                prop_assert_eq!(&Layout::rebalance(&previous, &weighted(&names, &ws), coverage), &layout);

                // Moved units = sum of decreases (a bucket leaving a treatment).
                let after = owner_of(&layout, &names);
                let mut held_before = std::collections::HashMap::<String, u32>::new();
                for o in before.iter().flatten() { *held_before.entry(o.clone()).or_default() += 1; }
                let decreases: u32 = held_before.iter().map(|(n, &c)| {
                    let target = names.iter().position(|x| x == n).map_or(0, |i| want[i]);
                    c.saturating_sub(target)
                }).sum();
                let moved = before.iter().zip(&after).filter(|(b, a)| b.is_some() && b != a).count() as u32;
                prop_assert_eq!(moved, decreases);

                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                previous = layout.ranges(&refs);
                before = after;
            }
        }

        /// Raising coverage moves no allocated bucket as long as the raise
        /// grows every treatment's exact share by at least one bucket. (A raise
        /// of one or two buckets can, rarely, shrink a target: see
        /// `a_tiny_coverage_raise_can_shrink_a_target`.)
        #[test]
        fn raising_coverage_moves_no_allocated_bucket(w in prop::collection::vec(prop_oneof![0.1f64..10.0, (1u32..8).prop_map(f64::from)], 1..5), low in 0.0f64..1.0, raise in 0.0f64..1.0) {
            let high = (low + raise).min(1.0);
            let total = |c: f64| (c * 10_000.0 + 0.5).floor();
            let sum: f64 = w.iter().sum();
            prop_assume!(w.iter().all(|wi| (total(high) * wi / sum).floor() >= (total(low) * wi / sum).ceil()));
            let names = named(&w);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let first = Layout::rebalance(&[], &weighted(&names, &w), low);
            let second = Layout::rebalance(&first.ranges(&refs), &weighted(&names, &w), high);
            for b in 0..BUCKETS {
                if let Some(t) = first.treatment_at(b) {
                    prop_assert_eq!(second.treatment_at(b), Some(t));
                }
            }
        }
    }
}
