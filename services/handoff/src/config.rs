//! The handoff service's configuration, read from the environment by the binary.

use std::time::Duration;

/// The handoff service's own settings (the shared ones, its database among
/// them, are in [`chatai_kit::config::ServiceCommon`]; the presence service's
/// address is passed to [`run`](crate::run) by the binary). [`Default`] gives
/// the same values as the clap defaults.
///
/// Every argument has a `handoff`-prefixed id and flag, so that this struct
/// flattens next to the other services' configs in the all-in-one command:
/// presence reads `CHATAI_MAX_HANDOFFS_PER_OPERATOR` too.
#[derive(clap::Args, Debug, Clone)]
pub struct HandoffConfig {
    /// The most handoffs one operator holds at once; at the cap they get no
    /// new one (and presence shows them busy).
    #[arg(
        id = "handoff_max_handoffs",
        value_name = "N",
        long = "handoff-max-per-operator",
        env = "CHATAI_MAX_HANDOFFS_PER_OPERATOR",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_handoffs: u32,
    /// Seconds an operator has to send the first reply in a handoff they got
    /// before it is taken back and given to someone else.
    #[arg(
        id = "handoff_reply_timeout_secs",
        value_name = "SECS",
        long = "handoff-reply-timeout-secs",
        env = "CHATAI_HANDOFF_REPLY_TIMEOUT_SECS",
        default_value_t = 180,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub reply_timeout_secs: u64,
    /// Seconds a request may wait in the queue before it goes back to the
    /// assistant.
    #[arg(
        id = "handoff_max_queue_secs",
        value_name = "SECS",
        long = "handoff-max-queue-secs",
        env = "CHATAI_HANDOFF_MAX_QUEUE_SECS",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_queue_secs: u64,
    /// The most requests waiting at once; more are refused (`queue_full`).
    #[arg(
        id = "handoff_max_queue_len",
        value_name = "N",
        long = "handoff-max-queue",
        env = "CHATAI_HANDOFF_MAX_QUEUE",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_queue_len: u32,
    /// The most requests one user may have waiting at once (one per dialog
    /// in any case); more are refused (`too_many_handoffs`), so no single
    /// account can fill the queue.
    #[arg(
        id = "handoff_max_queued_per_user",
        value_name = "N",
        long = "handoff-max-queued-per-user",
        env = "CHATAI_HANDOFF_MAX_QUEUED_PER_USER",
        default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_queued_per_user: u32,
    /// Handling time assumed for wait estimates, in seconds, until some
    /// handoffs have been completed.
    #[arg(
        id = "handoff_default_handling_secs",
        value_name = "SECS",
        long = "handoff-default-handling-secs",
        env = "CHATAI_HANDOFF_DEFAULT_HANDLING_SECS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub default_handling_secs: u64,
    /// How often a standby replica tries to take the leader's lease, and
    /// how often the leader checks it still holds it, in milliseconds
    /// (PostgreSQL; on SQLite the one process always leads). A takeover
    /// leaves the queue still for at most about this plus the time to load
    /// the queue from the database.
    #[arg(
        id = "handoff_lease_poll_ms",
        value_name = "MS",
        long = "handoff-lease-poll-ms",
        env = "CHATAI_HANDOFF_LEASE_POLL_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(10..)
    )]
    pub lease_poll_ms: u64,
}

impl HandoffConfig {
    /// How often the lease is tried (standby) or checked (leader).
    pub fn lease_poll(&self) -> Duration {
        Duration::from_millis(self.lease_poll_ms)
    }

    /// The queue's rules, in domain units.
    pub fn policy(&self) -> crate::service::Policy {
        crate::service::Policy {
            max_handoffs: self.max_handoffs,
            reply_timeout: Duration::from_secs(self.reply_timeout_secs),
            max_queue_time: Duration::from_secs(self.max_queue_secs),
            max_queue_len: self.max_queue_len as usize,
            max_queued_per_user: self.max_queued_per_user as usize,
            default_handling: Duration::from_secs(self.default_handling_secs),
        }
    }
}

/// The clap defaults.
impl Default for HandoffConfig {
    fn default() -> Self {
        chatai_kit::config::clap_defaults()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        handoff: HandoffConfig,
    }

    /// The all-in-one command flattens this next to the shared settings and
    /// the presence config, which reads the same variable for its cap: no
    /// clash.
    #[test]
    fn flattens_next_to_the_shared_settings() {
        #[derive(Parser, Debug)]
        struct AllInOne {
            #[command(flatten)]
            common: chatai_kit::config::ServiceCommon,
            #[command(flatten)]
            handoff: HandoffConfig,
        }
        AllInOne::command().debug_assert();
        let matches = AllInOne::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .try_get_matches_from([
                "chatai",
                "--database-url=sqlite://a.db",
                "--handoff-max-per-operator=2",
            ])
            .expect("parses");
        let parsed = AllInOne::from_arg_matches(&matches).expect("matches convert");
        assert_eq!(parsed.common.database_url, "sqlite://a.db");
        assert_eq!(parsed.handoff.max_handoffs, 2);
    }

    /// Zero limits are refused when the configuration is read.
    #[test]
    fn zero_limits_are_refused() {
        for flag in [
            "--handoff-max-per-operator=0",
            "--handoff-reply-timeout-secs=0",
            "--handoff-max-queue=0",
        ] {
            let parsed = Cli::command()
                .mut_args(|arg| arg.env(None::<&str>))
                .try_get_matches_from(["chatai", flag]);
            assert!(parsed.is_err(), "{flag} is refused");
        }
    }
}
