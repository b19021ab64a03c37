//! What the gateway reports in the background. To the presence service: the
//! lease on its operator connections, every few seconds. To the notification
//! service for analytics: every
//! connection opened and closed (stored there), and every few seconds what
//! this gateway holds (summed there across gateways and pushed to admins as
//! `analytics_update`). Also the messages-per-minute window shown by
//! `/api/websocket/stats`.
//!
//! Reporting never slows a connection down: events go through a bounded
//! queue with `try_send`, and when the queue is full they are dropped and
//! counted (`chatai_gateway_connection_events_dropped_total`) — analytics
//! may lose a record, a client never waits for one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chatai_kit::identity::{Role, service_request};
use chatai_proto::v1 as pb;
use chatai_proto::v1::notification_client::NotificationClient;
use chatai_proto::v1::presence_client::PresenceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::registry::Registry;
use crate::upstream::ServiceChannel;

/// Connection events buffered before they are dropped.
const QUEUE: usize = 4096;
/// Most events sent in one call.
const BATCH: usize = 500;
/// How often events are flushed and the gateway reports its counts.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// A report older than this no longer counts at the notification service.
const REPORT_TTL_SECONDS: u32 = 15;

/// Counts events in the last 60 seconds, in one-second buckets, lock-free.
#[derive(Debug)]
pub struct MinuteCounter {
    /// (second the bucket counts, count), packed as `second << 24 | count`.
    buckets: [AtomicU64; 60],
}

impl Default for MinuteCounter {
    fn default() -> Self {
        MinuteCounter {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl MinuteCounter {
    /// Counts one event now.
    pub fn tick(&self) {
        self.tick_at(now_seconds());
    }

    fn tick_at(&self, second: u64) {
        let bucket = &self.buckets[(second % 60) as usize];
        let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
            if packed >> COUNT_BITS == second {
                Some(packed + u64::from(packed & COUNT_MASK < COUNT_MASK))
            } else {
                Some(second << COUNT_BITS | 1)
            }
        });
    }

    /// Events in the last 60 seconds.
    pub fn last_minute(&self) -> u64 {
        self.last_minute_at(now_seconds())
    }

    fn last_minute_at(&self, second: u64) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Acquire))
            .filter(|packed| second.saturating_sub(packed >> COUNT_BITS) < 60)
            .map(|packed| packed & COUNT_MASK)
            .sum()
    }
}

/// A connection opened or closed, for the notification service's analytics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// The connection's name (`{gateway}:{n}`).
    pub connection_id: String,
    pub gateway_id: String,
    pub role: Role,
    /// The user or operator it was for.
    pub principal_id: i64,
    pub kind: ConnectionEventKind,
    /// When, in ms since the Unix epoch.
    pub at_ms: i64,
}

/// Whether a [`ConnectionEvent`] is an opening or a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEventKind {
    Connect,
    Disconnect {
        /// How long the connection lived.
        duration_ms: i64,
        /// The close code it was closed with; 0 when the socket was gone.
        close_code: u32,
    },
}

/// The connections' side of reporting.
#[derive(Debug, Clone)]
pub struct Reporter {
    events: mpsc::Sender<pb::ConnectionEvent>,
    pub messages: Arc<MinuteCounter>,
}

impl Reporter {
    /// Queues a connection event; drops it when the queue is full.
    pub fn connection_event(&self, event: ConnectionEvent) {
        if self.events.try_send(event.into()).is_err() {
            crate::metrics::connection_events_dropped(1);
        }
    }

    /// Starts reporting to the notification service on `channel`; returns
    /// the handle and the task (for the caller to own) that runs until
    /// `shutdown`, flushing what is queued.
    pub fn start(
        channel: ServiceChannel,
        presence: ServiceChannel,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (events, queue) = mpsc::channel(QUEUE);
        let messages = Arc::new(MinuteCounter::default());
        let reporter = Reporter {
            events,
            messages: messages.clone(),
        };
        let clients = Clients {
            notification: NotificationClient::new(channel),
            presence: PresenceClient::new(presence),
        };
        let task = run(clients, queue, registry, messages, shutdown);
        (reporter, task)
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    service_request(message, Some(Duration::from_secs(5)))
}

struct Clients {
    notification: NotificationClient<ServiceChannel>,
    presence: PresenceClient<ServiceChannel>,
}

async fn run(
    mut clients: Clients,
    mut queue: mpsc::Receiver<pb::ConnectionEvent>,
    registry: Arc<Registry>,
    messages: Arc<MinuteCounter>,
    shutdown: CancellationToken,
) {
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut report = tokio::time::interval(REPORT_EVERY);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = flush.tick() => {
                while batch.len() < BATCH && let Ok(event) = queue.try_recv() {
                    batch.push(event);
                }
                if !batch.is_empty() {
                    send_batch(&mut clients.notification, &mut batch)
                        .instrument(background("gateway.record_connections"))
                        .await;
                }
            }
            _ = report.tick() => {
              async {
                let snapshot = registry.snapshot();
                let report = pb::GatewayReport {
                    gateway_id: registry.gateway_id().to_owned(),
                    connections: snapshot.connections as u64,
                    users: snapshot.users as u64,
                    operators: snapshot.operators as u64,
                    admins: snapshot.admins as u64,
                    messages_last_minute: messages.last_minute(),
                    ttl_seconds: REPORT_TTL_SECONDS,
                };
                if let Err(status) = clients.notification.report_gateway(request(report)).await {
                    tracing::debug!(cause = %status, "gateway report not delivered");
                }
                // The lease on this gateway's operator connections: if the
                // gateway dies, presence lets them expire.
                // Numbered before the list is read (see `ReportOrder`).
                let order = registry.report_order();
                let lease = pb::RefreshConnectionsRequest {
                    gateway_id: registry.gateway_id().to_owned(),
                    order: Some(order.into()),
                    connections: registry
                        .operator_connections()
                        .iter()
                        .map(pb::OperatorConnection::from)
                        .collect(),
                    ttl_seconds: REPORT_TTL_SECONDS,
                };
                if let Err(status) = clients.presence.refresh_connections(request(lease)).await {
                    tracing::debug!(cause = %status, "operator lease not refreshed");
                }
              }
              .instrument(background("gateway.report"))
              .await;
            }
        }
    }
    // Last flush of what the closing connections reported.
    async {
        while let Ok(event) = queue.try_recv() {
            batch.push(event);
            if batch.len() == BATCH {
                send_batch(&mut clients.notification, &mut batch).await;
            }
        }
        send_batch(&mut clients.notification, &mut batch).await;
    }
    .instrument(background("gateway.record_connections"))
    .await;
}

/// A root span for one round of periodic reporting, marked as background
/// work: the trace sampler leaves it (and the calls it makes, in the
/// services too) out of the exported traces (`chatai_kit::telemetry`).
fn background(name: &'static str) -> tracing::Span {
    tracing::info_span!(parent: None, "report", otel.name = name, chatai.background = true)
}

async fn send_batch(
    client: &mut NotificationClient<ServiceChannel>,
    batch: &mut Vec<pb::ConnectionEvent>,
) {
    if batch.is_empty() {
        return;
    }
    let events = std::mem::take(batch);
    let count = events.len();
    if let Err(status) = client
        .record_connections(request(pb::RecordConnectionsRequest { events }))
        .await
    {
        crate::metrics::connection_events_dropped(count as u64);
        tracing::warn!(cause = %status, count, "connection events not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window counts the last 60 seconds and forgets older ones.
    #[test]
    fn minute_counter_counts_a_sliding_minute() {
        let counter = MinuteCounter::default();
        counter.tick_at(1000);
        counter.tick_at(1000);
        counter.tick_at(1030);
        assert_eq!(counter.last_minute_at(1030), 3);
        assert_eq!(counter.last_minute_at(1059), 3);
        assert_eq!(
            counter.last_minute_at(1060),
            1,
            "second 1000 is now over a minute old"
        );
        counter.tick_at(1060); // same bucket as 1000: starts afresh
        assert_eq!(counter.last_minute_at(1060), 2);
        assert_eq!(counter.last_minute_at(2000), 0);
    }
}
