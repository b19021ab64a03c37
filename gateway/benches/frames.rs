//! Micro-benchmarks of the per-frame work: preparing a service event once
//! per delivery, rendering it per connection (with and without the cursor
//! spliced in), the cursor's text form, and parsing a client `chat_message`.
//!
//! Run with `cargo bench -p chatai-gateway --bench frames`; BENCHMARKS.md
//! records the numbers.

use std::hint::black_box;
use std::sync::Arc;

use chatai_gateway::cursor::Cursor;
use chatai_gateway::frames::inbound;
use chatai_gateway::frames::outbound::PreparedEvent;
use chatai_gateway::service_id::ServiceId;
use chatai_kit::events::{Delivery, Event, Recipient};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// An `ai_response` as the chat service serializes it (about 400 bytes).
const AI_RESPONSE_BODY: &str = r#"{"dialog_id":123456,"message_id":987654,"message":"On the sign-in page choose \"Forgot password?\", enter the email address of your account and follow the link we send you. The link is valid for one hour; if it does not arrive, check your spam folder or ask for a new one.","assistant_name":"Support Assistant","tokens_used":62}"#;

/// A `chat_message` as a client sends it.
const CHAT_MESSAGE: &str = r#"{"type":"chat_message","id":"m42","dialog_id":123456,"message":"How do I reset my password? I forgot it and the link does not arrive."}"#;

fn delivery(position: u64) -> Delivery {
    Delivery {
        recipient: Recipient::User(456),
        position,
        event: Arc::new(Event {
            id: "0192f6c3-5b1e-7c2a-9d4e-8f0a1b2c3d4e".into(),
            kind: "ai_response".into(),
            body: AI_RESPONSE_BODY.as_bytes().to_vec().into(),
            timestamp_ms: 1_790_000_000_123,
            trace_context: Default::default(),
            origin_connection: Some("a1b2c3d4:17".into()),
            durable_recipient: None,
        }),
    }
}

fn prepared_events(c: &mut Criterion) {
    let durable = delivery((0x1234_5678_u64 << 32) | 42);
    let prepared =
        PreparedEvent::prepare(ServiceId::Chat, &durable).expect("the body is an object");
    let cursor = Cursor([(0x1234_5678_u64 << 32) | 42, 7, 0, 3]).encode();

    let mut group = c.benchmark_group("outbound");
    group.throughput(Throughput::Elements(1));
    group.bench_function("prepare ai_response", |b| {
        b.iter(|| PreparedEvent::prepare(ServiceId::Chat, black_box(&durable)))
    });
    group.bench_function("render without cursor", |b| {
        b.iter(|| black_box(&prepared).render(None))
    });
    group.bench_function("render with cursor", |b| {
        b.iter(|| black_box(&prepared).render(Some(black_box(&cursor))))
    });
    // What a connection does per durable event: advance and encode its
    // cursor, then splice it in.
    group.bench_function("encode cursor + render with it", |b| {
        let mut position = Cursor([(0x1234_5678_u64 << 32) | 42, 7, 0, 3]);
        b.iter(|| {
            position.set(ServiceId::Chat, position.get(ServiceId::Chat) + 1);
            let cursor = position.encode();
            black_box(&prepared).render(Some(&cursor))
        })
    });
    group.bench_function("prepare + render (live event, once per fan-out)", |b| {
        let live = delivery(0);
        b.iter(|| {
            PreparedEvent::prepare(ServiceId::Chat, black_box(&live))
                .map(|p| p.render(None))
                .ok()
        })
    });
    group.finish();
}

fn cursors(c: &mut Criterion) {
    let cursor = Cursor([(0x1234_5678_u64 << 32) | 4242, (0x9abc_u64 << 32) | 7, 0, 3]);
    let text = cursor.encode();
    let mut group = c.benchmark_group("cursor");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| b.iter(|| black_box(&cursor).encode()));
    group.bench_function("decode", |b| {
        b.iter(|| Cursor::decode(black_box(&text)).is_ok())
    });
    group.finish();
}

fn inbound_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbound");
    group.throughput(Throughput::Bytes(CHAT_MESSAGE.len() as u64));
    group.bench_function("parse chat_message", |b| {
        b.iter(|| inbound::parse(black_box(CHAT_MESSAGE)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, prepared_events, cursors, inbound_frames);
criterion_main!(benches);
