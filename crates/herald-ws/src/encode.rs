//! Building complete frames as shareable `Bytes`: one allocation and one copy per frame.

use bytes::{BufMut, Bytes, BytesMut};

use crate::mask::apply_mask;
use crate::opcode::OpCode;

/// The largest payload a control frame (Close, Ping, Pong) may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest close reason, in bytes: a control payload minus the 2-byte status code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;

/// Encodes a complete server-to-client frame: FIN set, unmasked.
///
/// The result is meant to be cloned to every recipient; clones share one buffer.
/// Callers keep control payloads (Close, Ping, Pong) within [`MAX_CONTROL_PAYLOAD`]: the
/// purpose-built [`encode_close`], [`encode_ping`] and [`encode_pong`] enforce that.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    encode_frame_parts(opcode, &[payload])
}

/// Like [`encode_frame`], with the payload given as slices to concatenate, such as
/// `[header_json, b"\n", payload]` for herald.v1 frames; the payload is copied once,
/// straight into the frame.
pub fn encode_frame_parts(opcode: OpCode, parts: &[&[u8]]) -> Bytes {
    // Slices that exist in memory cannot add up past usize::MAX unless one is repeated
    // absurdly often; saturating keeps that case a capacity-overflow panic in the allocator
    // rather than a silently short frame.
    let len = parts
        .iter()
        .fold(0_usize, |sum, part| sum.saturating_add(part.len()));
    debug_assert!(
        !opcode.is_control() || len <= MAX_CONTROL_PAYLOAD,
        "control frame payload of {len} bytes"
    );
    let mut frame = BytesMut::with_capacity(header_len(len, false).saturating_add(len));
    put_header(&mut frame, true, opcode, None, len);
    for part in parts {
        frame.put_slice(part);
    }
    frame.freeze()
}

/// Encodes a Close frame with status `code` and `reason`.
///
/// The reason is cut to at most [`MAX_CLOSE_REASON`] (123) bytes, at a UTF-8 character
/// boundary, so the frame stays a valid control frame whatever the caller passes. `code`
/// should be one that [`is_valid_close_code`](crate::is_valid_close_code) accepts; 1005, 1006
/// and 1015 in particular must never be sent.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let reason = truncate_at_char_boundary(reason, MAX_CLOSE_REASON);
    encode_frame_parts(OpCode::Close, &[&code.to_be_bytes(), reason.as_bytes()])
}

/// Encodes a Ping frame. A payload longer than [`MAX_CONTROL_PAYLOAD`] is cut to fit.
pub fn encode_ping(payload: &[u8]) -> Bytes {
    encode_frame(OpCode::Ping, clamp_control(payload))
}

/// Encodes a Pong frame, normally echoing a Ping's payload (which the reader has already
/// bounded). A payload longer than [`MAX_CONTROL_PAYLOAD`] is cut to fit.
pub fn encode_pong(payload: &[u8]) -> Bytes {
    encode_frame(OpCode::Pong, clamp_control(payload))
}

/// Encodes a client-to-server frame: masked with `mask`, FIN as given.
///
/// herald never sends these; they exist so tests and load generators can speak to a server,
/// including in ways a well-behaved client would not (fragments, oversized frames).
pub fn encode_masked_frame(opcode: OpCode, fin: bool, mask: [u8; 4], payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut frame = BytesMut::with_capacity(header_len(len, true) + len);
    put_header(&mut frame, fin, opcode, Some(mask), len);
    let start = frame.len();
    frame.put_slice(payload);
    apply_mask(&mut frame[start..], mask);
    frame.freeze()
}

/// Header size for a payload of `len` bytes: 2 bytes, plus 2 or 8 for the extended length,
/// plus 4 for a mask key.
fn header_len(len: usize, masked: bool) -> usize {
    let extended = match len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + extended + if masked { 4 } else { 0 }
}

fn put_header(frame: &mut BytesMut, fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, len: usize) {
    frame.put_u8(if fin { FIN } else { 0 } | opcode.to_u8());
    let mask_bit = if mask.is_some() { MASKED } else { 0 };
    // The length is always written in its shortest form, as RFC 6455 §5.2 requires of senders.
    if let Ok(short @ 0..=125) = u8::try_from(len) {
        frame.put_u8(mask_bit | short);
    } else if let Ok(medium) = u16::try_from(len) {
        frame.put_u8(mask_bit | 126);
        frame.put_u16(medium);
    } else {
        frame.put_u8(mask_bit | 127);
        // usize is at most 64 bits on every supported target.
        frame.put_u64(len as u64);
    }
    if let Some(key) = mask {
        frame.put_slice(&key);
    }
}

fn clamp_control(payload: &[u8]) -> &[u8] {
    payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload)
}

/// The longest prefix of `text` that is at most `max` bytes and ends on a char boundary.
fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    // A UTF-8 character is at most 4 bytes, so a boundary lies within the last 4 positions.
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_of(frame: &[u8]) -> &[u8] {
        let offset = match frame[1] & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &frame[offset..]
    }

    #[test]
    fn small_text_frame_is_fin_unmasked_with_a_7_bit_length() {
        let frame = encode_frame(OpCode::Text, b"hi");
        assert_eq!(&frame[..], &[0x81, 0x02, b'h', b'i']);
    }

    #[test]
    fn length_encodings_switch_at_126_and_65536() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (0xFFFF, 4), (0x1_0000, 10)] {
            let payload = vec![0xAB; len];
            let frame = encode_frame(OpCode::Binary, &payload);
            assert_eq!(frame.len(), header + len, "len {len}");
            assert_eq!(frame[0], 0x82);
            match header {
                2 => assert_eq!(usize::from(frame[1]), len),
                4 => {
                    assert_eq!(frame[1], 126);
                    assert_eq!(usize::from(u16::from_be_bytes([frame[2], frame[3]])), len);
                }
                _ => {
                    assert_eq!(frame[1], 127);
                    let mut wide = [0; 8];
                    wide.copy_from_slice(&frame[2..10]);
                    assert_eq!(u64::from_be_bytes(wide), len as u64);
                }
            }
            assert_eq!(payload_of(&frame), &payload[..]);
        }
    }

    #[test]
    fn parts_are_concatenated_into_the_same_bytes_as_one_slice() {
        let big = vec![b'x'; 300];
        let joined = [&b"{\"t\":\"m\"}"[..], b"\n", &big].concat();
        let from_parts = encode_frame_parts(OpCode::Text, &[b"{\"t\":\"m\"}", b"\n", &big]);
        assert_eq!(from_parts, encode_frame(OpCode::Text, &joined));
        assert_eq!(
            encode_frame_parts(OpCode::Text, &[]),
            encode_frame(OpCode::Text, b"")
        );
    }

    #[test]
    fn close_frame_carries_the_code_big_endian_then_the_reason() {
        let frame = encode_close(4001, "slow consumer");
        assert_eq!(frame[0], 0x88);
        assert_eq!(usize::from(frame[1]), 2 + "slow consumer".len());
        assert_eq!(&frame[2..4], &4001_u16.to_be_bytes());
        assert_eq!(&frame[4..], b"slow consumer");
    }

    #[test]
    fn close_reason_is_truncated_at_a_char_boundary() {
        // 'é' is 2 bytes: 61 of them make 122, a 62nd would pass 123.
        let frame = encode_close(1000, &"é".repeat(100));
        let reason = std::str::from_utf8(&frame[4..]).expect("reason stays valid UTF-8");
        assert_eq!(reason, "é".repeat(61));
        // '€' is 3 bytes: 'a' + 40 of them make 121, a 41st would make 124.
        let frame = encode_close(1000, &format!("a{}", "€".repeat(60)));
        assert_eq!(&frame[4..], format!("a{}", "€".repeat(40)).as_bytes());
        // Exactly 123 ASCII bytes pass untouched: 125 bytes of payload in all.
        let frame = encode_close(1000, &"r".repeat(130));
        assert_eq!(usize::from(frame[1]), MAX_CONTROL_PAYLOAD);
        assert_eq!(frame.len(), 2 + MAX_CONTROL_PAYLOAD);
    }

    #[test]
    fn ping_and_pong_are_cut_to_125_bytes() {
        let long = [7_u8; 200];
        let ping = encode_ping(&long);
        assert_eq!(ping[0], 0x89);
        assert_eq!(usize::from(ping[1]), MAX_CONTROL_PAYLOAD);
        assert_eq!(ping.len(), 2 + MAX_CONTROL_PAYLOAD);
        let pong = encode_pong(b"echo");
        assert_eq!(&pong[..], &[0x8A, 4, b'e', b'c', b'h', b'o']);
    }

    #[test]
    fn masked_frame_sets_the_mask_bit_and_masks_the_payload() {
        let mask = [0x37, 0xFA, 0x21, 0x3D];
        let frame = encode_masked_frame(OpCode::Text, true, mask, b"Hello");
        // RFC 6455 §5.7, "A single-frame masked text message".
        assert_eq!(
            &frame[..],
            &[
                0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58
            ]
        );
        let fragment = encode_masked_frame(OpCode::Binary, false, mask, &[0; 200]);
        assert_eq!(fragment[0], 0x02);
        assert_eq!(fragment[1], 0x80 | 126);
        assert_eq!(fragment.len(), 2 + 2 + 4 + 200);
    }

    #[test]
    fn truncation_never_splits_a_character() {
        let text = "a€b";
        assert_eq!(truncate_at_char_boundary(text, 0), "");
        assert_eq!(truncate_at_char_boundary(text, 1), "a");
        assert_eq!(truncate_at_char_boundary(text, 2), "a");
        assert_eq!(truncate_at_char_boundary(text, 3), "a");
        assert_eq!(truncate_at_char_boundary(text, 4), "a€");
        assert_eq!(truncate_at_char_boundary(text, 9), "a€b");
    }
}
