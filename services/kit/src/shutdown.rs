//! The one shutdown signal: SIGINT or SIGTERM cancels a [`CancellationToken`]
//! that every server and task of the process watches; [`ShutdownConfig`]
//! bounds how long the process may take to stop after it.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM. Returns when either arrives
/// or when the token is cancelled by someone else.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(cause = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
        _ = token.cancelled() => return,
    }
    token.cancel();
}

/// How long a stopping process may take, read by the binary (every part).
#[derive(clap::Args, Debug, Clone)]
pub struct ShutdownConfig {
    /// Seconds from SIGTERM/SIGINT to exit: the parts drain (health says
    /// NOT_SERVING, the gateway closes its clients with 1001, services
    /// finish in-flight calls) and whatever has not stopped by then is
    /// abandoned and the process exits with an error.
    #[arg(
        long = "shutdown-timeout-secs",
        env = "CHATAI_SHUTDOWN_TIMEOUT_SECS",
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout_secs: u64,
}

impl ShutdownConfig {
    /// The bound on a shutdown.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs)
    }
}

/// The clap defaults.
impl Default for ShutdownConfig {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}
