//! Generated documents (§1 "the server never answers 500 to input"):
//! arbitrary JSON in every field of flag and experiment documents, and
//! documents that are arbitrary throughout, fed to the pure domain.
//!
//! Whatever a client sends, parsing answers `Ok` or a list of problems whose
//! paths are JSON Pointers into the document; whatever it accepts can be sent
//! back unchanged, and compiles, evaluates, lays out, assigns and matches
//! without a panic. These run in-process on the domain types, without the
//! HTTP layer, so that many documents fit in a few seconds.

use std::collections::HashMap;

use allot::domain::experiment::{Experiment, ExperimentConfig, Precheck};
use allot::domain::flag::FlagConfig;
use allot::domain::ids::Key;
use allot::domain::layout::Range;
use allot::domain::routing::lifecycle::{self, Cohort, Operation, Participant, State, Study};
use allot::domain::routing::matching::form_all;
use proptest::prelude::*;
use serde_json::{json, Value};
use time::macros::datetime;

// ------------------------------------------------------------ JSON values

/// Numbers where parsers and arithmetic have corners: both zeros, the
/// extremes of f64, u64, i64 and u32, fractions, and the limits of §1.
fn edge_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(-0.0),
            json!(1),
            json!(-1),
            json!(0.5),
            json!(2.0),
            json!(100),
            json!(100.0),
            json!(12.34),
            json!(1e308),
            json!(-1e308),
            json!(f64::MAX),
            json!(5e-324),
            json!(f64::MIN_POSITIVE),
            json!(1e-320),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u32::MAX),
            json!(u64::from(u32::MAX) + 1),
            json!(31_536_000),
            json!(31_536_001),
            json!(1_000_000_000_000u64),
            json!(10_001),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        (0.0f64..=1.0).prop_map(Value::from),
    ]
}

/// Strings: keys and near-keys, operator names, enum values of the
/// documents, U+0000, non-ASCII, pointer metacharacters, long ones.
fn edge_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "a",
            "b",
            "arm",
            "c1",
            "c2",
            "g1",
            "e1",
            "t0",
            "running",
            "paused",
            "unit",
            "org",
            "\u{0}",
            "x\u{0}y",
            "é",
            "🦀",
            "~",
            "/",
            "a/b~c",
            "$in",
            "$regex",
            "score",
            "plan",
            "has space",
            "1.2.3",
            "v2.0.0-beta+1",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9.:_-]{1,12}",
        "[a-z$.~/]{0,6}",
        (1usize..3).prop_map(|n| "k".repeat(199 + n)),
        Just("x".repeat(10_001)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        3 => edge_number(),
        3 => edge_string().prop_map(Value::from),
    ]
}

/// Keys of generated objects: the documents' own field names (so that
/// generated objects reach deep into the parsers), operators, strangers.
fn object_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "description",
            "enabled",
            "rules",
            "name",
            "condition",
            "rollout",
            "status",
            "eligibility_flag",
            "salt",
            "coverage",
            "sticky",
            "hash_by",
            "treatments",
            "weight",
            "payload",
            "cohorts",
            "alias",
            "capacity",
            "variables",
            "default",
            "cohort_values",
            "routing",
            "groups",
            "balance",
            "wait_timeout_seconds",
            "fallback_cohort",
            "target_cohort",
            "require_acceptance",
            "composition",
            "id",
            "min_count",
            "max_count",
            "score",
            "plan",
            "survey.q1",
            "$and",
            "$or",
            "$nor",
            "$not",
            "$in",
            "$nin",
            "$all",
            "$elemMatch",
            "$size",
            "$exists",
            "$type",
            "$regex",
            "$vgt",
            "$gte",
            "$eq",
            "$wat",
        ])
        .prop_map(str::to_owned),
        edge_string(),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((object_key(), inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// Conditions shaped like the language of §6: fields, logical operators and
/// operator objects with arguments of every type.
fn any_condition() -> impl Strategy<Value = Value> {
    let operand = prop_oneof![
        4 => leaf(),
        1 => prop::collection::vec(leaf(), 0..4).prop_map(Value::Array),
        1 => prop::sample::select(vec!["^a", "(", "\\w+", "[a-z]{2,3}", "a|b", "(?i)x"])
            .prop_map(Value::from),
    ];
    let ops = prop::collection::vec(
        (
            prop::sample::select(vec![
                "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$ini", "$nini", "$all",
                "$alli", "$exists", "$type", "$regex", "$regexi", "$size", "$veq", "$vgt", "$vlte",
                "$wat",
            ]),
            operand.clone(),
        ),
        1..3,
    )
    .prop_map(|ops| {
        Value::Object(
            ops.into_iter()
                .map(|(op, arg)| (op.to_owned(), arg))
                .collect(),
        )
    });
    let field_test = prop_oneof![2 => operand, 3 => ops];
    let flat = prop::collection::vec(
        (
            prop::sample::select(vec![
                "score",
                "plan",
                "survey.q1",
                "tags",
                "list.1",
                "org_id",
            ]),
            field_test,
        ),
        0..3,
    )
    .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    flat.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|c| json!({"$or": c})),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|c| json!({"$and": c})),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|c| json!({"$nor": c})),
            inner.clone().prop_map(|c| json!({"$not": c})),
            inner
                .clone()
                .prop_map(|c| json!({"tags": {"$elemMatch": c}})),
            (inner.clone(), inner).prop_map(|(a, b)| {
                let mut m = a.as_object().cloned().unwrap_or_default();
                m.extend(b.as_object().cloned().unwrap_or_default());
                Value::Object(m)
            }),
        ]
    })
}

/// Attributes as evaluation gets them: an object, mostly holding the fields
/// conditions ask about.
fn any_attributes() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (
            prop::sample::select(vec![
                "score", "plan", "survey", "tags", "list", "org_id", "x",
            ]),
            prop_oneof![3 => leaf(), 1 => any_json()],
        ),
        0..5,
    )
    .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

// -------------------------------------------------------------- documents

fn flag_base() -> Value {
    json!({"description": "orgs in code-review experiments", "enabled": true,
           "rules": [{"name": "early adopters", "condition": {"plan": {"$in": ["business", "enterprise"]}}, "rollout": 100},
                     {"name": "everyone else", "rollout": 12.34}]})
}

fn experiment_base() -> Value {
    json!({"description": "d", "status": "running", "eligibility_flag": null, "salt": "s",
           "coverage": 0.5, "sticky": false, "hash_by": "unit",
           "treatments": [{"name": "a", "weight": 1, "payload": {"model": "x"}}, {"name": "b", "weight": 2}],
           "cohorts": [{"alias": "c1", "name": "C1", "description": "", "capacity": 5}, {"alias": "c2"}],
           "variables": [{"name": "v", "default": 1, "cohort_values": {"c1": 2}}],
           "routing": {"groups": [
               {"name": "g1", "target_cohort": "c1", "require_acceptance": false,
                "composition": [{"id": "e1", "condition": {"score": {"$gte": 5}}, "min_count": 1, "max_count": 2}]},
               {"name": "g2", "require_acceptance": true,
                "composition": [{"id": "e1", "condition": {"score": {"$lt": 5}}, "min_count": 1, "max_count": 1},
                                {"id": "e2", "min_count": 1, "max_count": 3}]}],
               "balance": true, "wait_timeout_seconds": 60, "fallback_cohort": "c2"}})
}

/// Every JSON Pointer into `doc`, the whole document ("") included.
fn pointers(doc: &Value, at: String, out: &mut Vec<String>) {
    match doc {
        Value::Object(map) => {
            for (k, v) in map {
                pointers(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn all_pointers(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    pointers(doc, String::new(), &mut out);
    out
}

/// One change to a valid document at a field (any pointer into it):
/// replaced by an arbitrary value or a generated condition; replaced by an
/// edge value of its own type (so that the document often stays valid and
/// the edge reaches what runs after parsing); or removed.
#[derive(Debug, Clone)]
enum Change {
    Replace(prop::sample::Index, Value),
    SameType(prop::sample::Index, Value, String, bool),
    Remove(prop::sample::Index),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), any_json()).prop_map(|(i, v)| Change::Replace(i, v)),
        2 => (any::<prop::sample::Index>(), any_condition()).prop_map(|(i, v)| Change::Replace(i, v)),
        5 => (any::<prop::sample::Index>(), edge_number(), edge_string(), any::<bool>())
            .prop_map(|(i, n, s, b)| Change::SameType(i, n, s, b)),
        1 => any::<prop::sample::Index>().prop_map(Change::Remove),
    ]
}

/// Applies the changes in turn, each to a pointer of the document as it
/// then is.
fn mutate(mut doc: Value, changes: &[Change]) -> Value {
    for change in changes {
        let targets = all_pointers(&doc);
        match change {
            Change::Replace(i, value) => {
                if let Some(slot) = doc.pointer_mut(i.get(&targets).as_str()) {
                    *slot = value.clone();
                }
            }
            Change::SameType(i, number, string, boolean) => {
                if let Some(slot) = doc.pointer_mut(i.get(&targets).as_str()) {
                    match slot {
                        Value::Number(_) => *slot = number.clone(),
                        Value::String(_) => *slot = Value::from(string.as_str()),
                        Value::Bool(_) => *slot = Value::from(*boolean),
                        Value::Null => *slot = number.clone(),
                        // A container keeps its shape; its fields change
                        // through their own pointers.
                        Value::Array(_) | Value::Object(_) => {}
                    }
                }
            }
            Change::Remove(i) => {
                let target = i.get(&targets);
                let Some((parent, last)) = target.rsplit_once('/') else {
                    continue;
                };
                let last = last.replace("~1", "/").replace("~0", "~");
                match doc.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.shift_remove(&last);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = last.parse::<usize>() {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    doc
}

/// A flag document: the valid one with a few fields changed, or one made of
/// the flag's field names with arbitrary values, or anything at all.
fn flag_document() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::collection::vec(change(), 1..4).prop_map(|c| mutate(flag_base(), &c)),
        1 => prop::collection::vec(
            (prop::sample::select(vec!["description", "enabled", "rules"]), any_json()),
            0..4,
        )
        .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        4 => prop::collection::vec(
            (any_condition(), prop_oneof![3 => Just(json!(100)), 1 => edge_number()]),
            0..4,
        )
        .prop_map(|rules| json!({"rules": rules.into_iter()
            .map(|(c, r)| json!({"condition": c, "rollout": r})).collect::<Vec<_>>()})),
        1 => any_json(),
    ]
}

fn experiment_document() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::collection::vec(change(), 1..4).prop_map(|c| mutate(experiment_base(), &c)),
        2 => prop::collection::vec(
            (
                prop::sample::select(vec![
                    "status", "salt", "coverage", "sticky", "hash_by", "treatments", "cohorts",
                    "variables", "routing", "layout", "version",
                ]),
                any_json(),
            ),
            0..5,
        )
        .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        2 => prop::collection::vec((any::<bool>(), edge_number()), 0..5).prop_map(|weights| {
            let treatments: Vec<Value> = weights
                .iter()
                .enumerate()
                .map(|(i, (plain, w))| {
                    // Mostly well-formed weights, so that layouts get built.
                    let w = if *plain { json!(i) } else { w.clone() };
                    json!({"name": format!("t{i}"), "weight": w})
                })
                .collect();
            json!({"treatments": treatments, "coverage": 1})
        }),
        1 => any_json(),
    ]
}

// ------------------------------------------------------------- assertions

/// A problem path is "" or a JSON Pointer (RFC 6901: `~` only as `~0` or
/// `~1`) whose parent is in the document: it names the field to fix.
fn assert_pointer(path: &str, doc: &Value) -> Result<(), TestCaseError> {
    prop_assert!(
        path.is_empty() || path.starts_with('/'),
        "path {path:?} is not a JSON pointer"
    );
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            prop_assert!(
                matches!(chars.next(), Some('0' | '1')),
                "bad escape in {path:?}"
            );
        }
    }
    if let Some((parent, _)) = path.rsplit_once('/') {
        prop_assert!(
            doc.pointer(parent).is_some(),
            "the parent of {path:?} is not in the document"
        );
    }
    Ok(())
}

fn check_problems<T>(
    parsed: &Result<T, Vec<allot::domain::problem::Problem>>,
    doc: &Value,
) -> Result<(), TestCaseError> {
    if let Err(problems) = parsed {
        prop_assert!(!problems.is_empty(), "refused without a problem");
        for p in problems {
            assert_pointer(&p.path, doc)?;
            prop_assert!(!p.message.is_empty());
        }
    }
    Ok(())
}

const UNITS: [(&str, &str); 3] = [("42", "pr-1"), ("", ""), ("\u{0}", "🦀")];

/// Everything an accepted experiment does with requests, none of which may
/// panic: the decision steps, a rebalance from other ranges, a round trip
/// through stored ranges, and routing.
fn exercise_experiment(
    config: &ExperimentConfig,
    previous: &[Range],
    pool: &[Value],
) -> Result<(), TestCaseError> {
    let experiment = Experiment::new(config.clone(), config.layout_from(&[]));
    for eligible in [true, false] {
        for (org, unit) in UNITS {
            let pre = experiment.precheck(org, unit, |_| eligible);
            if let Precheck::Forced(t) = pre {
                prop_assert!(t < config.treatments.len());
            }
            let bucket = experiment.bucket(org, unit);
            prop_assert!(bucket < 10_000);
            if pre == Precheck::Continue {
                if let Some(t) = experiment.treatment_at(bucket) {
                    prop_assert!(t < config.treatments.len());
                    prop_assert!(experiment
                        .active_treatment(config.treatments[t].name.as_str())
                        .is_some());
                }
            }
        }
    }
    let ranges = experiment.ranges();
    let stored = Experiment::from_stored(config.clone(), &ranges);
    prop_assert!(
        stored.is_ok(),
        "its own ranges are refused: {:?}",
        stored.err()
    );
    let _ = config.layout_from(previous);

    if let Some(routing) = &experiment.routing {
        let refs: Vec<&Value> = pool.iter().collect();
        let formed = form_all(routing, &config.cohorts, &refs, &mut HashMap::new());
        for f in &formed {
            prop_assert!(f.seats.iter().all(|s| s.member < pool.len()));
        }
        plan_routing(config, routing, pool);
    }
    Ok(())
}

/// One routing transaction over the pool: the first member routes, the
/// others have been waiting since various times.
fn plan_routing(
    config: &ExperimentConfig,
    routing: &allot::domain::routing::CompiledRouting,
    pool: &[Value],
) {
    let now = datetime!(2026-01-01 00:00 UTC);
    let person = |i: usize, attributes: &Value, status| Participant {
        id: format!("p{i}"),
        status,
        attributes: attributes.clone(),
        cohort_id: None,
        group: None,
        entry: None,
        waiting_since: (status == lifecycle::ParticipantStatus::Waiting)
            .then(|| now - time::Duration::seconds(i as i64 * 30)),
        wait_seq: i as i64,
        updated_at: now,
        last_seen: now,
        accept_by: None,
    };
    let cohorts = config
        .cohorts
        .iter()
        .map(|d| Cohort {
            id: format!("def-{}", d.alias),
            alias: Some(d.alias.as_str().to_owned()),
            name: d.name.clone(),
            description: d.description.clone(),
            capacity: d.capacity,
            overflow_of: None,
            group: None,
            assigned: 0,
            pending: 0,
            completed: 0,
        })
        .collect();
    let state = State {
        now,
        seq: 1,
        cohorts,
        group_cohorts: HashMap::new(),
        waiting: pool
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, a)| person(i, a, lifecycle::ParticipantStatus::Waiting))
            .collect(),
        subjects: pool
            .first()
            .map(|a| person(0, a, lifecycle::ParticipantStatus::New))
            .into_iter()
            .collect(),
        expired: Vec::new(),
        backfill_windows: Vec::new(),
        stale: Vec::new(),
        reslot_all: true,
    };
    let study = Study {
        routing: Some(routing),
        cohorts: &config.cohorts,
    };
    let mut n = 0;
    let _ = lifecycle::plan(
        &study,
        state,
        &[
            ("p0".to_owned(), Operation::Route),
            (String::new(), Operation::Sweep),
        ],
        &mut || {
            n += 1;
            format!("gen-{n}")
        },
    );
}

fn key() -> Key {
    Key::parse("generated").unwrap()
}

proptest! {
    // About 8 s together in a debug build on two cores.
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_flag_document_is_accepted_or_refused_with_pointers_and_what_is_accepted_evaluates(
        doc in flag_document(),
        attributes in prop::collection::vec(any_attributes(), 1..4),
    ) {
        let parsed = FlagConfig::parse(&doc);
        check_problems(&parsed, &doc)?;
        if let Ok(config) = parsed {
            // What is served can be sent back unchanged (§1).
            let served = serde_json::to_value(&config).unwrap();
            let again = FlagConfig::parse(&served);
            prop_assert_eq!(again.as_ref(), Ok(&config), "served: {}", served);
            let flag = config.compile();
            for attrs in &attributes {
                for override_ in [None, Some(true)] {
                    let decision = flag.evaluate("generated", "42", override_, attrs);
                    if let Some(rule) = decision.rule {
                        prop_assert!(flag.config.rules.iter().any(|r| r.name.as_deref() == Some(rule)));
                    }
                }
            }
        }
    }

    #[test]
    fn any_experiment_document_is_accepted_or_refused_with_pointers_and_what_is_accepted_runs(
        doc in experiment_document(),
        previous in experiment_document(),
        pool in prop::collection::vec(any_attributes(), 0..6),
    ) {
        let parsed = ExperimentConfig::parse(&key(), &doc);
        check_problems(&parsed, &doc)?;
        if let Ok(config) = parsed {
            let served = serde_json::to_value(&config).unwrap();
            let again = ExperimentConfig::parse(&key(), &served);
            prop_assert_eq!(again.as_ref(), Ok(&config), "served: {}", served);
            // A previous version's ranges, as a rebalance starts from them.
            let previous = ExperimentConfig::parse(&key(), &previous)
                .map(|p| Experiment::new(p.clone(), p.layout_from(&[])).ranges())
                .unwrap_or_default();
            exercise_experiment(&config, &previous, &pool)?;
        }
    }

    #[test]
    fn any_condition_in_a_composition_entry_parses_or_is_refused_and_matching_never_panics(
        conditions in prop::collection::vec(any_condition(), 1..4),
        pool in prop::collection::vec(any_attributes(), 1..8),
    ) {
        let composition: Vec<Value> = conditions
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"id": format!("e{i}"), "condition": c, "min_count": 1, "max_count": 2}))
            .collect();
        let doc = json!({"cohorts": [{"alias": "c1", "capacity": 3}],
                         "routing": {"wait_timeout_seconds": 60, "groups": [
                             {"name": "g", "target_cohort": "c1", "composition": composition},
                             {"name": "h", "composition": [{"id": "any", "min_count": 2, "max_count": 2}]}]}});
        let parsed = ExperimentConfig::parse(&key(), &doc);
        check_problems(&parsed, &doc)?;
        if let Ok(config) = parsed {
            exercise_experiment(&config, &[], &pool)?;
        }
    }
}

/// The documents of the issue "Hardening", each of which used to hang, burn
/// seconds of CPU or store a value that later panicked.
#[test]
fn the_documents_of_the_hardening_issue_are_answered() {
    let overflowing = json!({"treatments": [{"name": "a", "weight": 1e305}]});
    let config = ExperimentConfig::parse(&key(), &overflowing).unwrap();
    assert_eq!(config.layout_from(&[]).counts_by_index(), vec![10_000]);

    let twins =
        json!({"treatments": [{"name": "a", "weight": 1e308}, {"name": "b", "weight": 1e308}]});
    let config = ExperimentConfig::parse(&key(), &twins).unwrap();
    assert_eq!(config.layout_from(&[]).counts_by_index(), vec![5000, 5000]);

    // 20 000 distinct values are over 64 KiB of JSON; 20 000 short ones fit
    // in it but are over the entry limit. Either way the limit is named.
    let distinct: Vec<u32> = (0..20_000).collect();
    let flag = json!({"rules": [{"condition": {"tags": {"$nin": distinct}}, "rollout": 100}]});
    let problems = FlagConfig::parse(&flag).unwrap_err();
    assert_eq!(problems[0].path, "/rules/0/condition");
    assert!(problems[0].message.contains("the limit is 65536"));
    let short = vec![0; 20_000];
    let flag = json!({"rules": [{"condition": {"tags": {"$nin": short}}, "rollout": 100}]});
    let problems = FlagConfig::parse(&flag).unwrap_err();
    assert_eq!(problems[0].path, "/rules/0/condition/tags/$nin");
    assert!(problems[0].message.contains("the limit is 10000"));

    for timeout in [json!(1_000_000_000_000u64), json!(u64::MAX)] {
        let study = json!({"routing": {"wait_timeout_seconds": timeout,
            "groups": [{"name": "g", "composition": [{"id": "e", "min_count": 1, "max_count": 1}]}]}});
        let problems = ExperimentConfig::parse(&key(), &study).unwrap_err();
        assert_eq!(problems[0].path, "/routing/wait_timeout_seconds");
    }
}

/// Keeps the object-building helpers honest: an object key that is a JSON
/// Pointer metacharacter still yields a pointer that resolves.
#[test]
fn pointers_of_a_document_all_resolve() {
    let doc = json!({"a/b": {"c~d": [1, {"": 2}]}, "x": null});
    for p in all_pointers(&doc) {
        assert!(doc.pointer(&p).is_some(), "{p}");
    }
}

/// Participant and assignment bodies made of arbitrary JSON, sent to the
/// real server on both stores: each is answered (200, 201) or refused
/// (422), never a 400 for valid JSON, never a 5xx; a registered
/// participant can then be routed.
async fn arbitrary_participant_and_assignment_bodies_are_answered_or_refused(
    backend: crate::helpers::Backend,
) {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let (_store, app) = crate::start!(backend);
    app.put(
        "/v1/experiments/g",
        json!({"treatments": [{"name": "a", "weight": 1}], "sticky": true,
               "cohorts": [{"alias": "c"}],
               "routing": {"groups": [{"name": "g", "target_cohort": "c",
                   "composition": [{"id": "x", "condition": {"score": {"$gte": 5}}, "min_count": 1, "max_count": 1}]}]}}),
    )
    .await
    .expect(201);
    let mut runner = TestRunner::deterministic();
    let strategy = any_json();
    let mut next = || {
        strategy
            .new_tree(&mut runner)
            .expect("a generated value")
            .current()
    };
    for i in 0..120 {
        let attributes = next();
        let path = format!("/v1/experiments/g/participants/p{i}");
        for body in [
            json!({"attributes": attributes.clone()}),
            attributes.clone(),
        ] {
            let answer = app.put(&path, body.clone()).await;
            let status = answer.status.as_u16();
            assert!(
                matches!(status, 200 | 201 | 422),
                "PUT {body} -> {status} {}",
                answer.body
            );
            if status == 201 {
                app.post(&format!("{path}/route"), json!({}))
                    .await
                    .expect(200);
            }
        }
        let assign = json!({"org_id": next(), "unit_id": next(), "attributes": next()});
        let answer = app.post("/v1/experiments/g/assign", assign.clone()).await;
        let status = answer.status.as_u16();
        assert!(
            matches!(status, 200 | 422),
            "assign {assign} -> {status} {}",
            answer.body
        );
    }
}

crate::on_both_stores!(arbitrary_participant_and_assignment_bodies_are_answered_or_refused);
