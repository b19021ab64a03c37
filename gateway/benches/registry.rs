//! Micro-benchmarks of `Registry::dispatch`, the fan-out of one service
//! event to the connections it is for: a durable event to a user with five
//! connections, and a live event to 10 000 connections (`Everyone`, and
//! `Role(User)`, which filters while it walks).
//!
//! Each connection gets a real bounded `flume` queue, as in the gateway. The
//! queues must never fill — a full queue stops the connection as too slow and
//! later dispatches would skip it — so only `BATCH` dispatches are timed at a
//! time and the queues are drained (untimed) in between; every batch checks
//! that each connection got every event.
//!
//! Run with `cargo bench -p chatai-gateway --bench registry`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatai_gateway::registry::{Conn, Outbound, Registry};
use chatai_gateway::service_id::ServiceId;
use chatai_kit::events::{Delivery, Event, Recipient};
use chatai_kit::identity::Role;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

/// Dispatches timed between two drains.
const BATCH: u64 = 32;
/// Queue capacity per connection: more than a batch, so nothing is ever full.
const QUEUE: usize = BATCH as usize * 2;
/// Connections in the fan-out benchmarks.
const FAN_OUT: usize = 10_000;

fn delivery(recipient: Recipient, position: u64, kind: &str, body: &str) -> Delivery {
    Delivery {
        recipient,
        position,
        event: Arc::new(Event {
            id: "0192f6c3-5b1e-7c2a-9d4e-8f0a1b2c3d4e".into(),
            kind: kind.into(),
            body: body.as_bytes().to_vec().into(),
            timestamp_ms: 1_790_000_000_123,
            trace_context: Default::default(),
            origin_connection: None,
            durable_recipient: None,
        }),
    }
}

/// A registry holding `count` connections of `principal(i)` and their queues.
fn registry_with(
    count: usize,
    principal: impl Fn(usize) -> Recipient,
) -> (Registry, Vec<flume::Receiver<Outbound>>) {
    let registry = Registry::new("bench".into());
    let mut queues = Vec::with_capacity(count);
    for i in 0..count {
        let (tx, rx) = flume::bounded(QUEUE);
        let conn = Conn::new(
            registry.next_id(),
            Role::User,
            principal(i),
            tx,
            CancellationToken::new(),
        );
        registry.register(Arc::new(conn), 5);
        queues.push(rx);
    }
    (registry, queues)
}

/// Empties every queue; returns how many frames were in them.
fn drain(queues: &mut [flume::Receiver<Outbound>]) -> usize {
    let mut frames = 0;
    for queue in queues {
        while queue.try_recv().is_ok() {
            frames += 1;
        }
    }
    frames
}

/// Times `iters` dispatches of `delivery`, `BATCH` at a time, draining the
/// queues between batches and checking nothing was dropped.
fn timed_dispatches(
    registry: &Registry,
    queues: &mut [flume::Receiver<Outbound>],
    delivery: &Delivery,
    iters: u64,
) -> Duration {
    let receivers = queues.len();
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let batch = left.min(BATCH);
        let mut sent = 0;
        let start = Instant::now();
        for _ in 0..batch {
            sent += registry.dispatch(ServiceId::Chat, black_box(delivery));
        }
        elapsed += start.elapsed();
        let expected = batch as usize * receivers;
        assert_eq!(sent, expected, "a queue filled up: the benchmark is wrong");
        assert_eq!(drain(queues), expected);
        left -= batch;
    }
    elapsed
}

fn durable_to_one_user(c: &mut Criterion) {
    let (registry, mut queues) = registry_with(5, |_| Recipient::User(456));
    let event = delivery(
        Recipient::User(456),
        (0x1234_5678_u64 << 32) | 42,
        "ai_response",
        r#"{"dialog_id":123456,"message_id":987654,"message":"On the sign-in page choose \"Forgot password?\", enter the email address of your account and follow the link we send you.","assistant_name":"Support Assistant","tokens_used":62}"#,
    );
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(queues.len() as u64));
    group.bench_function("durable ai_response to a user with 5 connections", |b| {
        b.iter_custom(|iters| timed_dispatches(&registry, &mut queues, &event, iters))
    });
    group.finish();
}

fn live_fan_out(c: &mut Criterion) {
    let (registry, mut queues) = registry_with(FAN_OUT, |i| Recipient::User(1_000_000 + i as i64));
    let body =
        r#"{"level":"info","message":"Scheduled maintenance tonight from 02:00 to 02:30 UTC."}"#;
    let everyone = delivery(Recipient::Everyone, 0, "system_alert", body);
    let users = delivery(Recipient::Role(Role::User), 0, "system_alert", body);
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(FAN_OUT as u64));
    group.sample_size(30);
    group.bench_function("live system_alert to Everyone, 10000 connections", |b| {
        b.iter_custom(|iters| timed_dispatches(&registry, &mut queues, &everyone, iters))
    });
    group.bench_function("live system_alert to Role(User), 10000 connections", |b| {
        b.iter_custom(|iters| timed_dispatches(&registry, &mut queues, &users, iters))
    });
    group.finish();
}

criterion_group!(benches, durable_to_one_user, live_fan_out);
criterion_main!(benches);
