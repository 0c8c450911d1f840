//! Soak driver for `bench/soak.sh`: a steady, bounded rate of mixed traffic
//! against two allot replicas that share one PostgreSQL, for a fixed time,
//! while it watches the replica processes. It answers one question: does
//! allot stay correct and flat (no 5xx, no hangs, no memory or descriptor
//! growth) under hours-style traffic that is two thirds ordinary and one third
//! hostile?
//!
//! Run it through the script, which builds, starts the replicas on a fresh
//! schema and cleans up:
//!
//! ```sh
//! DURATION=60 bash bench/soak.sh          # smoke run
//! bash bench/soak.sh                      # 10 minutes at 300 requests/s
//! DURATION=30m RATE=500 bash bench/soak.sh
//! ```
//!
//! or by hand against replicas that are already running (loopback only):
//!
//! ```sh
//! cargo run --release --example soak -- <seconds> <requests/s> 127.0.0.1:18291=<pid> 127.0.0.1:18292=<pid>
//! ```
//!
//! What it sends, spread round-robin over the replicas (a multi-step flow
//! deliberately crosses replicas, e.g. create on one and use on the other):
//! - valid (two thirds of the requests): flag evaluations; single and batch
//!   assignments on a plain experiment and on a sticky one gated by a flag
//!   with conditions; participants registered, routed and accepted or declined
//!   on a routing study with a short `wait_timeout_seconds` (so the server's
//!   sweeper times out the ones nobody matches, which is checked); reads
//!   (experiments, versions, cohorts, events page by page, flags, overrides,
//!   probes); occasional writes (reweighting under `If-Match`, per-org
//!   overrides, throwaway experiments created and deleted so that metric
//!   series come and go);
//! - hostile (one third): U+0000 in ids, strings and object keys and `%00`
//!   in URL ids, `1e400`, extreme weights, out-of-range durations, oversized
//!   and overdeep attributes, `$nin` lists over the limit and at it (the
//!   latter against the largest attribute arrays, no entry matching: the
//!   costliest legal evaluation), conditions over 64 KiB, 100 000 `[`, bodies
//!   over 1 MiB and of exactly 1 MiB, invalid JSON, wrong content types, odd
//!   `If-Match` and `Authorization` headers, unknown routes and methods, bad
//!   query strings, one participant registered 8 times at once, malformed
//!   requests on raw TCP; each has its expected statuses (4xx, or 2xx where
//!   the input is legal), and a 5xx is never expected;
//! - beside the rate, a few connections per second that send a partial
//!   request head (or nothing, or one byte a second) and are then abandoned:
//!   the server must close each within its `header_read_timeout_ms` (5 s).
//!
//! Operations start spaced by the requests each sends (an estimate per
//! kind), so the request rate holds within a few percent whatever the mix.
//!
//! It prints a line every 60 s and a report at the end: requests by class
//! and kind, statuses, every 5xx (the first few with request and body; the
//! `x-request-id` it sent, `soak-<n>`, finds the cause in the replica's log),
//! answers outside the expected statuses, transport errors, latency
//! percentiles (and the slowest kinds), the machine's load average, and for
//! each replica RSS, CPU and open descriptors before the
//! load, after the warm-up, at the end and once the connections have drained.
//! It exits 1 if a 5xx was seen, a replica died, or an invariant broke (a
//! registration answered 201 other than exactly once, a participant left
//! waiting past its timeout, a stalled connection the server did not close).

// A tool, not the service: a failure stops it with the message given.
#![allow(clippy::expect_used, clippy::unwrap_used)]
// Its exit code is its verdict (0 pass, 1 fail, 2 could not run).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Sampling the replicas before the warm-up would measure start-up, not the
/// steady state.
const WARM_UP_SECS: f64 = 30.0;
/// Seconds between the progress lines.
const LINE_EVERY_SECS: f64 = 60.0;
/// Stalled connections opened per second, beside the request rate.
const HALF_OPEN_PER_SEC: f64 = 3.0;
/// The server's `header_read_timeout_ms` (default 5 s) plus a generous margin
/// for a loaded machine: a stalled connection still open after this is a leak.
const HALF_OPEN_GIVE_UP: Duration = Duration::from_secs(15);
/// Operations in flight at most: a hanging server makes the driver shed load
/// (counted) instead of piling up tasks without bound.
const MAX_IN_FLIGHT: usize = 512;
/// The study's `wait_timeout_seconds`: short, so the sweeper works all the time.
const WAIT_TIMEOUT_SECS: u64 = 3;
/// How many failures of each sort the report quotes in full.
const SAMPLES: usize = 8;

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}

async fn run() -> Result<bool, String> {
    let usage =
        "usage: soak <seconds> <requests/s> 127.0.0.1:<port>=<pid> [127.0.0.1:<port>=<pid> ...]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err(usage.into());
    }
    let secs: f64 = args[0].parse().map_err(|_| usage.to_string())?;
    let rate: f64 = args[1].parse().map_err(|_| usage.to_string())?;
    if secs <= 0.0 || rate <= 0.0 {
        return Err(usage.into());
    }
    let mut replicas = Vec::new();
    for spec in &args[2..] {
        let (addr, pid) = spec.split_once('=').ok_or(usage)?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("not an address: {addr}"))?;
        // This tool floods and abuses what it talks to: never anything but this machine.
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address; refusing"));
        }
        let pid: u32 = pid.parse().map_err(|_| format!("not a pid: {pid}"))?;
        replicas.push(Replica {
            base: format!("http://{addr}"),
            addr,
            pid,
        });
    }

    let client = reqwest::Client::builder()
        // The server closes idle keep-alive connections after 5 s: never reuse
        // one that old, or a request races the close and fails in transport.
        .pool_idle_timeout(Duration::from_secs(2))
        // A request that takes this long is a hang, reported with the request.
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        client,
        replicas,
        stats: Mutex::new(Stats::default()),
        seq: AtomicU64::new(0),
        rr: AtomicUsize::new(0),
        started,
        stop: AtomicBool::new(false),
        half_open_live: AtomicUsize::new(0),
    });

    println!(
        "soak: {secs:.0} s at {rate:.0} requests/s over {} replicas ({}), {HALF_OPEN_PER_SEC} stalled connections/s",
        ctx.replicas.len(),
        ctx.replicas
            .iter()
            .map(|r| format!("{} pid {}", r.addr, r.pid))
            .collect::<Vec<_>>()
            .join(", ")
    );
    setup(&ctx).await?;
    // Fixed large documents are built once, before the clock starts.
    let _ = big();

    let mut watch = Watch::new(&ctx).await;
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::from_std(t0 + Duration::from_secs_f64(secs));
    let warm_up = WARM_UP_SECS.min(secs / 2.0);

    let sem = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let scheduler = tokio::spawn(schedule(Arc::clone(&ctx), Arc::clone(&sem), rate, deadline));
    let stalled = tokio::spawn(half_open_loop(Arc::clone(&ctx), deadline));

    // Sample the replicas every 5 s; print a line every 60 s; stop early if
    // a replica dies (there is nothing left to soak).
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut last_line = 0.0;
    let mut warmed = false;
    loop {
        tick.tick().await;
        let now = t0.elapsed().as_secs_f64();
        let done = tokio::time::Instant::now() >= deadline;
        watch.sample(now);
        if !warmed && now >= warm_up {
            warmed = true;
            watch.mark_start(&ctx).await;
        }
        if let Some(dead) = watch.dead() {
            ctx.anomaly(format!("replica {dead} died at {now:.0} s"));
            ctx.stop.store(true, Ordering::Relaxed);
        }
        if now - last_line >= LINE_EVERY_SECS - 0.1 || done || ctx.stopped() {
            progress_line(&ctx, &watch, now, now - last_line);
            last_line = now;
        }
        if done || ctx.stopped() {
            break;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if !warmed {
        watch.mark_start(&ctx).await;
    }
    watch.mark_end(&ctx, elapsed).await;
    ctx.stop.store(true, Ordering::Relaxed);
    let _ = scheduler.await;
    let _ = stalled.await;
    // Let the operations in flight (a participant check waits a few seconds)
    // and the stalled connections finish.
    let drained = tokio::time::timeout(
        Duration::from_secs(60),
        sem.acquire_many(MAX_IN_FLIGHT as u32),
    )
    .await;
    if drained.is_err() {
        ctx.anomaly("operations still in flight 60 s after the end".into());
    }
    let wait_half_open = Instant::now();
    while ctx.half_open_live.load(Ordering::Relaxed) > 0
        && wait_half_open.elapsed() < HALF_OPEN_GIVE_UP + Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle keep-alive connections close after the server's 5 s header-read
    // timeout: what is left open after that is what the replica holds alone.
    tokio::time::sleep(Duration::from_secs(7)).await;
    watch.mark_drained();

    Ok(report(&ctx, &watch, elapsed, rate))
}

// ---------------------------------------------------------------------------
// Shared state

struct Replica {
    addr: SocketAddr,
    base: String,
    pid: u32,
}

struct Ctx {
    client: reqwest::Client,
    replicas: Vec<Replica>,
    stats: Mutex<Stats>,
    /// Request ids, participant ids, throwaway keys: unique within the run.
    seq: AtomicU64,
    rr: AtomicUsize,
    started: Instant,
    stop: AtomicBool,
    half_open_live: AtomicUsize,
}

#[derive(Default)]
struct ClassStats {
    requests: u64,
    by_kind: BTreeMap<&'static str, u64>,
    statuses: BTreeMap<u16, u64>,
    ms: Vec<f32>,
    window_ms: Vec<f32>,
    kind_ms: BTreeMap<&'static str, Vec<f32>>,
}

#[derive(Default)]
struct Stats {
    /// [valid, hostile]
    class: [ClassStats; 2],
    server_errors: u64,
    /// The first few 5xx in full, and every 5xx counted by request kind.
    server_error_samples: Vec<String>,
    server_errors_by_kind: BTreeMap<(&'static str, u16), u64>,
    /// (kind, status) → how many, and the first one in full.
    unexpected: BTreeMap<(&'static str, u16), (u64, String)>,
    transport: BTreeMap<String, u64>,
    transport_samples: Vec<String>,
    anomalies: u64,
    anomaly_samples: Vec<String>,
    shed: u64,
    half_open_opened: u64,
    half_open_closed_secs: Vec<f32>,
    half_open_not_closed: u64,
    half_open_answers: BTreeMap<u16, u64>,
}

impl Ctx {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        // A panicking task must not take the report down with it.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn rng(&self) -> Rng {
        Rng::new(self.next_id() ^ self.started.elapsed().as_nanos() as u64)
    }

    /// The next replica, round-robin.
    fn replica(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed) % self.replicas.len()
    }

    /// Another replica than `r` (the same one if there is only one).
    fn other(&self, r: usize) -> usize {
        (r + 1) % self.replicas.len()
    }

    fn anomaly(&self, what: String) {
        println!(
            "ANOMALY at {:.0} s: {what}",
            self.started.elapsed().as_secs_f64()
        );
        let mut s = self.stats();
        s.anomalies += 1;
        if s.anomaly_samples.len() < SAMPLES {
            s.anomaly_samples.push(what);
        }
    }

    /// Sends one request to replica `r`, records its outcome, and returns the
    /// answer (`None` on a transport error, which is recorded too).
    async fn send(&self, r: usize, req: Req) -> Option<Answer> {
        let rid = format!("soak-{}", self.next_id());
        let url = format!("{}{}", self.replicas[r].base, req.path);
        let mut b = self
            .client
            .request(req.method.clone(), &url)
            .header("x-request-id", &rid);
        for (name, value) in &req.headers {
            b = b.header(*name, value.as_str());
        }
        let summary = req
            .body
            .as_ref()
            .map(|(_, bytes)| summarize(bytes.as_slice()));
        if let Some((content_type, bytes)) = req.body {
            if let Some(ct) = content_type {
                b = b.header("content-type", ct);
            }
            b = b.body(match bytes {
                Bytes::Owned(v) => reqwest::Body::from(v),
                Bytes::Static(s) => reqwest::Body::from(s),
            });
        }
        let t = Instant::now();
        let result = async {
            let resp = b.send().await?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body.to_vec()))
        }
        .await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let describe = || {
            let headers: String = req
                .headers
                .iter()
                .map(|(n, v)| format!(", {n}: {}", clip(v, 60)))
                .collect();
            format!(
                "{} {} [x-request-id: {rid}{headers}] body {}",
                req.method,
                clip(&url, 160),
                summary.as_deref().unwrap_or("none")
            )
        };
        match result {
            Ok((status, body)) => {
                let mut s = self.stats();
                s.count(req.class, req.kind, status, ms);
                if status >= 500 {
                    s.server_error(req.kind, status, || {
                        format!("{status} to {} -> {}", describe(), summarize(&body))
                    });
                } else if !req.expect.contains(&status) {
                    s.unexpected(req.kind, status, || {
                        format!(
                            "expected {:?}: {} -> {}",
                            req.expect,
                            describe(),
                            summarize(&body)
                        )
                    });
                }
                Some(Answer { status, body })
            }
            Err(e) => {
                let why = if e.is_timeout() {
                    "timeout".to_string()
                } else if e.is_connect() {
                    "connect".to_string()
                } else {
                    error_chain(&e)
                };
                let mut s = self.stats();
                s.count(req.class, req.kind, 0, ms);
                *s.transport
                    .entry(format!("{}: {}", req.kind, clip(&why, 80)))
                    .or_default() += 1;
                if s.transport_samples.len() < SAMPLES {
                    s.transport_samples
                        .push(format!("{why} after {ms:.0} ms: {}", describe()));
                }
                None
            }
        }
    }
}

impl Stats {
    fn server_error(&mut self, kind: &'static str, status: u16, describe: impl FnOnce() -> String) {
        self.server_errors += 1;
        *self
            .server_errors_by_kind
            .entry((kind, status))
            .or_default() += 1;
        if self.server_error_samples.len() < SAMPLES {
            let line = describe();
            println!("5xx: {line}");
            self.server_error_samples.push(line);
        }
    }

    fn unexpected(&mut self, kind: &'static str, status: u16, describe: impl FnOnce() -> String) {
        self.unexpected
            .entry((kind, status))
            .or_insert_with(|| (0, describe()))
            .0 += 1;
    }

    /// Status 0 stands for "no answer" (transport error, or a raw connection
    /// closed without a response).
    fn count(&mut self, class: Class, kind: &'static str, status: u16, ms: f64) {
        let c = &mut self.class[class as usize];
        c.requests += 1;
        *c.by_kind.entry(kind).or_default() += 1;
        *c.statuses.entry(status).or_default() += 1;
        c.ms.push(ms as f32);
        c.window_ms.push(ms as f32);
        c.kind_ms.entry(kind).or_default().push(ms as f32);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The first 200 bytes of a body, printable, with its length.
fn summarize(bytes: &[u8]) -> String {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).replace('\0', "\\0");
    format!(
        "({} bytes) {head}{}",
        bytes.len(),
        if bytes.len() > 200 { "…" } else { "" }
    )
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…({} bytes)", &s[..end], s.len())
    }
}

// ---------------------------------------------------------------------------
// Requests

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Valid = 0,
    Hostile = 1,
}

enum Bytes {
    Owned(Vec<u8>),
    /// The large fixed bodies, built once and never copied.
    Static(&'static [u8]),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Static(s) => s,
        }
    }
}

struct Req {
    class: Class,
    kind: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<(Option<&'static str>, Bytes)>,
    /// Statuses that are right for this request; anything else is reported
    /// (a 5xx always as a failure).
    expect: &'static [u16],
}

const OK: &[u16] = &[200];
const HOSTILE_4XX: &[u16] = &[400, 404, 405, 412, 413, 422];
const JSON: Option<&str> = Some("application/json");

impl Req {
    fn valid(kind: &'static str, method: Method, path: impl Into<String>) -> Self {
        Req {
            class: Class::Valid,
            kind,
            method,
            path: path.into(),
            headers: Vec::new(),
            body: None,
            expect: OK,
        }
    }

    fn hostile(kind: &'static str, method: Method, path: impl Into<String>) -> Self {
        Req {
            class: Class::Hostile,
            expect: HOSTILE_4XX,
            ..Req::valid(kind, method, path)
        }
    }

    fn json(self, value: &Value) -> Self {
        let bytes = serde_json::to_vec(value).expect("a Value always serializes");
        self.raw(JSON, bytes)
    }

    fn raw(mut self, content_type: Option<&'static str>, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Some((content_type, Bytes::Owned(bytes.into())));
        self
    }

    fn fixed(mut self, bytes: &'static [u8]) -> Self {
        self.body = Some((JSON, Bytes::Static(bytes)));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn expect(mut self, statuses: &'static [u16]) -> Self {
        self.expect = statuses;
        self
    }
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// splitmix64: plenty for choosing traffic, and no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// Fixtures

const ELIGIBLE: &str = "soak:eligible";
const IF_MATCH_FLAG: &str = "soak:if-match";
const BIG_NIN: &str = "soak:big-nin";
const PLAIN: &str = "soak-plain";
const STICKY: &str = "soak-sticky";
const STUDY: &str = "soak-study";

/// Weights the plain experiment cycles through when reweighted.
const REWEIGHTS: &[&[f64]] = &[
    &[1.0, 1.0],
    &[1.0, 1.0, 1.0],
    &[2.0, 1.0, 1.0],
    &[1.0, 0.0, 3.0],
];

fn plain_doc(weights: &[f64]) -> Value {
    let names = ["noop", "cost-optimized", "perf"];
    let treatments: Vec<Value> = weights
        .iter()
        .zip(names)
        .map(|(w, n)| json!({"name": n, "weight": w}))
        .collect();
    json!({"description": "soak: plain, not sticky", "coverage": 0.9, "treatments": treatments})
}

fn study_doc() -> Value {
    json!({
        "cohorts": [{"alias": "arm-high", "name": "High Arm", "capacity": 50},
                    {"alias": "arm-other", "name": "Other Arm"}],
        "variables": [{"name": "persona", "default": "control",
                       "cohort_values": {"arm-high": "pro_ai", "arm-other": "skeptic"}}],
        "routing": {"groups": [
            {"name": "High Scorers", "target_cohort": "arm-high",
             "composition": [{"id": "high", "condition": {"score": {"$gte": 9}}, "min_count": 1, "max_count": 5}]},
            {"name": "Pair", "require_acceptance": true,
             "composition": [{"id": "high", "condition": {"score": {"$gte": 7}}, "min_count": 1, "max_count": 1},
                             {"id": "low", "condition": {"score": {"$lt": 5}}, "min_count": 1, "max_count": 1}]}],
            "wait_timeout_seconds": WAIT_TIMEOUT_SECS}})
}

/// The fixed documents; created once through the first replica.
async fn setup(ctx: &Ctx) -> Result<(), String> {
    let numbers: Vec<u32> = (0..10_000).collect();
    let puts = [
        (
            format!("/v1/flags/{ELIGIBLE}"),
            json!({"description": "soak: gate of the sticky experiment", "rules": [
                {"name": "paying", "condition": {"plan": {"$in": ["business", "enterprise"]}}, "rollout": 100},
                {"name": "big teams", "condition": {"$and": [{"seats": {"$gte": 10}}, {"country": {"$nin": ["FR"]}}]}, "rollout": 50},
                {"name": "everyone else", "rollout": 10}]}),
        ),
        (
            format!("/v1/flags/{IF_MATCH_FLAG}"),
            json!({"description": "soak: If-Match target", "rules": []}),
        ),
        (
            // The largest allowed lists, evaluated against the largest allowed
            // attribute arrays by the hostile traffic.
            format!("/v1/flags/{BIG_NIN}"),
            json!({"rules": [
                {"name": "nin", "condition": {"tags": {"$nin": numbers}}, "rollout": 100},
                {"name": "all", "condition": {"tags": {"$all": numbers}}, "rollout": 100}]}),
        ),
        (format!("/v1/experiments/{PLAIN}"), plain_doc(REWEIGHTS[0])),
        (
            format!("/v1/experiments/{STICKY}"),
            json!({"description": "soak: sticky, gated", "sticky": true, "eligibility_flag": ELIGIBLE,
                   "treatments": [{"name": "control", "weight": 1, "payload": {"model": "a"}},
                                  {"name": "treat", "weight": 1, "payload": {"model": "b", "limits": [1, 2, 3]}}]}),
        ),
        (format!("/v1/experiments/{STUDY}"), study_doc()),
    ];
    for (path, doc) in puts {
        let req = Req::valid("setup", Method::PUT, path.clone())
            .json(&doc)
            .expect(&[200, 201]);
        match ctx.send(0, req).await {
            Some(a) if a.status == 200 || a.status == 201 => {}
            Some(a) => {
                return Err(format!(
                    "PUT {path} answered {}: {}",
                    a.status,
                    summarize(&a.body)
                ))
            }
            None => return Err(format!("PUT {path} failed in transport")),
        }
    }
    // Start from a known state: every replica serves every fixture. (How fast
    // a replica learns of another's writes is measured by the throwaway
    // experiments during the run, not here.)
    let fixtures = [
        format!("/v1/flags/{ELIGIBLE}"),
        format!("/v1/flags/{BIG_NIN}"),
        format!("/v1/experiments/{PLAIN}"),
        format!("/v1/experiments/{STICKY}"),
        format!("/v1/experiments/{STUDY}"),
    ];
    let until = Instant::now() + Duration::from_secs(15);
    for r in 0..ctx.replicas.len() {
        for path in &fixtures {
            loop {
                let req = Req::valid("setup.wait", Method::GET, path.clone()).expect(&[200, 404]);
                if ctx.send(r, req).await.is_some_and(|a| a.status == 200) {
                    break;
                }
                if Instant::now() > until {
                    return Err(format!(
                        "replica {} still answers {path} with 404 after 15 s",
                        r + 1
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// Large bodies and attribute sets, built once.
struct Big {
    /// `{"tags": [...]}` just under the 16 KiB attributes limit, none of them
    /// in the 10 000-entry lists: the worst case, every entry compared.
    max_tags_miss: Value,
    /// The same size, with entries that are in the lists (answered early).
    max_tags_hit: Value,
    /// A `$nin` list of 10 001 entries: one over the limit.
    nin_over: Value,
    /// A condition of 10 000 strings, ~180 KB: over the 64 KiB limit.
    condition_over: Value,
    /// 100 000 `[`.
    brackets: Vec<u8>,
    /// 100 000 `[` then as many `]`: well-formed, far too deep.
    brackets_closed: Vec<u8>,
    /// A valid assignment body padded to 1 MiB + 1 byte.
    over_limit: Vec<u8>,
    /// The same padded to exactly 1 MiB: allowed as a body, too big as attributes.
    at_limit: Vec<u8>,
    /// A list of 12 000 entity tags, for If-Match.
    if_match_list: String,
    /// A chunked request whose body is over 1 MiB (no Content-Length).
    chunked_over: Vec<u8>,
}

fn big() -> &'static Big {
    static BIG: OnceLock<Big> = OnceLock::new();
    BIG.get_or_init(|| {
        let max_tags = |value: fn(u64) -> u64| {
            let mut tags = Vec::new();
            let mut i = 0u64;
            // Stop a little short of 16 384: the server may count org_id in too.
            while serde_json::to_string(&json!({ "tags": tags })).map_or(0, |s| s.len()) < 16_300 {
                tags.push(json!(value(i)));
                i += 1;
            }
            json!({ "tags": tags })
        };
        let long_strings: Vec<String> = (0..10_000).map(|i| format!("value-{i:012}")).collect();
        let padded = |total: usize| {
            let head = br#"{"org_id": 1, "unit_id": "pr-1", "attributes": {"pad": ""#;
            let tail = br#""}}"#;
            let mut v = head.to_vec();
            v.resize(total - tail.len(), b'a');
            v.extend_from_slice(tail);
            v
        };
        let over_limit = padded(1024 * 1024 + 1);
        let mut chunked_over = format!(
            "POST /v1/experiments/{PLAIN}/assign HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for chunk in padded(1024 * 1024 + 64 * 1024).chunks(64 * 1024) {
            chunked_over.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked_over.extend_from_slice(chunk);
            chunked_over.extend_from_slice(b"\r\n");
        }
        chunked_over.extend_from_slice(b"0\r\n\r\n");
        Big {
            max_tags_miss: max_tags(|i| 10_000 + i),
            max_tags_hit: max_tags(|i| i * 7 % 20_000),
            condition_over: json!({"rules": [{"name": "too big", "condition": {"tags": {"$in": long_strings}}, "rollout": 100}]}),
            nin_over: json!({"rules": [{"name": "too long", "condition": {"tags": {"$nin": (0..10_001).collect::<Vec<u32>>()}}, "rollout": 100}]}),
            brackets: vec![b'['; 100_000],
            brackets_closed: [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
            over_limit,
            at_limit: padded(1024 * 1024),
            if_match_list: (1000..13_000).map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", "),
            chunked_over,
        }
    })
}

// ---------------------------------------------------------------------------
// The mix

#[derive(Clone, Copy, Debug)]
enum Op {
    Evaluate,
    AssignPlain,
    AssignSticky,
    Batch,
    Participant,
    Read,
    Reweight,
    Throwaway,
    Override,
    NulInBody,
    NulInUrl,
    RawNulInJson,
    Overflow,
    ExtremeWeights,
    HugeDuration,
    AttrsTooBig,
    AttrsTooDeep,
    NinOverLimit,
    BigNinEval,
    DeepBrackets,
    BodyOverLimit,
    InvalidJson,
    WrongContentType,
    IfMatch,
    OddAuthorization,
    UnknownRoute,
    WrongMethod,
    BadQuery,
    BadIds,
    BadKeys,
    BatchOverLimit,
    DupRegister,
    RawRequest,
}

/// (operation, relative weight within its class, requests it sends on average)
const VALID: &[(Op, f64, f64)] = &[
    (Op::Evaluate, 22.0, 1.0),
    (Op::AssignPlain, 25.0, 1.0),
    (Op::AssignSticky, 20.0, 1.0),
    (Op::Batch, 5.0, 1.0),
    (Op::Participant, 5.0, 2.8),
    (Op::Read, 14.0, 1.3),
    // A reweight is a new version: rare, so that GET versions stays small.
    (Op::Reweight, 0.2, 2.0),
    (Op::Throwaway, 1.5, 3.0),
    (Op::Override, 3.0, 1.0),
];

const HOSTILE: &[(Op, f64, f64)] = &[
    (Op::NulInBody, 3.0, 1.0),
    (Op::NulInUrl, 2.0, 1.0),
    (Op::RawNulInJson, 1.0, 1.0),
    (Op::Overflow, 1.5, 1.0),
    (Op::ExtremeWeights, 1.0, 3.0),
    // One request if refused (422); eight when the server stores the study
    // and the driver goes on with it, as it does for half the values today.
    (Op::HugeDuration, 1.0, 4.6),
    (Op::AttrsTooBig, 1.0, 1.0),
    (Op::AttrsTooDeep, 1.0, 1.0),
    (Op::NinOverLimit, 0.5, 1.0),
    (Op::BigNinEval, 1.0, 1.0),
    (Op::DeepBrackets, 0.7, 1.0),
    (Op::BodyOverLimit, 0.5, 1.0),
    (Op::InvalidJson, 1.5, 1.0),
    (Op::WrongContentType, 1.0, 1.0),
    (Op::IfMatch, 1.5, 1.0),
    (Op::OddAuthorization, 1.0, 1.0),
    (Op::UnknownRoute, 1.5, 1.0),
    (Op::WrongMethod, 1.0, 1.0),
    (Op::BadQuery, 1.0, 1.0),
    (Op::BadIds, 1.5, 1.0),
    (Op::BadKeys, 1.0, 1.0),
    (Op::BatchOverLimit, 0.3, 1.0),
    (Op::DupRegister, 0.4, 8.0),
    (Op::RawRequest, 1.0, 1.0),
];

fn mean_cost(table: &[(Op, f64, f64)]) -> f64 {
    let w: f64 = table.iter().map(|t| t.1).sum();
    table.iter().map(|t| t.1 * t.2).sum::<f64>() / w
}

fn pick(rng: &mut Rng, table: &'static [(Op, f64, f64)]) -> (Op, f64) {
    let total: f64 = table.iter().map(|t| t.1).sum();
    let mut x = rng.unit() * total;
    for &(op, w, cost) in table {
        if x < w {
            return (op, cost);
        }
        x -= w;
    }
    let (op, _, cost) = table[table.len() - 1];
    (op, cost)
}

/// Starts operations at `rate` requests per second until the deadline. Each
/// operation's start is spaced by the requests it sends, so the request rate
/// holds whatever the mix; after a stall it does not burst to catch up.
async fn schedule(ctx: Arc<Ctx>, sem: Arc<Semaphore>, rate: f64, deadline: tokio::time::Instant) {
    // A third of the requests hostile: the share of hostile operations that
    // gives it, given how many requests each kind sends on average.
    let (cv, ch) = (mean_cost(VALID), mean_cost(HOSTILE));
    let p_hostile = cv / (cv + 2.0 * ch);
    let mut next = tokio::time::Instant::now();
    let mut rng = ctx.rng();
    while next < deadline && !ctx.stopped() {
        let table = if rng.chance(p_hostile) {
            HOSTILE
        } else {
            VALID
        };
        let (op, cost) = pick(&mut rng, table);
        match Arc::clone(&sem).try_acquire_owned() {
            Ok(permit) => {
                let ctx = Arc::clone(&ctx);
                let rng = ctx.rng();
                tokio::spawn(async move {
                    run_op(&ctx, op, rng).await;
                    drop(permit);
                });
            }
            Err(_) => ctx.stats().shed += 1,
        }
        next += Duration::from_secs_f64(cost / rate);
        let now = tokio::time::Instant::now();
        if next + Duration::from_secs(1) < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}

async fn run_op(ctx: &Ctx, op: Op, mut rng: Rng) {
    let r = ctx.replica();
    match op {
        Op::Evaluate => {
            let body = json!({"org_id": rng.below(5000), "attributes": attrs(&mut rng)});
            ctx.send(
                r,
                Req::valid(
                    "evaluate",
                    Method::POST,
                    format!("/v1/flags/{ELIGIBLE}/evaluate"),
                )
                .json(&body),
            )
            .await;
        }
        Op::AssignPlain => {
            let org = rng.below(5000);
            let body = json!({"org_id": org, "unit_id": format!("getsentry/repo-{}#{}", org % 7, rng.below(100_000))});
            ctx.send(
                r,
                Req::valid(
                    "assign.plain",
                    Method::POST,
                    format!("/v1/experiments/{PLAIN}/assign"),
                )
                .json(&body),
            )
            .await;
        }
        Op::AssignSticky => {
            // A small unit space, so that repeated units get `sticky` answers.
            let org = rng.below(500);
            let body = json!({"org_id": org, "unit_id": format!("pr-{}", rng.below(200)), "attributes": attrs(&mut rng)});
            ctx.send(
                r,
                Req::valid(
                    "assign.sticky",
                    Method::POST,
                    format!("/v1/experiments/{STICKY}/assign"),
                )
                .json(&body),
            )
            .await;
        }
        Op::Batch => {
            let n = if rng.chance(0.05) {
                1000
            } else {
                1 + rng.below(100)
            };
            let items: Vec<Value> = (0..n)
                .map(|_| {
                    let exp = if rng.chance(0.5) { PLAIN } else { STICKY };
                    json!({"experiment": exp, "org_id": rng.below(500), "unit_id": format!("pr-{}", rng.below(200)), "attributes": attrs(&mut rng)})
                })
                .collect();
            ctx.send(
                r,
                Req::valid("assign.batch", Method::POST, "/v1/assign")
                    .json(&json!({ "items": items })),
            )
            .await;
        }
        Op::Participant => participant(ctx, &mut rng, r).await,
        Op::Read => read(ctx, &mut rng, r).await,
        Op::Reweight => {
            // Read the version on one replica, write under If-Match on the
            // other: the check must be against the store, not a cache. Two
            // reweights may race: 412 is then right.
            let Some(a) = ctx
                .send(
                    r,
                    Req::valid(
                        "reweight.read",
                        Method::GET,
                        format!("/v1/experiments/{PLAIN}"),
                    ),
                )
                .await
            else {
                return;
            };
            let version = a.json()["version"].as_i64().unwrap_or(0);
            let weights = rng.pick(REWEIGHTS);
            let req = Req::valid(
                "reweight.put",
                Method::PUT,
                format!("/v1/experiments/{PLAIN}"),
            )
            .header("if-match", format!("\"{version}\""))
            .json(&plain_doc(weights))
            .expect(&[200, 412]);
            ctx.send(ctx.other(r), req).await;
        }
        Op::Throwaway => throwaway(ctx, &mut rng, r).await,
        Op::Override => {
            let org = 1000 + rng.below(100);
            let path = format!("/v1/flags/{ELIGIBLE}/orgs/{org}");
            let req = if rng.chance(0.6) {
                Req::valid("override.set", Method::PUT, path)
                    .json(&json!({"enabled": rng.chance(0.5)}))
                    .expect(&[200, 201])
            } else {
                Req::valid("override.remove", Method::DELETE, path).expect(&[204, 404])
            };
            ctx.send(r, req).await;
        }
        _ => hostile(ctx, op, &mut rng, r).await,
    }
}

fn attrs(rng: &mut Rng) -> Value {
    json!({
        "plan": rng.pick(&["free", "team", "business", "enterprise"]),
        "seats": rng.below(40),
        "country": rng.pick(&["DE", "US", "FR", "JP"]),
    })
}

/// Register on one replica, route on the other, then accept or decline if
/// the answer is pending. Someone left waiting is checked again after the
/// wait timeout: the sweeper must have moved them (or a partner arrived).
async fn participant(ctx: &Ctx, rng: &mut Rng, r: usize) {
    let id = format!("p-{}", ctx.next_id());
    let path = format!("/v1/experiments/{STUDY}/participants/{id}");
    // 9–10: joins the high arm at once; 7–8 and 1–4: pair up (pending);
    // 5–6: match nothing and time out.
    let score = *rng.pick(&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
    let body = json!({"attributes": {"score": score, "survey": {"q1": rng.pick(&["yes", "no"])}}});
    let reg = Req::valid("participant.register", Method::PUT, path.clone())
        .json(&body)
        .expect(&[201]);
    if ctx.send(r, reg).await.is_none_or(|a| a.status != 201) {
        return;
    }
    let other = ctx.other(r);
    let Some(routed) = ctx
        .send(
            other,
            Req::valid("participant.route", Method::POST, format!("{path}/route")),
        )
        .await
    else {
        return;
    };
    let mut state = routed.json();
    if state["status"] == "waiting" {
        tokio::time::sleep(Duration::from_secs(WAIT_TIMEOUT_SECS + 3)).await;
        let Some(read) = ctx
            .send(r, Req::valid("participant.read", Method::GET, path.clone()))
            .await
        else {
            return;
        };
        state = read.json();
        if state["status"] == "waiting" {
            ctx.anomaly(format!(
                "participant {id} (score {score}) still waiting {} s after routing; wait_timeout_seconds is {WAIT_TIMEOUT_SECS}: {}",
                WAIT_TIMEOUT_SECS + 3,
                state
            ));
        }
    }
    if state["status"] == "pending" {
        let (kind, verb) = if rng.chance(0.5) {
            ("participant.accept", "accept")
        } else {
            ("participant.decline", "decline")
        };
        ctx.send(
            other,
            Req::valid(kind, Method::POST, format!("{path}/{verb}")),
        )
        .await;
    }
}

async fn read(ctx: &Ctx, rng: &mut Rng, r: usize) {
    let get = |kind, path: String| Req::valid(kind, Method::GET, path);
    match rng.below(12) {
        0 => {
            let key = *rng.pick(&[PLAIN, STICKY, STUDY]);
            ctx.send(r, get("read.experiment", format!("/v1/experiments/{key}")))
                .await;
        }
        1 => {
            ctx.send(
                r,
                get("read.versions", format!("/v1/experiments/{PLAIN}/versions")),
            )
            .await;
        }
        2 | 3 => {
            let Some(a) = ctx
                .send(
                    r,
                    get("read.cohorts", format!("/v1/experiments/{STUDY}/cohorts")),
                )
                .await
            else {
                return;
            };
            let cohorts = a.json();
            if let Some(list) = cohorts.as_array().filter(|l| !l.is_empty()) {
                let id = rng.pick(list)["id"].as_str().unwrap_or("").to_string();
                ctx.send(
                    r,
                    get(
                        "read.cohort_members",
                        format!("/v1/experiments/{STUDY}/cohorts/{id}/participants"),
                    ),
                )
                .await;
            }
        }
        4 | 5 => {
            // Two pages, the second from the other replica.
            let first = get(
                "read.events",
                format!("/v1/experiments/{STUDY}/routing/events?limit=50"),
            );
            let Some(a) = ctx.send(r, first).await else {
                return;
            };
            if let Some(before) = a.json()["next_before"].as_i64() {
                let next = get(
                    "read.events",
                    format!("/v1/experiments/{STUDY}/routing/events?limit=50&before={before}"),
                );
                ctx.send(ctx.other(r), next).await;
            }
        }
        6 => {
            ctx.send(r, get("read.flag", format!("/v1/flags/{ELIGIBLE}")))
                .await;
        }
        7 => {
            ctx.send(r, get("read.flags", "/v1/flags".into())).await;
        }
        8 => {
            ctx.send(r, get("read.experiments", "/v1/experiments".into()))
                .await;
        }
        9 => {
            ctx.send(
                r,
                get(
                    "read.overrides",
                    format!("/v1/flags/{ELIGIBLE}/orgs?limit=20&after=1000"),
                ),
            )
            .await;
        }
        10 => {
            ctx.send(r, get("read.healthz", "/healthz".into())).await;
        }
        _ => {
            ctx.send(r, get("read.readyz", "/readyz".into())).await;
        }
    }
}

/// Create an experiment on one replica, assign on the other at once (it must
/// not answer 404), delete it: experiments, layouts and metric series churn.
async fn throwaway(ctx: &Ctx, rng: &mut Rng, r: usize) {
    let key = format!("soak-tmp-{}", ctx.next_id());
    let n = 2 + rng.below(3) as usize;
    let treatments: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("t{i}"), "weight": 1 + rng.below(5)}))
        .collect();
    let doc = json!({"coverage": rng.pick(&[0.5, 1.0]), "treatments": treatments});
    let path = format!("/v1/experiments/{key}");
    let created = ctx
        .send(
            r,
            Req::valid("throwaway.create", Method::PUT, path.clone())
                .json(&doc)
                .expect(&[201]),
        )
        .await;
    if created.is_none_or(|a| a.status != 201) {
        return;
    }
    let other = ctx.other(r);
    let body = json!({"org_id": rng.below(100), "unit_id": "pr-1"});
    ctx.send(
        other,
        Req::valid("throwaway.assign", Method::POST, format!("{path}/assign")).json(&body),
    )
    .await;
    let deleter = if rng.chance(0.5) { r } else { other };
    ctx.send(
        deleter,
        Req::valid("throwaway.delete", Method::DELETE, path).expect(&[204]),
    )
    .await;
}

// ---------------------------------------------------------------------------
// Hostile traffic

async fn hostile(ctx: &Ctx, op: Op, rng: &mut Rng, r: usize) {
    let assign_path = format!("/v1/experiments/{PLAIN}/assign");
    let evaluate_path = format!("/v1/flags/{ELIGIBLE}/evaluate");
    let participant_path = |id: &str| format!("/v1/experiments/{STUDY}/participants/{id}");
    let req = match op {
        Op::NulInBody => {
            let n = ctx.next_id();
            match rng.below(8) {
                0 => Req::hostile("nul.unit_id", Method::POST, assign_path)
                    .json(&json!({"org_id": 1, "unit_id": "pr\u{0}-1"})),
                1 => Req::hostile("nul.org_id", Method::POST, assign_path)
                    .json(&json!({"org_id": "org\u{0}", "unit_id": "pr-1"})),
                2 => Req::hostile("nul.attr_value", Method::POST, evaluate_path)
                    .json(&json!({"org_id": 1, "attributes": {"plan": "busi\u{0}ness"}})),
                3 => Req::hostile("nul.attr_key", Method::POST, evaluate_path)
                    .json(&json!({"org_id": 1, "attributes": {"pl\u{0}an": "business"}})),
                4 => Req::hostile(
                    "nul.participant_attr",
                    Method::PUT,
                    participant_path(&format!("nul-{n}")),
                )
                .json(&json!({"attributes": {"survey": {"q\u{0}1": "yes"}}})),
                5 => Req::hostile(
                    "nul.description",
                    Method::PUT,
                    format!("/v1/experiments/soak-nul-{n}"),
                )
                .json(
                    &json!({"description": "a\u{0}b", "treatments": [{"name": "a", "weight": 1}]}),
                ),
                6 => Req::hostile(
                    "nul.payload_key",
                    Method::PUT,
                    format!("/v1/experiments/soak-nul-{n}"),
                )
                .json(
                    &json!({"treatments": [{"name": "a", "weight": 1, "payload": {"k\u{0}": 1}}]}),
                ),
                _ => {
                    // In a batch a bad item gets its own error; the batch is 200.
                    let items = json!({"items": [{"experiment": PLAIN, "org_id": 1, "unit_id": "ok"},
                                                 {"experiment": PLAIN, "org_id": 1, "unit_id": "n\u{0}ul"}]});
                    Req::hostile("nul.batch_item", Method::POST, "/v1/assign")
                        .json(&items)
                        .expect(&[200, 422])
                }
            }
        }
        Op::NulInUrl => {
            let n = ctx.next_id();
            let body = json!({"org_id": 1, "unit_id": "pr-1"});
            match rng.below(6) {
                0 => Req::hostile(
                    "nul_url.experiment",
                    Method::GET,
                    "/v1/experiments/soak%00plain",
                ),
                1 => Req::hostile(
                    "nul_url.assign",
                    Method::POST,
                    "/v1/experiments/soak%00plain/assign",
                )
                .json(&body),
                2 => Req::hostile(
                    "nul_url.participant",
                    Method::PUT,
                    participant_path(&format!("p%00{n}")),
                )
                .json(&json!({"attributes": {"score": 1}})),
                3 => Req::hostile(
                    "nul_url.route",
                    Method::POST,
                    format!("{}/route", participant_path("p%00x")),
                ),
                4 => Req::hostile(
                    "nul_url.flag",
                    Method::POST,
                    "/v1/flags/soak%00eligible/evaluate",
                )
                .json(&json!({"org_id": 1})),
                _ => Req::hostile(
                    "nul_url.override",
                    Method::PUT,
                    format!("/v1/flags/{ELIGIBLE}/orgs/1%002"),
                )
                .json(&json!({"enabled": true})),
            }
        }
        Op::RawNulInJson => {
            // A raw 0x00 byte inside a JSON string is not JSON at all.
            Req::hostile("raw_nul_in_json", Method::POST, assign_path)
                .raw(JSON, b"{\"org_id\": 1, \"unit_id\": \"a\0b\"}".to_vec())
                .expect(&[400, 422])
        }
        Op::Overflow => {
            let n = ctx.next_id();
            match rng.below(4) {
                0 => Req::hostile("overflow.attribute", Method::POST, assign_path).raw(JSON, r#"{"org_id": 1, "unit_id": "a", "attributes": {"n": 1e400}}"#),
                1 => Req::hostile("overflow.org_id", Method::POST, evaluate_path).raw(JSON, r#"{"org_id": 1e400}"#),
                2 => Req::hostile("overflow.weight", Method::PUT, format!("/v1/experiments/soak-of-{n}"))
                    .raw(JSON, r#"{"treatments": [{"name": "a", "weight": 1e400}, {"name": "b", "weight": -1e400}]}"#),
                _ => Req::hostile("overflow.coverage", Method::PUT, format!("/v1/experiments/soak-of-{n}"))
                    .raw(JSON, r#"{"coverage": 1e400, "treatments": [{"name": "a", "weight": 1}]}"#),
            }
            .expect(&[422])
        }
        Op::ExtremeWeights => return extreme_weights(ctx, rng, r).await,
        Op::HugeDuration => return huge_duration(ctx, rng, r).await,
        Op::AttrsTooBig => {
            let attributes = json!({"blob": "x".repeat(17 * 1024)});
            match rng.below(3) {
                0 => Req::hostile("attrs_too_big.evaluate", Method::POST, evaluate_path)
                    .json(&json!({"org_id": 1, "attributes": attributes})),
                1 => Req::hostile(
                    "attrs_too_big.assign",
                    Method::POST,
                    format!("/v1/experiments/{STICKY}/assign"),
                )
                .json(&json!({"org_id": 1, "unit_id": "a", "attributes": attributes})),
                _ => Req::hostile(
                    "attrs_too_big.participant",
                    Method::PUT,
                    participant_path(&format!("big-{}", ctx.next_id())),
                )
                .json(&json!({"attributes": attributes})),
            }
            .expect(&[422])
        }
        Op::AttrsTooDeep => {
            let mut deep = json!("bottom");
            for _ in 0..33 {
                deep = json!({ "a": deep });
            }
            if rng.chance(0.5) {
                Req::hostile("attrs_too_deep.evaluate", Method::POST, evaluate_path)
                    .json(&json!({"org_id": 1, "attributes": deep}))
            } else {
                Req::hostile(
                    "attrs_too_deep.participant",
                    Method::PUT,
                    participant_path(&format!("deep-{}", ctx.next_id())),
                )
                .json(&json!({ "attributes": deep }))
            }
            .expect(&[422])
        }
        Op::NinOverLimit => {
            // One fixed key and document each: should the server store one,
            // the repeats are no-op writes and nothing piles up.
            if rng.chance(0.5) {
                Req::hostile(
                    "nin_over_limit",
                    Method::PUT,
                    "/v1/flags/soak:nin-over-limit",
                )
                .json(&big().nin_over)
            } else {
                Req::hostile(
                    "condition_over_64kib",
                    Method::PUT,
                    "/v1/flags/soak:condition-over-limit",
                )
                .json(&big().condition_over)
            }
            .expect(&[422])
        }
        Op::BigNinEval => {
            // Legal: 10 000-entry lists against ~2 700-entry arrays. Mostly the
            // worst case (no entry in the list), sometimes an early hit.
            let (kind, attributes) = if rng.chance(0.75) {
                ("big_nin_eval.miss", &big().max_tags_miss)
            } else {
                ("big_nin_eval.hit", &big().max_tags_hit)
            };
            Req::hostile(kind, Method::POST, format!("/v1/flags/{BIG_NIN}/evaluate"))
                .json(&json!({"org_id": rng.below(1000), "attributes": attributes}))
                .expect(OK)
        }
        Op::DeepBrackets => {
            let b = big();
            let body = if rng.chance(0.5) {
                &b.brackets
            } else {
                &b.brackets_closed
            };
            Req::hostile("deep_brackets", Method::POST, assign_path)
                .fixed(body)
                .expect(&[400, 422])
        }
        Op::BodyOverLimit => {
            let b = big();
            if rng.chance(0.7) {
                Req::hostile("body_over_1mib", Method::POST, assign_path)
                    .fixed(&b.over_limit)
                    .expect(&[413])
            } else {
                // Exactly at the body limit: accepted as a body, refused as attributes.
                Req::hostile("body_at_1mib", Method::POST, assign_path)
                    .fixed(&b.at_limit)
                    .expect(&[422])
            }
        }
        Op::InvalidJson => {
            let bodies: [&[u8]; 8] = [
                b"{\"org_id\": 1,",
                b"not json",
                b"{\"org_id\": 1, \"unit_id\": \"a\"} trailing",
                b"",
                b"{'org_id': 1}",
                b"{\"org_id\": 1, \"unit_id\": \"\\ud800\"}",
                b"{\"org_id\": 1, \"unit_id\": \"\xff\xfe\"}",
                b"[1, 2",
            ];
            let body = *rng.pick(&bodies);
            Req::hostile("invalid_json", Method::POST, assign_path)
                .raw(JSON, body.to_vec())
                .expect(&[400, 422])
        }
        Op::WrongContentType => {
            let ct = *rng.pick(&[
                Some("text/plain"),
                Some("application/x-www-form-urlencoded"),
                None,
                Some("application/jsonx"),
                Some("multipart/form-data; boundary=x"),
            ]);
            Req::hostile("wrong_content_type", Method::POST, assign_path)
                .raw(ct, br#"{"org_id": 1, "unit_id": "a"}"#.to_vec())
                .expect(&[400, 415])
        }
        Op::IfMatch => {
            // Always the same document: an accepted write changes no version.
            let doc = json!({"description": "soak: If-Match target", "rules": []});
            let put = |kind| {
                Req::hostile(kind, Method::PUT, format!("/v1/flags/{IF_MATCH_FLAG}")).json(&doc)
            };
            match rng.below(7) {
                0 => put("if_match.star").header("if-match", "*").expect(OK),
                1 => put("if_match.garbage")
                    .header("if-match", "garbage; v=1")
                    .expect(&[400]),
                2 => put("if_match.stale")
                    .header("if-match", "\"999999\"")
                    .expect(&[412]),
                3 => put("if_match.huge_list")
                    .header("if-match", big().if_match_list.clone())
                    .expect(&[412]),
                4 => put("if_match.huge_garbage")
                    .header("if-match", "z".repeat(100 * 1024))
                    .expect(&[400, 431]),
                5 => put("if_match.overflow")
                    .header("if-match", "\"99999999999999999999999\"")
                    .expect(&[412]),
                _ => Req::hostile(
                    "if_match.star_missing",
                    Method::PUT,
                    format!("/v1/flags/soak:absent-{}", ctx.next_id()),
                )
                .header("if-match", "*")
                .json(&doc)
                .expect(&[412]),
            }
        }
        Op::OddAuthorization => {
            // Auth is off: any Authorization header is ignored, the call works.
            let value = rng
                .pick(&[
                    "BEARER x",
                    "bearer x",
                    "Basic Zm9vOmJhcg==",
                    "Bearer",
                    "Bearer ",
                    "Token abc",
                    ",,,",
                    "Bearer a b c",
                ])
                .to_string();
            let value = if rng.chance(0.1) {
                format!("Bearer {}", "a".repeat(8000))
            } else {
                value
            };
            Req::hostile("odd_authorization", Method::POST, assign_path)
                .header("authorization", value)
                .json(&json!({"org_id": 7, "unit_id": "pr-7"}))
                .expect(OK)
        }
        Op::UnknownRoute => {
            let routes = [
                (Method::GET, "/v1/nope"),
                (Method::GET, "/v2/experiments"),
                (Method::GET, "/v1/experiments/soak-plain/nope"),
                (Method::POST, "/v1/experiments/soak-plain/assign/more"),
                (Method::GET, "/v1/experiments/no-such-experiment"),
                (Method::GET, "/v1/flags/no-such-flag/orgs"),
                (
                    Method::GET,
                    "/v1/experiments/soak-study/cohorts/not-a-cohort/participants",
                ),
                (
                    Method::GET,
                    "/v1/experiments/soak-study/participants/no-such-participant",
                ),
                (
                    Method::POST,
                    "/v1/experiments/no-such-experiment/participants/p1/route",
                ),
                (Method::GET, "/%2e%2e/%2e%2e/etc/passwd"),
            ];
            let (method, path) = rng.pick(&routes);
            Req::hostile("unknown_route", method.clone(), *path).expect(&[400, 404, 422])
        }
        Op::WrongMethod => {
            let frob = Method::from_bytes(b"FROB").expect("a valid token");
            let routes = [
                (Method::PATCH, "/v1/experiments/soak-plain"),
                (Method::DELETE, "/v1/assign"),
                (Method::GET, "/v1/assign"),
                (Method::PUT, "/healthz"),
                (Method::POST, "/v1/flags"),
                (Method::GET, "/v1/experiments/soak-plain/assign"),
                (frob, "/v1/experiments"),
            ];
            let (method, path) = rng.pick(&routes);
            Req::hostile("wrong_method", method.clone(), *path).expect(&[405])
        }
        Op::BadQuery => {
            let q = *rng.pick(&[
                "limit=abc",
                "limit=0",
                "limit=100000",
                "before=x",
                "limit=-1",
                "limit=99999999999999999999",
                "before=%00",
                "limit=1&limit=2",
            ]);
            // U+0000 is 422 wherever it is (§1); the rest is a bad query.
            let expect: &'static [u16] = if q.contains("%00") { &[422] } else { &[400] };
            Req::hostile(
                "bad_query",
                Method::GET,
                format!("/v1/experiments/{STUDY}/routing/events?{q}"),
            )
            .expect(expect)
        }
        Op::BadIds => {
            let long = "x".repeat(257);
            let id = rng
                .pick(&[
                    json!(-1),
                    json!(1.5),
                    json!({"a": 1}),
                    json!([1]),
                    json!(true),
                    json!(null),
                    json!(""),
                    json!(long),
                ])
                .clone();
            let body = if rng.chance(0.5) {
                json!({"org_id": id, "unit_id": "pr-1"})
            } else {
                json!({"org_id": 1, "unit_id": id})
            };
            if rng.chance(0.2) {
                Req::hostile("bad_ids", Method::POST, assign_path)
                    .raw(JSON, r#"{"org_id": 18446744073709551616, "unit_id": "a"}"#)
            } else {
                Req::hostile("bad_ids", Method::POST, assign_path).json(&body)
            }
            .expect(&[422])
        }
        Op::BadKeys => {
            let long = format!("/v1/experiments/{}", "k".repeat(201));
            let path = rng
                .pick(&[
                    "/v1/experiments/bad%20key".to_string(),
                    long,
                    "/v1/flags/%C3%A9t%C3%A9".into(),
                    "/v1/experiments/a%2Fb".into(),
                ])
                .clone();
            Req::hostile("bad_keys", Method::PUT, path)
                .json(&json!({"treatments": [{"name": "bad name", "weight": 1}]}))
                .expect(&[422])
        }
        Op::BatchOverLimit => {
            let items: Vec<Value> = (0..1001)
                .map(|i| json!({"experiment": PLAIN, "org_id": 1, "unit_id": format!("pr-{i}")}))
                .collect();
            Req::hostile("batch_over_limit", Method::POST, "/v1/assign")
                .json(&json!({ "items": items }))
                .expect(&[422])
        }
        Op::DupRegister => return dup_register(ctx, r).await,
        Op::RawRequest => return raw_request(ctx, rng, r).await,
        _ => return,
    };
    ctx.send(r, req).await;
}

/// Durations out of the range of §1 (1 to 31 536 000 s) must be 422.
/// Should the server store one anyway, a pair is routed, accepted and
/// declined in that study, to show what the stored value does, and the study
/// is deleted so that such studies do not pile up.
async fn huge_duration(ctx: &Ctx, rng: &mut Rng, r: usize) {
    let value = *rng.pick(&[
        "1000000000000",
        "18446744073709551615",
        "18446744073709551616",
        "31536001",
        "0",
        "1.5",
    ]);
    let doc = serde_json::to_string(&study_doc())
        .expect("a Value always serializes")
        .replace(
            &format!("\"wait_timeout_seconds\":{WAIT_TIMEOUT_SECS}"),
            &format!("\"wait_timeout_seconds\":{value}"),
        );
    let path = format!("/v1/experiments/soak-wt-{}", ctx.next_id());
    let put = Req::hostile("huge_wait_timeout", Method::PUT, path.clone())
        .raw(JSON, doc)
        .expect(&[422]);
    if ctx
        .send(r, put)
        .await
        .is_none_or(|a| !(200..300).contains(&a.status))
    {
        return;
    }
    // Scores 8 and 2 make a pair that must accept (study_doc's second group).
    // Same replica throughout: this is about the duration, not propagation.
    for (id, score) in [("high", 8), ("low", 2)] {
        let p = format!("{path}/participants/{id}");
        let body = json!({"attributes": {"score": score}});
        let reg = Req::hostile("huge_wait_timeout.register", Method::PUT, p.clone())
            .json(&body)
            .expect(&[201]);
        ctx.send(r, reg).await;
        let route = Req::hostile(
            "huge_wait_timeout.route",
            Method::POST,
            format!("{p}/route"),
        )
        .expect(OK);
        ctx.send(r, route).await;
    }
    // 409 if the pair did not form; never 5xx.
    for (id, verb) in [("high", "accept"), ("low", "decline")] {
        let req = Req::hostile(
            "huge_wait_timeout.accept_decline",
            Method::POST,
            format!("{path}/participants/{id}/{verb}"),
        )
        .expect(&[200, 409]);
        ctx.send(r, req).await;
    }
    ctx.send(
        r,
        Req::hostile("huge_wait_timeout.delete", Method::DELETE, path).expect(&[204]),
    )
    .await;
}

/// Legal but extreme weights: the layout must still cover every bucket.
async fn extreme_weights(ctx: &Ctx, rng: &mut Rng, r: usize) {
    let key = format!("soak-w-{}", ctx.next_id());
    let weights = *rng.pick(&[
        r#"[{"name": "a", "weight": 1e308}, {"name": "b", "weight": 1e308}]"#,
        r#"[{"name": "a", "weight": 1e305}, {"name": "b", "weight": 1e305}, {"name": "c", "weight": 1e305}]"#,
        r#"[{"name": "a", "weight": 5e-324}, {"name": "b", "weight": 1}]"#,
        r#"[{"name": "a", "weight": 5e-324}, {"name": "b", "weight": 5e-324}]"#,
        r#"[{"name": "a", "weight": 1e308}, {"name": "b", "weight": 5e-324}, {"name": "c", "weight": 1e308}]"#,
    ]);
    let path = format!("/v1/experiments/{key}");
    let req = Req::hostile("extreme_weights.create", Method::PUT, path.clone())
        .raw(JSON, format!(r#"{{"treatments": {weights}}}"#))
        .expect(&[201]);
    let Some(a) = ctx.send(r, req).await else {
        return;
    };
    if a.status != 201 {
        return;
    }
    let layout = a.json()["layout"].clone();
    let covered: i64 = layout
        .as_array()
        .map(|l| {
            l.iter()
                .map(|s| s["end"].as_i64().unwrap_or(0) - s["start"].as_i64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    if covered != 10_000 {
        ctx.anomaly(format!(
            "weights {weights} gave a layout covering {covered} of 10000 buckets: {layout}"
        ));
    }
    let other = ctx.other(r);
    let body = json!({"org_id": 1, "unit_id": "pr-1"});
    ctx.send(
        other,
        Req::hostile(
            "extreme_weights.assign",
            Method::POST,
            format!("{path}/assign"),
        )
        .json(&body)
        .expect(OK),
    )
    .await;
    ctx.send(
        r,
        Req::hostile("extreme_weights.delete", Method::DELETE, path).expect(&[204]),
    )
    .await;
}

/// One new participant registered 8 times at once over both replicas: the
/// §5 says exactly one 201.
async fn dup_register(ctx: &Ctx, r: usize) {
    let path = format!("/v1/experiments/{STUDY}/participants/dup-{}", ctx.next_id());
    let body = json!({"attributes": {"score": 6}});
    let calls = (0..8).map(|i| {
        let req = Req::hostile("dup_register", Method::PUT, path.clone())
            .json(&body)
            .expect(&[200, 201]);
        ctx.send((r + i) % ctx.replicas.len(), req)
    });
    let answers = futures_join_all(calls).await;
    let answered: Vec<u16> = answers.iter().flatten().map(|a| a.status).collect();
    let created = answered.iter().filter(|&&s| s == 201).count();
    // Transport errors are reported on their own; judge complete sets only.
    if answered.len() == 8 && created != 1 {
        ctx.anomaly(format!(
            "PUT {path} 8 times at once answered {answered:?}: 201 {created} times, not once"
        ));
    }
}

/// `join_all` without the futures crate: spawn-free, polls them together.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------
// Raw TCP: what an HTTP client library will not send

/// Malformed requests written byte by byte; the answer's status is read from
/// the status line (0: closed without an answer, acceptable only where noted).
async fn raw_request(ctx: &Ctx, rng: &mut Rng, r: usize) {
    let host = "Host: 127.0.0.1\r\n";
    let (kind, bytes, expect): (&'static str, Vec<u8>, &'static [u16]) = match rng.below(10) {
        0 => (
            "raw.nul_in_path",
            format!("GET /v1/experiments/soak\0plain HTTP/1.1\r\n{host}\r\n").into_bytes(),
            &[400],
        ),
        1 => (
            "raw.nul_in_header",
            format!("GET /healthz HTTP/1.1\r\n{host}X-Odd: a\0b\r\n\r\n").into_bytes(),
            &[400],
        ),
        2 => (
            "raw.chunked_over_1mib",
            big().chunked_over.clone(),
            &[413, 0],
        ),
        3 => (
            "raw.long_request_line",
            format!(
                "GET /v1/experiments/{} HTTP/1.1\r\n{host}\r\n",
                "a".repeat(100_000)
            )
            .into_bytes(),
            &[400, 404, 414, 422, 431, 0],
        ),
        4 => {
            let headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
            (
                "raw.many_headers",
                format!("GET /healthz HTTP/1.1\r\n{host}{headers}\r\n").into_bytes(),
                &[431, 400],
            )
        }
        6 => (
            "raw.bad_version",
            format!("GET /healthz HTTP/9.9\r\n{host}\r\n").into_bytes(),
            &[400, 0],
        ),
        7 => (
            "raw.h2_preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            &[400, 0],
        ),
        8 => (
            // Both framings at once (a smuggling attempt): chunked wins or it is refused.
            "raw.te_and_cl",
            format!("GET /healthz HTTP/1.1\r\n{host}transfer-encoding: chunked\r\ncontent-length: 3\r\nconnection: close\r\n\r\n0\r\n\r\n").into_bytes(),
            &[200, 400],
        ),
        _ => (
            "raw.garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03GARBAGE\r\n\r\n".to_vec(),
            &[400, 0],
        ),
    };
    let t = Instant::now();
    let status = raw_exchange(ctx.replicas[r].addr, &bytes).await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut s = ctx.stats();
    match status {
        Ok(status) => {
            s.count(Class::Hostile, kind, status, ms);
            if status >= 500 {
                s.server_error(kind, status, || {
                    format!(
                        "{status} to raw {kind} on {}: {}",
                        ctx.replicas[r].addr,
                        summarize(&bytes)
                    )
                });
            } else if !expect.contains(&status) {
                s.unexpected(kind, status, || {
                    format!("expected {expect:?}: raw {}", summarize(&bytes))
                });
            }
        }
        Err(e) => {
            s.count(Class::Hostile, kind, 0, ms);
            *s.transport
                .entry(format!("{kind}: {}", clip(&e.to_string(), 80)))
                .or_default() += 1;
        }
    }
}

async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<u16> {
    let stream = TcpStream::connect(addr).await?;
    // The server may answer (413, 400) and close before taking it all; what
    // it said still counts, so a failed write is not the end.
    let _ = write_all(&stream, bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match read_some(&stream, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(2).any(|w| w == b"\r\n") {
                        break;
                    }
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .is_err()
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within 15 s",
        ));
    }
    Ok(status_of(&got))
}

/// The status of an HTTP/1.x status line; 0 if there is none.
fn status_of(bytes: &[u8]) -> u16 {
    let line = String::from_utf8_lossy(&bytes[..bytes.len().min(32)]).to_string();
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

// Plain readiness-based I/O on tokio's TcpStream: needs no tokio feature
// beyond "net", which allot already uses.
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

#[derive(Clone, Copy)]
enum Stall {
    /// Connects and sends nothing.
    Silent,
    /// Sends part of a request head, then nothing.
    Partial,
    /// Sends a request head one byte a second: each read makes progress, the
    /// head is never complete.
    Trickle,
    /// A complete request, its answer, then part of the next head.
    KeepAlive,
}

/// Opens a few stalled connections per second, spread over the replicas, and
/// keeps each until the server closes it (or gives up and counts a leak).
async fn half_open_loop(ctx: Arc<Ctx>, deadline: tokio::time::Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / HALF_OPEN_PER_SEC));
    let mut n = 0u64;
    while tokio::time::Instant::now() < deadline && !ctx.stopped() {
        tick.tick().await;
        let stall = [
            Stall::Silent,
            Stall::Partial,
            Stall::Trickle,
            Stall::KeepAlive,
        ][(n % 4) as usize];
        n += 1;
        let r = ctx.replica();
        let ctx2 = Arc::clone(&ctx);
        ctx.half_open_live.fetch_add(1, Ordering::Relaxed);
        ctx.stats().half_open_opened += 1;
        tokio::spawn(async move {
            stalled_connection(&ctx2, r, stall).await;
            ctx2.half_open_live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn stalled_connection(ctx: &Ctx, r: usize, stall: Stall) {
    let addr = ctx.replicas[r].addr;
    let partial = format!(
        "POST /v1/experiments/{PLAIN}/assign HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"
    );
    let Ok(stream) = TcpStream::connect(addr).await else {
        *ctx.stats()
            .transport
            .entry("stalled: connect".into())
            .or_default() += 1;
        return;
    };
    let mut t0 = Instant::now();
    let mut buf = [0u8; 4096];
    match stall {
        Stall::Silent => {}
        Stall::Partial => {
            let _ = write_all(&stream, partial.as_bytes()).await;
        }
        Stall::Trickle => {}
        Stall::KeepAlive => {
            let _ = write_all(&stream, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), read_some(&stream, &mut buf)).await;
            // The server's timer restarts after its response.
            t0 = Instant::now();
            let _ = write_all(&stream, partial.as_bytes()).await;
        }
    }
    let trickle = partial.as_bytes();
    let mut sent = 0;
    let mut answer = Vec::new();
    let closed = loop {
        let wait = HALF_OPEN_GIVE_UP.saturating_sub(t0.elapsed());
        if wait.is_zero() {
            break false;
        }
        let step = if matches!(stall, Stall::Trickle) {
            wait.min(Duration::from_secs(1))
        } else {
            wait
        };
        match tokio::time::timeout(step, read_some(&stream, &mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) if matches!(stall, Stall::Trickle) && sent < trickle.len() => {
                if write_all(&stream, &trickle[sent..sent + 1]).await.is_err() {
                    break true;
                }
                sent += 1;
            }
            Err(_) => {}
        }
    };
    let secs = t0.elapsed().as_secs_f32();
    let mut s = ctx.stats();
    if !answer.is_empty() {
        let status = status_of(&answer);
        *s.half_open_answers.entry(status).or_default() += 1;
        if status >= 500 {
            s.server_error("stalled", status, || {
                format!(
                    "{status} to a stalled connection on {addr}: {}",
                    summarize(&answer)
                )
            });
        }
    }
    if closed {
        s.half_open_closed_secs.push(secs);
    } else {
        s.half_open_not_closed += 1;
        drop(s);
        ctx.anomaly(format!(
            "a stalled connection to {addr} was still open after {} s",
            HALF_OPEN_GIVE_UP.as_secs()
        ));
    }
}

// ---------------------------------------------------------------------------
// Watching the replicas through /proc

#[derive(Clone, Copy, Default)]
struct ProcSample {
    at: f64,
    alive: bool,
    rss_kib: u64,
    cpu_ticks: u64,
    fds: usize,
}

fn proc_sample(pid: u32, at: f64) -> ProcSample {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that closes the command name: state is the first,
    // utime and stime the 12th and 13th (fields 14 and 15 of proc(5)).
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, r)| r.split_whitespace().collect());
    let alive = rest
        .first()
        .is_some_and(|state| *state != "Z" && *state != "X");
    let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    ProcSample {
        at,
        alive,
        rss_kib,
        cpu_ticks: field(11) + field(12),
        fds,
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

#[derive(Clone, Copy, Default)]
struct Metrics {
    bytes: usize,
    series: usize,
}

struct Watch {
    pids: Vec<u32>,
    tck: f64,
    /// Every 5 s, per replica.
    samples: Vec<Vec<ProcSample>>,
    baseline: Vec<ProcSample>,
    start: Vec<ProcSample>,
    end: Vec<ProcSample>,
    drained: Vec<ProcSample>,
    /// CPU % over the 10 s before the start and end marks.
    cpu_start: Vec<f64>,
    cpu_end: Vec<f64>,
    metrics_start: Vec<Metrics>,
    metrics_end: Vec<Metrics>,
}

impl Watch {
    async fn new(ctx: &Ctx) -> Self {
        let pids: Vec<u32> = ctx.replicas.iter().map(|r| r.pid).collect();
        let baseline: Vec<ProcSample> = pids.iter().map(|&p| proc_sample(p, 0.0)).collect();
        for (i, s) in baseline.iter().enumerate() {
            if !s.alive {
                println!(
                    "warning: replica {} (pid {}) is not visible in /proc",
                    i + 1,
                    pids[i]
                );
            }
        }
        Watch {
            samples: baseline.iter().map(|&s| vec![s]).collect(),
            pids,
            tck: clock_ticks(),
            baseline,
            start: Vec::new(),
            end: Vec::new(),
            drained: Vec::new(),
            cpu_start: Vec::new(),
            cpu_end: Vec::new(),
            metrics_start: Vec::new(),
            metrics_end: Vec::new(),
        }
    }

    fn sample(&mut self, at: f64) {
        for (i, &pid) in self.pids.iter().enumerate() {
            self.samples[i].push(proc_sample(pid, at));
        }
    }

    /// Which replica (1-based) is gone, if any.
    fn dead(&self) -> Option<usize> {
        self.samples
            .iter()
            .position(|s| s.last().is_some_and(|s| !s.alive))
            .map(|i| i + 1)
    }

    /// CPU % of replica `i` from the sample nearest `secs` before its last one.
    fn cpu_over(&self, i: usize, secs: f64) -> f64 {
        let samples = &self.samples[i];
        let Some(last) = samples.last() else {
            return f64::NAN;
        };
        let first = samples
            .iter()
            .rev()
            .find(|s| last.at - s.at >= secs - 0.5)
            .unwrap_or(&samples[0]);
        if last.at <= first.at {
            return f64::NAN;
        }
        (last.cpu_ticks.saturating_sub(first.cpu_ticks)) as f64 / self.tck / (last.at - first.at)
            * 100.0
    }

    fn latest(&self) -> Vec<ProcSample> {
        self.samples
            .iter()
            .map(|s| s.last().copied().unwrap_or_default())
            .collect()
    }

    async fn mark_start(&mut self, ctx: &Ctx) {
        self.start = self.latest();
        self.cpu_start = (0..self.pids.len())
            .map(|i| self.cpu_over(i, 10.0))
            .collect();
        self.metrics_start = metrics(ctx).await;
    }

    async fn mark_end(&mut self, ctx: &Ctx, at: f64) {
        self.sample(at);
        self.end = self.latest();
        self.cpu_end = (0..self.pids.len())
            .map(|i| self.cpu_over(i, 10.0))
            .collect();
        self.metrics_end = metrics(ctx).await;
    }

    fn mark_drained(&mut self) {
        let at = self.end.first().map_or(0.0, |s| s.at);
        self.drained = self.pids.iter().map(|&p| proc_sample(p, at)).collect();
    }
}

/// Size of each replica's /metrics: series of deleted experiments must leave.
async fn metrics(ctx: &Ctx) -> Vec<Metrics> {
    let mut out = Vec::new();
    for r in 0..ctx.replicas.len() {
        let m = ctx
            .send(r, Req::valid("read.metrics", Method::GET, "/metrics"))
            .await
            .map(|a| Metrics {
                bytes: a.body.len(),
                series: String::from_utf8_lossy(&a.body)
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.is_empty())
                    .count(),
            })
            .unwrap_or_default();
        out.push(m);
    }
    out
}

// ---------------------------------------------------------------------------
// Reporting

fn percentile(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

fn latency(ms: &mut [f32]) -> String {
    ms.sort_by(f32::total_cmp);
    format!(
        "p50 {:.1} p99 {:.1} max {:.1} ms",
        percentile(ms, 0.5),
        percentile(ms, 0.99),
        ms.last().map_or(f64::NAN, |&m| f64::from(m))
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn progress_line(ctx: &Ctx, watch: &Watch, now: f64, window: f64) {
    let mut s = ctx.stats();
    let window_requests = s.class.iter().map(|c| c.window_ms.len()).sum::<usize>();
    let valid = latency(&mut s.class[0].window_ms);
    let hostile = latency(&mut s.class[1].window_ms);
    s.class.iter_mut().for_each(|c| c.window_ms.clear());
    let transport: u64 = s.transport.values().sum();
    let procs: Vec<String> = watch
        .latest()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "r{} rss {:.1} MiB cpu {:.0}% fds {}",
                i + 1,
                mib(p.rss_kib),
                watch.cpu_over(i, window),
                p.fds
            )
        })
        .collect();
    println!(
        "[{now:>4.0} s] {:.0} req/s (valid {}, hostile {} so far) | 5xx {} | unexpected {} | transport {} | shed {} | valid {valid} | hostile {hostile} | stalled open {} | {} | load {}",
        window_requests as f64 / window.max(1.0),
        s.class[0].requests,
        s.class[1].requests,
        s.server_errors,
        s.unexpected.values().map(|u| u.0).sum::<u64>(),
        transport,
        s.shed,
        ctx.half_open_live.load(Ordering::Relaxed),
        procs.join(" | "),
        loadavg()
    );
}

/// The machine's load average: the replicas share the cores with whatever
/// else runs, which the latency figures must be read against.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn counts<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the final report; true when the run passed.
fn report(ctx: &Ctx, watch: &Watch, elapsed: f64, rate: f64) -> bool {
    let mut s = ctx.stats();
    let total: u64 = s.class.iter().map(|c| c.requests).sum();
    println!();
    println!("== soak report: {elapsed:.0} s, target {rate:.0} requests/s");
    println!(
        "requests     {total} ({:.1}/s): valid {}, hostile {}; shed at the in-flight cap {}",
        total as f64 / elapsed,
        s.class[0].requests,
        s.class[1].requests,
        s.shed
    );
    for (name, c) in ["valid", "hostile"].iter().zip(s.class.iter()) {
        println!("  {name:<8} by kind: {}", counts(&c.by_kind));
    }
    for (name, c) in ["valid", "hostile"].iter().zip(s.class.iter()) {
        println!(
            "statuses     {name:<8} {} (0 = no answer)",
            counts(&c.statuses)
        );
    }
    println!("5xx          {}", s.server_errors);
    for ((kind, status), n) in &s.server_errors_by_kind {
        println!("  {kind} -> {status}: {n}");
    }
    for line in &s.server_error_samples {
        println!("  e.g. {line}");
    }
    let unexpected: u64 = s.unexpected.values().map(|u| u.0).sum();
    println!("unexpected   {unexpected} (a status outside the request's expected ones, not 5xx)");
    for ((kind, status), (n, first)) in &s.unexpected {
        println!("  {kind} -> {status}: {n}, first: {first}");
    }
    let transport: u64 = s.transport.values().sum();
    println!("transport    {transport} errors");
    for (what, n) in &s.transport {
        println!("  {what}: {n}");
    }
    for line in &s.transport_samples {
        println!("  e.g. {line}");
    }
    let valid = latency(&mut s.class[0].ms);
    let hostile = latency(&mut s.class[1].ms);
    println!("latency      valid   {valid}");
    println!("latency      hostile {hostile}");
    // Where the tail comes from: the kinds with the highest p99.
    let mut kinds: Vec<(f64, String)> = s
        .class
        .iter_mut()
        .flat_map(|c| c.kind_ms.iter_mut())
        .map(|(kind, ms)| {
            ms.sort_by(f32::total_cmp);
            let line = format!("{kind} ({}): {}", ms.len(), latency(ms));
            (percentile(ms, 0.99), line)
        })
        .collect();
    kinds.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("slowest      by p99:");
    for (_, line) in kinds.iter().take(8) {
        println!("  {line}");
    }
    println!(
        "load average {} at the end (machine-wide, 1/5/15 min)",
        loadavg()
    );
    s.half_open_closed_secs.sort_by(f32::total_cmp);
    println!(
        "stalled      {} opened; {} closed by the server after p50 {:.1} s, max {:.1} s; {} not closed within {} s; answers seen: {}",
        s.half_open_opened,
        s.half_open_closed_secs.len(),
        percentile(&s.half_open_closed_secs, 0.5),
        s.half_open_closed_secs.last().map_or(f64::NAN, |&x| f64::from(x)),
        s.half_open_not_closed,
        HALF_OPEN_GIVE_UP.as_secs(),
        if s.half_open_answers.is_empty() { "none".into() } else { counts(&s.half_open_answers) }
    );
    let mut died = false;
    for (i, r) in ctx.replicas.iter().enumerate() {
        let get = |v: &Vec<ProcSample>| v.get(i).copied().unwrap_or_default();
        let (b, st, en, dr) = (
            get(&watch.baseline),
            get(&watch.start),
            get(&watch.end),
            get(&watch.drained),
        );
        let alive = dr.alive;
        died |= !alive;
        println!(
            "replica {} {} pid {}: {}",
            i + 1,
            r.addr,
            r.pid,
            if alive { "alive" } else { "DEAD" }
        );
        println!(
            "  rss MiB    before load {:.1}, start {:.1} (at {:.0} s), end {:.1} (at {:.0} s), drained {:.1}",
            mib(b.rss_kib),
            mib(st.rss_kib),
            st.at,
            mib(en.rss_kib),
            en.at,
            mib(dr.rss_kib)
        );
        let whole = if en.at > st.at {
            en.cpu_ticks.saturating_sub(st.cpu_ticks) as f64 / watch.tck / (en.at - st.at) * 100.0
        } else {
            f64::NAN
        };
        println!(
            "  cpu %      start {:.0}, end {:.0} (each over 10 s), mean start→end {whole:.0}",
            watch.cpu_start.get(i).copied().unwrap_or(f64::NAN),
            watch.cpu_end.get(i).copied().unwrap_or(f64::NAN)
        );
        println!(
            "  open fds   before load {}, start {}, end {}, drained {}",
            b.fds, st.fds, en.fds, dr.fds
        );
        let (ms, me) = (
            watch.metrics_start.get(i).copied().unwrap_or_default(),
            watch.metrics_end.get(i).copied().unwrap_or_default(),
        );
        println!(
            "  /metrics   start {} bytes {} series, end {} bytes {} series",
            ms.bytes, ms.series, me.bytes, me.series
        );
    }
    println!("anomalies    {}", s.anomalies);
    for line in &s.anomaly_samples {
        println!("  {line}");
    }
    let mut failures = Vec::new();
    if s.server_errors > 0 {
        failures.push(format!("{} 5xx", s.server_errors));
    }
    if died {
        failures.push("a replica died".into());
    }
    if s.anomalies > 0 {
        failures.push(format!("{} anomalies", s.anomalies));
    }
    if failures.is_empty() {
        println!("RESULT       PASS");
        true
    } else {
        println!("RESULT       FAIL: {}", failures.join(", "));
        false
    }
}
