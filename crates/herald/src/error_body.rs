//! `JsonErrors`: gives the answers hyper writes by itself — to a request head it cannot
//! parse: a target over 64 KiB (414), over 100 headers (431), malformed (400) — the JSON
//! error body that every other answer has. hyper has no hook for these answers, so they
//! are recognised on their way out: an error status head with an empty body.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http_limits::json_response;

/// An HTTP connection's I/O, rewriting hyper's own empty error answers.
#[derive(Debug)]
pub(crate) struct JsonErrors<I> {
    inner: I,
    /// The rewritten answer being written: bytes, how many are out, and the length of
    /// the original write to report once all are.
    pending: Option<(Vec<u8>, usize, usize)>,
    /// Set once the connection switched protocols: WebSocket frames pass untouched.
    upgraded: bool,
}

impl<I> JsonErrors<I> {
    pub(crate) fn new(inner: I) -> Self {
        Self {
            inner,
            pending: None,
            upgraded: false,
        }
    }
}

/// The JSON answer replacing `head`, when `head` is an error status with no body.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    if !matches!(rest.first(), Some(b'4' | b'5')) {
        return None;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None; // a body follows: one of herald's own answers
    }
    let lower = head[..end + 2].to_ascii_lowercase();
    if !lower.windows(19).any(|w| w == b"content-length: 0\r\n") {
        return None;
    }
    let status = std::str::from_utf8(rest.get(..3)?)
        .ok()
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())?;
    let (code, message) = match status.as_u16() {
        400 => ("bad_request", "the request is not valid HTTP/1.1"),
        405 => ("method_not_allowed", "this path does not take this method"),
        408 => ("request_timeout", "the request head did not arrive in time"),
        413 => ("payload_too_large", "the request is too large"),
        414 => (
            "uri_too_long",
            "the request target is longer than the server reads",
        ),
        431 => (
            "headers_too_large",
            "the request has more headers, or larger ones, than the server reads",
        ),
        505 => ("http_version_not_supported", "use HTTP/1.1"),
        _ => ("http_error", "the request could not be served"),
    };
    Some(json_response(status, code, message))
}

impl<I: AsyncWrite + Unpin> JsonErrors<I> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some((bytes, written, original)) = &mut self.pending {
            if *written == bytes.len() {
                let original = *original;
                self.pending = None;
                return Poll::Ready(Ok(original));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for JsonErrors<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for JsonErrors<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_some() {
            return this.poll_pending(cx);
        }
        if !this.upgraded && buf.starts_with(b"HTTP/1.") {
            if buf.starts_with(b"HTTP/1.1 101 ") {
                this.upgraded = true;
            } else if let Some(answer) = rewrite(buf) {
                this.pending = Some((answer, 0, buf.len()));
                return this.poll_pending(cx);
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_some() {
            return this.poll_pending(cx);
        }
        let head = bufs
            .iter()
            .find(|b| !b.is_empty())
            .filter(|b| !this.upgraded && b.starts_with(b"HTTP/1."));
        if let Some(head) = head {
            if head.starts_with(b"HTTP/1.1 101 ") {
                this.upgraded = true;
            } else if rewrite(head).is_some() {
                // One of hyper's own empty error answers: the head goes alone, replaced.
                return Pin::new(this).poll_write(cx, head);
            }
        }
        // Any other answer leaves in one `writev`, head and body together (written
        // separately they cost a second syscall and a second TCP segment per response).
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.pending.is_some() {
            ready!(self.poll_pending(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.pending.is_some() {
            ready!(self.poll_pending(cx))?;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_empty_error_answers_are_rewritten() {
        let empty = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(rewrite(empty).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(answer.contains(r#""error":"uri_too_long""#), "{answer}");
        let with_body = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        assert!(rewrite(with_body).is_none());
        let head_only = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n";
        assert!(rewrite(head_only).is_none(), "a body written separately");
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"\x81\x05hello").is_none());
    }

    /// Records what each write call was given.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl AsyncWrite for Calls {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len();
            self.0.push(all);
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_answer_with_a_body_leaves_in_one_write_and_an_empty_error_is_still_rewritten() {
        let mut io = JsonErrors::new(Calls::default());
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let n = io
            .write_vectored(&[IoSlice::new(head), IoSlice::new(b"{}")])
            .await
            .unwrap();
        assert_eq!(n, head.len() + 2);
        let empty = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let n = io
            .write_vectored(&[IoSlice::new(b""), IoSlice::new(empty)])
            .await
            .unwrap();
        assert_eq!(n, empty.len(), "the original length is reported");
        let calls = &io.inner.0;
        assert_eq!(calls.len(), 2, "one call per answer");
        assert_eq!(calls[0], b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        let rewritten = String::from_utf8(calls[1].clone()).unwrap();
        assert!(
            rewritten.contains("\"error\":\"bad_request\""),
            "{rewritten}"
        );
    }

    #[tokio::test]
    async fn a_rewritten_answer_is_written_whole_and_frames_after_an_upgrade_pass() {
        let (a, mut b) = tokio::io::duplex(16); // small: forces partial writes
        let mut io = JsonErrors::new(a);
        let writer = tokio::spawn(async move {
            io.write_all(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
            )
            .await
            .unwrap();
            io.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
                .await
                .unwrap();
            io.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            io.shutdown().await.unwrap();
        });
        let mut out = String::new();
        b.read_to_string(&mut out).await.unwrap();
        writer.await.unwrap();
        let (first, rest) = out.split_once("HTTP/1.1 101").unwrap();
        assert!(first.contains("\"error\":\"headers_too_large\""), "{first}");
        assert!(
            rest.ends_with("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            "{rest}"
        );
    }
}
