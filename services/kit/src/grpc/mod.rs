//! gRPC plumbing shared by every process. Always: [`TokenInterceptor`], which
//! puts the internal token and the trace context on outgoing calls (the
//! gateway's and the services' clients); [`replicas`], the channel over every
//! replica of a service that those clients use, found by a
//! [`resolver::Resolver`]. With the `server` feature: the gRPC server every
//! service runs (`serve`), in `server.rs`. Both sides count and time their
//! calls with [`MetricsLayer`] (`metrics.rs`): a server on its stack, a
//! client around its replica picker (once per call, whichever replica
//! takes it).

use crate::config::InternalAuth;
use crate::telemetry;

mod metrics;
pub use metrics::{Metered, MeteredChannel, MetricsLayer, Side};

pub mod replicas;
pub mod resolver;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
pub use server::{ServeError, serve};

/// A channel to a service's replicas with the internal token on every call,
/// its calls counted and timed: what every client of a service is built on.
pub type ServiceChannel = tonic::codegen::InterceptedService<MeteredChannel, TokenInterceptor>;

/// Connects to `target`'s replicas with `auth`'s token and TLS; `caller` (the
/// part making the calls: `gateway`, `chat`, …) labels the client metrics.
pub fn service_channel(
    target: &crate::config::ServiceTarget,
    auth: &InternalAuth,
    caller: &'static str,
) -> Result<ServiceChannel, tonic::transport::Error> {
    let metered = tower::Layer::layer(
        &MetricsLayer::new(Side::Client, caller),
        target.connect(auth)?,
    );
    Ok(tonic::codegen::InterceptedService::new(
        metered,
        TokenInterceptor::new(auth),
    ))
}

/// Adds the internal token to outgoing calls: the client-side half of
/// `serve`'s check, for gateways and internal callers.
#[derive(Clone, Debug, Default)]
pub struct TokenInterceptor {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl TokenInterceptor {
    pub fn new(auth: &InternalAuth) -> Self {
        TokenInterceptor {
            header: auth
                .token()
                .and_then(|t| format!("Bearer {t}").parse().ok()),
        }
    }
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        telemetry::inject_current(request.metadata_mut());
        Ok(request)
    }
}

/// Runs `call`, and again (up to 3 more times, 50–500 ms apart, with jitter)
/// while it fails with `UNAVAILABLE`: the call was not taken in (the
/// replica could not be reached, or it is a standby that is not the
/// leader), or its replica died before answering (so it may have been
/// applied). [`replicas::Replicas`] passes over the replica that failed, so
/// the next attempt goes to another. Only for calls a repeat cannot apply
/// twice (reads, idempotency keys, changes conditional on the state).
pub async fn retry_unavailable<T, F, Fut>(call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    use backon::Retryable;
    call.retry(
        backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(50))
            .with_max_delay(std::time::Duration::from_millis(500))
            .with_max_times(3)
            .with_jitter(),
    )
    .when(|status: &tonic::Status| status.code() == tonic::Code::Unavailable)
    .await
}
