//! What keeping the presence state in Redis costs a gateway: one operator
//! connection opened and closed (`ConnectionOpened` + `ConnectionClosed`
//! over gRPC on loopback, as a gateway reports them), with the state in the
//! service's memory and in Redis (`CHATAI_TEST_REDIS_URL`, a key prefix of
//! the bench's own, removed after). Results: BENCHMARKS.md, "Presence on
//! Redis".

use std::net::SocketAddr;

use chatai_kit::config::ServiceCommon;
use chatai_kit::identity::Caller;
use chatai_presence::PresenceConfig;
use chatai_proto::v1 as pb;
use chatai_proto::v1::presence_client::PresenceClient;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    Caller::service().write_metadata(request.metadata_mut());
    request
}

/// Starts the service on `redis` (a URL and a prefix) or in memory.
async fn start(
    database_url: &str,
    redis: Option<(String, String)>,
    shutdown: CancellationToken,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    let mut common = ServiceCommon {
        database_url: database_url.to_owned(),
        ..ServiceCommon::default()
    };
    if let Some((url, prefix)) = redis {
        common.redis_url = Some(url);
        common.redis_prefix = prefix;
    }
    tokio::spawn(chatai_presence::run(
        listener,
        PresenceConfig::default(),
        common,
        shutdown,
    ));
    addr
}

async fn open_and_close(client: &mut PresenceClient<Channel>, n: u64) {
    let connection_id = format!("c{n}");
    client
        .connection_opened(request(pb::ConnectionOpenedRequest {
            gateway_id: "bench-gw".into(),
            connection: Some(pb::OperatorConnection {
                operator_id: 7,
                connection_id: connection_id.clone(),
                name: "Bench".into(),
            }),
            order: None,
        }))
        .await
        .expect("ConnectionOpened");
    client
        .connection_closed(request(pb::ConnectionClosedRequest {
            gateway_id: "bench-gw".into(),
            operator_id: 7,
            connection_id,
            order: None,
        }))
        .await
        .expect("ConnectionClosed");
}

fn round_trip(c: &mut Criterion) {
    let runtime = Runtime::new().expect("a runtime");
    let database = chatai_testkit::TestDatabase::sqlite();
    let redis_url =
        std::env::var("CHATAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("bench-presence-{}", std::process::id());
    let mut group = c.benchmark_group("presence_open_close");
    for (name, redis) in [
        ("memory", None),
        ("redis", Some((redis_url.clone(), prefix.clone()))),
    ] {
        let shutdown = CancellationToken::new();
        let mut client = runtime.block_on(async {
            let addr = start(database.url(), redis, shutdown.clone()).await;
            let mut attempts = 0;
            loop {
                match PresenceClient::connect(format!("http://{addr}")).await {
                    Ok(client) => break client,
                    Err(_) if attempts < 100 => {
                        attempts += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(cause) => panic!("presence at {addr}: {cause}"),
                }
            }
        });
        let mut n = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                runtime.block_on(open_and_close(&mut client, n));
            });
        });
        shutdown.cancel();
    }
    group.finish();
    if let Ok(client) = redis::Client::open(redis_url.as_str())
        && let Ok(mut connection) = client.get_connection()
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
