//! In-process assignment throughput (criterion).
//!
//! * `decision`: the pure rules alone: flag gate with a condition, bucket
//!   hash, layout lookup.
//! * `engine_assign`: `Engine::assign` for a non-sticky experiment, as the
//!   HTTP handler calls it (snapshot read, request parsing excluded, answer
//!   built), over an SQLite store that it never touches on this path.

use std::hint::black_box;
use std::sync::Arc;

use allot::domain::experiment::{Experiment, ExperimentConfig, Precheck};
use allot::domain::flag::FlagConfig;
use allot::domain::ids::{Id, Key};
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
            let pre =
                experiment.precheck(|k| flag.evaluate(k.as_str(), "42", None, &attributes).enabled);
            let treatment = match pre {
                Precheck::Continue => experiment.treatment_at(experiment.bucket("42", &units[i])),
                Precheck::Out(_) => None,
            };
            black_box(treatment)
        })
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
            .put_flag(FLAG, &flag_doc(), None)
            .await
            .expect("flag");
        engine
            .put_experiment("code-review", &experiment_doc(), None, None)
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
        })
    });
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
