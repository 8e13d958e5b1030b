//! channels_redis' stored message format: random prefix bytes, an optional Fernet token,
//! then a msgpack map with string keys.
//!
//! ```text
//! member = random_prefix (random_prefix_length bytes, ignored on read)
//!       || msgpack(message)                       without encryption keys
//!       || fernet_token(msgpack(message))         with symmetric_encryption_keys
//! ```
//!
//! Only the fields herald needs are given a type ([`ChannelsMessage`]): `type`, `text`
//! (msgpack str), `bytes` (msgpack bin) and the reserved `__asgi_channel__` (str for
//! `send`, array of str for `group_send`). Other fields are read past and not kept.

use bytes::Bytes;
use rmpv::Value;

pub use crate::fernet::NoRandomness;
use crate::fernet::{FernetError, MultiFernet};

/// The reserved field naming the target channel(s) inside a stored message.
pub const ASGI_CHANNEL: &str = "__asgi_channel__";

/// The body of a channels message that herald turns into a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// `"text": str`: a text frame.
    Text(String),
    /// `"bytes": bin`: a binary frame.
    Bytes(Bytes),
}

/// Which channel(s) a stored message is for (`__asgi_channel__`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Targets {
    /// Absent: the message was sent to a normal (non-`!`) channel.
    #[default]
    None,
    /// A string: `send()` to one process-specific channel.
    One(String),
    /// An array: `group_send()`, every member of the group served by this Redis key.
    Many(Vec<String>),
}

impl Targets {
    /// The listed channel names, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let slice: &[String] = match self {
            Targets::None => &[],
            Targets::One(one) => std::slice::from_ref(one),
            Targets::Many(many) => many,
        };
        slice.iter().map(String::as_str)
    }
}

/// The fields of a received message other than `type` and `__asgi_channel__`, in the
/// sender's order: what `[django] payload = "event"` delivers as JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Event(Vec<(String, Value)>);

/// Deepest nesting rendered as JSON; deeper events are refused rather than recursed into.
const MAX_EVENT_DEPTH: usize = 64;

impl Event {
    /// Compact JSON of the event (keys in the sender's order), or why it has none: a
    /// `bytes` value, a non-string map key, a non-finite float or an extension type have
    /// no JSON form (Python's `json.dumps` would refuse most of them too).
    pub fn to_json(&self) -> Result<String, &'static str> {
        let mut out = String::with_capacity(64);
        out.push('{');
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, key);
            out.push(':');
            push_json(&mut out, value, 0)?;
        }
        out.push('}');
        Ok(out)
    }
}

fn push_json_str(out: &mut String, text: &str) {
    // Serializing a str into JSON cannot fail.
    out.push_str(&serde_json::Value::from(text).to_string());
}

fn push_json(out: &mut String, value: &Value, depth: usize) -> Result<(), &'static str> {
    use std::fmt::Write as _;
    if depth >= MAX_EVENT_DEPTH {
        return Err("nested too deeply");
    }
    match value {
        Value::Nil => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(n) => {
            let _ = write!(out, "{n}");
        }
        Value::F32(f) => push_float(out, f64::from(*f))?,
        Value::F64(f) => push_float(out, *f)?,
        Value::String(s) => match s.as_str() {
            Some(text) => push_json_str(out, text),
            None => return Err("a string is not valid UTF-8"),
        },
        Value::Binary(_) => return Err("a bytes value has no JSON form"),
        Value::Ext(..) => return Err("a msgpack extension has no JSON form"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json(out, item, depth + 1)?;
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match key.as_str() {
                    Some(key) => push_json_str(out, key),
                    None => return Err("a map key is not a string"),
                }
                out.push(':');
                push_json(out, item, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn push_float(out: &mut String, f: f64) -> Result<(), &'static str> {
    match serde_json::Number::from_f64(f) {
        Some(n) => {
            out.push_str(&n.to_string());
            Ok(())
        }
        None => Err("a float is not finite"),
    }
}

/// The parts of a channels message herald reads or writes.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ChannelsMessage {
    /// The `type` field (a consumer's handler name with `.` for `_`), if it is a string.
    pub msg_type: Option<String>,
    /// `text` if it is a str, else `bytes` if it is a bin, else `None`.
    pub body: Option<Body>,
    /// The `__asgi_channel__` field.
    pub targets: Targets,
    /// Every other field (`text` and `bytes` included), for `payload = "event"`. Empty
    /// when encoding.
    pub event: Event,
}

/// Why a stored message could not be read. Decode errors are counted and never stop a
/// receive loop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the random prefix.
    #[error("message shorter than the {0}-byte random prefix")]
    TooShort(usize),
    /// The Fernet layer refused it (wrong keys, tampered, expired, not encrypted).
    #[error("cannot decrypt message")]
    Fernet(#[source] FernetError),
    /// Not a msgpack value, or trailing bytes after it.
    #[error("invalid msgpack: {0}")]
    Msgpack(String),
    /// Valid msgpack, but not a map with string keys, or a reserved field of the wrong type.
    #[error("not a channels message: {0}")]
    Shape(&'static str),
}

/// Reads and writes stored messages with one layer's settings (prefix length, keys, TTL).
#[derive(Clone, Debug)]
pub struct Codec {
    random_prefix_length: usize,
    fernet: Option<MultiFernet>,
    /// The Fernet TTL on decrypt: `expiry + 10` for the core layer, none for pubsub.
    fernet_ttl: Option<u64>,
}

impl Codec {
    /// A codec with channels_redis' settings. `encryption_keys` empty = no encryption;
    /// `fernet_ttl` is the maximum token age accepted on decode (`None`: no time check).
    pub fn new(
        random_prefix_length: usize,
        encryption_keys: &[String],
        fernet_ttl: Option<u64>,
    ) -> Self {
        Self {
            random_prefix_length,
            fernet: MultiFernet::from_secrets(encryption_keys),
            fernet_ttl,
        }
    }

    /// Decodes a stored member (or a pub/sub payload), using the system clock for the
    /// Fernet TTL check.
    pub fn decode(&self, member: &[u8]) -> Result<ChannelsMessage, DecodeError> {
        self.decode_at(member, unix_now_secs())
    }

    /// [`Codec::decode`] with an explicit clock, in Unix seconds.
    pub fn decode_at(&self, member: &[u8], now: u64) -> Result<ChannelsMessage, DecodeError> {
        let body = member
            .get(self.random_prefix_length..)
            .ok_or(DecodeError::TooShort(self.random_prefix_length))?;
        let plain;
        let packed = match &self.fernet {
            Some(fernet) => {
                plain = fernet
                    .decrypt(body, self.fernet_ttl, now)
                    .map_err(DecodeError::Fernet)?;
                &plain[..]
            }
            None => body,
        };
        let mut cursor = packed;
        let value = rmpv::decode::read_value(&mut cursor)
            .map_err(|e| DecodeError::Msgpack(e.to_string()))?;
        // msgpack-python's unpackb refuses trailing data; so do we, since it means the
        // prefix length or format does not match the sender's.
        if !cursor.is_empty() {
            return Err(DecodeError::Msgpack(format!(
                "{} bytes of extra data",
                cursor.len()
            )));
        }
        message_from_value(value)
    }

    /// Encodes `message` for storage: fresh random prefix, msgpack, Fernet if configured.
    /// Field order: `type`, then `text`/`bytes`, then `__asgi_channel__` if any. Fails
    /// only when encryption is on and the OS random generator fails (no weak IV is used).
    pub fn encode(&self, message: &ChannelsMessage) -> Result<Vec<u8>, NoRandomness> {
        self.encode_at(message, unix_now_secs())
    }

    /// [`Codec::encode`] with an explicit clock (the Fernet timestamp), in Unix seconds.
    pub fn encode_at(&self, message: &ChannelsMessage, now: u64) -> Result<Vec<u8>, NoRandomness> {
        let packed = pack(message);
        let mut out = Vec::with_capacity(self.random_prefix_length + packed.len() + 100);
        // The prefix only keeps identical messages from collapsing into one zset member,
        // so a fast non-cryptographic generator is enough (channels_redis uses `random`).
        out.extend((0..self.random_prefix_length).map(|_| fastrand::u8(..)));
        match &self.fernet {
            Some(fernet) => out.extend_from_slice(&fernet.encrypt(&packed, now)?),
            None => out.extend_from_slice(&packed),
        }
        Ok(out)
    }
}

/// msgpack of the message as a str-keyed map, the way msgpack-python packs a dict.
fn pack(message: &ChannelsMessage) -> Vec<u8> {
    let mut entries = Vec::with_capacity(3);
    if let Some(t) = &message.msg_type {
        entries.push((Value::from("type"), Value::from(t.as_str())));
    }
    match &message.body {
        Some(Body::Text(text)) => entries.push((Value::from("text"), Value::from(text.as_str()))),
        Some(Body::Bytes(data)) => {
            entries.push((Value::from("bytes"), Value::Binary(data.to_vec())))
        }
        None => {}
    }
    match &message.targets {
        Targets::None => {}
        Targets::One(one) => entries.push((Value::from(ASGI_CHANNEL), Value::from(one.as_str()))),
        Targets::Many(many) => entries.push((
            Value::from(ASGI_CHANNEL),
            Value::Array(many.iter().map(|c| Value::from(c.as_str())).collect()),
        )),
    }
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    if rmpv::encode::write_value(&mut out, &Value::Map(entries)).is_err() {
        unreachable!("writing msgpack into a Vec cannot fail");
    }
    out
}

fn message_from_value(value: Value) -> Result<ChannelsMessage, DecodeError> {
    let Value::Map(entries) = value else {
        return Err(DecodeError::Shape("top-level value is not a map"));
    };
    let mut message = ChannelsMessage::default();
    let mut text = None;
    let mut bytes = None;
    for (key, value) in entries {
        let key = match key {
            Value::String(s) => match s.into_str() {
                Some(s) => s,
                None => return Err(DecodeError::Shape("map key is not valid UTF-8")),
            },
            // msgpack-python (strict_map_key) accepts bin keys; they cannot name a field
            // herald reads, so they are skipped.
            Value::Binary(_) => continue,
            _ => return Err(DecodeError::Shape("map key is not a string")),
        };
        match key.as_str() {
            "type" => {
                if let Value::String(s) = value {
                    message.msg_type = s.into_str();
                }
            }
            "text" => {
                message.event.0.push((key.clone(), value.clone()));
                if let Value::String(s) = value {
                    text = Some(
                        s.into_str()
                            .ok_or(DecodeError::Shape("text is not valid UTF-8"))?,
                    );
                }
            }
            "bytes" => {
                message.event.0.push((key.clone(), value.clone()));
                if let Value::Binary(b) = value {
                    bytes = Some(Bytes::from(b));
                }
            }
            ASGI_CHANNEL => {
                message.targets = match value {
                    Value::String(s) => Targets::One(
                        s.into_str()
                            .ok_or(DecodeError::Shape("__asgi_channel__ is not valid UTF-8"))?,
                    ),
                    Value::Array(items) => {
                        let mut names = Vec::with_capacity(items.len());
                        for item in items {
                            match item {
                                Value::String(s) => names.push(s.into_str().ok_or(
                                    DecodeError::Shape("__asgi_channel__ is not valid UTF-8"),
                                )?),
                                _ => {
                                    return Err(DecodeError::Shape(
                                        "__asgi_channel__ holds a non-string",
                                    ));
                                }
                            }
                        }
                        Targets::Many(names)
                    }
                    _ => return Err(DecodeError::Shape("__asgi_channel__ is not str or array")),
                };
            }
            _ => message.event.0.push((key, value)),
        }
    }
    // A consumer sends text when it has it (daphne refuses both at once); herald prefers
    // text the same way.
    message.body = match (text, bytes) {
        (Some(t), _) => Some(Body::Text(t)),
        (None, Some(b)) => Some(Body::Bytes(b)),
        (None, None) => None,
    };
    Ok(message)
}

/// Wall-clock seconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Wall-clock seconds since the Unix epoch as a float, the form channels_redis scores use.
pub(crate) fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex_str(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn decodes_a_send_example() {
        // CHANNELS_REDIS.md §4, example 1 (the 74-char channel name spelled out).
        let channel = "specific.5dafb5d2e66848ae9a41407381ed3e2c!8a5341173aa4452aba107d80711a3c46";
        let member = unhex(&format!(
            "446e70621992485b78a19a86 87 a474797065 ac636861742e6d657373616765 \
             a474657874 a26869 a16e 01 a162 c4020001 a166 cb3ff8000000000000 \
             a16c 9201a161 b05f5f617367695f6368616e6e656c5f5f d94a{}",
            hex_str(channel)
        ));
        let msg = Codec::new(12, &[], None).decode(&member).unwrap();
        assert_eq!(msg.msg_type.as_deref(), Some("chat.message"));
        assert_eq!(msg.body, Some(Body::Text("hi".into())));
        assert_eq!(msg.targets, Targets::One(channel.into()));
    }

    #[test]
    fn decodes_the_group_send_captured_from_django() {
        // CHANNELS_REDIS.md §4: Django's group_send to a Rust peer, captured in Redis.
        let channel = "specific.eef22a205b081968352a73a52ac0c766!rustconn1";
        assert_eq!(channel.len(), 0x33);
        let member = unhex(&format!(
            "3e8a34d67cfc847760d80419 83 a474797065 a66e6f74696679 a474657874 \
             bc68656c6c6f2066726f6d20646a616e676f2067726f75705f73656e64 \
             b05f5f617367695f6368616e6e656c5f5f 91 d933{}",
            hex_str(channel)
        ));
        let msg = Codec::new(12, &[], None).decode(&member).unwrap();
        assert_eq!(msg.msg_type.as_deref(), Some("notify"));
        assert_eq!(
            msg.body,
            Some(Body::Text("hello from django group_send".into()))
        );
        assert_eq!(msg.targets, Targets::Many(vec![channel.into()]));
    }

    #[test]
    fn decodes_a_pubsub_payload_without_prefix() {
        // CHANNELS_REDIS.md §8: the pubsub layer sends bare msgpack.
        let payload = unhex("82a474797065a66e6f74696679a474657874ac7075627375622068656c6c6f");
        let msg = Codec::new(0, &[], None).decode(&payload).unwrap();
        assert_eq!(msg.msg_type.as_deref(), Some("notify"));
        assert_eq!(msg.body, Some(Body::Text("pubsub hello".into())));
        assert_eq!(msg.targets, Targets::None);
    }

    #[test]
    fn encodes_like_msgpack_python() {
        let msg = ChannelsMessage {
            msg_type: Some("notify".into()),
            body: Some(Body::Text("hello group".into())),
            targets: Targets::Many(vec!["a!b".into()]),
            event: Event::default(),
        };
        let member = Codec::new(12, &[], None).encode(&msg).unwrap();
        assert_eq!(
            &member[12..],
            &unhex(
                "83 a474797065 a66e6f74696679 a474657874 ab68656c6c6f2067726f7570 \
                 b05f5f617367695f6368616e6e656c5f5f 91 a3 61 21 62"
            )[..]
        );
        let bin = ChannelsMessage {
            msg_type: Some("t".into()),
            body: Some(Body::Bytes(Bytes::from_static(b"\x00\x01"))),
            targets: Targets::One("x".into()),
            event: Event::default(),
        };
        let member = Codec::new(0, &[], None).encode(&bin).unwrap();
        assert_eq!(
            member,
            unhex(
                "83 a474797065 a174 a562797465 73 c4020001 b05f5f617367695f6368616e6e656c5f5f a178"
            )
        );
    }

    #[test]
    fn round_trips_with_and_without_encryption() {
        let msg = ChannelsMessage {
            msg_type: Some("herald.message".into()),
            body: Some(Body::Bytes(Bytes::from_static(&[0, 159, 255]))),
            targets: Targets::Many(vec!["specific.a!1".into(), "specific.a!2".into()]),
            event: Event::default(),
        };
        for keys in [vec![], vec!["s3cret".to_owned(), "older".to_owned()]] {
            for prefix in [0, 12, 3] {
                let codec = Codec::new(prefix, &keys, Some(70));
                let member = codec.encode(&msg).unwrap();
                let decoded = codec.decode(&member).unwrap();
                // Decoding keeps the event's fields for payload = "event".
                assert_eq!(
                    decoded.event.to_json(),
                    Err("a bytes value has no JSON form")
                );
                let decoded = ChannelsMessage {
                    event: Event::default(),
                    ..decoded
                };
                assert_eq!(decoded, msg, "{prefix} {keys:?}");
            }
        }
        // The second key alone decrypts nothing the first key encrypted.
        let codec = Codec::new(12, &["a".to_owned()], None);
        let other = Codec::new(12, &["b".to_owned()], None);
        assert!(matches!(
            other.decode(&codec.encode(&msg).unwrap()),
            Err(DecodeError::Fernet(_))
        ));
    }

    #[test]
    fn prefers_text_and_tolerates_other_fields() {
        // {"type": "x", "text": None, "bytes": b"\x01", "extra": {1: 2}} with a bin key.
        let packed = unhex("84 a474797065 a178 a474657874 c0 a562797465 73 c40101 c401 6b 01");
        let msg = Codec::new(0, &[], None).decode(&packed).unwrap();
        assert_eq!(msg.body, Some(Body::Bytes(Bytes::from_static(&[1]))));
        let none = unhex("81 a474797065 a178");
        assert_eq!(Codec::new(0, &[], None).decode(&none).unwrap().body, None);
    }

    #[test]
    fn reports_bad_input() {
        let codec = Codec::new(12, &[], None);
        assert_eq!(codec.decode(b"short"), Err(DecodeError::TooShort(12)));
        // Written without the prefix: the reader strips real data and finds garbage or
        // trailing bytes (msgpack ExtraData in Python).
        let bare = unhex("82a474797065a66e6f74696679a474657874ac7075627375622068656c6c6f");
        assert!(codec.decode(&bare).is_err());
        let mut trailing = vec![0u8; 12];
        trailing.extend_from_slice(&unhex("80 80"));
        assert!(matches!(
            codec.decode(&trailing),
            Err(DecodeError::Msgpack(_))
        ));
        let mut list = vec![0u8; 12];
        list.extend_from_slice(&unhex("91 01"));
        assert!(matches!(codec.decode(&list), Err(DecodeError::Shape(_))));
        let mut int_key = vec![0u8; 12];
        int_key.extend_from_slice(&unhex("81 01 01"));
        assert!(matches!(codec.decode(&int_key), Err(DecodeError::Shape(_))));
        let mut bad_target = vec![0u8; 12];
        bad_target.extend_from_slice(&unhex("81 b05f5f617367695f6368616e6e656c5f5f 01"));
        assert!(matches!(
            codec.decode(&bad_target),
            Err(DecodeError::Shape(_))
        ));
    }

    #[test]
    fn renders_the_event_without_type_as_compact_json() {
        // {"type": "chat.message", "message": "hi", "n": [1, 2.5, null, true], "m": {"k": "v"}}
        // as msgpack-python packs it: Channels' tutorial message plus nested values.
        let packed = unhex(
            "85 a474797065 ac636861742e6d657373616765 a76d657373616765 a26869 \
             a16e 94 01 cb4004000000000000 c0 c3 a16d 81 a16b a176 \
             b05f5f617367695f6368616e6e656c5f5f 91 a3 61 21 62",
        );
        let msg = Codec::new(0, &[], None).decode(&packed).unwrap();
        assert_eq!(msg.body, None);
        assert_eq!(
            msg.event.to_json().unwrap(),
            r#"{"message":"hi","n":[1,2.5,null,true],"m":{"k":"v"}}"#
        );
    }
}
