//! The presence service's Prometheus metrics, defined once: operators by
//! effective status, counted by the actor every few seconds (a count over
//! every operator, so not on each command). Every series carries
//! `service="presence"`.

use std::time::Duration;

use crate::model::Status;

/// The `service` label of every presence series.
pub const SERVICE: &str = "presence";

/// Operators known to presence, by effective `status`.
pub const OPERATORS: &str = "chatai_presence_operators";

/// Every metric this crate records.
pub const NAMES: &[&str] = &[OPERATORS];

/// How often the actor counts.
pub const COUNT_EVERY: Duration = Duration::from_secs(2);

/// Sets the gauge from every operator's effective status.
pub fn operators(statuses: impl Iterator<Item = Status>) {
    let all = [
        Status::Available,
        Status::Busy,
        Status::Away,
        Status::Offline,
    ];
    let mut counts = [0u32; 4];
    for status in statuses {
        if let Some(slot) = all.iter().position(|s| *s == status) {
            counts[slot] += 1;
        }
    }
    for (status, count) in all.iter().zip(counts) {
        metrics::gauge!(OPERATORS, "service" => SERVICE, "status" => status.as_str())
            .set(f64::from(count));
    }
}
