//! The presence state machine: operators, the connections gateways report
//! for them, and the timers (grace periods, gateway leases). Plain data owned
//! by the actor (`actor.rs`): no locks, no I/O. Every operation returns the
//! operators whose announced signals (effective status, chosen status,
//! online, load) changed, so the actor sends one event per real change.
//!
//! Every announced change gets the next [`version`](OperatorView::version),
//! and a listing says the version it is as of, so a follower that reads a
//! listing and then events can drop the events the listing already holds.
//!
//! After a restart the state knows nobody's connections. An operator it has
//! not seen connected since it started is not "offline" but unknown: when the
//! handoff service reports that such an operator holds handoffs, they get
//! the grace period a closed connection gets (online until it ends), so a
//! restart takes nothing back from operators who reconnect in time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::task::{Context, Poll};
use std::time::Duration;

use chatai_kit::versioned::VersionClock;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::model::{ChosenStatus, Connection, OperatorView, ReportOrder, Status};

/// What a timer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The operator's grace period after their last connection went.
    Grace(i64),
    /// The gateway's lease on its connections.
    Lease(String),
}

/// One operator. Kept while the service runs; the chosen status is also
/// stored (the actor writes it), so it survives restarts too.
#[derive(Debug)]
struct Operator {
    name: String,
    chosen: ChosenStatus,
    /// Whether a connection of theirs has been seen since the service
    /// started, or a grace period given instead (see the module doc).
    accounted: bool,
    /// The version of the last announced change.
    version: u64,
    load: u32,
    online: bool,
    /// Live connections over every gateway (the gateways' maps hold which).
    connections: u32,
    /// Set while the grace period runs.
    grace: Option<delay_queue::Key>,
    since_ms: i64,
}

impl Operator {
    fn new(chosen: ChosenStatus) -> Self {
        Operator {
            name: String::new(),
            chosen,
            accounted: false,
            version: 0,
            load: 0,
            online: false,
            connections: 0,
            grace: None,
            since_ms: chatai_kit::now_ms(),
        }
    }
}

/// The operator connections one gateway holds.
#[derive(Debug, Default)]
struct Gateway {
    /// Connection id → operator.
    connections: HashMap<String, i64>,
    /// Set once the gateway has refreshed; its expiry drops the connections.
    lease: Option<delay_queue::Key>,
    /// The run of the gateway the reports below come from.
    incarnation: u64,
    /// Connection id → sequence of the last open or close applied for it,
    /// kept until a refresh newer than it (see `presence.proto`,
    /// `ReportOrder`).
    last_report: HashMap<String, u64>,
}

impl Gateway {
    /// Whether this gateway entry says nothing any more.
    fn is_empty(&self) -> bool {
        self.connections.is_empty() && self.lease.is_none() && self.last_report.is_empty()
    }
}

/// How a report relates to what was applied before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ordered {
    /// Unordered, or ordered and newer: apply it.
    Apply,
    /// From an older run of the gateway, or older than what was applied for
    /// its connection: ignore it.
    Stale,
}

/// The signals whose change is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signals {
    status: Status,
    chosen: ChosenStatus,
    online: bool,
    load: u32,
}

/// All presence state.
#[derive(Debug)]
pub(crate) struct PresenceState {
    grace: Duration,
    max_handoffs: u32,
    /// Ordered, so listings come out by id.
    operators: BTreeMap<i64, Operator>,
    /// Chosen statuses stored before the start, for operators not heard of
    /// yet in this run.
    stored: HashMap<i64, ChosenStatus>,
    /// Stamps every announced change (versions grow across restarts too).
    versions: VersionClock,
    gateways: HashMap<String, Gateway>,
    timers: DelayQueue<Timer>,
}

/// The result of an operation, and the operators it changed.
pub(crate) type Changed<T> = (T, Vec<OperatorView>);

impl PresenceState {
    /// `stored`: the chosen statuses kept from before the start.
    pub fn new(grace: Duration, max_handoffs: u32, stored: HashMap<i64, ChosenStatus>) -> Self {
        PresenceState {
            grace,
            max_handoffs,
            operators: BTreeMap::new(),
            stored,
            versions: VersionClock::default(),
            gateways: HashMap::new(),
            timers: DelayQueue::new(),
        }
    }

    /// A gateway opened a connection for an operator. An open older than
    /// the last report applied for that connection changes nothing.
    pub fn connection_opened(
        &mut self,
        gateway: &str,
        connection: Connection,
        order: Option<ReportOrder>,
    ) -> Changed<OperatorView> {
        let id = connection.operator_id;
        if self.order_report(gateway, &connection.connection_id, order) == Ordered::Stale {
            return (self.view_or_new(id), Vec::new());
        }
        let previous = self.owner(gateway, &connection.connection_id);
        let ((), changes) = self.tracked(previous.into_iter().chain([id]), |state| {
            state.attach(gateway, connection)
        });
        (self.view_or_new(id), changes)
    }

    /// A gateway's connection closed. Unknown connections, and closes older
    /// than the last report applied for that connection, are ignored.
    pub fn connection_closed(
        &mut self,
        gateway: &str,
        connection_id: &str,
        order: Option<ReportOrder>,
    ) -> Vec<OperatorView> {
        if self.order_report(gateway, connection_id, order) == Ordered::Stale {
            return Vec::new();
        }
        let owner = self.owner(gateway, connection_id);
        let ((), changes) = self.tracked(owner, |state| {
            state.detach(gateway, connection_id);
        });
        changes
    }

    /// Replaces the gateway's connections with `connections` and (re)sets
    /// its lease to `ttl` — except the connections opened or closed after
    /// the list was read (`order`), which stay as those reports left them.
    /// A refresh from an older run of the gateway only renews the lease.
    pub fn refresh(
        &mut self,
        gateway: &str,
        connections: Vec<Connection>,
        ttl: Duration,
        order: Option<ReportOrder>,
    ) -> Vec<OperatorView> {
        let entry = self.gateways.entry(gateway.to_owned()).or_default();
        let stale_run = order.is_some_and(|order| order.incarnation < entry.incarnation);
        if let Some(order) = order
            && order.incarnation > entry.incarnation
        {
            entry.incarnation = order.incarnation;
            entry.last_report.clear();
        }
        // Reports newer than the list: their connections keep their state.
        let newer: HashSet<String> = match order {
            Some(order) => entry
                .last_report
                .iter()
                .filter(|(_, sequence)| **sequence > order.sequence)
                .map(|(id, _)| id.clone())
                .collect(),
            None => HashSet::new(),
        };
        let listed: HashMap<String, i64> = connections
            .iter()
            .map(|c| (c.connection_id.clone(), c.operator_id))
            .collect();
        let known: Vec<i64> = entry.connections.values().copied().collect();
        let affected = known.into_iter().chain(listed.values().copied());
        let ((), changes) = self.tracked(affected, |state| {
            if !stale_run {
                // Attach first, then drop what is no longer listed: an
                // operator whose connections only changed ids never starts a
                // grace period.
                for connection in connections {
                    if !newer.contains(&connection.connection_id) {
                        state.attach(gateway, connection);
                    }
                }
                let unlisted: Vec<String> = state
                    .gateways
                    .get(gateway)
                    .map(|g| {
                        g.connections
                            .keys()
                            .filter(|id| !listed.contains_key(*id) && !newer.contains(*id))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                for connection_id in unlisted {
                    state.detach(gateway, &connection_id);
                }
            }
            let entry = state.gateways.entry(gateway.to_owned()).or_default();
            if let Some(order) = order
                && !stale_run
            {
                // Reports the list reflects need not be remembered.
                entry
                    .last_report
                    .retain(|_, sequence| *sequence > order.sequence);
            }
            if let Some(key) = entry.lease.take() {
                state.timers.try_remove(&key);
            }
            entry.lease = Some(state.timers.insert(Timer::Lease(gateway.to_owned()), ttl));
        });
        changes
    }

    /// Places an open or close of `connection_id` among the gateway's
    /// reports, and remembers it when it is to be applied.
    fn order_report(
        &mut self,
        gateway: &str,
        connection_id: &str,
        order: Option<ReportOrder>,
    ) -> Ordered {
        let Some(order) = order else {
            return Ordered::Apply;
        };
        let entry = self.gateways.entry(gateway.to_owned()).or_default();
        if order.incarnation < entry.incarnation {
            return Ordered::Stale;
        }
        if order.incarnation > entry.incarnation {
            entry.incarnation = order.incarnation;
            entry.last_report.clear();
        }
        match entry.last_report.get(connection_id) {
            Some(&applied) if applied > order.sequence => Ordered::Stale,
            _ => {
                entry
                    .last_report
                    .insert(connection_id.to_owned(), order.sequence);
                Ordered::Apply
            }
        }
    }

    /// Records the status the operator chose (known or not yet).
    pub fn set_status(&mut self, operator_id: i64, chosen: ChosenStatus) -> Changed<OperatorView> {
        let ((), changes) = self.tracked([operator_id], |state| {
            state.operator(operator_id).chosen = chosen;
        });
        (self.view_or_new(operator_id), changes)
    }

    /// Records how many handoffs the operator holds. An operator who holds
    /// some but has not been seen since the start gets a grace period to
    /// come back (see the module doc).
    pub fn set_load(&mut self, operator_id: i64, active_handoffs: u32) -> Changed<OperatorView> {
        let ((), changes) = self.tracked([operator_id], |state| {
            let op = state.operator(operator_id);
            op.load = active_handoffs;
            if active_handoffs > 0 && !op.accounted {
                op.accounted = true;
                if !op.online && op.connections == 0 {
                    op.online = true;
                    op.since_ms = chatai_kit::now_ms();
                    state.start_grace(operator_id);
                }
            }
        });
        (self.view_or_new(operator_id), changes)
    }

    /// The version of the last announced change.
    pub fn version(&self) -> u64 {
        self.versions.current()
    }

    /// One operator, if known.
    pub fn get(&self, operator_id: i64) -> Option<OperatorView> {
        self.view(operator_id)
    }

    /// Every operator heard of since the start, by id (operators only
    /// stored are not listed: nothing is known of them yet).
    pub fn list(&self) -> Vec<OperatorView> {
        self.operators
            .keys()
            .filter_map(|id| self.view(*id))
            .collect()
    }

    /// The next timer that is due; `Ready(None)` when none is set (the
    /// caller polls again after the next operation).
    pub fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<Option<Timer>> {
        self.timers
            .poll_expired(cx)
            .map(|expired| expired.map(|e| e.into_inner()))
    }

    /// Acts on a timer [`poll_timers`](Self::poll_timers) returned.
    pub fn expire(&mut self, timer: Timer) -> Vec<OperatorView> {
        match timer {
            Timer::Grace(operator_id) => {
                let ((), changes) = self.tracked([operator_id], |state| {
                    let Some(op) = state.operators.get_mut(&operator_id) else {
                        return;
                    };
                    // The key was consumed by the queue.
                    op.grace = None;
                    if op.connections == 0 && op.online {
                        op.online = false;
                        op.since_ms = chatai_kit::now_ms();
                    }
                });
                changes
            }
            Timer::Lease(gateway) => {
                let held: Vec<i64> = self
                    .gateways
                    .get(&gateway)
                    .map(|g| g.connections.values().copied().collect())
                    .unwrap_or_default();
                tracing::warn!(
                    gateway_id = %gateway,
                    connections = held.len(),
                    "gateway lease expired; dropping its operator connections"
                );
                let ((), changes) = self.tracked(held.iter().copied(), |state| {
                    // The lease key was consumed by the queue.
                    if let Some(dropped) = state.gateways.remove(&gateway) {
                        for operator_id in dropped.connections.into_values() {
                            state.release(operator_id);
                        }
                    }
                });
                changes
            }
        }
    }

    /// Runs `change`, then reports the operators among `affected` whose
    /// announced signals differ from before.
    fn tracked<R>(
        &mut self,
        affected: impl IntoIterator<Item = i64>,
        change: impl FnOnce(&mut Self) -> R,
    ) -> Changed<R> {
        let affected: BTreeSet<i64> = affected.into_iter().collect();
        let before: Vec<(i64, Option<Signals>)> = affected
            .into_iter()
            .map(|id| (id, self.signals(id)))
            .collect();
        let result = change(self);
        let changed: Vec<i64> = before
            .into_iter()
            .filter(|(id, was)| {
                let now = self.signals(*id);
                now.is_some() && now != *was
            })
            .map(|(id, _)| id)
            .collect();
        for id in &changed {
            let version = self.versions.tick();
            if let Some(op) = self.operators.get_mut(id) {
                op.version = version;
            }
        }
        let changes = changed.into_iter().filter_map(|id| self.view(id)).collect();
        (result, changes)
    }

    /// The operator holding `connection_id` on `gateway`.
    fn owner(&self, gateway: &str, connection_id: &str) -> Option<i64> {
        self.gateways
            .get(gateway)
            .and_then(|g| g.connections.get(connection_id))
            .copied()
    }

    /// Adds a connection (idempotent): the operator is online and any grace
    /// period is cancelled.
    fn attach(&mut self, gateway: &str, connection: Connection) {
        let Connection {
            operator_id,
            connection_id,
            name,
        } = connection;
        let entry = self.gateways.entry(gateway.to_owned()).or_default();
        let previous = entry.connections.insert(connection_id, operator_id);
        match previous {
            Some(same) if same == operator_id => {}
            Some(other) => {
                // A connection id reused for someone else (not expected from
                // a gateway): it no longer counts for the previous operator.
                self.release(other);
                self.acquire(operator_id);
            }
            None => self.acquire(operator_id),
        }
        if !name.is_empty() {
            let op = self.operator(operator_id);
            if op.name != name {
                op.name = name;
            }
        }
    }

    /// Removes a connection, if known.
    fn detach(&mut self, gateway: &str, connection_id: &str) {
        let Some(entry) = self.gateways.get_mut(gateway) else {
            return;
        };
        let Some(operator_id) = entry.connections.remove(connection_id) else {
            return;
        };
        if entry.is_empty() {
            self.gateways.remove(gateway);
        }
        self.release(operator_id);
    }

    /// One more connection for the operator.
    fn acquire(&mut self, operator_id: i64) {
        let op = self.operator(operator_id);
        op.connections += 1;
        op.accounted = true;
        if !op.online {
            op.online = true;
            op.since_ms = chatai_kit::now_ms();
        }
        if let Some(key) = op.grace.take() {
            self.timers.try_remove(&key);
        }
    }

    /// One connection fewer: after the last one, the grace period starts
    /// (or the operator is offline at once when it is zero).
    fn release(&mut self, operator_id: i64) {
        let Some(op) = self.operators.get_mut(&operator_id) else {
            return;
        };
        op.connections = op.connections.saturating_sub(1);
        if op.connections > 0 || !op.online || op.grace.is_some() {
            return;
        }
        self.start_grace(operator_id);
    }

    /// Starts the operator's grace period; with none configured they are
    /// offline at once.
    fn start_grace(&mut self, operator_id: i64) {
        let Some(op) = self.operators.get_mut(&operator_id) else {
            return;
        };
        if self.grace.is_zero() {
            op.online = false;
            op.since_ms = chatai_kit::now_ms();
        } else if op.grace.is_none() {
            op.grace = Some(self.timers.insert(Timer::Grace(operator_id), self.grace));
        }
    }

    /// The operator, created when unknown: offline, no load, with the status
    /// they chose before the start (or available).
    fn operator(&mut self, operator_id: i64) -> &mut Operator {
        let stored = &mut self.stored;
        self.operators.entry(operator_id).or_insert_with(|| {
            Operator::new(
                stored
                    .remove(&operator_id)
                    .unwrap_or(ChosenStatus::Available),
            )
        })
    }

    fn signals(&self, operator_id: i64) -> Option<Signals> {
        self.operators.get(&operator_id).map(|op| Signals {
            status: Status::derive(op.chosen, op.online, op.load, self.max_handoffs),
            chosen: op.chosen,
            online: op.online,
            load: op.load,
        })
    }

    fn view(&self, operator_id: i64) -> Option<OperatorView> {
        let max_handoffs = self.max_handoffs;
        self.operators
            .get(&operator_id)
            .map(|op| view_of(operator_id, op, max_handoffs))
    }

    /// The operator's view, creating the operator when unknown.
    fn view_or_new(&mut self, operator_id: i64) -> OperatorView {
        let max_handoffs = self.max_handoffs;
        view_of(operator_id, self.operator(operator_id), max_handoffs)
    }
}

fn view_of(operator_id: i64, op: &Operator, max_handoffs: u32) -> OperatorView {
    OperatorView {
        operator_id,
        status: Status::derive(op.chosen, op.online, op.load, max_handoffs),
        chosen_status: op.chosen,
        online: op.online,
        active_handoffs: op.load,
        max_handoffs,
        connections: op.connections,
        name: op.name.clone(),
        since_ms: op.since_ms,
        version: op.version,
    }
}
