//! Logging: a tracing subscriber writing `pretty` or `json` lines on stdout.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` wins over `level`. Calling it
/// twice is harmless (the second call is ignored).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .try_init(),
        LogFormat::Pretty => builder.with_ansi(colour()).try_init(),
    };
}

/// Colour for a person at a terminal; none in a file, a pipe or a log
/// collector, nor when `NO_COLOR` is set (<https://no-color.org>).
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The Prometheus recorder, installed once per process (several apps in one
/// test process share it). `None` if another recorder was installed first.
pub fn metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Latency buckets from 100 µs to 10 s.
            let buckets = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// The counters labelled by experiment are not here: allot keeps them itself
/// (see `engine::counters`).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "allot_http_requests_total",
        "HTTP requests by method, matched route and status"
    );
    describe_histogram!(
        "allot_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and matched route"
    );
    describe_counter!(
        "allot_store_errors_total",
        "Store operations that failed, by kind"
    );
    describe_gauge!(
        "allot_db_pool_connections",
        "Database pool connections by state (idle, in_use)"
    );
    describe_gauge!("allot_db_pool_max_connections", "Database pool size limit");
    describe_gauge!(
        "allot_config_revision",
        "Configuration revision this replica serves"
    );
    describe_gauge!(
        "allot_config_age_seconds",
        "Time since this replica last confirmed its configuration current with the store"
    );
}
