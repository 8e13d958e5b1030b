//! A lean WebSocket client for receiving: the upgrade handshake by hand, and a small
//! parser of *server* frames (unmasked), which is what herald-ws's `FrameReader` — a
//! strict reader of masked client frames — deliberately refuses.
//!
//! One task per connection owns its socket and one read buffer; it answers pings, reads
//! the send timestamp out of every data frame and reports to the shared [`Tally`] once
//! per socket read, not once per frame.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::sse::{Dechunker, EventParser, Kind};
use crate::target::Target;
use crate::{Transport, unix_nanos};

/// Initial read buffer; a burst of ~100-byte frames fills it in one read.
const READ_BUFFER: usize = 4096;
/// The longest upgrade response accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// The largest frame accepted from a server.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What receivers report: deliveries, their latency, and disconnects.
#[derive(Debug)]
pub struct Tally {
    /// Data frames received.
    pub received: AtomicU64,
    /// Data frames without a readable send timestamp.
    pub unstamped: AtomicU64,
    /// Wall-clock time (Unix ns) of the latest data frame.
    pub last_rx_ns: AtomicU64,
    /// Connections the server closed or reset while the run was going on.
    pub disconnects: AtomicU64,
    /// Publish → deliver latency, in microseconds.
    pub latency: Mutex<Histogram<u64>>,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Self {
        Self {
            received: AtomicU64::new(0),
            unstamped: AtomicU64::new(0),
            last_rx_ns: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
        }
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

/// A histogram of microseconds from 1 µs to 10 min with 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    // Fixed, valid bounds: construction cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures are valid"))
    })
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be created or bound to its source address.
    #[error("bind: {0}")]
    Bind(std::io::Error),
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The handshake did not complete in time.
    #[error("timeout")]
    Timeout,
    /// The server answered something other than 101.
    #[error("handshake refused: {0}")]
    Refused(String),
    /// I/O failed during the handshake.
    #[error("handshake io: {0}")]
    Io(std::io::Error),
}

impl ConnectError {
    /// A short label for counting failures by kind.
    pub fn kind(&self) -> String {
        match self {
            Self::Bind(e) => format!("bind:{:?}", e.kind()),
            Self::Connect(e) => format!("connect:{:?}", e.kind()),
            Self::Timeout => "timeout".into(),
            Self::Refused(status) => format!("status:{status}"),
            Self::Io(e) => format!("io:{:?}", e.kind()),
        }
    }
}

/// An upgraded connection and whatever bytes arrived right after the 101.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Set for an SSE stream: its body decoder and event parser.
    sse: Option<Box<SseState>>,
}

/// An SSE stream's decoding state: the chunked decoder (when the body is chunked) and
/// the event parser.
#[derive(Debug)]
struct SseState {
    chunked: Option<Dechunker>,
    parser: EventParser,
}

/// How a receiving connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server sent a close frame with this code (1005 if none).
    Closed(u16),
    /// The socket reached EOF or failed.
    Lost,
    /// The server sent something that is not a valid server frame.
    Protocol,
}

/// Opens a TCP connection from `source` and performs the WebSocket upgrade for `path`
/// (or, for [`Transport::Sse`], the `GET` with `Accept: text/event-stream`, expecting 200).
pub async fn connect(
    target: &Target,
    path: &str,
    source: Ipv4Addr,
    deadline: Duration,
    transport: Transport,
) -> Result<Conn, ConnectError> {
    tokio::time::timeout(deadline, connect_inner(target, path, source, transport))
        .await
        .map_err(|_| ConnectError::Timeout)?
}

async fn connect_inner(
    target: &Target,
    path: &str,
    source: Ipv4Addr,
    transport: Transport,
) -> Result<Conn, ConnectError> {
    let socket = TcpSocket::new_v4().map_err(ConnectError::Bind)?;
    // The source address spreads sockets over several 4-tuples' port ranges; port 0 lets
    // the kernel pick a free one.
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(ConnectError::Bind)?;
    let mut stream = socket
        .connect(target.addr)
        .await
        .map_err(ConnectError::Connect)?;
    let _ = stream.set_nodelay(true);
    let request = match transport {
        Transport::WebSocket => {
            let key =
                base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{host}\r\n\r\n",
                host = target.host
            )
        }
        Transport::Sse => format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\nOrigin: http://{host}\r\n\r\n",
            host = target.host
        ),
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ConnectError::Io)?;
    let mut buf = vec![0u8; READ_BUFFER];
    let mut end = 0;
    let head_end = loop {
        if end == buf.len() {
            if buf.len() >= MAX_RESPONSE_HEAD {
                return Err(ConnectError::Refused("response head too long".into()));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream
            .read(&mut buf[end..])
            .await
            .map_err(ConnectError::Io)?;
        if n == 0 {
            return Err(ConnectError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let scan_from = end.saturating_sub(3);
        end += n;
        if let Some(at) = find(&buf[scan_from..end], b"\r\n\r\n") {
            break scan_from + at + 4;
        }
    };
    let status_line = buf[..head_end]
        .split(|&b| b == b'\r')
        .next()
        .unwrap_or_default();
    let status = std::str::from_utf8(status_line).unwrap_or("?");
    let expected = match transport {
        Transport::WebSocket => "101",
        Transport::Sse => "200",
    };
    if status.split(' ').nth(1) != Some(expected) {
        return Err(ConnectError::Refused(
            status.split(' ').nth(1).unwrap_or("?").to_string(),
        ));
    }
    let sse = (transport == Transport::Sse).then(|| {
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let chunked = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        Box::new(SseState {
            chunked: chunked.then(Dechunker::default),
            parser: EventParser::default(),
        })
    });
    Ok(Conn {
        stream,
        buf,
        start: head_end,
        end,
        sse,
    })
}

/// A parsed server frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    opcode: u8,
    header_len: usize,
    payload_len: usize,
}

/// Parses a frame header from `buf`: `Ok(None)` when more bytes are needed, `Err` when
/// the frame is masked (servers never mask) or absurdly large.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, ()> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err(());
    }
    let (header_len, payload_len) = match b1 & 0x7F {
        126 => {
            let Some(len) = buf.get(2..4) else {
                return Ok(None);
            };
            (4, u16::from_be_bytes([len[0], len[1]]) as usize)
        }
        127 => {
            let Some(len) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(len);
            let len = u64::from_be_bytes(be);
            (10, usize::try_from(len).map_err(|_| ())?)
        }
        short => (2, short as usize),
    };
    if payload_len > MAX_FRAME {
        return Err(());
    }
    Ok(Some(Header {
        opcode: b0 & 0x0F,
        header_len,
        payload_len,
    }))
}

/// The send timestamp a publisher wrote into the payload as `HB<unix ns>:`.
pub fn stamp(payload: &[u8]) -> Option<u64> {
    let at = if payload.starts_with(b"HB") {
        0
    } else {
        find(payload, b"HB")?
    };
    let digits = &payload[at + 2..];
    let mut value: u64 = 0;
    let mut seen = 0;
    for &b in digits.iter().take(20) {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        seen += 1;
    }
    (seen > 0).then_some(value)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn masked_control(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(125)];
    let mask = fastrand::u32(..).to_be_bytes();
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | opcode);
    frame.push(0x80 | payload.len() as u8);
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

impl Conn {
    /// Closes the connection with a (masked) close frame, best effort.
    pub async fn close(mut self) {
        let frame = masked_control(0x8, &1000u16.to_be_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            self.stream.write_all(&frame).await?;
            self.stream.shutdown().await
        })
        .await;
    }

    /// Receives until the connection ends, reporting every data frame (or SSE message
    /// event) to `tally`.
    pub async fn receive(mut self, tally: &Tally) -> End {
        if let Some(sse) = self.sse.take() {
            return self.receive_sse(*sse, tally).await;
        }
        let mut latencies: Vec<u64> = Vec::new();
        loop {
            // Parse what is buffered.
            let now = unix_nanos();
            let mut frames = 0u64;
            let mut unstamped = 0u64;
            loop {
                let header = match parse_header(&self.buf[self.start..self.end]) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(()) => return End::Protocol,
                };
                let total = header.header_len + header.payload_len;
                if self.end - self.start < total {
                    if total > self.buf.len() {
                        self.buf.resize(total, 0);
                    }
                    break;
                }
                let payload = &self.buf[self.start + header.header_len..self.start + total];
                match header.opcode {
                    // Text, binary, continuation: a data frame.
                    0x0..=0x2 => {
                        if header.opcode != 0x0 {
                            frames += 1;
                            match stamp(payload) {
                                Some(sent) => {
                                    latencies.push(now.saturating_sub(sent) / 1000);
                                }
                                None => unstamped += 1,
                            }
                        }
                    }
                    0x8 => {
                        let code = match payload {
                            [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                            _ => 1005,
                        };
                        flush(tally, frames, unstamped, now, &mut latencies);
                        let echo = masked_control(0x8, &payload[..payload.len().min(2)]);
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            self.stream.write_all(&echo),
                        )
                        .await;
                        return End::Closed(code);
                    }
                    0x9 => {
                        let pong = masked_control(0xA, payload);
                        if self.stream.write_all(&pong).await.is_err() {
                            flush(tally, frames, unstamped, now, &mut latencies);
                            return End::Lost;
                        }
                    }
                    0xA => {}
                    _ => return End::Protocol,
                }
                self.start += total;
            }
            flush(tally, frames, unstamped, now, &mut latencies);
            // Make room: move a partial frame to the front.
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 && self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let len = self.buf.len() * 2;
                self.buf.resize(len, 0);
            }
            match self.stream.read(&mut self.buf[self.end..]).await {
                Ok(0) | Err(_) => return End::Lost,
                Ok(n) => self.end += n,
            }
        }
    }
}

impl Conn {
    /// The SSE receive loop: one fixed buffer, decoded in place each read.
    async fn receive_sse(mut self, mut sse: SseState, tally: &Tally) -> End {
        let mut latencies: Vec<u64> = Vec::new();
        loop {
            let now = unix_nanos();
            let mut frames = 0u64;
            let mut unstamped = 0u64;
            let mut closed: Option<u16> = None;
            let SseState { chunked, parser } = &mut sse;
            let mut on_event = |kind: Kind, data: &[u8]| match kind {
                Kind::Message | Kind::Binary => {
                    frames += 1;
                    match stamp(data) {
                        Some(sent) => latencies.push(now.saturating_sub(sent) / 1000),
                        None => unstamped += 1,
                    }
                }
                Kind::Close => closed = Some(crate::sse::close_code(data)),
                Kind::Other => {}
            };
            let input = &self.buf[self.start..self.end];
            let parsed = match chunked {
                Some(d) => d.feed(input, |body| parser.feed(body, &mut on_event)),
                None => parser.feed(input, &mut on_event).map(|()| false),
            };
            flush(tally, frames, unstamped, now, &mut latencies);
            match parsed {
                Err(_) => return End::Protocol,
                Ok(true) => return End::Closed(closed.unwrap_or(1005)),
                Ok(false) => {}
            }
            if let Some(code) = closed {
                return End::Closed(code);
            }
            self.start = 0;
            self.end = 0;
            match self.stream.read(&mut self.buf).await {
                Ok(0) | Err(_) => return End::Lost,
                Ok(n) => self.end = n,
            }
        }
    }
}

fn flush(tally: &Tally, frames: u64, unstamped: u64, now: u64, latencies: &mut Vec<u64>) {
    if frames == 0 {
        return;
    }
    tally.received.fetch_add(frames, Ordering::Relaxed);
    tally.last_rx_ns.fetch_max(now, Ordering::Relaxed);
    if unstamped > 0 {
        tally.unstamped.fetch_add(unstamped, Ordering::Relaxed);
    }
    if !latencies.is_empty() {
        let mut histogram = tally.latency.lock().unwrap_or_else(|p| p.into_inner());
        for &us in latencies.iter() {
            histogram.saturating_record(us.max(1));
        }
        latencies.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_headers() {
        assert_eq!(parse_header(&[0x81]), Ok(None));
        assert_eq!(
            parse_header(&[0x81, 5, b'h']),
            Ok(Some(Header {
                opcode: 1,
                header_len: 2,
                payload_len: 5
            }))
        );
        assert_eq!(
            parse_header(&[0x82, 126, 1, 0]),
            Ok(Some(Header {
                opcode: 2,
                header_len: 4,
                payload_len: 256
            }))
        );
        assert_eq!(parse_header(&[0x82, 127, 0, 0]), Ok(None));
        assert_eq!(parse_header(&[0x81, 0x85, 0, 0, 0, 0]), Err(()));
    }

    #[test]
    fn reads_stamps() {
        assert_eq!(stamp(b"HB123:4:xx"), Some(123));
        assert_eq!(stamp(b"{\"t\":\"m\"}\nHB99:1:"), Some(99));
        assert_eq!(stamp(b"hello"), None);
        assert_eq!(stamp(b"HB:"), None);
    }

    #[test]
    fn masks_control_frames() {
        let f = masked_control(0xA, b"ab");
        assert_eq!(f[0], 0x8A);
        assert_eq!(f[1], 0x82);
        assert_eq!(f[6] ^ f[2], b'a');
        assert_eq!(f[7] ^ f[3], b'b');
    }
}
