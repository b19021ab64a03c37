//! [`Replicas`]: one gRPC channel over every replica of a service — what
//! gateways and services that call services connect through.
//!
//! A small picker over one lazily connecting tonic `Channel` per replica
//! rather than tonic's `Channel::balance_channel`: the balancer there keeps
//! handing calls to a replica that refuses connections (its lazy
//! reconnecting channel says "ready" anyway: grpc/grpc-rust#643, #1147,
//! #2839) and only takes discovery updates while calls flow (#1581). Here:
//! - **who**: a task resolves the service's entries (`CHATAI_<PART>_ADDRS`)
//!   through a [`Resolver`] at start and every `resolve_every` (sooner,
//!   at most once a second, after a call could not connect), adding and
//!   dropping replicas; a failed resolution keeps what was known.
//! - **healthy**: each replica has a task watching its gRPC health
//!   (`grpc.health.v1.Health/Watch`, the overall status): SERVING, NOT
//!   SERVING (its store is down, it is draining, a standby that says so), or
//!   unreachable (the watch cannot be opened or broke; retried with
//!   backoff).
//! - **picking**: round robin over the best class of replica: healthy and
//!   not failed lately; else healthy; else any. A call that fails to reach
//!   its replica, or that the replica answers `UNAVAILABLE` (refused, or a
//!   standby's "not the leader"), marks that replica *failed* for a few
//!   seconds, so a retry by the caller (which only retries `UNAVAILABLE`)
//!   goes to another one. A call that got no answer at all (refused, or its
//!   connection broke mid-call) fails with `UNAVAILABLE`.
//!
//! A stream (`EventStream/Attach`) is one call: it stays on the replica it
//! was opened on, and its owner opens a new one, on a replica picked again,
//! when it breaks.
//!
//! The tasks stop when the last clone of the [`Replicas`] is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;

use crate::config::{InternalAuth, ServiceAddr, ServiceTarget, Targets};
use crate::grpc::resolver::Resolver;

/// How long a replica that failed a call is passed over while others are
/// fine.
const FAILED_FOR: Duration = Duration::from_secs(3);
/// The least time between two resolutions asked for by failed calls.
const RESOLVE_AGAIN_AFTER: Duration = Duration::from_secs(1);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A replica's health, as its health watch last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Not known yet (the watch has not answered): tried like a healthy one.
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    Unreachable = 3,
}

impl Health {
    fn from_u8(value: u8) -> Health {
        match value {
            1 => Health::Serving,
            2 => Health::NotServing,
            3 => Health::Unreachable,
            _ => Health::Unknown,
        }
    }

    fn usable(self) -> bool {
        matches!(self, Health::Unknown | Health::Serving)
    }
}

/// One replica: its channel and what is known of it.
#[derive(Debug)]
struct Replica {
    addr: SocketAddr,
    channel: Channel,
    health: AtomicU8,
    /// When a call last failed on it, in ms since the set started (0 = never).
    failed_at: AtomicU64,
    /// Stops its health watch.
    stop: CancellationToken,
}

impl Replica {
    fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    fn set_health(&self, health: Health, service: &str) {
        let before = self.health.swap(health as u8, Ordering::AcqRel);
        if before != health as u8 {
            tracing::info!(service, replica = %self.addr, ?health, "replica health");
        }
    }
}

#[derive(Debug)]
struct Shared {
    service: &'static str,
    started: Instant,
    replicas: Mutex<Vec<Arc<Replica>>>,
    next: AtomicUsize,
    /// Whether the first resolution is done (calls before it wait for it).
    resolved: watch::Receiver<bool>,
    /// Asks the resolver task for a resolution now.
    resolve_now: Notify,
}

/// Stops the tasks when the last [`Replicas`] goes.
#[derive(Debug)]
struct Owner {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// A gRPC channel over every replica of one service (a `tower::Service`
/// the generated clients take, like tonic's `Channel`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Replicas {
    owner: Arc<Owner>,
}

impl Replicas {
    /// Starts resolving `target` and watching its replicas' health (on the
    /// current tokio runtime). Entries that are IP addresses are replicas at
    /// once; names are resolved by the resolver task.
    pub fn start(
        target: &ServiceTarget,
        auth: &InternalAuth,
    ) -> Result<Self, tonic::transport::Error> {
        // Fails now, not at the first call, on a setting that cannot work.
        for entry in target.targets.entries() {
            crate::config::endpoint(entry.as_str(), None, auth)?;
        }
        let stop = CancellationToken::new();
        let (resolved_tx, resolved) = watch::channel(false);
        let shared = Arc::new(Shared {
            service: target.service,
            started: Instant::now(),
            replicas: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            resolved,
            resolve_now: Notify::new(),
        });
        let task = Resolving {
            shared: Arc::downgrade(&shared),
            targets: target.targets.clone(),
            resolver: target.resolver.clone(),
            every: target.resolve_every,
            auth: auth.clone(),
            known: HashMap::new(),
            stop: stop.clone(),
        };
        tokio::spawn(task.run(resolved_tx));
        Ok(Replicas {
            owner: Arc::new(Owner {
                shared,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// The replicas now, with their health (tests, logs).
    pub fn replicas(&self) -> Vec<(SocketAddr, Health)> {
        self.owner
            .shared
            .lock()
            .iter()
            .map(|replica| (replica.addr, replica.health()))
            .collect()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Replica>>> {
        self.replicas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        (self.started.elapsed().as_millis() as u64).max(1)
    }

    fn recently_failed(&self, replica: &Replica, now: u64) -> bool {
        let failed = replica.failed_at.load(Ordering::Acquire);
        failed != 0 && now.saturating_sub(failed) < FAILED_FOR.as_millis() as u64
    }

    /// The replica for the next call: round robin over the best class.
    fn pick(&self) -> Option<Arc<Replica>> {
        let replicas = self.lock();
        let now = self.now_ms();
        let class = |replica: &Replica| match (
            replica.health().usable(),
            self.recently_failed(replica, now),
        ) {
            (true, false) => 0,
            (true, true) => 1,
            (false, false) => 2,
            (false, true) => 3,
        };
        let best = replicas.iter().map(|r| class(r)).min()?;
        let candidates: Vec<&Arc<Replica>> = replicas.iter().filter(|r| class(r) == best).collect();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        candidates
            .get(turn % candidates.len())
            .map(|r| Arc::clone(r))
    }

    fn failed(&self, replica: &Replica, cause: &str) {
        tracing::debug!(service = self.service, replica = %replica.addr, cause, "call failed on a replica");
        replica.failed_at.store(self.now_ms(), Ordering::Release);
    }
}

/// Whether a response is a trailers-only `UNAVAILABLE` (what a server
/// sends when its handler refuses at once).
fn is_unavailable<B>(response: &http::Response<B>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"14")
}

impl tower::Service<http::Request<tonic::body::Body>> for Replicas {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the picked replica's, awaited in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = self.owner.shared.clone();
        Box::pin(async move {
            let mut resolved = shared.resolved.clone();
            // Before the first resolution there is nobody to call yet; a
            // resolver task that is gone ends the wait too.
            let _ = resolved.wait_for(|done| *done).await;
            let Some(replica) = shared.pick() else {
                shared.resolve_now.notify_one();
                return Err(Box::new(tonic::Status::unavailable(format!(
                    "no replica of the {} service is known (its addresses resolve to none)",
                    shared.service
                ))) as BoxError);
            };
            let channel = replica.channel.clone();
            let result = match channel.ready_oneshot().await {
                Ok(mut channel) => tower::Service::call(&mut channel, request).await,
                Err(err) => Err(err),
            };
            match result {
                // No answer: the replica could not be reached, or its
                // connection broke before it answered (killed mid-call).
                // Both are UNAVAILABLE, as in grpc-go and grpc-java (tonic
                // would say UNKNOWN for the second), so callers retry them
                // where a repeat is safe.
                Err(err) => {
                    shared.failed(&replica, &err.to_string());
                    shared.resolve_now.notify_one();
                    Err(Box::new(tonic::Status::unavailable(format!(
                        "{} replica {}: {err}",
                        shared.service, replica.addr
                    ))) as BoxError)
                }
                Ok(response) => {
                    if is_unavailable(&response) {
                        shared.failed(&replica, "UNAVAILABLE");
                    }
                    Ok(response)
                }
            }
        })
    }
}

/// The resolver task's state.
struct Resolving {
    shared: Weak<Shared>,
    targets: Targets,
    resolver: Arc<dyn Resolver>,
    every: Duration,
    auth: InternalAuth,
    /// Each entry's addresses as last resolved.
    known: HashMap<ServiceAddr, Vec<SocketAddr>>,
    stop: CancellationToken,
}

impl Resolving {
    async fn run(mut self, resolved: watch::Sender<bool>) {
        loop {
            self.resolve().await;
            resolved.send_replace(true);
            let last = tokio::time::Instant::now();
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let asked = async {
                shared.resolve_now.notified().await;
                tokio::time::sleep_until(last + RESOLVE_AGAIN_AFTER).await;
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(self.every) => {}
                _ = asked => {}
            }
        }
        if let Some(shared) = self.shared.upgrade() {
            for replica in shared.lock().drain(..) {
                replica.stop.cancel();
            }
        }
    }

    /// Resolves every entry and brings the replica list in line.
    async fn resolve(&mut self) {
        let service = self.shared.upgrade().map_or("?", |s| s.service);
        for entry in self.targets.entries() {
            match self.resolver.resolve(entry).await {
                Ok(addrs) => {
                    self.known.insert(entry.clone(), addrs);
                }
                Err(err) => {
                    tracing::warn!(service, %entry, cause = %err, "cannot resolve a replica address; keeping the last answer");
                }
            }
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // Each address, with the name it came from (for TLS).
        let mut wanted: Vec<(SocketAddr, Option<&str>)> = Vec::new();
        for entry in self.targets.entries() {
            let name = entry.socket_addr().is_none().then(|| entry.host());
            for addr in self.known.get(entry).into_iter().flatten() {
                if !wanted.iter().any(|(known, _)| known == addr) {
                    wanted.push((*addr, name));
                }
            }
        }
        let mut replicas = shared.lock();
        replicas.retain(|replica| {
            let keep = wanted.iter().any(|(addr, _)| *addr == replica.addr);
            if !keep {
                tracing::info!(service, replica = %replica.addr, "replica gone");
                replica.stop.cancel();
            }
            keep
        });
        for (addr, name) in wanted {
            if replicas.iter().any(|replica| replica.addr == addr) {
                continue;
            }
            let endpoint = match crate::config::endpoint(&addr.to_string(), name, &self.auth) {
                Ok(endpoint) => endpoint,
                Err(err) => {
                    tracing::warn!(service, replica = %addr, cause = %err, "cannot use a replica address");
                    continue;
                }
            };
            let replica = Arc::new(Replica {
                addr,
                channel: endpoint.connect_lazy(),
                health: AtomicU8::new(Health::Unknown as u8),
                failed_at: AtomicU64::new(0),
                stop: self.stop.child_token(),
            });
            tracing::info!(service, replica = %addr, "replica found");
            tokio::spawn(watch_health(replica.clone(), service));
            replicas.push(replica);
        }
    }
}

/// Follows `replica`'s health until it is dropped from the set (or the set
/// is): the server's `Watch` stream while it is open, "unreachable" while
/// it is not (reopened with backoff).
async fn watch_health(replica: Arc<Replica>, service: &'static str) {
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times();
    let mut delays = backoff.build();
    let stop = replica.stop.clone();
    loop {
        let mut client = HealthClient::new(replica.channel.clone());
        let watched = async {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            let mut stream = match client.watch(request).await {
                Ok(response) => response.into_inner(),
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    // A server without health checking: take it as serving.
                    replica.set_health(Health::Serving, service);
                    return futures::future::pending().await;
                }
                Err(_) => return false,
            };
            let mut answered = false;
            while let Ok(Some(message)) = stream.message().await {
                answered = true;
                let health = if message.status == ServingStatus::Serving as i32 {
                    Health::Serving
                } else {
                    Health::NotServing
                };
                replica.set_health(health, service);
            }
            answered
        };
        let answered = tokio::select! {
            _ = stop.cancelled() => return,
            answered = watched => answered,
        };
        replica.set_health(Health::Unreachable, service);
        if answered {
            delays = backoff.build();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(2));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::server::NamedService;
    use tonic_health::server::HealthReporter;

    use super::*;
    use crate::grpc::resolver::FakeResolver;

    /// The test's name for the service's replicas, resolved by the fake.
    const NAME: &str = "svc:1";

    /// A replica: a gRPC server with health checking on port 0, on a
    /// runtime of its own so that killing it closes its connections too.
    /// `refuse`: it answers `Health/Check` with `UNAVAILABLE` ("not the
    /// leader") while its health watch says SERVING, as a standby does.
    struct Server {
        addr: SocketAddr,
        reporter: HealthReporter,
        runtime: tokio::runtime::Runtime,
    }

    impl Server {
        async fn start(refuse: bool) -> Server {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
            std_listener.set_nonblocking(true).expect("non-blocking");
            let addr = std_listener.local_addr().expect("bound");
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.spawn(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("a tokio listener");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(RefuseChecks {
                        inner: health,
                        refuse,
                    })
                    .serve_with_incoming(incoming)
                    .await;
            });
            Server {
                addr,
                reporter,
                runtime,
            }
        }

        /// Gone at once, as with SIGKILL: its connections drop, its port
        /// refuses.
        async fn kill(self) {
            self.runtime.shutdown_background();
        }
    }

    #[derive(Clone)]
    struct RefuseChecks<S> {
        inner: S,
        refuse: bool,
    }

    impl<S> NamedService for RefuseChecks<S> {
        const NAME: &'static str = "grpc.health.v1.Health";
    }

    impl<S> tower::Service<http::Request<tonic::body::Body>> for RefuseChecks<S>
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            if self.refuse && request.uri().path().ends_with("/Check") {
                return Box::pin(async {
                    Ok(tonic::Status::unavailable("not the leader").into_http())
                });
            }
            Box::pin(self.inner.clone().oneshot(request))
        }
    }

    fn replicas(fake: &FakeResolver) -> Replicas {
        let target = ServiceTarget {
            service: "test",
            targets: NAME.parse().expect("an entry"),
            resolve_every: Duration::from_millis(50),
            resolver: Arc::new(fake.clone()),
        };
        target.connect(&InternalAuth::default()).expect("a channel")
    }

    /// A unary call through the set: who answered is not visible, so the
    /// tests look at the set's own view and at which servers got calls.
    async fn check(channel: &Replicas) -> Result<(), tonic::Status> {
        let mut client = HealthClient::new(channel.clone());
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
    }

    /// Waits until the set's view satisfies `wanted`.
    async fn until(channel: &Replicas, wanted: impl Fn(&[(SocketAddr, Health)]) -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !wanted(&channel.replicas()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the replica set became {:?}", channel.replicas()));
    }

    fn addrs(view: &[(SocketAddr, Health)]) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = view.iter().map(|(addr, _)| *addr).collect();
        addrs.sort();
        addrs
    }

    /// Addresses the name gains are added, addresses it loses are dropped,
    /// on the next resolution; a failed resolution keeps what was known.
    #[tokio::test]
    async fn replicas_follow_the_resolver() {
        let fake = FakeResolver::new();
        let a = Server::start(false).await;
        let b = Server::start(false).await;
        fake.set(NAME, [a.addr]);
        let channel = replicas(&fake);
        check(&channel).await.expect("a answers");
        assert_eq!(addrs(&channel.replicas()), vec![a.addr]);

        fake.set(NAME, [a.addr, b.addr]);
        let mut both = vec![a.addr, b.addr];
        both.sort();
        until(&channel, |view| addrs(view) == both).await;

        fake.fail(NAME);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            addrs(&channel.replicas()),
            both,
            "kept through a DNS failure"
        );

        fake.set(NAME, [b.addr]);
        until(&channel, |view| addrs(view) == vec![b.addr]).await;
        check(&channel).await.expect("b answers");
        a.kill().await;
        b.kill().await;
    }

    /// Calls spread over the healthy replicas; a replica that went away is
    /// seen as unreachable and skipped, and calls go on on the other.
    #[tokio::test]
    async fn a_dead_replica_is_skipped() {
        let fake = FakeResolver::new();
        let a = Server::start(false).await;
        let b = Server::start(false).await;
        fake.set(NAME, [a.addr, b.addr]);
        let channel = replicas(&fake);
        until(&channel, |view| {
            view.len() == 2 && view.iter().all(|(_, h)| *h == Health::Serving)
        })
        .await;
        let dead = a.addr;
        a.kill().await;
        until(&channel, |view| {
            view.iter()
                .any(|(addr, h)| *addr == dead && *h == Health::Unreachable)
        })
        .await;
        for _ in 0..10 {
            check(&channel)
                .await
                .expect("every call reaches the live replica");
        }
        b.kill().await;
    }

    /// A replica that refuses a call with UNAVAILABLE (a standby's "not the
    /// leader") is marked failed: the retry a caller makes on UNAVAILABLE
    /// goes to the other replica, and so do the next calls for a while.
    #[tokio::test]
    async fn unavailable_is_retried_on_another_replica() {
        let fake = FakeResolver::new();
        let standby = Server::start(true).await;
        let leader = Server::start(false).await;
        fake.set(NAME, [standby.addr, leader.addr]);
        let channel = replicas(&fake);
        until(&channel, |view| {
            view.len() == 2 && view.iter().all(|(_, h)| *h == Health::Serving)
        })
        .await;
        let mut refused = 0;
        for _ in 0..10 {
            match check(&channel).await {
                Ok(()) => {}
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                    refused += 1;
                    check(&channel)
                        .await
                        .expect("the retry goes to the other replica");
                }
            }
        }
        assert!(
            refused <= 1,
            "after its first refusal the standby is passed over: {refused} refusals"
        );
        standby.kill().await;
        leader.kill().await;
    }

    /// A replica that says NOT_SERVING (draining, its store down) gets no
    /// calls while another serves; when it serves again it gets them back.
    #[tokio::test]
    async fn not_serving_replicas_are_passed_over() {
        let fake = FakeResolver::new();
        let a = Server::start(true).await;
        let b = Server::start(false).await;
        fake.set(NAME, [a.addr, b.addr]);
        let channel = replicas(&fake);
        a.reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        until(&channel, |view| {
            view.iter()
                .any(|(addr, h)| *addr == a.addr && *h == Health::NotServing)
                && view
                    .iter()
                    .any(|(addr, h)| *addr == b.addr && *h == Health::Serving)
        })
        .await;
        for _ in 0..10 {
            // `a` refuses every check: not one call may reach it.
            check(&channel).await.expect("only b gets calls");
        }
        a.kill().await;
        b.kill().await;
    }

    /// The set's tasks stop with its last handle.
    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_tasks() {
        let fake = FakeResolver::new();
        let a = Server::start(false).await;
        fake.set(NAME, [a.addr]);
        let channel = replicas(&fake);
        check(&channel).await.expect("a answers");
        let shared = Arc::downgrade(&channel.owner.shared);
        drop(channel);
        tokio::time::timeout(Duration::from_secs(5), async {
            while shared.upgrade().is_some() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the resolver task let go of the set");
        a.kill().await;
    }
}
