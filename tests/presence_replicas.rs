//! Presence replicated (issue 13, item 2): two presence processes on one
//! Redis and PostgreSQL, every other part in its own process as in
//! `processes.rs`. The gateway and handoff service talk to the first
//! presence replica; the second is the one nobody points at until
//! `CHATAI_PRESENCE_ADDRS` lets them spread their calls. It answers from
//! the shared state anyway, what it is told reaches the operators through
//! the first replica's event stream, and killing either replica — or both,
//! one restarted — changes no operator's status.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::deployment::{Deployment, Redis, START, internal_call};
use crate::common::free_addr;
use chatai_kit::identity::{Caller, Role};
use chatai_proto::v1 as pb;
use chatai_proto::v1::presence_client::PresenceClient;
use chatai_testkit::TestDatabase;
use serde_json::json;
use tonic::transport::Channel;

/// The status, chosen status and online flag of each operator listed.
type Statuses = BTreeMap<i64, (i32, i32, bool)>;

/// A presence client calling as a service, with the deployment's token.
async fn presence_at(addr: &str) -> PresenceClient<Channel> {
    let deadline = tokio::time::Instant::now() + START;
    loop {
        match PresenceClient::connect(format!("http://{addr}")).await {
            Ok(client) => return client,
            Err(cause) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "presence at {addr}: {cause}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn statuses(client: &mut PresenceClient<Channel>) -> (Statuses, u64) {
    let listing = client
        .list_operators(internal_call(
            &Caller::service(),
            pb::ListOperatorsRequest {},
        ))
        .await
        .expect("ListOperators")
        .into_inner();
    let statuses = listing
        .operators
        .into_iter()
        .map(|op| (op.operator_id, (op.status, op.chosen_status, op.online)))
        .collect();
    (statuses, listing.version)
}

/// Polls `client`'s listing until `wanted` holds; returns it.
async fn statuses_when(
    client: &mut PresenceClient<Channel>,
    deployment: &Deployment,
    wanted: impl Fn(&Statuses) -> bool,
) -> Statuses {
    let deadline = tokio::time::Instant::now() + START;
    loop {
        let (statuses, _) = statuses(client).await;
        if wanted(&statuses) {
            return statuses;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never listed what was expected: {statuses:?}\n{}",
            deployment.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two operators connected through the gateway (reported to replica one);
/// one chooses `away` through the gateway, an admin makes the other `busy`
/// through replica two, and the operators hear of it through replica one's
/// stream. Both replicas list the same. Replica two is SIGKILLed: replica
/// one still lists every status unchanged. Replica one is SIGKILLed and
/// started again: it lists them unchanged too, connections included.
#[tokio::test]
async fn a_killed_presence_replica_changes_no_status() {
    let database = TestDatabase::postgres().await;
    let mut redis = Redis::start(free_addr().port()).await;
    let mut deployment = Deployment::new(database.url(), Some(redis.port));
    let second = free_addr().to_string();
    deployment.start("presence");
    deployment.start_as(
        "presence-2",
        "presence",
        &[("CHATAI_PRESENCE_ADDR", second.clone())],
    );
    for part in ["handoff", "chat", "notification", "gateway"] {
        deployment.start(part);
    }
    deployment.wait_healthy().await;
    let first = deployment
        .env("CHATAI_PRESENCE_ADDR")
        .expect("the first replica's address")
        .to_owned();
    let mut one = presence_at(&first).await;
    let mut two = presence_at(&second).await;

    let mut alice = deployment.connect(1961, Role::Operator).await;
    let mut bob = deployment.connect(1962, Role::Operator).await;
    let chose = alice
        .request(json!({"type": "set_status", "id": "s1", "status": "away"}))
        .await;
    assert_eq!(chose["type"], "ack", "{chose}");

    let made_busy = two
        .set_status(internal_call(
            &Caller {
                id: 1,
                role: Role::Admin,
                name: None,
                connection_id: None,
            },
            pb::SetStatusRequest {
                operator_id: 1962,
                status: pb::OperatorStatus::Busy as i32,
            },
        ))
        .await
        .expect("replica two answers SetStatus")
        .into_inner();
    assert_eq!(made_busy.status, pb::OperatorStatus::Busy as i32);
    assert!(made_busy.online, "replica two knows bob's connection");
    // Announced by replica two, relayed to the gateway by replica one.
    loop {
        let change = alice.next_of("operator_status_change").await;
        if change["operator_id"] == 1962 && change["status"] == "busy" {
            break;
        }
    }

    use pb::OperatorStatus::{Away, Busy};
    let expected: Statuses = [
        (1961, (Away as i32, Away as i32, true)),
        (1962, (Busy as i32, Busy as i32, true)),
    ]
    .into();
    let (listed_one, version_one) = statuses(&mut one).await;
    let (listed_two, version_two) = statuses(&mut two).await;
    assert_eq!(listed_one, expected);
    assert_eq!(listed_two, expected);
    assert_eq!(version_one, version_two);

    deployment.kill("presence-2").await;
    let (after_kill, _) = statuses(&mut one).await;
    assert_eq!(after_kill, expected, "replica one, once two is gone");

    deployment.kill("presence").await;
    deployment.start("presence");
    let mut restarted = presence_at(&first).await;
    let after_restart =
        statuses_when(&mut restarted, &deployment, |listed| !listed.is_empty()).await;
    assert_eq!(
        after_restart, expected,
        "a restarted replica forgets nothing"
    );
    deployment.wait_healthy().await;

    // And it goes on: bob's choice through the gateway is applied by the
    // restarted replica.
    let chose = bob
        .request(json!({"type": "set_status", "id": "s2", "status": "available"}))
        .await;
    assert_eq!(chose["type"], "ack", "{chose}");
    statuses_when(&mut restarted, &deployment, |listed| {
        listed.get(&1962).map(|(status, _, _)| *status)
            == Some(pb::OperatorStatus::Available as i32)
    })
    .await;

    deployment.terminate("gateway").await;
    for part in ["chat", "handoff", "presence", "notification"] {
        deployment.terminate(part).await;
    }
    redis.kill().await;
    database.remove().await;
}
