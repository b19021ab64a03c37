//! One tower layer counting and timing gRPC requests, for servers (every
//! service's stack, `server.rs`) and clients (around the replica picker of
//! every [`service_channel`](super::service_channel)):
//! `chatai_grpc_{server,client}_requests_total{service,method,code}` and
//! `…_request_duration_seconds{service,method}`.
//!
//! The code is read from the response head: tonic puts a failed call's
//! `grpc-status` there (a trailers-only response); a head without one is a
//! call that went on to succeed (its status comes in the trailers) — `OK`.
//! For a streaming method the time is until the stream started. The method
//! is the request path (`chatai.v1.Chat/SendMessage`), except for calls the
//! server did not route or refused before routing (`UNIMPLEMENTED`,
//! `UNAUTHENTICATED`): those are `unknown`, so a caller cannot make up
//! label values.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;

use crate::metrics::{
    GRPC_CLIENT_DURATION, GRPC_CLIENT_REQUESTS, GRPC_SERVER_DURATION, GRPC_SERVER_REQUESTS,
};

/// Which side of a call is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// Wraps services in [`Metered`].
#[derive(Clone, Copy, Debug)]
pub struct MetricsLayer {
    side: Side,
    service: &'static str,
}

impl MetricsLayer {
    /// Measures the calls `service` (the part: `chat`, `gateway`, …) answers
    /// or makes.
    pub fn new(side: Side, service: &'static str) -> Self {
        MetricsLayer { side, service }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            side: self.side,
            service: self.service,
        }
    }
}

/// A gRPC service (a server's routes, a client's channel) whose requests are
/// counted and timed.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    side: Side,
    service: &'static str,
}

/// A client channel over a service's replicas whose calls are counted and
/// timed.
pub type MeteredChannel = Metered<super::replicas::Replicas>;

impl<S, B, R> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<R>, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/').to_owned();
        let (side, service) = (self.side, self.service);
        let start = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => response_code(response),
                // The channel could not carry the call.
                Err(_) => Code::Unavailable,
            };
            record(side, service, &path, code, start.elapsed().as_secs_f64());
            response
        })
    }
}

/// The status a response head says (see the module doc).
fn response_code<R>(response: &http::Response<R>) -> Code {
    match response.headers().get("grpc-status") {
        Some(value) => Code::from_bytes(value.as_bytes()),
        None if response.status().is_success() => Code::Ok,
        None => Code::Unknown,
    }
}

fn record(side: Side, service: &'static str, path: &str, code: Code, seconds: f64) {
    let method = match code {
        Code::Unimplemented | Code::Unauthenticated => "unknown".to_owned(),
        _ => path.to_owned(),
    };
    let code = code_name(code);
    let (requests, duration) = match side {
        Side::Server => (GRPC_SERVER_REQUESTS, GRPC_SERVER_DURATION),
        Side::Client => (GRPC_CLIENT_REQUESTS, GRPC_CLIENT_DURATION),
    };
    metrics::counter!(requests, "service" => service, "method" => method.clone(), "code" => code)
        .increment(1);
    metrics::histogram!(duration, "service" => service, "method" => method).record(seconds);
}

/// The code as gRPC spells it (`OK`, `UNAVAILABLE`, …).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, grpc_status: Option<&str>) -> http::Response<()> {
        let mut builder = http::Response::builder().status(status);
        if let Some(code) = grpc_status {
            builder = builder.header("grpc-status", code);
        }
        builder.body(()).expect("a response")
    }

    /// A trailers-only head says the failure; a plain 200 head is a call
    /// that goes on to succeed.
    #[test]
    fn the_code_comes_from_the_head() {
        assert_eq!(response_code(&head(200, None)), Code::Ok);
        assert_eq!(response_code(&head(200, Some("14"))), Code::Unavailable);
        assert_eq!(response_code(&head(200, Some("7"))), Code::PermissionDenied);
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }
}
