//! Long-poll benchmark for `bench/longpoll.sh`: two allot replicas on one
//! PostgreSQL, A and B (§5 "Waiting for a change").
//!
//! 1. Wake-up delay across replicas, S samples: a participant routed on A
//!    (waiting) long-polls A; once the poll is held (A has recorded the
//!    poll's sign of life in `last_seen`, which B's lobby listing shows), a
//!    partner routed on B forms their pair. The delay is the time from B's
//!    answer to A's answer to the poll, both read by this process.
//! 2. Memory per held long-poll: N participants wait on A (registered and
//!    routed by 64 clients); A's RSS is read, then N long-polls
//!    (`wait_seconds=60`) are opened on A, R a second, and held until A has
//!    recorded every one; A's RSS is read again. A starter routed on B then
//!    forms one group of all of them, and every poll must answer `assigned`
//!    (not the 60 s expiry): how long after B's answer is reported too.
//!
//! ```sh
//! cargo run --release --example longpoll -- http://127.0.0.1:18311 http://127.0.0.1:18312 <A's pid> 300 10000
//! ```
//!
//! Arguments: A's base URL, B's base URL, A's process id (its RSS is read
//! from /proc), S (default 300), N (default 10000), the rate at which the N
//! polls are opened, per second (default 1000). Only loopback addresses
//! are accepted. Exits 1 if a sample or a poll went wrong, 2 if it could not
//! run; prints a `RESULT` line for the script.

// A tool, not the service: a failure stops it with the message given.
#![allow(clippy::expect_used, clippy::unwrap_used)]
// Its exit code is its verdict (0 pass, 1 fail, 2 could not run).
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Clients registering the participants of part 2.
const REGISTERING: usize = 64;
/// Part 2 opens its polls in steps of a tenth of the rate asked, one step
/// each this often: every poll arriving costs A a write (its sign of life)
/// and a few reads, and a burst beyond what the store pool serves within
/// `db_acquire_timeout_ms` is answered 503.
const OPEN_PAUSE: Duration = Duration::from_millis(100);
/// How long part 2 waits for A to have recorded every poll.
const HOLD_WITHIN: Duration = Duration::from_secs(40);

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("longpoll: {e}");
            std::process::exit(2);
        }
    }
}

struct Options {
    a: String,
    b: String,
    pid: u32,
    samples: usize,
    held: usize,
    open_rate: usize,
}

fn options() -> Result<Options, String> {
    let usage = "usage: longpoll <A base URL> <B base URL> <A's pid> [samples S=300] [held polls N=10000] [opened per second R=1000]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = args.first().ok_or(usage)?;
    let b = args.get(1).ok_or(usage)?;
    for base in [a, b] {
        loopback(base)?;
    }
    let number = |i: usize, default: usize| -> Result<usize, String> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().map_err(|_| format!("not a count: {s}\n{usage}"))
        })
    };
    Ok(Options {
        a: a.trim_end_matches('/').to_owned(),
        b: b.trim_end_matches('/').to_owned(),
        pid: args
            .get(2)
            .ok_or(usage)?
            .parse()
            .map_err(|_| format!("not a process id\n{usage}"))?,
        samples: number(3, 300)?,
        held: number(4, 10_000)?.max(1),
        open_rate: number(5, 1000)?.max(10),
    })
}

/// This drives load at a server: only ever one on this machine.
fn loopback(base: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(base).map_err(|e| format!("{base}: {e}"))?;
    let host = url.host_str().unwrap_or_default();
    let ip = host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .ok();
    if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
        Ok(())
    } else {
        Err(format!("{base}: only loopback addresses, please"))
    }
}

/// The resident set of a process, in bytes.
fn rss(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let mut request = client.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{method} {url}: {status} {body}"));
    }
    Ok(body)
}

async fn put_experiment(client: &reqwest::Client, url: &str, doc: &Value) -> Result<(), String> {
    call(client, reqwest::Method::PUT, url, Some(doc))
        .await
        .map(|_| ())
}

/// Registers and routes a participant: its answer to the route.
async fn arrive(client: &reqwest::Client, url: &str, attributes: &Value) -> Result<Value, String> {
    call(
        client,
        reqwest::Method::PUT,
        url,
        Some(&json!({"attributes": attributes})),
    )
    .await?;
    call(client, reqwest::Method::POST, &format!("{url}/route"), None).await
}

/// Every waiting participant of an experiment, by id, with its `last_seen`.
async fn lobby(
    client: &reqwest::Client,
    participants: &str,
) -> Result<HashMap<String, String>, String> {
    let mut seen = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{participants}?status=waiting&limit=1000");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page = call(client, reqwest::Method::GET, &url, None).await?;
        for p in page["participants"].as_array().into_iter().flatten() {
            seen.insert(
                p["participant_id"].as_str().unwrap_or_default().to_owned(),
                p["last_seen"].as_str().unwrap_or_default().to_owned(),
            );
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(seen),
        }
    }
}

/// One held long-poll: when its answer was read, and the status answered.
async fn long_poll(client: reqwest::Client, url: String) -> Result<(Instant, String), String> {
    let body = call(&client, reqwest::Method::GET, &url, None).await?;
    Ok((
        Instant::now(),
        body["status"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn since(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        later.duration_since(earlier).as_secs_f64() * 1000.0
    } else {
        -(earlier.duration_since(later).as_secs_f64() * 1000.0)
    }
}

async fn run() -> Result<bool, String> {
    let o = options()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| e.to_string())?;
    let run = std::process::id();
    let mut ok = true;

    // 1. Wake-up delay across replicas.
    let pairs = format!("lp-wake-{run}");
    put_experiment(
        &client,
        &format!("{}/v1/experiments/{pairs}", o.a),
        &json!({"routing": {"groups": [{"name": "Pair",
            "composition": [{"id": "any", "min_count": 2, "max_count": 2}]}]}}),
    )
    .await?;
    let (on_a, on_b) = (
        format!("{}/v1/experiments/{pairs}/participants", o.a),
        format!("{}/v1/experiments/{pairs}/participants", o.b),
    );
    let mut delays = Vec::with_capacity(o.samples);
    let mut bad = 0usize;
    for i in 0..o.samples {
        let first = format!("{on_a}/w{i}");
        let routed = arrive(&client, &first, &json!({})).await?;
        if routed["status"] != "waiting" {
            return Err(format!("w{i} was not left waiting: {routed}"));
        }
        let before = routed["last_seen"].as_str().unwrap_or_default().to_owned();
        let poll = tokio::spawn(long_poll(
            client.clone(),
            format!("{first}?wait_seconds=30&status=waiting"),
        ));
        // Held once A has recorded it (the poll marks its participant seen
        // just before it registers to be woken), read through B.
        let noticed = Instant::now();
        loop {
            let seen = lobby(&client, &on_b).await?;
            if seen.get(&format!("w{i}")).is_some_and(|s| *s != before) {
                break;
            }
            if noticed.elapsed() > Duration::from_secs(10) {
                return Err(format!("A never recorded w{i}'s poll"));
            }
        }
        // What is left between that record and the registration is a
        // moment's work on A; leave it that moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let formed = arrive(&client, &format!("{on_b}/x{i}"), &json!({})).await?;
        let answered_b = Instant::now();
        let (answered_a, status) = poll.await.map_err(|e| e.to_string())??;
        if formed["status"] != "assigned" || status != "assigned" {
            bad += 1;
            eprintln!(
                "sample {i}: B answered {}, A's poll {status}",
                formed["status"]
            );
            continue;
        }
        delays.push(since(answered_a, answered_b));
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "wake-up across replicas: n={} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (min {:.2} ms)",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.9),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN),
        delays.first().copied().unwrap_or(f64::NAN),
    );
    if bad > 0 {
        println!("BAD: {bad} samples did not end with both assigned");
        ok = false;
    }

    // 2. Memory per held long-poll.
    let hold = format!("lp-hold-{run}");
    put_experiment(
        &client,
        &format!("{}/v1/experiments/{hold}", o.a),
        &json!({"routing": {"groups": [{"name": "Everyone", "composition": [
            {"id": "starter", "condition": {"role": "starter"}, "min_count": 1, "max_count": 1},
            {"id": "member", "condition": {"role": "member"}, "min_count": 1, "max_count": o.held}]}]}}),
    )
    .await?;
    let (on_a, on_b) = (
        format!("{}/v1/experiments/{hold}/participants", o.a),
        format!("{}/v1/experiments/{hold}/participants", o.b),
    );
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..REGISTERING {
        let (client, on_a, n) = (client.clone(), on_a.clone(), o.held);
        workers.spawn(async move {
            for i in (w..n).step_by(REGISTERING) {
                let routed =
                    arrive(&client, &format!("{on_a}/m{i}"), &json!({"role": "member"})).await?;
                if routed["status"] != "waiting" {
                    return Err(format!("m{i} was not left waiting: {routed}"));
                }
            }
            Ok::<_, String>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    // The lobby is read through B, so that its pages cost A nothing.
    let before_seen = lobby(&client, &on_b).await?;
    if before_seen.len() != o.held {
        return Err(format!("{} wait, not {}", before_seen.len(), o.held));
    }
    println!(
        "{} participants registered and waiting on A in {:.1} s",
        o.held,
        started.elapsed().as_secs_f64()
    );
    let rss_before = rss(o.pid)?;

    // A client of its own: its connections close with it.
    let polls_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| e.to_string())?;
    let opened = Instant::now();
    let mut polls = Vec::with_capacity(o.held);
    for i in 0..o.held {
        polls.push(tokio::spawn(long_poll(
            polls_client.clone(),
            format!("{on_a}/m{i}?wait_seconds=60&status=waiting"),
        )));
        if (i + 1) % (o.open_rate / 10) == 0 {
            tokio::time::sleep(OPEN_PAUSE).await;
        }
    }
    loop {
        let seen = lobby(&client, &on_b).await?;
        let pending = before_seen
            .iter()
            .filter(|(id, last)| seen.get(*id) == Some(last))
            .count();
        if pending == 0 {
            break;
        }
        if opened.elapsed() > HOLD_WITHIN {
            return Err(format!(
                "{pending} of {} polls not recorded by A after {HOLD_WITHIN:?}",
                o.held
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_held = opened.elapsed();
    // Settled: read a few times and keep the largest.
    let mut rss_during = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_during = rss_during.max(rss(o.pid)?);
    }
    let early = polls.iter().filter(|p| p.is_finished()).count();
    println!(
        "{} polls opened ({}/s) and recorded by A in {:.1} s ({early} already answered)",
        o.held,
        o.open_rate,
        all_held.as_secs_f64()
    );
    let formed = arrive(
        &client,
        &format!("{on_b}/starter"),
        &json!({"role": "starter"}),
    )
    .await?;
    let answered_b = Instant::now();
    if formed["status"] != "assigned" {
        return Err(format!("the starter was not assigned: {formed}"));
    }
    let mut after_ms = Vec::with_capacity(o.held);
    let (mut answered, mut not_assigned, mut failed) = (0usize, 0usize, 0usize);
    for poll in polls {
        match poll.await.map_err(|e| e.to_string())? {
            Ok((at, status)) => {
                answered += 1;
                if status == "assigned" {
                    after_ms.push(since(at, answered_b));
                } else {
                    not_assigned += 1;
                }
            }
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("poll: {e}");
                }
            }
        }
    }
    drop(polls_client);
    after_ms.sort_by(f64::total_cmp);
    let per_poll = (rss_during as f64 - rss_before as f64) / o.held as f64;
    println!(
        "RSS of A: {:.1} MiB before, {:.1} MiB with {} polls held: {:.0} bytes per held poll",
        rss_before as f64 / 1048576.0,
        rss_during as f64 / 1048576.0,
        o.held,
        per_poll
    );
    println!(
        "formation on B → polls answered on A: {answered} answered ({} assigned, {not_assigned} other, {failed} failed); p50 {:.1} ms  p99 {:.1} ms  last {:.1} ms",
        after_ms.len(),
        percentile(&after_ms, 0.5),
        percentile(&after_ms, 0.99),
        after_ms.last().copied().unwrap_or(f64::NAN),
    );
    if answered != o.held || not_assigned > 0 || failed > 0 {
        println!("BAD: not every held poll was answered with its formation");
        ok = false;
    }
    println!(
        "RESULT samples={} wake_p50={:.2} wake_p99={:.2} wake_max={:.2} held={} rss_before={} rss_during={} bytes_per_poll={:.0} answered={} fanout_p50={:.1} fanout_last={:.1}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN),
        o.held,
        rss_before,
        rss_during,
        per_poll,
        after_ms.len(),
        percentile(&after_ms, 0.5),
        after_ms.last().copied().unwrap_or(f64::NAN),
    );
    Ok(ok)
}
