//! Prometheus metrics, set up once per process: the one recorder (every part
//! of a process records into it, each with its own `service` label, so the
//! all-in-one's single `/metrics` tells the parts apart), the histogram
//! buckets, the names of the metrics kit itself records (gRPC calls, event
//! logs, Redis, database statements), and — with `server` — the little HTTP
//! listener a service started alone serves them on (`CHATAI_METRICS_ADDR`).
//!
//! Conventions, for every crate's own metrics module: names start with
//! `chatai_`, counters end in `_total`, times are `_seconds` (base units),
//! and every series has a `service` label (`gateway`, `chat`, `handoff`,
//! `presence`, `notification`); other labels come from closed sets (a frame
//! type, an error code, a gRPC method) — never a user id.
//!
//! Buckets: every histogram gets [`LATENCY_BUCKETS`] (100 µs … 10 s) unless
//! its name says otherwise: `chatai_handoff_*_seconds` (waits measured in
//! minutes) get [`WAIT_BUCKETS`], and names ending in `_size`, `_depth` or
//! `_tokens` (counts, not times) get [`COUNT_BUCKETS`].

use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// gRPC requests a server answered, by `service`, `method` and `code`.
pub const GRPC_SERVER_REQUESTS: &str = "chatai_grpc_server_requests_total";
/// Time from a request's arrival to its response head, by `service` and
/// `method` (for a streaming method: until the stream started).
pub const GRPC_SERVER_DURATION: &str = "chatai_grpc_server_request_duration_seconds";
/// gRPC requests a part made, by the calling `service`, `method` and `code`.
pub const GRPC_CLIENT_REQUESTS: &str = "chatai_grpc_client_requests_total";
/// Time from sending a request to its response head, as the caller saw it.
pub const GRPC_CLIENT_DURATION: &str = "chatai_grpc_client_request_duration_seconds";
/// Events appended to durable recipients' logs, by `service`.
pub const EVENT_LOG_APPENDS: &str = "chatai_event_log_appends_total";
/// Pages read from recipients' logs (replays, catch-ups), by `service`.
pub const EVENT_LOG_REPLAYS: &str = "chatai_event_log_replays_total";
/// Replays that could not be complete (the client is told `cursor_expired`).
pub const EVENT_LOG_CURSOR_EXPIRED: &str = "chatai_event_log_cursor_expired_total";
/// Event log operations that failed, by `service` and `backend`.
pub const EVENT_LOG_ERRORS: &str = "chatai_event_log_errors_total";
/// Redis commands that failed (the event log's and the relay's), by `service`.
pub const REDIS_ERRORS: &str = "chatai_redis_errors_total";
/// Times the Redis live relay had to subscribe again, by `service`.
pub const REDIS_RECONNECTS: &str = "chatai_redis_reconnects_total";
/// Time a database statement (or a group-committed batch) took, by
/// `service` and `statement` (a fixed name per call site).
pub const DB_STATEMENT_DURATION: &str = "chatai_db_statement_duration_seconds";

/// Every metric this crate records (the dashboard's test checks its queries
/// against these lists, one per crate).
pub const NAMES: &[&str] = &[
    GRPC_SERVER_REQUESTS,
    GRPC_SERVER_DURATION,
    GRPC_CLIENT_REQUESTS,
    GRPC_CLIENT_DURATION,
    EVENT_LOG_APPENDS,
    EVENT_LOG_REPLAYS,
    EVENT_LOG_CURSOR_EXPIRED,
    EVENT_LOG_ERRORS,
    REDIS_ERRORS,
    REDIS_RECONNECTS,
    DB_STATEMENT_DURATION,
];

/// Seconds, for calls, statements and deliveries: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Seconds, for people waiting and working: 1 s to 2 h.
pub const WAIT_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// Counts (batch sizes, queue depths, tokens): powers of two up to 4096.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// The process's Prometheus recorder, installed at the first call; every
/// later call (every gateway and service of the process) shares it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only this one's"
                );
            }
            describe();
            handle
        })
        .clone()
}

/// The recorder's settings: the buckets of the module doc.
fn builder() -> PrometheusBuilder {
    let with_buckets = |builder: PrometheusBuilder, matcher, buckets| {
        builder
            .set_buckets_for_metric(matcher, buckets)
            .unwrap_or_else(|_| PrometheusBuilder::new())
    };
    let mut builder = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    builder = with_buckets(
        builder,
        Matcher::Prefix("chatai_handoff_".into()),
        WAIT_BUCKETS,
    );
    for suffix in ["_size", "_depth", "_tokens"] {
        builder = with_buckets(builder, Matcher::Suffix(suffix.into()), COUNT_BUCKETS);
    }
    builder
}

/// The help lines of kit's own metrics.
fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(GRPC_SERVER_REQUESTS, "gRPC requests answered");
    describe_histogram!(
        GRPC_SERVER_DURATION,
        Unit::Seconds,
        "gRPC request to response head, at the server"
    );
    describe_counter!(GRPC_CLIENT_REQUESTS, "gRPC requests made");
    describe_histogram!(
        GRPC_CLIENT_DURATION,
        Unit::Seconds,
        "gRPC request to response head, at the caller"
    );
    describe_counter!(EVENT_LOG_APPENDS, "events appended to durable logs");
    describe_counter!(EVENT_LOG_REPLAYS, "pages read from durable logs");
    describe_counter!(
        EVENT_LOG_CURSOR_EXPIRED,
        "replays that could not be complete"
    );
    describe_counter!(EVENT_LOG_ERRORS, "event log operations that failed");
    describe_counter!(REDIS_ERRORS, "Redis commands that failed");
    describe_counter!(REDIS_RECONNECTS, "Redis live relay re-subscriptions");
    describe_histogram!(
        DB_STATEMENT_DURATION,
        Unit::Seconds,
        "database statements and committed batches"
    );
}

/// Runs `statement` (a database call) and records how long it took under
/// `statement`'s fixed name.
pub async fn timed_statement<F: Future>(
    service: &'static str,
    statement: &'static str,
    run: F,
) -> F::Output {
    let start = Instant::now();
    let output = run.await;
    metrics::histogram!(DB_STATEMENT_DURATION, "service" => service, "statement" => statement)
        .record(start.elapsed().as_secs_f64());
    output
}

/// Serves `/metrics` (the process's recorder) on `listener` until `shutdown`:
/// a service started alone, on `CHATAI_METRICS_ADDR`.
#[cfg(feature = "server")]
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::get;
    let handle = handle();
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let text = handle.render();
            async move {
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    text,
                )
            }
        }),
    );
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds `addr`, then [`serve`]s on it.
#[cfg(feature = "server")]
pub async fn bind_and_serve(
    addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    serve(tokio::net::TcpListener::bind(addr).await?, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names follow the Prometheus conventions the module doc states.
    #[test]
    fn names_follow_the_conventions() {
        for name in NAMES {
            assert!(name.starts_with("chatai_"), "{name}");
            assert!(
                name.ends_with("_total") || name.ends_with("_seconds"),
                "{name}"
            );
        }
    }

    /// Histograms get the buckets their names call for.
    #[test]
    fn buckets_by_name() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("chatai_x_seconds", "service" => "t").record(0.003);
            metrics::histogram!("chatai_handoff_queue_wait_seconds", "service" => "t").record(90.0);
            metrics::histogram!("chatai_x_batch_size", "service" => "t").record(3.0);
        });
        let text = handle.render();
        assert!(
            text.contains("chatai_x_seconds_bucket{service=\"t\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chatai_handoff_queue_wait_seconds_bucket{service=\"t\",le=\"120\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chatai_x_batch_size_bucket{service=\"t\",le=\"4\"} 1"),
            "{text}"
        );
    }
}
