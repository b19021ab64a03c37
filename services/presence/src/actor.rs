//! The one task that owns all presence state ([`PresenceState`]), and the
//! cloneable [`PresenceHandle`] through which everything else talks to it.
//!
//! Commands arrive on a bounded channel and are answered on a oneshot; the
//! actor also fires the grace-period and lease timers. After answering, it
//! sends one `operator_status_change` per changed operator, in the order the
//! changes happened, before it takes the next command — so events are never
//! reordered and a caller never waits for the event backend.

use std::sync::Arc;
use std::time::Duration;

use chatai_kit::events::{Event, EventLog, Recipient};
use chatai_kit::identity::Role;
use chatai_kit::supervisor::Supervisor;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::config::PresenceConfig;
use crate::error::PresenceError;
use crate::events::{OPERATOR_STATUS_CHANGE, OperatorStatusChange};
use crate::model::{ChosenStatus, Connection, OperatorView};
use crate::state::PresenceState;

/// Commands waiting for the actor. Each one is a few map updates
/// (microseconds), so the queue only fills in a burst — a restarting gateway
/// re-opening all its operator connections at once, say. 1 024 absorbs such
/// a burst; beyond it callers wait for room (backpressure) instead of the
/// queue growing without bound.
pub const COMMAND_CAPACITY: usize = 1024;

/// What the actor can be asked.
enum Command {
    Opened {
        gateway: String,
        connection: Connection,
        reply: oneshot::Sender<OperatorView>,
    },
    Closed {
        gateway: String,
        connection_id: String,
        reply: oneshot::Sender<()>,
    },
    Refresh {
        gateway: String,
        connections: Vec<Connection>,
        ttl: Duration,
        reply: oneshot::Sender<()>,
    },
    SetStatus {
        operator_id: i64,
        status: ChosenStatus,
        reply: oneshot::Sender<OperatorView>,
    },
    SetLoad {
        operator_id: i64,
        active_handoffs: u32,
        reply: oneshot::Sender<OperatorView>,
    },
    Get {
        operator_id: i64,
        reply: oneshot::Sender<Option<OperatorView>>,
    },
    List {
        reply: oneshot::Sender<Vec<OperatorView>>,
    },
}

/// A command with the context of the request that sent it.
struct Envelope {
    command: Command,
    /// The caller's span: the actor's logs and the events' trace context
    /// belong to the request.
    span: Span,
    /// The gateway connection the request came from, carried by its events.
    origin: Option<String>,
}

/// A handle to the presence actor. Cheap to clone. Its calls fail with
/// [`PresenceError::Unavailable`] once the actor has stopped (shutdown).
#[derive(Clone, Debug)]
pub struct PresenceHandle {
    commands: mpsc::Sender<Envelope>,
}

impl PresenceHandle {
    /// Starts the actor in `tasks`; it runs until `shutdown` (or until every
    /// handle is gone) and delivers its events through `log`.
    pub fn spawn(config: &PresenceConfig, log: Arc<dyn EventLog>, supervisor: &Supervisor) -> Self {
        let (commands, inbox) = mpsc::channel(COMMAND_CAPACITY);
        let actor = Actor {
            state: PresenceState::new(config.grace_period(), config.max_handoffs),
            inbox,
            log,
            shutdown: supervisor.shutdown().clone(),
        };
        supervisor.spawn(
            "presence actor",
            actor
                .run()
                .instrument(tracing::info_span!("presence_actor")),
        );
        PresenceHandle { commands }
    }

    /// Whether the actor is still taking commands (false after shutdown, or
    /// if it ever died), for the readiness check.
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// A gateway opened a connection for an operator.
    pub async fn connection_opened(
        &self,
        gateway: String,
        connection: Connection,
    ) -> Result<OperatorView, PresenceError> {
        self.call(None, |reply| Command::Opened {
            gateway,
            connection,
            reply,
        })
        .await
    }

    /// A gateway's connection closed.
    pub async fn connection_closed(
        &self,
        gateway: String,
        connection_id: String,
    ) -> Result<(), PresenceError> {
        self.call(None, |reply| Command::Closed {
            gateway,
            connection_id,
            reply,
        })
        .await
    }

    /// A gateway's full list of connections, and its lease.
    pub async fn refresh(
        &self,
        gateway: String,
        connections: Vec<Connection>,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        self.call(None, |reply| Command::Refresh {
            gateway,
            connections,
            ttl,
            reply,
        })
        .await
    }

    /// The status an operator chose.
    pub async fn set_status(
        &self,
        operator_id: i64,
        status: ChosenStatus,
        origin: Option<String>,
    ) -> Result<OperatorView, PresenceError> {
        self.call(origin, |reply| Command::SetStatus {
            operator_id,
            status,
            reply,
        })
        .await
    }

    /// How many handoffs an operator holds.
    pub async fn set_load(
        &self,
        operator_id: i64,
        active_handoffs: u32,
    ) -> Result<OperatorView, PresenceError> {
        self.call(None, |reply| Command::SetLoad {
            operator_id,
            active_handoffs,
            reply,
        })
        .await
    }

    /// One operator, if known.
    pub async fn get(&self, operator_id: i64) -> Result<Option<OperatorView>, PresenceError> {
        self.call(None, |reply| Command::Get { operator_id, reply })
            .await
    }

    /// Every known operator, by id.
    pub async fn list(&self) -> Result<Vec<OperatorView>, PresenceError> {
        self.call(None, |reply| Command::List { reply }).await
    }

    async fn call<T>(
        &self,
        origin: Option<String>,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, PresenceError> {
        let (reply, answer) = oneshot::channel();
        let envelope = Envelope {
            command: command(reply),
            span: Span::current(),
            origin,
        };
        self.commands
            .send(envelope)
            .await
            .map_err(|_| PresenceError::Unavailable)?;
        answer.await.map_err(|_| PresenceError::Unavailable)
    }
}

/// The task owning the state.
struct Actor {
    state: PresenceState,
    inbox: mpsc::Receiver<Envelope>,
    log: Arc<dyn EventLog>,
    shutdown: CancellationToken,
}

impl Actor {
    async fn run(mut self) {
        tracing::debug!("presence actor started");
        loop {
            tokio::select! {
                // Shutdown first, then due timers before new commands, so a
                // command never observes a deadline that has passed unheeded.
                biased;
                () = self.shutdown.cancelled() => break,
                Some(timer) = std::future::poll_fn(|cx| self.state.poll_timers(cx)) => {
                    let span = tracing::info_span!("presence_timer", timer = ?timer);
                    let changes = span.in_scope(|| self.state.expire(timer));
                    self.publish(changes, None, &span).await;
                }
                envelope = self.inbox.recv() => match envelope {
                    Some(envelope) => self.handle(envelope).await,
                    None => break,
                },
            }
        }
        tracing::debug!("presence actor stopped");
    }

    /// Applies one command, answers it, then announces what it changed.
    async fn handle(&mut self, envelope: Envelope) {
        let Envelope {
            command,
            span,
            origin,
        } = envelope;
        // A caller that went away (a cancelled call) does not undo the
        // change, so failed replies are ignored.
        let changes = span.in_scope(|| match command {
            Command::Opened {
                gateway,
                connection,
                reply,
            } => {
                let (view, changes) = self.state.connection_opened(&gateway, connection);
                let _ = reply.send(view);
                changes
            }
            Command::Closed {
                gateway,
                connection_id,
                reply,
            } => {
                let changes = self.state.connection_closed(&gateway, &connection_id);
                let _ = reply.send(());
                changes
            }
            Command::Refresh {
                gateway,
                connections,
                ttl,
                reply,
            } => {
                let changes = self.state.refresh(&gateway, connections, ttl);
                let _ = reply.send(());
                changes
            }
            Command::SetStatus {
                operator_id,
                status,
                reply,
            } => {
                let (view, changes) = self.state.set_status(operator_id, status);
                let _ = reply.send(view);
                changes
            }
            Command::SetLoad {
                operator_id,
                active_handoffs,
                reply,
            } => {
                let (view, changes) = self.state.set_load(operator_id, active_handoffs);
                let _ = reply.send(view);
                changes
            }
            Command::Get { operator_id, reply } => {
                let _ = reply.send(self.state.get(operator_id));
                Vec::new()
            }
            Command::List { reply } => {
                let _ = reply.send(self.state.list());
                Vec::new()
            }
        });
        self.publish(changes, origin, &span).await;
    }

    /// Sends one `operator_status_change` per changed operator to every
    /// operator connection. A failure is logged: the state has changed
    /// either way, and the next change carries the whole picture again.
    async fn publish(&self, changes: Vec<OperatorView>, origin: Option<String>, span: &Span) {
        for view in changes {
            let event = span.in_scope(|| {
                tracing::info!(
                    operator_id = view.operator_id,
                    status = view.status.as_str(),
                    chosen_status = ?view.chosen_status,
                    online = view.online,
                    active_handoffs = view.active_handoffs,
                    connections = view.connections,
                    "operator status changed"
                );
                Event::new(OPERATOR_STATUS_CHANGE, &OperatorStatusChange::from(&view))
            });
            let event = match event {
                Ok(event) => Arc::new(event.with_origin(origin.clone())),
                Err(cause) => {
                    tracing::error!(parent: span, %cause, "operator_status_change could not be built");
                    continue;
                }
            };
            if let Err(cause) = self
                .log
                .deliver(Recipient::Role(Role::Operator), event)
                .instrument(span.clone())
                .await
            {
                tracing::warn!(
                    parent: span,
                    %cause,
                    operator_id = view.operator_id,
                    "operator_status_change was not delivered"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The state machine through the actor, on tokio's paused clock: time
    //! only moves when a test advances it, so grace periods and leases are
    //! exercised without waiting.

    use super::*;
    use chatai_kit::config::EventLogConfig;
    use chatai_kit::events::Delivery;
    use chatai_kit::events::memory::MemoryLog;
    use tokio::sync::broadcast;
    use tokio::sync::broadcast::error::TryRecvError;

    use crate::model::Status;

    const GRACE: Duration = Duration::from_secs(30);
    const MAX: u32 = 3;

    struct Fixture {
        handle: PresenceHandle,
        live: broadcast::Receiver<Delivery>,
        supervisor: Supervisor,
    }

    fn start(grace: Duration) -> Fixture {
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(&EventLogConfig::default()));
        let live = log.live();
        let supervisor = Supervisor::new(CancellationToken::new());
        let config = PresenceConfig {
            grace_period_secs: grace.as_secs(),
            max_handoffs: MAX,
        };
        let handle = PresenceHandle::spawn(&config, log, &supervisor);
        Fixture {
            handle,
            live,
            supervisor,
        }
    }

    fn conn(operator_id: i64, connection_id: &str) -> Connection {
        Connection {
            operator_id,
            connection_id: connection_id.to_owned(),
            name: format!("Op {operator_id}"),
        }
    }

    impl Fixture {
        async fn open(&self, gateway: &str, operator_id: i64, connection_id: &str) -> OperatorView {
            self.handle
                .connection_opened(gateway.into(), conn(operator_id, connection_id))
                .await
                .expect("the actor answers")
        }

        async fn close(&self, gateway: &str, connection_id: &str) {
            self.handle
                .connection_closed(gateway.into(), connection_id.into())
                .await
                .expect("the actor answers");
        }

        async fn get(&self, operator_id: i64) -> OperatorView {
            self.handle
                .get(operator_id)
                .await
                .expect("the actor answers")
                .expect("the operator is known")
        }

        /// The next `operator_status_change` body.
        async fn next_change(&mut self) -> serde_json::Value {
            let delivery = self.live.recv().await.expect("the live fan-out is open");
            assert_eq!(delivery.recipient, Recipient::Role(Role::Operator));
            assert_eq!(delivery.event.kind, OPERATOR_STATUS_CHANGE);
            serde_json::from_slice(&delivery.event.body).expect("the body is JSON")
        }

        /// Asserts no event is pending once the actor has handled everything
        /// sent so far (a round trip: it publishes before taking the next
        /// command).
        async fn assert_quiet(&mut self) {
            self.handle.list().await.expect("the actor answers");
            match self.live.try_recv() {
                Err(TryRecvError::Empty) => {}
                other => panic!("expected no event, got {other:?}"),
            }
        }

        async fn stop(self) {
            self.supervisor.shutdown().cancel();
            self.supervisor
                .wait()
                .await
                .expect("the actor ran until shutdown");
        }
    }

    /// The first connection brings an operator online as available, with the
    /// full event body; a second connection changes nothing and says nothing.
    #[tokio::test(start_paused = true)]
    async fn first_connection_brings_operator_online() {
        let mut f = start(GRACE);
        let view = f.open("gw1", 7, "c1").await;
        assert_eq!(view.status, Status::Available);
        assert!(view.online);
        assert_eq!(view.connections, 1);
        assert_eq!(
            f.next_change().await,
            serde_json::json!({
                "operator_id": 7,
                "status": "available",
                "chosen_status": "available",
                "online": true,
                "active_handoffs": 0,
                "max_handoffs": MAX,
                "name": "Op 7",
            })
        );
        assert_eq!(f.open("gw2", 7, "c2").await.connections, 2);
        // Opening the same connection again is idempotent.
        assert_eq!(f.open("gw2", 7, "c2").await.connections, 2);
        f.assert_quiet().await;
        f.stop().await;
    }

    /// After the last connection closes the operator stays online through the
    /// grace period, then goes offline with one event; closing one of two
    /// connections says nothing.
    #[tokio::test(start_paused = true)]
    async fn offline_only_after_the_grace_period() {
        let mut f = start(GRACE);
        f.open("gw1", 7, "c1").await;
        f.open("gw1", 7, "c2").await;
        f.next_change().await;
        f.close("gw1", "c1").await;
        f.assert_quiet().await;
        f.close("gw1", "c2").await;
        let view = f.get(7).await;
        assert!(view.online, "online during the grace period");
        assert_eq!(view.connections, 0);

        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        f.assert_quiet().await;
        assert!(f.get(7).await.online);

        tokio::time::advance(Duration::from_secs(2)).await;
        let change = f.next_change().await;
        assert_eq!(change["status"], "offline");
        assert_eq!(change["online"], false);
        assert_eq!(change["chosen_status"], "available");
        assert_eq!(f.get(7).await.status, Status::Offline);
        f.assert_quiet().await;
        f.stop().await;
    }

    /// A reconnect within the grace period cancels it: no event then, and
    /// none when the original deadline passes.
    #[tokio::test(start_paused = true)]
    async fn reconnect_within_grace_is_invisible() {
        let mut f = start(GRACE);
        f.open("gw1", 7, "c1").await;
        f.next_change().await;
        f.close("gw1", "c1").await;
        tokio::time::advance(GRACE / 2).await;
        f.open("gw2", 7, "c9").await;
        tokio::time::advance(GRACE * 2).await;
        f.assert_quiet().await;
        let view = f.get(7).await;
        assert!(view.online);
        assert_eq!(view.connections, 1);
        f.stop().await;
    }

    /// With a zero grace period the operator is offline as soon as the last
    /// connection closes.
    #[tokio::test(start_paused = true)]
    async fn zero_grace_is_immediate() {
        let mut f = start(Duration::ZERO);
        f.open("gw1", 7, "c1").await;
        f.next_change().await;
        f.close("gw1", "c1").await;
        assert_eq!(f.next_change().await["status"], "offline");
        f.stop().await;
    }

    /// A gateway that stops refreshing loses its connections when the lease
    /// expires; the operator then goes offline after the grace period.
    #[tokio::test(start_paused = true)]
    async fn expired_lease_drops_connections_then_grace_applies() {
        let mut f = start(GRACE);
        let ttl = Duration::from_secs(10);
        f.handle
            .refresh("gw1".into(), vec![conn(7, "c1"), conn(8, "c2")], ttl)
            .await
            .expect("the actor answers");
        assert_eq!(f.next_change().await["operator_id"], 7);
        assert_eq!(f.next_change().await["operator_id"], 8);

        // A refresh before expiry renews the lease.
        tokio::time::advance(ttl - Duration::from_secs(1)).await;
        f.handle
            .refresh("gw1".into(), vec![conn(7, "c1"), conn(8, "c2")], ttl)
            .await
            .expect("the actor answers");
        tokio::time::advance(Duration::from_secs(5)).await;
        f.assert_quiet().await;
        assert_eq!(f.get(7).await.connections, 1);

        // No more refreshes: the lease expires, the connections go, and the
        // operators are still online (grace) with no event.
        tokio::time::advance(ttl).await;
        f.assert_quiet().await;
        let view = f.get(7).await;
        assert_eq!(view.connections, 0);
        assert!(view.online);

        // Both grace periods end at the same instant, in either order.
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        let mut offline = [f.next_change().await, f.next_change().await];
        offline.sort_by_key(|change| change["operator_id"].as_i64());
        for (change, id) in offline.iter().zip([7, 8]) {
            assert_eq!(change["operator_id"], id);
            assert_eq!(change["status"], "offline");
        }
        f.assert_quiet().await;
        f.stop().await;
    }

    /// A refresh replaces the gateway's set: connections it no longer lists
    /// are dropped, other gateways' connections are untouched.
    #[tokio::test(start_paused = true)]
    async fn refresh_replaces_the_gateways_set() {
        let mut f = start(GRACE);
        f.open("gw1", 7, "a").await;
        f.open("gw1", 8, "b").await;
        f.open("gw2", 8, "c").await;
        f.next_change().await;
        f.next_change().await;
        f.handle
            .refresh("gw1".into(), vec![conn(7, "a")], Duration::from_secs(60))
            .await
            .expect("the actor answers");
        assert_eq!(f.get(7).await.connections, 1);
        assert_eq!(f.get(8).await.connections, 1, "gw2's connection stays");
        f.handle
            .refresh("gw1".into(), vec![], Duration::from_secs(60))
            .await
            .expect("the actor answers");
        let seven = f.get(7).await;
        assert_eq!(seven.connections, 0);
        assert!(seven.online, "the grace period applies");
        f.assert_quiet().await;
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        let change = f.next_change().await;
        assert_eq!(change["operator_id"], 7);
        assert_eq!(change["status"], "offline");
        f.assert_quiet().await;
        f.stop().await;
    }

    /// Load at the cap makes an available operator busy and below it
    /// available again; a chosen away is never overridden, and choosing
    /// available while at the cap shows busy. Unchanged values say nothing.
    #[tokio::test(start_paused = true)]
    async fn load_and_chosen_status_derive_the_effective_status() {
        let mut f = start(GRACE);
        f.open("gw1", 7, "c1").await;
        f.next_change().await;

        let at_cap = f.handle.set_load(7, MAX).await.expect("answers");
        assert_eq!(at_cap.status, Status::Busy);
        let change = f.next_change().await;
        assert_eq!(change["status"], "busy");
        assert_eq!(change["chosen_status"], "available");
        assert_eq!(change["active_handoffs"], MAX);

        f.handle.set_load(7, MAX).await.expect("answers");
        f.assert_quiet().await;

        f.handle.set_load(7, MAX - 1).await.expect("answers");
        assert_eq!(f.next_change().await["status"], "available");

        f.handle
            .set_status(7, ChosenStatus::Away, None)
            .await
            .expect("answers");
        assert_eq!(f.next_change().await["status"], "away");
        f.handle.set_load(7, MAX).await.expect("answers");
        let change = f.next_change().await;
        assert_eq!(change["status"], "away", "auto-busy never overrides away");
        assert_eq!(change["active_handoffs"], MAX);

        f.handle
            .set_status(7, ChosenStatus::Available, None)
            .await
            .expect("answers");
        let change = f.next_change().await;
        assert_eq!(change["status"], "busy");
        assert_eq!(change["chosen_status"], "available");

        f.handle
            .set_status(7, ChosenStatus::Available, None)
            .await
            .expect("answers");
        f.assert_quiet().await;
        f.stop().await;
    }

    /// A status chosen before any connection is recorded, and the chosen
    /// status survives going offline and coming back.
    #[tokio::test(start_paused = true)]
    async fn chosen_status_is_kept_across_reconnects() {
        let mut f = start(GRACE);
        assert!(f.handle.get(7).await.expect("answers").is_none());
        let view = f
            .handle
            .set_status(7, ChosenStatus::Away, None)
            .await
            .expect("answers");
        assert_eq!(view.status, Status::Offline);
        assert_eq!(view.chosen_status, ChosenStatus::Away);
        let change = f.next_change().await;
        assert_eq!(change["status"], "offline");
        assert_eq!(change["chosen_status"], "away");

        assert_eq!(f.open("gw1", 7, "c1").await.status, Status::Away);
        assert_eq!(f.next_change().await["status"], "away");
        f.close("gw1", "c1").await;
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        assert_eq!(f.next_change().await["status"], "offline");
        assert_eq!(f.open("gw1", 7, "c2").await.status, Status::Away);
        f.stop().await;
    }

    /// After shutdown the handle reports the service unavailable.
    #[tokio::test(start_paused = true)]
    async fn calls_after_shutdown_are_unavailable() {
        let f = start(GRACE);
        let handle = f.handle.clone();
        assert!(handle.is_running());
        f.stop().await;
        assert!(!handle.is_running());
        assert!(matches!(
            handle.list().await,
            Err(PresenceError::Unavailable)
        ));
    }
}
