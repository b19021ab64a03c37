//! The in-memory event log of the embedded default: one log per recipient in
//! a sharded map, live fan-out through a broadcast channel.
//!
//! Positions are `epoch + n`, where the epoch is chosen at random when the log
//! is created (the high 32 bits) and `n` counts a recipient's events from 1.
//! A cursor from before a restart therefore never matches a position of the
//! new log: its replay reports "incomplete" instead of returning wrong events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::broadcast;

use super::{Delivery, Event, EventLog, EventLogError, LogPage, Recipient, ReplayFrom};
use crate::config::EventLogConfig;

/// The in-memory [`EventLog`].
pub struct MemoryLog {
    logs: DashMap<Recipient, RecipientLog>,
    live: broadcast::Sender<Delivery>,
    epoch: u64,
    retention: Duration,
    max_per_recipient: usize,
}

struct RecipientLog {
    /// The last position handed out (`epoch` when none yet).
    last: u64,
    /// Retained events with the time they were appended, oldest first.
    entries: VecDeque<(i64, Delivery)>,
    /// Where the recipient's connections were when last released.
    seen: Option<u64>,
}

impl RecipientLog {
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
        let epoch = u64::from(uuid::Uuid::new_v4().as_u128() as u32 >> 1) << 32;
        MemoryLog {
            logs: DashMap::new(),
            live,
            epoch,
            retention: config.retention(),
            max_per_recipient: config.max_per_recipient.max(1),
        }
    }

    fn oldest_kept_ms(&self) -> i64 {
        crate::now_ms() - self.retention.as_millis() as i64
    }
}

#[async_trait::async_trait]
impl EventLog for MemoryLog {
    async fn deliver(&self, recipient: Recipient, event: Arc<Event>) -> Result<u64, EventLogError> {
        if !recipient.is_durable() {
            let _ = self.live.send(Delivery {
                recipient,
                position: 0,
                event,
            });
            return Ok(0);
        }
        let oldest = self.oldest_kept_ms();
        let mut log = self
            .logs
            .entry(recipient.clone())
            .or_insert_with(|| RecipientLog {
                last: self.epoch,
                entries: VecDeque::new(),
                seen: None,
            });
        log.last += 1;
        let delivery = Delivery {
            recipient,
            position: log.last,
            event,
        };
        log.entries.push_back((crate::now_ms(), delivery.clone()));
        log.trim(oldest, self.max_per_recipient);
        // Published while the entry is locked, so live order is log order.
        let _ = self.live.send(delivery);
        Ok(log.last)
    }

    async fn read(
        &self,
        recipient: &Recipient,
        from: ReplayFrom,
        limit: usize,
    ) -> Result<LogPage, EventLogError> {
        let Some(log) = self.logs.get(recipient) else {
            let start = match from {
                ReplayFrom::After(position) => position,
                ReplayFrom::SinceLastSeen => self.epoch,
            };
            return Ok(LogPage {
                deliveries: Vec::new(),
                complete: start == self.epoch,
                start_after: start,
                next_after: self.epoch,
                more: false,
            });
        };
        let start = match from {
            ReplayFrom::After(position) => position,
            ReplayFrom::SinceLastSeen => log.seen.unwrap_or(log.last),
        };
        let first_kept = log
            .entries
            .front()
            .map_or(log.last + 1, |(_, d)| d.position);
        let complete = start + 1 >= first_kept && start <= log.last;
        if !complete {
            return Ok(LogPage {
                deliveries: Vec::new(),
                complete,
                start_after: start,
                next_after: log.last,
                more: false,
            });
        }
        let deliveries: Vec<Delivery> = log
            .entries
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d.position > start)
            .take(limit.max(1))
            .cloned()
            .collect();
        let next_after = deliveries.last().map_or(start, |d| d.position);
        Ok(LogPage {
            more: next_after < log.last,
            deliveries,
            complete,
            start_after: start,
            next_after,
        })
    }

    async fn mark_seen(&self, recipient: &Recipient, position: u64) -> Result<(), EventLogError> {
        if let Some(mut log) = self.logs.get_mut(recipient)
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

    async fn trim(&self) -> Result<(), EventLogError> {
        let oldest = self.oldest_kept_ms();
        for mut log in self.logs.iter_mut() {
            log.trim(oldest, self.max_per_recipient);
        }
        // Recipients with nothing retained and nothing to remember go; a
        // cursor for them then reads as expired, which it is.
        self.logs.retain(|_, log| !log.entries.is_empty());
        Ok(())
    }
}
