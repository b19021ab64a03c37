//! The notification service's configuration, read from the environment by the
//! binary.

use std::time::Duration;

/// The notification service's own settings (the shared ones, its database
/// among them, are in [`chatai_kit::config::ServiceCommon`]). [`Default`]
/// gives the same values as the clap defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct NotificationConfig {
    /// Seconds between two computations of the analytics pushed to admins
    /// (`analytics_update`, only for the metrics that changed).
    #[arg(
        long = "analytics-interval-secs",
        env = "CHATAI_ANALYTICS_INTERVAL_SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub analytics_interval_secs: u64,
    /// Seconds of connection history behind `total_connections`,
    /// `average_connection_duration` and `error_rate`: the connections
    /// opened (or closed) in the last this many seconds.
    #[arg(
        long = "analytics-window-secs",
        env = "CHATAI_ANALYTICS_WINDOW_SECS",
        default_value_t = 3_600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub analytics_window_secs: u64,
    /// Seconds a stored connection event is kept; older ones are deleted
    /// (every tenth of this, at most hourly). 30 days by default.
    #[arg(
        long = "connection-events-retention-secs",
        env = "CHATAI_CONNECTION_EVENTS_RETENTION_SECS",
        default_value_t = 30 * 24 * 3_600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub connection_events_retention_secs: u64,
}

impl NotificationConfig {
    /// The analytics period (at least one second).
    pub fn analytics_interval(&self) -> Duration {
        Duration::from_secs(self.analytics_interval_secs.max(1))
    }

    /// The window of the connection metrics (at least one second).
    pub fn analytics_window(&self) -> Duration {
        Duration::from_secs(self.analytics_window_secs.max(1))
    }

    /// How long connection events are kept (at least one second).
    pub fn connection_events_retention(&self) -> Duration {
        Duration::from_secs(self.connection_events_retention_secs.max(1))
    }

    /// How often old connection events are trimmed: a tenth of the
    /// retention, between one second and one hour.
    pub fn trim_interval(&self) -> Duration {
        (self.connection_events_retention() / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(3_600))
    }
}

/// The clap defaults.
impl Default for NotificationConfig {
    fn default() -> Self {
        chatai_kit::config::clap_defaults()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        notification: NotificationConfig,
    }

    /// The config flattens next to the shared settings without a clash.
    #[test]
    fn flattens_next_to_the_shared_settings() {
        #[derive(Parser, Debug)]
        struct AllInOne {
            #[command(flatten)]
            common: chatai_kit::config::ServiceCommon,
            #[command(flatten)]
            notification: NotificationConfig,
        }
        AllInOne::command().debug_assert();
    }

    /// An analytics interval of zero is refused at parse time.
    #[test]
    fn zero_interval_is_refused() {
        let parsed = Cli::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .try_get_matches_from(["chatai", "--analytics-interval-secs", "0"]);
        assert!(parsed.is_err());
    }
}
