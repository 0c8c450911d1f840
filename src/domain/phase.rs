//! Phases and moved buckets (§3): what each version of an experiment did to
//! who gets which treatment.
//!
//! A **phase** is a run of versions that randomize units the same way: one
//! layout, one salt, one `hash_by`. A version that changes any of them
//! starts the next phase; any other change (a description, a pause, an
//! eligibility flag, a payload) keeps it. A deletion ends the phase (it
//! keeps its number and moves nobody), and the first version of a
//! re-created key starts a new one. Phases number on across incarnations,
//! as versions do.
//!
//! **Moved** buckets are those whose treatment differs from the previous
//! live version's layout (a free bucket is `None`): with the documented
//! hash, an analyst lists exactly the units a change moved.

use super::experiment::HashBy;
use super::hash::BUCKETS;
use super::layout::Range;

/// How one live version assigns buckets, as far as phases are concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Randomization<'a> {
    pub salt: &'a str,
    pub hash_by: HashBy,
    pub ranges: &'a [Range],
}

/// A run of buckets `[start, end)` whose treatment changed from `from` to
/// `to` (`None`: a free bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedRange {
    pub start: u16,
    pub end: u16,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The buckets a version moved, their count and share of all buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    pub buckets: u32,
    pub share: f64,
    pub ranges: Vec<MovedRange>,
}

impl Moved {
    /// Nothing moved: version 1, a version that keeps the layout, a deletion.
    pub fn none() -> Self {
        Self {
            buckets: 0,
            share: 0.0,
            ranges: Vec::new(),
        }
    }
}

/// The treatment of every bucket in `ranges` (`None`: free).
fn owners(ranges: &[Range]) -> Vec<Option<&str>> {
    let mut owners = vec![None; usize::from(BUCKETS)];
    for r in ranges {
        let end = r.end.min(BUCKETS);
        for slot in &mut owners[usize::from(r.start.min(end))..usize::from(end)] {
            *slot = Some(r.treatment.as_str());
        }
    }
    owners
}

/// The buckets whose treatment in `current` differs from `previous`,
/// sorted by bucket, adjacent buckets with the same change merged.
pub fn moved(previous: &[Range], current: &[Range]) -> Moved {
    let (before, after) = (owners(previous), owners(current));
    let mut ranges: Vec<MovedRange> = Vec::new();
    let mut buckets = 0u32;
    for (bucket, (from, to)) in (0..BUCKETS).zip(before.iter().zip(&after)) {
        if from == to {
            continue;
        }
        buckets += 1;
        match ranges.last_mut() {
            Some(last)
                if last.end == bucket
                    && last.from.as_deref() == *from
                    && last.to.as_deref() == *to =>
            {
                last.end = bucket + 1;
            }
            _ => ranges.push(MovedRange {
                start: bucket,
                end: bucket + 1,
                from: from.map(str::to_owned),
                to: to.map(str::to_owned),
            }),
        }
    }
    Moved {
        buckets,
        share: f64::from(buckets) / f64::from(BUCKETS),
        ranges,
    }
}

/// One version of a key's history, oldest first: how it randomizes, or
/// `None` for a deletion.
pub type Step<'a> = Option<Randomization<'a>>;

/// The phase of each version and what it moved, for a key's whole history
/// (every incarnation, oldest first).
pub fn phases(history: &[Step<'_>]) -> Vec<(u32, Moved)> {
    let mut out = Vec::with_capacity(history.len());
    let mut phase = 0u32;
    // The previous version, and the last live one (a re-created key's
    // first layout is compared with what its units had before).
    let mut previous: Option<&Step<'_>> = None;
    let mut last_live: Option<&Randomization<'_>> = None;
    for step in history {
        let entry = match step {
            None => (phase.max(1), Moved::none()),
            Some(current) => {
                let continues = matches!(previous, Some(Some(p)) if p.salt == current.salt
                    && p.hash_by == current.hash_by
                    && p.ranges == current.ranges);
                if !continues {
                    phase += 1;
                }
                let moved = match last_live {
                    None => Moved::none(),
                    Some(live) => moved(live.ranges, current.ranges),
                };
                last_live = Some(current);
                (phase, moved)
            }
        };
        out.push(entry);
        previous = Some(step);
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn range(treatment: &str, start: u16, end: u16) -> Range {
        Range {
            treatment: treatment.to_owned(),
            start,
            end,
        }
    }

    /// The contract's example: a third equal treatment `perf` joins `noop`
    /// and `cost-optimized`.
    #[test]
    fn a_third_equal_arm_moves_a_third() {
        let before = [range("noop", 0, 5000), range("cost-optimized", 5000, 10000)];
        let after = [
            range("noop", 0, 3334),
            range("perf", 3334, 5000),
            range("cost-optimized", 5000, 8333),
            range("perf", 8333, 10000),
        ];
        let m = moved(&before, &after);
        assert_eq!(m.buckets, 3333);
        assert!((m.share - 0.3333).abs() < 1e-12);
        assert_eq!(
            m.ranges,
            [
                MovedRange {
                    start: 3334,
                    end: 5000,
                    from: Some("noop".into()),
                    to: Some("perf".into())
                },
                MovedRange {
                    start: 8333,
                    end: 10000,
                    from: Some("cost-optimized".into()),
                    to: Some("perf".into())
                },
            ]
        );
    }

    #[test]
    fn phases_follow_randomization_and_deletions() {
        let two = [range("a", 0, 5000), range("b", 5000, 10000)];
        let half = [range("a", 0, 2500), range("b", 5000, 7500)];
        let live = |salt, ranges| {
            Some(Randomization {
                salt,
                hash_by: HashBy::Unit,
                ranges,
            })
        };
        let history = [
            live("s", &two[..]),  // 1: first version
            live("s", &two[..]),  // 1: a description changed
            live("s", &half[..]), // 2: coverage halved
            live("t", &half[..]), // 3: new salt
            None,                 // 3: deleted, ends phase 3
            live("t", &half[..]), // 4: re-created
        ];
        let got: Vec<(u32, u32)> = phases(&history)
            .into_iter()
            .map(|(phase, m)| (phase, m.buckets))
            .collect();
        assert_eq!(got, [(1, 0), (1, 0), (2, 5000), (3, 0), (3, 0), (4, 0)]);
    }

    fn layout() -> impl Strategy<Value = Vec<Range>> {
        // Up to four treatments over random cut points; some runs free.
        prop::collection::vec((0u16..=10_000, prop::option::of(0usize..4)), 0..8).prop_map(
            |mut cuts| {
                cuts.sort_by_key(|c| c.0);
                let mut ranges = Vec::new();
                let mut start = 0;
                for (end, owner) in cuts {
                    if let Some(t) = owner {
                        if end > start {
                            ranges.push(range(["a", "b", "c", "d"][t], start, end));
                        }
                    }
                    start = end;
                }
                ranges
            },
        )
    }

    proptest! {
        /// The moved ranges are exactly the buckets whose owner differs,
        /// each described truly, sorted, disjoint and maximal.
        #[test]
        fn moved_is_exactly_the_changed_buckets(before in layout(), after in layout()) {
            let m = moved(&before, &after);
            let (b, a) = (owners(&before), owners(&after));
            let mut covered = vec![false; usize::from(BUCKETS)];
            let mut last_end = 0;
            for (i, r) in m.ranges.iter().enumerate() {
                prop_assert!(r.start < r.end && r.start >= last_end);
                if i > 0 {
                    let p = &m.ranges[i - 1];
                    prop_assert!(!(p.end == r.start && p.from == r.from && p.to == r.to), "not merged");
                }
                last_end = r.end;
                for bucket in r.start..r.end {
                    let i = usize::from(bucket);
                    covered[i] = true;
                    prop_assert_eq!(b[i], r.from.as_deref());
                    prop_assert_eq!(a[i], r.to.as_deref());
                }
            }
            for i in 0..usize::from(BUCKETS) {
                prop_assert_eq!(covered[i], b[i] != a[i], "bucket {}", i);
            }
            prop_assert_eq!(m.buckets as usize, covered.iter().filter(|c| **c).count());
            prop_assert!((m.share - f64::from(m.buckets) / 10_000.0).abs() < 1e-15);
        }
    }
}
