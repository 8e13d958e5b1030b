//! Direct delivery on the memory layer: a message published on this node fans out from
//! the publishing request itself, under the layer's offset lock, instead of waking the
//! pump. That saves a task wake-up per message, and a publisher that outruns delivery
//! waits for it instead of filling `Incoming` (whose queue would become everyone's
//! latency).
//!
//! Under the lock the frames are only queued, in order; the socket writes (of idle
//! connections, see [`Write::Later`]) happen once the lock is released.
//!
//! Only small groups (≤ [`INLINE_MAX_MEMBERS`] local members, such as one user's tabs) go
//! this way: a large fan-out goes through the pump, which delivers in slices and yields
//! between them. Order per group holds because nothing is delivered directly while any
//! message handed to the pump is still undelivered ([`Direct::queued`]): the pump counts
//! its deliveries back with [`Direct::pumped`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use herald_core::{DirectSink, Message};

use crate::admin::Admin;
use crate::hub::{Encoded, Hub, INLINE_MAX_MEMBERS};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Write};

/// Capacity of the outbox list kept between publishes (see [`DirectSink::flush`]).
const KEEP_LATER: usize = 64;

/// The memory layer's [`DirectSink`]: this node's hub.
#[derive(Debug)]
pub(crate) struct Direct {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    admin: Option<Arc<Admin>>,
    /// Messages given back for the pump and not yet delivered by it.
    queued: AtomicUsize,
    /// Outboxes with frames queued under the layer's lock for [`DirectSink::flush`] to
    /// write (see [`Write::Later`]). At most the members of the messages of one publish
    /// call per publisher between two flushes.
    later: Mutex<Vec<Outbox>>,
}

impl Direct {
    pub(crate) fn new(hub: Arc<Hub>, metrics: Arc<Metrics>, admin: Option<Arc<Admin>>) -> Self {
        Self {
            hub,
            metrics,
            admin,
            queued: AtomicUsize::new(0),
            later: Mutex::new(Vec::new()),
        }
    }

    // Held for a push or a swap only; a poisoned lock still holds a usable list.
    fn later(&self) -> std::sync::MutexGuard<'_, Vec<Outbox>> {
        self.later.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pump delivered `n` of the messages given back to it.
    pub(crate) fn pumped(&self, n: usize) {
        // Never below zero, whatever a caller miscounts.
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
    }
}

impl DirectSink for Direct {
    fn offer(&self, message: Message) -> Option<Message> {
        // `Acquire` pairs with the pump's decrement, made once its deliveries are done: at
        // zero, every earlier message is in its members' outboxes already.
        if self.queued.load(Ordering::Acquire) == 0 {
            let members = self.hub.snapshot(&message.group);
            if members
                .as_ref()
                .is_none_or(|m| m.len() <= INLINE_MAX_MEMBERS)
            {
                let run = std::slice::from_ref(&message);
                let delivered = match &members {
                    Some(members) => {
                        let mut later = self.later();
                        let mut write = Write::Later(&mut later);
                        self.hub
                            .deliver_to(members, &mut Encoded::new(run), &mut write)
                    }
                    None => Default::default(),
                };
                self.hub.delivered(run, delivered);
                Metrics::add(&self.metrics.messages_received, 1);
                if let Some(admin) = &self.admin {
                    admin.count(run);
                }
                return None;
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        Some(message)
    }

    fn flush(&self) {
        // Whoever flushes writes every outbox queued so far, its own or another
        // publisher's: the frames are in their queues in order either way.
        let mut outboxes = std::mem::take(&mut *self.later());
        for outbox in outboxes.drain(..) {
            outbox.flush();
        }
        // The emptied list goes back for the next publish, so that a publish does not
        // allocate one (a burst's large list is dropped instead of kept).
        let mut later = self.later();
        if later.capacity() == 0 && outboxes.capacity() <= KEEP_LATER {
            *later = outboxes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Mode, OutboxReceiver};
    use herald_core::memory::MemoryLayerConfig;
    use herald_core::{GroupName, Layer, MemoryLayer, Payload};
    use tokio_util::sync::CancellationToken;

    fn group(name: &str) -> GroupName {
        GroupName::new(name).unwrap()
    }

    fn offsets(rx: &mut OutboxReceiver) -> Vec<u64> {
        std::iter::from_fn(|| rx.try_recv().ok().map(|f| f.offset)).collect()
    }

    /// A layer with a direct sink into a fresh hub; the pump is not running.
    fn setup() -> (MemoryLayer, herald_core::Incoming, Arc<Hub>, Arc<Direct>) {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let (layer, incoming) = MemoryLayer::new(MemoryLayerConfig::default());
        let direct = Arc::new(Direct::new(hub.clone(), metrics, None));
        assert!(layer.deliver_directly(direct.clone()));
        (layer, incoming, hub, direct)
    }

    fn member(hub: &Hub, g: &GroupName, id: u64) -> OutboxReceiver {
        let (outbox, rx) = Outbox::new(Mode::V1, 10_000, 1 << 30);
        hub.join(g, id, 0, &outbox);
        rx
    }

    /// A small group's message is in its members' outboxes when `publish` returns, with
    /// nothing on `Incoming`; a large group's goes to the pump, and so does everything
    /// after it until the pump counts it delivered.
    #[tokio::test]
    async fn small_groups_are_delivered_by_the_publisher_large_ones_by_the_pump() {
        let (layer, mut incoming, hub, direct) = setup();
        let small = group("small");
        let large = group("large");
        let mut tab = member(&hub, &small, 1);
        let mut crowd: Vec<_> = (0..=INLINE_MAX_MEMBERS as u64)
            .map(|id| member(&hub, &large, 100 + id))
            .collect();
        layer.subscribe(&small).await.unwrap();
        layer.subscribe(&large).await.unwrap();

        layer.publish(&small, Payload::text("a")).await.unwrap();
        assert_eq!(offsets(&mut tab), vec![1], "delivered by the publisher");
        assert!(incoming.try_recv().is_err(), "nothing for the pump");

        layer.publish(&large, Payload::text("b")).await.unwrap();
        layer.publish(&small, Payload::text("c")).await.unwrap();
        assert!(offsets(&mut crowd[0]).is_empty());
        assert!(
            offsets(&mut tab).is_empty(),
            "behind a message in the pump, a small group waits its turn"
        );
        let queued: Vec<_> = std::iter::from_fn(|| incoming.try_recv().ok()).collect();
        assert_eq!(queued.len(), 2);
        crate::pump::deliver(&hub, &queued).await;
        direct.pumped(queued.len());
        assert_eq!(offsets(&mut tab), vec![2]);
        assert!(crowd.iter_mut().all(|rx| offsets(rx) == vec![1]));

        // The pump caught up: the publisher delivers again.
        layer.publish(&small, Payload::text("d")).await.unwrap();
        assert_eq!(offsets(&mut tab), vec![3]);
        assert!(incoming.try_recv().is_err());
    }

    /// Batches take the same path: one lock, every message in order.
    #[tokio::test]
    async fn a_batch_is_delivered_by_the_publisher_in_order() {
        let (layer, mut incoming, hub, _direct) = setup();
        let (a, b) = (group("a"), group("b"));
        let mut ra = member(&hub, &a, 1);
        let mut rb = member(&hub, &b, 2);
        layer.subscribe(&a).await.unwrap();
        layer.subscribe(&b).await.unwrap();
        let items = (0..6)
            .map(|i| {
                (
                    if i % 2 == 0 { a.clone() } else { b.clone() },
                    Payload::text("x"),
                )
            })
            .collect();
        layer.publish_batch(items).await.unwrap();
        assert_eq!(offsets(&mut ra), vec![1, 2, 3]);
        assert_eq!(offsets(&mut rb), vec![1, 2, 3]);
        assert!(incoming.try_recv().is_err());
    }

    /// Publishers on several threads, groups growing past the direct path's size and
    /// shrinking back while they publish, the pump running: every member that stays
    /// gets every message of its group once, in offset order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn order_per_group_holds_while_groups_cross_between_the_two_paths() {
        let (layer, incoming, hub, direct) = setup();
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let pump = tokio::spawn(crate::pump::run(
            incoming,
            hub.clone(),
            metrics,
            None,
            Some(direct.clone()),
            stop.clone(),
        ));
        let groups: Vec<_> = (0..4).map(|i| group(&format!("g{i}"))).collect();
        let mut steady = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            steady.push(member(&hub, g, i as u64));
            layer.subscribe(g).await.unwrap();
        }
        const PER_PUBLISHER: usize = 2_000;
        let publishers: Vec<_> = (0..4)
            .map(|p| {
                let layer = layer.clone();
                let groups = groups.clone();
                tokio::spawn(async move {
                    for i in 0..PER_PUBLISHER {
                        let g = &groups[(i + p) % groups.len()];
                        layer.publish(g, Payload::text("m")).await.unwrap();
                    }
                })
            })
            .collect();
        // Visitors join and leave, taking groups over the inline size and back.
        let churn = {
            let hub = hub.clone();
            let groups = groups.clone();
            tokio::spawn(async move {
                let mut id = 1_000;
                for round in 0..200 {
                    let g = &groups[round % groups.len()];
                    let visitors: Vec<_> = (0..INLINE_MAX_MEMBERS + 2)
                        .map(|_| {
                            id += 1;
                            let (outbox, rx) = Outbox::new(Mode::V1, 100_000, 1 << 30);
                            hub.join(g, id, 0, &outbox);
                            (id, rx)
                        })
                        .collect();
                    tokio::task::yield_now().await;
                    for (id, _rx) in visitors {
                        hub.leave(g, id);
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        for p in publishers {
            p.await.unwrap();
        }
        churn.await.unwrap();
        let total = 4 * PER_PUBLISHER;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got: Vec<Vec<u64>> = vec![Vec::new(); groups.len()];
        while got.iter().map(Vec::len).sum::<usize>() < total {
            for (rx, seen) in steady.iter_mut().zip(&mut got) {
                seen.extend(offsets(rx));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {total} messages within 10 s",
                got.iter().map(Vec::len).sum::<usize>()
            );
            tokio::task::yield_now().await;
        }
        for seen in &got {
            let expected: Vec<u64> = (1..=seen.len() as u64).collect();
            assert_eq!(seen, &expected, "every offset once, in order");
        }
        assert_eq!(got.iter().map(Vec::len).sum::<usize>(), total);
        stop.cancel();
        pump.await.unwrap();
    }
}
