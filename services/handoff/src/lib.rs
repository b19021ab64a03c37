//! The handoff service: the queue of dialogs waiting for a human operator and their assignment.
//!
//! Today this process serves the `EventStream` that gateways attach to, with
//! health checking and reflection; its own `chatai.v1.Handoff` API (see
//! `proto/chatai/v1/handoff.proto`) is built on this crate by the issue that
//! introduces it, and calls to it answer UNIMPLEMENTED until then.

use chatai_kit::config::ServiceCommon;
use chatai_kit::grpc::ServeError;
use chatai_kit::host::ServiceHost;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs the handoff service on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    common: ServiceCommon,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    ServiceHost::new(&common, shutdown)
        .serve(listener, None, &[])
        .await
}
