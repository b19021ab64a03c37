//! The presence service's configuration, read from the environment by the
//! binary.

use std::time::Duration;

/// The longest grace period accepted, in seconds (one day). The timers that
/// hold it cannot go further than about two years, and a longer grace would
/// keep a vanished operator "online" for no useful reason.
pub const MAX_GRACE_SECS: u64 = 24 * 3600;

/// The presence service's own settings (the shared ones are in
/// [`chatai_kit::config::ServiceCommon`]). [`Default`] gives the same values
/// as the clap defaults. Argument ids are `presence`-prefixed so that the
/// struct flattens next to the other services' configs in the all-in-one
/// command (the handoff service reads `CHATAI_MAX_HANDOFFS_PER_OPERATOR`
/// too, under its own id and flag).
#[derive(clap::Args, Debug, Clone)]
pub struct PresenceConfig {
    /// Seconds an operator stays online after their last connection closed
    /// (or their gateway's lease expired): a reconnect within it is not seen
    /// by anyone. 0 = offline at once. At most one day.
    #[arg(
        id = "presence_grace_period_secs",
        long = "presence-grace-secs",
        env = "CHATAI_PRESENCE_GRACE_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(0..=MAX_GRACE_SECS)
    )]
    pub grace_period_secs: u64,
    /// Concurrent handoffs at which an operator who chose `available` is
    /// shown `busy` (auto-busy); below it they are available again.
    #[arg(
        id = "presence_max_handoffs",
        long = "max-handoffs-per-operator",
        env = "CHATAI_MAX_HANDOFFS_PER_OPERATOR",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_handoffs: u32,
}

impl PresenceConfig {
    /// The grace period as a duration.
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.grace_period_secs)
    }

    /// Checks what clap checks, for a config built in code.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.grace_period_secs > MAX_GRACE_SECS {
            return Err(InvalidConfig("the grace period is longer than one day"));
        }
        if self.max_handoffs == 0 {
            return Err(InvalidConfig("the handoff limit must be at least 1"));
        }
        Ok(())
    }
}

/// The clap defaults.
impl Default for PresenceConfig {
    fn default() -> Self {
        chatai_kit::config::clap_defaults()
    }
}

/// A setting outside the range the service accepts.
#[derive(Debug, thiserror::Error)]
#[error("invalid presence configuration: {0}")]
pub struct InvalidConfig(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        presence: PresenceConfig,
    }

    fn parse(args: &[&str]) -> Result<PresenceConfig, clap::Error> {
        let matches = Cli::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .try_get_matches_from(args)?;
        Ok(Cli::from_arg_matches(&matches)?.presence)
    }

    /// The flags set their fields; out-of-range values are refused by clap
    /// and by `validate`, the defaults are not.
    #[test]
    fn flags_and_ranges() {
        let parsed = parse(&[
            "chatai",
            "--presence-grace-secs",
            "1",
            "--max-handoffs-per-operator",
            "3",
        ])
        .expect("valid flags parse");
        assert_eq!(parsed.grace_period_secs, 1);
        assert_eq!(parsed.max_handoffs, 3);
        assert!(parse(&["chatai", "--max-handoffs-per-operator", "0"]).is_err());
        assert!(parse(&["chatai", "--presence-grace-secs", "86401"]).is_err());
        let zero = PresenceConfig {
            max_handoffs: 0,
            ..PresenceConfig::default()
        };
        assert!(zero.validate().is_err());
        assert!(PresenceConfig::default().validate().is_ok());
    }
}
