//! The frame opcodes of RFC 6455 §5.2 and their 4-bit wire values.

/// What a frame carries. Values 0x3-0x7 and 0xB-0xF are reserved and have no variant: the
/// reader rejects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: a later fragment of a fragmented Text or Binary message.
    Continuation,
    /// 0x1: UTF-8 text.
    Text,
    /// 0x2: arbitrary bytes.
    Binary,
    /// 0x8: the closing handshake.
    Close,
    /// 0x9: a keep-alive probe; the peer answers with a Pong carrying the same payload.
    Ping,
    /// 0xA: the answer to a Ping (or an unsolicited heartbeat).
    Pong,
}

impl OpCode {
    /// The 4-bit value that goes in the low nibble of a frame's first byte.
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// The opcode for a 4-bit wire value, or `None` for a reserved one.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// Control frames (Close, Ping, Pong) may not be fragmented, carry at most 125 payload
    /// bytes, and may arrive between the fragments of a data message.
    pub const fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip_and_reserved_ones_are_unknown() {
        for value in 0..=0x0F_u8 {
            match OpCode::from_u8(value) {
                Some(op) => assert_eq!(op.to_u8(), value),
                None => assert!(matches!(value, 0x3..=0x7 | 0xB..=0xF), "{value:#x}"),
            }
        }
        assert!(OpCode::Ping.is_control());
        assert!(!OpCode::Continuation.is_control());
    }
}
