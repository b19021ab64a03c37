//! The gateway's stream actor ([`Upstream`]) against a real service: events
//! reach the registry's connections, the actor reconnects by itself when the
//! service restarts and tells the connections to catch up, and the last
//! release unsubscribes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatai_gateway::registry::{Conn, Outbound, Registry};
use chatai_gateway::service_id::ServiceId;
use chatai_gateway::upstream::{ReplayFrom, Upstream};
use chatai_kit::config::{InternalAuth, ServiceCommon, ServiceTarget};
use chatai_kit::events::{Event, EventLog, Recipient};
use chatai_kit::grpc::ServeError;
use chatai_kit::host::ServiceHost;
use chatai_kit::identity::Role;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any single wait may take before the test fails (reconnecting
/// backs off from 50 ms up to 3 s).
const WAIT: Duration = Duration::from_secs(15);

/// A service serving only `EventStream`.
struct Service {
    log: Arc<dyn EventLog>,
    shutdown: CancellationToken,
    served: JoinHandle<Result<(), ServeError>>,
}

impl Service {
    /// Serves on `listener`, with a new (empty) event log.
    async fn serve(listener: TcpListener) -> Self {
        let host = ServiceHost::start(&ServiceCommon::default(), "chat", CancellationToken::new())
            .await
            .expect("a memory event log opens");
        let (log, shutdown) = (host.log.clone(), host.shutdown().clone());
        let served = tokio::spawn(host.serve(listener, None, &[]));
        Service {
            log,
            shutdown,
            served,
        }
    }

    /// Binds `addr` (the same port again after a restart) and serves.
    async fn start_at(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the address again");
        Service::serve(listener).await
    }

    async fn deliver(&self, recipient: &Recipient, n: usize) -> u64 {
        let event = Event::new("test_event", &serde_json::json!({ "n": n })).expect("event");
        self.log
            .deliver(recipient.clone(), Arc::new(event))
            .await
            .expect("deliver")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("the service stops in time")
            .expect("the service task")
            .expect("the service stops cleanly");
    }
}

/// The gateway side: a registry and the actor for the chat service.
struct Gateway {
    registry: Arc<Registry>,
    upstream: Upstream,
    shutdown: CancellationToken,
    actor: JoinHandle<()>,
}

impl Gateway {
    fn start(addr: SocketAddr) -> Self {
        let registry = Arc::new(Registry::new("gw".into()));
        let channel = chatai_kit::grpc::service_channel(
            &ServiceTarget::from(addr),
            &InternalAuth::default(),
            "gateway",
        )
        .expect("a channel");
        let shutdown = CancellationToken::new();
        let (upstream, actor) =
            Upstream::start(ServiceId::Chat, channel, registry.clone(), shutdown.clone());
        let actor = tokio::spawn(actor);
        Gateway {
            registry,
            upstream,
            shutdown,
            actor,
        }
    }

    /// Registers a connection of `principal`; its queue is the probe.
    fn connect(&self, principal: Recipient) -> Probe {
        let (tx, rx) = flume::bounded(1024);
        let role = match principal {
            Recipient::Operator(_) => Role::Operator,
            _ => Role::User,
        };
        let conn = Arc::new(Conn::new(
            self.registry.next_id(),
            role,
            principal,
            tx,
            CancellationToken::new(),
        ));
        self.registry.register(conn.clone(), 5);
        Probe { _conn: conn, rx }
    }

    async fn acquire(&self, recipient: &Recipient) -> bool {
        tokio::time::timeout(WAIT, self.upstream.acquire(recipient.clone()))
            .await
            .expect("acquire answers in time")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.actor)
            .await
            .expect("the actor stops in time")
            .expect("the actor task");
    }
}

/// A registered connection's queue.
struct Probe {
    _conn: Arc<Conn>,
    rx: flume::Receiver<Outbound>,
}

impl Probe {
    async fn next(&mut self) -> Outbound {
        tokio::time::timeout(WAIT, self.rx.recv_async())
            .await
            .expect("something for the connection in time")
            .expect("the queue is open")
    }

    /// The next durable event's position, failing on anything else.
    async fn next_event(&mut self) -> u64 {
        match self.next().await {
            Outbound::Event(event) => {
                assert_eq!(event.service, ServiceId::Chat);
                event.position
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Waits for `Resync(Chat)`, skipping nothing else.
    async fn resync(&mut self) {
        match self.next().await {
            Outbound::Resync(service) => assert_eq!(service, ServiceId::Chat),
            other => panic!("expected Resync(Chat), got {other:?}"),
        }
    }

    fn is_empty(&mut self) -> bool {
        matches!(self.rx.try_recv(), Err(flume::TryRecvError::Empty))
    }
}

async fn bind_any() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// Events reach the connection in order; when the service restarts on the
/// same address (a new log, other positions) the actor reconnects by itself,
/// re-subscribes, tells the connection to catch up, and events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_restart_and_resyncs() {
    let (listener, addr) = bind_any().await;
    let service = Service::serve(listener).await;
    let gateway = Gateway::start(addr);
    let alice = Recipient::User(1);
    let mut probe = gateway.connect(alice.clone());
    assert!(
        gateway.acquire(&alice).await,
        "subscribed while the service is up"
    );

    let mut before = Vec::new();
    for n in 0..3 {
        let position = service.deliver(&alice, n).await;
        assert_eq!(probe.next_event().await, position);
        before.push(position);
    }
    assert!(before.windows(2).all(|w| w[0] < w[1]));

    service.stop().await;
    let service = Service::start_at(addr).await;
    probe.resync().await;
    // Resync comes once the service confirmed the re-subscription: events
    // delivered from now on arrive.
    for n in 0..3 {
        let position = service.deliver(&alice, n).await;
        assert!(!before.contains(&position), "the new log has new positions");
        assert_eq!(probe.next_event().await, position);
    }
    assert!(gateway.upstream.is_attached());

    gateway.stop().await;
    service.stop().await;
}

/// While the service is down `acquire` answers false at once (no hang);
/// once the service is up the actor attaches, subscribes the recipient and
/// tells its connection to catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_while_down_is_false_then_resyncs() {
    // An address nothing listens on (yet).
    let (listener, addr) = bind_any().await;
    drop(listener);
    let gateway = Gateway::start(addr);
    let alice = Recipient::User(1);
    let mut probe = gateway.connect(alice.clone());
    assert!(!gateway.acquire(&alice).await, "the service is down");
    assert!(!gateway.upstream.is_attached());

    let service = Service::start_at(addr).await;
    probe.resync().await;
    let position = service.deliver(&alice, 0).await;
    assert_eq!(probe.next_event().await, position);

    gateway.stop().await;
    service.stop().await;
}

/// References are counted: releasing one of two keeps the events coming;
/// releasing the last unsubscribes (events stop) and records the delivered
/// position as the recipient's last-seen mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_the_last_reference_unsubscribes() {
    let (listener, addr) = bind_any().await;
    let service = Service::serve(listener).await;
    let gateway = Gateway::start(addr);
    let alice = Recipient::User(2);
    let bob = Recipient::User(3);
    let carol = Recipient::User(4);
    let mut alices = gateway.connect(alice.clone());
    let mut bobs = gateway.connect(bob.clone());
    assert!(gateway.acquire(&alice).await);
    assert!(
        gateway.acquire(&alice).await,
        "a second connection of alice"
    );
    assert!(gateway.acquire(&bob).await);

    let first = service.deliver(&alice, 0).await;
    assert_eq!(alices.next_event().await, first);

    // One of two references goes: still subscribed.
    gateway.upstream.release(alice.clone(), 0).await;
    // Commands are handled, and sent, in order: once carol is confirmed the
    // release is through.
    assert!(gateway.acquire(&carol).await);
    let second = service.deliver(&alice, 1).await;
    assert_eq!(alices.next_event().await, second);

    // The last one goes, having delivered up to `first`.
    gateway.upstream.release(alice.clone(), first).await;
    gateway.upstream.release(carol.clone(), 0).await;
    assert!(
        gateway.acquire(&carol).await,
        "a barrier behind the releases"
    );
    let third = service.deliver(&alice, 2).await;
    let bobs_event = service.deliver(&bob, 0).await;
    // Deliveries are dispatched in stream order: had alice's come through,
    // it would be queued before bob's.
    assert_eq!(bobs.next_event().await, bobs_event);
    assert!(
        alices.is_empty(),
        "alice's events stop after the last release"
    );

    let page = gateway
        .upstream
        .replay(&alice, ReplayFrom::LastSeen, WAIT)
        .await
        .expect("replay");
    assert!(page.complete);
    assert_eq!(
        page.start_after, first,
        "the mark is the delivered position"
    );
    let replayed: Vec<u64> = page.deliveries.iter().map(|d| d.position).collect();
    assert_eq!(replayed, vec![second, third]);

    gateway.stop().await;
    service.stop().await;
}
