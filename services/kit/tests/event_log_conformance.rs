//! The [`EventLog`] conformance suite: what every event-log backend must do,
//! written once and run against each backend.
//!
//! Each case is an `async fn case(log: Arc<dyn EventLog>)` below. The
//! [`conformance!`] macro at the bottom instantiates the whole suite for one
//! backend: a module named after the backend with one `#[tokio::test]` per
//! case. **To add a backend, add one entry to the `conformance!` block at the
//! end of this file**, naming the backend and saying how to open a fresh log
//! from an [`EventLogConfig`] (the body may `.await`), e.g.
//!
//! ```ignore
//! conformance! {
//!     memory: |config| Arc::new(MemoryLog::new(&config)),
//!     redis: |config| {
//!         // A fresh key prefix per log, so cases never share state.
//!         let (log, relay) = RedisLog::connect(&redis_url(), &fresh_prefix(), &config, token())
//!             .await
//!             .expect("redis at CHATAI_TEST_REDIS_URL");
//!         tokio::spawn(relay);
//!         Arc::new(log)
//!     },
//! }
//! ```
//!
//! Every call of the constructor must open a log that shares nothing with
//! the logs of other calls (a separate key prefix for Redis, say): one case
//! opens two logs to simulate a restart, and cases run in parallel.
//!
//! Cases that need a particular configuration (small caps, zero retention)
//! say so in the macro's case list.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chatai_kit::config::EventLogConfig;
use chatai_kit::events::memory::MemoryLog;
use chatai_kit::events::redis::RedisLog;
use chatai_kit::events::{Delivery, Event, EventLog, LogPage, Recipient, ReplayFrom};
use chatai_kit::identity::Role;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How long any single wait may take before the case fails.
const WAIT: Duration = Duration::from_secs(10);

/// The configuration of most cases: the defaults.
fn default_config() -> EventLogConfig {
    EventLogConfig::default()
}

/// A log that keeps at most `max` events per recipient.
fn capped(max: usize) -> EventLogConfig {
    EventLogConfig {
        max_per_recipient: max,
        ..EventLogConfig::default()
    }
}

/// A log that keeps nothing older than now once trimmed.
fn no_retention() -> EventLogConfig {
    EventLogConfig {
        retention_secs: 0,
        ..EventLogConfig::default()
    }
}

fn event(n: usize) -> Arc<Event> {
    Arc::new(Event::new("test_event", &serde_json::json!({ "n": n })).expect("event"))
}

async fn deliver(log: &Arc<dyn EventLog>, recipient: &Recipient, n: usize) -> (u64, Arc<Event>) {
    let event = event(n);
    let position = log
        .deliver(recipient.clone(), event.clone())
        .await
        .expect("deliver");
    (position, event)
}

/// Delivers `count` events to `recipient`; their positions and events.
async fn deliver_many(
    log: &Arc<dyn EventLog>,
    recipient: &Recipient,
    count: usize,
) -> Vec<(u64, Arc<Event>)> {
    let mut delivered = Vec::with_capacity(count);
    for n in 0..count {
        delivered.push(deliver(log, recipient, n).await);
    }
    delivered
}

async fn read(
    log: &Arc<dyn EventLog>,
    recipient: &Recipient,
    from: ReplayFrom,
    limit: usize,
) -> LogPage {
    log.read(recipient, from, limit).await.expect("read")
}

async fn next_live(live: &mut broadcast::Receiver<Delivery>) -> Delivery {
    tokio::time::timeout(WAIT, live.recv())
        .await
        .expect("a live delivery in time")
        .expect("the live fan-out is open")
}

fn positions(page: &LogPage) -> Vec<u64> {
    page.deliveries.iter().map(|d| d.position).collect()
}

fn event_ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.event.id.clone()).collect()
}

/// Waits until the clock has moved past every event delivered so far, so a
/// zero retention trims them all.
async fn let_the_clock_move() {
    let start = chatai_kit::now_ms();
    while chatai_kit::now_ms() <= start + 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------

/// Positions strictly increase per recipient, one step per event, whatever
/// is delivered to other recipients in between; live-only recipients get 0.
async fn positions_increase_per_recipient(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let bob = Recipient::User(2);
    // Same id, different kind: a different recipient.
    let operator = Recipient::Operator(1);
    let mut seen: Vec<(Recipient, u64)> = Vec::new();
    for n in 0..6 {
        seen.push((alice.clone(), deliver(&log, &alice, n).await.0));
        if n % 2 == 0 {
            seen.push((bob.clone(), deliver(&log, &bob, n).await.0));
            seen.push((operator.clone(), deliver(&log, &operator, n).await.0));
        }
        let room = Recipient::dialog_room(7);
        assert_eq!(deliver(&log, &room, n).await.0, 0, "rooms are live only");
    }
    for recipient in [&alice, &bob, &operator] {
        let mine: Vec<u64> = seen
            .iter()
            .filter(|(r, _)| r == recipient)
            .map(|(_, p)| *p)
            .collect();
        assert!(mine[0] > 0, "{recipient}: durable positions are never 0");
        for pair in mine.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "{recipient}: positions step by one, independent of other recipients: {mine:?}"
            );
        }
    }
    for recipient in [Recipient::Role(Role::Operator), Recipient::Everyone] {
        assert_eq!(deliver(&log, &recipient, 0).await.0, 0);
    }
}

/// A live receiver gets every delivery published after it subscribed, in
/// order, durable ones with their positions and live-only ones with 0; the
/// live-only recipients have nothing to read. (One published just before it
/// subscribed may still reach it through an asynchronous backend such as
/// Redis pub/sub; consumers drop such repeats by position.)
async fn live_receivers_get_deliveries_in_position_order(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let room = Recipient::dialog_room(3);
    let (_, before) = deliver(&log, &alice, 100).await;
    let mut live = log.live();
    let sequence = [
        alice.clone(),
        room.clone(),
        Recipient::User(2),
        alice.clone(),
        Recipient::Role(Role::Operator),
        Recipient::Everyone,
        alice.clone(),
        Recipient::Operator(9),
    ];
    let mut expected = Vec::new();
    for (n, recipient) in sequence.iter().enumerate() {
        let (position, event) = deliver(&log, recipient, n).await;
        assert_eq!(position == 0, !recipient.is_durable());
        expected.push((recipient.clone(), position, event.id.clone()));
    }
    for (recipient, position, id) in &expected {
        let mut delivery = next_live(&mut live).await;
        if delivery.event.id == before.id {
            delivery = next_live(&mut live).await;
        }
        assert_eq!(&delivery.recipient, recipient);
        assert_eq!(delivery.position, *position, "{recipient}");
        assert_eq!(&delivery.event.id, id, "{recipient}");
    }
    let alice_positions: Vec<u64> = expected
        .iter()
        .filter(|(r, _, _)| r == &alice)
        .map(|(_, p, _)| *p)
        .collect();
    assert!(alice_positions.windows(2).all(|w| w[0] < w[1]));

    for recipient in [room, Recipient::Role(Role::Operator), Recipient::Everyone] {
        for from in [ReplayFrom::After(0), ReplayFrom::SinceLastSeen] {
            let page = read(&log, &recipient, from, 100).await;
            assert!(
                page.deliveries.is_empty(),
                "{recipient} is live only, nothing to read"
            );
            assert!(!page.more);
        }
    }
}

/// `read(After(p))` returns exactly the events after `p`, in order, in pages
/// of at most `limit`, with `start_after`, `next_after` and `more` right.
async fn read_after_pages_in_order(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let bob = Recipient::User(2);
    let mut delivered = Vec::new();
    for n in 0..10 {
        delivered.push(deliver(&log, &alice, n).await);
        deliver(&log, &bob, n).await; // interleaved, must not show up
    }
    let head = delivered[9].0;

    // From the very start (before the first position): everything.
    let all = read(&log, &alice, ReplayFrom::After(delivered[0].0 - 1), 100).await;
    assert!(all.complete);
    assert!(!all.more);
    assert_eq!(all.next_after, head);
    assert_eq!(
        positions(&all),
        delivered.iter().map(|(p, _)| *p).collect::<Vec<_>>()
    );

    // After the third, three at a time.
    let mut from = delivered[2].0;
    let mut pages = Vec::new();
    loop {
        let page = read(&log, &alice, ReplayFrom::After(from), 3).await;
        assert!(page.complete);
        assert_eq!(page.start_after, from);
        assert!(page.deliveries.len() <= 3, "a page holds at most `limit`");
        assert!(page.deliveries.iter().all(|d| d.recipient == alice));
        assert_eq!(
            page.next_after,
            page.deliveries.last().map_or(from, |d| d.position)
        );
        assert_eq!(page.more, page.next_after < head);
        from = page.next_after;
        let more = page.more;
        pages.push(page);
        if !more {
            break;
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(pages.len(), 3, "7 events in pages of 3");
    assert_eq!(from, head);
    let read_back: Vec<Delivery> = pages.into_iter().flat_map(|p| p.deliveries).collect();
    assert_eq!(
        read_back.iter().map(|d| d.position).collect::<Vec<_>>(),
        delivered[3..].iter().map(|(p, _)| *p).collect::<Vec<_>>()
    );
    assert_eq!(
        event_ids(&read_back),
        delivered[3..]
            .iter()
            .map(|(_, e)| e.id.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(read_back[0].event.body, delivered[3].1.body);
    assert_eq!(read_back[0].event.kind, "test_event");
}

/// Reading after the head returns nothing and is complete.
async fn read_after_head_is_empty_and_complete(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let delivered = deliver_many(&log, &alice, 4).await;
    let head = delivered[3].0;
    let page = read(&log, &alice, ReplayFrom::After(head), 100).await;
    assert!(page.deliveries.is_empty());
    assert!(page.complete);
    assert!(!page.more);
    assert_eq!(page.start_after, head);
    assert_eq!(page.next_after, head);
}

/// `SinceLastSeen` starts at the head while nothing was marked, and after
/// the marked position once something was.
async fn since_last_seen_starts_at_the_mark(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let delivered = deliver_many(&log, &alice, 5).await;
    let head = delivered[4].0;

    let unmarked = read(&log, &alice, ReplayFrom::SinceLastSeen, 100).await;
    assert_eq!(
        positions(&unmarked),
        delivered.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        "never released: everything retained is the offline queue"
    );
    assert!(unmarked.complete);
    assert!(!unmarked.more);
    assert_eq!(unmarked.start_after, 0);
    assert_eq!(unmarked.next_after, head);

    log.mark_seen(&alice, delivered[1].0)
        .await
        .expect("mark_seen");
    let marked = read(&log, &alice, ReplayFrom::SinceLastSeen, 100).await;
    assert!(marked.complete);
    assert_eq!(marked.start_after, delivered[1].0);
    assert_eq!(
        positions(&marked),
        delivered[2..].iter().map(|(p, _)| *p).collect::<Vec<_>>()
    );
    assert_eq!(marked.next_after, head);
    assert!(!marked.more);

    // A recipient the log never saw: nothing, from wherever its head is.
    let stranger = read(
        &log,
        &Recipient::Operator(77),
        ReplayFrom::SinceLastSeen,
        100,
    )
    .await;
    assert!(stranger.deliveries.is_empty());
    assert!(stranger.complete);
    assert!(!stranger.more);
}

/// A mark never moves backwards: an older position does not replace a
/// newer one.
async fn mark_seen_never_moves_backwards(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let delivered = deliver_many(&log, &alice, 6).await;
    log.mark_seen(&alice, delivered[4].0).await.expect("mark");
    log.mark_seen(&alice, delivered[1].0).await.expect("mark");
    let page = read(&log, &alice, ReplayFrom::SinceLastSeen, 100).await;
    assert_eq!(page.start_after, delivered[4].0);
    assert_eq!(positions(&page), vec![delivered[5].0]);
}

/// A cursor from another log instance (the service restarted) reads as
/// incomplete and never returns events that are not the ones after it.
async fn foreign_cursor_reads_incomplete(log: Arc<dyn EventLog>, restarted: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let before = deliver_many(&log, &alice, 5).await;

    // The new instance knows nothing of alice yet.
    for (position, _) in &before {
        let page = read(&restarted, &alice, ReplayFrom::After(*position), 100).await;
        assert!(
            !page.complete,
            "a cursor of the old log must not read as complete on an empty new log"
        );
        assert!(page.deliveries.is_empty());
    }

    // Nor once it has events of its own, fewer or more than before.
    let after = deliver_many(&restarted, &alice, 8).await;
    let new_head = after[7].0;
    let new_positions: HashSet<u64> = after.iter().map(|(p, _)| *p).collect();
    for (position, _) in &before {
        assert!(
            !new_positions.contains(position),
            "positions of a new log never repeat the old one's"
        );
        let page = read(&restarted, &alice, ReplayFrom::After(*position), 100).await;
        assert!(!page.complete, "old cursor {position} on the new log");
        assert!(page.deliveries.is_empty(), "never the wrong events");
        assert_eq!(
            page.next_after, new_head,
            "live delivery goes on from the head"
        );
        assert!(!page.more);
    }
}

/// With at most 5 events kept, a read from before the trimmed ones is
/// incomplete (nothing returned, next is the head) and a read from after
/// them is complete.
async fn trimming_by_count_makes_old_reads_incomplete(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let delivered = deliver_many(&log, &alice, 8).await;
    log.trim().await.expect("trim");
    let head = delivered[7].0;
    // Kept: the last five, delivered[3..].
    for from in [delivered[0].0 - 1, delivered[0].0, delivered[1].0] {
        let page = read(&log, &alice, ReplayFrom::After(from), 100).await;
        assert!(!page.complete, "after {from}: events were trimmed");
        assert!(page.deliveries.is_empty());
        assert_eq!(page.next_after, head);
        assert!(!page.more);
        assert_eq!(page.start_after, from);
    }
    for (index, (from, _)) in delivered.iter().enumerate().skip(2) {
        let page = read(&log, &alice, ReplayFrom::After(*from), 100).await;
        assert!(page.complete, "after {from}: nothing after it was trimmed");
        assert_eq!(
            positions(&page),
            delivered[index + 1..]
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
        );
        assert_eq!(page.next_after, head);
    }
    // Another recipient's log is capped on its own.
    let bob = Recipient::User(2);
    let bobs = deliver_many(&log, &bob, 2).await;
    let page = read(&log, &bob, ReplayFrom::After(bobs[0].0 - 1), 100).await;
    assert!(page.complete);
    assert_eq!(page.deliveries.len(), 2);
}

/// With zero retention, everything older than now goes on `trim()`: reads
/// from before the trimmed events become incomplete and return nothing.
async fn trimming_by_age_makes_old_reads_incomplete(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let delivered = deliver_many(&log, &alice, 3).await;
    let_the_clock_move().await;
    log.trim().await.expect("trim");
    for (position, _) in &delivered[..2] {
        let page = read(&log, &alice, ReplayFrom::After(*position), 100).await;
        assert!(!page.complete, "after {position}: events were trimmed");
        assert!(page.deliveries.is_empty());
        assert!(!page.more);
    }
}

/// Trimming everything a recipient had forgets none of its positions: the
/// head stays where it was (a read after it is complete, one from before the
/// trimmed events is not and points at it) and the next event gets a higher
/// position than any before — a cursor held across the trim must neither
/// skip new events nor see them as already delivered.
async fn trimming_everything_keeps_positions(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let delivered = deliver_many(&log, &alice, 3).await;
    let head = delivered[2].0;
    let_the_clock_move().await;
    log.trim().await.expect("trim");

    let at_head = read(&log, &alice, ReplayFrom::After(head), 100).await;
    assert!(
        at_head.complete,
        "nothing after the head was lost: a client that saw everything is not expired"
    );
    let from_start = read(&log, &alice, ReplayFrom::After(delivered[0].0 - 1), 100).await;
    assert!(!from_start.complete, "the first events were trimmed");
    let behind = read(&log, &alice, ReplayFrom::After(delivered[0].0), 100).await;
    assert!(!behind.complete);
    assert_eq!(behind.next_after, head, "the head does not move back");

    let (next, _) = deliver(&log, &alice, 3).await;
    assert!(
        next > head,
        "position {next} after trimming must exceed the old head {head}"
    );
}

/// Stats count the retained durable events and the recipients with a log;
/// live-only deliveries count for nothing.
async fn stats_count_retained_events(log: Arc<dyn EventLog>) {
    deliver_many(&log, &Recipient::User(1), 3).await;
    deliver_many(&log, &Recipient::Operator(2), 2).await;
    deliver(&log, &Recipient::Everyone, 9).await;
    let stats = log.stats().await.expect("stats");
    assert_eq!(stats.retained_events, 5);
    assert_eq!(stats.recipients, 2);
}

/// Many tasks delivering to one recipient at once get contiguous, unique
/// positions, and the live order is the position order.
async fn concurrent_deliveries_get_contiguous_positions(log: Arc<dyn EventLog>) {
    const TASKS: usize = 16;
    const EACH: usize = 50;
    let alice = Recipient::User(1);
    let mut live = log.live();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let log = log.clone();
        let alice = alice.clone();
        tasks.spawn(async move {
            let mut mine = Vec::with_capacity(EACH);
            for n in 0..EACH {
                let event = event(task * EACH + n);
                let position = log
                    .deliver(alice.clone(), event.clone())
                    .await
                    .expect("deliver");
                mine.push((position, event.id.clone()));
            }
            mine
        });
    }
    let mut delivered = Vec::with_capacity(TASKS * EACH);
    while let Some(mine) = tasks.join_next().await {
        delivered.extend(mine.expect("delivering task"));
    }
    delivered.sort();
    let first = delivered[0].0;
    let expected: Vec<u64> = (first..first + (TASKS * EACH) as u64).collect();
    assert_eq!(
        delivered.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        expected,
        "contiguous and unique"
    );

    for (position, id) in &delivered {
        let delivery = next_live(&mut live).await;
        assert_eq!(delivery.position, *position, "live order is position order");
        assert_eq!(&delivery.event.id, id, "the event delivered at {position}");
    }

    let page = read(&log, &alice, ReplayFrom::After(first - 1), TASKS * EACH).await;
    assert!(page.complete);
    assert_eq!(positions(&page), expected);
}

/// A mixed batch (durable and live-only recipients, one event shared by a
/// user and a room as the chat service sends it) gets its positions in input
/// order, 0 for the live-only ones, continuing each recipient's log; the
/// events read back in order and are published live in batch order.
async fn a_batch_gets_positions_in_order(log: Arc<dyn EventLog>) {
    let alice = Recipient::User(1);
    let bob = Recipient::User(2);
    let operator = Recipient::Operator(1);
    let room = Recipient::dialog_room(4);
    let mut live = log.live();
    let (head, first) = deliver(&log, &alice, 0).await;

    let reply = event(1);
    let batch: Vec<(Recipient, Arc<Event>)> = vec![
        (alice.clone(), reply.clone()),
        (room.clone(), reply.clone()),
        (bob.clone(), event(2)),
        (alice.clone(), event(3)),
        (Recipient::Everyone, event(4)),
        (operator.clone(), event(5)),
        (alice.clone(), event(6)),
        (Recipient::Role(Role::Operator), event(7)),
    ];
    let given = log.deliver_many(batch.clone()).await.expect("deliver_many");
    assert_eq!(given.len(), batch.len(), "one position per delivery");
    for ((recipient, _), position) in batch.iter().zip(&given) {
        assert_eq!(
            *position == 0,
            !recipient.is_durable(),
            "{recipient}: {position}"
        );
    }
    assert_eq!(
        [given[0], given[3], given[6]],
        [head + 1, head + 2, head + 3],
        "alice's log goes on from its head, in batch order"
    );

    // Each log holds its events, in order.
    let page = read(&log, &alice, ReplayFrom::After(head), 100).await;
    assert!(page.complete);
    assert_eq!(positions(&page), vec![head + 1, head + 2, head + 3]);
    assert_eq!(
        event_ids(&page.deliveries),
        vec![
            batch[0].1.id.clone(),
            batch[3].1.id.clone(),
            batch[6].1.id.clone()
        ]
    );
    for (index, recipient) in [(2, &bob), (5, &operator)] {
        let page = read(&log, recipient, ReplayFrom::After(given[index] - 1), 100).await;
        assert!(page.complete);
        assert_eq!(positions(&page), vec![given[index]], "{recipient}");
        assert_eq!(event_ids(&page.deliveries), vec![batch[index].1.id.clone()]);
    }

    // Live: the single delivery, then the batch in order.
    let delivery = next_live(&mut live).await;
    assert_eq!((delivery.position, &delivery.event.id), (head, &first.id));
    for ((recipient, event), position) in batch.iter().zip(&given) {
        let delivery = next_live(&mut live).await;
        assert_eq!(&delivery.recipient, recipient);
        assert_eq!(delivery.position, *position, "{recipient}");
        assert_eq!(delivery.event.id, event.id, "{recipient}");
        assert_eq!(delivery.event.body, event.body, "{recipient}");
    }

    // A single delivery after the batch goes on from it.
    assert_eq!(deliver(&log, &alice, 8).await.0, head + 4);
}

/// An empty batch is fine: no positions, nothing logged, nothing published.
async fn an_empty_batch_does_nothing(log: Arc<dyn EventLog>) {
    let mut live = log.live();
    let positions = log.deliver_many(Vec::new()).await.expect("an empty batch");
    assert!(positions.is_empty());
    assert_eq!(log.stats().await.expect("stats"), Default::default());
    // The first thing published after it is the first thing live.
    let marker = event(0);
    log.publish(Recipient::Everyone, marker.clone())
        .await
        .expect("publish");
    assert_eq!(next_live(&mut live).await.event.id, marker.id);
}

/// Batches delivered from many tasks at once are each published
/// contiguously (no other delivery in between) and in order, and a
/// recipient's positions stay contiguous across all of them.
async fn concurrent_batches_are_published_whole(log: Arc<dyn EventLog>) {
    const TASKS: usize = 8;
    const BATCHES: usize = 25;
    const SIZE: usize = 4;
    let alice = Recipient::User(1);
    let mut live = log.live();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let log = log.clone();
        let alice = alice.clone();
        tasks.spawn(async move {
            for n in 0..BATCHES {
                let tag = (task * BATCHES + n) * SIZE;
                let batch = vec![
                    (alice.clone(), event(tag)),
                    (Recipient::dialog_room(tag as i64), event(tag + 1)),
                    (alice.clone(), event(tag + 2)),
                    (Recipient::User(2 + task as i64), event(tag + 3)),
                ];
                let positions = log.deliver_many(batch).await.expect("deliver_many");
                assert_eq!(positions[2], positions[0] + 1, "nothing in between");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("delivering task");
    }
    let mut alice_positions = Vec::new();
    for _ in 0..TASKS * BATCHES {
        let whole: Vec<Delivery> = {
            let mut whole = Vec::with_capacity(SIZE);
            for _ in 0..SIZE {
                whole.push(next_live(&mut live).await);
            }
            whole
        };
        let tags: Vec<u64> = whole
            .iter()
            .map(|d| {
                let body: serde_json::Value =
                    serde_json::from_slice(&d.event.body).expect("a JSON body");
                body["n"].as_u64().expect("n")
            })
            .collect();
        let first = tags[0];
        assert_eq!(first % SIZE as u64, 0, "a batch starts here: {tags:?}");
        assert_eq!(
            tags,
            (first..first + SIZE as u64).collect::<Vec<_>>(),
            "whole, in order"
        );
        alice_positions.extend([whole[0].position, whole[2].position]);
    }
    alice_positions.sort();
    assert!(
        alice_positions.windows(2).all(|w| w[1] == w[0] + 1),
        "alice's positions are contiguous"
    );
}

// ---------------------------------------------------------------------------
// The suite, per backend.
// ---------------------------------------------------------------------------

/// Instantiates every case for each backend `name: |config| open`, where
/// `open` builds a fresh `Arc<dyn EventLog>` from `config: EventLogConfig`.
macro_rules! conformance {
    (@case $case:ident, $config:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            super::$case(open($config).await).await;
        }
    };
    ($($backend:ident: |$config:ident| $open:expr),+ $(,)?) => {$(
        mod $backend {
            use super::*;

            async fn open($config: EventLogConfig) -> Arc<dyn EventLog> {
                $open
            }

            conformance!(@case positions_increase_per_recipient, default_config());
            conformance!(@case live_receivers_get_deliveries_in_position_order, default_config());
            conformance!(@case read_after_pages_in_order, default_config());
            conformance!(@case read_after_head_is_empty_and_complete, default_config());
            conformance!(@case since_last_seen_starts_at_the_mark, default_config());
            conformance!(@case mark_seen_never_moves_backwards, default_config());
            conformance!(@case trimming_by_count_makes_old_reads_incomplete, capped(5));
            conformance!(@case trimming_by_age_makes_old_reads_incomplete, no_retention());
            conformance!(@case concurrent_deliveries_get_contiguous_positions, default_config());
            conformance!(@case stats_count_retained_events, default_config());
            conformance!(@case a_batch_gets_positions_in_order, default_config());
            conformance!(@case an_empty_batch_does_nothing, default_config());
            conformance!(@case concurrent_batches_are_published_whole, default_config());

            /// Two instances: the second is the first one after a restart.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn foreign_cursor_reads_incomplete() {
                super::foreign_cursor_reads_incomplete(
                    open(default_config()).await,
                    open(default_config()).await,
                )
                .await;
            }

            // Known failure of the memory backend: `MemoryLog::trim` removes
            // the logs it emptied (`self.logs.retain(..)` in memory.rs), and
            // with them their last position and last-seen mark, so the next
            // event reuses position `epoch + 1` and a cursor held across the
            // trim treats new events as already delivered. Remove the
            // `ignore` once that is fixed.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]

            async fn trimming_everything_keeps_positions() {
                super::trimming_everything_keeps_positions(open(no_retention()).await).await;
            }
        }
    )+};
}

/// Redis for the tests: `CHATAI_TEST_REDIS_URL` (`scripts/test` sets it).
fn redis_url() -> String {
    std::env::var("CHATAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

// One line per backend.
conformance! {
    memory: |config| Arc::new(MemoryLog::new(&config)),
    redis: |config| {
        // A fresh key prefix per log, so cases never share state.
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let (log, relay) = RedisLog::connect(&redis_url(), &prefix, "chat", &config, CancellationToken::new())
            .await
            .expect("Redis at CHATAI_TEST_REDIS_URL (scripts/test starts it)");
        tokio::spawn(relay);
        Arc::new(log)
    },
}
