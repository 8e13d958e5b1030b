//! `Outbox`: one connection's bounded queue of pre-encoded frames, shared by the hub
//! (which offers frames) and the connection's task (which writes them), with the direct
//! path that writes a frame straight to an idle plain-TCP socket.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// How a connection's frames are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The seed's contract: one frame per message, the payload byte for byte.
    Plain,
    /// `herald.v1`: a header naming group and offset, then the payload.
    V1,
    /// Server-Sent Events: the event's `event:`/`data:` lines; the connection's task adds
    /// the `id:` line (its own positions) and the blank line ending the event.
    Sse,
}

/// One pre-encoded frame queued for a connection.
#[derive(Clone, Debug)]
pub struct OutFrame {
    /// The complete WebSocket frame, shared with every other recipient.
    pub frame: Bytes,
    /// Which of the connection's groups it belongs to (index into its group list).
    pub slot: u8,
    /// The message's offset in that group.
    pub offset: u64,
    /// A hash of the message's epoch ([`epoch_tag`]), so a connection notices when the
    /// group's history was reset under it without an allocation per recipient.
    pub epoch: u32,
}

/// The [`OutFrame::slot`] of a frame that is no message (a `join`/`leave` event): the
/// connection passes it on without the offset and epoch checks. Never a group's slot: a
/// connection has at most 255 groups, numbered 0 to 254.
pub const CONTROL_SLOT: u8 = u8::MAX;

/// A 32-bit FNV-1a hash of an epoch string.
pub fn epoch_tag(epoch: &str) -> u32 {
    epoch.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// State shared between a connection's task and the hub.
#[derive(Debug)]
pub struct ConnShared {
    /// Close code requested by the hub (0 = none), e.g. 4001 on overflow.
    close_code: AtomicU16,
    /// Wakes the connection task when `close_code` is set.
    kicked: Notify,
    /// Bound on [`Queue::bytes`].
    max_bytes: usize,
    /// Bound on [`Queue::count`].
    max_messages: usize,
    /// The frames themselves. A plain deque rather than a tokio mpsc channel: the channel
    /// allocates its first 32-slot block (~1.5 KiB) up front, for every connection, idle or
    /// not; an empty `VecDeque` allocates nothing.
    queue: Mutex<Queue>,
    /// Wakes the connection task when the queue goes from empty to non-empty.
    ready: Notify,
    mode: Mode,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<OutFrame>,
    /// Set by [`OutboxReceiver::close`]: no more frames are accepted.
    closed: bool,
    /// The connection's socket, once its task armed direct writes (plain mode over plain
    /// TCP). While the queue is empty and the task is not writing, [`Outbox::offer`]
    /// writes a frame straight to it instead of waking the task.
    direct: Option<Arc<TcpStream>>,
    /// The task holds frames it took from the queue, or is writing a frame of its own:
    /// a direct write now could interleave with its bytes.
    writing: bool,
    /// Frames and bytes in the outbox: queued here, or taken by the task and not yet
    /// released ([`OutboxReceiver::release`]). Plain fields under the lock the producer
    /// takes anyway; the task settles them once per batch, not once per frame.
    count: usize,
    bytes: usize,
}

/// A drained deque keeps at most this capacity, so a connection that saw a burst does
/// not hold the burst's memory while idle.
const KEEP_CAPACITY: usize = 8;

impl ConnShared {
    /// The close code the hub asked for, if any.
    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Asks the connection to close with `code`; the first request wins.
    pub fn kick(&self, code: u16) {
        if self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.kicked.notify_one();
        }
    }

    /// Resolves once the connection was kicked (cancel-safe; `notify_one` keeps a permit).
    pub async fn kicked(&self) {
        self.kicked.notified().await;
    }

    /// The connection's wire mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Frames queued for the connection and not yet written.
    pub fn queued(&self) -> usize {
        self.queue().count
    }

    // Only held for a push, a swap or a clear, never across an `.await`; a poisoned lock
    // means a panic elsewhere, and the queue itself is still consistent.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The outbox is empty (returned by [`OutboxReceiver::try_recv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Empty;

/// The connection task's end of its outbox.
///
/// It takes the hub's whole queue at once (one lock per burst, not per frame) into a
/// local deque and hands frames out from there.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<ConnShared>,
    local: VecDeque<OutFrame>,
}

impl OutboxReceiver {
    /// The next frame; waits for one. Cancel-safe: frames stay queued until returned.
    /// `None` once the outbox is closed.
    pub async fn recv(&mut self) -> Option<OutFrame> {
        loop {
            if let Ok(frame) = self.try_recv() {
                return Some(frame);
            }
            if self.shared.queue().closed {
                return None;
            }
            // A push between the check above and this wait leaves a permit in `ready`.
            self.shared.ready.notified().await;
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<OutFrame, Empty> {
        if self.local.is_empty() {
            let mut queue = self.shared.queue();
            if queue.frames.is_empty() {
                return Err(Empty);
            }
            std::mem::swap(&mut self.local, &mut queue.frames);
            queue.writing = true;
        }
        let frame = self.local.pop_front().ok_or(Empty)?;
        if self.local.is_empty() && self.local.capacity() > KEEP_CAPACITY {
            self.local = VecDeque::new();
        }
        Ok(frame)
    }

    /// The task is done with `frames` frames of `bytes` bytes it took (written out, or
    /// skipped): they no longer count against the outbox's bounds.
    pub fn release(&mut self, frames: usize, bytes: usize) {
        if frames > 0 {
            let mut queue = self.shared.queue();
            queue.count = queue.count.saturating_sub(frames);
            queue.bytes = queue.bytes.saturating_sub(bytes);
        }
    }

    /// Frames queued and not yet returned.
    pub fn len(&self) -> usize {
        self.local.len() + self.shared.queue().frames.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets the hub write frames directly to `socket` whenever this outbox is empty and
    /// the task is not writing. Call once the socket carries WebSocket frames.
    pub fn arm_direct(&mut self, socket: Arc<TcpStream>) {
        let mut queue = self.shared.queue();
        if !queue.closed {
            queue.direct = Some(socket);
        }
    }

    /// The task is about to write a frame of its own (ping, pong, goaway): direct writes
    /// pause until [`OutboxReceiver::done_writing`].
    pub fn begin_writing(&mut self) {
        self.shared.queue().writing = true;
    }

    /// The task wrote everything it took: direct writes may resume if nothing is queued.
    pub fn done_writing(&mut self) {
        if self.local.is_empty() {
            let mut queue = self.shared.queue();
            if queue.frames.is_empty() {
                queue.writing = false;
            }
        }
    }

    /// Refuses every further frame and drops the queued ones.
    pub fn close(&mut self) {
        let mut queue = self.shared.queue();
        queue.closed = true;
        queue.direct = None;
        queue.frames = VecDeque::new();
        queue.count = 0;
        queue.bytes = 0;
        drop(queue);
        self.local = VecDeque::new();
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        // Releases the socket held for direct writes even if the task ended abruptly.
        self.close();
    }
}

/// The hub's handle on a connection: the sending half of its bounded outbox.
#[derive(Clone, Debug)]
pub struct Outbox {
    shared: Arc<ConnShared>,
}

impl Outbox {
    /// A new outbox holding at most `max_messages` frames and `max_bytes` bytes.
    pub fn new(mode: Mode, max_messages: usize, max_bytes: usize) -> (Self, OutboxReceiver) {
        let shared = Arc::new(ConnShared {
            close_code: AtomicU16::new(0),
            kicked: Notify::new(),
            max_bytes,
            max_messages: max_messages.max(1),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            mode,
        });
        let rx = OutboxReceiver {
            shared: shared.clone(),
            local: VecDeque::new(),
        };
        (Self { shared }, rx)
    }

    /// The state shared with the connection task.
    pub fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// Queues a frame without waiting. On overflow the connection is kicked with 4001
    /// and `false` returned; a closing connection also returns `false`.
    ///
    /// With `inline`, a connection armed for direct writes whose outbox is empty and whose
    /// task is not writing gets the frame written to its socket right here (no wake-up
    /// of its task); what the socket does not take is queued for the task as usual.
    pub fn offer(&self, frame: OutFrame, metrics: &Metrics, inline: bool) -> bool {
        let write = if inline { Write::Inline } else { Write::Queue };
        self.offer_all(std::iter::once(frame), 1, metrics, write)
            .sent
            == 1
    }

    /// [`Outbox::offer`] for the `n` frames of `frames`, in order, under one lock, written
    /// as `write` says. Frames after an overflow are dropped (the connection is being
    /// closed with 4001).
    pub fn offer_all(
        &self,
        frames: impl Iterator<Item = OutFrame>,
        n: usize,
        metrics: &Metrics,
        write: Write<'_>,
    ) -> Delivered {
        let shared = &*self.shared;
        let refused = Delivered {
            sent: 0,
            dropped: n,
        };
        if shared.close_code().is_some() {
            return refused;
        }
        let mut queue = shared.queue();
        if queue.closed {
            return refused;
        }
        let was_empty = queue.frames.is_empty();
        let inline = matches!(write, Write::Inline);
        if !inline && n > 1 {
            // One allocation for a burst instead of the deque doubling its way up.
            queue.frames.reserve(n);
        }
        let mut sent = 0;
        let mut overflowed = false;
        for mut frame in frames {
            let len = frame.frame.len();
            if queue.count >= shared.max_messages || queue.bytes + len > shared.max_bytes {
                overflowed = true;
                break;
            }
            sent += 1;
            if inline && queue.frames.is_empty() && !queue.writing {
                if let Some(socket) = &queue.direct {
                    match socket.try_write(&frame.frame) {
                        Ok(n) if n == len => continue,
                        // The socket buffer took part of it: the task writes the rest.
                        Ok(n) => frame.frame = frame.frame.slice(n..),
                        // Full, or broken: the task waits for room, or meets the error.
                        Err(_) => {}
                    }
                }
            }
            queue.count += 1;
            queue.bytes += frame.frame.len();
            queue.frames.push_back(frame);
        }
        let mut wake = was_empty && !queue.frames.is_empty();
        if wake && queue.direct.is_some() && !queue.writing {
            if let Write::Later(later) = write {
                // Written by `flush` once the caller's locks are released; it wakes the
                // task for whatever the socket does not take.
                later.push(self.clone());
                wake = false;
            }
        }
        drop(queue);
        if overflowed {
            self.overflow(metrics);
        }
        if wake {
            shared.ready.notify_one();
        }
        Delivered {
            sent,
            dropped: n - sent,
        }
    }

    /// Writes the queued frames to the socket while the connection is armed for direct
    /// writes and its task is not writing, and wakes the task for whatever is left: the
    /// second half of [`Write::Later`].
    pub fn flush(&self) {
        let shared = &*self.shared;
        let mut queue = shared.queue();
        if !queue.writing {
            let queue = &mut *queue;
            if let Some(socket) = &queue.direct {
                while let Some(front) = queue.frames.front_mut() {
                    let len = front.frame.len();
                    match socket.try_write(&front.frame) {
                        Ok(n) if n == len => {
                            queue.count = queue.count.saturating_sub(1);
                            queue.bytes = queue.bytes.saturating_sub(len);
                            queue.frames.pop_front();
                        }
                        // Part of it: the rest waits for the task (and its bytes stay
                        // counted, which is what matters for the bound).
                        Ok(n) => {
                            front.frame = front.frame.slice(n..);
                            queue.bytes = queue.bytes.saturating_sub(n);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        let wake = !queue.frames.is_empty();
        drop(queue);
        if wake {
            shared.ready.notify_one();
        }
    }

    fn overflow(&self, metrics: &Metrics) {
        if self.shared.close_code().is_none() {
            Metrics::add(&metrics.outbox_overflows, 1);
        }
        self.shared.kick(crate::close::SLOW_CONSUMER);
    }
}

/// How [`Outbox::offer_all`] may write to the socket.
#[derive(Debug)]
pub enum Write<'a> {
    /// Only through the connection's task.
    Queue,
    /// Written right here when the connection is armed for direct writes, its outbox is
    /// empty and its task is not writing (see [`Outbox::offer`]).
    Inline,
    /// Queued; when the connection could have been written to inline, its outbox is
    /// pushed to the list instead of its task being woken, and the caller must call
    /// [`Outbox::flush`] on it (after releasing whatever lock it holds, so that the
    /// socket write happens outside it). Order holds: the frames are queued at once.
    Later(&'a mut Vec<Outbox>),
}

impl Write<'_> {
    /// Inline for a group of at most [`crate::hub::INLINE_MAX_MEMBERS`] local members,
    /// through the tasks for a larger one (whose fan-out should not wait on sockets).
    pub fn for_group(members: usize) -> Self {
        if members <= crate::hub::INLINE_MAX_MEMBERS {
            Write::Inline
        } else {
            Write::Queue
        }
    }

    /// The same instruction for one more call.
    pub fn reborrow(&mut self) -> Write<'_> {
        match self {
            Self::Queue => Write::Queue,
            Self::Inline => Write::Inline,
            Self::Later(later) => Write::Later(later),
        }
    }
}

/// How a delivery went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Frames queued.
    pub sent: usize,
    /// Members whose outbox refused the frame.
    pub dropped: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected socket pair: the server end (shared, as the hub holds it) and the peer.
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), peer)
    }

    fn frame_of(bytes: Vec<u8>) -> OutFrame {
        OutFrame {
            frame: Bytes::from(bytes),
            slot: 0,
            offset: 0,
            epoch: 0,
        }
    }

    async fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0u8; n];
        tokio::time::timeout(std::time::Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("bytes within 5 s")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn inline_offers_reach_the_socket_without_the_task() {
        let metrics = Metrics::default();
        let (socket, mut peer) = socket_pair().await;
        let (outbox, mut rx) = Outbox::new(Mode::Plain, 8, 1 << 20);
        // Not armed yet: queued for the task.
        assert!(outbox.offer(frame_of(b"one".to_vec()), &metrics, true));
        assert_eq!(rx.len(), 1);
        assert_eq!(&rx.try_recv().unwrap().frame[..], b"one");
        rx.release(1, 3);
        rx.done_writing();
        rx.arm_direct(socket);
        // Armed, idle, small group: written here, nothing queued, no bytes counted.
        assert!(outbox.offer(frame_of(b"two".to_vec()), &metrics, true));
        assert!(rx.is_empty());
        assert_eq!(outbox.shared().queue().bytes, 0);
        assert_eq!(read_exactly(&mut peer, 3).await, b"two");
        // A large fan-out (inline = false) always goes through the task.
        assert!(outbox.offer(frame_of(b"three".to_vec()), &metrics, false));
        assert_eq!(rx.len(), 1);
        // And while frames wait for the task, later ones queue behind them (order).
        assert!(outbox.offer(frame_of(b"four".to_vec()), &metrics, true));
        assert_eq!(rx.len(), 2);
        // While the task writes a frame of its own, inline writes pause too.
        assert_eq!(&rx.try_recv().unwrap().frame[..], b"three");
        assert_eq!(&rx.try_recv().unwrap().frame[..], b"four");
        rx.done_writing();
        rx.begin_writing();
        assert!(outbox.offer(frame_of(b"five".to_vec()), &metrics, true));
        assert_eq!(rx.len(), 1);
        // Closing releases the socket: the hub no longer writes.
        rx.close();
        assert!(!outbox.offer(frame_of(b"six".to_vec()), &metrics, true));
    }

    /// `Write::Later` queues without writing or waking, and names the outbox for
    /// `flush`, which writes the queued frames in order; while the task writes, `flush`
    /// leaves the frames to it and wakes it.
    #[tokio::test]
    async fn later_writes_wait_for_flush_and_keep_order() {
        let metrics = Metrics::default();
        let (socket, mut peer) = socket_pair().await;
        let (outbox, mut rx) = Outbox::new(Mode::Plain, 8, 1 << 20);
        rx.arm_direct(socket);
        let mut later = Vec::new();
        let frames = [b"one".to_vec(), b"two".to_vec()].map(frame_of);
        let sent = outbox.offer_all(frames.into_iter(), 2, &metrics, Write::Later(&mut later));
        assert_eq!(sent.sent, 2);
        assert_eq!(later.len(), 1, "named for a flush");
        assert_eq!(outbox.shared().queued(), 2, "queued, not written yet");
        // A second offer before the flush queues behind them and names nobody.
        let mut again = Vec::new();
        outbox.offer_all(
            std::iter::once(frame_of(b"three".to_vec())),
            1,
            &metrics,
            Write::Later(&mut again),
        );
        assert!(again.is_empty());
        for o in later {
            o.flush();
        }
        assert_eq!(outbox.shared().queued(), 0);
        assert_eq!(outbox.shared().queue().bytes, 0);
        assert_eq!(read_exactly(&mut peer, 11).await, b"onetwothree");
        // The task is writing: the frame is queued for it and nobody is named.
        rx.begin_writing();
        let mut later = Vec::new();
        outbox.offer_all(
            std::iter::once(frame_of(b"four".to_vec())),
            1,
            &metrics,
            Write::Later(&mut later),
        );
        assert!(later.is_empty());
        outbox.flush();
        assert_eq!(outbox.shared().queued(), 1, "left to the task");
        assert_eq!(&rx.try_recv().unwrap().frame[..], b"four");
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_rest_to_the_task_in_order() {
        let metrics = Metrics::default();
        let (socket, mut peer) = socket_pair().await;
        let (outbox, mut rx) = Outbox::new(Mode::Plain, 10_000, 1 << 30);
        rx.arm_direct(socket.clone());
        // The peer reads nothing: the socket buffers fill, a write goes partial, and every
        // later frame must queue behind the remainder.
        let frames: Vec<Vec<u8>> = (0..400u32)
            .map(|i| {
                let mut f = vec![(i % 251) as u8; 16 * 1024];
                f[..4].copy_from_slice(&i.to_be_bytes());
                f
            })
            .collect();
        for f in &frames {
            assert!(outbox.offer(frame_of(f.clone()), &metrics, true));
        }
        let queued = rx.len();
        assert!(queued > 0, "6.4 MB did not all fit in the socket buffers");
        assert!(queued < frames.len(), "nothing was written inline");
        // Play the task: write what was queued, in order, while the peer reads everything.
        let expected: Vec<u8> = frames.concat();
        let reader = tokio::spawn(async move { read_exactly(&mut peer, expected.len()).await });
        let write_queued = async {
            while let Ok(f) = rx.try_recv() {
                let mut rest = &f.frame[..];
                while !rest.is_empty() {
                    socket.writable().await.unwrap();
                    match socket.try_write(rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), write_queued)
            .await
            .expect("queued frames written within 10 s");
        let got = reader.await.unwrap();
        assert!(got == frames.concat(), "bytes arrived out of order or torn");
    }
}
