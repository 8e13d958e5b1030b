//! Property tests of `FrameReader`: no input panics it, and chunking never changes what it decodes.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt as _;
use herald_ws::{
    FrameReader, Inbound, Limits, MAX_HEADER_LEN, OpCode, ProtocolError, ReadError, apply_mask,
    encode_masked_frame,
};
use proptest::prelude::*;
use proptest::sample::Index;
use tokio::io::{AsyncRead, ReadBuf};

/// A transport that hands out pre-cut chunks, one per read call, and is always ready, so a
/// whole `FrameReader::read` completes in a single poll.
struct Chunked {
    chunks: VecDeque<Vec<u8>>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(front) = self.chunks.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.drain(..n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Cuts `bytes` into non-empty chunks whose sizes cycle through `sizes`.
fn cut(bytes: &[u8], sizes: &[usize]) -> VecDeque<Vec<u8>> {
    let mut chunks = VecDeque::new();
    let mut rest = bytes;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(size.clamp(1, rest.len()));
        chunks.push_back(head.to_vec());
        rest = tail;
    }
    chunks
}

/// Everything the reader yields when fed `chunks` through `parse`, up to the first error.
fn parse_chunks(
    limits: Limits,
    chunks: &VecDeque<Vec<u8>>,
) -> (Vec<Inbound>, Option<ProtocolError>) {
    let mut reader = FrameReader::new(limits);
    let mut items = Vec::new();
    for chunk in chunks {
        reader.buffer_mut().extend_from_slice(chunk);
        loop {
            match reader.parse() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(err) => {
                    // The error sticks.
                    assert_eq!(reader.parse(), Err(err));
                    return (items, Some(err));
                }
            }
        }
    }
    (items, None)
}

/// How a stream read through `FrameReader::read` ended.
#[derive(Debug, PartialEq)]
enum End {
    Eof,
    Protocol(ProtocolError),
    Truncated,
}

/// Everything `read` yields from `chunks`, checking the buffer bound after every call.
fn read_chunks(limits: Limits, chunks: VecDeque<Vec<u8>>) -> (Vec<Inbound>, End) {
    let mut io = Chunked { chunks };
    let mut reader = FrameReader::new(limits);
    let mut items = Vec::new();
    loop {
        let result = reader
            .read(&mut io)
            .now_or_never()
            .expect("an always-ready transport never leaves read pending");
        let bound = limits.max_frame.saturating_add(MAX_HEADER_LEN).max(8);
        assert!(
            reader.buffer_mut().capacity() <= bound,
            "buffer capacity {} over {bound}",
            reader.buffer_mut().capacity()
        );
        match result {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, End::Eof),
            Err(ReadError::Protocol(err)) => return (items, End::Protocol(err)),
            Err(ReadError::Io(err)) => {
                assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
                return (items, End::Truncated);
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Valid streams
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Control {
    opcode: OpCode,
    payload: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Item {
    Control(Control),
    Message {
        is_text: bool,
        payload: Vec<u8>,
        /// Where the payload is cut into fragments (repeats make empty fragments).
        cuts: Vec<Index>,
        /// Control frames sent between fragments, by fragment position.
        between: Vec<Option<Control>>,
    },
}

fn control() -> impl Strategy<Value = Control> {
    (
        prop_oneof![Just(OpCode::Ping), Just(OpCode::Pong)],
        prop::collection::vec(any::<u8>(), 0..=125),
    )
        .prop_map(|(opcode, payload)| Control { opcode, payload })
}

fn item() -> impl Strategy<Value = Item> {
    let payload = prop_oneof![
        ".{0,200}".prop_map(|text| (true, text.into_bytes())),
        prop::collection::vec(any::<u8>(), 0..2000).prop_map(|bytes| (false, bytes)),
    ];
    let message = (
        payload,
        prop::collection::vec(any::<Index>(), 0..5),
        prop::collection::vec(prop::option::of(control()), 0..5),
    )
        .prop_map(|((is_text, payload), cuts, between)| Item::Message {
            is_text,
            payload,
            cuts,
            between,
        });
    prop_oneof![1 => control().prop_map(Item::Control), 3 => message]
}

fn close() -> impl Strategy<Value = Option<(u16, String)>> {
    let code = prop_oneof![1000_u16..=1003, 1007_u16..=1011, 3000_u16..=4999];
    prop::option::of((code, ".{0,30}"))
}

/// The wire bytes of `items` (and a final close) and the items the reader must yield.
fn build(items: &[Item], close: &Option<(u16, String)>, mask: [u8; 4]) -> (Vec<u8>, Vec<Inbound>) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let push_control = |wire: &mut Vec<u8>, expected: &mut Vec<Inbound>, c: &Control| {
        wire.extend_from_slice(&encode_masked_frame(c.opcode, true, mask, &c.payload));
        let payload = Bytes::from(c.payload.clone());
        expected.push(match c.opcode {
            OpCode::Ping => Inbound::Ping(payload),
            _ => Inbound::Pong(payload),
        });
    };
    for item in items {
        match item {
            Item::Control(c) => push_control(&mut wire, &mut expected, c),
            Item::Message {
                is_text,
                payload,
                cuts,
                between,
            } => {
                let mut points: Vec<usize> = cuts
                    .iter()
                    .map(|index| index.index(payload.len() + 1))
                    .collect();
                points.sort_unstable();
                let mut bounds = vec![0];
                bounds.extend(points);
                bounds.push(payload.len());
                let fragments = bounds.len() - 1;
                for i in 0..fragments {
                    let opcode = match (i, is_text) {
                        (0, true) => OpCode::Text,
                        (0, false) => OpCode::Binary,
                        _ => OpCode::Continuation,
                    };
                    let fin = i + 1 == fragments;
                    let piece = &payload[bounds[i]..bounds[i + 1]];
                    wire.extend_from_slice(&encode_masked_frame(opcode, fin, mask, piece));
                    if let (false, Some(Some(c))) = (fin, between.get(i)) {
                        push_control(&mut wire, &mut expected, c);
                    }
                }
                let payload = Bytes::from(payload.clone());
                expected.push(if *is_text {
                    Inbound::Text(payload)
                } else {
                    Inbound::Binary(payload)
                });
            }
        }
    }
    if let Some((code, reason)) = close {
        let payload = [&code.to_be_bytes()[..], reason.as_bytes()].concat();
        wire.extend_from_slice(&encode_masked_frame(OpCode::Close, true, mask, &payload));
        expected.push(Inbound::Close {
            code: Some(*code),
            reason: reason.clone(),
        });
    }
    (wire, expected)
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1_usize..4, 1_usize..300, 1_usize..5000], 1..8)
}

// ---------------------------------------------------------------------------------------
// Hostile streams
// ---------------------------------------------------------------------------------------

/// A frame encoded with no regard for the rules: any first byte, mask or not, any length
/// form (including non-minimal and oversized declarations).
#[derive(Debug, Clone)]
struct RawFrame {
    first: u8,
    masked: bool,
    length_form: u8,
    declared_extra: u16,
    payload: Vec<u8>,
}

fn raw_frame() -> impl Strategy<Value = RawFrame> {
    (
        // Mostly sensible opcodes and bits, sometimes anything.
        prop_oneof![
            3 => prop::sample::select(vec![0x00_u8, 0x01, 0x02, 0x80, 0x81, 0x82, 0x88, 0x89, 0x8A]),
            1 => any::<u8>(),
        ],
        prop::bool::weighted(0.9),
        0_u8..4,
        prop_oneof![4 => Just(0_u16), 1 => any::<u16>()],
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(first, masked, length_form, declared_extra, payload)| RawFrame {
            first,
            masked,
            length_form,
            declared_extra,
            payload,
        })
}

fn encode_raw(frame: &RawFrame, mask: [u8; 4]) -> Vec<u8> {
    let mask_bit = if frame.masked { 0x80 } else { 0 };
    // Sometimes declare more than is sent, to leave the reader waiting mid-frame.
    let len = frame.payload.len() + usize::from(frame.declared_extra);
    let mut out = vec![frame.first];
    match (frame.length_form, len) {
        (0, 0..=125) => out.push(mask_bit | len as u8),
        (0 | 1, 0..=0xFFFF) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (3, _) => {
            // The forbidden top bit.
            out.push(mask_bit | 127);
            out.extend_from_slice(&((len as u64) | 1 << 63).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if frame.masked {
        out.extend_from_slice(&mask);
    }
    let start = out.len();
    out.extend_from_slice(&frame.payload);
    if frame.masked {
        apply_mask(&mut out[start..], mask);
    }
    out
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0_usize..400, 0_usize..800).prop_map(|(max_frame, max_message)| Limits {
            max_frame,
            max_message
        }),
    ]
}

fn assert_known_code(err: &ProtocolError) {
    assert!(
        matches!(err.code, 1002 | 1007 | 1009),
        "unexpected close code {}",
        err.code
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_streams_decode_the_same_whatever_the_chunking(
        items in prop::collection::vec(item(), 0..8),
        close in close(),
        mask in any::<[u8; 4]>(),
        sizes_a in chunk_sizes(),
        sizes_b in chunk_sizes(),
    ) {
        let (wire, expected) = build(&items, &close, mask);

        let (parsed, error) = parse_chunks(Limits::default(), &cut(&wire, &sizes_a));
        prop_assert_eq!(error, None);
        prop_assert_eq!(&parsed, &expected);

        let (read, end) = read_chunks(Limits::default(), cut(&wire, &sizes_b));
        prop_assert_eq!(end, End::Eof);
        prop_assert_eq!(&read, &expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..3000),
        sizes in chunk_sizes(),
        limits in limits(),
    ) {
        let (_, error) = parse_chunks(limits, &cut(&bytes, &sizes));
        if let Some(err) = error {
            assert_known_code(&err);
        }
        let (_, end) = read_chunks(limits, cut(&bytes, &sizes));
        if let End::Protocol(err) = end {
            assert_known_code(&err);
        }
    }

    #[test]
    fn rule_breaking_frames_never_panic_and_chunking_does_not_matter(
        frames in prop::collection::vec(raw_frame(), 0..12),
        mask in any::<[u8; 4]>(),
        sizes_a in chunk_sizes(),
        sizes_b in chunk_sizes(),
        limits in limits(),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(|frame| encode_raw(frame, mask)).collect();
        let whole = parse_chunks(limits, &VecDeque::from([wire.clone()]));
        let chunked = parse_chunks(limits, &cut(&wire, &sizes_a));
        if let Some(err) = &whole.1 {
            assert_known_code(err);
        }
        prop_assert_eq!(&chunked, &whole);

        let (read, end) = read_chunks(limits, cut(&wire, &sizes_b));
        prop_assert_eq!(&read, &whole.0);
        match (end, whole.1) {
            (End::Protocol(err), Some(expected)) => prop_assert_eq!(err, expected),
            (End::Eof | End::Truncated, None) => {}
            (end, expected) => prop_assert!(false, "read ended {:?}, parse {:?}", end, expected),
        }
    }

    #[test]
    fn corrupted_valid_streams_never_panic(
        items in prop::collection::vec(item(), 1..6),
        mask in any::<[u8; 4]>(),
        flips in prop::collection::vec((any::<Index>(), 1_u8..=255), 1..6),
        sizes in chunk_sizes(),
    ) {
        let (mut wire, _) = build(&items, &None, mask);
        if !wire.is_empty() {
            for (at, bits) in &flips {
                let i = at.index(wire.len());
                wire[i] ^= bits;
            }
        }
        let (_, error) = parse_chunks(Limits::default(), &cut(&wire, &sizes));
        if let Some(err) = error {
            assert_known_code(&err);
        }
        let (_, end) = read_chunks(Limits::default(), cut(&wire, &sizes));
        if let End::Protocol(err) = end {
            assert_known_code(&err);
        }
    }
}
