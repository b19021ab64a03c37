//! The presence service on 127.0.0.1:0, driven as a gateway and the handoff
//! service drive it: real gRPC clients, identity in metadata, and the
//! `operator_status_change` events read from the service's `EventStream`.

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chatai_kit::config::ServiceCommon;
use chatai_kit::events::Recipient;
use chatai_kit::identity::{Caller, Role};
use chatai_presence::{PresenceConfig, RunError};
use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use chatai_proto::v1::presence_client::PresenceClient;
use chatai_testkit::{TestDatabase, TestGateway};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::transport::Channel;

/// How long any single wait may take before the test fails. Generous: it is
/// a bound on a hang, not a timing assertion.
pub const WAIT: Duration = Duration::from_secs(10);

/// The handoff cap every test service runs with.
pub const MAX_HANDOFFS: u32 = 2;

/// Where the service keeps its state and event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In the process (the one-process default).
    Memory,
    /// In the Redis at `CHATAI_TEST_REDIS_URL`, under a key prefix of the
    /// test's own (removed when the test ends).
    Redis,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Memory, Backend::Redis];
}

/// A key prefix of the test's own on the test Redis; its keys are deleted
/// on drop.
struct RedisPrefix {
    url: String,
    prefix: String,
}

impl RedisPrefix {
    fn new() -> Self {
        RedisPrefix {
            url: std::env::var("CHATAI_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            prefix: format!("test-presence-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut connection) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

/// A running presence service.
pub struct App {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    served: JoinHandle<Result<(), RunError>>,
    database: TestDatabase,
    redis: Option<RedisPrefix>,
}

/// Starts the service with a 1 s grace period and a cap of
/// [`MAX_HANDOFFS`] on a fresh SQLite file; the listener is bound before the
/// service is spawned, so clients can connect at once.
pub async fn spawn_app() -> App {
    spawn_app_on(Backend::Memory).await
}

/// [`spawn_app`] with its state and event log on `backend`.
pub async fn spawn_app_on(backend: Backend) -> App {
    let redis = (backend == Backend::Redis).then(RedisPrefix::new);
    start_on(TestDatabase::sqlite(), redis).await
}

async fn start_on(database: TestDatabase, redis: Option<RedisPrefix>) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    let config = PresenceConfig {
        grace_period_secs: 1,
        max_handoffs: MAX_HANDOFFS,
    };
    let mut common = ServiceCommon {
        database_url: database.url().to_owned(),
        ..ServiceCommon::default()
    };
    if let Some(redis) = &redis {
        common.redis_url = Some(redis.url.clone());
        common.redis_prefix = redis.prefix.clone();
    }
    let served = tokio::spawn(chatai_presence::run(
        listener,
        config,
        common,
        shutdown.clone(),
    ));
    App {
        addr,
        shutdown,
        served,
        database,
        redis,
    }
}

impl App {
    pub async fn client(&self) -> PresenceClient<Channel> {
        tokio::time::timeout(
            WAIT,
            PresenceClient::connect(format!("http://{}", self.addr)),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }

    /// A gateway reporting its operator connections.
    pub async fn gateway(&self, id: &str) -> Gateway {
        Gateway {
            id: id.to_owned(),
            client: self.client().await,
        }
    }

    /// Attaches to the service's `EventStream` as a gateway holding operator
    /// connections: `Hello`, then `Subscribe` the operator role group, and
    /// waits for `Subscribed`.
    pub async fn operator_events(&self) -> OperatorEvents {
        let mut client = tokio::time::timeout(
            WAIT,
            EventStreamClient::connect(format!("http://{}", self.addr)),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let mut gateway = TestGateway::attach(&mut client).await;
        gateway.subscribe(1, &Recipient::Role(Role::Operator)).await;
        OperatorEvents { gateway }
    }

    /// Cancels the shutdown token and checks the service stops cleanly.
    pub async fn stop(self) {
        self.stop_keeping_database().await;
    }

    /// Stops the service and starts it again on the same database (and
    /// Redis prefix; a new port: reconnect with [`App::client`]).
    pub async fn restart(self) -> App {
        let (database, redis) = self.stop_keeping_database().await;
        start_on(database, redis).await
    }

    async fn stop_keeping_database(self) -> (TestDatabase, Option<RedisPrefix>) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("the service stops in time")
            .expect("the service task")
            .expect("the service stops cleanly");
        (self.database, self.redis)
    }
}

/// `msg` with `caller`'s identity in its metadata.
pub fn request<T>(caller: &Caller, msg: T) -> Request<T> {
    let mut request = Request::new(msg);
    caller.write_metadata(request.metadata_mut());
    request
}

/// An operator, as the gateway passes them on.
pub fn operator(id: i64) -> Caller {
    Caller {
        id,
        role: Role::Operator,
        name: Some(format!("Op{id}")),
        connection_id: Some(format!("gw:{id}")),
    }
}

pub fn admin(id: i64) -> Caller {
    Caller {
        id,
        role: Role::Admin,
        name: None,
        connection_id: None,
    }
}

pub fn user(id: i64) -> Caller {
    Caller {
        id,
        role: Role::User,
        name: None,
        connection_id: None,
    }
}

/// One gateway's calls, made with the `service` role as a gateway does.
pub struct Gateway {
    pub id: String,
    pub client: PresenceClient<Channel>,
}

impl Gateway {
    pub fn connection(operator_id: i64, connection_id: &str) -> pb::OperatorConnection {
        pb::OperatorConnection {
            operator_id,
            connection_id: connection_id.to_owned(),
            name: format!("Op{operator_id}"),
        }
    }

    pub async fn open(&mut self, operator_id: i64, connection_id: &str) -> pb::OperatorInfo {
        let msg = pb::ConnectionOpenedRequest {
            gateway_id: self.id.clone(),
            connection: Some(Self::connection(operator_id, connection_id)),
            order: None,
        };
        self.client
            .connection_opened(request(&Caller::service(), msg))
            .await
            .expect("ConnectionOpened")
            .into_inner()
    }

    pub async fn close(&mut self, operator_id: i64, connection_id: &str) {
        let msg = pb::ConnectionClosedRequest {
            gateway_id: self.id.clone(),
            operator_id,
            connection_id: connection_id.to_owned(),
            order: None,
        };
        self.client
            .connection_closed(request(&Caller::service(), msg))
            .await
            .expect("ConnectionClosed");
    }

    pub async fn refresh(&mut self, connections: Vec<pb::OperatorConnection>, ttl_seconds: u32) {
        let msg = pb::RefreshConnectionsRequest {
            gateway_id: self.id.clone(),
            connections,
            ttl_seconds,
            order: None,
        };
        self.client
            .refresh_connections(request(&Caller::service(), msg))
            .await
            .expect("RefreshConnections");
    }
}

/// Sets an operator's load as the handoff service does.
pub async fn set_load(
    client: &mut PresenceClient<Channel>,
    operator_id: i64,
    active_handoffs: u32,
) -> pb::OperatorInfo {
    let msg = pb::SetLoadRequest {
        operator_id,
        active_handoffs,
    };
    client
        .set_load(request(&Caller::service(), msg))
        .await
        .expect("SetLoad")
        .into_inner()
}

/// Sets an operator's chosen status as `caller`.
pub async fn set_status(
    client: &mut PresenceClient<Channel>,
    caller: &Caller,
    operator_id: i64,
    status: pb::OperatorStatus,
) -> Result<pb::OperatorInfo, tonic::Status> {
    let msg = pb::SetStatusRequest {
        operator_id,
        status: status as i32,
    };
    client
        .set_status(request(caller, msg))
        .await
        .map(tonic::Response::into_inner)
}

/// Reads one operator as a service.
pub async fn get_operator(
    client: &mut PresenceClient<Channel>,
    operator_id: i64,
) -> pb::OperatorInfo {
    client
        .get_operator(request(
            &Caller::service(),
            pb::GetOperatorRequest { operator_id },
        ))
        .await
        .expect("GetOperator")
        .into_inner()
}

/// The operator role group's `Attach` stream.
pub struct OperatorEvents {
    gateway: TestGateway,
}

impl OperatorEvents {
    /// The body of the next `operator_status_change`.
    pub async fn next(&mut self) -> serde_json::Value {
        let delivery = self.gateway.next_delivery().await;
        assert_eq!(
            delivery.recipient,
            Some((&Recipient::Role(Role::Operator)).into()),
            "status changes go to every operator"
        );
        assert_eq!(delivery.position, 0, "role-group events are live only");
        let event = delivery.event.expect("a delivery carries its event");
        assert_eq!(event.r#type, "operator_status_change");
        serde_json::from_slice(&event.body).expect("the body is a JSON object")
    }
}
