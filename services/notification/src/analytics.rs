//! Live analytics: the latest report of every gateway (each kept until its
//! ttl runs out), the metrics summed from them, and which metrics changed
//! since the last push to admins.
//!
//! Metrics, all sums over the gateways whose report has not expired:
//! - `active_connections` — open WebSocket connections;
//! - `active_users` — distinct users connected (per gateway: a user connected
//!   to two gateways counts twice);
//! - `online_operators` — operators connected (the same caveat);
//! - `messages_per_minute` — client `chat_message` frames in the last 60 s.
//!
//! Only what the gateways report is computed here. Queued handoffs, for
//! instance, come from the handoff service when it reports them; no metric is
//! invented without a source.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What one gateway holds now, as it reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayCounts {
    pub connections: u64,
    pub users: u64,
    pub operators: u64,
    /// Reported, but no metric of its own (docs/protocol.md names none).
    pub admins: u64,
    pub messages_last_minute: u64,
}

/// A gateway's report: its counts, valid for `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayReport {
    pub gateway_id: String,
    pub counts: GatewayCounts,
    /// Dropped when no newer report arrives within this time.
    pub ttl: Duration,
}

/// The metrics pushed to admins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    pub active_connections: u64,
    pub active_users: u64,
    pub online_operators: u64,
    pub messages_per_minute: u64,
}

impl Metrics {
    /// Every metric with its name, in a fixed order.
    pub fn named(&self) -> [(&'static str, u64); 4] {
        [
            ("active_connections", self.active_connections),
            ("active_users", self.active_users),
            ("online_operators", self.online_operators),
            ("messages_per_minute", self.messages_per_minute),
        ]
    }
}

/// The latest report of each gateway, with when it expires.
///
/// A plain mutex, not an actor: there are a handful of gateways, each
/// critical section is one map operation, and it is never held across an
/// `.await`.
#[derive(Debug, Default)]
pub struct Reports {
    latest: Mutex<HashMap<String, (GatewayCounts, Instant)>>,
}

impl Reports {
    /// Keeps `report` as its gateway's latest, until `now + ttl`.
    pub fn record(&self, report: GatewayReport, now: Instant) {
        let expires = now + report.ttl;
        self.lock()
            .insert(report.gateway_id, (report.counts, expires));
    }

    /// The metrics summed over the reports still valid at `now`; expired
    /// reports are dropped.
    pub fn metrics(&self, now: Instant) -> Metrics {
        let mut latest = self.lock();
        latest.retain(|_, (_, expires)| *expires > now);
        latest
            .values()
            .fold(Metrics::default(), |sum, (counts, _)| Metrics {
                active_connections: sum.active_connections.saturating_add(counts.connections),
                active_users: sum.active_users.saturating_add(counts.users),
                online_operators: sum.online_operators.saturating_add(counts.operators),
                messages_per_minute: sum
                    .messages_per_minute
                    .saturating_add(counts.messages_last_minute),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (GatewayCounts, Instant)>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is one map call), so a poisoned lock is still good.
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One metric to push: its name, value, and the signed change as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub metric: &'static str,
    pub value: u64,
    /// `+12`, `-3`, or `+0` for a first push of zero.
    pub change: String,
}

/// The values last pushed to admins, per metric.
#[derive(Debug, Default)]
pub struct Pushed {
    last: HashMap<&'static str, u64>,
}

impl Pushed {
    /// The metrics of `metrics` that differ from what was last pushed (all
    /// of them the first time, the change counted from 0).
    pub fn changes(&self, metrics: &Metrics) -> Vec<Change> {
        metrics
            .named()
            .into_iter()
            .filter_map(|(metric, value)| {
                let previous = self.last.get(metric).copied();
                (previous != Some(value)).then(|| Change {
                    metric,
                    value,
                    change: signed_difference(value, previous.unwrap_or(0)),
                })
            })
            .collect()
    }

    /// Remembers that `change` reached the admins.
    pub fn pushed(&mut self, change: &Change) {
        self.last.insert(change.metric, change.value);
    }
}

/// `value - previous` with its sign: `+12`, `-3`, `+0`.
fn signed_difference(value: u64, previous: u64) -> String {
    format!("{:+}", i128::from(value) - i128::from(previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(gateway_id: &str, connections: u64, ttl_secs: u64) -> GatewayReport {
        GatewayReport {
            gateway_id: gateway_id.into(),
            counts: GatewayCounts {
                connections,
                users: connections / 2,
                operators: 1,
                admins: 1,
                messages_last_minute: connections * 3,
            },
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    /// Reports of several gateways are summed; a newer report of a gateway
    /// replaces its older one; an expired report no longer counts.
    #[test]
    fn sums_live_reports_only() {
        let reports = Reports::default();
        let start = Instant::now();
        reports.record(report("a", 10, 60), start);
        reports.record(report("b", 4, 5), start);
        assert_eq!(
            reports.metrics(start),
            Metrics {
                active_connections: 14,
                active_users: 7,
                online_operators: 2,
                messages_per_minute: 42,
            }
        );
        reports.record(report("a", 2, 60), start);
        assert_eq!(reports.metrics(start).active_connections, 6);
        let later = start + Duration::from_secs(5);
        assert_eq!(reports.metrics(later).active_connections, 2);
        assert_eq!(reports.metrics(later).online_operators, 1);
    }

    /// The first push has every metric, counted from 0; later ones only the
    /// metrics that changed, with the signed difference.
    #[test]
    fn changes_since_the_last_push() {
        let mut pushed = Pushed::default();
        let first = Metrics {
            active_connections: 12,
            ..Metrics::default()
        };
        let changes = pushed.changes(&first);
        assert_eq!(changes.len(), 4);
        assert_eq!(changes[0].change, "+12");
        assert_eq!(changes[1].change, "+0");
        changes.iter().for_each(|c| pushed.pushed(c));
        assert!(pushed.changes(&first).is_empty());

        let second = Metrics {
            active_connections: 9,
            ..first
        };
        assert_eq!(
            pushed.changes(&second),
            vec![Change {
                metric: "active_connections",
                value: 9,
                change: "-3".into(),
            }]
        );
    }

    /// A change that did not reach the admins is offered again.
    #[test]
    fn unpushed_change_is_offered_again() {
        let pushed = Pushed::default();
        let metrics = Metrics {
            online_operators: 3,
            ..Metrics::default()
        };
        assert_eq!(pushed.changes(&metrics).len(), 4);
        assert_eq!(pushed.changes(&metrics).len(), 4);
    }
}
