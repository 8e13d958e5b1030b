//! `HistoryRing`: one group's retained messages in the memory layer, packed.
//!
//! Payload bytes live back to back in one byte ring and each message adds a 16-byte
//! record (its time, length and kind); offsets are implicit, because a group's offsets are
//! consecutive. A retained message therefore costs its payload plus ~16 bytes (plus the
//! rings' spare capacity), where keeping each `Message` would cost its payload's own
//! allocation plus ~130 bytes of handles. Reading history copies the payloads out.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::time::Instant;

use crate::{Epoch, GroupName, Message, Payload, PayloadKind};

/// One retained message: when it was stored, how long it is, and its kind.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// Milliseconds after the ring's `base`.
    at_ms: u64,
    len: u32,
    binary: bool,
}

/// The retained messages of one group, oldest first, with consecutive offsets.
#[derive(Debug)]
pub(crate) struct HistoryRing {
    /// What `Record::at_ms` counts from.
    base: Instant,
    /// Offset of the oldest record (meaningless while empty).
    first_offset: u64,
    records: VecDeque<Record>,
    data: VecDeque<u8>,
}

impl HistoryRing {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            base: now,
            first_offset: 0,
            records: VecDeque::new(),
            data: VecDeque::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Offset of the oldest message kept, if any.
    pub(crate) fn first_offset(&self) -> Option<u64> {
        (!self.records.is_empty()).then_some(self.first_offset)
    }

    /// When the oldest message kept was stored.
    pub(crate) fn oldest_at(&self) -> Option<Instant> {
        let record = self.records.front()?;
        Some(self.base + std::time::Duration::from_millis(record.at_ms))
    }

    /// Appends the message with `offset`, which must follow the newest one kept (when it
    /// does not, what was kept is dropped first: a ring never has holes). Payloads longer
    /// than `u32::MAX` bytes are not kept (and clear the ring for the same reason).
    pub(crate) fn push(&mut self, offset: u64, payload: &Payload, now: Instant) {
        let data = payload.data();
        let Ok(len) = u32::try_from(data.len()) else {
            self.clear();
            return;
        };
        if self.records.is_empty() || self.first_offset.saturating_add(self.len() as u64) != offset
        {
            self.clear();
            self.first_offset = offset;
        }
        let at_ms =
            u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        self.records.push_back(Record {
            at_ms,
            len,
            binary: payload.kind() == PayloadKind::Binary,
        });
        self.data.extend(data.iter().copied());
    }

    /// Drops the oldest message; returns its payload length.
    pub(crate) fn pop_oldest(&mut self) -> Option<usize> {
        let record = self.records.pop_front()?;
        let len = record.len as usize;
        self.data.drain(..len.min(self.data.len()));
        self.first_offset = self.first_offset.saturating_add(1);
        if self.records.is_empty() {
            // Give the memory back once nothing is kept.
            self.data = VecDeque::new();
            self.records = VecDeque::new();
        }
        Some(len)
    }

    /// Drops everything kept and the memory holding it.
    pub(crate) fn clear(&mut self) {
        self.records = VecDeque::new();
        self.data = VecDeque::new();
    }

    /// Copies of the messages after `offset`, oldest first, as `group` / `epoch` messages
    /// read from history.
    pub(crate) fn after(&self, offset: u64, group: &GroupName, epoch: &Epoch) -> Vec<Message> {
        let skip = offset.saturating_add(1).saturating_sub(self.first_offset);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        let mut start: usize = self.records.iter().take(skip).map(|r| r.len as usize).sum();
        let mut out = Vec::with_capacity(self.records.len().saturating_sub(skip));
        for (i, record) in self.records.iter().enumerate().skip(skip) {
            let len = record.len as usize;
            let end = start.saturating_add(len);
            if end > self.data.len() {
                // Cannot happen (every record's bytes are pushed with it); never panic.
                break;
            }
            let bytes: Vec<u8> = self.data.range(start..end).copied().collect();
            start = end;
            let data = Bytes::from(bytes);
            let payload = if record.binary {
                Payload::binary(data)
            } else {
                // Stored from a text payload, so still UTF-8; checked anyway, never trusted.
                match Payload::text_from_bytes(data) {
                    Ok(payload) => payload,
                    Err(_) => continue,
                }
            };
            out.push(Message {
                group: group.clone(),
                offset: self.first_offset.saturating_add(i as u64),
                epoch: epoch.clone(),
                payload,
                received_at: None,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn group() -> GroupName {
        GroupName::new("g").unwrap()
    }

    #[test]
    fn keeps_payloads_kinds_and_offsets() {
        let now = Instant::now();
        let mut ring = HistoryRing::new(now);
        let epoch = Epoch::random();
        ring.push(1, &Payload::text("one"), now);
        ring.push(2, &Payload::binary(vec![0u8, 255, 7]), now);
        ring.push(3, &Payload::text(""), now);
        ring.push(4, &Payload::text("four"), now);
        let all = ring.after(0, &group(), &epoch);
        let got: Vec<(u64, Vec<u8>, PayloadKind)> = all
            .iter()
            .map(|m| (m.offset, m.payload.data().to_vec(), m.payload.kind()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, b"one".to_vec(), PayloadKind::Text),
                (2, vec![0, 255, 7], PayloadKind::Binary),
                (3, vec![], PayloadKind::Text),
                (4, b"four".to_vec(), PayloadKind::Text),
            ]
        );
        assert_eq!(ring.after(2, &group(), &epoch).len(), 2);
        assert!(ring.after(4, &group(), &epoch).is_empty());
        assert!(ring.after(u64::MAX, &group(), &epoch).is_empty());
        assert!(
            all.iter()
                .all(|m| m.epoch == epoch && m.received_at.is_none())
        );
    }

    #[test]
    fn pops_from_the_front_and_frees_when_empty() {
        let now = Instant::now();
        let mut ring = HistoryRing::new(now);
        let epoch = Epoch::random();
        for offset in 10..20u64 {
            ring.push(offset, &Payload::text(format!("m{offset}")), now);
        }
        assert_eq!(ring.pop_oldest(), Some(3));
        assert_eq!(ring.first_offset(), Some(11));
        let rest = ring.after(0, &group(), &epoch);
        assert_eq!(
            rest.first().map(|m| m.payload.data().to_vec()),
            Some(b"m11".to_vec())
        );
        assert_eq!(rest.len(), 9);
        while ring.pop_oldest().is_some() {}
        assert!(ring.is_empty());
        assert_eq!(ring.first_offset(), None);
        assert_eq!(ring.data.capacity(), 0);
    }

    #[test]
    fn a_hole_starts_the_ring_over() {
        let now = Instant::now();
        let mut ring = HistoryRing::new(now);
        ring.push(1, &Payload::text("a"), now);
        ring.push(3, &Payload::text("c"), now);
        assert_eq!(ring.first_offset(), Some(3));
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn remembers_when_each_message_was_stored() {
        let base = Instant::now();
        let mut ring = HistoryRing::new(base);
        ring.push(1, &Payload::text("a"), base + Duration::from_millis(1500));
        ring.push(2, &Payload::text("b"), base + Duration::from_secs(9));
        assert_eq!(ring.oldest_at(), Some(base + Duration::from_millis(1500)));
        ring.pop_oldest();
        assert_eq!(ring.oldest_at(), Some(base + Duration::from_secs(9)));
    }
}
