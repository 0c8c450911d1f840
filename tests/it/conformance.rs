//! GrowthBook's cross-SDK `evalCondition` cases (vendored with their licence
//! in `tests/fixtures/growthbook/`): every case but the saved-group ones.

use allot::domain::condition::{validate, Condition};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = include_str!("../fixtures/growthbook/cases.json");
    let suite: Value = serde_json::from_str(text).expect("cases.json parses");
    suite["evalCondition"]
        .as_array()
        .expect("an evalCondition section")
        .clone()
}

#[test]
fn every_growthbook_condition_case_passes_except_saved_groups() {
    let mut ran = 0;
    let mut failures = Vec::new();
    for case in cases() {
        let name = case[0].as_str().unwrap_or_default();
        // A fifth element holds saved groups, which allot does not have.
        if case.get(4).is_some() {
            continue;
        }
        let got = Condition::compile(&case[1]).matches(&case[2]);
        if Some(got) != case[3].as_bool() {
            failures.push(format!("{name}: expected {}, got {got}", case[3]));
        }
        ran += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ran >= 240, "only {ran} cases ran");
}

#[test]
fn only_the_unknown_operator_and_invalid_regex_cases_are_refused_at_write_time() {
    let mut refused: Vec<String> = cases()
        .iter()
        .filter(|c| c.get(4).is_none() && !validate(&c[1], "").is_empty())
        .map(|c| c[0].as_str().unwrap_or_default().to_owned())
        .collect();
    refused.sort();
    refused.dedup();
    assert_eq!(
        refused,
        vec![
            "$in - not array",
            "$ini - not array",
            "$nin - not array",
            "$nini - not array",
            "$regex invalid - fail",
            "$regex invalid - pass",
            "unknown operator - pass"
        ]
    );
}
