//! [`TestGateway`]: one gateway's `Attach` stream to a service, as the real
//! gateway opens it (`Hello` first, accepting batches), with the calls tests
//! make on it. Every wait is bounded by [`WAIT`]; a wrong or missing message
//! fails the test.
//!
//! A `DeliveryBatch` is taken apart: [`next`](TestGateway::next),
//! [`next_delivery`](TestGateway::next_delivery) and
//! [`until_error`](TestGateway::until_error) see its deliveries one by one,
//! in order, as the real gateway handles them; [`next_raw`](TestGateway::next_raw)
//! shows messages as they came, for tests of the batching itself.

use std::collections::VecDeque;
use std::time::Duration;

use chatai_kit::events::Recipient;
use chatai_proto::v1 as pb;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// How long a test waits for the stream to open or a message to arrive.
pub const WAIT: Duration = Duration::from_secs(10);

/// One gateway's `Attach` stream.
pub struct TestGateway {
    out: mpsc::Sender<pb::GatewayMessage>,
    inbound: Streaming<pb::ServiceMessage>,
    /// The rest of a batch whose first delivery was handed out.
    batched: VecDeque<pb::Delivery>,
}

impl TestGateway {
    /// Attaches through `client` and says hello as `test-gateway`, accepting
    /// batches as the real gateway does.
    pub async fn attach(client: &mut EventStreamClient<Channel>) -> Self {
        Self::attach_with(client, true).await
    }

    /// Attaches and says hello, accepting batches or not (as an older
    /// gateway, which gets one delivery per message).
    pub async fn attach_with(
        client: &mut EventStreamClient<Channel>,
        accepts_batches: bool,
    ) -> Self {
        let (out, rx) = mpsc::channel(64);
        let inbound = tokio::time::timeout(WAIT, client.attach(ReceiverStream::new(rx)))
            .await
            .expect("attach in time")
            .expect("attach")
            .into_inner();
        let gateway = TestGateway {
            out,
            inbound,
            batched: VecDeque::new(),
        };
        gateway
            .send(pb::gateway_message::Msg::Hello(pb::Hello {
                gateway_id: "test-gateway".into(),
                accepts_batches,
            }))
            .await;
        gateway
    }

    /// Sends one message up the stream.
    pub async fn send(&self, msg: pb::gateway_message::Msg) {
        self.out
            .send(pb::GatewayMessage { msg: Some(msg) })
            .await
            .expect("the stream is open");
    }

    /// Subscribes `recipient` and waits for its `Subscribed`.
    pub async fn subscribe(&mut self, request_id: u64, recipient: &Recipient) {
        self.send(pb::gateway_message::Msg::Subscribe(pb::Subscribe {
            request_id,
            recipient: Some(recipient.into()),
        }))
        .await;
        match self.next().await {
            pb::service_message::Msg::Subscribed(subscribed) => {
                assert_eq!(
                    subscribed.request_id, request_id,
                    "Subscribed echoes the id"
                );
            }
            other => panic!("expected Subscribed({request_id}), got {other:?}"),
        }
    }

    /// Lets go of `recipient`, having delivered up to `delivered_position`.
    pub async fn unsubscribe(&self, recipient: &Recipient, delivered_position: u64) {
        self.send(pb::gateway_message::Msg::Unsubscribe(pb::Unsubscribe {
            recipient: Some(recipient.into()),
            delivered_position,
        }))
        .await;
    }

    /// The next message, failing on an error or the end of the stream; the
    /// deliveries of a batch come one by one, each as a `Delivery`.
    pub async fn next(&mut self) -> pb::service_message::Msg {
        if let Some(delivery) = self.batched.pop_front() {
            return pb::service_message::Msg::Delivery(delivery);
        }
        match self.next_raw().await {
            pb::service_message::Msg::DeliveryBatch(batch) => {
                self.batched.extend(batch.deliveries);
                match self.batched.pop_front() {
                    Some(delivery) => pb::service_message::Msg::Delivery(delivery),
                    None => panic!("an empty DeliveryBatch"),
                }
            }
            other => other,
        }
    }

    /// The next message as it came (a batch whole), failing on an error, the
    /// end of the stream, or deliveries of an earlier batch not yet taken.
    pub async fn next_raw(&mut self) -> pb::service_message::Msg {
        assert!(
            self.batched.is_empty(),
            "deliveries of an earlier batch are still unread: {:?}",
            self.batched
        );
        match tokio::time::timeout(WAIT, self.inbound.message()).await {
            Ok(Ok(Some(pb::ServiceMessage { msg: Some(msg) }))) => msg,
            Ok(Ok(Some(empty))) => panic!("empty service message {empty:?}"),
            Ok(Ok(None)) => panic!("the stream ended"),
            Ok(Err(status)) => panic!("the stream failed: {status:?}"),
            Err(_) => panic!("no message in time"),
        }
    }

    /// The next delivery, failing on anything else.
    pub async fn next_delivery(&mut self) -> pb::Delivery {
        match self.next().await {
            pb::service_message::Msg::Delivery(delivery) => delivery,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    /// Reads until the stream fails; the deliveries before and the status.
    pub async fn until_error(&mut self) -> (Vec<pb::Delivery>, tonic::Status) {
        let mut deliveries: Vec<pb::Delivery> = self.batched.drain(..).collect();
        loop {
            match tokio::time::timeout(WAIT, self.inbound.message()).await {
                Ok(Ok(Some(pb::ServiceMessage {
                    msg: Some(pb::service_message::Msg::Delivery(delivery)),
                }))) => deliveries.push(delivery),
                Ok(Ok(Some(pb::ServiceMessage {
                    msg: Some(pb::service_message::Msg::DeliveryBatch(batch)),
                }))) => deliveries.extend(batch.deliveries),
                Ok(Ok(Some(other))) => panic!("unexpected message {other:?}"),
                Ok(Ok(None)) => panic!("the stream ended without an error"),
                Ok(Err(status)) => return (deliveries, status),
                Err(_) => panic!("no error in time"),
            }
        }
    }
}
