//! Publish coalescing: concurrent publishes to one Redis share script calls.
//!
//! Publishers put a [`Request`] (one or more messages published together) in a bounded
//! queue and wait for its answer; one flusher task per command connection ([`run`]) takes
//! the queued requests in order, packs them into a batch of at most `max_items` messages
//! and `max_bytes` payload bytes, and hands the batch to a [`Flush`] (one script call).
//! At most `in_flight` calls are outstanding at once: while they are, new requests wait in
//! the queue and go out together when one returns. Nothing waits on a timer, so a lone
//! publish is sent at once, and batches only form when publishes overlap a call in flight.
//! A publisher that finds nothing queued and no call in flight makes its call itself
//! (the direct path: no hand-off to the flusher task and back, which is what a moderate
//! rate of publishes mostly sees); while it is in flight the flusher sends nothing, and
//! when it returns the flusher is woken if anything queued meanwhile.
//!
//! **Order.** Requests are taken in queue order, a batch keeps that order, calls on one
//! connection run in the order they were sent, and answers are given in the order the
//! calls were sent (`FuturesOrdered`), so two requests to one group resolve in the order
//! their offsets were assigned.
//!
//! **Errors.** Each message has its own outcome in the script's reply: a message Redis
//! refuses fails its own request (and skips that request's later messages, so a request
//! stays a prefix of what it asked for); the other requests of the batch are unaffected.
//! A call that fails as a whole (connection lost, timeout) fails the requests of that
//! batch only.
//!
//! **Partitions.** [`Flush::partition`] says which messages may share a call; a batch
//! holds requests of one partition (the first queued one's), the others wait in order
//! for a later batch. Against one Redis everything is one partition. In cluster mode a
//! script call may only name keys of one hash slot: there the hook returns the slot of
//! the request's group, and a request must name groups of one slot only.
//!
//! **Cancellation.** A publisher that gives up (its future is dropped) before its request
//! was taken is skipped: nothing is published for it. Once taken, it is published
//! whether or not anyone still waits for the answer.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use herald_core::{KeyedItem, LayerError, Published};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

/// Messages published together: one `Layer::publish*` call (or one chunk of a large batch).
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) items: Vec<KeyedItem>,
    /// How long the idempotency keys of `items` are remembered.
    pub(crate) window: Duration,
}

impl Request {
    /// Payload bytes, the measure of the `max_bytes` bound.
    fn bytes(&self) -> usize {
        self.items.iter().fold(0usize, |n, item| {
            n.saturating_add(item.payload.data().len())
        })
    }
}

/// The outcome of one message of a batch.
pub(crate) type ItemOutcome = Result<Published, LayerError>;

/// What a request's publisher gets: every position, or how many came before the first
/// failure and why it failed (the `Layer::publish_batch` contract).
pub(crate) type Answer = Result<Vec<Published>, (usize, LayerError)>;

/// A command path to one Redis, as the flusher sees it.
pub(crate) trait Flush: Send + Sync {
    /// Which messages may share a script call: only requests whose first message has the
    /// same partition are batched together. One Redis: all one partition.
    fn partition(&self, _request: &Request) -> u64 {
        0
    }

    /// Publishes `batch` in one script call. `Ok` holds one outcome per message, in order;
    /// `Err` fails the whole batch.
    fn flush(
        &self,
        batch: &[Request],
    ) -> impl Future<Output = Result<Vec<ItemOutcome>, LayerError>> + Send;
}

/// The bounds of the coalescing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Most messages in one script call (a larger request goes alone).
    pub(crate) max_items: usize,
    /// Most payload bytes in one script call (a larger request goes alone).
    pub(crate) max_bytes: usize,
    /// Script calls outstanding at once.
    pub(crate) in_flight: usize,
    /// Messages queued or in flight; publishers beyond it wait for room.
    pub(crate) queue: usize,
}

/// One request waiting in the queue.
#[derive(Debug)]
struct Pending {
    request: Request,
    reply: oneshot::Sender<Answer>,
    /// Room in the queue, given back once the request is answered (or dropped).
    _room: OwnedSemaphorePermit,
}

/// Requests taken for one call, and where their answers go.
#[derive(Debug)]
struct Batch {
    requests: Vec<Request>,
    replies: Vec<(oneshot::Sender<Answer>, OwnedSemaphorePermit)>,
}

/// The queue of one command path. Publishers [`submit`](Self::submit); the flusher
/// task ([`run`]) drains it.
#[derive(Debug)]
pub(crate) struct Coalescer {
    bounds: Bounds,
    queue: Mutex<Queue>,
    /// Wakes the flusher when a request was queued.
    wake: Notify,
    room: Arc<Semaphore>,
    /// Script calls made; `Relaxed`: read alone, for tests and metrics.
    calls: AtomicU64,
    /// Most messages in one call so far; `Relaxed` like `calls`.
    largest: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// Set when the flusher stopped: later requests fail with `Closed`.
    closed: bool,
    /// Calls in flight, the direct one included.
    in_flight: usize,
    /// A publisher's own call is in flight: the flusher waits for it, so answers keep
    /// the order of the calls.
    direct: bool,
}

/// Ends a direct call: frees its slot (also when the publisher's future is dropped
/// mid-call) and wakes the flusher for what queued meanwhile.
struct DirectCall<'a>(&'a Coalescer);

impl Drop for DirectCall<'_> {
    fn drop(&mut self) {
        let queued = {
            let mut queue = lock(&self.0.queue);
            queue.in_flight = queue.in_flight.saturating_sub(1);
            queue.direct = false;
            !queue.pending.is_empty()
        };
        if queued {
            self.0.wake.notify_one();
        }
    }
}

impl Coalescer {
    pub(crate) fn new(bounds: Bounds) -> Self {
        let bounds = Bounds {
            max_items: bounds.max_items.max(1),
            max_bytes: bounds.max_bytes.max(1),
            in_flight: bounds.in_flight.max(1),
            queue: bounds.queue.max(bounds.max_items).max(1),
        };
        Self {
            room: Arc::new(Semaphore::new(bounds.queue)),
            bounds,
            queue: Mutex::default(),
            wake: Notify::new(),
            calls: AtomicU64::new(0),
            largest: AtomicU64::new(0),
        }
    }

    /// Script calls made so far, and the most messages one of them carried.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.largest.load(Ordering::Relaxed),
        )
    }

    /// Messages queued and not yet taken into a call.
    pub(crate) fn queued(&self) -> usize {
        lock(&self.queue)
            .pending
            .iter()
            .fold(0usize, |n, p| n.saturating_add(p.request.items.len()))
    }

    /// Queues `request` and waits for its answer. Waits at most `wait` for room in the
    /// queue (then fails with `Unavailable`); the answer itself comes within the call's
    /// own timeout (the `Flush`), or with `Closed` when the flusher stops.
    pub(crate) async fn submit<F: Flush>(
        &self,
        flush: &F,
        request: Request,
        wait: Duration,
    ) -> Answer {
        // A request larger than the whole queue takes all of it.
        let n = request.items.len().clamp(1, self.bounds.queue);
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let room = match tokio::time::timeout(wait, self.room.clone().acquire_many_owned(n)).await {
            Ok(Ok(room)) => room,
            // The semaphore is closed only with the queue.
            Ok(Err(_)) => return Err((0, LayerError::Closed)),
            Err(_) => {
                return Err((
                    0,
                    LayerError::Unavailable(format!("the publish queue stayed full for {wait:?}")),
                ));
            }
        };
        let direct = {
            let mut queue = lock(&self.queue);
            if queue.closed {
                return Err((0, LayerError::Closed));
            }
            if queue.pending.is_empty() && queue.in_flight == 0 {
                queue.in_flight = 1;
                queue.direct = true;
                Ok(request)
            } else {
                let (tx, rx) = oneshot::channel();
                queue.pending.push_back(Pending {
                    request,
                    reply: tx,
                    _room: room,
                });
                Err(rx)
            }
        };
        let request = match direct {
            Ok(request) => request,
            Err(rx) => {
                self.wake.notify_one();
                // The sender is dropped unanswered only when the flusher stops.
                return rx.await.unwrap_or(Err((0, LayerError::Closed)));
            }
        };
        // The direct path; `room` (not moved on this path) is held until we return.
        let call = DirectCall(self);
        self.count(request.items.len());
        let outcome = flush.flush(std::slice::from_ref(&request)).await;
        drop(call);
        // `answers` gives one answer per request: there is one.
        answers(std::slice::from_ref(&request), outcome)
            .pop()
            .unwrap_or(Err((0, LayerError::Closed)))
    }

    /// Takes the next batch: queued requests in order, of the first one's partition,
    /// within the bounds (the first request always goes, whatever its size).
    fn take<F: Flush>(&self, flush: &F) -> Option<Batch> {
        let mut queue = lock(&self.queue);
        if queue.direct || queue.in_flight >= self.bounds.in_flight {
            return None;
        }
        let mut batch = Batch {
            requests: Vec::new(),
            replies: Vec::new(),
        };
        let (mut items, mut bytes, mut partition) = (0usize, 0usize, None);
        let mut i = 0;
        while i < queue.pending.len() {
            let Some(pending) = queue.pending.get(i) else {
                break;
            };
            if pending.reply.is_closed() {
                // Its publisher gave up before it was sent: publish nothing for it.
                queue.pending.remove(i);
                continue;
            }
            let p = flush.partition(&pending.request);
            if *partition.get_or_insert(p) != p {
                i += 1;
                continue;
            }
            let (n, b) = (pending.request.items.len(), pending.request.bytes());
            if !batch.requests.is_empty()
                && (items.saturating_add(n) > self.bounds.max_items
                    || bytes.saturating_add(b) > self.bounds.max_bytes)
            {
                // Full: the rest of this partition waits, in order, for the next batch.
                break;
            }
            let Some(pending) = queue.pending.remove(i) else {
                break;
            };
            items = items.saturating_add(n);
            bytes = bytes.saturating_add(b);
            batch.requests.push(pending.request);
            batch.replies.push((pending.reply, pending._room));
        }
        if batch.requests.is_empty() {
            return None;
        }
        queue.in_flight = queue.in_flight.saturating_add(1);
        drop(queue);
        self.count(items);
        Some(batch)
    }

    /// Counts a call of `items` messages.
    fn count(&self, items: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.largest
            .fetch_max(u64::try_from(items).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A flusher call returned: its slot is free.
    fn returned(&self) {
        let mut queue = lock(&self.queue);
        queue.in_flight = queue.in_flight.saturating_sub(1);
    }

    /// Refuses new requests and drops the queued ones (their publishers get `Closed`).
    fn close(&self) {
        let dropped = {
            let mut queue = lock(&self.queue);
            queue.closed = true;
            std::mem::take(&mut queue.pending)
        };
        self.room.close();
        drop(dropped);
    }
}

/// The flusher of one command path: runs until `cancel` fires, then fails what is left.
pub(crate) async fn run<F: Flush>(coalescer: &Coalescer, flush: &F, cancel: &CancellationToken) {
    let mut in_flight = FuturesOrdered::new();
    loop {
        // `take` says when the bound (or a direct call) leaves no room.
        while let Some(batch) = coalescer.take(flush) {
            in_flight.push_back(async move {
                let outcome = flush.flush(&batch.requests).await;
                (batch, outcome)
            });
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some((batch, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                coalescer.returned();
                let answers = answers(&batch.requests, outcome);
                for ((reply, _room), answer) in batch.replies.into_iter().zip(answers) {
                    // The publisher may have given up waiting: nothing to do then.
                    let _ = reply.send(answer);
                }
            }
            _ = coalescer.wake.notified() => {}
        }
    }
    // Dropping the calls in flight drops their reply senders: those publishers get
    // `Closed`, like the ones still queued.
    drop(in_flight);
    coalescer.close();
}

/// Each request's part of a call's outcome.
fn answers(requests: &[Request], outcome: Result<Vec<ItemOutcome>, LayerError>) -> Vec<Answer> {
    match outcome {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            requests
                .iter()
                .map(|request| {
                    let mut published = Vec::with_capacity(request.items.len());
                    let mut failed = None;
                    for _ in 0..request.items.len() {
                        match outcomes.next() {
                            Some(Ok(p)) if failed.is_none() => published.push(p),
                            Some(Err(e)) if failed.is_none() => failed = Some(e),
                            // After the first failure the request's later messages were
                            // skipped; their outcomes are consumed only to keep alignment.
                            Some(_) => {}
                            None => {
                                failed.get_or_insert_with(|| {
                                    LayerError::Unavailable(
                                        "redis answered fewer outcomes than messages".to_owned(),
                                    )
                                });
                            }
                        }
                    }
                    match failed {
                        Some(e) => Err((published.len(), e)),
                        None => Ok(published),
                    }
                })
                .collect()
        }
        Err(e) => requests.iter().map(|_| Err((0, e.clone()))).collect(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a push, a pop or a counter update: a panic cannot leave the
    // value half-updated, so a poisoned lock is taken over.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{Epoch, GroupName, Payload, Position};
    use std::collections::HashMap;

    const LIMIT: Duration = Duration::from_secs(5);

    /// A Redis stand-in: numbers messages per group, records every batch, refuses
    /// payloads `"bad"` one by one and fails whole calls holding a payload `"down"`.
    /// While `hold` is set, each call waits for one `release` permit first.
    struct Fake {
        offsets: Mutex<HashMap<String, u64>>,
        calls: Mutex<Vec<Vec<String>>>,
        hold: bool,
        release: Semaphore,
        partitioned: bool,
    }

    impl Default for Fake {
        fn default() -> Self {
            Self {
                offsets: Mutex::default(),
                calls: Mutex::default(),
                hold: false,
                release: Semaphore::new(0),
                partitioned: false,
            }
        }
    }

    impl Flush for Fake {
        fn partition(&self, request: &Request) -> u64 {
            match request.items.first() {
                Some(item) if self.partitioned => u64::from(item.group.as_str().as_bytes()[0]),
                _ => 0,
            }
        }

        async fn flush(&self, batch: &[Request]) -> Result<Vec<ItemOutcome>, LayerError> {
            let texts: Vec<String> = batch
                .iter()
                .flat_map(|r| r.items.iter())
                .map(|i| String::from_utf8_lossy(i.payload.data()).into_owned())
                .collect();
            lock(&self.calls).push(texts.clone());
            if self.hold {
                self.release.acquire().await.expect("open").forget();
            }
            if texts.iter().any(|t| t == "down") {
                return Err(LayerError::Unavailable("call failed".into()));
            }
            let mut offsets = lock(&self.offsets);
            Ok(batch
                .iter()
                .flat_map(|r| r.items.iter())
                .map(|item| {
                    if item.payload.data().as_ref() == b"bad" {
                        return Err(LayerError::Unavailable("refused".into()));
                    }
                    let offset = offsets.entry(item.group.to_string()).or_default();
                    *offset += 1;
                    Ok(Published {
                        position: Position {
                            offset: *offset,
                            epoch: Epoch::new("e"),
                        },
                        duplicate: false,
                    })
                })
                .collect())
        }
    }

    fn request(group: &str, texts: &[&str]) -> Request {
        Request {
            items: texts
                .iter()
                .map(|t| KeyedItem {
                    group: GroupName::new(group).expect("valid"),
                    payload: Payload::text(*t),
                    key: None,
                })
                .collect(),
            window: Duration::from_secs(1),
        }
    }

    fn bounds(max_items: usize, max_bytes: usize) -> Bounds {
        Bounds {
            max_items,
            max_bytes,
            in_flight: 1,
            queue: 1024,
        }
    }

    /// Polls `condition` until it holds, failing after [`LIMIT`].
    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {LIMIT:?}"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Starts the flusher on `fake`; returns the shared pieces and the stop token.
    fn start(
        fake: Fake,
        bounds: Bounds,
    ) -> (
        Arc<Coalescer>,
        Arc<Fake>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let coalescer = Arc::new(Coalescer::new(bounds));
        let fake = Arc::new(fake);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (coalescer, fake, cancel) = (coalescer.clone(), fake.clone(), cancel.clone());
            async move { run(&coalescer, &*fake, &cancel).await }
        });
        (coalescer, fake, cancel, task)
    }

    fn submit(
        coalescer: &Arc<Coalescer>,
        fake: &Arc<Fake>,
        r: Request,
    ) -> tokio::task::JoinHandle<Answer> {
        let (coalescer, fake) = (coalescer.clone(), fake.clone());
        tokio::spawn(async move { coalescer.submit(&*fake, r, LIMIT).await })
    }

    /// Holds the first call, queues `later` behind it, then lets every call through.
    async fn behind_a_held_call(
        bounds: Bounds,
        later: Vec<Request>,
    ) -> (Arc<Fake>, Answer, Vec<Answer>) {
        let (coalescer, fake, cancel, task) = start(
            Fake {
                hold: true,
                ..Fake::default()
            },
            bounds,
        );
        let first = submit(&coalescer, &fake, request("first", &["first"]));
        until("the first call is in flight", || {
            lock(&fake.calls).len() == 1
        })
        .await;
        let expected: usize = later.iter().map(|r| r.items.len()).sum();
        let mut handles = Vec::new();
        for r in later {
            handles.push(submit(&coalescer, &fake, r));
            // Queued in this order: each is in the queue before the next is submitted.
            let queued = handles.len();
            until("queued", || lock(&coalescer.queue).pending.len() == queued).await;
        }
        assert_eq!(coalescer.queued(), expected);
        fake.release.add_permits(1024);
        let first = tokio::time::timeout(LIMIT, first)
            .await
            .expect("answered")
            .expect("task");
        let mut answers = Vec::new();
        for h in handles {
            answers.push(
                tokio::time::timeout(LIMIT, h)
                    .await
                    .expect("answered")
                    .expect("task"),
            );
        }
        cancel.cancel();
        task.await.expect("flusher");
        (fake, first, answers)
    }

    fn offsets(answer: &Answer) -> Vec<u64> {
        match answer {
            Ok(published) => published.iter().map(|p| p.position.offset).collect(),
            Err(e) => panic!("failed: {e:?}"),
        }
    }

    #[tokio::test]
    async fn a_lone_publish_goes_at_once_in_its_own_call() {
        let (coalescer, fake, cancel, task) = start(Fake::default(), bounds(256, 1 << 20));
        let answer =
            tokio::time::timeout(LIMIT, coalescer.submit(&*fake, request("g", &["a"]), LIMIT))
                .await
                .expect("answered");
        assert_eq!(offsets(&answer), vec![1]);
        assert_eq!(*lock(&fake.calls), vec![vec!["a".to_owned()]]);
        cancel.cancel();
        task.await.expect("flusher");
    }

    /// With nothing queued or in flight the publisher makes its own call: no flusher task
    /// is involved (none runs here).
    #[tokio::test]
    async fn an_idle_path_publishes_directly_without_the_flusher() {
        let coalescer = Coalescer::new(bounds(256, 1 << 20));
        let fake = Fake::default();
        for expected in 1..=3 {
            let answer =
                tokio::time::timeout(LIMIT, coalescer.submit(&fake, request("g", &["a"]), LIMIT))
                    .await
                    .expect("answered without a flusher");
            assert_eq!(offsets(&answer), vec![expected]);
        }
        assert_eq!(coalescer.stats(), (3, 1));
    }

    #[tokio::test]
    async fn publishes_queued_behind_a_call_go_out_together_within_the_item_bound() {
        let later = (0..10).map(|i| request("g", &[&format!("m{i}")])).collect();
        let (fake, first, answers) = behind_a_held_call(bounds(4, 1 << 20), later).await;
        assert_eq!(offsets(&first), vec![1]);
        let calls = lock(&fake.calls).clone();
        let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 4, 4, 2], "{calls:?}");
        // Each publisher has its own position, in queue order, contiguous.
        let got: Vec<u64> = answers.iter().flat_map(offsets).collect();
        assert_eq!(got, (1..=10).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn the_byte_bound_splits_batches_and_a_larger_request_goes_alone() {
        let later = vec![
            request("g", &["aaaa"]),
            request("g", &["bbbb"]),
            request("g", &["cccc"]),
            request("g", &["dddddddddddd"]),
            request("g", &["e"]),
        ];
        let (fake, _, answers) = behind_a_held_call(bounds(256, 8), later).await;
        let calls = lock(&fake.calls).clone();
        let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 2, 1, 1, 1], "{calls:?}");
        assert!(answers.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn a_refused_message_fails_only_its_own_request_from_that_message_on() {
        let later = vec![
            request("g", &["ok1"]),
            request("h", &["x1", "bad", "x3"]),
            request("g", &["ok2"]),
        ];
        let (fake, _, answers) = behind_a_held_call(bounds(256, 1 << 20), later).await;
        assert_eq!(
            lock(&fake.calls).len(),
            2,
            "one batch behind the first call"
        );
        assert_eq!(offsets(&answers[0]), vec![1]);
        match &answers[1] {
            Err((1, LayerError::Unavailable(why))) => assert_eq!(why, "refused"),
            other => panic!("{other:?}"),
        }
        assert_eq!(offsets(&answers[2]), vec![2]);
    }

    #[tokio::test]
    async fn a_failed_call_fails_only_the_requests_of_its_batch() {
        let later = vec![
            request("g", &["a"]),
            request("g", &["down"]),
            request("g", &["b"]),
            request("g", &["c"]),
        ];
        let (fake, _, answers) = behind_a_held_call(bounds(2, 1 << 20), later).await;
        let sizes: Vec<usize> = lock(&fake.calls).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 2, 2]);
        assert!(matches!(answers[0], Err((0, LayerError::Unavailable(_)))));
        assert!(matches!(answers[1], Err((0, LayerError::Unavailable(_)))));
        assert_eq!(offsets(&answers[2]), vec![1]);
        assert_eq!(offsets(&answers[3]), vec![2]);
    }

    #[tokio::test]
    async fn partitions_never_share_a_call_and_keep_their_order() {
        let (coalescer, fake, cancel, task) = start(
            Fake {
                hold: true,
                partitioned: true,
                ..Fake::default()
            },
            bounds(256, 1 << 20),
        );
        let first = submit(&coalescer, &fake, request("first", &["first"]));
        until("in flight", || lock(&fake.calls).len() == 1).await;
        let mut handles = Vec::new();
        for (g, t) in [
            ("a", "a1"),
            ("b", "b1"),
            ("a", "a2"),
            ("b", "b2"),
            ("a", "a3"),
        ] {
            handles.push(submit(&coalescer, &fake, request(g, &[t])));
            let n = handles.len();
            until("queued", || lock(&coalescer.queue).pending.len() == n).await;
        }
        fake.release.add_permits(1024);
        tokio::time::timeout(LIMIT, first)
            .await
            .expect("answered")
            .expect("task")
            .expect("ok");
        for h in handles {
            tokio::time::timeout(LIMIT, h)
                .await
                .expect("answered")
                .expect("task")
                .expect("ok");
        }
        cancel.cancel();
        task.await.expect("flusher");
        assert_eq!(
            *lock(&fake.calls),
            vec![vec!["first"], vec!["a1", "a2", "a3"], vec!["b1", "b2"]]
        );
    }

    #[tokio::test]
    async fn a_publisher_that_gave_up_before_its_call_publishes_nothing() {
        let (coalescer, fake, cancel, task) = start(
            Fake {
                hold: true,
                ..Fake::default()
            },
            bounds(256, 1 << 20),
        );
        let first = submit(&coalescer, &fake, request("g", &["first"]));
        until("in flight", || lock(&fake.calls).len() == 1).await;
        let gone = submit(&coalescer, &fake, request("g", &["gone"]));
        until("queued", || coalescer.queued() == 1).await;
        gone.abort();
        assert!(gone.await.is_err(), "aborted");
        let kept = submit(&coalescer, &fake, request("g", &["kept"]));
        until("queued", || lock(&coalescer.queue).pending.len() == 2).await;
        fake.release.add_permits(1024);
        tokio::time::timeout(LIMIT, first)
            .await
            .expect("answered")
            .expect("task")
            .expect("ok");
        let kept = tokio::time::timeout(LIMIT, kept)
            .await
            .expect("answered")
            .expect("task");
        assert_eq!(offsets(&kept), vec![2]);
        assert_eq!(*lock(&fake.calls), vec![vec!["first"], vec!["kept"]]);
        cancel.cancel();
        task.await.expect("flusher");
    }

    #[tokio::test]
    async fn stopping_the_flusher_answers_the_queued_closed_and_calls_made_as_they_return() {
        let (coalescer, fake, cancel, task) = start(
            Fake {
                hold: true,
                ..Fake::default()
            },
            bounds(256, 1 << 20),
        );
        let in_flight = submit(&coalescer, &fake, request("g", &["a"]));
        until("in flight", || lock(&fake.calls).len() == 1).await;
        let queued = submit(&coalescer, &fake, request("g", &["b"]));
        until("queued", || coalescer.queued() == 1).await;
        cancel.cancel();
        task.await.expect("flusher");
        let queued = tokio::time::timeout(LIMIT, queued)
            .await
            .expect("answered")
            .expect("task");
        assert!(matches!(queued, Err((0, LayerError::Closed))), "{queued:?}");
        // The call already made (its publisher's own) is answered when it returns.
        fake.release.add_permits(1);
        let sent = tokio::time::timeout(LIMIT, in_flight)
            .await
            .expect("answered")
            .expect("task");
        assert_eq!(offsets(&sent), vec![1]);
        let late = coalescer.submit(&*fake, request("g", &["c"]), LIMIT).await;
        assert!(matches!(late, Err((0, LayerError::Closed))), "{late:?}");
    }
}
