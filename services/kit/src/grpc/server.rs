//! The gRPC server every service runs, built in one place: the service's own
//! routes plus health checking and reflection (so `grpcurl` works), a span per
//! request that continues the caller's trace, the internal-token check (the
//! server-side half of [`TokenInterceptor`](super::TokenInterceptor)) and,
//! when configured, mutual TLS; every call counted and timed
//! ([`MetricsLayer`](super::MetricsLayer)).

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::config::InternalAuth;
use crate::telemetry;

/// Why a gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot read the listener address: {0}")]
    Io(#[from] std::io::Error),
    /// A long-lived task of the service stopped before shutdown.
    #[error(transparent)]
    Task(#[from] crate::supervisor::TaskFailed),
}

/// How long a stopping server waits for in-flight calls.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Health checking path: left open so probes need no token.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Serves `routes` on `listener` until `shutdown` is cancelled, then drains
/// in-flight calls. `service_names` are the fully qualified names reported as
/// SERVING by the health service (e.g. `chatai.v1.Chat`); the overall status
/// (the empty name) is the service's own to set through `reporter`; calls
/// are counted and timed, and their spans named, under `service` (the
/// part's name, e.g. `chat`).
pub async fn serve(
    listener: TcpListener,
    service: &'static str,
    routes: Routes,
    reporter: HealthReporter,
    service_names: &[&str],
    auth: &InternalAuth,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr: SocketAddr = listener.local_addr()?;
    let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    for name in service_names {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(chatai_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let expected = auth.token().map(|token| format!("Bearer {token}"));
    let part: &'static str = service;
    let mut builder = Server::builder();
    let tls = auth.server_tls();
    let mutual_tls = tls.is_some();
    if let Some(tls) = tls {
        // Mutual TLS: a client without a certificate signed by the
        // deployment's CA is refused during the handshake.
        builder = builder.tls_config(tls)?;
    }
    tracing::info!(%addr, services = ?service_names, mutual_tls, token = expected.is_some(), "gRPC server listening");

    let server = builder
        // Outermost: one span per call, continuing the trace of the caller
        // (the gateway's span for the client frame) from its metadata; named
        // `{part}.{method}` (`chat.SendMessage`) so that a trace of the
        // all-in-one process tells the parts apart.
        .trace_fn(move |request: &http::Request<()>| {
            let path = request.uri().path();
            let method = path.rsplit('/').next().unwrap_or(path);
            let name = format!("{part}.{method}");
            let span = tracing::info_span!(
                "grpc",
                otel.name = name.as_str(),
                otel.kind = "server",
                chatai.part = part,
                rpc.system = "grpc",
                path = %path
            );
            let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
            telemetry::adopt_parent(&span, &metadata);
            span
        })
        // Then the metrics: every call counted and timed, refused ones too.
        .layer(super::MetricsLayer::new(super::Side::Server, service))
        // Then the internal token: nothing below runs for a caller without it.
        .layer(tower::filter::FilterLayer::new(
            move |request: http::Request<tonic::body::Body>| {
                check_internal_token(expected.as_deref(), request)
            },
        ))
        .add_routes(routes)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, an event streamed right after another
            // waits for the peer's delayed ACK: ~40 ms on an idle stream.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            not_serving_then_stop(reporter, service_names, shutdown.clone()),
        );
    // Drain in-flight calls, but not forever: a peer that stopped reading
    // must not keep the process from stopping.
    let drain_limit = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = server => served?,
        _ = drain_limit => tracing::warn!(%addr, "in-flight calls did not finish within {DRAIN_TIMEOUT:?}; stopping anyway"),
    }
    tracing::info!(%addr, "gRPC server stopped");
    Ok(())
}

/// Resolves when the server should stop accepting: on `shutdown`, after
/// health checking says NOT_SERVING for the whole server and each of
/// `service_names` — first, so that peers watching health move away while
/// in-flight calls drain.
fn not_serving_then_stop(
    reporter: HealthReporter,
    service_names: &[&str],
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + use<> {
    let names: Vec<String> = service_names
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    async move {
        shutdown.cancelled().await;
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in names {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!("reporting NOT_SERVING; stopping");
    }
}

fn check_internal_token<B>(
    expected: Option<&str>,
    request: http::Request<B>,
) -> Result<http::Request<B>, tonic::Status> {
    let Some(expected) = expected else {
        return Ok(request);
    };
    if request.uri().path().starts_with(HEALTH_PREFIX) {
        return Ok(request);
    }
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match presented {
        Some(value) if constant_time_eq(value.as_bytes(), expected.as_bytes()) => Ok(request),
        _ => Err(tonic::Status::unauthenticated(
            "missing or wrong internal token",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On shutdown the server says NOT_SERVING first: a peer watching its
    /// health hears it before the server stops.
    #[tokio::test]
    async fn shutdown_reports_not_serving_first() {
        use tonic_health::pb::health_check_response::ServingStatus as Status;
        use tonic_health::pb::health_client::HealthClient;

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let reporter = HealthReporter::new();
        let shutdown = CancellationToken::new();
        let routes = Routes::default();
        let server = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                serve(
                    listener,
                    "test",
                    routes,
                    reporter,
                    &["chatai.v1.Test"],
                    &InternalAuth::default(),
                    shutdown,
                )
                .await
            }
        });
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("an address")
            .connect()
            .await
            .expect("connects");
        let mut watch = HealthClient::new(channel)
            .watch(tonic_health::pb::HealthCheckRequest {
                service: "chatai.v1.Test".to_owned(),
            })
            .await
            .expect("watching")
            .into_inner();
        let status =
            |message: Option<tonic_health::pb::HealthCheckResponse>| message.map(|m| m.status);
        let first = watch.message().await.expect("a status");
        assert_eq!(status(first), Some(Status::Serving as i32));
        shutdown.cancel();
        let next = watch.message().await.expect("a status");
        assert_eq!(status(next), Some(Status::NotServing as i32));
        server
            .await
            .expect("the server task")
            .expect("the server stops cleanly");
    }

    fn request(path: &str, auth: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder.body(()).unwrap()
    }

    /// Without a configured token every call passes; with one, only calls
    /// carrying it (and health probes) do.
    #[test]
    fn internal_token_is_enforced_when_configured() {
        assert!(check_internal_token(None, request("/chatai.v1.Chat/SendMessage", None)).is_ok());
        let expected = Some("Bearer s3cret");
        assert!(
            check_internal_token(expected, request("/chatai.v1.Chat/SendMessage", None)).is_err()
        );
        assert!(
            check_internal_token(
                expected,
                request("/chatai.v1.Chat/SendMessage", Some("Bearer nope"))
            )
            .is_err()
        );
        assert!(
            check_internal_token(
                expected,
                request("/chatai.v1.Chat/SendMessage", Some("Bearer s3cret"))
            )
            .is_ok()
        );
        assert!(
            check_internal_token(expected, request("/grpc.health.v1.Health/Check", None)).is_ok()
        );
    }
}
