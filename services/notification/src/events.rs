//! The bodies of the events this service builds itself, in the field names of
//! the original design (docs/protocol.md, "Frames"). The gateway adds `type`, `timestamp`
//! and `event_id` (and `cursor` to durable ones). `Notify` events carry the
//! caller's own JSON object instead.

use serde::Serialize;

/// `system_alert`: to everyone connected.
#[derive(Debug, Serialize)]
pub struct SystemAlert<'a> {
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    pub message: &'a str,
    pub affected_services: &'a [String],
}

/// `analytics_update`: one metric that changed, to admins.
#[derive(Debug, Serialize)]
pub struct AnalyticsUpdate {
    pub metric: &'static str,
    /// A JSON number: an integer for counts (and whole values), else a
    /// decimal (`average_connection_duration`, `error_rate`).
    pub value: serde_json::Value,
    /// The signed difference from the value pushed before, e.g. `+12`, `-3`,
    /// `+0.25`.
    pub change: String,
}
