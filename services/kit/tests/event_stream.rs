//! The `EventStream` gRPC service over a real socket: a [`ServiceHost`] on
//! 127.0.0.1:0 and the generated client, as a gateway uses them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatai_kit::config::{EventLogConfig, ServiceCommon};
use chatai_kit::events::stream::MAX_BATCH;
use chatai_kit::events::{Event, EventLog, Recipient};
use chatai_kit::grpc::ServeError;
use chatai_kit::host::ServiceHost;
use chatai_kit::identity::Role;
use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use chatai_testkit::TestGateway;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A service serving only `EventStream`, on its own port.
struct Service {
    addr: SocketAddr,
    log: Arc<dyn EventLog>,
    shutdown: CancellationToken,
    served: JoinHandle<Result<(), ServeError>>,
}

impl Service {
    async fn start(events: EventLogConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let common = ServiceCommon {
            events,
            ..ServiceCommon::default()
        };
        let host = ServiceHost::start(&common, "test", CancellationToken::new())
            .await
            .expect("a memory event log opens");
        let (log, shutdown) = (host.log.clone(), host.shutdown().clone());
        let served = tokio::spawn(host.serve(listener, None, &[]));
        Service {
            addr,
            log,
            shutdown,
            served,
        }
    }

    async fn client(&self) -> EventStreamClient<Channel> {
        EventStreamClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// Delivers a fresh event to `recipient`; its position and the event.
    async fn deliver(&self, recipient: &Recipient, n: usize) -> (u64, Arc<Event>) {
        self.deliver_body(recipient, serde_json::json!({ "n": n }))
            .await
    }

    async fn deliver_body(
        &self,
        recipient: &Recipient,
        body: serde_json::Value,
    ) -> (u64, Arc<Event>) {
        let event = Arc::new(Event::new("test_event", &body).expect("event"));
        let position = self
            .log
            .deliver(recipient.clone(), event.clone())
            .await
            .expect("deliver");
        (position, event)
    }

    /// Cancels the shutdown token and waits for the server to stop.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("the server stops in time")
            .expect("the server task")
            .expect("the server stops cleanly");
    }
}

fn replay_request(
    recipient: &Recipient,
    from: pb::replay_request::From,
    limit: u32,
) -> pb::ReplayRequest {
    pb::ReplayRequest {
        recipient: Some(recipient.into()),
        from: Some(from),
        limit,
    }
}

async fn replay(
    client: &mut EventStreamClient<Channel>,
    request: pb::ReplayRequest,
) -> pb::ReplayResponse {
    tokio::time::timeout(WAIT, client.replay(request))
        .await
        .expect("replay in time")
        .expect("replay")
        .into_inner()
}

fn after(position: u64) -> pb::replay_request::From {
    pb::replay_request::From::AfterPosition(position)
}

fn since_last_seen() -> pb::replay_request::From {
    pb::replay_request::From::SinceLastSeen(true)
}

fn positions(deliveries: &[pb::Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.position).collect()
}

/// Subscribe is acknowledged with its request id, and then the recipient's
/// events arrive with their position and every field of the event intact.
#[tokio::test]
async fn subscribed_recipients_receive_their_deliveries() {
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    let mut attached = TestGateway::attach(&mut client).await;
    let alice = Recipient::User(1);
    attached.subscribe(42, &alice).await;

    let event = Event::new(
        "ai_response",
        &serde_json::json!({ "dialog_id": 7, "text": "hi" }),
    )
    .expect("event")
    .with_origin(Some("gw:3".into()));
    let event = Arc::new(event);
    let position = service
        .log
        .deliver(alice.clone(), event.clone())
        .await
        .expect("deliver");
    assert!(position > 0);

    let delivery = attached.next_delivery().await;
    assert_eq!(delivery.position, position);
    assert_eq!(delivery.recipient, Some((&alice).into()));
    let wire = delivery.event.expect("the event");
    assert_eq!(wire.event_id, event.id);
    assert_eq!(wire.r#type, "ai_response");
    assert_eq!(wire.body, event.body.to_vec());
    assert_eq!(wire.timestamp_ms, event.timestamp_ms);
    assert_eq!(wire.origin_connection, "gw:3");
    assert_eq!(wire.trace_context, event.trace_context);

    // A second one comes after it.
    let (next, _) = service.deliver(&alice, 2).await;
    assert_eq!(attached.next_delivery().await.position, next);
    assert!(next > position);

    // Live-only recipients come through too, with position 0.
    let room = Recipient::dialog_room(7);
    attached.subscribe(43, &room).await;
    service.deliver(&room, 3).await;
    let delivery = attached.next_delivery().await;
    assert_eq!(delivery.position, 0);
    assert_eq!(delivery.recipient, Some((&room).into()));

    service.stop().await;
}

/// Reads `count` deliveries as they come; the deliveries and how many
/// messages carried them (a batch counts once).
async fn read_raw(attached: &mut TestGateway, count: usize) -> (Vec<pb::Delivery>, Vec<usize>) {
    let mut deliveries = Vec::with_capacity(count);
    let mut messages = Vec::new();
    while deliveries.len() < count {
        match attached.next_raw().await {
            pb::service_message::Msg::Delivery(delivery) => {
                messages.push(1);
                deliveries.push(delivery);
            }
            pb::service_message::Msg::DeliveryBatch(batch) => {
                let size = batch.deliveries.len();
                assert!(
                    (2..=MAX_BATCH).contains(&size),
                    "a batch holds 2 to {MAX_BATCH} deliveries, not {size}"
                );
                messages.push(size);
                deliveries.extend(batch.deliveries);
            }
            other => panic!("expected deliveries, got {other:?}"),
        }
    }
    assert_eq!(deliveries.len(), count, "no more than the deliveries made");
    (deliveries, messages)
}

fn burst(recipients: &[Recipient], count: usize) -> Vec<(Recipient, Arc<Event>)> {
    (0..count)
        .map(|n| {
            let event = Event::new("test_event", &serde_json::json!({ "n": n })).expect("event");
            (recipients[n % recipients.len()].clone(), Arc::new(event))
        })
        .collect()
}

/// A burst of deliveries that are ready at once reaches a gateway that
/// accepts batches in fewer messages than events (`DeliveryBatch`es of at
/// most `MAX_BATCH`), gap-free and in order; a `Subscribed` after it keeps its
/// place, and the next burst, for both recipients, comes in order too.
#[tokio::test]
async fn a_burst_arrives_batched_and_in_order() {
    const EVENTS: usize = 300;
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    let mut attached = TestGateway::attach(&mut client).await;
    let alice = Recipient::User(1);
    let bob = Recipient::User(2);
    attached.subscribe(1, &alice).await;

    let batch = burst(std::slice::from_ref(&alice), EVENTS);
    let delivered = service
        .log
        .deliver_many(batch.clone())
        .await
        .expect("deliver_many");
    let (received, messages) = read_raw(&mut attached, EVENTS).await;
    assert_eq!(positions(&received), delivered, "gap-free and in order");
    for (wire, (_, event)) in received.iter().zip(&batch) {
        assert_eq!(wire.event.as_ref().map(|e| &e.event_id), Some(&event.id));
    }
    assert!(
        messages.len() < EVENTS && messages.iter().any(|&size| size > 1),
        "ready deliveries go together: {messages:?}"
    );

    // Subscribed comes alone, in its place (TestGateway::subscribe checks).
    attached.subscribe(2, &bob).await;
    let batch = burst(&[alice.clone(), bob.clone(), Recipient::User(3)], EVENTS);
    let delivered = service
        .log
        .deliver_many(batch.clone())
        .await
        .expect("deliver_many");
    let wanted: Vec<u64> = batch
        .iter()
        .zip(&delivered)
        .filter(|((recipient, _), _)| *recipient != Recipient::User(3))
        .map(|(_, position)| *position)
        .collect();
    let (received, _) = read_raw(&mut attached, wanted.len()).await;
    assert_eq!(
        positions(&received),
        wanted,
        "both recipients, in publish order"
    );

    service.stop().await;
}

/// A gateway that does not say it accepts batches (an older one) gets the
/// same burst one `Delivery` per message, in order.
#[tokio::test]
async fn a_gateway_without_batches_gets_single_deliveries() {
    const EVENTS: usize = 200;
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    let mut attached = TestGateway::attach_with(&mut client, false).await;
    let alice = Recipient::User(1);
    attached.subscribe(1, &alice).await;

    let delivered = service
        .log
        .deliver_many(burst(std::slice::from_ref(&alice), EVENTS))
        .await
        .expect("deliver_many");
    let (received, messages) = read_raw(&mut attached, EVENTS).await;
    assert_eq!(positions(&received), delivered);
    assert!(messages.iter().all(|&size| size == 1), "{messages:?}");

    service.stop().await;
}

/// Events for recipients the gateway did not subscribe never reach it.
#[tokio::test]
async fn deliveries_for_other_recipients_do_not_arrive() {
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    let mut attached = TestGateway::attach(&mut client).await;
    let alice = Recipient::User(1);
    attached.subscribe(1, &alice).await;

    // Published before alice's event: if any came through, it would come first.
    service.deliver(&Recipient::User(2), 0).await;
    service.deliver(&Recipient::Operator(1), 0).await;
    service.deliver(&Recipient::dialog_room(1), 0).await;
    service.deliver(&Recipient::Role(Role::Operator), 0).await;
    service.deliver(&Recipient::Everyone, 0).await;
    let (position, _) = service.deliver(&alice, 1).await;

    let delivery = attached.next_delivery().await;
    assert_eq!(delivery.recipient, Some((&alice).into()));
    assert_eq!(delivery.position, position);

    service.stop().await;
}

/// Unsubscribe stops a recipient's events and, with the delivered position,
/// sets where `since_last_seen` starts.
#[tokio::test]
async fn unsubscribe_stops_deliveries_and_marks_last_seen() {
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    let mut attached = TestGateway::attach(&mut client).await;
    let alice = Recipient::User(1);
    let bob = Recipient::User(2);
    attached.subscribe(1, &alice).await;

    let mut delivered = Vec::new();
    for n in 0..3 {
        let (position, _) = service.deliver(&alice, n).await;
        assert_eq!(attached.next_delivery().await.position, position);
        delivered.push(position);
    }

    // The gateway delivered up to the second before its last connection left.
    attached.unsubscribe(&alice, delivered[1]).await;
    // Messages are handled in order: once bob is subscribed, alice is not.
    attached.subscribe(2, &bob).await;
    let (late, _) = service.deliver(&alice, 3).await;
    let (bobs, _) = service.deliver(&bob, 0).await;
    let delivery = attached.next_delivery().await;
    assert_eq!(
        delivery.recipient,
        Some((&bob).into()),
        "alice's event after Unsubscribe must not arrive"
    );
    assert_eq!(delivery.position, bobs);

    let page = replay(&mut client, replay_request(&alice, since_last_seen(), 0)).await;
    assert!(page.complete);
    assert_eq!(page.start_after, delivered[1]);
    assert_eq!(positions(&page.deliveries), vec![delivered[2], late]);
    assert_eq!(page.next_after, late);
    assert!(!page.more);

    // Unsubscribing without a position leaves the mark alone.
    attached.unsubscribe(&bob, 0).await;
    attached.subscribe(3, &alice).await;
    attached.unsubscribe(&alice, 0).await;
    attached.subscribe(4, &bob).await;
    let page = replay(&mut client, replay_request(&alice, since_last_seen(), 0)).await;
    assert_eq!(page.start_after, delivered[1]);

    service.stop().await;
}

/// `Replay{after_position}` pages through the log with `limit`, and
/// `start_after`, `next_after`, `more` and `complete` say where it is.
#[tokio::test]
async fn replay_after_a_position_pages() {
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    let alice = Recipient::User(5);
    let mut delivered = Vec::new();
    for n in 0..7 {
        delivered.push(service.deliver(&alice, n).await);
        service.deliver(&Recipient::User(6), n).await;
    }
    let head = delivered[6].0;

    let mut from = delivered[0].0;
    let mut read = Vec::new();
    let mut pages = 0;
    loop {
        let page = replay(&mut client, replay_request(&alice, after(from), 2)).await;
        pages += 1;
        assert!(page.complete);
        assert_eq!(page.start_after, from);
        assert!(page.deliveries.len() <= 2);
        assert_eq!(
            page.next_after,
            page.deliveries.last().map_or(from, |d| d.position)
        );
        assert_eq!(page.more, page.next_after < head);
        from = page.next_after;
        read.extend(page.deliveries);
        if !page.more {
            break;
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3, "six events in pages of two");
    assert_eq!(
        positions(&read),
        delivered[1..].iter().map(|(p, _)| *p).collect::<Vec<_>>()
    );
    for (wire, (_, event)) in read.iter().zip(&delivered[1..]) {
        let wire = wire.event.as_ref().expect("the event");
        assert_eq!(wire.event_id, event.id);
        assert_eq!(wire.body, event.body.to_vec());
    }

    // After the head: nothing, complete.
    let page = replay(&mut client, replay_request(&alice, after(head), 2)).await;
    assert!(page.complete);
    assert!(page.deliveries.is_empty());
    assert!(!page.more);
    assert_eq!((page.start_after, page.next_after), (head, head));

    // A position this log never handed out (say, from before a restart):
    // incomplete, nothing returned, live goes on from the head.
    let page = replay(&mut client, replay_request(&alice, after(1), 2)).await;
    assert!(!page.complete);
    assert!(page.deliveries.is_empty());
    assert_eq!(page.next_after, head);
    assert_eq!(page.start_after, 1);

    service.stop().await;
}

/// Only users and operators have logs: replaying anyone else, or nobody, is
/// an invalid argument.
#[tokio::test]
async fn replay_of_a_live_only_recipient_is_invalid() {
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    for recipient in [
        Recipient::dialog_room(1),
        Recipient::Role(Role::Operator),
        Recipient::Everyone,
    ] {
        let status = client
            .replay(replay_request(&recipient, after(0), 0))
            .await
            .expect_err("replay of a live-only recipient");
        assert_eq!(status.code(), Code::InvalidArgument, "{recipient}");
    }
    let status = client
        .replay(pb::ReplayRequest {
            recipient: None,
            from: Some(since_last_seen()),
            limit: 0,
        })
        .await
        .expect_err("replay without a recipient");
    assert_eq!(status.code(), Code::InvalidArgument);
    service.stop().await;
}

/// A Subscribe without a recipient ends the stream with INVALID_ARGUMENT.
#[tokio::test]
async fn subscribe_without_recipient_ends_the_stream() {
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    let mut attached = TestGateway::attach(&mut client).await;
    attached
        .send(pb::gateway_message::Msg::Subscribe(pb::Subscribe {
            request_id: 1,
            recipient: None,
        }))
        .await;
    let (deliveries, status) = attached.until_error().await;
    assert!(deliveries.is_empty());
    assert_eq!(status.code(), Code::InvalidArgument);
    service.stop().await;
}

/// Shutdown ends every attached stream with UNAVAILABLE (the gateway's cue
/// to reconnect) and the server stops.
#[tokio::test]
async fn shutdown_ends_attached_streams_with_unavailable() {
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    let mut attached = TestGateway::attach(&mut client).await;
    attached.subscribe(1, &Recipient::User(1)).await;

    service.shutdown.cancel();
    let (deliveries, status) = attached.until_error().await;
    assert!(deliveries.is_empty());
    assert_eq!(status.code(), Code::Unavailable);
    service.stop().await;
}

/// A gateway that stops reading while the service publishes far more than
/// the live buffer is cut off with DATA_LOSS: publishing never waits for it,
/// what is queued for it is bounded, and the log still has every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_does_not_read_is_cut_off_with_data_loss() {
    // More than the stream's channel (1024 messages), the HTTP/2 windows and
    // send buffer (a few MB) and the live buffer (16) can hold together.
    const EVENTS: usize = 6_000;
    let service = Service::start(EventLogConfig {
        live_buffer: 16,
        ..EventLogConfig::default()
    })
    .await;
    let mut client = service.client().await;
    let mut attached = TestGateway::attach(&mut client).await;
    let alice = Recipient::User(1);
    attached.subscribe(1, &alice).await;

    let padding = "x".repeat(2_000);
    let mut delivered = Vec::with_capacity(EVENTS);
    tokio::time::timeout(WAIT, async {
        for n in 0..EVENTS {
            let body = serde_json::json!({ "n": n, "padding": padding });
            delivered.push(service.deliver_body(&alice, body).await.0);
        }
    })
    .await
    .expect("publishing does not wait for a gateway that does not read");

    // The gateway reads again: what was queued for it, then the cut.
    let (received, status) = attached.until_error().await;
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(
        received.len() < EVENTS,
        "the service cannot have queued everything ({} of {EVENTS})",
        received.len()
    );
    assert_eq!(
        positions(&received),
        delivered[..received.len()],
        "what did arrive is a gap-free prefix, in order"
    );

    // Nothing durable was lost: the log has every event, in default pages.
    let mut from = delivered[0] - 1;
    let mut replayed = Vec::with_capacity(EVENTS);
    loop {
        let page = replay(&mut client, replay_request(&alice, after(from), 0)).await;
        assert!(page.complete);
        replayed.extend(positions(&page.deliveries));
        from = page.next_after;
        if !page.more {
            break;
        }
    }
    assert_eq!(replayed, delivered);

    service.stop().await;
}

/// Shutdown does not wait for a gateway that has stopped reading: the
/// service still stops in time.
///
/// With the default live buffer nothing lags, so the stream task forwards
/// until the stream's channel and the HTTP/2 buffers are full and then waits
/// in its send, where it does not see the shutdown; the graceful drain then
/// waits for that stream as long as the gateway does not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn shutdown_does_not_wait_for_a_gateway_that_does_not_read() {
    const EVENTS: usize = 4_000;
    let service = Service::start(EventLogConfig::default()).await;
    let mut client = service.client().await;
    let mut attached = TestGateway::attach(&mut client).await;
    let alice = Recipient::User(1);
    attached.subscribe(1, &alice).await;
    let padding = "x".repeat(2_000);
    for n in 0..EVENTS {
        let body = serde_json::json!({ "n": n, "padding": padding });
        service.deliver_body(&alice, body).await;
    }
    service.stop().await;
    drop(attached);
}

/// No task dies silently: when one of the host's long-lived tasks stops
/// before shutdown, the service stops (its shutdown token is cancelled, so
/// every other task and the server stop too) and `serve` returns an error
/// naming the task.
#[tokio::test]
async fn a_dead_task_stops_the_service_and_is_named() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = ServiceHost::start(&ServiceCommon::default(), "test", CancellationToken::new())
        .await
        .expect("a memory event log opens");
    let shutdown = host.shutdown().clone();
    let (stop_it, stopped) = tokio::sync::oneshot::channel::<()>();
    host.supervisor.spawn("doomed worker", async move {
        let _ = stopped.await;
    });
    let served = tokio::spawn(host.serve(listener, None, &[]));
    stop_it.send(()).expect("the task is waiting");
    let outcome = tokio::time::timeout(WAIT, served)
        .await
        .expect("the service stops by itself")
        .expect("serve does not panic");
    assert!(
        shutdown.is_cancelled(),
        "the process's shutdown was cancelled"
    );
    match outcome {
        Err(ServeError::Task(failed)) => {
            assert_eq!(failed.task, "doomed worker");
            assert_eq!(
                failed.to_string(),
                "the task `doomed worker` stopped on its own"
            );
        }
        other => panic!("expected the dead task as the error, got {other:?}"),
    }
}
