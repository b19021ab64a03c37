//! The handoff service's Prometheus metrics, defined once: the queue's
//! length, how long dialogs waited for an operator and how long operators
//! held them. Every series carries `service="handoff"` (the recorder and the
//! buckets — minutes-scale for `chatai_handoff_*_seconds` — are
//! `chatai_kit::metrics`'s).

use std::time::Duration;

/// The `service` label of every handoff series.
pub const SERVICE: &str = "handoff";

/// Dialogs waiting in the queue now.
pub const QUEUE_LENGTH: &str = "chatai_handoff_queue_length";
/// Handoffs assigned to an operator now.
pub const ASSIGNED: &str = "chatai_handoff_assigned";
/// From joining the queue to an operator getting the dialog.
pub const QUEUE_WAIT: &str = "chatai_handoff_queue_wait_seconds";
/// From an operator getting a dialog to completing it.
pub const HANDLING: &str = "chatai_handoff_handling_seconds";

/// Every metric this crate records.
pub const NAMES: &[&str] = &[QUEUE_LENGTH, ASSIGNED, QUEUE_WAIT, HANDLING];

/// The queue holds `queued` dialogs and `assigned` are held by operators.
pub fn queue(queued: usize, assigned: usize) {
    metrics::gauge!(QUEUE_LENGTH, "service" => SERVICE).set(queued as f64);
    metrics::gauge!(ASSIGNED, "service" => SERVICE).set(assigned as f64);
}

/// A dialog reached an operator after waiting `waited`.
pub fn waited(waited: Duration) {
    metrics::histogram!(QUEUE_WAIT, "service" => SERVICE).record(waited.as_secs_f64());
}

/// An operator completed a dialog they held for `took`.
pub fn handled(took: Duration) {
    metrics::histogram!(HANDLING, "service" => SERVICE).record(took.as_secs_f64());
}
