//! Close status codes (RFC 6455 §7.4): the ones this crate names and which may be sent.

/// Status codes defined by RFC 6455 and the IANA registry that herald uses.
///
/// herald's own codes (4001 slow consumer, 4501 unauthorized, ...) belong to the server
/// crate; this module only knows the protocol's.
pub mod close_code {
    /// The purpose of the connection has been fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutdown, browser leaving the page).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer sent a kind of data this endpoint does not accept.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message, or a close reason, was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message violated the endpoint's policy.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame or message was larger than the endpoint accepts.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is restarting; reconnect with jitter.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The server is overloaded; reconnect with backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Whether `code` may appear in a Close frame on the wire.
///
/// Allowed: 1000-1003 and 1007-1014 (defined or registered), and 3000-4999 (libraries and
/// applications). Everything else is rejected: below 1000 is unused, 1004 is reserved,
/// 1005/1006/1015 are reserved for reporting locally and must never be sent, and
/// 1016-2999 and 5000+ are unassigned.
pub const fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_defined_and_private_codes_only() {
        for good in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 3000, 4001, 4999,
        ] {
            assert!(is_valid_close_code(good), "{good}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert!(!is_valid_close_code(bad), "{bad}");
        }
    }
}
