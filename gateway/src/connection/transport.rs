//! What a connection task talks through: a [`Transport`] carries the frames
//! out and the client's requests in. Two exist, and the connection task
//! (registry, queue, catch-up, limits, close reasons) is the same for both:
//! - [`WebSocket`] — the upgraded socket: text frames both ways, pings, a
//!   close frame at the end;
//! - [`crate::sse::SseTransport`] — a `text/event-stream` response body out
//!   (each frame one event, `id:` its cursor), and requests in from
//!   `POST /api/frames` naming the stream, each answered in its HTTP
//!   response rather than on the stream.

use std::future::Future;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::close::CloseReason;

/// The upgraded socket.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The transport is gone: the client left, or the write failed.
#[derive(Debug)]
pub struct Closed;

/// What the client sent.
pub enum Incoming {
    /// A client frame; its answer goes to `answer` when there is one (a
    /// request over HTTP), else it is written to the transport.
    Text(Utf8Bytes, Option<oneshot::Sender<String>>),
    /// A sign of life without a request (a ping or a pong).
    Heard,
    /// Nothing to do (a frame fragment, say).
    Nothing,
    /// Close the connection with this reason.
    Close(CloseReason),
    /// The client is gone.
    Gone,
}

/// One way of talking to a client (see the module docs). Writes are
/// cancelled by the connection task when it is stopped.
pub trait Transport: Send + 'static {
    /// Whether the client's silence means it is gone: a WebSocket client
    /// answers pings, an event stream's client never speaks.
    const IDLE_TIMEOUT: bool;

    /// The next thing the client sent.
    fn next(&mut self) -> impl Future<Output = Incoming> + Send;

    /// Writes a server frame; `cursor` is the frame's resume position when
    /// it has one. `buffered`: part of a batch, flushed after it.
    fn write(
        &mut self,
        frame: Utf8Bytes,
        cursor: Option<&str>,
        buffered: bool,
    ) -> impl Future<Output = Result<(), Closed>> + Send;

    /// Sends what a batch buffered.
    fn flush(&mut self) -> impl Future<Output = Result<(), Closed>> + Send;

    /// Keeps the transport alive while nothing happens.
    fn ping(&mut self) -> impl Future<Output = Result<(), Closed>> + Send;

    /// Tells the client why the connection ends, within `grace`.
    fn close(&mut self, reason: CloseReason, grace: Duration) -> impl Future<Output = ()> + Send;
}

/// A WebSocket client.
pub struct WebSocket(pub Socket);

impl Transport for WebSocket {
    const IDLE_TIMEOUT: bool = true;

    async fn next(&mut self) -> Incoming {
        match self.0.next().await {
            None => Incoming::Gone,
            Some(Ok(Message::Text(text))) => Incoming::Text(text, None),
            Some(Ok(Message::Binary(_))) => Incoming::Close(CloseReason::Binary),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Heard,
            Some(Ok(Message::Close(_))) => Incoming::Gone,
            Some(Ok(Message::Frame(_))) => Incoming::Nothing,
            Some(Err(WsError::Utf8(_))) => Incoming::Close(CloseReason::InvalidUtf8),
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                Incoming::Close(CloseReason::TooLarge)
            }
            // The socket is still there: the client is told why (1002)
            // rather than dropped.
            Some(Err(WsError::Protocol(err))) => {
                tracing::debug!(cause = %err, "protocol violation");
                Incoming::Close(CloseReason::ProtocolError)
            }
            Some(Err(err)) => {
                tracing::debug!(cause = %err, "socket failed");
                Incoming::Gone
            }
        }
    }

    async fn write(
        &mut self,
        frame: Utf8Bytes,
        _cursor: Option<&str>,
        buffered: bool,
    ) -> Result<(), Closed> {
        let message = Message::Text(frame);
        let written = if buffered {
            self.0.feed(message).await
        } else {
            self.0.send(message).await
        };
        written.map_err(|_| Closed)
    }

    async fn flush(&mut self) -> Result<(), Closed> {
        self.0.flush().await.map_err(|_| Closed)
    }

    async fn ping(&mut self) -> Result<(), Closed> {
        self.0
            .send(Message::Ping(Default::default()))
            .await
            .map_err(|_| Closed)
    }

    /// Sends a close frame and waits briefly for the client's.
    async fn close(&mut self, reason: CloseReason, grace: Duration) {
        if tokio::time::timeout(grace, self.0.close(Some(reason.frame())))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(grace, async {
                while let Some(Ok(_)) = self.0.next().await {}
            })
            .await;
        }
    }
}
