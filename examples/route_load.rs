//! Load generator for `bench/routing.sh`: registers and routes participants
//! against a running allot with many concurrent clients, then reports routing
//! calls per second and latencies (all calls, and the calls that formed a
//! group: the time from the last member's arrival to its group's formation).
//!
//! `cargo run --release --example route_load -- http://127.0.0.1:18183 3000 32 [preload]`
//! Only ever point it at a server on this machine.
//!
//! Scores cycle through ten values, one of which (6) fits no group: one
//! participant in ten is unmatchable and waits. `preload` participants who
//! fit no group are routed first, untimed, to measure a route against a
//! large waiting pool.

// A tool, not the service: a failure stops it with the message given.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:18183".into());
    let total: usize = args.next().map_or(Ok(3000), |s| s.parse())?;
    let clients: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let preload: usize = args.next().map_or(Ok(0), |s| s.parse())?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;

    let study = json!({
        "cohorts": [{"alias": "arm-pro-ai", "name": "Pro-AI Study Arm", "capacity": 50},
                    {"alias": "arm-skeptic", "name": "AI-Skeptic Arm"}],
        "variables": [{"name": "persona", "default": "control", "cohort_values": {"arm-pro-ai": "pro_ai", "arm-skeptic": "skeptic"}}],
        "routing": {"groups": [
            {"name": "High Scorers", "target_cohort": "arm-pro-ai",
             "composition": [{"id": "high", "condition": {"score": {"$gte": 9}}, "min_count": 1, "max_count": 5}]},
            {"name": "Mixed Group", "require_acceptance": true,
             "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 2, "max_count": 2},
                             {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 2, "max_count": 2}]}],
            "wait_timeout_seconds": 600, "fallback_cohort": "arm-skeptic"}});
    let key = format!("load-{}", std::process::id());
    let status = client
        .put(format!("{base}/v1/experiments/{key}"))
        .json(&study)
        .send()
        .await?
        .status();
    if !status.is_success() {
        return Err(format!("creating the study answered {status}").into());
    }

    let base = Arc::new(format!("{base}/v1/experiments/{key}/participants"));
    let mut loaders = Vec::new();
    for c in 0..clients.min(preload.max(1)) {
        let (client, base) = (client.clone(), Arc::clone(&base));
        loaders.push(tokio::spawn(async move {
            let mut i = c;
            while i < preload {
                let url = format!("{base}/idle{i}");
                let ok = client
                    .put(&url)
                    .json(&json!({"attributes": {"score": 6}}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                    && client
                        .post(format!("{url}/route"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                assert!(ok, "preloading participant {i} failed");
                i += clients;
            }
        }));
    }
    for l in loaders {
        l.await?;
    }
    if preload > 0 {
        println!("preloaded {preload} waiting participants who fit no group");
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, base) = (client.clone(), Arc::clone(&base));
        tasks.push(tokio::spawn(async move {
            let mut route_ms = Vec::new();
            let mut formed_ms = Vec::new();
            let mut errors = 0usize;
            let mut i = c;
            while i < total {
                let id = format!("p{i}");
                let score = [10, 8, 2, 6, 7, 1, 9, 3, 8, 2][i % 10];
                let url = format!("{base}/{id}");
                let ok = client
                    .put(&url)
                    .json(&json!({"attributes": {"score": score}}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                let t = Instant::now();
                let routed = client.post(format!("{url}/route")).send().await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                match routed {
                    Ok(r) if ok && r.status().is_success() => {
                        route_ms.push(ms);
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        if body["status"] != "waiting" {
                            formed_ms.push(ms);
                        }
                    }
                    _ => errors += 1,
                }
                i += clients;
            }
            (route_ms, formed_ms, errors)
        }));
    }
    let (mut route_ms, mut formed_ms, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (r, f, e) = t.await?;
        route_ms.extend(r);
        formed_ms.extend(f);
        errors += e;
    }
    let elapsed = started.elapsed();
    report(
        total,
        clients,
        elapsed,
        &mut route_ms,
        &mut formed_ms,
        errors,
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(
    total: usize,
    clients: usize,
    elapsed: Duration,
    route_ms: &mut [f64],
    formed_ms: &mut [f64],
    errors: usize,
) {
    route_ms.sort_by(f64::total_cmp);
    formed_ms.sort_by(f64::total_cmp);
    let secs = elapsed.as_secs_f64();
    println!("participants {total}, clients {clients}, errors {errors}, {secs:.2} s (each participant: register + route)");
    println!("route calls/s      {:.0}", route_ms.len() as f64 / secs);
    println!(
        "route latency      p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(route_ms, 0.5),
        percentile(route_ms, 0.99),
        route_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "arrival→formation  p50 {:.1} ms  p99 {:.1} ms  ({} calls formed a group)",
        percentile(formed_ms, 0.5),
        percentile(formed_ms, 0.99),
        formed_ms.len()
    );
}
