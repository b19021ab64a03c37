//! The listener: accepting TCP connections and serving HTTP/1.1 on each
//! with hyper, under the socket limits of [`crate::limits`].
//!
//! Each accepted socket is counted as unfinished (or closed at once when its
//! address holds its share), gets `TCP_NODELAY`, and is served by hyper with
//! a header-read timeout: the whole request head must arrive within
//! `CHATAI_HEADER_READ_TIMEOUT_SECS` of the connection's start (or of the
//! previous response), however slowly it trickles in. Every request carries
//! a [`ClientSocket`] extension: the peer address and the socket's place in
//! the counts, which an upgrade keeps until the client is admitted or refused.
//!
//! With TLS configured (`tls.rs`), each socket first completes a TLS
//! handshake, within the same header-read timeout and as an unfinished
//! socket (cut like any other to make room); a client that opens TCP and
//! never starts the handshake is closed when the time is up. Then the
//! request head has the header-read timeout again.
//!
//! On shutdown the loop stops accepting and every HTTP connection finishes
//! its request and closes; upgraded WebSockets are the gateway's (`lib.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::limits::{Handshake, Limits};

/// What a request knows of its socket (a request extension).
#[derive(Debug, Clone)]
pub struct ClientSocket {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The socket's place among the unfinished ones.
    pub handshake: Arc<Handshake>,
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown`,
/// then waits for the HTTP connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Arc<Limits>,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of descriptors (or memory): the limits should prevent
                // it; if it happens anyway, free the oldest unfinished
                // socket and pause, rather than spin.
                tracing::warn!(cause = %err, "cannot accept a connection");
                limits.cut_oldest();
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let handshake = match limits.accept(peer.ip()) {
            Ok(handshake) => Arc::new(handshake),
            Err(refused) => {
                tracing::debug!(%peer, cause = %refused, "connection refused");
                continue;
            }
        };
        // Frames are small and latency matters: no Nagle delay.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(cause = %err, "cannot set TCP_NODELAY");
        }
        connections.spawn(serve_socket(
            stream,
            ClientSocket { peer, handshake },
            router.clone(),
            limits.header_read_timeout,
            tls.clone(),
            shutdown.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
}

/// Completes the TLS handshake first, when there is TLS: within
/// `header_read_timeout`, and given up when the socket is cut to make room
/// or the gateway shuts down. Then serves HTTP on it.
async fn serve_socket(
    stream: TcpStream,
    socket: ClientSocket,
    router: Router,
    header_read_timeout: Duration,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let Some(tls) = tls else {
        return serve_connection(stream, socket, router, header_read_timeout, shutdown).await;
    };
    let peer = socket.peer;
    let cut = socket.handshake.cut().clone();
    let handshake = tokio::time::timeout(header_read_timeout, tls.accept(stream));
    let stream = tokio::select! {
        () = cut.cancelled() => {
            tracing::debug!(%peer, "TLS handshake cut to make room");
            return;
        }
        () = shutdown.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(%peer, cause = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not finished in time");
                return;
            }
        },
    };
    serve_connection(stream, socket, router, header_read_timeout, shutdown).await;
}

/// Serves HTTP/1.1 on one socket until it closes, is upgraded, is cut to
/// make room, or — after `shutdown` — finishes its request.
async fn serve_connection<S>(
    stream: S,
    socket: ClientSocket,
    router: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cut = socket.handshake.cut().clone();
    let peer = socket.peer;
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(socket.clone());
        router.clone().oneshot(request)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connection = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(%peer, cause = %err, "HTTP connection ended");
                }
                return;
            }
            () = cut.cancelled() => {
                tracing::debug!(%peer, "unfinished connection cut to make room");
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Errors of one connection that leave the listener fine (as in axum's
/// `serve`).
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
