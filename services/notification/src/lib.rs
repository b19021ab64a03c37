//! The notification service: notifications for one user or operator, system alerts, analytics for admins.
//!
//! Today this process serves the `EventStream` that gateways attach to, with
//! health checking and reflection; its own `chatai.v1.Notification` API (see
//! `proto/chatai/v1/notification.proto`) is built on this crate by the issue that
//! introduces it, and calls to it answer UNIMPLEMENTED until then.

use chatai_kit::config::ServiceCommon;
use chatai_kit::grpc::ServeError;
use chatai_kit::host::ServiceHost;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs the notification service on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    common: ServiceCommon,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    ServiceHost::new(&common, shutdown)
        .serve(listener, None, &[])
        .await
}
