//! The reader's errors: protocol violations (with the close code to answer) and I/O failures.

use crate::close::close_code;

/// The client broke RFC 6455 or a limit; the connection should be closed with [`code`].
///
/// The error is a plain value (a `Copy` pair of code and static text) because it is produced
/// on the per-frame path and must cost nothing to create.
///
/// [`code`]: ProtocolError::code
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("websocket protocol error {code}: {reason}")]
pub struct ProtocolError {
    /// The close status to send: 1002 (protocol error), 1007 (invalid UTF-8) or
    /// 1009 (frame or message too big).
    pub code: u16,
    /// A short, fixed explanation, suitable as the close frame's reason.
    pub reason: &'static str,
}

impl ProtocolError {
    /// A 1002 error: the frame sequence breaks RFC 6455.
    pub const fn protocol(reason: &'static str) -> Self {
        Self {
            code: close_code::PROTOCOL_ERROR,
            reason,
        }
    }

    /// A 1007 error: a text message or close reason is not valid UTF-8.
    pub const fn invalid_utf8(reason: &'static str) -> Self {
        Self {
            code: close_code::INVALID_PAYLOAD,
            reason,
        }
    }

    /// A 1009 error: a frame or message exceeds the reader's [`Limits`](crate::Limits).
    pub const fn too_big(reason: &'static str) -> Self {
        Self {
            code: close_code::MESSAGE_TOO_BIG,
            reason,
        }
    }
}

/// Why [`FrameReader::read`](crate::FrameReader::read) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The client sent something invalid; close the connection with the error's code.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Reading from the transport failed, or it ended in the middle of a frame or of a
    /// fragmented message ([`std::io::ErrorKind::UnexpectedEof`]). No close frame can be sent.
    #[error("websocket read failed")]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// The close code to send the client, if the connection can still be closed cleanly.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::Protocol(err) => Some(err.code),
            Self::Io(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_thread_safe_and_small() {
        fn assert_send_sync_static<T: Send + Sync + 'static>() {}
        assert_send_sync_static::<ProtocolError>();
        assert_send_sync_static::<ReadError>();
        assert!(size_of::<ProtocolError>() <= 24);
    }

    #[test]
    fn display_names_the_code_and_read_error_exposes_it() {
        let err = ProtocolError::too_big("frame too big");
        assert_eq!(
            err.to_string(),
            "websocket protocol error 1009: frame too big"
        );
        assert_eq!(ReadError::from(err).close_code(), Some(1009));
        let io = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(ReadError::from(io).close_code(), None);
    }
}
