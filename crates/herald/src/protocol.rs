//! The `herald.v1` control frames (DESIGN.md §4): parsing `hello`/`pong`, encoding
//! `welcome`, `ping` and `goaway`.

use std::collections::HashMap;

use bytes::Bytes;
use herald_core::{Epoch, GroupName, Position};
use herald_ws::{OpCode, encode_frame};
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

/// Encodes a `goaway` asking the client to reconnect within `[0, window_ms]`.
pub fn goaway(window_ms: u64) -> Bytes {
    encode_frame(
        OpCode::Text,
        format!("{{\"t\":\"goaway\",\"retry_ms\":[0,{window_ms}]}}").as_bytes(),
    )
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
}
