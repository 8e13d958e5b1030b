//! WebSocket close codes herald sends (DESIGN.md §5) and whether clients should retry.

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// Protocol error in a client frame.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Frame or message too big.
pub const TOO_BIG: u16 = 1009;
/// Server restart (graceful shutdown): reconnect with jitter.
pub const RESTART: u16 = 1012;
/// Try again later: overload or a connection limit.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// Slow consumer: the outbox overflowed. Reconnect and resume.
pub const SLOW_CONSUMER: u16 = 4001;
/// Heartbeat timeout. Reconnect and resume.
pub const HEARTBEAT_TIMEOUT: u16 = 4002;
/// The connection token expired. Reconnect with a fresh token.
pub const TOKEN_EXPIRED: u16 = 4003;
/// The group's history was reset (epoch changed) while connected: reconnect, and the
/// resume answers `recovered: false`.
pub const STREAM_RESET: u16 = 4400;
/// Bad request: malformed hello or frame. Do not retry.
pub const BAD_REQUEST: u16 = 4500;
/// Unauthorized: missing or invalid token. Do not retry.
pub const UNAUTHORIZED: u16 = 4501;
/// Forbidden: the token does not grant the route's groups, or the origin is refused.
pub const FORBIDDEN: u16 = 4503;

/// Whether a client should reconnect after `code` (DESIGN.md §5: 4500–4999, 3500–3999
/// and 1009 are terminal).
pub fn is_retryable(code: u16) -> bool {
    !(code == TOO_BIG || (3500..4000).contains(&code) || (4500..5000).contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        for code in [
            NORMAL,
            1001,
            RESTART,
            TRY_AGAIN_LATER,
            SLOW_CONSUMER,
            HEARTBEAT_TIMEOUT,
            TOKEN_EXPIRED,
        ] {
            assert!(is_retryable(code), "{code}");
        }
        for code in [TOO_BIG, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, 3500] {
            assert!(!is_retryable(code), "{code}");
        }
    }
}
