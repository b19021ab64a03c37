//! The presence rules, written once for every store: what a gateway's
//! report, a chosen status, a load or an ended timer does to the records it
//! touches. A [`Working`] set holds copies of those records (read by the
//! actor from the `state` store, with their revisions); [`Working::apply`]
//! changes them and says which operators' announced signals (effective
//! status, chosen status, online, load) changed, each stamped with the next
//! version; [`Working::into_commit`] turns the result into the store's
//! conditional write. No I/O here, no clock but the `now_ms` it is given.
//!
//! Every announced change gets the next [`version`](OperatorView::version),
//! and a listing says the version it is as of, so a follower that reads a
//! listing and then events can drop the events the listing already holds.
//!
//! Timers are deadlines in the records (`grace_until`, `lease_until`); the
//! actor fires them, and an ended timer is one more change, applied only if
//! its deadline is still in the record and past: a timer renewed or
//! cancelled meanwhile (by this replica or another) does nothing.
//!
//! After the state begins (a restart in one-process mode, an empty Redis) it
//! knows nobody's connections. An operator it has not seen connected since
//! is not "offline" but unknown: when the handoff service reports that such
//! an operator holds handoffs, they get the grace period a closed connection
//! gets (online until it ends), so a restart takes nothing back from
//! operators who reconnect in time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chatai_kit::events::Event;
use chatai_kit::versioned::VersionClock;

use crate::model::{ChosenStatus, Connection, OperatorView, ReportOrder, Status};
use crate::state::{Commit, GatewayRecord, OperatorRecord, OperatorsRead, Timer, Versioned};

/// The settings the rules follow (the same on every replica).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub grace: Duration,
    pub max_handoffs: u32,
}

/// One change asked of presence.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A gateway opened a connection for an operator. An open older than
    /// the last report applied for that connection changes nothing.
    Opened {
        gateway: String,
        connection: Connection,
        order: Option<ReportOrder>,
    },
    /// A gateway's connection closed. Unknown connections, and closes older
    /// than the last report applied for that connection, are ignored.
    Closed {
        gateway: String,
        connection_id: String,
        order: Option<ReportOrder>,
    },
    /// Replaces the gateway's connections with `connections` and (re)sets
    /// its lease to `ttl` — except the connections opened or closed after
    /// the list was read (`order`), which stay as those reports left them.
    /// A refresh from an older run of the gateway only renews the lease.
    Refresh {
        gateway: String,
        connections: Vec<Connection>,
        ttl: Duration,
        order: Option<ReportOrder>,
    },
    /// Records the status the operator chose (known or not yet).
    SetStatus {
        operator_id: i64,
        status: ChosenStatus,
    },
    /// Records how many handoffs the operator holds. An operator who holds
    /// some but has not been seen since the state began gets a grace period
    /// to come back (see the module doc).
    SetLoad {
        operator_id: i64,
        active_handoffs: u32,
    },
    /// A timer's deadline came.
    Expire(Timer),
}

impl Op {
    /// The gateway whose record the change reads, if any.
    pub fn gateway(&self) -> Option<&str> {
        match self {
            Op::Opened { gateway, .. }
            | Op::Closed { gateway, .. }
            | Op::Refresh { gateway, .. }
            | Op::Expire(Timer::Lease(gateway)) => Some(gateway),
            Op::SetStatus { .. } | Op::SetLoad { .. } | Op::Expire(Timer::Grace(_)) => None,
        }
    }

    /// The timer whose end this change is.
    pub fn fired(&self) -> Option<&Timer> {
        match self {
            Op::Expire(timer) => Some(timer),
            _ => None,
        }
    }

    /// The operators whose records the change reads, given its gateway's
    /// record (as read).
    pub fn operators(&self, gateway: Option<&GatewayRecord>) -> BTreeSet<i64> {
        let owner =
            |connection_id: &str| gateway.and_then(|g| g.connections.get(connection_id).copied());
        let held = || {
            gateway
                .map(|g| g.connections.values().copied().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        match self {
            Op::Opened { connection, .. } => [connection.operator_id]
                .into_iter()
                .chain(owner(&connection.connection_id))
                .collect(),
            Op::Closed { connection_id, .. } => owner(connection_id).into_iter().collect(),
            Op::Refresh { connections, .. } => held()
                .into_iter()
                .chain(connections.iter().map(|c| c.operator_id))
                .collect(),
            Op::SetStatus { operator_id, .. } | Op::SetLoad { operator_id, .. } => {
                BTreeSet::from([*operator_id])
            }
            Op::Expire(Timer::Grace(operator_id)) => BTreeSet::from([*operator_id]),
            Op::Expire(Timer::Lease(_)) => held().into_iter().collect(),
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// The operator the call is about (opens, statuses, loads).
    pub view: Option<OperatorView>,
    /// The operators whose announced signals changed, in order.
    pub changes: Vec<OperatorView>,
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

/// The gateway a change reads, as read and as changed.
#[derive(Debug)]
struct GatewaySlot {
    id: String,
    revision: u64,
    original: Option<GatewayRecord>,
    current: GatewayRecord,
}

/// An operator a change reads, as read and as changed.
#[derive(Debug)]
struct OperatorSlot {
    revision: u64,
    original: Option<OperatorRecord>,
    current: Option<OperatorRecord>,
}

/// The records one change reads, being changed.
#[derive(Debug)]
pub(crate) struct Working<'a> {
    settings: Settings,
    now_ms: i64,
    /// Chosen statuses stored in the database, for operators with no record
    /// yet.
    defaults: &'a HashMap<i64, ChosenStatus>,
    gateway: Option<GatewaySlot>,
    operators: BTreeMap<i64, OperatorSlot>,
    clock_read: u64,
    versions: VersionClock,
}

impl<'a> Working<'a> {
    /// The records read for one change: its gateway (if it has one) and
    /// operators, and the version clock as read.
    pub fn new(
        settings: Settings,
        now_ms: i64,
        defaults: &'a HashMap<i64, ChosenStatus>,
        gateway: Option<(String, Versioned<GatewayRecord>)>,
        read: OperatorsRead,
    ) -> Self {
        let gateway = gateway.map(|(id, read)| GatewaySlot {
            id,
            revision: read.revision,
            current: read.record.clone().unwrap_or_default(),
            original: read.record,
        });
        let operators = read
            .operators
            .into_iter()
            .map(|(id, read)| {
                (
                    id,
                    OperatorSlot {
                        revision: read.revision,
                        current: read.record.clone(),
                        original: read.record,
                    },
                )
            })
            .collect();
        Working {
            settings,
            now_ms,
            defaults,
            gateway,
            operators,
            clock_read: read.clock,
            versions: VersionClock::after(read.clock),
        }
    }

    /// Applies `op` to the records.
    pub fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Opened {
                connection, order, ..
            } => self.connection_opened(connection, *order),
            Op::Closed {
                connection_id,
                order,
                ..
            } => self.connection_closed(connection_id, *order),
            Op::Refresh {
                connections,
                ttl,
                order,
                ..
            } => self.refresh(connections, *ttl, *order),
            Op::SetStatus {
                operator_id,
                status,
            } => self.set_status(*operator_id, *status),
            Op::SetLoad {
                operator_id,
                active_handoffs,
            } => self.set_load(*operator_id, *active_handoffs),
            Op::Expire(timer) => self.expire(timer),
        }
    }

    /// The conditional write of what [`apply`](Self::apply) did: every
    /// record read is checked, the changed ones written with their timers
    /// (and `fired`, the timer that caused the change, cleared unless its
    /// record still holds it), `events` announced.
    pub fn into_commit(self, fired: Option<&Timer>, events: Vec<Arc<Event>>) -> Commit {
        let mut commit = Commit {
            events,
            ..Commit::default()
        };
        let current_version = self.versions.current();
        if current_version != self.clock_read {
            commit.clock = Some((self.clock_read, current_version));
        }
        if let Some(slot) = self.gateway {
            commit.read_gateways.push((slot.id.clone(), slot.revision));
            let after = (!slot.current.is_empty()).then_some(slot.current);
            let lease_before = slot.original.as_ref().and_then(|g| g.lease_until);
            let lease_after = after.as_ref().and_then(|g| g.lease_until);
            let lease = Timer::Lease(slot.id.clone());
            if lease_before != lease_after || fired == Some(&lease) {
                commit.timers.push((lease, lease_after));
            }
            if after != slot.original {
                commit.gateways.push((slot.id, after));
            }
        }
        for (id, slot) in self.operators {
            commit.read_operators.push((id, slot.revision));
            let grace_before = slot.original.as_ref().and_then(|op| op.grace_until);
            let grace_after = slot.current.as_ref().and_then(|op| op.grace_until);
            let grace = Timer::Grace(id);
            if grace_before != grace_after || fired == Some(&grace) {
                commit.timers.push((grace, grace_after));
            }
            if let Some(current) = slot.current
                && slot.original.as_ref() != Some(&current)
            {
                commit.operators.push((id, current));
            }
        }
        if let Some(fired) = fired
            && !commit.timers.iter().any(|(timer, _)| timer == fired)
        {
            // Its record was not read (a lease of a gateway read under
            // another name cannot happen; a grace of an operator not read
            // neither): clear what nobody holds.
            commit.timers.push((fired.clone(), None));
        }
        commit
    }

    fn connection_opened(
        &mut self,
        connection: &Connection,
        order: Option<ReportOrder>,
    ) -> Outcome {
        let id = connection.operator_id;
        if self.order_report(&connection.connection_id, order) == Ordered::Stale {
            return Outcome {
                view: Some(self.view_or_new(id)),
                changes: Vec::new(),
            };
        }
        let previous = self.owner(&connection.connection_id);
        let changes = self.tracked(previous.into_iter().chain([id]), |state| {
            state.attach(connection.clone());
        });
        Outcome {
            view: Some(self.view_or_new(id)),
            changes,
        }
    }

    fn connection_closed(&mut self, connection_id: &str, order: Option<ReportOrder>) -> Outcome {
        if self.order_report(connection_id, order) == Ordered::Stale {
            return Outcome::default();
        }
        let owner = self.owner(connection_id);
        let changes = self.tracked(owner, |state| state.detach(connection_id));
        Outcome {
            view: None,
            changes,
        }
    }

    fn refresh(
        &mut self,
        connections: &[Connection],
        ttl: Duration,
        order: Option<ReportOrder>,
    ) -> Outcome {
        let now_ms = self.now_ms;
        let Some(entry) = self.gateway.as_mut().map(|slot| &mut slot.current) else {
            return Outcome::default();
        };
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
        let listed: HashMap<&str, i64> = connections
            .iter()
            .map(|c| (c.connection_id.as_str(), c.operator_id))
            .collect();
        let known: Vec<i64> = entry.connections.values().copied().collect();
        let affected: Vec<i64> = known.into_iter().chain(listed.values().copied()).collect();
        let changes = self.tracked(affected, |state| {
            if !stale_run {
                // Attach first, then drop what is no longer listed: an
                // operator whose connections only changed ids never starts a
                // grace period.
                for connection in connections {
                    if !newer.contains(&connection.connection_id) {
                        state.attach(connection.clone());
                    }
                }
                let unlisted: Vec<String> = state
                    .gateway_record()
                    .connections
                    .keys()
                    .filter(|id| !listed.contains_key(id.as_str()) && !newer.contains(*id))
                    .cloned()
                    .collect();
                for connection_id in unlisted {
                    state.detach(&connection_id);
                }
            }
            let entry = state.gateway_record();
            if let Some(order) = order
                && !stale_run
            {
                // Reports the list reflects need not be remembered.
                entry
                    .last_report
                    .retain(|_, sequence| *sequence > order.sequence);
            }
            entry.lease_until = Some(now_ms.saturating_add(millis(ttl)));
        });
        Outcome {
            view: None,
            changes,
        }
    }

    fn set_status(&mut self, operator_id: i64, chosen: ChosenStatus) -> Outcome {
        let changes = self.tracked([operator_id], |state| {
            state.operator(operator_id).chosen = chosen;
        });
        Outcome {
            view: Some(self.view_or_new(operator_id)),
            changes,
        }
    }

    fn set_load(&mut self, operator_id: i64, active_handoffs: u32) -> Outcome {
        let changes = self.tracked([operator_id], |state| {
            let now_ms = state.now_ms;
            let op = state.operator(operator_id);
            op.load = active_handoffs;
            if active_handoffs > 0 && !op.accounted {
                op.accounted = true;
                if !op.online && op.connections == 0 {
                    op.online = true;
                    op.since_ms = now_ms;
                    state.start_grace(operator_id);
                }
            }
        });
        Outcome {
            view: Some(self.view_or_new(operator_id)),
            changes,
        }
    }

    fn expire(&mut self, timer: &Timer) -> Outcome {
        let now_ms = self.now_ms;
        let ended = |deadline: Option<i64>| deadline.is_some_and(|at| at <= now_ms);
        let changes = match timer {
            Timer::Grace(operator_id) => self.tracked([*operator_id], |state| {
                let Some(op) = state.existing(*operator_id) else {
                    return;
                };
                if !ended(op.grace_until) {
                    return;
                }
                op.grace_until = None;
                if op.connections == 0 && op.online {
                    op.online = false;
                    op.since_ms = now_ms;
                }
            }),
            Timer::Lease(gateway) => {
                let Some(slot) = self.gateway.as_ref() else {
                    return Outcome::default();
                };
                if !ended(slot.current.lease_until) {
                    return Outcome::default();
                }
                let held: Vec<i64> = slot.current.connections.values().copied().collect();
                tracing::warn!(
                    gateway_id = %gateway,
                    connections = held.len(),
                    "gateway lease expired; dropping its operator connections"
                );
                self.tracked(held.iter().copied(), |state| {
                    let dropped = std::mem::take(state.gateway_record());
                    for operator_id in dropped.connections.into_values() {
                        state.release(operator_id);
                    }
                })
            }
        };
        Outcome {
            view: None,
            changes,
        }
    }

    /// Places an open or close of `connection_id` among the gateway's
    /// reports, and remembers it when it is to be applied.
    fn order_report(&mut self, connection_id: &str, order: Option<ReportOrder>) -> Ordered {
        let Some(order) = order else {
            return Ordered::Apply;
        };
        let entry = self.gateway_record();
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

    /// Runs `change`, then reports the operators among `affected` whose
    /// announced signals differ from before, each with its next version.
    fn tracked(
        &mut self,
        affected: impl IntoIterator<Item = i64>,
        change: impl FnOnce(&mut Self),
    ) -> Vec<OperatorView> {
        let affected: BTreeSet<i64> = affected.into_iter().collect();
        let before: Vec<(i64, Option<Signals>)> = affected
            .into_iter()
            .map(|id| (id, self.signals(id)))
            .collect();
        change(self);
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
            if let Some(op) = self.existing(*id) {
                op.version = version;
            }
        }
        changed.into_iter().filter_map(|id| self.view(id)).collect()
    }

    /// The gateway's record (the change names a gateway whenever this is
    /// called; see [`Op::gateway`]).
    fn gateway_record(&mut self) -> &mut GatewayRecord {
        let slot = self.gateway.get_or_insert_with(|| {
            debug_assert!(false, "a change touched a gateway it did not read");
            GatewaySlot {
                id: String::new(),
                revision: 0,
                original: None,
                current: GatewayRecord::default(),
            }
        });
        &mut slot.current
    }

    /// The operator holding `connection_id` on the gateway.
    fn owner(&self, connection_id: &str) -> Option<i64> {
        self.gateway
            .as_ref()
            .and_then(|slot| slot.current.connections.get(connection_id))
            .copied()
    }

    /// Adds a connection (idempotent): the operator is online and any grace
    /// period is cancelled.
    fn attach(&mut self, connection: Connection) {
        let Connection {
            operator_id,
            connection_id,
            name,
        } = connection;
        let previous = self
            .gateway_record()
            .connections
            .insert(connection_id, operator_id);
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
    fn detach(&mut self, connection_id: &str) {
        let Some(operator_id) = self.gateway_record().connections.remove(connection_id) else {
            return;
        };
        self.release(operator_id);
    }

    /// One more connection for the operator.
    fn acquire(&mut self, operator_id: i64) {
        let now_ms = self.now_ms;
        let op = self.operator(operator_id);
        op.connections += 1;
        op.accounted = true;
        if !op.online {
            op.online = true;
            op.since_ms = now_ms;
        }
        op.grace_until = None;
    }

    /// One connection fewer: after the last one, the grace period starts
    /// (or the operator is offline at once when it is zero).
    fn release(&mut self, operator_id: i64) {
        let Some(op) = self.existing(operator_id) else {
            return;
        };
        op.connections = op.connections.saturating_sub(1);
        if op.connections > 0 || !op.online || op.grace_until.is_some() {
            return;
        }
        self.start_grace(operator_id);
    }

    /// Starts the operator's grace period; with none configured they are
    /// offline at once.
    fn start_grace(&mut self, operator_id: i64) {
        let now_ms = self.now_ms;
        let grace = self.settings.grace;
        let Some(op) = self.existing(operator_id) else {
            return;
        };
        if grace.is_zero() {
            op.online = false;
            op.since_ms = now_ms;
        } else if op.grace_until.is_none() {
            op.grace_until = Some(now_ms.saturating_add(millis(grace)));
        }
    }

    /// The operator's record, if they have one.
    fn existing(&mut self, operator_id: i64) -> Option<&mut OperatorRecord> {
        self.operators
            .get_mut(&operator_id)
            .and_then(|slot| slot.current.as_mut())
    }

    /// The operator's record, created when there is none: offline, no load,
    /// with the status they chose before (or available).
    fn operator(&mut self, operator_id: i64) -> &mut OperatorRecord {
        let chosen = self
            .defaults
            .get(&operator_id)
            .copied()
            .unwrap_or(ChosenStatus::Available);
        let now_ms = self.now_ms;
        let slot = self.operators.entry(operator_id).or_insert_with(|| {
            debug_assert!(false, "a change touched an operator it did not read");
            OperatorSlot {
                revision: 0,
                original: None,
                current: None,
            }
        });
        slot.current
            .get_or_insert_with(|| OperatorRecord::new(chosen, now_ms))
    }

    fn signals(&self, operator_id: i64) -> Option<Signals> {
        let max_handoffs = self.settings.max_handoffs;
        self.record(operator_id).map(|op| Signals {
            status: Status::derive(op.chosen, op.online, op.load, max_handoffs),
            chosen: op.chosen,
            online: op.online,
            load: op.load,
        })
    }

    fn record(&self, operator_id: i64) -> Option<&OperatorRecord> {
        self.operators
            .get(&operator_id)
            .and_then(|slot| slot.current.as_ref())
    }

    fn view(&self, operator_id: i64) -> Option<OperatorView> {
        self.record(operator_id)
            .map(|op| view_of(operator_id, op, self.settings.max_handoffs))
    }

    /// The operator's view, creating the operator when unknown.
    fn view_or_new(&mut self, operator_id: i64) -> OperatorView {
        let max_handoffs = self.settings.max_handoffs;
        view_of(operator_id, self.operator(operator_id), max_handoffs)
    }
}

/// What everyone is told of an operator's record.
pub(crate) fn view_of(operator_id: i64, op: &OperatorRecord, max_handoffs: u32) -> OperatorView {
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

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    //! The rules on records alone; the actor's tests drive them through a
    //! store, over time.

    use super::*;

    const SETTINGS: Settings = Settings {
        grace: Duration::from_secs(30),
        max_handoffs: 3,
    };

    fn conn(operator_id: i64, connection_id: &str) -> Connection {
        Connection {
            operator_id,
            connection_id: connection_id.to_owned(),
            name: String::new(),
        }
    }

    fn working<'a>(
        defaults: &'a HashMap<i64, ChosenStatus>,
        gateway: Option<(&str, Option<GatewayRecord>)>,
        operators: &[(i64, Option<OperatorRecord>)],
        now_ms: i64,
    ) -> Working<'a> {
        Working::new(
            SETTINGS,
            now_ms,
            defaults,
            gateway.map(|(id, record)| {
                (
                    id.to_owned(),
                    Versioned {
                        revision: u64::from(record.is_some()),
                        record,
                    },
                )
            }),
            OperatorsRead {
                operators: operators
                    .iter()
                    .map(|(id, record)| {
                        (
                            *id,
                            Versioned {
                                revision: u64::from(record.is_some()),
                                record: record.clone(),
                            },
                        )
                    })
                    .collect(),
                clock: 100,
            },
        )
    }

    /// An open writes the gateway and the new operator (with the chosen
    /// status stored for them), checks both as read, hands out a version
    /// above the clock, and says nothing of timers.
    #[test]
    fn an_open_commits_its_records_and_a_version() {
        let defaults = HashMap::from([(7, ChosenStatus::Away)]);
        let op = Op::Opened {
            gateway: "gw1".into(),
            connection: conn(7, "c1"),
            order: None,
        };
        assert_eq!(op.operators(None), BTreeSet::from([7]));
        let mut work = working(&defaults, Some(("gw1", None)), &[(7, None)], 1_000);
        let outcome = work.apply(&op);
        let view = outcome.view.expect("the operator");
        assert_eq!(view.status, Status::Away);
        assert_eq!(outcome.changes.len(), 1);
        let commit = work.into_commit(None, Vec::new());
        assert_eq!(commit.read_gateways, vec![("gw1".to_owned(), 0)]);
        assert_eq!(commit.read_operators, vec![(7, 0)]);
        let (read, new) = commit.clock.expect("a version was handed out");
        assert_eq!(read, 100);
        assert!(new > 100);
        assert_eq!(outcome.changes[0].version, new);
        assert_eq!(commit.gateways.len(), 1);
        assert_eq!(commit.operators[0].1.connections, 1);
        assert!(commit.timers.is_empty());
    }

    /// Closing the last connection deletes the emptied gateway record and
    /// sets the grace timer; its end, applied later, takes the operator
    /// offline and clears the timer. A grace timer that no longer matches
    /// the record (a reconnect meanwhile) changes nothing but is cleared.
    #[test]
    fn a_close_starts_the_grace_timer_and_its_end_goes_offline() {
        let defaults = HashMap::new();
        let mut gateway = GatewayRecord::default();
        gateway.connections.insert("c1".into(), 7);
        let mut online = OperatorRecord::new(ChosenStatus::Available, 0);
        online.online = true;
        online.connections = 1;
        online.accounted = true;
        let op = Op::Closed {
            gateway: "gw1".into(),
            connection_id: "c1".into(),
            order: None,
        };
        assert_eq!(op.operators(Some(&gateway)), BTreeSet::from([7]));
        let mut work = working(
            &defaults,
            Some(("gw1", Some(gateway))),
            &[(7, Some(online))],
            1_000,
        );
        assert!(
            work.apply(&op).changes.is_empty(),
            "online through the grace"
        );
        let commit = work.into_commit(None, Vec::new());
        assert_eq!(commit.gateways, vec![("gw1".to_owned(), None)]);
        assert_eq!(commit.timers, vec![(Timer::Grace(7), Some(31_000))]);
        let in_grace = commit.operators[0].1.clone();

        let expire = Op::Expire(Timer::Grace(7));
        let mut early = working(&defaults, None, &[(7, Some(in_grace.clone()))], 30_999);
        assert!(early.apply(&expire).changes.is_empty(), "not yet");
        let mut due = working(&defaults, None, &[(7, Some(in_grace.clone()))], 31_000);
        let changes = due.apply(&expire).changes;
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].status, Status::Offline);
        let commit = due.into_commit(Some(&Timer::Grace(7)), Vec::new());
        assert_eq!(commit.timers, vec![(Timer::Grace(7), None)]);

        let mut back = in_grace;
        back.grace_until = None;
        back.connections = 1;
        let mut stale = working(&defaults, None, &[(7, Some(back))], 40_000);
        assert!(stale.apply(&expire).changes.is_empty());
        let commit = stale.into_commit(Some(&Timer::Grace(7)), Vec::new());
        assert!(commit.operators.is_empty(), "nothing to write");
        assert!(commit.clock.is_none(), "no version handed out");
        assert_eq!(commit.timers, vec![(Timer::Grace(7), None)]);
    }

    /// A lease renewed before its timer is handled (by another replica, say)
    /// keeps the gateway's connections.
    #[test]
    fn a_renewed_lease_is_not_expired() {
        let defaults = HashMap::new();
        let mut gateway = GatewayRecord::default();
        gateway.connections.insert("c1".into(), 7);
        gateway.lease_until = Some(50_000);
        let mut online = OperatorRecord::new(ChosenStatus::Available, 0);
        online.online = true;
        online.connections = 1;
        let expire = Op::Expire(Timer::Lease("gw1".into()));
        assert_eq!(expire.operators(Some(&gateway)), BTreeSet::from([7]));
        let mut work = working(
            &defaults,
            Some(("gw1", Some(gateway.clone()))),
            &[(7, Some(online.clone()))],
            40_000,
        );
        assert!(work.apply(&expire).changes.is_empty());
        let commit = work.into_commit(Some(&Timer::Lease("gw1".into())), Vec::new());
        assert!(commit.gateways.is_empty());
        assert_eq!(
            commit.timers,
            vec![(Timer::Lease("gw1".into()), Some(50_000))],
            "the timer is put back at the record's deadline"
        );

        let mut work = working(
            &defaults,
            Some(("gw1", Some(gateway))),
            &[(7, Some(online))],
            50_000,
        );
        assert!(
            work.apply(&expire).changes.is_empty(),
            "online through the grace"
        );
        let commit = work.into_commit(Some(&Timer::Lease("gw1".into())), Vec::new());
        assert_eq!(commit.gateways, vec![("gw1".to_owned(), None)]);
        assert_eq!(commit.operators[0].1.connections, 0);
        assert_eq!(commit.operators[0].1.grace_until, Some(80_000));
    }

    #[test]
    fn timers_encode_and_decode() {
        for timer in [Timer::Grace(42), Timer::Lease("gw:1".into())] {
            assert_eq!(Timer::decode(&timer.encode()), Some(timer));
        }
        assert_eq!(Timer::decode("x:1"), None);
        assert_eq!(Timer::decode("g:x"), None);
    }
}
