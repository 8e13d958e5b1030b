//! Payloads, stream positions and the message a layer hands to every subscribed node.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::GroupName;

/// Whether a payload travels as a WebSocket text frame or a binary frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// A text frame; the bytes are valid UTF-8.
    Text,
    /// A binary frame; any bytes.
    Binary,
}

/// What a publisher sends: bytes plus their kind. Cloning shares the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    kind: PayloadKind,
    data: Bytes,
}

/// The bytes offered as a text payload are not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("text payload is not valid UTF-8")]
pub struct NotUtf8;

impl Payload {
    /// A text payload.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: PayloadKind::Text,
            data: Bytes::from(text.into()),
        }
    }

    /// A text payload from bytes, checked to be UTF-8.
    pub fn text_from_bytes(data: Bytes) -> Result<Self, NotUtf8> {
        std::str::from_utf8(&data).map_err(|_| NotUtf8)?;
        Ok(Self {
            kind: PayloadKind::Text,
            data,
        })
    }

    /// A binary payload.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self {
            kind: PayloadKind::Binary,
            data: data.into(),
        }
    }

    /// Text or binary.
    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// The payload bytes, exactly as published.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Whether this is a text payload.
    pub fn is_text(&self) -> bool {
        self.kind == PayloadKind::Text
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PayloadKind::Text => {
                let text = String::from_utf8_lossy(&self.data);
                f.debug_tuple("Text").field(&text).finish()
            }
            PayloadKind::Binary => f.debug_tuple("Binary").field(&self.data.len()).finish(),
        }
    }
}

/// Names one unbroken history of a group. It changes whenever that history is lost
/// (expired, flushed, a memory layer restarted), so a client can tell continuity.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// Wraps an epoch string read from a client or a backend.
    pub fn new(epoch: &str) -> Self {
        Self(Arc::from(epoch))
    }

    /// A fresh random epoch: 8 characters of `[A-Za-z0-9]` (47 bits).
    pub fn random() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let s: String = (0..8)
            .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
            .collect();
        Self(Arc::from(s))
    }

    /// The epoch as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A place in a group's stream: `offset` is the number of the last message (0 = none
/// yet) within the history named by `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Offset of the message (or of the latest message), +1 per message per group.
    pub offset: u64,
    /// The history this offset belongs to.
    pub epoch: Epoch,
}

/// A published message as every subscribed node receives it.
#[derive(Clone, Debug)]
pub struct Message {
    /// The group it was published to.
    pub group: GroupName,
    /// Offset of this message within its group's history.
    pub offset: u64,
    /// The history the offset belongs to.
    pub epoch: Epoch,
    /// The bytes to deliver.
    pub payload: Payload,
    /// When the message reached this node (published here, or read from the layer's
    /// transport), for the delivery-latency histogram; `None` for messages read from
    /// history. Not part of the message's identity: equality ignores it.
    pub received_at: Option<std::time::Instant>,
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.group == other.group
            && self.offset == other.offset
            && self.epoch == other.epoch
            && self.payload == other.payload
    }
}

impl Eq for Message {}

impl Message {
    /// The message's position in its group's stream.
    pub fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_must_be_utf8() {
        assert!(Payload::text_from_bytes(Bytes::from_static(b"ok")).is_ok());
        assert_eq!(
            Payload::text_from_bytes(Bytes::from_static(b"\xff")),
            Err(NotUtf8)
        );
    }

    #[test]
    fn epochs_differ() {
        let a = Epoch::random();
        let b = Epoch::random();
        assert_eq!(a.as_str().len(), 8);
        assert_ne!(a, b);
    }
}
