//! A plain TCP socket shared between hyper (which serves the HTTP request and hands the
//! upgraded connection to its task) and the hub (which writes a small group's frames to
//! an idle connection directly).
//!
//! Why: a message for one user's connection otherwise wakes that connection's task to make
//! one `write`. Writing from the delivering thread with a non-blocking `try_write` skips the
//! wake-up, the task switch and the scheduler queues (per-user delivery needs ~30 % less
//! CPU); whatever does not fit goes to the connection's outbox and its task as before (see
//! `outbox::Outbox::offer`). Large groups still go through the tasks: written inline, a
//! fan-out to thousands would serialize on one thread.
//! tokio's own `TcpStream` needs `&mut` for its `AsyncRead`/`AsyncWrite`, so it cannot be
//! both owned by hyper and reachable from the hub: this wrapper holds it in an `Arc` and
//! drives it through tokio's `&self` readiness API.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream usable through `Arc` handles; one of them serves as the connection's I/O.
#[derive(Clone, Debug)]
pub struct SharedTcp(pub Arc<TcpStream>);

impl SharedTcp {
    /// Wraps an accepted stream.
    pub fn new(stream: TcpStream) -> Self {
        Self(Arc::new(stream))
    }
}

/// Most bytes read per call. The buffer hyper hands in is uninitialized and, safe code
/// being unable to read into it, is zeroed first: bounding the read bounds that work (a
/// publish body can grow hyper's buffer to hundreds of KiB).
const MAX_READ: usize = 16 * 1024;

impl SharedTcp {
    /// Waits for write readiness and runs `write` until it does not block.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            // `try_write` clears the readiness on WouldBlock, so the next poll registers.
            match write(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let want = buf.remaining().min(MAX_READ);
            let unfilled = buf.initialize_unfilled_to(want);
            // A read shorter than asked took everything the socket had: like tokio's own
            // `TcpStream`, forget the readiness then, so that the next read waits for the
            // next event instead of asking the kernel once more for nothing (one EAGAIN
            // `recvfrom` per request otherwise). `try_io` clears it when its closure says
            // WouldBlock, so a short read reports itself as such, with its count kept.
            let mut short = None;
            let result = self.0.try_io(Interest::READABLE, || {
                let n = self.0.try_read(unfilled)?;
                if n > 0 && n < want {
                    short = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (result, short) {
                (_, Some(n)) | (Ok(n), None) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // `try_io` cleared the readiness, so the next poll registers.
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = socket2::SockRef::from(&*self.0).shutdown(Shutdown::Write);
        Poll::Ready(match result {
            // Already closed by the peer: nothing left to shut.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A short read forgets the readiness: the next read waits for the next bytes and
    /// gets them (nothing is lost, nothing hangs); a read as long as asked keeps it.
    #[tokio::test]
    async fn reads_after_a_short_read_wait_for_the_next_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peer = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut socket = SharedTcp::new(accepted);
        let mut buf = [0u8; 64];
        peer.write_all(b"abc").await.unwrap();
        assert_eq!(socket.read(&mut buf).await.unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        peer.write_all(b"defg").await.unwrap();
        assert_eq!(socket.read(&mut buf).await.unwrap(), 4);
        assert_eq!(&buf[..4], b"defg");
        peer.write_all(b"hijk").await.unwrap();
        let mut exact = [0u8; 2];
        socket.read_exact(&mut exact).await.unwrap();
        assert_eq!(&exact, b"hi");
        socket.read_exact(&mut exact).await.unwrap();
        assert_eq!(&exact, b"jk");
        drop(peer);
        assert_eq!(socket.read(&mut buf).await.unwrap(), 0, "end of stream");
    }
}
