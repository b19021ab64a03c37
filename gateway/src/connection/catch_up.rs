//! Catching a connection up from the services' logs, and the bookkeeping of
//! what it delivered ([`Positions`]): the start (acquire the principal at
//! every service, read the first replay pages, send `connected`), replaying
//! page after page, resyncing after a gap or a lost stream, reading a log's
//! new generation, and writing each durable event once, stamped with the
//! connection's cursor.

use chatai_kit::error_code::ErrorCode;
use chatai_kit::events::generation_start;
use chatai_kit::identity::Role;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::transport::Transport;
use super::{Connection, Gone};
use crate::cursor::Cursor;
use crate::frames::outbound::{self, PreparedEvent};
use crate::service_id::ServiceId;
use crate::upstream::{ReplayFrom, ReplayPage};

/// The position this connection delivered from each service, where it knows
/// one: from the client's cursor, or from its own deliveries. A service it
/// knows no position of replays from the last position the service
/// remembers the principal saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Positions([Option<u64>; ServiceId::COUNT]);

impl Positions {
    /// Every position known when the client resumes with a cursor, none otherwise.
    pub(super) fn resuming_from(resume: Option<Cursor>) -> Self {
        match resume {
            Some(cursor) => Positions(cursor.0.map(Some)),
            None => Positions::default(),
        }
    }

    /// The last position delivered from `service`, if known.
    pub(super) fn delivered(&self, service: ServiceId) -> Option<u64> {
        self.0[service.index()]
    }

    /// The last position delivered from `service`, 0 when none is known (how
    /// the services' APIs say "none").
    pub(super) fn delivered_or_zero(&self, service: ServiceId) -> u64 {
        self.delivered(service).unwrap_or(0)
    }

    /// Records `position` as the last delivered from `service`.
    fn set(&mut self, service: ServiceId, position: u64) {
        self.0[service.index()] = Some(position);
    }

    /// Records `position` unless a later one was delivered already.
    fn advance(&mut self, service: ServiceId, position: u64) {
        if self.delivered(service).is_none_or(|last| last < position) {
            self.set(service, position);
        }
    }

    /// Where a replay of `service` starts.
    fn replay_from(&self, service: ServiceId) -> ReplayFrom {
        match self.delivered(service) {
            Some(position) => ReplayFrom::After(position),
            None => ReplayFrom::LastSeen,
        }
    }

    /// The cursor a client resumes from (unknown positions as 0).
    fn cursor(&self) -> Cursor {
        Cursor(self.0.map(|position| position.unwrap_or(0)))
    }
}

impl<T: Transport> Connection<T> {
    /// Subscribes the connection's principal at every service, catches up
    /// from their logs and sends `connected` first. An operator's connection
    /// is announced to the presence service.
    pub(super) async fn start(&mut self, resuming: bool) -> Result<(), Gone> {
        let gateway = self.gateway.clone();
        if let Some(connection) = self.operator_connection()
            && let Err(err) = gateway
                .services
                .operator_connected(
                    gateway.registry.gateway_id(),
                    &connection,
                    gateway.registry.report_order(),
                )
                .await
        {
            tracing::warn!(cause = %err, "presence not told of the connection; the lease refresh will");
        }
        let timeout = gateway.config.request_timeout();
        let principal = self.conn.principal.clone();
        let acquired = futures::future::join_all(gateway.upstreams.iter().map(|upstream| {
            let principal = principal.clone();
            async move {
                tokio::time::timeout(timeout, upstream.acquire(principal))
                    .await
                    .unwrap_or(false)
            }
        }))
        .await;
        let first_pages = futures::future::join_all(gateway.upstreams.iter().zip(&acquired).map(
            |(upstream, acquired)| {
                let from = self.positions.replay_from(upstream.service);
                let principal = principal.clone();
                async move {
                    if !*acquired {
                        return None;
                    }
                    match upstream.replay(&principal, from, timeout).await {
                        Ok(page) => Some((upstream.service, page)),
                        Err(err) => {
                            tracing::warn!(service = upstream.service.name(), cause = %err, "replay failed; will catch up later");
                            None
                        }
                    }
                }
            },
        ))
        .await;
        let complete = first_pages.iter().flatten().all(|(_, page)| page.complete);
        let mut start = self.positions.cursor();
        for (service, page) in first_pages.iter().flatten() {
            // After an incomplete replay the client goes on from the head.
            start.set(
                *service,
                if page.complete {
                    page.start_after
                } else {
                    page.next_after
                },
            );
        }
        let cursor = start.encode();
        let connected = outbound::connected(
            self.caller.connection_id.as_deref().unwrap_or_default(),
            self.caller.id,
            self.caller.role.as_str(),
            &cursor,
            gateway.config.heartbeat_interval().as_secs(),
            resuming.then_some(complete),
        );
        // With its cursor: a client that resumes before any durable event
        // arrived resumes from here.
        self.send(Utf8Bytes::from(connected), Some(&cursor)).await?;
        if resuming && !complete {
            self.send_cursor_expired().await?;
        }
        self.send_snapshots().await?;
        for (service, page) in first_pages.into_iter().flatten() {
            self.positions.set(service, page.start_after);
            self.deliver_pages(service, page).await?;
        }
        Ok(())
    }

    /// An operator's connection: the queue and the operators as they are now
    /// (`queue_snapshot`, `operators_snapshot`), each with the version it is
    /// as of. The connection already receives the live `handoff_request`,
    /// `handoff_dequeued` and `operator_status_change` (it joined its role
    /// before the start); those that were read into a snapshot carry a
    /// version at or below it and the client drops them. A snapshot that
    /// cannot be read is left out, with a warning: the live events go on.
    async fn send_snapshots(&mut self) -> Result<(), Gone> {
        if self.caller.role == Role::Admin {
            return self.send_analytics_snapshot().await;
        }
        if self.caller.role != Role::Operator {
            return Ok(());
        }
        let services = self.gateway.services.clone();
        let (queue, operators) = futures::future::join(
            services.queue_snapshot(&self.caller),
            services.operators_snapshot(&self.caller),
        )
        .await;
        match queue {
            Ok(queue) => self.send_text(outbound::queue_snapshot(&queue)).await?,
            Err(err) => tracing::warn!(cause = %err, "no queue snapshot for an operator"),
        }
        match operators {
            Ok(operators) => {
                self.send_text(outbound::operators_snapshot(&operators))
                    .await?
            }
            Err(err) => tracing::warn!(cause = %err, "no operators snapshot for an operator"),
        }
        Ok(())
    }

    /// An admin's connection: every metric's current value
    /// (`analytics_snapshot`), before the `analytics_update`s of changes.
    async fn send_analytics_snapshot(&mut self) -> Result<(), Gone> {
        match self.gateway.services.analytics_snapshot(&self.caller).await {
            Ok(metrics) => self.send_text(outbound::analytics_snapshot(&metrics)).await,
            Err(err) => {
                tracing::warn!(cause = %err, "no analytics snapshot for an admin");
                Ok(())
            }
        }
    }

    /// Writes a replay page and the pages after it. An incomplete page
    /// (events gone) moves the position to the log's head without writing.
    async fn deliver_pages(
        &mut self,
        service: ServiceId,
        mut page: ReplayPage,
    ) -> Result<(), Gone> {
        let upstream = self.gateway.upstream(service).clone();
        let timeout = self.gateway.config.request_timeout();
        loop {
            if !page.complete {
                self.positions.set(service, page.next_after);
                return Ok(());
            }
            for delivery in &page.deliveries {
                match PreparedEvent::prepare(service, delivery) {
                    Ok(prepared) => self.write_event(&prepared).await?,
                    Err(_) => tracing::warn!(
                        service = service.name(),
                        "skipping a malformed replayed event"
                    ),
                }
            }
            self.positions.advance(service, page.next_after);
            if !page.more {
                return Ok(());
            }
            let from = ReplayFrom::After(page.next_after);
            page = match upstream.replay(&self.conn.principal, from, timeout).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(service = service.name(), cause = %err, "replay page failed; will catch up later");
                    return Ok(());
                }
            };
        }
    }

    /// Catches up with `service` after its stream came back or a gap showed.
    pub(super) async fn resync(&mut self, service: ServiceId) -> Result<(), Gone> {
        let upstream = self.gateway.upstream(service).clone();
        let had_position = self.positions.delivered(service).is_some();
        let from = self.positions.replay_from(service);
        let timeout = self.gateway.config.request_timeout();
        match upstream.replay(&self.conn.principal, from, timeout).await {
            Ok(page) => {
                if !page.complete && had_position {
                    self.send_cursor_expired().await?;
                    if let Some(fresh) = self.new_generation(service, &page).await {
                        self.positions.set(service, fresh.start_after);
                        return self.deliver_pages(service, fresh).await;
                    }
                }
                if !had_position {
                    self.positions.set(service, page.start_after);
                }
                self.deliver_pages(service, page).await
            }
            Err(err) => {
                tracing::warn!(service = service.name(), cause = %err, "catch-up failed; waiting for the stream");
                Ok(())
            }
        }
    }

    /// When the log this connection was reading was lost and began again
    /// (`page` found its head in another generation), the new generation
    /// read from its start: what it holds arrived after the loss and is all
    /// there, so it is delivered rather than skipped. `None` when the log did
    /// not begin again, or the new generation is itself incomplete.
    async fn new_generation(
        &mut self,
        service: ServiceId,
        page: &ReplayPage,
    ) -> Option<ReplayPage> {
        let head = page.next_after;
        let start = generation_start(head);
        if head == 0 || start == generation_start(self.positions.delivered_or_zero(service)) {
            return None;
        }
        let upstream = self.gateway.upstream(service);
        let timeout = self.gateway.config.request_timeout();
        match upstream
            .replay(&self.conn.principal, ReplayFrom::After(start), timeout)
            .await
        {
            Ok(fresh) if fresh.complete => Some(fresh),
            Ok(_) => None,
            Err(err) => {
                tracing::warn!(service = service.name(), cause = %err, "reading the new log generation failed; going on from its head");
                None
            }
        }
    }

    async fn send_cursor_expired(&mut self) -> Result<(), Gone> {
        crate::metrics::cursor_expired();
        let frame = outbound::error(
            None,
            ErrorCode::CursorExpired,
            "Some events after your cursor are no longer kept; reload history, live delivery continues",
        );
        self.send_text(frame).await
    }

    /// A durable event from the registry: catches up first when positions
    /// were skipped (something was missed; the log has it, or says it is
    /// gone), then writes it.
    pub(super) async fn on_event(&mut self, event: &PreparedEvent) -> Result<(), Gone> {
        let service = event.service;
        if let Some(last) = self.positions.delivered(service) {
            let same_generation = generation_start(event.position) == generation_start(last);
            let gap = if same_generation {
                event.position > last + 1
            } else {
                // The log began again since this connection read it.
                last != 0
            };
            if gap {
                Box::pin(self.resync(service)).await?;
            }
        }
        self.write_event(event).await
    }

    /// Writes a durable event once, stamped with the advanced cursor (and,
    /// when it ended this operator's hold on a dialog, leaves the dialog's
    /// room: live or replayed, the event is written here).
    async fn write_event(&mut self, event: &PreparedEvent) -> Result<(), Gone> {
        let service = event.service;
        if self
            .positions
            .delivered(service)
            .is_some_and(|last| event.position <= last)
        {
            return Ok(()); // already delivered (replay and live overlap)
        }
        self.positions.set(service, event.position);
        let cursor = self.positions.cursor().encode();
        let text = event.render(Some(&cursor));
        self.send(Utf8Bytes::from(text), Some(&cursor)).await?;
        match event.ends_hold {
            Some(ended) => self.hold_ended(ended).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed connection knows every position of its cursor; a fresh one
    /// knows none and replays from what each service remembers.
    #[test]
    fn positions_start_from_the_cursor() {
        let resumed = Positions::resuming_from(Some(Cursor([4, 0, 2, 9])));
        assert_eq!(resumed.delivered(ServiceId::Handoff), Some(0));
        assert_eq!(
            resumed.replay_from(ServiceId::Notification),
            ReplayFrom::After(9)
        );
        assert_eq!(resumed.cursor(), Cursor([4, 0, 2, 9]));
        let fresh = Positions::resuming_from(None);
        assert_eq!(fresh.delivered(ServiceId::Chat), None);
        assert_eq!(fresh.replay_from(ServiceId::Chat), ReplayFrom::LastSeen);
        assert_eq!(fresh.delivered_or_zero(ServiceId::Chat), 0);
        assert_eq!(fresh.cursor(), Cursor::default());
    }

    /// `advance` never moves a known position back, and makes an unknown one known.
    #[test]
    fn advance_only_moves_forward() {
        let mut positions = Positions::default();
        positions.advance(ServiceId::Chat, 5);
        positions.advance(ServiceId::Chat, 3);
        assert_eq!(positions.delivered(ServiceId::Chat), Some(5));
        positions.set(ServiceId::Chat, 2);
        assert_eq!(positions.delivered(ServiceId::Chat), Some(2));
        assert_eq!(positions.cursor(), Cursor([2, 0, 0, 0]));
    }
}
