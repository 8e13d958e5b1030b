//! A hand-written WebSocket client over any byte stream (TCP or TLS), for tests that
//! must send what real client libraries refuse to: unmasked frames, broken UTF-8, bogus
//! fragments, oversized lengths. It reads server frames and reports the close code.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Opcodes.
pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The usual test key and the `Sec-WebSocket-Accept` it yields (RFC 6455 §1.3).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// What ended a wait for the server's close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code (1005 when it had none).
    Code(u16),
    /// The connection ended without a close frame.
    Eof,
    /// Nothing within the deadline.
    Timeout,
}

/// One raw WebSocket connection (or, before the upgrade, an HTTP one).
pub struct RawWs<S> {
    pub stream: S,
    buf: Vec<u8>,
}

/// The request head of a WebSocket upgrade for `path`, with `extra` headers.
pub fn upgrade_request(host: &str, path: &str, extra: &[(&str, &str)]) -> String {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `request` and reads the response head (≤ 10 s); returns its status and the
    /// head text. Bytes after the head stay buffered for frame reads.
    pub async fn request(&mut self, request: &[u8]) -> (u16, String) {
        self.stream.write_all(request).await.expect("write request");
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return (status, head);
            }
            match self.fill(until).await {
                Some(0) | None => {
                    let head = String::from_utf8_lossy(&self.buf).into_owned();
                    return (0, head);
                }
                Some(_) => {}
            }
        }
    }

    /// Connects a WebSocket on `path`; panics unless the server answers 101.
    pub async fn upgrade(&mut self, path: &str, extra: &[(&str, &str)]) {
        let (status, head) = self
            .request(upgrade_request("test", path, extra).as_bytes())
            .await;
        assert_eq!(status, 101, "upgrade refused: {head}");
    }

    /// Reads more bytes before `until`: `Some(n)`, `Some(0)` at EOF/error, `None` on timeout.
    async fn fill(&mut self, until: Instant) -> Option<usize> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(until, self.stream.read(&mut chunk)).await {
            Err(_) => None,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(n)
            }
            Ok(Err(_)) => Some(0),
        }
    }

    /// Writes raw bytes; errors (the server may already have closed) are ignored.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Sends one masked client frame.
    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw(&frame(fin, opcode, Some([1, 2, 3, 4]), payload))
            .await;
    }

    /// The next server frame before `until`; `Err(ending)` on EOF or timeout.
    pub async fn next_frame(&mut self, until: Instant) -> Result<Frame, Ending> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            match self.fill(until).await {
                None => return Err(Ending::Timeout),
                Some(0) => return Err(Ending::Eof),
                Some(_) => {}
            }
        }
    }

    /// Waits up to `deadline` for the server's close frame, skipping data and pings, and
    /// answers it (as a client must).
    pub async fn close_code(&mut self, deadline: Duration) -> Ending {
        let until = Instant::now() + deadline;
        loop {
            match self.next_frame(until).await {
                Ok(f) if f.opcode == CLOSE => {
                    let code = match f.payload.as_slice() {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    };
                    let echo = code.to_be_bytes();
                    self.send(true, CLOSE, &echo).await;
                    return Ending::Code(code);
                }
                Ok(_) => continue,
                Err(ending) => return ending,
            }
        }
    }

    /// Whether the server ended the connection (EOF) before `deadline`, skipping frames.
    pub async fn wait_eof(&mut self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            match self.next_frame(until).await {
                Ok(_) => continue,
                Err(Ending::Eof) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Encodes a client frame; `mask: None` makes an (illegal) unmasked one.
pub fn frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Parses one unmasked server frame from the front of `buf`: the frame and its length.
fn parse_server_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    let (len, mut at) = match b1 & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if b1 & 0x80 != 0 {
        at += 4; // a server never masks; tolerate it anyway
    }
    let payload = buf.get(at..at + len)?.to_vec();
    Some((
        Frame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0F,
            payload,
        },
        at + len,
    ))
}
