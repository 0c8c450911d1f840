//! In-process assignment throughput (criterion).
//!
//! * `decision`: the pure rules alone: flag gate with a condition, bucket
//!   hash, layout lookup.
//! * `engine_assign`: `Engine::assign` for a non-sticky experiment, as the
//!   HTTP handler calls it (snapshot read, request parsing excluded, answer
//!   built), over an SQLite store that it never touches on this path.
//! * `condition_worst`: one condition evaluation at the limits of §1
//!   (a condition of at most 64 KiB, `$in`-style lists of at most 10 000
//!   entries, attributes of at most 16 KiB): the inputs that make each
//!   operator do the most work it can; and the write-time cost of a condition
//!   made of patterns that compile large.

// A tool, not the service: a failure stops it with the message given.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use allot::domain::condition::{self, Condition};
use allot::domain::experiment::{Experiment, ExperimentConfig, Precheck};
use allot::domain::flag::FlagConfig;
use allot::domain::ids::{Id, Key};
use allot::domain::limits;
use allot::engine::assign::AssignRequest;
use allot::engine::Engine;
use allot::store::{self, PoolOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Map, Value};

const FLAG: &str = "organizations:code-review-experiments-enabled";

fn flag_doc() -> Value {
    json!({"rules": [{"name": "early adopters", "condition": {"plan": {"$in": ["business", "enterprise"]}}, "rollout": 100},
                     {"name": "everyone else", "rollout": 10}]})
}

fn experiment_doc() -> Value {
    json!({"eligibility_flag": FLAG, "salt": "code-review",
           "treatments": [{"name": "noop", "weight": 1}, {"name": "cost-optimized", "weight": 1}, {"name": "deep", "weight": 2}]})
}

fn decision(c: &mut Criterion) {
    let key = Key::parse("code-review").expect("key");
    let config = ExperimentConfig::parse(&key, &experiment_doc()).expect("config");
    let layout = config.layout_from(&[]);
    let experiment = Experiment::new(config, layout);
    let flag = FlagConfig::parse(&flag_doc()).expect("flag").compile();
    let units: Vec<String> = (0..1024).map(|i| format!("getsentry/sentry#{i}")).collect();
    let attributes = json!({"plan": "business", "org_id": "42"});
    let mut group = c.benchmark_group("assign");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("decision", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let pre = experiment.precheck("42", &units[i], |k| {
                flag.evaluate(k.as_str(), "42", None, &attributes).enabled
            });
            let treatment = match pre {
                Precheck::Continue => experiment.treatment_at(experiment.bucket("42", &units[i])),
                Precheck::Forced(t) => Some(t),
                Precheck::Out(_) => None,
            };
            black_box(treatment)
        });
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = runtime.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let options = PoolOptions {
            max_connections: 2,
            acquire_timeout: std::time::Duration::from_secs(5),
        };
        let store = store::open(&url, &options).await.expect("store");
        store.migrate().await.expect("migrate");
        let engine = Arc::new(Engine::load(store).await.expect("engine"));
        engine
            .put_flag(&Key::parse(FLAG).expect("key"), &flag_doc(), None, None)
            .await
            .expect("flag");
        engine
            .put_experiment(
                &Key::parse("code-review").expect("key"),
                &experiment_doc(),
                None,
                None,
            )
            .await
            .expect("experiment");
        engine
    });
    let org = Id::parse("42").expect("id");
    let mut plan = Map::new();
    plan.insert("plan".into(), json!("business"));
    group.bench_function("engine_assign", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let request = AssignRequest {
                org_id: org.clone(),
                unit_id: Id::parse(&units[i]).expect("id"),
                attributes: plan.clone(),
            };
            black_box(
                runtime
                    .block_on(engine.assign("code-review", request))
                    .expect("assigned"),
            )
        });
    });
    group.finish();
}

/// `n` copies of `value` as a JSON array.
fn copies(value: Value, n: usize) -> Vec<Value> {
    vec![value; n]
}

/// A distinct short string per index (base 62), so 10 000 of them fit in a
/// 64 KiB condition.
fn short_name(mut i: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[i % 62]);
        i /= 62;
        if i == 0 {
            break;
        }
    }
    String::from_utf8(out).expect("ascii")
}

/// The condition `make(n)` for the largest `n` that validation accepts
/// (within the size and evaluation-work limits), found by bisection.
fn largest(make: impl Fn(usize) -> Value) -> Value {
    let (mut ok, mut refused) = (1, 100_000);
    while refused - ok > 1 {
        let mid = (ok + refused) / 2;
        if condition::validate(&make(mid), "").is_empty() {
            ok = mid;
        } else {
            refused = mid;
        }
    }
    make(ok)
}

/// (name, condition, attributes): each the worst input for one operator
/// that the limits allow. Every one ends with a full scan: no early exit.
fn worst_conditions() -> Vec<(&'static str, Value, Value)> {
    // 8 180 small numbers: about the most array items 16 KiB of JSON holds.
    let zeros = |last: Value| {
        let mut items = copies(json!(0), 8179);
        items.push(last);
        Value::Array(items)
    };
    let letters = |last: Value| {
        let mut items = copies(json!("-"), 4090);
        items.push(last);
        Value::Array(items)
    };
    let and = |clause: Value, n: usize| json!({"$and": copies(clause, n)});
    // The most clauses the limits (size and evaluation work) let through.
    let and_at_limit = |clause: Value| largest(|n| and(clause.clone(), n));
    vec![
        (
            "nin_10k_numbers_vs_8k_numbers",
            json!({"a": {"$nin": (1..=10_000).collect::<Vec<u32>>()}}),
            json!({"a": zeros(json!(0))}),
        ),
        (
            "nini_10k_strings_vs_4k_strings",
            json!({"a": {"$nini": (0..10_000).map(short_name).collect::<Vec<_>>()}}),
            json!({"a": letters(json!("-"))}),
        ),
        (
            "all_10k_numbers_vs_8k_numbers",
            json!({"a": {"$all": copies(json!(5), 10_000)}}),
            json!({"a": zeros(json!(5))}),
        ),
        (
            "alli_10k_strings_vs_4k_strings",
            json!({"a": {"$alli": copies(json!("X"), 10_000)}}),
            json!({"a": letters(json!("x"))}),
        ),
        (
            "all_operator_tests_at_the_limit_vs_8k_numbers",
            largest(|n| json!({"a": {"$all": copies(json!({"$gt": 0}), n)}})),
            json!({"a": zeros(json!(1))}),
        ),
        (
            "and_of_nin_clauses_at_the_limit_vs_8k_numbers",
            and_at_limit(json!({"a": {"$nin": [1]}})),
            json!({"a": zeros(json!(0))}),
        ),
        (
            // A field next to `$or` makes it a condition, not an operator test.
            "elem_match_or_at_the_limit_vs_2000_objects",
            largest(
                |n| json!({"a": {"$elemMatch": {"b": {"$exists": true}, "$or": (1..=n).map(|k| json!({"b": k})).collect::<Vec<_>>()}}}),
            ),
            json!({"a": copies(json!({"b": 0}), 2000)}),
        ),
        (
            "and_of_version_tests_at_the_limit_vs_16k_version",
            and_at_limit(json!({"v": {"$vlt": "2.0.0"}})),
            json!({"v": "1.".repeat(8000)}),
        ),
        (
            "regex_vs_16k_nested_array",
            json!({"a": {"$regex": "^(0,)*z"}}),
            json!({"a": (0..30).fold(json!(copies(json!(0), 8150)), |inner, _| json!([inner]))}),
        ),
    ]
}

fn conditions(c: &mut Criterion) {
    let mut group = c.benchmark_group("condition_worst");
    group.sample_size(10);
    for (name, cond, attributes) in worst_conditions() {
        // The inputs are inside the limits, or the figure would mean nothing.
        assert!(
            condition::validate(&cond, "").is_empty(),
            "{name}: condition refused: {:?}",
            condition::validate(&cond, "")
        );
        assert!(limits::json_size(&cond) <= limits::MAX_CONDITION_BYTES);
        limits::check_attributes(&attributes).expect(name);
        let compiled = Condition::compile(&cond);
        group.bench_function(name, |b| {
            b.iter(|| black_box(compiled.matches(&attributes)));
        });
    }
    // Write time: 64 KiB of patterns that each compile to about a megabyte.
    let heavy: Vec<Value> = (0..2300)
        .map(|i| json!({"a": {"$regex": format!("\\w{{20}}{}", i % 10)}}))
        .collect();
    let heavy = json!({"$and": heavy});
    assert!(limits::json_size(&heavy) <= limits::MAX_CONDITION_BYTES);
    group.bench_function("validate_2300_unicode_word_patterns", |b| {
        b.iter(|| black_box(condition::validate(&heavy, "")));
    });
    group.bench_function("compile_2300_unicode_word_patterns", |b| {
        b.iter(|| black_box(Condition::compile(&heavy)));
    });
    // A whole flag at the evaluation-work limit: every rule scans the
    // largest array and none matches, so an evaluation tries them all.
    let scan = json!({"a": {"$elemMatch": {"$gt": 1}}});
    let flag =
        |n: usize| json!({"rules": copies(json!({"condition": scan.clone(), "rollout": 100}), n)});
    let (mut ok, mut refused) = (1, 10_000);
    while refused - ok > 1 {
        let mid = (ok + refused) / 2;
        if FlagConfig::parse(&flag(mid)).is_ok() {
            ok = mid;
        } else {
            refused = mid;
        }
    }
    let heavy_flag = FlagConfig::parse(&flag(ok))
        .expect("within the limits")
        .compile();
    let attributes = json!({"org_id": "1", "a": (0..8180).map(|_| json!(0)).collect::<Vec<_>>()});
    limits::check_attributes(&attributes).expect("within the limits");
    group.bench_function(format!("flag_of_{ok}_scanning_rules_at_the_limit"), |b| {
        b.iter(|| black_box(heavy_flag.evaluate("k", "1", None, &attributes)));
    });
    group.finish();
}

criterion_group!(benches, decision, conditions);
criterion_main!(benches);
