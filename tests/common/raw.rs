//! A WebSocket client written by hand over TCP ([`RawWs`]), for what
//! tungstenite will not do: send a text frame that is not UTF-8, never
//! answer pings, keep a small receive buffer and stop reading. Frames are
//! encoded and decoded by [`frame`](super::frame).

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::{
    OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawFrame, encode, parse_close, parse_frame,
};
use super::{Closed, WAIT};

/// A WebSocket client written by hand over TCP, for what tungstenite will not
/// do: send a text frame that is not UTF-8, or never answer pings.
pub struct RawWs {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawWs {
    /// Connects and upgrades `path_and_query` by hand; fails unless the
    /// server answers 101.
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> RawWs {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connecting to the gateway");
        Self::upgrade(stream, addr, path_and_query).await
    }

    /// Like [`connect`](Self::connect), with a receive buffer of about
    /// `bytes` (a client that does not read then soon stops the server's writes).
    pub async fn connect_with_receive_buffer(
        addr: SocketAddr,
        path_and_query: &str,
        bytes: u32,
    ) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .set_recv_buffer_size(bytes)
            .expect("setting the receive buffer");
        let stream = socket
            .connect(addr)
            .await
            .expect("connecting to the gateway");
        Self::upgrade(stream, addr, path_and_query).await
    }

    async fn upgrade(mut stream: TcpStream, addr: SocketAddr, path_and_query: &str) -> RawWs {
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("writing the upgrade request");
        let mut raw = RawWs {
            stream,
            buffer: Vec::new(),
        };
        let head_end = loop {
            if let Some(at) = raw.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8_lossy(&raw.buffer[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "the upgrade was refused: {head}"
        );
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "wrong Sec-WebSocket-Accept: {head}"
        );
        raw.buffer.drain(..head_end);
        raw
    }

    /// Reads more bytes into the buffer; fails on end of stream or after [`WAIT`].
    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the server sends in time")
            .expect("reading from the gateway");
        assert!(read > 0, "the server closed the TCP connection");
        self.buffer.extend_from_slice(&chunk[..read]);
    }

    /// Writes one masked frame with `fin` set.
    pub async fn write_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&encode(opcode, payload))
            .await
            .expect("writing a frame");
    }

    /// Writes `bytes` as they are: frames no client library would write.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("writing bytes");
    }

    /// Writes one text frame (the bytes as given, UTF-8 or not).
    pub async fn send_text_bytes(&mut self, payload: &[u8]) {
        self.write_frame(OP_TEXT, payload).await;
    }

    /// Writes one JSON text frame.
    pub async fn send_json(&mut self, frame: &Value) {
        self.send_text_bytes(frame.to_string().as_bytes()).await;
    }

    /// The next frame the server sent (server frames are unmasked and whole).
    pub async fn read_frame(&mut self) -> RawFrame {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buffer) {
                self.buffer.drain(..used);
                return frame;
            }
            self.fill().await;
        }
    }

    /// The next text frame as JSON, skipping pings (never answered).
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let frame = self.read_frame().await;
            match frame.opcode {
                OP_TEXT => {
                    return serde_json::from_slice(&frame.payload).unwrap_or_else(|err| {
                        panic!("server frame is not JSON: {err}: {:?}", frame.payload)
                    });
                }
                OP_PING | OP_PONG => {}
                OP_CLOSE => panic!(
                    "closed while a frame was expected: {:?}",
                    parse_close(&frame)
                ),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    /// Reads everything until the server's close frame or the end of the
    /// stream: the text frames (a frame cut off by the end is not one) and
    /// the close, if one came.
    pub async fn read_until_end(&mut self) -> (Vec<Value>, Option<Closed>) {
        let mut frames = Vec::new();
        loop {
            while let Some((frame, used)) = parse_frame(&self.buffer) {
                self.buffer.drain(..used);
                match frame.opcode {
                    OP_TEXT => frames.push(
                        serde_json::from_slice(&frame.payload).expect("server frames are JSON"),
                    ),
                    OP_CLOSE => return (frames, parse_close(&frame)),
                    _ => {}
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("the server sends or closes in time");
            match read {
                Ok(0) | Err(_) => return (frames, None),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frame by frame, pausing `pause` after each while `slow` is set
    /// (as a client on a poor link), at full speed once it is cleared, until
    /// the server's close frame or the end of the stream; returns the close,
    /// if one came.
    pub async fn read_slowly_until_end(
        &mut self,
        pause: std::time::Duration,
        slow: &std::sync::atomic::AtomicBool,
    ) -> Option<Closed> {
        loop {
            while let Some((frame, used)) = parse_frame(&self.buffer) {
                self.buffer.drain(..used);
                if frame.opcode == OP_CLOSE {
                    return parse_close(&frame);
                }
                if slow.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(pause).await;
                }
            }
            let mut chunk = [0u8; 4 * 1024];
            let read = tokio::time::timeout(WAIT * 6, self.stream.read(&mut chunk))
                .await
                .expect("the server sends or closes in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the server's close frame; asserts its code and reason and
    /// returns how many pings came before it.
    pub async fn expect_close(&mut self, code: u16, reason: &str) -> usize {
        let mut pings = 0;
        loop {
            let frame = self.read_frame().await;
            match frame.opcode {
                OP_CLOSE => {
                    let expected = Closed {
                        code,
                        reason: reason.to_owned(),
                    };
                    assert_eq!(parse_close(&frame), Some(expected));
                    return pings;
                }
                OP_PING => pings += 1,
                OP_PONG => {}
                OP_TEXT => panic!(
                    "a text frame came before the close: {}",
                    String::from_utf8_lossy(&frame.payload)
                ),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }
}
