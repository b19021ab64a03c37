//! How much `EventLog::deliver_many` saves over one `deliver` per event:
//! delivers the same events (a user, then the dialog's room, alternately, as
//! the chat path does) one by one and in batches, to the memory log and, when
//! it answers, to Redis, and prints events per second for each.
//!
//! ```text
//! cargo run --release -p chatai-kit --example deliver_batches -- [EVENTS] [BATCH] [REDIS_URL]
//! ```
//!
//! Defaults: 100 000 events, batches of 8, `redis://127.0.0.1:6379`. The
//! Redis keys go under a fresh `bench-…` prefix and expire two minutes later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatai_kit::config::EventLogConfig;
use chatai_kit::events::memory::MemoryLog;
use chatai_kit::events::redis::RedisLog;
use chatai_kit::events::{Event, EventLog, EventLogError, Recipient};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("usage: deliver_batches [EVENTS] [BATCH] [REDIS_URL] ({0})")]
    Usage(String),
    #[error(transparent)]
    Log(#[from] EventLogError),
}

/// The `n`th delivery: user `n / 2 % 1000` and then its dialog's room.
fn delivery(n: usize, event: &Arc<Event>) -> (Recipient, Arc<Event>) {
    let user = (n / 2 % 1000) as i64;
    let recipient = if n.is_multiple_of(2) {
        Recipient::User(user)
    } else {
        Recipient::dialog_room(user)
    };
    (recipient, event.clone())
}

async fn run(
    name: &str,
    log: Arc<dyn EventLog>,
    events: usize,
    batch: usize,
) -> Result<(), BenchError> {
    // A live reader, as an attached gateway would have.
    let mut live = log.live();
    let reader = tokio::spawn(async move { while live.recv().await.is_ok() {} });
    let event = Arc::new(Event::new(
        "ai_response",
        &serde_json::json!({ "text": "hello" }),
    )?);

    let start = Instant::now();
    for n in 0..events {
        let (recipient, event) = delivery(n, &event);
        log.deliver(recipient, event).await?;
    }
    let single = start.elapsed();

    let start = Instant::now();
    let mut n = 0;
    while n < events {
        let size = batch.min(events - n);
        let deliveries = (n..n + size).map(|n| delivery(n, &event)).collect();
        log.deliver_many(deliveries).await?;
        n += size;
    }
    let batched = start.elapsed();
    reader.abort();

    let rate = |took: Duration| events as f64 / took.as_secs_f64();
    println!(
        "{name:>6}: {events} events singly {:>8.0} ms = {:>9.0}/s; in batches of {batch} {:>8.0} ms = {:>9.0}/s ({:.1}x)",
        single.as_secs_f64() * 1e3,
        rate(single),
        batched.as_secs_f64() * 1e3,
        rate(batched),
        single.as_secs_f64() / batched.as_secs_f64(),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BenchError> {
    let mut args = std::env::args().skip(1);
    let parse = |arg: Option<String>, default: usize| match arg {
        None => Ok(default),
        Some(arg) => arg
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(BenchError::Usage(format!("not a positive number: {arg}"))),
    };
    let events = parse(args.next(), 100_000)?;
    let batch = parse(args.next(), 8)?;
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let config = EventLogConfig {
        retention_secs: 60,
        ..EventLogConfig::default()
    };

    run("memory", Arc::new(MemoryLog::new(&config)), events, batch).await?;

    let shutdown = CancellationToken::new();
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    match RedisLog::connect(&url, &prefix, "bench", &config, shutdown.clone()).await {
        Ok((log, relay)) => {
            let relay = tokio::spawn(relay);
            run("redis", Arc::new(log), events, batch).await?;
            shutdown.cancel();
            let _ = relay.await;
        }
        Err(err) => println!(" redis: skipped ({err})"),
    }
    Ok(())
}
