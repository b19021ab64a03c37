//! What the handoff service's integration tests share: a fake presence
//! service, the real handoff service on port 0 (SQLite in a temporary file),
//! an observer of its events, and gRPC helpers.
//!
//! - [`FakePresence`] implements `chatai.v1.Presence` over a map the test
//!   controls and serves the kit's `EventStream` over a [`MemoryLog`]; the
//!   test changes an operator with [`FakePresence::set`], which delivers an
//!   `operator_status_change` to `Role(Operator)` as presence does.
//! - Synchronising with the service's view of operators: the fake lists a
//!   probe operator (offline, never eligible) whose load it claims is 1.
//!   The handoff service corrects any load presence has wrong with
//!   `SetLoad`, in order with the updates it handles, so
//!   [`FakePresence::sync`] (re-claim 1, wait for the `SetLoad(probe, 0)`)
//!   returns once every change sent before it has been applied.
//! - [`Observer`] attaches to the handoff service's `EventStream` as a
//!   gateway would (`chatai_testkit::TestGateway`) and keeps each
//!   recipient's events in order.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatai_handoff::HandoffConfig;
use chatai_kit::config::{EventLogConfig, ServiceCommon};
use chatai_kit::events::memory::MemoryLog;
use chatai_kit::events::stream::EventStreamService;
use chatai_kit::events::{Event, EventLog, Recipient};
use chatai_kit::identity::{Caller, Role};
use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use chatai_proto::v1::handoff_client::HandoffClient;
use chatai_proto::v1::presence_server::{Presence, PresenceServer};
use chatai_testkit::TestGateway;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// The probe operator of [`FakePresence::sync`].
pub const PROBE: i64 = 900;

// ---------------------------------------------------------------------------
// Fake presence
// ---------------------------------------------------------------------------

#[derive(Clone)]
pub struct FakePresence {
    pub addr: SocketAddr,
    inner: Arc<PresenceState>,
    shutdown: CancellationToken,
}

struct PresenceState {
    operators: Mutex<HashMap<i64, pb::OperatorInfo>>,
    log: Arc<dyn EventLog>,
    /// Every `SetLoad` received, in order.
    loads: watch::Sender<Vec<(i64, u32)>>,
    /// The version of the last change announced.
    version: AtomicU64,
    /// A change to announce, as already seen by the listing, just before the
    /// next `ListOperators` answers (see [`FakePresence::stale_before_listing`]).
    stale: Mutex<Option<pb::OperatorInfo>>,
}

#[derive(Clone)]
struct PresenceApi(Arc<PresenceState>);

impl FakePresence {
    /// Serves a fake presence on 127.0.0.1:0 until the test ends.
    pub async fn start() -> Self {
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(&EventLogConfig::default()));
        let inner = Arc::new(PresenceState {
            operators: Mutex::new(HashMap::new()),
            log: log.clone(),
            loads: watch::channel(Vec::new()).0,
            version: AtomicU64::new(0),
            stale: Mutex::new(None),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let shutdown = CancellationToken::new();
        let events = EventStreamService::new(log, shutdown.clone(), TaskTracker::new());
        let server = tonic::transport::Server::builder()
            .add_service(PresenceServer::new(PresenceApi(inner.clone())))
            .add_service(events.into_server())
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        let presence = FakePresence {
            addr,
            inner,
            shutdown,
        };
        presence.put(info(PROBE, "probe", false, "available", 1));
        presence
    }

    fn put(&self, info: pb::OperatorInfo) {
        self.inner
            .operators
            .lock()
            .expect("operators lock")
            .insert(info.operator_id, info);
    }

    /// Sets an operator (keeping the load presence holds for them) and sends
    /// everyone the `operator_status_change`, as presence does.
    pub async fn set(&self, operator_id: i64, name: &str, online: bool, chosen: &str) {
        let load = self
            .inner
            .operators
            .lock()
            .expect("operators lock")
            .get(&operator_id)
            .map_or(0, |op| op.active_handoffs);
        let info = info(operator_id, name, online, chosen, load);
        self.put(info.clone());
        self.inner.announce(&info).await;
    }

    /// Makes the next `ListOperators` race its own events the way a real
    /// stream can: just before it answers, `info` is announced with a
    /// version the listing already holds — so it reaches the follower after
    /// the snapshot, though it is older than it.
    pub fn stale_before_listing(&self, info: pb::OperatorInfo) {
        *self.inner.stale.lock().expect("stale lock") = Some(info);
    }

    /// Returns once the handoff service has applied every change sent before.
    pub async fn sync(&self) {
        let before = self.probe_corrections();
        let probe = info(PROBE, "probe", false, "available", 1);
        self.put(probe.clone());
        self.inner.announce(&probe).await;
        self.wait_probe_corrections(before + 1).await;
    }

    /// Waits until a (re)started handoff service has attached and applied
    /// its first snapshot. Call [`expect_attach`](Self::expect_attach)
    /// before starting it.
    pub async fn attached(&self, expected: usize) {
        self.wait_probe_corrections(expected).await;
    }

    /// Prepares for a handoff service (re)attaching: the probe's load is
    /// claimed wrong again, so the snapshot is corrected. Returns the count
    /// to pass to [`attached`](Self::attached).
    pub fn expect_attach(&self) -> usize {
        self.put(info(PROBE, "probe", false, "available", 1));
        self.probe_corrections() + 1
    }

    fn probe_corrections(&self) -> usize {
        self.inner
            .loads
            .borrow()
            .iter()
            .filter(|(id, load)| *id == PROBE && *load == 0)
            .count()
    }

    async fn wait_probe_corrections(&self, at_least: usize) {
        let mut loads = self.inner.loads.subscribe();
        tokio::time::timeout(
            WAIT,
            loads.wait_for(|loads| {
                loads
                    .iter()
                    .filter(|(id, load)| *id == PROBE && *load == 0)
                    .count()
                    >= at_least
            }),
        )
        .await
        .expect("the handoff service applies presence's changes")
        .expect("the fake presence runs");
    }

    /// Waits until the handoff service has said `operator_id` holds `load`.
    pub async fn wait_load(&self, operator_id: i64, load: u32) {
        let mut loads = self.inner.loads.subscribe();
        tokio::time::timeout(
            WAIT,
            loads.wait_for(|loads| {
                loads
                    .iter()
                    .rev()
                    .find(|(id, _)| *id == operator_id)
                    .is_some_and(|(_, last)| *last == load)
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("operator {operator_id}'s load becomes {load}"))
        .expect("the fake presence runs");
    }
}

impl PresenceState {
    /// Announces a change with the next version.
    async fn announce(&self, info: &pb::OperatorInfo) {
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        self.announce_as_of(info, version).await;
    }

    async fn announce_as_of(&self, info: &pb::OperatorInfo, version: u64) {
        let body = serde_json::json!({
            "operator_id": info.operator_id,
            "status": status_name(info.status),
            "chosen_status": status_name(info.chosen_status),
            "online": info.online,
            "active_handoffs": info.active_handoffs,
            "max_handoffs": info.max_handoffs,
            "name": info.name,
            "version": version,
        });
        let event = Event::new("operator_status_change", &body).expect("event");
        self.log
            .deliver(Recipient::Role(Role::Operator), Arc::new(event))
            .await
            .expect("deliver");
    }
}

impl FakePresence {
    /// Stops serving (the stream to the handoff service drops).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

fn status_name(status: i32) -> &'static str {
    match pb::OperatorStatus::try_from(status) {
        Ok(pb::OperatorStatus::Available) => "available",
        Ok(pb::OperatorStatus::Busy) => "busy",
        Ok(pb::OperatorStatus::Away) => "away",
        _ => "offline",
    }
}

fn status_of(name: &str) -> pb::OperatorStatus {
    match name {
        "available" => pb::OperatorStatus::Available,
        "busy" => pb::OperatorStatus::Busy,
        "away" => pb::OperatorStatus::Away,
        _ => pb::OperatorStatus::Offline,
    }
}

/// An operator as presence lists them: the effective status follows the
/// rules of `presence.proto` (offline, else away, else busy at the cap).
pub fn info(
    operator_id: i64,
    name: &str,
    online: bool,
    chosen: &str,
    load: u32,
) -> pb::OperatorInfo {
    let chosen = status_of(chosen);
    let status = if !online {
        pb::OperatorStatus::Offline
    } else if chosen == pb::OperatorStatus::Available && load >= MAX_HANDOFFS_SHOWN {
        pb::OperatorStatus::Busy
    } else {
        chosen
    };
    pb::OperatorInfo {
        operator_id,
        status: status as i32,
        chosen_status: chosen as i32,
        online,
        active_handoffs: load,
        max_handoffs: MAX_HANDOFFS_SHOWN,
        connections: u32::from(online),
        name: name.to_owned(),
        since_ms: 1,
        version: 0,
    }
}

/// The cap the fake shows (the handoff service applies its own).
const MAX_HANDOFFS_SHOWN: u32 = 5;

#[tonic::async_trait]
impl Presence for PresenceApi {
    async fn connection_opened(
        &self,
        _: Request<pb::ConnectionOpenedRequest>,
    ) -> Result<Response<pb::OperatorInfo>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn connection_closed(
        &self,
        _: Request<pb::ConnectionClosedRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn refresh_connections(
        &self,
        _: Request<pb::RefreshConnectionsRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn set_status(
        &self,
        _: Request<pb::SetStatusRequest>,
    ) -> Result<Response<pb::OperatorInfo>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    /// Records the load and, like presence, tells everyone the new state.
    async fn set_load(
        &self,
        request: Request<pb::SetLoadRequest>,
    ) -> Result<Response<pb::OperatorInfo>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        assert_eq!(caller.role, Role::Service, "SetLoad comes from a service");
        let request = request.into_inner();
        let updated = {
            let mut operators = self.0.operators.lock().expect("operators lock");
            let operator = operators
                .entry(request.operator_id)
                .or_insert_with(|| info(request.operator_id, "", false, "available", 0));
            let chosen = status_name(operator.chosen_status).to_owned();
            *operator = info(
                operator.operator_id,
                &operator.name,
                operator.online,
                &chosen,
                request.active_handoffs,
            );
            operator.clone()
        };
        self.0
            .loads
            .send_modify(|loads| loads.push((request.operator_id, request.active_handoffs)));
        self.0.announce(&updated).await;
        Ok(Response::new(updated))
    }

    async fn get_operator(
        &self,
        request: Request<pb::GetOperatorRequest>,
    ) -> Result<Response<pb::OperatorInfo>, Status> {
        let id = request.into_inner().operator_id;
        self.0
            .operators
            .lock()
            .expect("operators lock")
            .get(&id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found("no such operator"))
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        assert_eq!(
            caller.role,
            Role::Service,
            "ListOperators comes from a service"
        );
        let mut operators: Vec<pb::OperatorInfo> = self
            .0
            .operators
            .lock()
            .expect("operators lock")
            .values()
            .cloned()
            .collect();
        operators.sort_by_key(|op| op.operator_id);
        let version = self.0.version.load(Ordering::SeqCst);
        let stale = self.0.stale.lock().expect("stale lock").take();
        if let Some(stale) = stale {
            self.0.announce_as_of(&stale, version).await;
        }
        Ok(Response::new(pb::ListOperatorsResponse {
            operators,
            version,
        }))
    }
}

// ---------------------------------------------------------------------------
// The handoff service
// ---------------------------------------------------------------------------

/// A test configuration: one handoff per operator, long timeouts.
pub fn config() -> HandoffConfig {
    HandoffConfig {
        max_handoffs: 1,
        reply_timeout_secs: 600,
        max_queue_secs: 600,
        max_queue_len: 100,
        max_queued_per_user: 3,
        default_handling_secs: 300,
        lease_poll_ms: 1000,
    }
}

/// A SQLite file in a temporary folder, kept across restarts of the service.
pub struct Database {
    _folder: tempfile::TempDir,
    path: PathBuf,
}

impl Database {
    pub fn new() -> Self {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("chatai.db");
        Database {
            _folder: folder,
            path,
        }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

/// The real handoff service on 127.0.0.1:0.
pub struct App {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    served: JoinHandle<Result<(), chatai_handoff::RunError>>,
}

impl App {
    /// Starts the service on `database` and waits until it has attached to
    /// `presence` and applied its first snapshot.
    pub async fn start(
        database: &Database,
        config: HandoffConfig,
        presence: &FakePresence,
    ) -> Self {
        let expected = presence.expect_attach();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(chatai_handoff::run(
            listener,
            config,
            presence.addr.into(),
            None,
            ServiceCommon {
                database_url: database.url(),
                ..ServiceCommon::default()
            },
            shutdown.clone(),
        ));
        presence.attached(expected).await;
        App {
            addr,
            shutdown,
            served,
        }
    }

    /// Stops the service and waits until it has.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("the service stops")
            .expect("the service task")
            .expect("the service stops cleanly");
    }

    pub async fn client(&self) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("address")
            .connect()
            .await
            .expect("connect");
        Client {
            handoff: HandoffClient::new(channel.clone()),
            events: EventStreamClient::new(channel),
        }
    }
}

/// The user owning dialog `d` in these tests.
pub fn user_of(dialog_id: i64) -> i64 {
    100 + dialog_id
}

pub fn operator(id: i64) -> Caller {
    Caller {
        id,
        role: Role::Operator,
        name: None,
        connection_id: None,
    }
}

pub fn service() -> Caller {
    Caller::service()
}

pub fn user(id: i64) -> Caller {
    Caller {
        id,
        role: Role::User,
        name: None,
        connection_id: None,
    }
}

/// gRPC clients of one handoff service.
#[derive(Clone)]
pub struct Client {
    pub handoff: HandoffClient<Channel>,
    pub events: EventStreamClient<Channel>,
}

fn request<T>(caller: &Caller, message: T) -> Request<T> {
    let mut request = Request::new(message);
    caller.write_metadata(request.metadata_mut());
    request
}

impl Client {
    /// `RequestHandoff` from the chat service for dialog `d` of `user_of(d)`.
    pub async fn request(
        &self,
        dialog_id: i64,
        priority: pb::Priority,
    ) -> Result<pb::HandoffRecord, Status> {
        self.request_as(&service(), dialog_id, priority).await
    }

    pub async fn request_as(
        &self,
        caller: &Caller,
        dialog_id: i64,
        priority: pb::Priority,
    ) -> Result<pb::HandoffRecord, Status> {
        let message = pb::RequestHandoffRequest {
            dialog_id,
            user_id: user_of(dialog_id),
            reason: format!("dialog {dialog_id} needs a human"),
            priority: priority as i32,
        };
        Ok(self
            .handoff
            .clone()
            .request_handoff(request(caller, message))
            .await?
            .into_inner())
    }

    pub async fn complete(
        &self,
        caller: &Caller,
        dialog_id: i64,
        resolution: &str,
    ) -> Result<pb::CompleteHandoffResponse, Status> {
        let message = pb::CompleteHandoffRequest {
            dialog_id,
            resolution: resolution.to_owned(),
        };
        Ok(self
            .handoff
            .clone()
            .complete_handoff(request(caller, message))
            .await?
            .into_inner())
    }

    pub async fn active(&self, dialog_id: i64) -> Option<pb::HandoffRecord> {
        self.handoff
            .clone()
            .get_active_handoff(request(
                &service(),
                pb::GetActiveHandoffRequest { dialog_id },
            ))
            .await
            .expect("services read handoffs")
            .into_inner()
            .handoff
    }

    pub async fn replied(&self, dialog_id: i64, operator_id: i64) -> Result<(), Status> {
        self.handoff
            .clone()
            .operator_replied(request(
                &service(),
                pb::OperatorRepliedRequest {
                    dialog_id,
                    operator_id,
                },
            ))
            .await
            .map(|_| ())
    }

    pub async fn list_as(&self, caller: &Caller) -> Result<pb::ListQueueResponse, Status> {
        Ok(self
            .handoff
            .clone()
            .list_queue(request(caller, pb::ListQueueRequest {}))
            .await?
            .into_inner())
    }

    /// The dialogs waiting, in queue order.
    pub async fn waiting(&self) -> Vec<i64> {
        self.list_as(&service())
            .await
            .expect("services list the queue")
            .queued
            .iter()
            .map(|record| record.dialog_id)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Observing events
// ---------------------------------------------------------------------------

/// One event: its type and body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub kind: String,
    pub body: serde_json::Value,
}

/// Attached to the handoff service's `EventStream` like a gateway (the
/// testkit's [`TestGateway`]), with each recipient's events kept in order.
pub struct Observer {
    gateway: TestGateway,
    pending: HashMap<Recipient, VecDeque<Seen>>,
}

impl Observer {
    /// Attaches and subscribes `recipients`; returns once every subscription
    /// is confirmed (every event from then on reaches the observer).
    pub async fn attach(client: &Client, recipients: &[Recipient]) -> Self {
        // Asks for single deliveries, as this observer always did (the
        // testkit's gateway would take batches apart all the same).
        let mut gateway = TestGateway::attach_with(&mut client.events.clone(), false).await;
        for (i, recipient) in recipients.iter().enumerate() {
            gateway.subscribe(i as u64 + 1, recipient).await;
        }
        Observer {
            gateway,
            pending: HashMap::new(),
        }
    }

    /// The next event for `recipient`, in order; events for the others are
    /// kept for later.
    pub async fn next(&mut self, recipient: &Recipient) -> Seen {
        loop {
            if let Some(seen) = self
                .pending
                .get_mut(recipient)
                .and_then(VecDeque::pop_front)
            {
                return seen;
            }
            let delivery = self.gateway.next_delivery().await;
            let to = Recipient::try_from(delivery.recipient.as_ref().expect("delivery recipient"))
                .expect("valid recipient");
            let event = delivery.event.expect("delivery event");
            let seen = Seen {
                kind: event.r#type,
                body: serde_json::from_slice(&event.body).expect("JSON body"),
            };
            self.pending.entry(to).or_default().push_back(seen);
        }
    }

    /// The next event for `recipient`, which must be of `kind`; its body.
    pub async fn expect(&mut self, recipient: &Recipient, kind: &str) -> serde_json::Value {
        let seen = self.next(recipient).await;
        assert_eq!(seen.kind, kind, "next event for {recipient}: {seen:?}");
        seen.body
    }

    /// The next `handoff_queued` for the user of dialog `d`: its position.
    pub async fn position(&mut self, dialog_id: i64) -> u64 {
        let body = self
            .expect(&Recipient::User(user_of(dialog_id)), "handoff_queued")
            .await;
        assert_eq!(body["dialog_id"], dialog_id);
        body["position"].as_u64().expect("a position")
    }

    /// The next `operator_assigned` for the user of dialog `d`: the operator.
    pub async fn assigned(&mut self, dialog_id: i64) -> i64 {
        let body = self
            .expect(&Recipient::User(user_of(dialog_id)), "operator_assigned")
            .await;
        assert_eq!(body["dialog_id"], dialog_id);
        body["operator_id"].as_i64().expect("an operator id")
    }
}

/// The recipients a test watches: every operator, the operators in
/// `operators`, and the users of `dialogs`.
pub fn recipients(operators: &[i64], dialogs: impl IntoIterator<Item = i64>) -> Vec<Recipient> {
    let mut all = vec![Recipient::Role(Role::Operator)];
    all.extend(operators.iter().map(|id| Recipient::Operator(*id)));
    all.extend(dialogs.into_iter().map(|d| Recipient::User(user_of(d))));
    all
}
