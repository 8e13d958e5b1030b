//! The wire frames: a message in plain mode (the payload as is) and in `herald.v1`
//! (DESIGN.md §4: a header, then the payload), and the `herald.v1` control frames —
//! parsing `hello`/`pong`, encoding `welcome`, `ping` and `goaway`.

use std::collections::HashMap;

use bytes::Bytes;
use herald_core::{Epoch, GroupName, Message, PayloadKind, Position};
use herald_ws::{OpCode, encode_frame, encode_frame_parts};
use serde::Deserialize;

/// The subprotocol name clients offer in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "herald.v1";

/// A client's `hello`: the positions it last saw, per group.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// Last seen position per group; groups the route does not grant are ignored later.
    pub streams: HashMap<String, Position>,
    /// A connection token, for routes with `auth = "token"`.
    pub token: Option<String>,
}

#[derive(Deserialize)]
struct RawHello {
    t: String,
    v: u64,
    #[serde(default)]
    streams: HashMap<String, RawPosition>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
struct RawPosition {
    o: u64,
    e: String,
}

/// Why a first frame is not a valid `hello`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadHello(pub &'static str);

/// Parses the client's first frame.
pub fn parse_hello(text: &[u8]) -> Result<Hello, BadHello> {
    let raw: RawHello = serde_json::from_slice(text)
        .map_err(|_| BadHello("hello is not valid JSON of the expected shape"))?;
    if raw.t != "hello" {
        return Err(BadHello("first frame must be a hello"));
    }
    if raw.v != 1 {
        return Err(BadHello("unsupported protocol version"));
    }
    let streams = raw
        .streams
        .into_iter()
        .filter(|(name, _)| GroupName::new(name).is_ok())
        .map(|(name, p)| {
            (
                name,
                Position {
                    offset: p.o,
                    epoch: Epoch::new(&p.e),
                },
            )
        })
        .collect();
    Ok(Hello {
        streams,
        token: raw.token,
    })
}

/// What a client may send after its hello.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// Answer to a `ping`.
    Pong,
    /// A well-formed frame of a type this server does not act on.
    Other,
}

/// Parses a text frame sent after the hello; only the `t` field matters.
pub fn parse_client_frame(text: &[u8]) -> Result<ClientFrame, BadHello> {
    #[derive(Deserialize)]
    struct Typed {
        t: String,
    }
    let header = text.split(|b| *b == b'\n').next().unwrap_or(text);
    let typed: Typed =
        serde_json::from_slice(header).map_err(|_| BadHello("frame header is not valid JSON"))?;
    Ok(if typed.t == "pong" {
        ClientFrame::Pong
    } else {
        ClientFrame::Other
    })
}

/// Parses a binary frame sent after the hello: `u32 BE header length | header JSON | payload`.
pub fn parse_client_binary(data: &[u8]) -> Result<ClientFrame, BadHello> {
    let bad = BadHello("binary frame is not `u32 length | header JSON | payload`");
    let (len, rest) = data.split_first_chunk::<4>().ok_or(bad.clone())?;
    let len = u32::from_be_bytes(*len) as usize;
    let header = rest.get(..len).ok_or(bad)?;
    parse_client_frame(header)
}

/// Per-group part of a `welcome`.
#[derive(Debug)]
pub struct WelcomeStream<'a> {
    /// The group.
    pub group: &'a GroupName,
    /// Current position (after replay, the last offset the client will have).
    pub current: &'a Position,
    /// Whether the client's position was recovered without a gap.
    pub recovered: bool,
}

/// Encodes the `welcome` frame.
pub fn welcome(ping_ms: u64, streams: &[WelcomeStream<'_>]) -> Bytes {
    let mut map = serde_json::Map::new();
    for s in streams {
        map.insert(
            s.group.to_string(),
            serde_json::json!({"o": s.current.offset, "e": s.current.epoch.as_str(), "recovered": s.recovered}),
        );
    }
    let body = serde_json::json!({"t": "welcome", "ping_ms": ping_ms, "streams": map});
    encode_frame(OpCode::Text, body.to_string().as_bytes())
}

/// Encodes the app-level `ping` (JavaScript cannot see WebSocket pings).
pub fn ping() -> Bytes {
    encode_frame(OpCode::Text, br#"{"t":"ping"}"#)
}

/// Encodes a `join` (`joined = true`) or `leave` event: `sub` appeared in or left `group`.
pub fn presence_event(joined: bool, group: &GroupName, sub: &str) -> Bytes {
    let t = if joined { "join" } else { "leave" };
    let body = serde_json::json!({"t": t, "s": group.as_str(), "sub": sub});
    encode_frame(OpCode::Text, body.to_string().as_bytes())
}

/// Encodes a `goaway` asking the client to reconnect within `[0, window_ms]`.
pub fn goaway(window_ms: u64) -> Bytes {
    encode_frame(
        OpCode::Text,
        format!("{{\"t\":\"goaway\",\"retry_ms\":[0,{window_ms}]}}").as_bytes(),
    )
}

/// The plain-mode frame: the payload byte for byte, as a text or binary frame.
pub fn encode_plain(message: &Message) -> Bytes {
    let opcode = match message.payload.kind() {
        PayloadKind::Text => OpCode::Text,
        PayloadKind::Binary => OpCode::Binary,
    };
    encode_frame(opcode, message.payload.data())
}

/// The `herald.v1` frame: `{"t":"m","s":group,"o":offset}\n<payload>` for text,
/// `u32 BE header length | header | payload` for binary.
pub fn encode_v1(message: &Message) -> Bytes {
    // Group names are [A-Za-z0-9._-], so they need no JSON escaping.
    let header = format!(
        "{{\"t\":\"m\",\"s\":\"{}\",\"o\":{}}}",
        message.group, message.offset
    );
    let payload = message.payload.data();
    match message.payload.kind() {
        PayloadKind::Text => encode_frame_parts(OpCode::Text, &[header.as_bytes(), b"\n", payload]),
        PayloadKind::Binary => {
            let len = (header.len() as u32).to_be_bytes();
            encode_frame_parts(OpCode::Binary, &[&len, header.as_bytes(), payload])
        }
    }
}

/// The Server-Sent Events body of a message (DESIGN.md §14), without its `id:` line and
/// the blank line ending the event (the connection adds both: the id is its own).
///
/// Text: one `data: ` line per line of the payload (CR, LF and CRLF all end a line in
/// SSE, so a browser joins them back with LF). Binary: `event: binary` and the payload in
/// standard base64 on one `data: ` line.
pub fn encode_sse(message: &Message) -> Bytes {
    let payload = message.payload.data();
    match message.payload.kind() {
        PayloadKind::Text => sse_data(payload),
        PayloadKind::Binary => {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
            let mut out = Vec::with_capacity(encoded.len() + 21);
            out.extend_from_slice(b"event: binary\ndata: ");
            out.extend_from_slice(encoded.as_bytes());
            out.push(b'\n');
            Bytes::from(out)
        }
    }
}

/// `data: ` lines for `payload`, split at CR, LF and CRLF.
pub fn sse_data(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(b"data: ");
    let mut i = 0;
    while let Some(&b) = payload.get(i) {
        match b {
            b'\r' | b'\n' => {
                if b == b'\r' && payload.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                out.extend_from_slice(b"\ndata: ");
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_parses() {
        let h = parse_hello(br#"{"t":"hello","v":1,"streams":{"user.42":{"o":17,"e":"Xy3"},"bad name":{"o":1,"e":"x"}}}"#).unwrap();
        assert_eq!(h.streams.len(), 1);
        assert_eq!(h.streams["user.42"].offset, 17);
        assert!(
            parse_hello(br#"{"t":"hello","v":1}"#)
                .unwrap()
                .streams
                .is_empty()
        );
    }

    #[test]
    fn bad_hellos() {
        for bad in [
            &b"not json"[..],
            br#"{"t":"pong"}"#,
            br#"{"t":"hello","v":2}"#,
            br#"{"t":"hello","v":1,"streams":{"g":{"o":-1,"e":"x"}}}"#,
            br#"{"t":"hello","v":1,"streams":[]}"#,
            br#"[]"#,
        ] {
            assert!(
                parse_hello(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            parse_client_frame(br#"{"t":"pong"}"#),
            Ok(ClientFrame::Pong)
        );
        assert_eq!(
            parse_client_frame(b"{\"t\":\"x\"}\npayload"),
            Ok(ClientFrame::Other)
        );
        assert!(parse_client_frame(b"nope").is_err());
        let mut framed = 12u32.to_be_bytes().to_vec();
        framed.extend_from_slice(br#"{"t":"pong"}"#);
        framed.extend_from_slice(&[0, 1, 2]);
        assert_eq!(parse_client_binary(&framed), Ok(ClientFrame::Pong));
        assert!(parse_client_binary(&[0, 0, 0, 99, b'{']).is_err());
        assert!(parse_client_binary(&[1, 2]).is_err());
    }

    #[test]
    fn v1_frames() {
        let g = GroupName::new("user.42").unwrap();
        let text = encode_v1(&v1_message(&g, 18));
        assert_eq!(&text[2..], b"{\"t\":\"m\",\"s\":\"user.42\",\"o\":18}\nhi");
        let mut m = v1_message(&g, 3);
        m.payload = herald_core::Payload::binary(vec![0u8, 1, 2]);
        let bin = encode_v1(&m);
        assert_eq!(bin[0], 0x82);
        let body = &bin[2..];
        let hlen = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
        assert_eq!(
            &body[4..4 + hlen],
            b"{\"t\":\"m\",\"s\":\"user.42\",\"o\":3}"
        );
        assert_eq!(&body[4 + hlen..], &[0, 1, 2]);
    }

    #[test]
    fn sse_bodies() {
        let g = GroupName::new("user.42").unwrap();
        let mut m = v1_message(&g, 1);
        assert_eq!(&encode_sse(&m)[..], b"data: hi\n");
        m.payload = herald_core::Payload::text("a\nb\r\nc\rd\n");
        assert_eq!(
            &encode_sse(&m)[..],
            b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n"
        );
        m.payload = herald_core::Payload::text("");
        assert_eq!(&encode_sse(&m)[..], b"data: \n");
        m.payload = herald_core::Payload::binary(vec![0u8, 1, 2]);
        assert_eq!(&encode_sse(&m)[..], b"event: binary\ndata: AAEC\n");
    }

    fn v1_message(group: &GroupName, offset: u64) -> herald_core::Message {
        herald_core::Message {
            group: group.clone(),
            offset,
            epoch: Epoch::new("e"),
            payload: herald_core::Payload::text("hi"),
            received_at: None,
        }
    }
}
