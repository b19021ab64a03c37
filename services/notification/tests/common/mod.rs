//! What the notification service's integration tests share: [`Service`] runs
//! the real service (`chatai_notification::run`) on 127.0.0.1:0 with the
//! memory event log (or, for replicas, the Redis one), on a fresh SQLite
//! file or a fresh PostgreSQL database;
//! gRPC clients carry a caller identity ([`as_caller`]); [`Service::attach`]
//! opens a test gateway's `EventStream.Attach` stream, to observe deliveries.
//!
//! Nothing sleeps to wait for readiness: the listener is bound before the
//! service starts and calls wait for it; every wait has a timeout ([`WAIT`]),
//! and no test asserts how long anything took.
//!
//! Fresh databases come from `chatai_testkit` (`on_sqlite`,
//! `on_postgres`); an unreachable PostgreSQL fails the test, never skips it.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chatai_kit::config::ServiceCommon;
use chatai_kit::identity::{Caller, Role};
use chatai_notification::{NotificationConfig, RunError};
use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use chatai_proto::v1::notification_client::NotificationClient;
use chatai_testkit::TestGateway;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::transport::Channel;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The notification service, running.
pub struct Service {
    pub addr: SocketAddr,
    pub database_url: String,
    shutdown: CancellationToken,
    served: JoinHandle<Result<(), RunError>>,
    /// Keeps the SQLite file's folder until the service is gone.
    _folder: Option<tempfile::TempDir>,
}

impl Service {
    /// Runs the service on a fresh SQLite file, pushing analytics every
    /// `analytics_interval_secs`.
    pub async fn on_sqlite(analytics_interval_secs: u64) -> Self {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", folder.path().join("chatai.db").display());
        let mut service = Self::start(url, analytics_interval_secs).await;
        service._folder = Some(folder);
        service
    }

    /// Runs the service on `database_url`.
    pub async fn start(database_url: String, analytics_interval_secs: u64) -> Self {
        let config = NotificationConfig {
            analytics_interval_secs,
            ..NotificationConfig::default()
        };
        Self::start_with(database_url, config).await
    }

    /// Runs the service on `database_url` with `config`.
    pub async fn start_with(database_url: String, config: NotificationConfig) -> Self {
        let common = ServiceCommon {
            database_url,
            ..ServiceCommon::default()
        };
        Self::spawn(common, config).await
    }

    /// Runs the service on `database_url` with the Redis event log at
    /// `CHATAI_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`), as a
    /// replica of a deployment: every replica on one database shares it.
    pub async fn replica(database_url: String, analytics_interval_secs: u64) -> Self {
        let common = ServiceCommon {
            database_url,
            redis_url: Some(
                std::env::var("CHATAI_TEST_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            ),
            ..ServiceCommon::default()
        };
        let config = NotificationConfig {
            analytics_interval_secs,
            ..NotificationConfig::default()
        };
        Self::spawn(common, config).await
    }

    async fn spawn(common: ServiceCommon, config: NotificationConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let database_url = common.database_url.clone();
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(chatai_notification::run(
            listener,
            config,
            common,
            shutdown.clone(),
        ));
        Service {
            addr,
            database_url,
            shutdown,
            served,
            _folder: None,
        }
    }

    /// A `chatai.v1.Notification` client.
    pub async fn client(&self) -> NotificationClient<Channel> {
        let connect = NotificationClient::connect(format!("http://{}", self.addr));
        tokio::time::timeout(WAIT, connect)
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// A `chatai.v1.EventStream` client.
    pub async fn events(&self) -> EventStreamClient<Channel> {
        let connect = EventStreamClient::connect(format!("http://{}", self.addr));
        tokio::time::timeout(WAIT, connect)
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// A test gateway attached to the service's `EventStream`.
    pub async fn attach(&self) -> TestGateway {
        TestGateway::attach(&mut self.events().await).await
    }

    /// Cancels the shutdown token and waits for the service to stop cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("the service stops in time")
            .expect("the service task")
            .expect("the service stops cleanly");
    }
}

/// `message` as a request from a caller with `role` (id 7, or 0 for a service).
pub fn as_caller<T>(message: T, role: Role) -> Request<T> {
    let caller = match role {
        Role::Service => Caller::service(),
        role => Caller {
            id: 7,
            role,
            name: None,
            connection_id: None,
        },
    };
    let mut request = Request::new(message);
    caller.write_metadata(request.metadata_mut());
    request.set_timeout(WAIT);
    request
}

/// Awaits a gRPC call with [`WAIT`]; the call's own result.
pub async fn call<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(WAIT, call)
        .await
        .expect("the call answers in time")
        .map(tonic::Response::into_inner)
}

/// Asserts that `result` failed with `code` and the stable `error_code`.
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    error_code: &str,
) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(
                chatai_kit::status::error_code(&status),
                Some(error_code),
                "{status:?}"
            );
        }
        Ok(answer) => panic!("expected {code:?} {error_code}, got {answer:?}"),
    }
}

/// The JSON body of a delivered event.
pub fn body(delivery: &pb::Delivery) -> serde_json::Value {
    let event = delivery
        .event
        .as_ref()
        .expect("a delivery carries its event");
    serde_json::from_slice(&event.body).expect("event bodies are JSON")
}
