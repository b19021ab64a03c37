//! [`TestGateway`]: one gateway's `Attach` stream to a service, as the real
//! gateway opens it (`Hello` first), with the calls tests make on it. Every
//! wait is bounded by [`WAIT`]; a wrong or missing message fails the test.

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
}

impl TestGateway {
    /// Attaches through `client` and says hello as `test-gateway`.
    pub async fn attach(client: &mut EventStreamClient<Channel>) -> Self {
        let (out, rx) = mpsc::channel(64);
        let inbound = tokio::time::timeout(WAIT, client.attach(ReceiverStream::new(rx)))
            .await
            .expect("attach in time")
            .expect("attach")
            .into_inner();
        let gateway = TestGateway { out, inbound };
        gateway
            .send(pb::gateway_message::Msg::Hello(pb::Hello {
                gateway_id: "test-gateway".into(),
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

    /// The next message, failing on an error or the end of the stream.
    pub async fn next(&mut self) -> pb::service_message::Msg {
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
        let mut deliveries = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.inbound.message()).await {
                Ok(Ok(Some(pb::ServiceMessage {
                    msg: Some(pb::service_message::Msg::Delivery(delivery)),
                }))) => deliveries.push(delivery),
                Ok(Ok(Some(other))) => panic!("unexpected message {other:?}"),
                Ok(Ok(None)) => panic!("the stream ended without an error"),
                Ok(Err(status)) => return (deliveries, status),
                Err(_) => panic!("no error in time"),
            }
        }
    }
}
