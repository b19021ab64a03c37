//! [`Metered`]: an [`EventLog`] that counts what passes through it — appends
//! to durable logs, pages read (replays), replays that could not be complete
//! (`cursor_expired`), and failures (a Redis backend's also count as Redis
//! errors) — under the service's name. [`open`](super::open) wraps every
//! service's log in it, so both backends are counted the same way.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Delivery, Event, EventLog, EventLogError, LogPage, LogStats, Recipient, ReplayFrom};
use crate::metrics::{
    EVENT_LOG_APPENDS, EVENT_LOG_CURSOR_EXPIRED, EVENT_LOG_ERRORS, EVENT_LOG_REPLAYS, REDIS_ERRORS,
};

/// Counts a backend's appends, replays and failures.
pub struct Metered {
    inner: Arc<dyn EventLog>,
    service: String,
    backend: &'static str,
}

impl Metered {
    /// `backend` is `memory` or `redis`.
    pub fn new(inner: Arc<dyn EventLog>, service: &str, backend: &'static str) -> Self {
        Metered {
            inner,
            service: service.to_owned(),
            backend,
        }
    }

    fn appended(&self, positions: &[u64]) {
        let durable = positions.iter().filter(|&&p| p > 0).count() as u64;
        if durable > 0 {
            metrics::counter!(EVENT_LOG_APPENDS, "service" => self.service.clone())
                .increment(durable);
        }
    }

    /// Counts a failure, passing it on.
    fn failed<T>(&self, result: Result<T, EventLogError>) -> Result<T, EventLogError> {
        if let Err(EventLogError::Unavailable(_)) = &result {
            metrics::counter!(EVENT_LOG_ERRORS, "service" => self.service.clone(), "backend" => self.backend)
                .increment(1);
            if self.backend == "redis" {
                metrics::counter!(REDIS_ERRORS, "service" => self.service.clone()).increment(1);
            }
        }
        result
    }
}

#[async_trait::async_trait]
impl EventLog for Metered {
    async fn deliver(&self, recipient: Recipient, event: Arc<Event>) -> Result<u64, EventLogError> {
        let position = self.failed(self.inner.deliver(recipient, event).await)?;
        self.appended(&[position]);
        Ok(position)
    }

    async fn deliver_many(
        &self,
        batch: Vec<(Recipient, Arc<Event>)>,
    ) -> Result<Vec<u64>, EventLogError> {
        let positions = self.failed(self.inner.deliver_many(batch).await)?;
        self.appended(&positions);
        Ok(positions)
    }

    async fn publish(&self, recipient: Recipient, event: Arc<Event>) -> Result<(), EventLogError> {
        self.failed(self.inner.publish(recipient, event).await)
    }

    async fn read(
        &self,
        recipient: &Recipient,
        from: ReplayFrom,
        limit: usize,
    ) -> Result<LogPage, EventLogError> {
        let page = self.failed(self.inner.read(recipient, from, limit).await)?;
        metrics::counter!(EVENT_LOG_REPLAYS, "service" => self.service.clone()).increment(1);
        if !page.complete {
            metrics::counter!(EVENT_LOG_CURSOR_EXPIRED, "service" => self.service.clone())
                .increment(1);
        }
        Ok(page)
    }

    async fn mark_seen(&self, recipient: &Recipient, position: u64) -> Result<(), EventLogError> {
        self.failed(self.inner.mark_seen(recipient, position).await)
    }

    fn live(&self) -> broadcast::Receiver<Delivery> {
        self.inner.live()
    }

    async fn trim(&self) -> Result<(), EventLogError> {
        self.failed(self.inner.trim().await)
    }

    async fn stats(&self) -> Result<LogStats, EventLogError> {
        self.failed(self.inner.stats().await)
    }

    async fn ping(&self) -> Result<(), EventLogError> {
        self.failed(self.inner.ping().await)
    }
}
