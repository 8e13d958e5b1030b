//! The delivery pump: the task that moves messages from the layer's `Incoming` into the
//! hub, in order — every message on the Redis layer, and on the memory layer those the
//! publisher did not deliver itself (`direct.rs`). A large fan-out is delivered
//! in slices of [`FANOUT_SLICE`] members with a yield between them, so that joins, leaves
//! and timers waiting on the same worker are never stuck behind it.

use std::sync::Arc;

use herald_core::Incoming;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::direct::Direct;
use crate::hub::{Encoded, Hub};
use crate::metrics::Metrics;
use crate::outbox::{Delivered, Write};

/// Members delivered to between two yields of a large fan-out.
pub const FANOUT_SLICE: usize = 1024;

/// Most messages taken from the layer at once.
const BATCH: usize = 256;

/// Runs until `stop` or the end of `incoming`. With `direct` (the memory layer's direct
/// delivery), every message delivered is counted back to it.
pub(crate) async fn run(
    mut incoming: Incoming,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    admin: Option<Arc<Admin>>,
    direct: Option<Arc<Direct>>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => break,
            n = incoming.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            break;
        }
        Metrics::add(&metrics.messages_received, n as u64);
        deliver(&hub, &batch).await;
        if let Some(admin) = &admin {
            admin.count(&batch);
        }
        if let Some(direct) = &direct {
            direct.pumped(n);
        }
        batch.clear();
    }
}

/// Delivers `batch` run by run (consecutive messages of one group), each to a snapshot
/// of the group's members, in slices. A stream-reset notice (offset 0, see
/// `herald_redis::reset_notice`) is a run of its own and goes to `herald.v1` and SSE
/// members only: its epoch closes their streams with 4400; plain mode has no streams.
pub(crate) async fn deliver(hub: &Hub, batch: &[herald_core::Message]) -> Delivered {
    let mut total = Delivered::default();
    for run in batch.chunk_by(|a, b| a.group == b.group && (a.offset == 0) == (b.offset == 0)) {
        let Some(mut members) = hub.snapshot(&run[0].group) else {
            continue;
        };
        if run[0].offset == 0 {
            let streams: Vec<_> = members.iter().filter(|m| !m.is_plain()).cloned().collect();
            members = Arc::new(streams);
        }
        let mut write = Write::for_group(members.len());
        let mut encoded = Encoded::new(run);
        let sliced = members.len() > FANOUT_SLICE;
        for slice in members.chunks(FANOUT_SLICE) {
            let one = hub.deliver_to(slice, &mut encoded, &mut write);
            total.sent += one.sent;
            total.dropped += one.dropped;
            if sliced {
                tokio::task::yield_now().await;
            }
        }
    }
    hub.delivered(batch, total);
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Mode, Outbox};
    use herald_core::{Epoch, GroupName, Message, Payload};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stream-reset notice (offset 0) reaches `herald.v1` and SSE members, never a
    /// plain-mode one (whose clients would take it for a message).
    #[tokio::test]
    async fn reset_notices_skip_plain_members() {
        let hub = Hub::new(Arc::default());
        let g = GroupName::new("g").unwrap();
        let mut receivers = Vec::new();
        for (id, mode) in [Mode::Plain, Mode::V1, Mode::Sse].into_iter().enumerate() {
            let (outbox, rx) = Outbox::new(mode, 16, 1 << 20);
            hub.join(&g, id as u64, 0, &outbox);
            receivers.push(rx);
        }
        let at = |offset| Message {
            group: g.clone(),
            offset,
            epoch: Epoch::new("e"),
            payload: Payload::text("x"),
            received_at: None,
        };
        deliver(&hub, &[at(1), at(0), at(2)]).await;
        let offsets = |rx: &mut crate::outbox::OutboxReceiver| {
            std::iter::from_fn(|| rx.try_recv().ok().map(|f| f.offset)).collect::<Vec<_>>()
        };
        assert_eq!(offsets(&mut receivers[0]), vec![1, 2], "plain");
        assert_eq!(offsets(&mut receivers[1]), vec![1, 0, 2], "herald.v1");
        assert_eq!(offsets(&mut receivers[2]), vec![1, 0, 2], "sse");
    }

    /// On one thread, a join waiting behind a large fan-out runs between its slices, not
    /// after the whole fan-out.
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_fan_out_yields_to_joins_between_slices() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let g = GroupName::new("big").unwrap();
        let mut receivers = Vec::new();
        for i in 0..(FANOUT_SLICE * 4) as u64 {
            let (outbox, rx) = Outbox::new(Mode::Plain, 16, 1 << 20);
            hub.join(&g, i, 0, &outbox);
            receivers.push(rx);
        }
        let message = Message {
            group: g.clone(),
            offset: 1,
            epoch: Epoch::new("e"),
            payload: Payload::text("x"),
            received_at: None,
        };
        let sliced = Arc::new(AtomicUsize::new(0));
        let fan_out = {
            let hub = hub.clone();
            let sliced = sliced.clone();
            tokio::spawn(async move {
                let delivered = deliver(&hub, std::slice::from_ref(&message)).await;
                sliced.store(delivered.sent, Ordering::SeqCst);
            })
        };
        let join = {
            let hub = hub.clone();
            let g = g.clone();
            let sliced = sliced.clone();
            tokio::spawn(async move {
                let (outbox, _rx) = Outbox::new(Mode::Plain, 16, 1 << 20);
                hub.join(&g, u64::MAX, 0, &outbox);
                // Still 0: the fan-out has not finished when the join ran.
                sliced.load(Ordering::SeqCst)
            })
        };
        // The fan-out task starts first (spawn order on one thread); the join runs at its
        // first yield.
        let seen_by_join = join.await.unwrap();
        fan_out.await.unwrap();
        assert_eq!(seen_by_join, 0, "the join ran during the fan-out");
        assert_eq!(
            sliced.load(Ordering::SeqCst),
            FANOUT_SLICE * 4,
            "everyone got it"
        );
        for mut rx in receivers {
            assert_eq!(rx.try_recv().map(|f| f.offset), Ok(1));
        }
    }
}
