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
//! And, from the connection events the gateways record (stored, so they
//! count across gateways and restarts), over the analytics window
//! (`CHATAI_ANALYTICS_WINDOW_SECS`, an hour by default):
//! - `total_connections` — connections opened in the window;
//! - `average_connection_duration` — the mean lifetime, in seconds (to the
//!   millisecond), of the connections that closed in the window;
//! - `error_rate` — the share (0 to 1, four decimals) of the connections
//!   that closed in the window with an error close code (see
//!   [`ConnectionStats::errors`]).
//!
//! Only what the gateways report is computed here. Queued handoffs, for
//! instance, come from the handoff service when it reports them; no metric is
//! invented without a source.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::ConnectionStats;

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
    /// Over the analytics window, from the stored connection events.
    pub connections: ConnectionStats,
}

/// A metric's value as an exact decimal: `units / 10^decimals`. Exact, so
/// that "did it change" is never a question of floating-point noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value {
    pub units: u64,
    pub decimals: u8,
}

impl Value {
    /// A count.
    pub fn whole(units: u64) -> Self {
        Value { units, decimals: 0 }
    }

    /// `numerator / denominator` rounded to `decimals` places; 0 when the
    /// denominator is 0.
    pub fn ratio(numerator: u64, denominator: u64, decimals: u8) -> Self {
        let scale = 10u128.pow(u32::from(decimals));
        let units = if denominator == 0 {
            0
        } else {
            let d = u128::from(denominator);
            (u128::from(numerator) * scale + d / 2) / d
        };
        Value {
            units: u64::try_from(units).unwrap_or(u64::MAX),
            decimals,
        }
    }

    /// As a float, for the wire (`Metric.value`).
    pub fn as_f64(self) -> f64 {
        self.units as f64 / 10f64.powi(i32::from(self.decimals))
    }

    /// As a JSON number: an integer when whole (as counts always were).
    pub fn to_json(self) -> serde_json::Value {
        let scale = 10u64.pow(u32::from(self.decimals));
        if self.units.is_multiple_of(scale) {
            let whole = self.units / scale;
            serde_json::Value::from(whole)
        } else {
            serde_json::Value::from(self.as_f64())
        }
    }
}

impl Metrics {
    /// Every metric with its name, in a fixed order.
    pub fn named(&self) -> [(&'static str, Value); 7] {
        let connections = &self.connections;
        [
            ("active_connections", Value::whole(self.active_connections)),
            ("active_users", Value::whole(self.active_users)),
            ("online_operators", Value::whole(self.online_operators)),
            (
                "messages_per_minute",
                Value::whole(self.messages_per_minute),
            ),
            ("total_connections", Value::whole(connections.opened)),
            (
                "average_connection_duration",
                // ms / count, in seconds to three decimals.
                Value::ratio(
                    connections.duration_ms,
                    connections.timed.saturating_mul(1000),
                    3,
                ),
            ),
            (
                "error_rate",
                Value::ratio(connections.errors, connections.closed, 4),
            ),
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

    /// The metrics summed over the reports still valid at `now` (expired
    /// reports are dropped), with the connection statistics left at zero.
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
                connections: sum.connections,
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
    pub value: Value,
    /// `+12`, `-3`, `+0.25`, or `+0` for a first push of zero.
    pub change: String,
}

/// The values last pushed to admins, per metric.
#[derive(Debug, Default)]
pub struct Pushed {
    last: HashMap<&'static str, Value>,
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
                    change: signed_difference(value, previous.map_or(0, |p| p.units)),
                })
            })
            .collect()
    }

    /// Remembers that `change` reached the admins.
    pub fn pushed(&mut self, change: &Change) {
        self.last.insert(change.metric, change.value);
    }
}

/// `value - previous` (in `value`'s units) with its sign, in decimal
/// notation without trailing zeros: `+12`, `-3`, `+0.25`, `+0`.
fn signed_difference(value: Value, previous: u64) -> String {
    let difference = i128::from(value.units) - i128::from(previous);
    let sign = if difference < 0 { '-' } else { '+' };
    let magnitude = difference.unsigned_abs();
    let scale = 10u128.pow(u32::from(value.decimals));
    let (whole, fraction) = (magnitude / scale, magnitude % scale);
    if fraction == 0 {
        return format!("{sign}{whole}");
    }
    let digits = format!("{fraction:0width$}", width = usize::from(value.decimals));
    format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
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
                connections: ConnectionStats::default(),
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
        assert_eq!(changes.len(), 7);
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
                value: Value::whole(9),
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
        assert_eq!(pushed.changes(&metrics).len(), 7);
        assert_eq!(pushed.changes(&metrics).len(), 7);
    }

    /// The three connection metrics from known counts: 4 opened; 3 closed
    /// (1 with an error code) lasting 1.5 s, 2 s and 0.5 s in all 4 s.
    #[test]
    fn connection_metrics_from_counts() {
        let metrics = Metrics {
            connections: ConnectionStats {
                opened: 4,
                closed: 3,
                timed: 3,
                duration_ms: 4_000,
                errors: 1,
            },
            ..Metrics::default()
        };
        let named: HashMap<&str, Value> = metrics.named().into_iter().collect();
        assert_eq!(named["total_connections"].to_json(), serde_json::json!(4));
        assert_eq!(
            named["average_connection_duration"].to_json(),
            serde_json::json!(1.333)
        );
        assert_eq!(named["error_rate"].to_json(), serde_json::json!(0.3333));
        // No closed connection: no average, no rate (0, not a division by 0).
        let none: HashMap<&str, Value> = Metrics::default().named().into_iter().collect();
        assert_eq!(none["error_rate"].to_json(), serde_json::json!(0));
        assert_eq!(
            none["average_connection_duration"].to_json(),
            serde_json::json!(0)
        );
    }

    /// Changes of decimal metrics are written in decimals, without trailing
    /// zeros; whole ones as integers.
    #[test]
    fn signed_differences() {
        let rate = |units| Value { units, decimals: 4 };
        assert_eq!(signed_difference(rate(2_500), 0), "+0.25");
        assert_eq!(signed_difference(rate(2_500), 12_500), "-1");
        assert_eq!(signed_difference(rate(3), 0), "+0.0003");
        assert_eq!(signed_difference(Value::whole(9), 12), "-3");
        assert_eq!(signed_difference(Value::whole(0), 0), "+0");
    }
}
