//! `FrameReader`: the strict server-side reader of client frames (RFC 6455 §5), with its limits.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::close::is_valid_close_code;
use crate::encode::MAX_CONTROL_PAYLOAD;
use crate::error::{ProtocolError, ReadError};
use crate::mask::apply_mask;
use crate::opcode::OpCode;

/// The longest frame header a client can send: 2 bytes, an 8-byte length, a 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// The smallest read once data is flowing, so a burst of small frames costs one read call
/// rather than one per frame.
const READ_CHUNK: usize = 4096;

/// Stack buffer for a read that starts at a frame boundary with nothing buffered. Reading
/// into it instead of a reserved heap buffer means a connection parked in
/// [`FrameReader::read`] holds no read memory at all; most client frames (pongs, hellos)
/// fit in it whole.
const IDLE_PROBE: usize = 256;

/// Size bounds on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest payload of a single frame, in bytes. Default: 64 KiB.
    ///
    /// Checked against the frame header, before any of the payload is buffered; a larger
    /// frame fails with 1009. It also bounds the read buffer: [`FrameReader::read`] never
    /// holds more than `max_frame + 14` bytes (one frame with its header), in data or in
    /// capacity.
    pub max_frame: usize,
    /// The largest data message, in bytes, after reassembling its fragments.
    /// Default: 64 KiB. A larger message fails with 1009 as soon as the header of the frame
    /// that would pass the limit arrives.
    pub max_message: usize,
}

impl Limits {
    /// Default for both limits: 64 KiB. herald's clients send small control messages, so
    /// anything near this size is already suspicious.
    pub const DEFAULT_SIZE: usize = 64 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: Self::DEFAULT_SIZE,
            max_message: Self::DEFAULT_SIZE,
        }
    }
}

/// One complete item from the client: a whole data message or a control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A text message; the bytes are already checked to be valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A Ping; answer with [`encode_pong`](crate::encode_pong) of the same payload.
    Ping(Bytes),
    /// A Pong.
    Pong(Bytes),
    /// The client started (or answered) the closing handshake. `code` is `None` when the
    /// frame had no payload; when present it is a valid code and `reason` is valid UTF-8.
    Close {
        /// The status code, if the client sent one.
        code: Option<u16>,
        /// The reason text, empty if none was sent.
        reason: String,
    },
}

/// Reads client frames from a byte stream and yields [`Inbound`] items.
///
/// It owns the read buffer and the state of a fragmented message in progress. It is strict:
/// clients must mask, must not set reserved bits (no extension is ever negotiated), must use
/// known opcodes and must follow the fragmentation and control-frame rules; each violation
/// yields a [`ProtocolError`] carrying the close code to answer with. Once a protocol error
/// has been returned, every later call returns it again and the buffers are released.
///
/// A new reader allocates nothing, and one waiting in [`read`](Self::read) at a frame
/// boundary holds no read buffer, so parked connections stay small.
#[derive(Debug)]
pub struct FrameReader {
    limits: Limits,
    /// Received bytes not yet parsed. Always starts at a frame boundary.
    buf: BytesMut,
    /// The data message whose later fragments are still to come.
    fragmented: Option<Fragmented>,
    /// How many bytes `buf` must hold for the next parse step to make progress; tells
    /// [`read`](Self::read) how much to ask for.
    need: usize,
    /// Set by the first protocol error: the stream position is lost after it, so the reader
    /// refuses to go on.
    failed: Option<ProtocolError>,
}

#[derive(Debug)]
struct Fragmented {
    is_text: bool,
    data: BytesMut,
}

/// A frame header that passed every check that can be made without its payload.
#[derive(Debug)]
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

enum HeaderStep {
    Ready(Header),
    /// The header is incomplete; the buffer must hold this many bytes to go on.
    Need(usize),
}

impl FrameReader {
    /// A reader enforcing `limits`. Allocates nothing until data arrives.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buf: BytesMut::new(),
            fragmented: None,
            need: 0,
            failed: None,
        }
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Reads from `io` until one data message or control frame is complete and returns it.
    ///
    /// Returns `Ok(None)` when `io` ends cleanly: at a frame boundary with no fragmented
    /// message pending. An end in the middle of a frame, or between the fragments of a
    /// message, is an [`io::ErrorKind::UnexpectedEof`](std::io::ErrorKind::UnexpectedEof)
    /// error.
    ///
    /// Cancel-safe: every byte read is stored in the reader before the next `.await`, so
    /// dropping the future (for example when another `tokio::select!` branch wins) loses
    /// nothing, and the next call carries on where this one stopped.
    ///
    /// After a [`Inbound::Close`], the caller should stop reading and finish the closing
    /// handshake; the reader does not police frames sent after a Close.
    pub async fn read<R>(&mut self, io: &mut R) -> Result<Option<Inbound>, ReadError>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        loop {
            if let Some(item) = self.parse()? {
                return Ok(Some(item));
            }
            let read = if self.buf.is_empty() {
                // A frame boundary is where connections sit idle, possibly for hours: wait
                // there holding no buffer, and allocate only once bytes have arrived.
                self.shrink_if_idle();
                let mut probe = [0_u8; IDLE_PROBE];
                let probe = &mut probe[..IDLE_PROBE.min(self.buffer_bound())];
                let read = io.read(probe).await?;
                // `read` never exceeds the slice it was given; `min` only keeps this
                // panic-free against a misbehaving `AsyncRead`.
                self.buf.extend_from_slice(&probe[..read.min(probe.len())]);
                read
            } else {
                let want = self.make_room();
                io.read_buf(&mut (&mut self.buf).limit(want)).await?
            };
            if read == 0 {
                return if self.is_idle() {
                    Ok(None)
                } else {
                    Err(ReadError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a websocket frame or message",
                    )))
                };
            }
        }
    }

    /// Parses what is already buffered (see [`buffer_mut`](Self::buffer_mut)).
    ///
    /// Returns `Ok(Some(_))` for each complete message or control frame, in order, and
    /// `Ok(None)` when more bytes are needed. Leading fragments of a message are absorbed
    /// silently. Never panics, whatever the bytes.
    pub fn parse(&mut self) -> Result<Option<Inbound>, ProtocolError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        match self.parse_buffered() {
            Ok(item) => Ok(item),
            Err(err) => {
                self.failed = Some(err);
                self.buf = BytesMut::new();
                self.fragmented = None;
                Err(err)
            }
        }
    }

    /// The read buffer, for feeding bytes directly (tests, or bytes that arrived along with
    /// the HTTP upgrade request). It must only ever be appended to.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Whether nothing is pending: no unparsed bytes and no fragmented message.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.fragmented.is_none()
    }

    /// Releases the read buffer's memory if it holds no unparsed bytes, so that a quiet
    /// connection holds no buffer capacity. A fragmented message in progress keeps its data.
    /// Cheap when there is nothing to release; call it after handling each item.
    pub fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    fn parse_buffered(&mut self) -> Result<Option<Inbound>, ProtocolError> {
        // Loops only over leading fragments, which produce no item of their own.
        loop {
            let assembled = self.fragmented.as_ref().map(|message| message.data.len());
            let header = match read_header(&self.buf, &self.limits, assembled)? {
                HeaderStep::Ready(header) => header,
                HeaderStep::Need(need) => {
                    self.need = need;
                    return Ok(None);
                }
            };
            // The payload length was bounded by `max_frame`, so this only saturates for a
            // limit too large to ever be buffered.
            let frame_len = header.header_len.saturating_add(header.payload_len);
            if self.buf.len() < frame_len {
                self.need = frame_len;
                return Ok(None);
            }
            let mut payload = self.buf.split_to(frame_len);
            payload.advance(header.header_len);
            apply_mask(&mut payload, header.mask);

            match header.opcode {
                OpCode::Ping => return Ok(Some(Inbound::Ping(payload.freeze()))),
                OpCode::Pong => return Ok(Some(Inbound::Pong(payload.freeze()))),
                OpCode::Close => return parse_close(&payload).map(Some),
                OpCode::Text | OpCode::Binary => {
                    let is_text = header.opcode == OpCode::Text;
                    if header.fin {
                        return complete(is_text, payload).map(Some);
                    }
                    self.fragmented = Some(Fragmented {
                        is_text,
                        data: payload,
                    });
                }
                OpCode::Continuation => {
                    // `read_header` already refused a continuation with nothing to continue.
                    let Some(mut message) = self.fragmented.take() else {
                        return Err(ProtocolError::protocol("continuation without a message"));
                    };
                    message.data.extend_from_slice(&payload);
                    if header.fin {
                        return complete(message.is_text, message.data).map(Some);
                    }
                    self.fragmented = Some(message);
                }
            }
        }
    }

    /// The most unparsed bytes the reader ever holds: one maximal frame with its header.
    fn buffer_bound(&self) -> usize {
        self.limits.max_frame.saturating_add(MAX_HEADER_LEN)
    }

    /// Makes spare capacity for the next read and returns how many bytes it may take.
    ///
    /// Grows by exact allocations (not `BytesMut::reserve`'s doubling) so that memory, not
    /// just data, stays within one frame: `max_frame + MAX_HEADER_LEN`.
    fn make_room(&mut self) -> usize {
        let bound = self.buffer_bound();
        // `parse` stops on an incomplete frame whose size it has checked, so
        // `len < need <= bound` and both differences are at least 1; `max(1)` keeps a broken
        // invariant from turning into a zero-byte read that would look like end of stream.
        let room = bound.saturating_sub(self.buf.len()).max(1);
        let missing = self.need.saturating_sub(self.buf.len()).clamp(1, room);
        let want = missing.max(READ_CHUNK).min(room);
        let spare = self.buf.capacity() - self.buf.len();
        if spare >= missing {
            return spare.min(want);
        }
        let mut grown = BytesMut::with_capacity(self.buf.len() + want);
        grown.extend_from_slice(&self.buf);
        self.buf = grown;
        want
    }
}

/// Checks the header at the start of `buf` against the protocol and the limits.
///
/// Every check is made as soon as the bytes it needs are present, and all of them before
/// the payload is buffered: a declared length is never trusted with memory until it has
/// passed `max_frame` and `max_message`. `assembled` is the size of the fragmented message
/// in progress, if any.
fn read_header(
    buf: &[u8],
    limits: &Limits,
    assembled: Option<usize>,
) -> Result<HeaderStep, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(HeaderStep::Need(2));
    };
    let fin = first & 0x80 != 0;
    if first & 0x70 != 0 {
        return Err(ProtocolError::protocol("reserved bits set"));
    }
    let opcode = OpCode::from_u8(first & 0x0F).ok_or(ProtocolError::protocol("unknown opcode"))?;
    if opcode.is_control() && !fin {
        return Err(ProtocolError::protocol("fragmented control frame"));
    }
    match (opcode, assembled) {
        (OpCode::Continuation, None) => {
            return Err(ProtocolError::protocol("continuation without a message"));
        }
        (OpCode::Text | OpCode::Binary, Some(_)) => {
            return Err(ProtocolError::protocol(
                "new message inside a fragmented one",
            ));
        }
        _ => {}
    }

    let Some(&second) = buf.get(1) else {
        return Ok(HeaderStep::Need(2));
    };
    if second & 0x80 == 0 {
        return Err(ProtocolError::protocol("client frame not masked"));
    }
    let short_len = second & 0x7F;
    if opcode.is_control() && usize::from(short_len) > MAX_CONTROL_PAYLOAD {
        return Err(ProtocolError::protocol("control frame too long"));
    }
    // Non-minimal length encodings are accepted: RFC 6455 asks senders to be minimal but
    // gives receivers no reason to care.
    let (declared, len_end) = match short_len {
        126 => {
            let Some(ext) = buf.get(2..4) else {
                return Ok(HeaderStep::Need(4));
            };
            let mut be = [0_u8; 2];
            be.copy_from_slice(ext);
            (u64::from(u16::from_be_bytes(be)), 4)
        }
        127 => {
            let Some(ext) = buf.get(2..10) else {
                return Ok(HeaderStep::Need(10));
            };
            let mut be = [0_u8; 8];
            be.copy_from_slice(ext);
            let declared = u64::from_be_bytes(be);
            if declared >> 63 != 0 {
                return Err(ProtocolError::protocol("frame length has its top bit set"));
            }
            (declared, 10)
        }
        short => (u64::from(short), 2),
    };
    let payload_len = usize::try_from(declared)
        .ok()
        .filter(|&len| len <= limits.max_frame)
        .ok_or(ProtocolError::too_big("frame too big"))?;
    if !opcode.is_control()
        && assembled.unwrap_or(0).saturating_add(payload_len) > limits.max_message
    {
        return Err(ProtocolError::too_big("message too big"));
    }

    let header_len = len_end + 4;
    let Some(key) = buf.get(len_end..header_len) else {
        return Ok(HeaderStep::Need(header_len));
    };
    let mut mask = [0_u8; 4];
    mask.copy_from_slice(key);
    Ok(HeaderStep::Ready(Header {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// Turns a whole, unmasked data message into its `Inbound`, validating text.
fn complete(is_text: bool, data: BytesMut) -> Result<Inbound, ProtocolError> {
    if !is_text {
        return Ok(Inbound::Binary(data.freeze()));
    }
    if simdutf8::basic::from_utf8(&data).is_err() {
        return Err(ProtocolError::invalid_utf8(
            "text message is not valid UTF-8",
        ));
    }
    Ok(Inbound::Text(data.freeze()))
}

/// A Close payload is empty, or a 2-byte status code followed by a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Inbound, ProtocolError> {
    match payload {
        [] => Ok(Inbound::Close {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(ProtocolError::protocol("close payload of one byte")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::protocol("invalid close code"));
            }
            let reason = simdutf8::basic::from_utf8(reason)
                .map_err(|_| ProtocolError::invalid_utf8("close reason is not valid UTF-8"))?;
            Ok(Inbound::Close {
                code: Some(code),
                reason: reason.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    const KEY: [u8; 4] = [0xA1, 0xB2, 0xC3, 0xD4];
    const FIN: u8 = 0x80;
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CONT: u8 = 0x0;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;

    /// A masked frame with an arbitrary first byte and the shortest length encoding.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&KEY);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], KEY);
        out
    }

    fn reader_with(limits: Limits, bytes: &[u8]) -> FrameReader {
        let mut reader = FrameReader::new(limits);
        reader.buffer_mut().extend_from_slice(bytes);
        reader
    }

    fn parse_all(bytes: &[u8]) -> Result<Vec<Inbound>, ProtocolError> {
        let mut reader = reader_with(Limits::default(), bytes);
        let mut items = Vec::new();
        while let Some(item) = reader.parse()? {
            items.push(item);
        }
        Ok(items)
    }

    fn error_code(bytes: &[u8]) -> u16 {
        match parse_all(bytes) {
            Err(err) => err.code,
            Ok(items) => panic!("expected an error, parsed {items:?}"),
        }
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        [&code.to_be_bytes()[..], reason].concat()
    }

    #[test]
    fn masked_text_and_binary_round_trip() {
        let mut bytes = frame(FIN | TEXT, "héllo".as_bytes());
        bytes.extend(frame(FIN | BINARY, &[0, 255, 7]));
        bytes.extend(frame(FIN | BINARY, &[0x5A; 70_000 / 2]));
        let items = parse_all(&bytes).expect("valid frames");
        assert_eq!(
            items,
            vec![
                Inbound::Text(Bytes::from("héllo")),
                Inbound::Binary(Bytes::from_static(&[0, 255, 7])),
                Inbound::Binary(Bytes::from(vec![0x5A; 35_000])),
            ]
        );
    }

    #[test]
    fn crate_encoder_round_trips_through_the_reader() {
        let mut bytes = Vec::new();
        let payload: Vec<u8> = (0..=255).cycle().take(1000).collect();
        bytes.extend_from_slice(&crate::encode_masked_frame(
            OpCode::Binary,
            true,
            KEY,
            &payload,
        ));
        bytes.extend_from_slice(&crate::encode_masked_frame(OpCode::Ping, true, KEY, b"p"));
        let items = parse_all(&bytes).expect("valid frames");
        assert_eq!(
            items,
            vec![Inbound::Binary(payload.into()), Inbound::Ping("p".into())]
        );
    }

    #[test]
    fn empty_payloads_are_fine() {
        let mut bytes = frame(FIN | TEXT, b"");
        bytes.extend(frame(FIN | PING, b""));
        bytes.extend(frame(FIN | PONG, b""));
        let items = parse_all(&bytes).expect("valid frames");
        assert_eq!(
            items,
            vec![
                Inbound::Text(Bytes::new()),
                Inbound::Ping(Bytes::new()),
                Inbound::Pong(Bytes::new())
            ]
        );
    }

    #[test]
    fn unmasked_client_frame_is_1002() {
        assert_eq!(error_code(&[FIN | TEXT, 0x02, b'h', b'i']), 1002);
        // Decided from the second byte alone.
        assert_eq!(error_code(&[FIN | TEXT, 0x7E]), 1002);
    }

    #[test]
    fn reserved_bits_are_1002() {
        for rsv in [0x40, 0x20, 0x10] {
            assert_eq!(
                error_code(&frame(FIN | rsv | TEXT, b"x")),
                1002,
                "rsv {rsv:#x}"
            );
            assert_eq!(
                error_code(&[FIN | rsv | TEXT]),
                1002,
                "rsv {rsv:#x} from byte one"
            );
        }
    }

    #[test]
    fn unknown_opcodes_are_1002() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(
                error_code(&frame(FIN | opcode, b"")),
                1002,
                "opcode {opcode:#x}"
            );
        }
    }

    #[test]
    fn control_frames_must_be_short_and_final() {
        assert_eq!(error_code(&frame(FIN | PING, &[1; 126])), 1002);
        assert_eq!(error_code(&frame(FIN | CLOSE, &[1; 126])), 1002);
        // A 126 length form is refused even before its extended length arrives.
        assert_eq!(error_code(&[FIN | PONG, 0x80 | 126]), 1002);
        assert_eq!(error_code(&frame(PING, b"x")), 1002);
        assert_eq!(error_code(&frame(CLOSE, b"")), 1002);
        let ok = parse_all(&frame(FIN | PING, &[9; 125])).expect("125 is allowed");
        assert_eq!(ok, vec![Inbound::Ping(Bytes::from(vec![9; 125]))]);
    }

    #[test]
    fn fragmented_message_with_interleaved_control_frames() {
        let mut bytes = frame(TEXT, b"hel");
        bytes.extend(frame(FIN | PING, b"p1"));
        bytes.extend(frame(CONT, b""));
        bytes.extend(frame(FIN | PONG, b"p2"));
        bytes.extend(frame(CONT, b"lo "));
        bytes.extend(frame(FIN | CONT, "wörld".as_bytes()));
        bytes.extend(frame(BINARY, &[1]));
        bytes.extend(frame(FIN | CONT, &[2]));
        let items = parse_all(&bytes).expect("valid fragmented messages");
        assert_eq!(
            items,
            vec![
                Inbound::Ping("p1".into()),
                Inbound::Pong("p2".into()),
                Inbound::Text(Bytes::from("hello wörld")),
                Inbound::Binary(Bytes::from_static(&[1, 2])),
            ]
        );
    }

    #[test]
    fn a_character_split_across_fragments_is_valid() {
        let euro = "€".as_bytes();
        let mut bytes = frame(TEXT, &euro[..1]);
        bytes.extend(frame(CONT, &euro[1..2]));
        bytes.extend(frame(FIN | CONT, &euro[2..]));
        assert_eq!(parse_all(&bytes), Ok(vec![Inbound::Text(Bytes::from("€"))]));
    }

    #[test]
    fn continuation_without_a_message_is_1002() {
        assert_eq!(error_code(&frame(FIN | CONT, b"x")), 1002);
        assert_eq!(error_code(&frame(CONT, b"x")), 1002);
        // A finished message leaves nothing to continue.
        let mut bytes = frame(TEXT, b"a");
        bytes.extend(frame(FIN | CONT, b"b"));
        bytes.extend(frame(FIN | CONT, b"c"));
        assert_eq!(error_code(&bytes), 1002);
    }

    #[test]
    fn new_data_frame_inside_a_fragmented_message_is_1002() {
        for opcode in [TEXT, BINARY, FIN | TEXT, FIN | BINARY] {
            let mut bytes = frame(BINARY, b"a");
            bytes.extend(frame(opcode, b"b"));
            assert_eq!(error_code(&bytes), 1002, "opcode byte {opcode:#x}");
        }
    }

    #[test]
    fn frame_over_max_frame_is_1009_from_the_header_alone() {
        let limits = Limits {
            max_frame: 1000,
            max_message: 1_000_000,
        };
        // Only the header of a 1001-byte frame: no payload is ever buffered.
        let header = &frame(FIN | BINARY, &[0; 1001])[..8];
        let mut reader = reader_with(limits, header);
        assert_eq!(reader.parse().map_err(|err| err.code), Err(1009));
        // A 64-bit length that would make any allocation fail.
        let mut huge = vec![FIN | BINARY, 0x80 | 127];
        huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(error_code(&huge), 1009);
        // A frame of exactly max_frame is fine.
        let mut reader = reader_with(limits, &frame(FIN | BINARY, &[3; 1000]));
        assert_eq!(
            reader.parse(),
            Ok(Some(Inbound::Binary(Bytes::from(vec![3; 1000]))))
        );
    }

    #[test]
    fn reassembled_message_over_max_message_is_1009_before_the_payload() {
        let limits = Limits {
            max_frame: 100,
            max_message: 150,
        };
        let mut bytes = frame(TEXT, &[b'a'; 100]);
        bytes.extend_from_slice(&frame(FIN | CONT, &[b'b'; 51])[..8]);
        let mut reader = reader_with(limits, &bytes);
        assert_eq!(reader.parse().map_err(|err| err.code), Err(1009));
        // A single frame over max_message but within max_frame is too big as well.
        let limits = Limits {
            max_frame: 100,
            max_message: 10,
        };
        let mut reader = reader_with(limits, &frame(FIN | TEXT, &[b'a'; 11]));
        assert_eq!(reader.parse().map_err(|err| err.code), Err(1009));
        // Exactly max_message across fragments is accepted.
        let limits = Limits {
            max_frame: 100,
            max_message: 150,
        };
        let mut bytes = frame(TEXT, &[b'a'; 100]);
        bytes.extend(frame(FIN | CONT, &[b'b'; 50]));
        let mut reader = reader_with(limits, &bytes);
        assert!(matches!(reader.parse(), Ok(Some(Inbound::Text(text))) if text.len() == 150));
    }

    #[test]
    fn control_frames_do_not_count_toward_max_message() {
        let limits = Limits {
            max_frame: 125,
            max_message: 4,
        };
        let mut bytes = frame(TEXT, b"ab");
        bytes.extend(frame(FIN | PING, &[0; 125]));
        bytes.extend(frame(FIN | CONT, b"cd"));
        let mut reader = reader_with(limits, &bytes);
        assert!(matches!(reader.parse(), Ok(Some(Inbound::Ping(_)))));
        assert_eq!(reader.parse(), Ok(Some(Inbound::Text(Bytes::from("abcd")))));
    }

    #[test]
    fn length_with_the_top_bit_set_is_1002() {
        let mut bytes = vec![FIN | BINARY, 0x80 | 127];
        bytes.extend_from_slice(&(1_u64 << 63 | 5).to_be_bytes());
        assert_eq!(error_code(&bytes), 1002);
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        let mut bytes = vec![FIN | TEXT, 0x80 | 126, 0, 2];
        bytes.extend_from_slice(&KEY);
        let mut payload = *b"ok";
        apply_mask(&mut payload, KEY);
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&[FIN | TEXT, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 2]);
        bytes.extend_from_slice(&KEY);
        bytes.extend_from_slice(&payload);
        assert_eq!(
            parse_all(&bytes),
            Ok(vec![Inbound::Text("ok".into()), Inbound::Text("ok".into())])
        );
    }

    #[test]
    fn invalid_utf8_text_is_1007() {
        assert_eq!(error_code(&frame(FIN | TEXT, &[b'a', 0xFF])), 1007);
        // Overlong encoding and a lone surrogate.
        assert_eq!(error_code(&frame(FIN | TEXT, &[0xC0, 0x80])), 1007);
        assert_eq!(error_code(&frame(FIN | TEXT, &[0xED, 0xA0, 0x80])), 1007);
        // Truncated at the end of a fragmented message.
        let mut bytes = frame(TEXT, b"ok");
        bytes.extend(frame(FIN | CONT, &"€".as_bytes()[..2]));
        assert_eq!(error_code(&bytes), 1007);
        // Binary carries anything.
        assert_eq!(
            parse_all(&frame(FIN | BINARY, &[0xFF])).map(|items| items.len()),
            Ok(1)
        );
    }

    #[test]
    fn close_frames_are_checked() {
        assert_eq!(
            parse_all(&frame(FIN | CLOSE, b"")),
            Ok(vec![Inbound::Close {
                code: None,
                reason: String::new()
            }])
        );
        assert_eq!(
            parse_all(&frame(FIN | CLOSE, &close_payload(1000, b"bye"))),
            Ok(vec![Inbound::Close {
                code: Some(1000),
                reason: "bye".into()
            }])
        );
        assert_eq!(
            parse_all(&frame(FIN | CLOSE, &close_payload(4001, b""))),
            Ok(vec![Inbound::Close {
                code: Some(4001),
                reason: String::new()
            }])
        );
        assert_eq!(error_code(&frame(FIN | CLOSE, &[0x03])), 1002);
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert_eq!(
                error_code(&frame(FIN | CLOSE, &close_payload(code, b""))),
                1002,
                "{code}"
            );
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999,
        ] {
            assert!(
                parse_all(&frame(FIN | CLOSE, &close_payload(code, b"r"))).is_ok(),
                "{code}"
            );
        }
        assert_eq!(
            error_code(&frame(FIN | CLOSE, &close_payload(1000, &[0xC3]))),
            1007
        );
    }

    #[test]
    fn incomplete_input_asks_for_more_and_then_completes() {
        let bytes = frame(FIN | TEXT, &[b'z'; 300]);
        let mut reader = FrameReader::new(Limits::default());
        for (i, byte) in bytes.iter().enumerate() {
            assert_eq!(reader.parse(), Ok(None), "after {i} bytes");
            reader.buffer_mut().put_u8(*byte);
        }
        assert_eq!(
            reader.parse(),
            Ok(Some(Inbound::Text(Bytes::from(vec![b'z'; 300]))))
        );
        assert_eq!(reader.parse(), Ok(None));
        assert!(reader.is_idle());
    }

    #[test]
    fn an_error_sticks_and_releases_the_buffers() {
        let mut bytes = frame(TEXT, b"partial");
        bytes.extend(frame(FIN | 0x3, b"junk"));
        bytes.extend(frame(FIN | TEXT, b"after"));
        let mut reader = reader_with(Limits::default(), &bytes);
        let first = reader.parse().expect_err("reserved opcode");
        assert_eq!(first.code, 1002);
        assert_eq!(reader.parse(), Err(first));
        assert_eq!(reader.buffer_mut().capacity(), 0);
        assert!(reader.is_idle());
    }

    #[test]
    fn a_read_waiting_at_a_frame_boundary_holds_no_buffer() {
        rt().block_on(async {
            let (mut client, mut server) = tokio::io::duplex(1024);
            let mut reader = FrameReader::new(Limits::default());
            reader.buffer_mut().reserve(8192);
            let short = Duration::from_millis(5);
            let waited = tokio::time::timeout(short, reader.read(&mut server)).await;
            assert!(
                waited.is_err(),
                "nothing was sent, so the read must still be waiting"
            );
            assert_eq!(reader.buffer_mut().capacity(), 0);
            // And the next read still gets what arrives.
            let write =
                tokio::time::timeout(DEADLINE, client.write_all(&frame(FIN | TEXT, b"hi"))).await;
            assert!(matches!(write, Ok(Ok(()))));
            let got = tokio::time::timeout(DEADLINE, reader.read(&mut server)).await;
            assert!(
                matches!(got, Ok(Ok(Some(Inbound::Text(ref t)))) if t == "hi"),
                "{got:?}"
            );
        });
    }

    #[test]
    fn new_reader_and_idle_reader_hold_no_memory() {
        let mut reader = FrameReader::new(Limits::default());
        assert_eq!(reader.buffer_mut().capacity(), 0);
        reader
            .buffer_mut()
            .extend_from_slice(&frame(FIN | TEXT, b"hi"));
        assert!(reader.parse().expect("valid").is_some());
        reader.shrink_if_idle();
        assert_eq!(reader.buffer_mut().capacity(), 0);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("test runtime")
    }

    const DEADLINE: Duration = Duration::from_secs(5);

    #[test]
    fn read_returns_none_on_clean_eof_and_errors_mid_frame() {
        rt().block_on(async {
            let mut empty: &[u8] = &[];
            let mut reader = FrameReader::new(Limits::default());
            let got = tokio::time::timeout(DEADLINE, reader.read(&mut empty)).await;
            assert!(matches!(got, Ok(Ok(None))));

            let whole = frame(FIN | TEXT, b"one");
            let mut stream: &[u8] = &whole;
            let mut reader = FrameReader::new(Limits::default());
            let got = tokio::time::timeout(DEADLINE, reader.read(&mut stream)).await;
            assert!(matches!(got, Ok(Ok(Some(Inbound::Text(t)))) if t == "one"));
            let got = tokio::time::timeout(DEADLINE, reader.read(&mut stream)).await;
            assert!(matches!(got, Ok(Ok(None))));

            let cut = &whole[..whole.len() - 1];
            let mut stream: &[u8] = cut;
            let mut reader = FrameReader::new(Limits::default());
            let got = tokio::time::timeout(DEADLINE, reader.read(&mut stream)).await;
            assert!(
                matches!(got, Ok(Err(ReadError::Io(ref e))) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "{got:?}"
            );

            // Between fragments is a frame boundary, but half a message was lost.
            let half = frame(TEXT, b"half");
            let mut stream: &[u8] = &half;
            let mut reader = FrameReader::new(Limits::default());
            let got = tokio::time::timeout(DEADLINE, reader.read(&mut stream)).await;
            assert!(
                matches!(got, Ok(Err(ReadError::Io(ref e))) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "{got:?}"
            );
        });
    }

    #[test]
    fn read_reports_protocol_errors() {
        rt().block_on(async {
            let bad = [FIN | TEXT, 0x01, b'x'];
            let mut stream: &[u8] = &bad;
            let mut reader = FrameReader::new(Limits::default());
            let got = tokio::time::timeout(DEADLINE, reader.read(&mut stream)).await;
            match got {
                Ok(Err(err)) => assert_eq!(err.close_code(), Some(1002)),
                other => panic!("expected a protocol error, got {other:?}"),
            }
        });
    }

    #[test]
    fn dropping_a_pending_read_loses_no_bytes() {
        rt().block_on(async {
            let (mut client, mut server) = tokio::io::duplex(1 << 16);
            let mut bytes = frame(FIN | TEXT, &[b'q'; 1000]);
            bytes.extend(frame(FIN | PING, b"after"));
            let mut reader = FrameReader::new(Limits::default());
            // Feed the frames in pieces, and let each read time out (dropping its future)
            // between pieces: nothing may be lost or duplicated.
            for piece in bytes.chunks(97) {
                let write = tokio::time::timeout(DEADLINE, client.write_all(piece)).await;
                assert!(matches!(write, Ok(Ok(()))));
                let short = Duration::from_millis(5);
                match tokio::time::timeout(short, reader.read(&mut server)).await {
                    Err(_elapsed) => {}
                    Ok(Ok(Some(Inbound::Text(text)))) => {
                        assert_eq!(text, Bytes::from(vec![b'q'; 1000]));
                    }
                    Ok(other) => panic!("unexpected {other:?}"),
                }
            }
            let got = tokio::time::timeout(DEADLINE, reader.read(&mut server)).await;
            assert!(
                matches!(got, Ok(Ok(Some(Inbound::Ping(ref p)))) if p == "after"),
                "{got:?}"
            );
        });
    }

    #[test]
    fn read_buffer_stays_within_one_frame_and_is_released_when_idle() {
        rt().block_on(async {
            let limits = Limits {
                max_frame: 10_000,
                max_message: 10_000,
            };
            let (mut client, mut server) = tokio::io::duplex(1 << 16);
            let mut reader = FrameReader::new(limits);
            let mut bytes = frame(FIN | BINARY, &[1; 10_000]);
            bytes.extend(frame(FIN | BINARY, &[2; 10_000]));
            bytes.extend(frame(FIN | TEXT, b"small"));
            let write = tokio::time::timeout(DEADLINE, client.write_all(&bytes)).await;
            assert!(matches!(write, Ok(Ok(()))));
            for expected in [vec![1; 10_000], vec![2; 10_000], b"small".to_vec()] {
                let got = tokio::time::timeout(DEADLINE, reader.read(&mut server)).await;
                match got {
                    Ok(Ok(Some(Inbound::Binary(data) | Inbound::Text(data)))) => {
                        assert_eq!(data, expected);
                    }
                    other => panic!("unexpected {other:?}"),
                }
                assert!(reader.buffer_mut().capacity() <= limits.max_frame + MAX_HEADER_LEN);
            }
            reader.shrink_if_idle();
            assert_eq!(reader.buffer_mut().capacity(), 0);

            // Trickling a large frame never grows the buffer past one frame either.
            let big = frame(FIN | BINARY, &[3; 10_000]);
            let mut delivered = None;
            for piece in big.chunks(1500) {
                let write = tokio::time::timeout(DEADLINE, client.write_all(piece)).await;
                assert!(matches!(write, Ok(Ok(()))));
                let short = Duration::from_millis(5);
                if let Ok(got) = tokio::time::timeout(short, reader.read(&mut server)).await {
                    delivered = Some(got.expect("valid frame"));
                }
                assert!(reader.buffer_mut().capacity() <= limits.max_frame + MAX_HEADER_LEN);
            }
            assert_eq!(
                delivered,
                Some(Some(Inbound::Binary(Bytes::from(vec![3; 10_000]))))
            );
        });
    }

    #[test]
    fn a_maximal_frame_with_the_longest_header_fits_the_bound_exactly() {
        rt().block_on(async {
            let limits = Limits { max_frame: 1000, max_message: 1000 };
            // A 64-bit length for a short payload: the full 14-byte header.
            let mut bytes = vec![FIN | BINARY, 0x80 | 127];
            bytes.extend_from_slice(&1000_u64.to_be_bytes());
            bytes.extend_from_slice(&KEY);
            let mut payload = vec![5_u8; 1000];
            apply_mask(&mut payload, KEY);
            bytes.extend_from_slice(&payload);
            assert_eq!(bytes.len(), limits.max_frame + MAX_HEADER_LEN);

            // Hold back the last byte so the buffer is measured at its fullest.
            let (most, last) = bytes.split_at(bytes.len() - 1);
            let mut stream: &[u8] = most;
            let mut reader = FrameReader::new(limits);
            let got = tokio::time::timeout(DEADLINE, reader.read(&mut stream)).await;
            assert!(
                matches!(got, Ok(Err(ReadError::Io(ref e))) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "{got:?}"
            );
            assert!(reader.buffer_mut().capacity() <= limits.max_frame + MAX_HEADER_LEN);
            reader.buffer_mut().extend_from_slice(last);
            let got = reader.parse();
            assert!(matches!(got, Ok(Some(Inbound::Binary(ref data))) if data[..] == [5; 1000]));
        });
    }
}
