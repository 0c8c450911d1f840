//! The store contract: what every `Store` implementation must do, checked
//! against `dyn Store` on both backends, without the engine or HTTP in
//! between. A new backend passes these before anything else.

use std::sync::Arc;

use allot::domain::precondition::Precondition;
use allot::store::{CatchUp, ExperimentRecord, FlagRecord, NewVersion, Plan, Store, StoreError};
use serde_json::{json, Value};

use crate::helpers::{Backend, TestStore};
use crate::on_both_stores;

async fn open(backend: Backend) -> Option<(TestStore, Arc<dyn Store>)> {
    let test = TestStore::new(backend).await?;
    let store = allot::store::open(&test.url, &test.settings().pool_options())
        .await
        .expect("open the store");
    store.migrate().await.expect("migrate");
    Some((test, store))
}

/// Writes `doc` as the flag's next version, whatever is stored.
async fn put_flag(store: &dyn Store, key: &str, doc: Value) -> Option<allot::store::FlagWritten> {
    let plan = move |_: Option<&FlagRecord>| Plan::Write(doc.clone());
    store
        .write_flag(key, &plan, None)
        .await
        .expect("write flag")
}

fn version(config: Value, actor: &str) -> NewVersion {
    NewVersion {
        config,
        layout: json!([]),
        eligibility_flag: None,
        actor: Some(actor.to_owned()),
        starts_phase: false,
        cohorts: Vec::new(),
    }
}

async fn put_experiment(store: &dyn Store, key: &str, config: Value) -> ExperimentRecord {
    let plan = move |_: Option<&ExperimentRecord>| Plan::Write(version(config.clone(), "t"));
    store
        .write_experiment(key, &plan)
        .await
        .expect("write experiment")
        .expect("written")
        .record
}

/// A planner sees the live version under the lock; abandoning writes
/// nothing and uses no revision; a deletion is a version and the key's
/// versions continue; If-Match on a deletion is checked in the transaction.
async fn flag_versions_and_deletion(backend: Backend) {
    let Some((_test, store)) = open(backend).await else {
        return;
    };
    let first = put_flag(&*store, "f", json!({"enabled": true}))
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.record.version, 1);

    let seen = std::sync::Mutex::new(None);
    let abandon = |current: Option<&FlagRecord>| {
        *seen.lock().unwrap() = current.map(|c| c.version);
        Plan::Abandon
    };
    assert!(store
        .write_flag("f", &abandon, None)
        .await
        .unwrap()
        .is_none());
    assert_eq!(*seen.lock().unwrap(), Some(1));
    assert_eq!(store.revision().await.unwrap(), first.revision);

    let stale = Precondition::parse("\"7\"").unwrap();
    match store.delete_flag("f", Some(&stale), None).await {
        Err(StoreError::VersionMismatch { current }) => assert_eq!(current, Some(1)),
        other => panic!("a stale If-Match deleted: {other:?}"),
    }
    store.delete_flag("f", None, None).await.unwrap();
    assert!(matches!(
        store.delete_flag("f", None, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_override("f", "42", true, None).await,
        Err(StoreError::NotFound)
    ));
    let again = put_flag(&*store, "f", json!({"enabled": false}))
        .await
        .unwrap();
    assert!(again.created, "a deleted flag's key is created afresh");
    assert_eq!(again.record.version, 3, "after the deletion's version 2");
    assert!(
        again.record.created_at > first.record.created_at,
        "created afresh, not at the first incarnation's time"
    );
    let next = put_flag(&*store, "f", json!({"enabled": true}))
        .await
        .unwrap();
    assert!(!next.created);
    assert_eq!(next.record.created_at, again.record.created_at);
}

/// Versions of every incarnation, newest first, the deletion among them
/// with its actor; a new incarnation continues the numbering.
async fn experiment_versions_and_deletion(backend: Backend) {
    let Some((_test, store)) = open(backend).await else {
        return;
    };
    let one = put_experiment(&*store, "e", json!({"n": 1})).await;
    put_experiment(&*store, "e", json!({"n": 2})).await;
    store
        .delete_experiment("e", None, Some("ops"))
        .await
        .unwrap();
    assert!(matches!(
        store.delete_experiment("e", None, None).await,
        Err(StoreError::NotFound)
    ));
    let two = put_experiment(&*store, "e", json!({"n": 3})).await;
    assert_ne!(one.id, two.id, "a new incarnation");
    assert_eq!(two.version, 4);
    let versions = store.experiment_versions("e").await.unwrap();
    let listed: Vec<(i64, bool)> = versions.iter().map(|v| (v.version, v.deleted)).collect();
    assert_eq!(listed, vec![(4, false), (3, true), (2, false), (1, false)]);
    assert_eq!(versions[1].actor.as_deref(), Some("ops"));
    assert_eq!(versions[1].config, "null");
    assert!(matches!(
        store.experiment_versions("never").await,
        Err(StoreError::NotFound)
    ));
}

/// Catching up: nothing after the current revision; one write is one
/// changed entity; a revision bumped without a record is a full reload.
async fn catching_up(backend: Backend) {
    let Some((test, store)) = open(backend).await else {
        return;
    };
    put_flag(&*store, "f", json!({"enabled": true})).await;
    let now = store.revision().await.unwrap();
    assert!(matches!(store.catch_up(now).await.unwrap(), CatchUp::Current(r) if r == now));

    put_experiment(&*store, "e", json!({"n": 1})).await;
    store.set_override("f", "42", true, None).await.unwrap();
    match store.catch_up(now).await.unwrap() {
        CatchUp::Delta(delta) => {
            assert_eq!(delta.revision, now + 2);
            assert_eq!(delta.experiments.len(), 1);
            assert_eq!(delta.experiments[0].0, "e");
            assert!(delta.experiments[0].1.is_some());
            assert_eq!(delta.overrides, vec![("f".into(), "42".into(), Some(true))]);
            assert!(delta.flags.is_empty());
        }
        other => panic!("expected a delta, got {other:?}"),
    }
    store.delete_experiment("e", None, None).await.unwrap();
    match store.catch_up(now + 2).await.unwrap() {
        CatchUp::Delta(delta) => {
            assert_eq!(delta.experiments.len(), 1);
            assert_eq!(delta.experiments[0].0, "e");
            assert!(delta.experiments[0].1.is_none(), "deleted");
        }
        other => panic!("expected a delta, got {other:?}"),
    }

    test.execute("UPDATE config_revision SET revision = revision + 1 WHERE id = 1")
        .await;
    match store.catch_up(now + 3).await.unwrap() {
        CatchUp::Full(loaded) => {
            assert_eq!(loaded.revision, now + 4);
            assert_eq!(loaded.flags.len(), 1);
            assert!(loaded.experiments.is_empty());
        }
        other => panic!("expected a full reload, got {other:?}"),
    }

    // A flag's change brings the flag with every override; a deleted one is
    // absent; several entities of each kind come in one delta.
    let before = store.revision().await.unwrap();
    put_flag(&*store, "g", json!({"enabled": true})).await;
    store.set_override("g", "1", true, None).await.unwrap();
    store.set_override("g", "2", false, None).await.unwrap();
    put_flag(&*store, "g", json!({"enabled": false})).await;
    store.delete_flag("f", None, None).await.unwrap();
    put_experiment(&*store, "x", json!({"n": 1})).await;
    put_experiment(&*store, "y", json!({"n": 1})).await;
    match store.catch_up(before).await.unwrap() {
        CatchUp::Delta(delta) => {
            let mut flags: Vec<(String, Option<usize>)> = delta
                .flags
                .iter()
                .map(|(k, r)| (k.clone(), r.as_ref().map(|(_, o)| o.len())))
                .collect();
            flags.sort();
            assert_eq!(flags, vec![("f".into(), None), ("g".into(), Some(2))]);
            assert!(delta.overrides.is_empty(), "covered by the flag's reload");
            let mut experiments: Vec<&str> =
                delta.experiments.iter().map(|(k, _)| k.as_str()).collect();
            experiments.sort_unstable();
            assert_eq!(experiments, vec!["x", "y"]);
            assert!(delta.experiments.iter().all(|(_, r)| r.is_some()));
        }
        other => panic!("expected a delta, got {other:?}"),
    }
}

/// Participant and sticky writes check the stored experiment: a deleted one
/// takes neither, and the first sticky write wins.
async fn writes_check_the_stored_experiment(backend: Backend) {
    let Some((_test, store)) = open(backend).await else {
        return;
    };
    let e = put_experiment(&*store, "e", json!({"n": 1})).await;
    let (_, created) = store.register(&e.id, "p", &json!({})).await.unwrap();
    assert!(created);
    let (_, created) = store.register(&e.id, "p", &json!({"a": 1})).await.unwrap();
    assert!(!created);
    let won = store
        .sticky_claim(&e.id, "o", "u", "x", e.version, None)
        .await
        .unwrap();
    assert_eq!(won, "x");
    let kept = store
        .sticky_claim(&e.id, "o", "u", "y", e.version, None)
        .await
        .unwrap();
    assert_eq!(kept, "x", "first write wins");

    store.delete_experiment("e", None, None).await.unwrap();
    assert!(matches!(
        store.register(&e.id, "q", &json!({})).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.register(&e.id, "p", &json!({"a": 2})).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .sticky_claim(&e.id, "o", "v", "x", e.version, None)
            .await,
        Err(StoreError::NotFound)
    ));
    let rows = vec![("o".to_owned(), "w".to_owned(), "x".to_owned())];
    store
        .sticky_insert_many(&e.id, e.version, &rows)
        .await
        .unwrap();
    let keys = vec![("o".to_owned(), "w".to_owned())];
    assert!(store
        .sticky_get_many(&e.id, &keys)
        .await
        .unwrap()
        .is_empty());
    assert!(store.participant(&e.id, "q").await.unwrap().is_none());
}

on_both_stores!(
    flag_versions_and_deletion,
    experiment_versions_and_deletion,
    catching_up,
    writes_check_the_stored_experiment,
);
