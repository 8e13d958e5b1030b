//! WebSocket test clients: [`WsClient`] for plain mode and [`V1Client`], a `herald.v1`
//! client that tracks its position per group and resumes from it.
//!
//! Every receive takes a deadline; none waits forever.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The default deadline of one receive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a plain-mode client received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
    /// The server closed with this code (1005 when it sent none).
    Closed(u16),
}

/// A plain WebSocket client (what the seed's page is, on the wire).
#[derive(Debug)]
pub struct WsClient {
    stream: Stream,
}

impl WsClient {
    /// Connects to `url` (e.g. `ws://127.0.0.1:PORT/message/42/stream/`).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &[]).await
    }

    /// Connects offering the given subprotocols.
    pub async fn connect_with(url: &str, protocols: &[&str]) -> Result<Self> {
        let mut request = url.into_client_request().context("building the request")?;
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&protocols.join(", "))?,
            );
        }
        let (stream, _response) =
            tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| anyhow!("connect to {url} timed out"))?
                .with_context(|| format!("connecting to {url}"))?;
        Ok(Self { stream })
    }

    /// Connects to `url` (whose host must be an IP address) from the local address `local`
    /// (e.g. 127.0.0.7: any 127/8 address is loopback on Linux), with extra request headers.
    /// Tests behind a proxy use it to be told apart by their address.
    pub async fn connect_from(
        local: std::net::IpAddr,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self> {
        let mut request = url.into_client_request().context("building the request")?;
        for (name, value) in headers {
            request.headers_mut().append(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        let uri = request.uri();
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("{url} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let ip: std::net::IpAddr = host
            .parse()
            .with_context(|| format!("{url}: the host must be an IP address"))?;
        let remote = std::net::SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
        let socket = if remote.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket
            .bind(std::net::SocketAddr::new(local, 0))
            .with_context(|| format!("binding to {local}"))?;
        let handshake = async {
            let tcp = socket.connect(remote).await?;
            let (stream, _response) =
                tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await?;
            anyhow::Ok(stream)
        };
        let stream = tokio::time::timeout(RECV_TIMEOUT, handshake)
            .await
            .map_err(|_| anyhow!("connect to {url} from {local} timed out"))?
            .with_context(|| format!("connecting to {url} from {local}"))?;
        Ok(Self { stream })
    }

    /// The next data frame or close within `deadline`; pings are answered and skipped.
    /// `None` when the deadline passes.
    pub async fn recv_within(&mut self, deadline: Duration) -> Result<Option<Received>> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let next = match tokio::time::timeout_at(until, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(next) => next,
            };
            match next {
                None => return Ok(Some(Received::Closed(1006))),
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error;
                    return match e {
                        Error::ConnectionClosed | Error::AlreadyClosed => {
                            Ok(Some(Received::Closed(1006)))
                        }
                        Error::Protocol(_) | Error::Io(_) => Ok(Some(Received::Closed(1006))),
                        other => Err(other.into()),
                    };
                }
                Some(Ok(Message::Text(t))) => return Ok(Some(Received::Text(t.to_string()))),
                Some(Ok(Message::Binary(b))) => return Ok(Some(Received::Binary(b))),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return Ok(Some(Received::Closed(code)));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next data frame or close, failing after [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<Received> {
        self.recv_within(RECV_TIMEOUT)
            .await?
            .ok_or_else(|| anyhow!("nothing received within {RECV_TIMEOUT:?}"))
    }

    /// The next frame, which must be text.
    pub async fn recv_text(&mut self) -> Result<String> {
        match self.recv().await? {
            Received::Text(t) => Ok(t),
            other => bail!("expected a text frame, got {other:?}"),
        }
    }

    /// Waits (within `deadline`) for the server's close and returns its code, skipping
    /// data frames.
    pub async fn closed_within(&mut self, deadline: Duration) -> Result<u16> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await? {
                Some(Received::Closed(code)) => return Ok(code),
                Some(_) => continue,
                None => bail!("no close within {deadline:?}"),
            }
        }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.stream.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<()> {
        self.stream.send(Message::binary(data.to_vec())).await?;
        Ok(())
    }

    /// Closes normally.
    pub async fn close(mut self) -> Result<()> {
        self.stream.close(None).await.ok();
        Ok(())
    }

    /// Drops the TCP connection without a closing handshake.
    pub fn drop_abruptly(self) {
        drop(self.stream);
    }

    /// Sends a close frame with `code`.
    pub async fn close_with(&mut self, code: u16) -> Result<()> {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        self.stream
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            })))
            .await?;
        Ok(())
    }
}

/// A position in a group's stream, as a `herald.v1` client tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPos {
    /// Last offset handled.
    pub offset: u64,
    /// Epoch of the history.
    pub epoch: String,
}

/// One group's part of a `welcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WelcomeStream {
    /// Current offset.
    pub offset: u64,
    /// Current epoch.
    pub epoch: String,
    /// Whether the client's position was recovered.
    pub recovered: bool,
}

/// A message frame received in `herald.v1` mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Message {
    /// Group.
    pub group: String,
    /// Offset.
    pub offset: u64,
    /// Payload bytes exactly.
    pub payload: Bytes,
    /// Whether it came in a binary frame.
    pub binary: bool,
}

/// What a `herald.v1` client received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum V1Event {
    /// A message.
    Message(V1Message),
    /// An app-level ping (already answered with a pong unless disabled).
    Ping,
    /// A goaway with its retry window.
    Goaway(u64, u64),
    /// The server closed with this code.
    Closed(u16),
    /// `join` (`true`) or `leave` of (group, sub), on routes with `presence = true`.
    Presence(bool, String, String),
}

/// A `herald.v1` client: sends `hello` with its positions, reads `welcome`, then
/// messages, tracking the last offset per group.
#[derive(Debug)]
pub struct V1Client {
    ws: WsClient,
    /// Positions per group, updated as messages arrive.
    pub positions: BTreeMap<String, StreamPos>,
    /// The last `welcome`, per group.
    pub welcome: BTreeMap<String, WelcomeStream>,
    /// `ping_ms` from the last welcome.
    pub ping_ms: u64,
    /// Whether to answer pings (tests turn this off to provoke 4002).
    pub answer_pings: bool,
}

impl V1Client {
    /// Connects and resumes from `positions` (empty on a first visit).
    pub async fn connect(url: &str, positions: BTreeMap<String, StreamPos>) -> Result<Self> {
        let mut ws = WsClient::connect_with(url, &["herald.v1"]).await?;
        let streams: serde_json::Map<String, serde_json::Value> = positions
            .iter()
            .map(|(g, p)| (g.clone(), serde_json::json!({"o": p.offset, "e": p.epoch})))
            .collect();
        let hello = serde_json::json!({"t": "hello", "v": 1, "streams": streams});
        ws.send_text(&hello.to_string()).await?;
        let welcome = match ws.recv().await? {
            Received::Text(t) => t,
            other => bail!("expected welcome, got {other:?}"),
        };
        let value: serde_json::Value = serde_json::from_str(&welcome).context("welcome is JSON")?;
        if value["t"] != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        let ping_ms = value["ping_ms"]
            .as_u64()
            .ok_or_else(|| anyhow!("welcome without ping_ms"))?;
        let mut client = Self {
            ws,
            positions,
            welcome: BTreeMap::new(),
            ping_ms,
            answer_pings: true,
        };
        if let Some(streams) = value["streams"].as_object() {
            for (group, s) in streams {
                let w = WelcomeStream {
                    offset: s["o"].as_u64().unwrap_or(0),
                    epoch: s["e"].as_str().unwrap_or("").to_string(),
                    recovered: s["recovered"].as_bool().unwrap_or(false),
                };
                // Not recovered: the client resyncs and starts from the current position.
                let keep = client
                    .positions
                    .get(group)
                    .is_some_and(|p| w.recovered && p.epoch == w.epoch);
                if !keep {
                    client.positions.insert(
                        group.clone(),
                        StreamPos {
                            offset: w.offset,
                            epoch: w.epoch.clone(),
                        },
                    );
                }
                client.welcome.insert(group.clone(), w);
            }
        }
        Ok(client)
    }

    /// The next event within `deadline`, `None` when it passes.
    pub async fn next_within(&mut self, deadline: Duration) -> Result<Option<V1Event>> {
        let Some(received) = self.ws.recv_within(deadline).await? else {
            return Ok(None);
        };
        let event = match received {
            Received::Closed(code) => V1Event::Closed(code),
            Received::Text(text) => {
                let (header, payload) = match text.split_once('\n') {
                    Some((h, p)) => (h.to_string(), Bytes::from(p.to_string())),
                    None => (text.clone(), Bytes::new()),
                };
                self.header_event(&header, payload, false).await?
            }
            Received::Binary(data) => {
                if data.len() < 4 {
                    bail!("binary frame shorter than its length prefix");
                }
                let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
                let header = data
                    .get(4..4 + len)
                    .ok_or_else(|| anyhow!("header length past the frame"))?;
                let header = std::str::from_utf8(header)?.to_string();
                self.header_event(&header, data.slice(4 + len..), true)
                    .await?
            }
        };
        Ok(Some(event))
    }

    async fn header_event(
        &mut self,
        header: &str,
        payload: Bytes,
        binary: bool,
    ) -> Result<V1Event> {
        let value: serde_json::Value =
            serde_json::from_str(header).with_context(|| format!("header {header:?}"))?;
        match value["t"].as_str() {
            Some("m") => {
                let group = value["s"]
                    .as_str()
                    .ok_or_else(|| anyhow!("m without s"))?
                    .to_string();
                let offset = value["o"].as_u64().ok_or_else(|| anyhow!("m without o"))?;
                if let Some(p) = self.positions.get_mut(&group) {
                    p.offset = offset;
                }
                Ok(V1Event::Message(V1Message {
                    group,
                    offset,
                    payload,
                    binary,
                }))
            }
            Some("ping") => {
                if self.answer_pings {
                    self.ws.send_text(r#"{"t":"pong"}"#).await?;
                }
                Ok(V1Event::Ping)
            }
            Some("goaway") => {
                let window = &value["retry_ms"];
                Ok(V1Event::Goaway(
                    window[0].as_u64().unwrap_or(0),
                    window[1].as_u64().unwrap_or(0),
                ))
            }
            Some(t @ ("join" | "leave")) => {
                let group = value["s"]
                    .as_str()
                    .ok_or_else(|| anyhow!("{t} without s"))?;
                let sub = value["sub"]
                    .as_str()
                    .ok_or_else(|| anyhow!("{t} without sub"))?;
                Ok(V1Event::Presence(
                    t == "join",
                    group.to_string(),
                    sub.to_string(),
                ))
            }
            other => bail!("unexpected frame type {other:?} in {header}"),
        }
    }

    /// The next message, skipping pings, failing on anything else or after `deadline`.
    pub async fn next_message(&mut self, deadline: Duration) -> Result<V1Message> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await? {
                Some(V1Event::Message(m)) => return Ok(m),
                Some(V1Event::Ping) => continue,
                Some(other) => bail!("expected a message, got {other:?}"),
                None => bail!("no message within {deadline:?}"),
            }
        }
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send_text(text).await
    }

    /// Sends a raw binary frame.
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<()> {
        self.ws.send_binary(data).await
    }

    /// Drops the connection without a closing handshake, keeping the positions.
    pub fn disconnect(self) -> BTreeMap<String, StreamPos> {
        self.ws.drop_abruptly();
        self.positions
    }
}
