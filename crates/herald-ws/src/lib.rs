//! herald-ws: the WebSocket wire codec (RFC 6455) that herald's connections speak.
//!
//! # Why hand-written
//!
//! herald delivers one published message to many connections. A server-to-client frame is
//! never masked, so its bytes (header and payload) are the same for every recipient: herald
//! encodes a message into its frame **once** and hands each connection a refcounted
//! [`bytes::Bytes`] clone of it, with no per-connection copy or re-encoding. General-purpose
//! WebSocket crates such as tungstenite and fastwebsockets encode each outgoing message inside
//! each connection's writer, which would turn one publish to N members into N encodings and N
//! copies. So the write side here is a set of pure functions that produce finished frames, and
//! the read side is a small, strict frame reader for what clients send.
//!
//! # Layout
//!
//! - [`OpCode`] (`opcode.rs`): the frame opcodes and their wire values.
//! - `encode.rs`: building whole frames: [`encode_frame`], [`encode_frame_parts`],
//!   [`encode_close`], [`encode_ping`], [`encode_pong`], and the client-side
//!   [`encode_masked_frame`] for tests and load tools.
//! - `mask.rs`: [`apply_mask`], the XOR masking of client payloads.
//! - `close.rs`: close status codes and which of them may appear on the wire.
//! - [`FrameReader`] (`reader.rs`): the server-side reader. It treats every byte as hostile:
//!   it checks each header before buffering the payload it announces, bounds its buffers by
//!   [`Limits`], reassembles fragmented messages and validates UTF-8.
//! - `error.rs`: [`ProtocolError`] (a close code to answer with) and [`ReadError`].
//! - `handshake.rs`: checking an upgrade request ([`check_upgrade`]), the accept key
//!   ([`accept_key`]) and subprotocol offers ([`offers_protocol`]).
//!
//! This crate only does bytes: it opens no sockets, spawns no tasks and knows nothing of
//! groups or routes.

mod close;
mod encode;
mod error;
mod handshake;
mod mask;
mod opcode;
mod reader;

pub use close::{close_code, is_valid_close_code};
pub use encode::{
    MAX_CLOSE_REASON, MAX_CONTROL_PAYLOAD, encode_close, encode_frame, encode_frame_parts,
    encode_masked_frame, encode_ping, encode_pong,
};
pub use error::{ProtocolError, ReadError};
pub use handshake::{
    HandshakeError, SUPPORTED_VERSION, accept_key, check_upgrade, offers_protocol,
};
pub use mask::apply_mask;
pub use opcode::OpCode;
pub use reader::{FrameReader, Inbound, Limits, MAX_HEADER_LEN};
