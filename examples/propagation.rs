//! Propagation benchmark for `bench/propagation.sh`: how long a configuration
//! change accepted by replica A takes to be served by replica B (two allot
//! processes on one PostgreSQL; §7 "Replicas" says 100 ms at p99).
//!
//! 1. Creates N experiments on A (and waits until B serves each).
//! 2. Makes W weight changes through A, each on an experiment picked at
//!    random; after each PUT's answer it reads B's `GET /v1/experiments/{key}`
//!    back to back (no sleeps) until B shows the version A answered, and
//!    records the time from A's answer to that read's answer.
//! 3. Times C creates on A → the first 200 from B for the new key.
//!
//! It prints p50/p90/p99/max for both, the plain cost of one GET on B for
//! reference (every delay includes at least one), and a `RESULT` line for the
//! script's table. A change B has not served after 10 s counts as lost; any
//! lost change or failed request exits 1.
//!
//! Reading the figures: with polling alone (no notification reaches B), every
//! delay comes out close to the whole `refresh_interval_ms`, not half of it on
//! average: each change is written just after B picked up the previous one,
//! that is, just after B's last poll.
//!
//! ```sh
//! cargo run --release --example propagation -- http://127.0.0.1:18301 http://127.0.0.1:18302 100
//! # or: PROPAGATION_A=… PROPAGATION_B=… PROPAGATION_N=100 PROPAGATION_W=200 cargo run …
//! ```
//!
//! Arguments (or environment): A's base URL (`PROPAGATION_A`), B's base URL
//! (`PROPAGATION_B`), N (`PROPAGATION_N`, default 1), W (`PROPAGATION_W`,
//! default 200), C (`PROPAGATION_C`, default 20); `PROPAGATION_SEED` fixes the
//! random choice of experiments. Only loopback addresses are accepted.

// A tool, not the service: a failure stops it with the message given.
#![allow(clippy::expect_used, clippy::unwrap_used)]
// Its exit code is its verdict (0 pass, 1 fail, 2 could not run).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// A change not served by B after this long is lost.
const GIVE_UP: Duration = Duration::from_secs(10);
/// Experiments created at once while setting up.
const SETUP_IN_FLIGHT: usize = 8;

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("propagation: {e}");
            std::process::exit(2);
        }
    }
}

struct Options {
    a: String,
    b: String,
    experiments: usize,
    changes: usize,
    creates: usize,
    seed: u64,
}

fn options() -> Result<Options, String> {
    let usage = "usage: propagation <A base URL> <B base URL> [experiments N=1] [weight changes W=200] [creates C=20]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, env: &str| args.get(i).cloned().or_else(|| std::env::var(env).ok());
    let number = |i: usize, env: &str, default: usize| -> Result<usize, String> {
        arg(i, env).map_or(Ok(default), |s| {
            s.parse()
                .map_err(|_| format!("{env} is not a count: {s}\n{usage}"))
        })
    };
    let a = arg(0, "PROPAGATION_A").ok_or(usage)?;
    let b = arg(1, "PROPAGATION_B").ok_or(usage)?;
    for base in [&a, &b] {
        loopback(base)?;
    }
    let seed = match std::env::var("PROPAGATION_SEED") {
        Ok(s) => s.parse().map_err(|_| format!("PROPAGATION_SEED: {s}"))?,
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    let options = Options {
        a: a.trim_end_matches('/').to_owned(),
        b: b.trim_end_matches('/').to_owned(),
        experiments: number(2, "PROPAGATION_N", 1)?,
        changes: number(3, "PROPAGATION_W", 200)?,
        creates: number(4, "PROPAGATION_C", 20)?,
        seed,
    };
    if options.experiments == 0 {
        return Err("N must be at least 1".into());
    }
    Ok(options)
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

/// xorshift64*: enough to pick experiments, and repeatable from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

fn document(weight: u64) -> Value {
    json!({"description": "propagation benchmark",
           "treatments": [{"name": "control", "weight": 1}, {"name": "treated", "weight": weight}]})
}

async fn put(client: &reqwest::Client, url: &str, body: &Value) -> Result<(u16, i64), String> {
    let response = client
        .put(url)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    let status = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    if status != 200 && status != 201 {
        return Err(format!("PUT {url}: {status} {body}"));
    }
    Ok((status, body["version"].as_i64().unwrap_or(-1)))
}

/// B's answer for an experiment: its status, and its version when 200.
async fn read(client: &reqwest::Client, url: &str) -> Result<(u16, i64), String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    if status >= 500 {
        return Err(format!("GET {url}: {status}"));
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Ok((status, body["version"].as_i64().unwrap_or(-1)))
}

/// Reads `url` back to back until `done` holds: the time it took, or `None`
/// after `GIVE_UP`.
async fn until_served(
    client: &reqwest::Client,
    url: &str,
    done: impl Fn(u16, i64) -> bool,
) -> Result<Option<Duration>, String> {
    let started = Instant::now();
    loop {
        let (status, version) = read(client, url).await?;
        if done(status, version) {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > GIVE_UP {
            return Ok(None);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn stats(ms: &mut [f64]) -> Stats {
    ms.sort_by(f64::total_cmp);
    Stats {
        p50: percentile(ms, 0.5),
        p90: percentile(ms, 0.9),
        p99: percentile(ms, 0.99),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}

fn show(what: &str, count: usize, s: &Stats) {
    println!(
        "{what:<28} n={count:<5} p50 {:>8.2} ms  p90 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        s.p50, s.p90, s.p99, s.max
    );
}

async fn run() -> Result<bool, String> {
    let o = options()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(SETUP_IN_FLIGHT)
        .build()
        .map_err(|e| e.to_string())?;
    let prefix = format!("prop-{}-{}", std::process::id(), o.experiments);
    let keys: Vec<String> = (0..o.experiments)
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    let mut ok = true;

    // 1. N experiments on A; B serves each before the clock starts.
    let started = Instant::now();
    for chunk in keys.chunks(SETUP_IN_FLIGHT) {
        let mut tasks = tokio::task::JoinSet::new();
        for key in chunk {
            let (client, url) = (client.clone(), format!("{}/v1/experiments/{key}", o.a));
            tasks.spawn(async move { put(&client, &url, &document(1)).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| e.to_string())??;
        }
    }
    for key in &keys {
        let url = format!("{}/v1/experiments/{key}", o.b);
        if until_served(&client, &url, |status, _| status == 200)
            .await?
            .is_none()
        {
            return Err(format!("B never served {key}"));
        }
    }
    println!(
        "{} experiments configured on A and served by B in {:.1} s (seed {})",
        o.experiments,
        started.elapsed().as_secs_f64(),
        o.seed
    );

    // For reference: one GET on B, the floor under every delay below.
    let mut get_ms = Vec::new();
    let probe = format!("{}/v1/experiments/{}", o.b, keys[0]);
    for _ in 0..200 {
        let t = Instant::now();
        read(&client, &probe).await?;
        get_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // 2. W weight changes through A, each read back from B.
    let mut rng = Rng(o.seed | 1);
    let mut weights = vec![1u64; keys.len()];
    let mut change_ms = Vec::new();
    let mut lost = 0usize;
    for _ in 0..o.changes {
        let i = rng.below(keys.len());
        weights[i] += 1;
        let (_, version) = put(
            &client,
            &format!("{}/v1/experiments/{}", o.a, keys[i]),
            &document(weights[i]),
        )
        .await?;
        let url = format!("{}/v1/experiments/{}", o.b, keys[i]);
        match until_served(&client, &url, |status, v| status == 200 && v >= version).await? {
            Some(took) => change_ms.push(took.as_secs_f64() * 1000.0),
            None => {
                lost += 1;
                eprintln!(
                    "B did not serve version {version} of {} within {GIVE_UP:?}",
                    keys[i]
                );
            }
        }
    }

    // 3. C creates on A, each until B's first 200.
    let mut create_ms = Vec::new();
    for c in 0..o.creates {
        let key = format!("{prefix}-new-{c}");
        put(
            &client,
            &format!("{}/v1/experiments/{key}", o.a),
            &document(1),
        )
        .await?;
        let url = format!("{}/v1/experiments/{key}", o.b);
        match until_served(&client, &url, |status, _| status == 200).await? {
            Some(took) => create_ms.push(took.as_secs_f64() * 1000.0),
            None => {
                lost += 1;
                eprintln!("B did not serve the new {key} within {GIVE_UP:?}");
            }
        }
    }

    let get = stats(&mut get_ms);
    let change = stats(&mut change_ms);
    let create = stats(&mut create_ms);
    println!("with {} experiments configured:", o.experiments);
    show("one GET on B (reference)", get_ms.len(), &get);
    show("weight change A → B", change_ms.len(), &change);
    show("create on A → 200 on B", create_ms.len(), &create);
    if lost > 0 {
        println!("LOST: {lost} changes were not served by B within {GIVE_UP:?}");
        ok = false;
    }
    println!(
        "RESULT n={} changes={} p50={:.2} p90={:.2} p99={:.2} max={:.2} create_p50={:.2} create_max={:.2} get_p50={:.2} lost={lost}",
        o.experiments,
        change_ms.len(),
        change.p50,
        change.p90,
        change.p99,
        change.max,
        create.p50,
        create.max,
        get.p50
    );
    Ok(ok)
}
