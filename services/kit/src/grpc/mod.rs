//! gRPC plumbing shared by every process. Always: [`TokenInterceptor`], which
//! puts the internal token and the trace context on outgoing calls (the
//! gateway's and the services' clients). With the `server` feature: the gRPC
//! server every service runs (`serve`), in `server.rs`. Both sides count and
//! time their calls with [`MetricsLayer`] (`metrics.rs`).

use crate::config::InternalAuth;
use crate::telemetry;

mod metrics;
pub use metrics::{Metered, MeteredChannel, MetricsLayer, Side};

#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
pub use server::{ServeError, serve};

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
