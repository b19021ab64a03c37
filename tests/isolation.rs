//! Deployments sharing one Redis server stay apart: two systems on two
//! database numbers of the same server never see each other's events, even
//! under the same key prefix (Redis pub/sub ignores the database number).

use crate::common::{self, TestOptions, spawn_app};
use serde_json::json;

/// Redis for the tests (`scripts/test` starts it), without a database number.
fn redis_server() -> String {
    let url =
        std::env::var("CHATAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    url.trim_end_matches('/').to_owned()
}

/// Databases 14 and 15 of the server: no other test uses them. Keys are
/// under a prefix of this run's own, so concurrent runs do not meet either
/// (and nothing is flushed that another run may be using).
fn on_database(prefix: &str, database: u8) -> TestOptions {
    let mut options = TestOptions::default();
    options.common.redis_url = Some(format!("{}/{database}", redis_server()));
    options.common.redis_prefix = prefix.to_owned();
    options
}

/// Deletes every key under `prefix` in `database`.
async fn remove_keys(prefix: &str, database: u8) {
    let client = redis::Client::open(format!("{}/{database}", redis_server())).expect("a URL");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: u64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut redis)
            .await
            .expect("DEL");
    }
}

/// User 456 of deployment A (database 14) and user 456 of deployment B
/// (database 15, same prefix) each chat: B's user gets its own answer and
/// never A's: A's answer is published before B's user even asks, so on a
/// channel the two shared it would reach B's user first.
#[tokio::test]
async fn two_deployments_on_one_redis_server_never_share_events() {
    let prefix = format!("e2e-isolation-{}", uuid::Uuid::new_v4().simple());
    let a = spawn_app(on_database(&prefix, 14)).await;
    let b = spawn_app(on_database(&prefix, 15)).await;
    let (mut user_a, _) = a.connect_user(456).await;
    let (mut user_b, _) = b.connect_user(456).await;

    let (_, answer_a) = user_a
        .chat_and_answer("a1", None, common::FAQ_QUESTION)
        .await;
    user_b
        .send_json(&json!({ "type": "chat_message", "id": "b1", "message": common::FAQ_QUESTION }))
        .await;
    let answer_b = user_b.next_of("ai_response").await;
    assert_ne!(
        answer_b["event_id"], answer_a["event_id"],
        "deployment B's user got deployment A's answer: {answer_b}"
    );

    a.stop().await;
    b.stop().await;
    remove_keys(&prefix, 14).await;
    remove_keys(&prefix, 15).await;
}
