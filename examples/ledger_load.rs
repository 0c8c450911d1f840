//! Exposure-ledger benchmark for `bench/ledger.sh` (§8), against a store
//! named by URL (PostgreSQL in the script):
//!
//! 1. **Ingestion**: writes N new units (default 1 000 000) through
//!    `Store::record_exposures` in batches of B (default 50 000, half the
//!    default buffer, as the flusher writes them when woken early), and
//!    reports units per second.
//! 2. **Results**: times `Engine::results` for the phase holding them
//!    (versions, the maintained counters and the sample-ratio check), R
//!    times, and reports p50 and max.
//! 3. **Export**: reads the whole phase through the export's paged stream
//!    and reports rows per second and how much the process's peak resident
//!    memory grew while doing it.
//!
//! ```sh
//! cargo run --release --example ledger_load -- 'postgres://…' 1000000
//! ```

// A tool, not the service: a failure stops it with the message given.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use time::OffsetDateTime;

use allot::domain::ids::Key;
use allot::engine::Engine;
use allot::store::{self, ExposureRecord, Holdings, PoolOptions};

/// The process's peak resident memory so far, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: ledger_load <database url> [units] [batch] [results runs]");
    let units: usize = args.next().map_or(1_000_000, |a| a.parse().expect("units"));
    let batch: usize = args.next().map_or(50_000, |a| a.parse().expect("batch"));
    let runs: usize = args.next().map_or(20, |a| a.parse().expect("runs"));
    let pool = PoolOptions {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
    };
    let store = store::open(&url, &pool).await.expect("store");
    store.migrate().await.expect("migrate");
    let engine = Arc::new(Engine::load(Arc::clone(&store)).await.expect("engine"));
    let key = Key::parse("ledger-bench").unwrap();
    engine
        .put_experiment(
            &key,
            &json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}),
            None,
            None,
        )
        .await
        .expect("experiment");
    let experiment: Arc<str> = Arc::from("ledger-bench");

    let started = Instant::now();
    let mut written = 0;
    while written < units {
        let n = batch.min(units - written);
        let now = OffsetDateTime::now_utc();
        let records: Vec<ExposureRecord> = (written..written + n)
            .map(|i| ExposureRecord {
                experiment: Arc::clone(&experiment),
                phase: 1,
                org_id: format!("org-{}", i % 1000),
                unit_id: format!("pr-{i}"),
                treatment: if i % 2 == 0 { "a" } else { "b" }.to_owned(),
                bucket: Some(u16::try_from(i % 10_000).unwrap()),
                reason: "assigned",
                first_seen: now,
            })
            .collect();
        // As the flusher writes: this replica holds nothing afterwards.
        let holdings = Holdings {
            replica: Arc::from("ledger-bench"),
            held: Vec::new(),
            now_ms: 0,
            stale_before_ms: 0,
        };
        store
            .record_exposures(&records, &[], &holdings)
            .await
            .expect("write");
        written += n;
    }
    let took = started.elapsed();
    println!(
        "ingestion: {units} new units in {:.2} s = {:.0} units/s (batches of {batch})",
        took.as_secs_f64(),
        units as f64 / took.as_secs_f64()
    );

    let mut times = Vec::with_capacity(runs);
    let mut phase_units = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let results = engine.results("ledger-bench").await.expect("results");
        times.push(t.elapsed());
        phase_units = results.phases[0].units;
    }
    times.sort();
    println!(
        "results: phase of {phase_units} units, p50 {:.2} ms, max {:.2} ms over {runs} reads",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );

    let before = peak_rss_kib();
    let t = Instant::now();
    let mut rows = 0usize;
    let mut stream = std::pin::pin!(engine.ledger_rows("ledger-bench", 1));
    while let Some(row) = stream.next().await {
        row.expect("row");
        rows += 1;
    }
    let took = t.elapsed();
    let after = peak_rss_kib();
    println!(
        "export: {rows} rows in {:.2} s = {:.0} rows/s; peak RSS {} MiB before, {} MiB after (+{} KiB)",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        before / 1024,
        after / 1024,
        after.saturating_sub(before)
    );
}
