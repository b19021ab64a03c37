//! The in-memory event log of the embedded default: one log per recipient in
//! one map behind one mutex, live fan-out through a broadcast channel.
//!
//! Every append and every live publish happens under that lock (held only
//! for in-memory work, never across an `.await`), so the live order is the
//! log order and a batch ([`EventLog::deliver_many`]) is appended and
//! published under one lock, contiguously.
//!
//! A recipient's positions start at a random base (20 random bits shifted
//! left 32, as in the Redis log) and count up by one. A cursor from before a
//! restart, or from a log that was dropped after a long idle time, therefore
//! never matches a position of the new log: its replay reports "incomplete"
//! instead of returning the wrong events.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;

use super::paging::{self, LogBounds, Plan};
use super::{Delivery, Event, EventLog, EventLogError, LogPage, LogStats, Recipient, ReplayFrom};
use crate::config::EventLogConfig;

/// The in-memory [`EventLog`].
pub struct MemoryLog {
    logs: Mutex<HashMap<Recipient, RecipientLog>>,
    live: broadcast::Sender<Delivery>,
    retention: Duration,
    max_per_recipient: usize,
}

struct RecipientLog {
    /// The position before the first one handed out.
    base: u64,
    /// The last position handed out (`base` when none yet).
    last: u64,
    /// When the last event was appended, ms.
    touched_ms: i64,
    /// Retained events with the time they were appended, oldest first.
    entries: VecDeque<(i64, Delivery)>,
    /// Where the recipient's connections were when last released.
    seen: Option<u64>,
}

impl RecipientLog {
    fn new() -> Self {
        let base = super::random_base();
        RecipientLog {
            base,
            last: base,
            touched_ms: crate::now_ms(),
            entries: VecDeque::new(),
            seen: None,
        }
    }

    fn trim(&mut self, oldest_kept_ms: i64, max: usize) {
        while self.entries.len() > max
            || self
                .entries
                .front()
                .is_some_and(|(at, _)| *at < oldest_kept_ms)
        {
            self.entries.pop_front();
        }
    }
}

impl MemoryLog {
    pub fn new(config: &EventLogConfig) -> Self {
        let (live, _) = broadcast::channel(config.live_buffer.max(16));
        MemoryLog {
            logs: Mutex::new(HashMap::new()),
            live,
            retention: config.retention(),
            max_per_recipient: config.max_per_recipient.max(1),
        }
    }

    /// The logs, locked. A panic while locked leaves no half-done state
    /// worth refusing service for (each change is a push or a pop), so a
    /// poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, HashMap<Recipient, RecipientLog>> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends (durable) or only publishes (live-only) one delivery; the
    /// caller holds the lock. Returns the position (0 for live-only).
    fn deliver_locked(
        &self,
        logs: &mut HashMap<Recipient, RecipientLog>,
        recipient: Recipient,
        event: Arc<Event>,
        now: i64,
        oldest: i64,
    ) -> u64 {
        if !recipient.is_durable() {
            let _ = self.live.send(Delivery {
                recipient,
                position: 0,
                event,
            });
            return 0;
        }
        let log = logs
            .entry(recipient.clone())
            .or_insert_with(RecipientLog::new);
        log.last += 1;
        log.touched_ms = now;
        let delivery = Delivery {
            recipient,
            position: log.last,
            event,
        };
        log.entries.push_back((now, delivery.clone()));
        log.trim(oldest, self.max_per_recipient);
        let position = log.last;
        // Published while locked, so live order is log order.
        let _ = self.live.send(delivery);
        position
    }

    fn oldest_kept_ms(&self) -> i64 {
        paging::oldest_kept_ms(self.retention)
    }

    /// How long an emptied log is remembered (as the Redis log's key expiry).
    fn forget_after_ms(&self) -> i64 {
        paging::forget_after_ms(self.retention) as i64
    }
}

#[async_trait::async_trait]
impl EventLog for MemoryLog {
    async fn publish(&self, recipient: Recipient, event: Arc<Event>) -> Result<(), EventLogError> {
        // Under the lock too, so no publish comes between a batch's deliveries.
        let _logs = self.lock();
        let _ = self.live.send(Delivery {
            recipient,
            position: 0,
            event,
        });
        Ok(())
    }

    async fn deliver(&self, recipient: Recipient, event: Arc<Event>) -> Result<u64, EventLogError> {
        let mut logs = self.lock();
        // Stamped under the lock, so each log's entries are in time order.
        let (now, oldest) = (crate::now_ms(), self.oldest_kept_ms());
        Ok(self.deliver_locked(&mut logs, recipient, event, now, oldest))
    }

    async fn deliver_many(
        &self,
        batch: Vec<(Recipient, Arc<Event>)>,
    ) -> Result<Vec<u64>, EventLogError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut logs = self.lock();
        // Stamped under the lock, so each log's entries are in time order.
        let (now, oldest) = (crate::now_ms(), self.oldest_kept_ms());
        Ok(batch
            .into_iter()
            .map(|(recipient, event)| self.deliver_locked(&mut logs, recipient, event, now, oldest))
            .collect())
    }

    async fn read(
        &self,
        recipient: &Recipient,
        from: ReplayFrom,
        limit: usize,
    ) -> Result<LogPage, EventLogError> {
        let logs = self.lock();
        let log = logs.get(recipient);
        let bounds = log.map(|log| LogBounds {
            base: log.base,
            last: log.last,
            first_kept: log
                .entries
                .front()
                .map_or(log.last + 1, |(_, d)| d.position),
            seen: log.seen,
        });
        let (start, last) = match paging::plan(bounds, from) {
            Plan::Answer(page) => return Ok(page),
            Plan::ReadAfter { start, last } => (start, last),
        };
        let deliveries = log.map_or_else(Vec::new, |log| {
            log.entries
                .iter()
                .map(|(_, d)| d)
                .filter(|d| d.position > start)
                .take(limit.max(1))
                .cloned()
                .collect()
        });
        Ok(paging::page_of(start, last, deliveries))
    }

    async fn mark_seen(&self, recipient: &Recipient, position: u64) -> Result<(), EventLogError> {
        if let Some(log) = self.lock().get_mut(recipient)
            && position <= log.last
            && log.seen.is_none_or(|seen| seen < position)
        {
            log.seen = Some(position);
        }
        Ok(())
    }

    fn live(&self) -> broadcast::Receiver<Delivery> {
        self.live.subscribe()
    }

    async fn stats(&self) -> Result<LogStats, EventLogError> {
        let mut stats = LogStats::default();
        for log in self.lock().values() {
            stats.recipients += 1;
            stats.retained_events += log.entries.len() as u64;
        }
        Ok(stats)
    }

    async fn trim(&self) -> Result<(), EventLogError> {
        let mut logs = self.lock();
        let oldest = self.oldest_kept_ms();
        for log in logs.values_mut() {
            log.trim(oldest, self.max_per_recipient);
        }
        // Emptied logs are remembered for a while (their last position keeps
        // cursors valid), then dropped; a log made again later starts from a
        // new random base, so old cursors read as expired.
        let forget_before = crate::now_ms() - self.forget_after_ms();
        logs.retain(|_, log| !log.entries.is_empty() || log.touched_ms >= forget_before);
        Ok(())
    }
}
