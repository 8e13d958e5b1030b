//! `Hub`: node-local membership (group → member connections) and local fan-out.
//!
//! Only the hub knows who is a member of what; the layer only moves messages between
//! nodes. Membership is split into shards by group hash, each behind its own lock, and a
//! group's members sit in a copy-on-write list with an index by connection id: a join or
//! leave is O(1) and locks one shard, and a delivery takes a snapshot of the list (a
//! refcount) and releases the lock before it encodes anything or touches a socket.
//! Each message is encoded into its frame once per wire mode and the same `Bytes` goes
//! to every member's bounded outbox ([`Outbox`]): a refcount increment per recipient, no
//! copy. Members of small groups with an idle outbox get the frame written to their
//! socket directly (see [`Outbox::offer`]).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use herald_core::{GroupName, Message};

use crate::metrics::Metrics;
use crate::outbox::{Delivered, Mode, OutFrame, Outbox, Write, epoch_tag};
use crate::protocol::{encode_plain, encode_sse, encode_v1};

/// Identifies one WebSocket connection on this node.
pub type ConnId = u64;

/// One connection in one group.
#[derive(Clone, Debug)]
pub struct Member {
    id: ConnId,
    /// The group's index in the connection's own list, echoed in every frame for it.
    slot: u8,
    outbox: Outbox,
}

impl Member {
    /// Whether the member speaks plain mode: it never gets stream-reset notices.
    pub fn is_plain(&self) -> bool {
        self.outbox.shared().mode() == Mode::Plain
    }
}

/// What a join changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined {
    /// The group had no members here before: the node must subscribe to it.
    First,
    /// The group already had members here.
    Existing,
}

/// What a leave changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    /// That was the last member here: the node should unsubscribe.
    Last,
    /// Other members remain.
    Remaining,
    /// The connection was not a member.
    NotMember,
}

/// Largest local group whose frames [`Hub`] writes inline (see [`Outbox::offer`]).
pub const INLINE_MAX_MEMBERS: usize = 8;

/// Shards of the membership map: enough that joins and deliveries of different groups
/// rarely meet on one lock.
const SHARDS: usize = 64;

/// A group's members: the list deliveries snapshot, and where each connection sits in it.
#[derive(Debug, Default)]
struct Members {
    /// Copy-on-write: a delivery holding a snapshot makes the next join or leave copy it.
    list: Arc<Vec<Member>>,
    index: HashMap<ConnId, usize>,
}

type Shard = HashMap<GroupName, Members>;

/// Node-local membership and fan-out.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[RwLock<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    metrics: Arc<Metrics>,
}

/// A group's frames for one run of messages, encoded on first use per wire mode.
#[derive(Debug)]
pub struct Encoded<'r> {
    run: &'r [Message],
    plain: Option<Vec<Bytes>>,
    v1: Option<Vec<Bytes>>,
    sse: Option<Vec<Bytes>>,
    epochs: Vec<u32>,
}

impl<'r> Encoded<'r> {
    /// `run`: consecutive messages of one group, in order.
    pub fn new(run: &'r [Message]) -> Self {
        Self {
            run,
            plain: None,
            v1: None,
            sse: None,
            epochs: run.iter().map(|m| epoch_tag(m.epoch.as_str())).collect(),
        }
    }
}

impl Hub {
    /// An empty hub reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            metrics,
        }
    }

    fn shard(&self, group: &GroupName) -> &RwLock<Shard> {
        // The modulo keeps the index in range whatever the hash.
        let i = (self.hasher.hash_one(group.as_str()) as usize) % self.shards.len();
        &self.shards[i]
    }

    // The maps are only touched in short, non-awaiting sections; a panic inside one is a
    // bug that already lost its thread, and continuing with the data is the best option.
    fn read(&self, group: &GroupName) -> RwLockReadGuard<'_, Shard> {
        self.shard(group).read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, group: &GroupName) -> RwLockWriteGuard<'_, Shard> {
        self.shard(group).write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds connection `id` to `group`; `slot` is the group's index in the connection's
    /// own list, echoed in every frame for it. Joining twice replaces the first entry.
    pub fn join(&self, group: &GroupName, id: ConnId, slot: u8, outbox: &Outbox) -> Joined {
        let mut shard = self.write(group);
        let members = shard.entry(group.clone()).or_default();
        let first = members.list.is_empty();
        let member = Member {
            id,
            slot,
            outbox: outbox.clone(),
        };
        let list = Arc::make_mut(&mut members.list);
        match members.index.get(&id) {
            Some(&i) => list[i] = member,
            None => {
                members.index.insert(id, list.len());
                list.push(member);
            }
        }
        if first {
            self.metrics.groups.fetch_add(1, Ordering::Relaxed);
            Joined::First
        } else {
            Joined::Existing
        }
    }

    /// Removes connection `id` from `group`, in constant time.
    pub fn leave(&self, group: &GroupName, id: ConnId) -> Left {
        let mut shard = self.write(group);
        let Some(members) = shard.get_mut(group) else {
            return Left::NotMember;
        };
        let Some(i) = members.index.remove(&id) else {
            return Left::NotMember;
        };
        let list = Arc::make_mut(&mut members.list);
        list.swap_remove(i);
        if let Some(moved) = list.get(i) {
            members.index.insert(moved.id, i);
        }
        if list.is_empty() {
            shard.remove(group);
            self.metrics.groups.fetch_sub(1, Ordering::Relaxed);
            Left::Last
        } else {
            Left::Remaining
        }
    }

    /// Whether `group` has members on this node.
    pub fn has_members(&self, group: &GroupName) -> bool {
        self.read(group).contains_key(group)
    }

    /// Number of local members of `group`.
    pub fn member_count(&self, group: &GroupName) -> usize {
        self.read(group).get(group).map_or(0, |m| m.list.len())
    }

    /// The members of `group` right now; the lock is released on return, so whatever is
    /// done with the snapshot holds up no join or leave.
    pub fn snapshot(&self, group: &GroupName) -> Option<Arc<Vec<Member>>> {
        self.read(group).get(group).map(|m| m.list.clone())
    }

    /// Queues `message` to every local member of its group, encoding its frame once per
    /// wire mode in use.
    pub fn deliver(&self, message: &Message) -> Delivered {
        self.deliver_all(std::slice::from_ref(message))
    }

    /// Like [`Hub::deliver`] for several messages. Consecutive messages for the same
    /// group are delivered member by member: each member's outbox is locked once for the
    /// whole run instead of once per message. (The delivery pump does the same in slices,
    /// yielding between them; see `pump.rs`.)
    pub fn deliver_all(&self, messages: &[Message]) -> Delivered {
        let mut total = Delivered::default();
        for run in messages.chunk_by(|a, b| a.group == b.group) {
            if let Some(members) = self.snapshot(&run[0].group) {
                let mut encoded = Encoded::new(run);
                let mut write = Write::for_group(members.len());
                let one = self.deliver_to(&members, &mut encoded, &mut write);
                total.sent += one.sent;
                total.dropped += one.dropped;
            }
        }
        self.delivered(messages, total);
        total
    }

    /// Delivers a run (see [`Encoded`]) to `members` (a snapshot, or a slice of one).
    /// `write` says how the frames may reach the sockets ([`Write::for_group`]).
    pub fn deliver_to(
        &self,
        members: &[Member],
        encoded: &mut Encoded<'_>,
        write: &mut Write<'_>,
    ) -> Delivered {
        let mut delivered = Delivered::default();
        let Encoded {
            run,
            plain,
            v1,
            sse,
            epochs,
        } = encoded;
        for member in members {
            let frames = match member.outbox.shared().mode() {
                Mode::Plain => plain.get_or_insert_with(|| run.iter().map(encode_plain).collect()),
                Mode::V1 => v1.get_or_insert_with(|| run.iter().map(encode_v1).collect()),
                Mode::Sse => sse.get_or_insert_with(|| run.iter().map(encode_sse).collect()),
            };
            let outs = frames.iter().zip(run.iter()).zip(epochs.iter()).map(
                |((frame, message), &epoch)| OutFrame {
                    frame: frame.clone(),
                    slot: member.slot,
                    offset: message.offset,
                    epoch,
                },
            );
            let one = member
                .outbox
                .offer_all(outs, run.len(), &self.metrics, write.reborrow());
            delivered.sent += one.sent;
            delivered.dropped += one.dropped;
        }
        delivered
    }

    /// Counts a delivered batch: frames, drops, and each message's delivery latency.
    pub fn delivered(&self, messages: &[Message], total: Delivered) {
        let now = std::time::Instant::now();
        for message in messages {
            if let Some(at) = message.received_at {
                let latency = &self.metrics.delivery_seconds.0;
                latency.observe_duration(now.saturating_duration_since(at));
            }
        }
        Metrics::add(&self.metrics.frames_delivered, total.sent as u64);
        Metrics::add(&self.metrics.frames_dropped, total.dropped as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxReceiver;
    use herald_core::{Epoch, Payload};

    fn message(group: &GroupName, offset: u64) -> Message {
        Message {
            group: group.clone(),
            offset,
            epoch: Epoch::new("e"),
            payload: Payload::text("hi"),
            received_at: None,
        }
    }

    #[test]
    fn join_leave_edges() {
        let hub = Hub::new(Arc::default());
        let g = GroupName::new("g").unwrap();
        let (a, _ra) = Outbox::new(Mode::Plain, 4, 1 << 20);
        let (b, _rb) = Outbox::new(Mode::Plain, 4, 1 << 20);
        assert_eq!(hub.join(&g, 1, 0, &a), Joined::First);
        assert_eq!(hub.join(&g, 2, 0, &b), Joined::Existing);
        assert_eq!(hub.leave(&g, 3), Left::NotMember);
        assert_eq!(hub.leave(&g, 1), Left::Remaining);
        assert_eq!(hub.leave(&g, 2), Left::Last);
        assert_eq!(hub.leave(&g, 2), Left::NotMember);
        assert!(!hub.has_members(&g));
    }

    #[test]
    fn one_encoding_shared_by_all_recipients() {
        let hub = Hub::new(Arc::default());
        let g = GroupName::new("g").unwrap();
        let (a, mut ra) = Outbox::new(Mode::Plain, 4, 1 << 20);
        let (b, mut rb) = Outbox::new(Mode::Plain, 4, 1 << 20);
        hub.join(&g, 1, 0, &a);
        hub.join(&g, 2, 0, &b);
        assert_eq!(
            hub.deliver(&message(&g, 1)),
            Delivered {
                sent: 2,
                dropped: 0
            }
        );
        let fa = ra.try_recv().unwrap().frame;
        let fb = rb.try_recv().unwrap().frame;
        assert_eq!(fa.as_ptr(), fb.as_ptr(), "both recipients share one buffer");
        assert_eq!(&fa[..], b"\x81\x02hi");
    }

    #[test]
    fn overflow_kicks_with_4001() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(metrics.clone());
        let g = GroupName::new("g").unwrap();
        let (a, _ra) = Outbox::new(Mode::Plain, 2, 1 << 20);
        hub.join(&g, 1, 0, &a);
        for i in 1..=3 {
            hub.deliver(&message(&g, i));
        }
        assert_eq!(a.shared().close_code(), Some(4001));
        assert_eq!(metrics.outbox_overflows.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.frames_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn runs_keep_order_per_member_and_an_overflow_drops_the_rest_of_the_run() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(metrics.clone());
        let g = GroupName::new("g").unwrap();
        let h = GroupName::new("h").unwrap();
        let (a, mut ra) = Outbox::new(Mode::Plain, 3, 1 << 20);
        let (b, mut rb) = Outbox::new(Mode::Plain, 100, 1 << 20);
        let (c, mut rc) = Outbox::new(Mode::Plain, 100, 1 << 20);
        hub.join(&g, 1, 0, &a);
        hub.join(&g, 2, 0, &b);
        hub.join(&h, 3, 0, &c);
        let text = |group: &GroupName, offset: u64, body: &str| Message {
            payload: Payload::text(body),
            ..message(group, offset)
        };
        // Runs: [g1 g2] [h1] [g3 g4 g5].
        let batch = [
            text(&g, 1, "g1"),
            text(&g, 2, "g2"),
            text(&h, 1, "h1"),
            text(&g, 3, "g3"),
            text(&g, 4, "g4"),
            text(&g, 5, "g5"),
        ];
        assert_eq!(
            hub.deliver_all(&batch),
            Delivered {
                sent: 3 + 5 + 1,
                dropped: 2
            }
        );
        let drain = |rx: &mut OutboxReceiver| {
            let mut got = Vec::new();
            while let Ok(f) = rx.try_recv() {
                got.push((f.offset, f.frame[2..].to_vec()));
            }
            got
        };
        let g_all: Vec<(u64, Vec<u8>)> =
            (1..=5).map(|i| (i, format!("g{i}").into_bytes())).collect();
        assert_eq!(drain(&mut rb), g_all);
        assert_eq!(
            drain(&mut ra),
            g_all[..3].to_vec(),
            "a takes 3, then overflows"
        );
        assert_eq!(a.shared().close_code(), Some(4001));
        assert_eq!(drain(&mut rc), vec![(1, b"h1".to_vec())]);
        assert_eq!(metrics.outbox_overflows.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.frames_dropped.load(Ordering::Relaxed), 2);
    }

    /// Offsets a receiver holds, in order.
    fn offsets(rx: &mut OutboxReceiver) -> Vec<u64> {
        let mut got = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            got.push(frame.offset);
        }
        got
    }

    #[derive(Clone, Debug)]
    enum Op {
        Join(u8),
        Leave(u8),
        Deliver,
    }

    use proptest::prelude::*;

    proptest::proptest! {
        /// Any sequence of joins, leaves and deliveries: each member gets exactly the
        /// messages delivered while it was a member, once each, in order; the hub's
        /// count and the shard index agree with a model.
        #[test]
        fn membership_follows_a_model(ops in proptest::collection::vec(
            proptest::prop_oneof![
                (0u8..12).prop_map(Op::Join),
                (0u8..12).prop_map(Op::Leave),
                proptest::strategy::Just(Op::Deliver),
            ],
            0..200,
        )) {
            let hub = Hub::new(Arc::default());
            let g = GroupName::new("g").unwrap();
            let mut boxes: Vec<_> = (0..12).map(|_| Outbox::new(Mode::Plain, 10_000, 1 << 30)).collect();
            let mut member = [false; 12];
            let mut expected: Vec<Vec<u64>> = vec![Vec::new(); 12];
            let mut offset = 0;
            for op in ops {
                match op {
                    Op::Join(i) => {
                        let was_empty = !member.iter().any(|m| *m);
                        let joined = hub.join(&g, u64::from(i), 0, &boxes[i as usize].0);
                        prop_assert_eq!(joined == Joined::First, was_empty);
                        member[i as usize] = true;
                    }
                    Op::Leave(i) => {
                        let left = hub.leave(&g, u64::from(i));
                        let was = member[i as usize];
                        member[i as usize] = false;
                        let now_empty = !member.iter().any(|m| *m);
                        let want = match (was, now_empty) {
                            (false, _) => Left::NotMember,
                            (true, true) => Left::Last,
                            (true, false) => Left::Remaining,
                        };
                        prop_assert_eq!(left, want);
                    }
                    Op::Deliver => {
                        offset += 1;
                        hub.deliver(&message(&g, offset));
                        for (i, m) in member.iter().enumerate() {
                            if *m {
                                expected[i].push(offset);
                            }
                        }
                    }
                }
                prop_assert_eq!(hub.member_count(&g), member.iter().filter(|m| **m).count());
            }
            for (i, (_, rx)) in boxes.iter_mut().enumerate() {
                prop_assert_eq!(offsets(rx), expected[i].clone(), "member {}", i);
            }
        }
    }

    /// Joins and leaves from several threads while another delivers: members that stay
    /// get every message once, in order; members that come and go get an increasing
    /// subsequence (never a duplicate, never out of order).
    #[test]
    fn concurrent_joins_leaves_and_deliveries() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let g = GroupName::new("g").unwrap();
        let stayers: Vec<_> = (0..20)
            .map(|i| {
                let (outbox, rx) = Outbox::new(Mode::Plain, 100_000, 1 << 30);
                hub.join(&g, i, 0, &outbox);
                rx
            })
            .collect();
        const MESSAGES: u64 = 3000;
        let churners: Vec<_> = (0..4u64)
            .map(|t| {
                let hub = hub.clone();
                let g = g.clone();
                std::thread::spawn(move || {
                    let mut receivers = Vec::new();
                    for round in 0..300u64 {
                        let id = 1000 + t * 1000 + round;
                        let (outbox, rx) = Outbox::new(Mode::Plain, 100_000, 1 << 30);
                        hub.join(&g, id, 0, &outbox);
                        std::thread::yield_now();
                        assert_eq!(hub.leave(&g, id), Left::Remaining);
                        receivers.push(rx);
                    }
                    receivers
                })
            })
            .collect();
        for offset in 1..=MESSAGES {
            hub.deliver(&message(&g, offset));
        }
        for churner in churners {
            for mut rx in churner.join().unwrap() {
                let got = offsets(&mut rx);
                assert!(got.windows(2).all(|w| w[0] < w[1]), "increasing: {got:?}");
            }
        }
        for mut rx in stayers {
            assert_eq!(offsets(&mut rx), (1..=MESSAGES).collect::<Vec<_>>());
        }
        assert_eq!(hub.member_count(&g), 20);
    }

    #[test]
    fn leaving_a_large_group_is_constant_time_and_keeps_the_index_true() {
        let hub = Hub::new(Arc::default());
        let g = GroupName::new("g").unwrap();
        let boxes: Vec<_> = (0..10_000u64)
            .map(|i| {
                let (outbox, rx) = Outbox::new(Mode::Plain, 4, 1 << 20);
                hub.join(&g, i, 0, &outbox);
                rx
            })
            .collect();
        // Leave in an order that moves entries around (swap_remove), then check that
        // each remaining id still leaves exactly once.
        for i in (0..10_000u64).step_by(3) {
            assert_ne!(hub.leave(&g, i), Left::NotMember);
        }
        for i in (0..10_000u64).filter(|i| i % 3 != 0) {
            assert_ne!(hub.leave(&g, i), Left::NotMember, "{i}");
            assert_eq!(hub.leave(&g, i), Left::NotMember, "{i} twice");
        }
        assert!(!hub.has_members(&g));
        drop(boxes);
    }
}
