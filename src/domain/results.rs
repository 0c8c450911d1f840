//! An experiment's results per phase (§8): units per arm against the
//! layout's exact shares, and the sample-ratio check.
//!
//! allot knows the share of the buckets every treatment owns in every
//! phase, so the expected split of units is exact, not estimated: a
//! mismatch means units did not arrive as the hash spreads them (a client
//! that drops answers, filters units after assignment, or caches across
//! phases), and the phase's comparison between arms cannot be trusted.

use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::hash::BUCKETS;
use super::layout::Range;

/// Below this many units in a phase the check says nothing.
pub const MIN_UNITS: u64 = 100;

/// A p-value below this is a mismatch.
pub const ALPHA: f64 = 0.001;

/// Pearson's χ² of the assigned units per treatment against the layout's
/// shares, its degrees of freedom and p-value.
#[derive(Debug, Clone, PartialEq)]
pub struct Srm {
    pub chi_square: f64,
    pub df: u32,
    pub p_value: f64,
    pub mismatch: bool,
}

/// One treatment of a phase: its buckets and the units it received.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub name: String,
    pub buckets: u32,
    /// `buckets` over every allocated bucket (0 when none is allocated).
    pub expected_share: f64,
    /// Distinct units answered `assigned` with this treatment.
    pub units: u64,
    /// `units` over the phase's units (0 when there are none).
    pub observed_share: f64,
}

/// What the ledger counted for one phase, per treatment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// (treatment, distinct units answered `assigned`).
    pub assigned: Vec<(String, u64)>,
}

/// The arms of a phase: every treatment the phase lists (in its order),
/// then any treatment that received units without being listed, each with
/// its buckets in `layout` and the units `observed`.
pub fn arms(treatments: &[String], layout: &[Range], observed: &Observed) -> Vec<Arm> {
    let mut names: Vec<&str> = treatments.iter().map(String::as_str).collect();
    for r in layout {
        if !names.contains(&r.treatment.as_str()) {
            names.push(&r.treatment);
        }
    }
    for (name, _) in &observed.assigned {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    let allocated: u32 = layout
        .iter()
        .map(|r| u32::from(r.end.min(BUCKETS).saturating_sub(r.start)))
        .sum();
    let total: u64 = observed.assigned.iter().map(|(_, n)| n).sum();
    names
        .into_iter()
        .map(|name| {
            let buckets: u32 = layout
                .iter()
                .filter(|r| r.treatment == name)
                .map(|r| u32::from(r.end.min(BUCKETS).saturating_sub(r.start)))
                .sum();
            let units: u64 = observed
                .assigned
                .iter()
                .filter(|(t, _)| t == name)
                .map(|(_, n)| n)
                .sum();
            Arm {
                name: name.to_owned(),
                buckets,
                expected_share: share(u64::from(buckets), u64::from(allocated)),
                units,
                observed_share: share(units, total),
            }
        })
        .collect()
}

/// `part / whole`, 0 for an empty whole.
#[allow(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52 are exact as f64"
)]
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The sample-ratio check of a phase's arms: Pearson's χ² over the arms
/// with buckets (`df` = their number − 1), a mismatch when p < [`ALPHA`]
/// or when an arm without buckets received units. `None` below
/// [`MIN_UNITS`] units or with fewer than two arms with buckets.
#[allow(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52 are exact as f64"
)]
pub fn srm(arms: &[Arm]) -> Option<Srm> {
    let units: u64 = arms.iter().map(|a| a.units).sum();
    let cells: Vec<&Arm> = arms.iter().filter(|a| a.expected_share > 0.0).collect();
    if units < MIN_UNITS || cells.len() < 2 {
        return None;
    }
    // Expected counts over the units the arms with buckets received, so
    // that observed and expected totals agree (units given to an arm
    // without buckets are a mismatch of their own).
    let n: u64 = cells.iter().map(|a| a.units).sum();
    let chi_square: f64 = cells
        .iter()
        .map(|a| {
            let expected = a.expected_share * n as f64;
            let diff = a.units as f64 - expected;
            diff * diff / expected
        })
        .sum();
    let df = u32::try_from(cells.len() - 1).unwrap_or(u32::MAX);
    let p_value = ChiSquared::new(f64::from(df))
        .map(|d| d.sf(chi_square))
        .unwrap_or(f64::NAN);
    let stray = arms.iter().any(|a| a.expected_share == 0.0 && a.units > 0);
    Some(Srm {
        chi_square,
        df,
        p_value,
        mismatch: stray || p_value < ALPHA,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(treatment: &str, start: u16, end: u16) -> Range {
        Range {
            treatment: treatment.to_owned(),
            start,
            end,
        }
    }

    fn observed(pairs: &[(&str, u64)]) -> Observed {
        Observed {
            assigned: pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect(),
        }
    }

    #[test]
    fn shares_come_from_the_layout_and_unlisted_arms_are_shown() {
        let layout = [range("a", 0, 2500), range("b", 5000, 10000)];
        let names = ["a".to_owned(), "b".to_owned(), "off".to_owned()];
        let got = arms(
            &names,
            &layout,
            &observed(&[("a", 30), ("b", 60), ("x", 10)]),
        );
        let summary: Vec<(&str, u32, f64, u64, f64)> = got
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.buckets,
                    a.expected_share,
                    a.units,
                    a.observed_share,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a", 2500, 2500.0 / 7500.0, 30, 0.3),
                ("b", 5000, 5000.0 / 7500.0, 60, 0.6),
                ("off", 0, 0.0, 0, 0.0),
                ("x", 0, 0.0, 10, 0.1),
            ]
        );
    }

    #[test]
    fn no_check_below_the_minimum_or_with_one_arm() {
        let layout = [range("a", 0, 5000), range("b", 5000, 10000)];
        let names = ["a".to_owned(), "b".to_owned()];
        assert_eq!(
            srm(&arms(&names, &layout, &observed(&[("a", 50), ("b", 49)]))),
            None
        );
        let one = [range("a", 0, 10000)];
        assert_eq!(srm(&arms(&names, &one, &observed(&[("a", 500)]))), None);
        assert!(srm(&arms(&names, &layout, &observed(&[("a", 50), ("b", 50)]))).is_some());
    }

    #[test]
    fn a_unit_in_an_arm_without_buckets_is_a_mismatch_whatever_the_p_value() {
        let layout = [range("a", 0, 5000), range("b", 5000, 10000)];
        let names = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let check = srm(&arms(
            &names,
            &layout,
            &observed(&[("a", 500), ("b", 500), ("c", 1)]),
        ));
        let check = check.as_ref().map(|s| (s.chi_square, s.df, s.mismatch));
        assert_eq!(check, Some((0.0, 1, true)));
    }

    /// χ² and p-value against scipy's `chisquare` on the same counts
    /// (tests/reference/ledger.py wrote the fixture), to 1e-9.
    #[test]
    fn the_statistic_equals_scipys_chisquare() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/ledger_reference.json"))
                .unwrap_or_default();
        let cases = fixture["chisquare"].as_array().cloned().unwrap_or_default();
        assert!(cases.len() >= 5);
        for case in cases {
            let shares = case["shares"].as_array().cloned().unwrap_or_default();
            let observed = case["observed"].as_array().cloned().unwrap_or_default();
            let arms: Vec<Arm> = shares
                .iter()
                .zip(&observed)
                .enumerate()
                .map(|(i, (share, units))| Arm {
                    name: format!("t{i}"),
                    buckets: 1,
                    expected_share: share.as_f64().unwrap_or_default(),
                    units: units.as_u64().unwrap_or_default(),
                    observed_share: 0.0,
                })
                .collect();
            let got = srm(&arms);
            let Some(got) = got else {
                panic!("no check for {case}");
            };
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
            let chi = case["chi_square"].as_f64().unwrap_or_default();
            let p = case["p_value"].as_f64().unwrap_or_default();
            assert!(close(got.chi_square, chi), "{case}: χ² {}", got.chi_square);
            assert!(close(got.p_value, p), "{case}: p {}", got.p_value);
            assert_eq!(u64::from(got.df), case["df"].as_u64().unwrap_or_default());
            assert_eq!(got.mismatch, p < ALPHA, "{case}");
        }
    }

    #[test]
    fn a_balanced_split_passes_and_a_skewed_one_fails() {
        let layout = [range("a", 0, 5000), range("b", 5000, 10000)];
        let names = ["a".to_owned(), "b".to_owned()];
        let fair = srm(&arms(
            &names,
            &layout,
            &observed(&[("a", 5012), ("b", 4988)]),
        ));
        assert!(fair.is_some_and(|s| !s.mismatch && s.p_value > 0.5));
        let skewed = srm(&arms(
            &names,
            &layout,
            &observed(&[("a", 5300), ("b", 4700)]),
        ));
        assert!(skewed.is_some_and(|s| s.mismatch && s.p_value < 1e-6));
    }
}
