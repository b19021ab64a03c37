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
}

impl NotificationConfig {
    /// The analytics period (at least one second).
    pub fn analytics_interval(&self) -> Duration {
        Duration::from_secs(self.analytics_interval_secs.max(1))
    }
}

impl Default for NotificationConfig {
    fn default() -> Self {
        NotificationConfig {
            analytics_interval_secs: 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        notification: NotificationConfig,
    }

    /// `Default` equals what clap parses from an empty command line (with the
    /// environment of the machine running the tests ignored).
    #[test]
    fn default_matches_clap_defaults() {
        let matches = Cli::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .try_get_matches_from(["chatai"])
            .expect("an empty command line parses");
        let parsed = Cli::from_arg_matches(&matches)
            .expect("matches convert")
            .notification;
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", NotificationConfig::default())
        );
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
