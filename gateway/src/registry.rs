//! The connection registry: every open connection of this gateway, indexed by
//! the recipients it receives events for, and the fan-out of service events
//! to them.
//!
//! Built for 100 000+ connections: the maps are sharded (`DashMap`), so
//! connects, disconnects and deliveries to different recipients do not
//! contend; delivery never awaits (a full queue marks the connection too slow
//! and stops it); and an event is rendered once per delivery, not once per
//! socket (durable events get each connection's cursor spliced in).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use chatai_kit::events::{Delivery, Recipient};
use chatai_kit::identity::Role;
use dashmap::DashMap;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::close::CloseReason;
use crate::frames::outbound::PreparedEvent;
use crate::service_id::ServiceId;

/// A connection's number on this gateway.
pub type ConnId = u64;

/// What the registry hands a connection's task.
#[derive(Debug)]
pub enum Outbound {
    /// A durable event: the task stamps it with its cursor.
    Event(Arc<PreparedEvent>),
    /// A ready frame (events that are not durable), shared by all receivers.
    Frame(Utf8Bytes),
    /// A room's live copy of an event: written only if the connection is
    /// still in `room` when it comes to write it (it may have been taken out
    /// since the copy was queued).
    RoomCopy { room: Recipient, frame: Utf8Bytes },
    /// The stream to this service was re-established: catch up from its log.
    Resync(ServiceId),
}

/// The shared half of a connection: how others reach and stop it.
#[derive(Debug)]
pub struct Conn {
    pub id: ConnId,
    pub role: Role,
    /// The user or operator this connection belongs to.
    pub principal: Recipient,
    /// The display name from the token, if any.
    pub name: Option<Arc<str>>,
    /// The connection's outbound queue: bounded, and allocating only while
    /// it holds frames (`flume` grows a `VecDeque`; tokio's `mpsc` would
    /// allocate a 32-slot block per connection up front).
    tx: flume::Sender<Outbound>,
    stop: CancellationToken,
    stop_reason: AtomicU8,
}

impl Conn {
    pub fn new(
        id: ConnId,
        role: Role,
        principal: Recipient,
        tx: flume::Sender<Outbound>,
        stop: CancellationToken,
    ) -> Self {
        Conn {
            id,
            role,
            principal,
            name: None,
            tx,
            stop,
            stop_reason: AtomicU8::new(0),
        }
    }

    /// The same connection, with the display name from its token.
    pub fn with_name(mut self, name: Option<&str>) -> Self {
        self.name = name.map(Arc::from);
        self
    }

    /// Queues `outbound` without waiting; a full queue stops the connection
    /// as too slow (its client resumes from its cursor).
    pub fn push(&self, outbound: Outbound) -> bool {
        match self.tx.try_send(outbound) {
            Ok(()) => true,
            Err(flume::TrySendError::Full(_)) => {
                self.stop(CloseReason::TooSlow);
                false
            }
            Err(flume::TrySendError::Disconnected(_)) => false,
        }
    }

    /// Asks the connection's task to close with `reason` (the first reason wins).
    pub fn stop(&self, reason: CloseReason) {
        let _ =
            self.stop_reason
                .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        self.stop.cancel();
    }

    /// Resolves once the connection is stopped (by the registry or by the
    /// gateway's shutdown).
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }

    /// Whether the connection has been stopped.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Why the connection was stopped; `Shutdown` when the gateway's own
    /// shutdown (the parent token) stopped it.
    pub fn stop_reason(&self) -> CloseReason {
        CloseReason::from_u8(self.stop_reason.load(Ordering::Acquire))
            .unwrap_or(CloseReason::Shutdown)
    }

    /// Frames waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

/// An operator's connection, as the presence service is told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConnection {
    pub operator_id: i64,
    /// The connection's name (`{gateway}:{n}`).
    pub connection_id: String,
    /// The operator's display name from their token, if any.
    pub name: Option<Arc<str>>,
}

/// Where a report to the presence service (an operator connection opened
/// or closed, the lease's list) stands among this gateway's others, so that
/// presence applies them in the order they happened (`presence.proto`,
/// `ReportOrder`). An open or close takes its number after the registry
/// changed, a lease before it reads the list: a report numbered below a
/// lease is in the lease's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportOrder {
    /// When this run of the gateway started, µs since the epoch.
    pub incarnation: u64,
    pub sequence: u64,
}

/// Counts of what a gateway holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub connections: usize,
    pub users: usize,
    pub operators: usize,
    pub admins: usize,
    pub rooms: usize,
}

/// Every connection of this gateway.
#[derive(Debug)]
pub struct Registry {
    gateway_id: String,
    next_id: AtomicU64,
    conns: DashMap<ConnId, Arc<Conn>>,
    /// Connections by user, operator and room.
    members: DashMap<Recipient, Vec<Arc<Conn>>>,
    rooms: AtomicUsize,
    /// This run's [`ReportOrder::incarnation`], and the last sequence.
    incarnation: u64,
    reports: AtomicU64,
}

impl Registry {
    pub fn new(gateway_id: String) -> Self {
        Registry {
            gateway_id,
            next_id: AtomicU64::new(1),
            conns: DashMap::new(),
            members: DashMap::new(),
            rooms: AtomicUsize::new(0),
            incarnation: chatai_kit::versioned::VersionClock::default().tick(),
            reports: AtomicU64::new(0),
        }
    }

    /// The next report's place (see [`ReportOrder`]).
    pub fn report_order(&self) -> ReportOrder {
        ReportOrder {
            incarnation: self.incarnation,
            // SeqCst: a lease numbered after an open or close sees the
            // registry as that report left it.
            sequence: self.reports.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }

    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// A fresh connection number.
    pub fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The id clients and services see: `{gateway}:{n}`.
    pub fn connection_name(&self, id: ConnId) -> String {
        format!("{}:{id}", self.gateway_id)
    }

    fn is_origin(&self, id: ConnId, origin: Option<&str>) -> bool {
        origin
            .and_then(|o| o.strip_prefix(self.gateway_id.as_str()))
            .and_then(|o| o.strip_prefix(':'))
            .and_then(|n| n.parse::<ConnId>().ok())
            == Some(id)
    }

    /// Adds a connection. When its principal now has more than `limit`
    /// connections here, the oldest are stopped (`Replaced`): the whole
    /// limit with one gateway; with Redis, `shared_limit.rs` applies it
    /// across gateways as well.
    pub fn register(&self, conn: Arc<Conn>, limit: usize) {
        self.conns.insert(conn.id, conn.clone());
        let mut list = self.members.entry(conn.principal.clone()).or_default();
        list.push(conn);
        if list.len() > limit.max(1) {
            list.sort_by_key(|c| c.id);
            let excess = list.len() - limit.max(1);
            for old in list.drain(..excess) {
                old.stop(CloseReason::Replaced);
            }
        }
    }

    /// Stops connection `id` with `reason`, if it is open here (the limit
    /// across gateways closing the oldest, `shared_limit.rs`).
    pub fn stop_connection(&self, id: ConnId, reason: CloseReason) -> bool {
        match self.conns.get(&id) {
            Some(conn) => {
                conn.stop(reason);
                true
            }
            None => false,
        }
    }

    /// Removes a connection (and its room memberships, listed in `rooms`).
    pub fn unregister(&self, conn: &Conn, rooms: &[Recipient]) {
        self.conns.remove(&conn.id);
        self.remove_member(&conn.principal, conn.id);
        for room in rooms {
            self.remove_member(room, conn.id);
        }
    }

    /// Adds the connection to a room.
    pub fn join(&self, room: Recipient, conn: &Arc<Conn>) {
        let mut list = self.members.entry(room).or_insert_with(|| {
            self.rooms.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        });
        if !list.iter().any(|c| c.id == conn.id) {
            list.push(conn.clone());
        }
    }

    /// Removes the connection from a room.
    pub fn leave(&self, room: &Recipient, conn: &Conn) {
        self.remove_member(room, conn.id);
    }

    /// Removes every connection of `principal` from `room`.
    fn leave_all(&self, room: &Recipient, principal: &Recipient) {
        // Collected first: the principal's entry may share a shard with the
        // room's, and a read guard held while writing that shard deadlocks.
        let ids: Vec<ConnId> = match self.members.get(principal) {
            Some(list) => list.iter().map(|c| c.id).collect(),
            None => return,
        };
        for id in ids {
            self.remove_member(room, id);
        }
    }

    /// Whether the connection is in `room` (the connection keeps its own list).
    #[cfg(test)]
    fn is_member(&self, room: &Recipient, id: ConnId) -> bool {
        self.members
            .get(room)
            .is_some_and(|list| list.iter().any(|c| c.id == id))
    }

    fn remove_member(&self, key: &Recipient, id: ConnId) {
        let emptied = match self.members.get_mut(key) {
            Some(mut list) => {
                list.retain(|c| c.id != id);
                list.is_empty()
            }
            None => false,
        };
        if emptied
            && self
                .members
                .remove_if(key, |_, list| list.is_empty())
                .is_some()
            && matches!(key, Recipient::Room(_))
        {
            self.rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// What this gateway holds: connections, distinct users, operators and
    /// admins, and rooms with members.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            connections: self.conns.len(),
            rooms: self.rooms.load(Ordering::Relaxed),
            ..Snapshot::default()
        };
        for entry in self.members.iter() {
            match (entry.key(), entry.value().first().map(|c| c.role)) {
                (Recipient::User(_), Some(Role::Admin)) => snapshot.admins += 1,
                (Recipient::User(_), Some(_)) => snapshot.users += 1,
                (Recipient::Operator(_), Some(_)) => snapshot.operators += 1,
                _ => {}
            }
        }
        snapshot
    }

    /// Every operator connection.
    pub fn operator_connections(&self) -> Vec<OperatorConnection> {
        let mut connections = Vec::new();
        for entry in self.members.iter() {
            if let Recipient::Operator(id) = entry.key() {
                for conn in entry.value() {
                    connections.push(OperatorConnection {
                        operator_id: *id,
                        connection_id: self.connection_name(conn.id),
                        name: conn.name.clone(),
                    });
                }
            }
        }
        connections
    }

    /// Frames waiting in every connection's queue.
    pub fn queued_frames(&self) -> usize {
        self.conns.iter().map(|c| c.queued()).sum()
    }

    /// Stops every connection (gateway shutdown).
    pub fn stop_all(&self, reason: CloseReason) {
        for conn in self.conns.iter() {
            conn.stop(reason);
        }
    }

    /// Tells the connections of `recipient` to catch up with `service`.
    pub fn resync(&self, service: ServiceId, recipient: &Recipient) {
        if let Some(list) = self.members.get(recipient) {
            for conn in list.iter() {
                conn.push(Outbound::Resync(service));
            }
        }
    }

    /// Hands a delivery from `service` to every connection it is for.
    /// Returns how many connections it was queued for.
    pub fn dispatch(&self, service: ServiceId, delivery: &Delivery) -> usize {
        let prepared = match PreparedEvent::prepare(service, delivery) {
            Ok(prepared) => prepared,
            Err(err) => {
                tracing::error!(cause = %err, kind = %delivery.event.kind, "dropping malformed event");
                return 0;
            }
        };
        let origin = prepared.origin.clone();
        if let Some(ended) = &prepared.ends_hold {
            // Before the event is queued: from here on the operator's
            // connections get no copies of the dialog's events (each leaves
            // the room for good, with `room_left`, when it writes the event).
            self.leave_all(&ended.room(), &delivery.recipient);
        }
        let outbound = if prepared.is_durable() {
            Shared::Event(Arc::new(prepared))
        } else if let Recipient::Room(_) = &delivery.recipient {
            Shared::RoomCopy(
                delivery.recipient.clone(),
                Utf8Bytes::from(prepared.render(None)),
            )
        } else {
            Shared::Frame(Utf8Bytes::from(prepared.render(None)))
        };
        let mut sent = 0;
        let mut send = |conn: &Arc<Conn>| {
            if conn.push(outbound.clone_outbound()) {
                sent += 1;
            }
        };
        match &delivery.recipient {
            Recipient::User(_) | Recipient::Operator(_) => {
                if let Some(list) = self.members.get(&delivery.recipient) {
                    list.iter().for_each(&mut send);
                }
            }
            Recipient::Room(_) => {
                // Not to the connection that caused it, nor to those of the
                // recipient that has the durable copy: one copy each.
                let durable = delivery.event.durable_recipient.as_ref();
                if let Some(list) = self.members.get(&delivery.recipient) {
                    list.iter()
                        .filter(|c| !self.is_origin(c.id, origin.as_deref()))
                        .filter(|c| durable != Some(&c.principal))
                        .for_each(&mut send);
                }
            }
            Recipient::Role(role) => {
                for conn in self.conns.iter().filter(|c| c.role == *role) {
                    send(conn.value());
                }
            }
            Recipient::Everyone => {
                for conn in self.conns.iter() {
                    send(conn.value());
                }
            }
        }
        sent
    }
}

/// One rendering of an event, cloned cheaply per receiver (reference
/// counts only: the room's name is an `Arc<str>`).
enum Shared {
    Event(Arc<PreparedEvent>),
    Frame(Utf8Bytes),
    RoomCopy(Recipient, Utf8Bytes),
}

impl Shared {
    fn clone_outbound(&self) -> Outbound {
        match self {
            Shared::Event(event) => Outbound::Event(event.clone()),
            Shared::Frame(frame) => Outbound::Frame(frame.clone()),
            Shared::RoomCopy(room, frame) => Outbound::RoomCopy {
                room: room.clone(),
                frame: frame.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use chatai_kit::events::Event;

    use super::*;
    use crate::frames::rooms::LeftReason;

    fn conn(
        registry: &Registry,
        principal: Recipient,
        capacity: usize,
    ) -> (Arc<Conn>, flume::Receiver<Outbound>) {
        let (tx, rx) = flume::bounded(capacity);
        let conn = Arc::new(Conn::new(
            registry.next_id(),
            Role::User,
            principal,
            tx,
            CancellationToken::new(),
        ));
        (conn, rx)
    }

    fn delivery(recipient: Recipient, position: u64, origin: Option<String>) -> Delivery {
        Delivery {
            recipient,
            position,
            event: Arc::new(Event {
                id: "e".into(),
                kind: "typing".into(),
                body: b"{}".to_vec().into(),
                timestamp_ms: 0,
                trace_context: Default::default(),
                origin_connection: origin,
                durable_recipient: None,
            }),
        }
    }

    /// A sixth connection of a user stops the oldest one.
    #[test]
    fn connection_limit_stops_the_oldest() {
        let registry = Registry::new("g".into());
        let conns: Vec<_> = (0..6)
            .map(|_| conn(&registry, Recipient::User(1), 4))
            .collect();
        for (c, _) in &conns {
            registry.register(c.clone(), 5);
        }
        assert!(conns[0].0.stop.is_cancelled());
        assert_eq!(conns[0].0.stop_reason(), CloseReason::Replaced);
        assert!(conns[1..].iter().all(|(c, _)| !c.stop.is_cancelled()));
    }

    /// Room copies skip the connection that caused them.
    #[test]
    fn room_copies_skip_their_origin() {
        let registry = Registry::new("g".into());
        let (a, rx_a) = conn(&registry, Recipient::User(1), 4);
        let (b, rx_b) = conn(&registry, Recipient::User(2), 4);
        registry.register(a.clone(), 5);
        registry.register(b.clone(), 5);
        let room = Recipient::dialog_room(9);
        registry.join(room.clone(), &a);
        registry.join(room.clone(), &b);
        let sent = registry.dispatch(
            ServiceId::Chat,
            &delivery(room.clone(), 0, Some(registry.connection_name(a.id))),
        );
        assert_eq!(sent, 1);
        assert!(rx_a.try_recv().is_err());
        assert!(matches!(rx_b.try_recv(), Ok(Outbound::RoomCopy { room: r, .. }) if r == room));
        registry.unregister(&a, std::slice::from_ref(&room));
        registry.unregister(&b, &[room]);
        assert_eq!(registry.snapshot(), Snapshot::default());
    }

    /// Room copies skip the connections of the recipient that gets the
    /// event durably: one copy per connection.
    #[test]
    fn room_copies_skip_the_durable_recipient() {
        let registry = Registry::new("g".into());
        let (owner, rx_owner) = conn(&registry, Recipient::User(1), 4);
        let (operator, rx_operator) = conn(&registry, Recipient::Operator(7), 4);
        registry.register(owner.clone(), 5);
        registry.register(operator.clone(), 5);
        let room = Recipient::dialog_room(9);
        registry.join(room.clone(), &owner);
        registry.join(room.clone(), &operator);
        let mut copy = delivery(room.clone(), 0, None);
        copy.event =
            Arc::new(Event::clone(&copy.event).with_durable_recipient(Some(Recipient::User(1))));
        assert_eq!(registry.dispatch(ServiceId::Chat, &copy), 1);
        assert!(rx_owner.try_recv().is_err());
        assert!(matches!(
            rx_operator.try_recv(),
            Ok(Outbound::RoomCopy { .. })
        ));
        registry.unregister(&owner, std::slice::from_ref(&room));
        registry.unregister(&operator, &[room]);
    }

    /// A `handoff_completed` to an operator takes every connection of that
    /// operator out of the dialog's room before the event is queued: room
    /// copies queued before it still arrive (they happened while the
    /// operator held the dialog), none after it; the owner, an admin and
    /// the operator's other rooms are untouched.
    #[test]
    fn an_ended_hold_takes_the_operator_out_of_the_room() {
        let registry = Registry::new("g".into());
        let (owner, rx_owner) = conn(&registry, Recipient::User(1), 8);
        let (admin, rx_admin) = conn(&registry, Recipient::User(2), 8);
        let (tab1, rx_tab1) = conn(&registry, Recipient::Operator(7), 8);
        let (tab2, rx_tab2) = conn(&registry, Recipient::Operator(7), 8);
        let (other, rx_other) = conn(&registry, Recipient::Operator(8), 8);
        let room = Recipient::dialog_room(9);
        let elsewhere = Recipient::dialog_room(10);
        for c in [&owner, &admin, &tab1, &tab2, &other] {
            registry.register(c.clone(), 5);
            registry.join(room.clone(), c);
        }
        registry.join(elsewhere.clone(), &tab1);
        assert_eq!(
            registry.dispatch(ServiceId::Chat, &delivery(room.clone(), 0, None)),
            5
        );

        let mut ended = delivery(Recipient::Operator(7), 3, None);
        ended.event = Arc::new(Event {
            kind: "handoff_completed".into(),
            body: br#"{"dialog_id":9,"operator_id":7,"resolution":"done","outcome":"completed"}"#
                .to_vec()
                .into(),
            ..Event::clone(&ended.event)
        });
        assert_eq!(registry.dispatch(ServiceId::Handoff, &ended), 2);
        assert!(!registry.is_member(&room, tab1.id));
        assert!(!registry.is_member(&room, tab2.id));
        assert!(registry.is_member(&elsewhere, tab1.id));
        for c in [&owner, &admin, &other] {
            assert!(registry.is_member(&room, c.id));
        }
        assert_eq!(
            registry.dispatch(ServiceId::Chat, &delivery(room.clone(), 0, None)),
            3
        );

        for rx in [&rx_tab1, &rx_tab2] {
            assert!(matches!(rx.try_recv(), Ok(Outbound::RoomCopy { .. })));
            match rx.try_recv() {
                Ok(Outbound::Event(event)) => assert_eq!(
                    event.ends_hold.map(|e| (e.dialog_id, e.reason)),
                    Some((9, LeftReason::HandoffCompleted))
                ),
                other => panic!("expected the handoff_completed, got {other:?}"),
            }
            assert!(rx.try_recv().is_err(), "no copy after the hold ended");
        }
        for rx in [&rx_owner, &rx_admin, &rx_other] {
            assert!(matches!(rx.try_recv(), Ok(Outbound::RoomCopy { .. })));
            assert!(matches!(rx.try_recv(), Ok(Outbound::RoomCopy { .. })));
        }
        // The same event to the user names the operator but ends no hold.
        registry.join(room.clone(), &tab1);
        let mut to_user = ended.clone();
        to_user.recipient = Recipient::User(1);
        registry.dispatch(ServiceId::Handoff, &to_user);
        assert!(registry.is_member(&room, tab1.id));
    }

    /// A connection whose queue is full is stopped as too slow, and the
    /// others still get the event.
    #[test]
    fn full_queue_stops_only_the_slow_connection() {
        let registry = Registry::new("g".into());
        let (slow, _rx_slow) = conn(&registry, Recipient::User(1), 1);
        let (fast, rx_fast) = conn(&registry, Recipient::User(1), 8);
        registry.register(slow.clone(), 5);
        registry.register(fast.clone(), 5);
        registry.dispatch(ServiceId::Chat, &delivery(Recipient::User(1), 1, None));
        registry.dispatch(ServiceId::Chat, &delivery(Recipient::User(1), 2, None));
        assert_eq!(slow.stop_reason(), CloseReason::TooSlow);
        assert!(!fast.stop.is_cancelled());
        assert!(matches!(rx_fast.try_recv(), Ok(Outbound::Event(_))));
        assert!(matches!(rx_fast.try_recv(), Ok(Outbound::Event(_))));
    }
}
