//! Times the store's write path: `TASKS` concurrent callers store
//! `MESSAGES` messages in all, each waiting for its acknowledgement (so a
//! message counted is committed).
//!
//! ```text
//! cargo run --release -p chatai-chat --example append_throughput [URL] [MESSAGES] [TASKS]
//! ```
//!
//! URL defaults to a fresh SQLite file in a temporary folder (WAL mode, as
//! the service runs it); `postgres://…` names an empty database to use.
//! Two runs: `append` (user messages with idempotency keys into existing
//! dialogs) and `chat` (what one chat turn costs the store: `ensure_user`,
//! the user's message, the assistant's answer with its charge; two messages
//! stored per turn).

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

use chatai_chat::store::{self, ChatStore, DialogRef, Money, NewMessage, Sender};
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let folder = tempfile::tempdir()?;
    let url = args
        .next()
        .unwrap_or_else(|| format!("sqlite://{}", folder.path().join("bench.db").display()));
    let messages: usize = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let tasks: usize = args.next().map_or(Ok(200), |n| n.parse())?;
    let per_task = messages / tasks.max(1);
    let store = store::connect(&url).await?;

    let mut dialogs = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let user = task as i64 + 1;
        store
            .ensure_user(user, None, Money::from_units(1e6))
            .await?;
        dialogs.push((user, store.create_dialog(user).await?.id));
    }

    for mode in ["append", "chat"] {
        let started = Instant::now();
        let mut running = JoinSet::new();
        for &(user, dialog_id) in &dialogs {
            let store = Arc::clone(&store);
            running.spawn(async move { caller(store, mode, user, dialog_id, per_task).await });
        }
        let mut stored = 0;
        while let Some(joined) = running.join_next().await {
            stored += joined??;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{mode:>6}: {stored} messages from {tasks} tasks in {seconds:.2} s = {:.0} messages/s",
            stored as f64 / seconds
        );
    }
    Ok(())
}

/// One caller's messages, each awaited; returns how many were stored.
async fn caller(
    store: Arc<dyn ChatStore>,
    mode: &'static str,
    user: i64,
    dialog_id: i64,
    count: usize,
) -> Result<usize, store::StoreError> {
    let mut stored = 0;
    for i in 0..count {
        let key = format!("{mode}-{i}");
        let text = format!("message {i} of user {user}: a few words of chat");
        if mode == "chat" {
            store.ensure_user(user, Some("bench"), Money::ZERO).await?;
        }
        let (question, _) = store
            .append_message(NewMessage {
                dialog: DialogRef::Existing(dialog_id),
                sender: Sender::User,
                sender_id: Some(user),
                text: &text,
                tokens_used: 0,
                idempotency_key: Some(&key),
            })
            .await?;
        stored += 1;
        if mode == "chat" {
            let key = format!("answer:{}", question.id);
            store
                .append_answer(
                    NewMessage {
                        dialog: DialogRef::Existing(dialog_id),
                        sender: Sender::Assistant,
                        sender_id: None,
                        text: "an answer of the assistant, somewhat longer than the question",
                        tokens_used: 42,
                        idempotency_key: Some(&key),
                    },
                    Some((user, Money(1_000))),
                )
                .await?;
            stored += 1;
        }
    }
    Ok(stored)
}
