//! The envelope: how one message travels on a group's pub/sub channel.
//!
//! The publish script writes it (see `scripts.rs`); this file reads it. Layout, version 1:
//!
//! ```text
//! 0x01 | kind: b't' (text) or b'b' (binary) | offset, ASCII decimal | b':' | epoch | b'\n' | payload
//! ```
//!
//! The payload comes last and runs to the end, so it needs no escaping and is handed on
//! as a slice of the received buffer (no copy). The first byte is the format version: a
//! reader that meets another version counts and skips the message instead of misreading it.

use bytes::Bytes;
use herald_core::{Epoch, GroupName, Message, Payload};

/// The only envelope version this crate writes and reads.
pub(crate) const VERSION: u8 = 1;
/// Kind byte of a text payload.
pub(crate) const KIND_TEXT: &str = "t";
/// Kind byte of a binary payload.
pub(crate) const KIND_BINARY: &str = "b";

/// Longest offset field accepted: `u64::MAX` has 20 digits.
const MAX_OFFSET_DIGITS: usize = 20;
/// Longest epoch field accepted; herald's own epochs have 8 characters.
const MAX_EPOCH_LEN: usize = 64;

/// Why an envelope was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("envelope is truncated")]
    Truncated,
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("unknown payload kind {0:#04x}")]
    Kind(u8),
    #[error("bad offset")]
    Offset,
    #[error("bad epoch")]
    Epoch,
    #[error("text payload is not valid UTF-8")]
    NotUtf8,
}

/// The kind byte for a payload, as the publish script expects it.
pub(crate) fn kind_of(payload: &Payload) -> &'static str {
    if payload.is_text() {
        KIND_TEXT
    } else {
        KIND_BINARY
    }
}

/// Builds a payload from its kind string and bytes, as stored in the history stream.
pub(crate) fn payload_from_parts(kind: &[u8], data: Bytes) -> Result<Payload, DecodeError> {
    match kind {
        b"t" => Payload::text_from_bytes(data).map_err(|_| DecodeError::NotUtf8),
        b"b" => Ok(Payload::binary(data)),
        [other, ..] => Err(DecodeError::Kind(*other)),
        [] => Err(DecodeError::Truncated),
    }
}

/// Reads one envelope received on `group`'s channel.
pub(crate) fn decode(group: GroupName, envelope: Bytes) -> Result<Message, DecodeError> {
    let (&version, rest) = envelope.split_first().ok_or(DecodeError::Truncated)?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let (&kind, rest) = rest.split_first().ok_or(DecodeError::Truncated)?;
    let colon = rest
        .iter()
        .take(MAX_OFFSET_DIGITS + 1)
        .position(|&b| b == b':')
        .ok_or(DecodeError::Offset)?;
    let digits = &rest[..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::Offset);
    }
    // All ASCII digits, so this is valid UTF-8; parse rejects an overflow.
    let offset: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(DecodeError::Offset)?;
    let rest = &rest[colon + 1..];
    let newline = rest
        .iter()
        .take(MAX_EPOCH_LEN + 1)
        .position(|&b| b == b'\n')
        .ok_or(DecodeError::Epoch)?;
    let epoch = std::str::from_utf8(&rest[..newline]).map_err(|_| DecodeError::Epoch)?;
    if epoch.is_empty() {
        return Err(DecodeError::Epoch);
    }
    // 1 version byte + 1 kind byte + digits + ':' + epoch + '\n'.
    let header_len = 2 + colon + 1 + newline + 1;
    let data = envelope.slice(header_len..);
    let payload = payload_from_parts(&[kind], data)?;
    Ok(Message {
        group,
        offset,
        epoch: Epoch::new(epoch),
        payload,
        received_at: Some(std::time::Instant::now()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupName {
        GroupName::new("g").unwrap()
    }

    /// What the publish script writes, spelled in Rust for the tests.
    fn encode(offset: u64, epoch: &str, payload: &Payload) -> Bytes {
        let mut out = vec![VERSION];
        out.extend_from_slice(kind_of(payload).as_bytes());
        out.extend_from_slice(format!("{offset}:{epoch}\n").as_bytes());
        out.extend_from_slice(payload.data());
        Bytes::from(out)
    }

    #[test]
    fn round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        for payload in [
            Payload::text(""),
            Payload::text("a:b\nc"),
            Payload::binary(all),
            Payload::binary(Vec::new()),
        ] {
            let m = decode(group(), encode(u64::MAX, "Xy3", &payload)).unwrap();
            assert_eq!(m.offset, u64::MAX);
            assert_eq!(m.epoch.as_str(), "Xy3");
            assert_eq!(m.payload, payload);
        }
    }

    #[test]
    fn rejects_malformed() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::Truncated),
            (b"\x02t1:e\nx", DecodeError::Version(2)),
            (b"\x01", DecodeError::Truncated),
            (b"\x01x1:e\nx", DecodeError::Kind(b'x')),
            (b"\x01t:e\nx", DecodeError::Offset),
            (b"\x01t1a:e\nx", DecodeError::Offset),
            (b"\x01t99999999999999999999:e\n", DecodeError::Offset),
            (b"\x01t1:e", DecodeError::Epoch),
            (b"\x01t1:\nx", DecodeError::Epoch),
            (b"\x01t1:e\n\xff", DecodeError::NotUtf8),
        ];
        for (input, want) in cases {
            let got = decode(group(), Bytes::copy_from_slice(input));
            assert_eq!(got.as_ref().err(), Some(want), "{input:?}");
        }
    }
}
