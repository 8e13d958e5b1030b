//! The layer conformance suite: one behaviour check, run against every `Layer` backend.
//!
//! A backend's test calls [`run_all`] with a factory. Each case gets a fresh layer built
//! with the [`HistoryConfig`] the suite passes in (the trimming cases depend on its
//! `max_len`), and group names carry a random per-run prefix, so backends that share
//! state between layers (several Redis layers on one server) do not see each other's
//! groups. Every wait has a deadline: a broken backend fails, it never hangs the run.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{
    GroupName, History, HistoryConfig, Incoming, KeyedItem, Layer, LocalPresence, Message, Payload,
    Position, Presence, Published,
};

/// The history bounds every layer under test is built with.
pub const SUITE_HISTORY: HistoryConfig = HistoryConfig {
    max_len: 8,
    max_age: Duration::from_secs(3600),
    max_bytes: 1 << 20,
};

/// How long one case may take in total.
const CASE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a single expected message may take to arrive.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a single layer call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every case against layers built by `make`, in sequence, and panics (naming the
/// case) at the first failure.
///
/// `make` receives the history bounds to build the layer with ([`SUITE_HISTORY`]) and
/// returns a fresh layer and its [`Incoming`] stream.
pub async fn run_all<L, F, Fut>(make: F)
where
    L: Layer,
    F: Fn(HistoryConfig) -> Fut,
    Fut: Future<Output = (L, Incoming)>,
{
    let run_id = format!("c{:08x}", fastrand::u32(..));
    run_case(
        &make,
        &run_id,
        "publish_after_subscribe_arrives",
        publish_after_subscribe_arrives,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "nothing_after_unsubscribe",
        nothing_after_unsubscribe,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "double_subscribe_delivers_once",
        double_subscribe_delivers_once,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "unsubscribe_unknown_is_ok",
        unsubscribe_unknown_is_ok,
    )
    .await;
    run_case(&make, &run_id, "clones_share_one_bus", clones_share_one_bus).await;
    run_case(&make, &run_id, "per_group_order", per_group_order).await;
    run_case(&make, &run_id, "offsets_per_group", offsets_per_group).await;
    run_case(
        &make,
        &run_id,
        "unsubscribed_publish_kept",
        unsubscribed_publish_kept,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "history_none_is_current",
        history_none_is_current,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "history_since_returns_rest",
        history_since_returns_rest,
    )
    .await;
    run_case(&make, &run_id, "history_from_current", history_from_current).await;
    run_case(
        &make,
        &run_id,
        "history_trimmed_by_bytes",
        history_trimmed_by_bytes,
    )
    .await;
    run_case(&make, &run_id, "history_wrong_epoch", history_wrong_epoch).await;
    run_case(&make, &run_id, "history_trimmed", history_trimmed).await;
    run_case(&make, &run_id, "history_ahead", history_ahead).await;
    run_case(
        &make,
        &run_id,
        "history_creates_epoch",
        history_creates_epoch,
    )
    .await;
    run_case(&make, &run_id, "payloads_survive", payloads_survive).await;
    run_case(
        &make,
        &run_id,
        "batch_positions_in_order",
        batch_positions_in_order,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "idempotent_retry_publishes_once",
        idempotent_retry_publishes_once,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "idempotency_keys_are_per_group",
        idempotency_keys_are_per_group,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "idempotency_window_ends",
        idempotency_window_ends,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "presence_of_an_unknown_group_is_empty",
        presence_of_an_unknown_group_is_empty,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "presence_update_replaces_and_zero_removes",
        presence_update_replaces_and_zero_removes,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "presence_expires_without_refresh",
        presence_expires_without_refresh,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "occupied_once_vacated_once_after_the_delay",
        occupied_once_vacated_once_after_the_delay,
    )
    .await;
    run_case(
        &make,
        &run_id,
        "occupy_within_the_delay_stops_the_vacate_clock",
        occupy_within_the_delay_stops_the_vacate_clock,
    )
    .await;
}

async fn run_case<L, F, Fut, C, CFut>(make: &F, run_id: &str, name: &'static str, case: C)
where
    L: Layer,
    F: Fn(HistoryConfig) -> Fut,
    Fut: Future<Output = (L, Incoming)>,
    C: FnOnce(Ctx<L>) -> CFut,
    CFut: Future<Output = ()>,
{
    eprintln!("conformance: {name}");
    let body = async {
        let (layer, rx) = make(SUITE_HISTORY).await;
        case(Ctx {
            layer,
            rx,
            prefix: format!("{run_id}.{name}"),
        })
        .await;
    };
    if tokio::time::timeout(CASE_TIMEOUT, body).await.is_err() {
        panic!("conformance case {name} took longer than {CASE_TIMEOUT:?}");
    }
}

/// What one case works with.
struct Ctx<L> {
    layer: L,
    rx: Incoming,
    prefix: String,
}

impl<L: Layer> Ctx<L> {
    /// A group name unique to this run and case.
    fn group(&self, name: &str) -> GroupName {
        GroupName::new(&format!("{}.{name}", self.prefix)).expect("suite group names are valid")
    }

    async fn publish(&self, group: &GroupName, payload: Payload) -> Position {
        within(
            &format!("publish to {group}"),
            self.layer.publish(group, payload),
        )
        .await
        .unwrap_or_else(|e| panic!("publish to {group} failed: {e}"))
    }

    async fn subscribe(&self, group: &GroupName) {
        within(&format!("subscribe {group}"), self.layer.subscribe(group))
            .await
            .unwrap_or_else(|e| panic!("subscribe {group} failed: {e}"));
    }

    async fn unsubscribe(&self, group: &GroupName) {
        within(
            &format!("unsubscribe {group}"),
            self.layer.unsubscribe(group),
        )
        .await
        .unwrap_or_else(|e| panic!("unsubscribe {group} failed: {e}"));
    }

    async fn history(&self, group: &GroupName, since: Option<&Position>) -> History {
        within(
            &format!("history of {group}"),
            self.layer.history(group, since),
        )
        .await
        .unwrap_or_else(|e| panic!("history of {group} failed: {e}"))
    }

    async fn presence_update(&self, group: &GroupName, local: &LocalPresence, ttl: Duration) {
        within(
            &format!("presence_update of {group}"),
            self.layer.presence_update(group, local, ttl),
        )
        .await
        .unwrap_or_else(|e| panic!("presence_update of {group} failed: {e}"));
    }

    async fn presence(&self, group: &GroupName) -> Presence {
        within(&format!("presence of {group}"), self.layer.presence(group))
            .await
            .unwrap_or_else(|e| panic!("presence of {group} failed: {e}"))
    }

    /// The next message on `Incoming`, or a panic after [`RECV_TIMEOUT`].
    async fn recv(&mut self) -> Message {
        match tokio::time::timeout(RECV_TIMEOUT, self.rx.recv()).await {
            Ok(Some(message)) => message,
            Ok(None) => panic!("Incoming closed"),
            Err(_) => panic!("no message within {RECV_TIMEOUT:?}"),
        }
    }

    /// Publishes a marker to `sentinel` (which must be subscribed) and asserts that it is
    /// the next message: whatever a wrong layer would have delivered before it shows up.
    async fn expect_nothing_before_sentinel(&mut self, sentinel: &GroupName) {
        let marker = Payload::text(format!("sentinel-{:08x}", fastrand::u32(..)));
        let position = self.publish(sentinel, marker.clone()).await;
        let next = self.recv().await;
        assert_eq!(
            (&next.group, next.offset, &next.payload),
            (sentinel, position.offset, &marker),
            "expected only the sentinel, got another message first"
        );
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no answer within {CALL_TIMEOUT:?}"),
    }
}

fn assert_delivered(message: &Message, group: &GroupName, position: &Position, payload: &Payload) {
    assert_eq!(&message.group, group, "group of the delivered message");
    assert_eq!(
        message.offset, position.offset,
        "offset of the delivered message"
    );
    assert_eq!(
        message.epoch, position.epoch,
        "epoch of the delivered message"
    );
    assert_eq!(
        &message.payload, payload,
        "payload of the delivered message"
    );
}

// ---------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------

async fn publish_after_subscribe_arrives<L: Layer>(mut t: Ctx<L>) {
    let g = t.group("g");
    t.subscribe(&g).await;
    let payload = Payload::text("hello");
    let position = t.publish(&g, payload.clone()).await;
    assert_eq!(
        position.offset, 1,
        "the first message of a group has offset 1"
    );
    let message = t.recv().await;
    assert_delivered(&message, &g, &position, &payload);
}

async fn nothing_after_unsubscribe<L: Layer>(mut t: Ctx<L>) {
    let g = t.group("left");
    let sentinel = t.group("sentinel");
    t.subscribe(&g).await;
    t.subscribe(&sentinel).await;
    let p = t.publish(&g, Payload::text("before")).await;
    let m = t.recv().await;
    assert_eq!((m.group.clone(), m.offset), (g.clone(), p.offset));
    t.unsubscribe(&g).await;
    t.publish(&g, Payload::text("after")).await;
    t.expect_nothing_before_sentinel(&sentinel).await;
}

async fn double_subscribe_delivers_once<L: Layer>(mut t: Ctx<L>) {
    let g = t.group("twice");
    t.subscribe(&g).await;
    t.subscribe(&g).await;
    let first = t.publish(&g, Payload::text("one")).await;
    let second = t.publish(&g, Payload::text("two")).await;
    assert_eq!(t.recv().await.offset, first.offset);
    assert_eq!(t.recv().await.offset, second.offset);
    // A duplicate of either would arrive before this.
    t.expect_nothing_before_sentinel(&g).await;
}

async fn unsubscribe_unknown_is_ok<L: Layer>(t: Ctx<L>) {
    let g = t.group("never");
    t.unsubscribe(&g).await;
    t.unsubscribe(&g).await;
}

async fn clones_share_one_bus<L: Layer>(mut t: Ctx<L>) {
    let g = t.group("shared");
    t.subscribe(&g).await;
    let other = t.layer.clone();
    let payload = Payload::text("from a clone");
    let position = within("publish via clone", other.publish(&g, payload.clone()))
        .await
        .expect("publish via clone");
    let message = t.recv().await;
    assert_delivered(&message, &g, &position, &payload);
}

async fn per_group_order<L: Layer>(mut t: Ctx<L>) {
    const N: u64 = 200;
    let a = t.group("a");
    let b = t.group("b");
    t.subscribe(&a).await;
    t.subscribe(&b).await;
    for i in 1..=N {
        t.publish(&a, Payload::text(format!("a{i}"))).await;
        t.publish(&b, Payload::text(format!("b{i}"))).await;
    }
    let (mut next_a, mut next_b) = (1, 1);
    for _ in 0..2 * N {
        let m = t.recv().await;
        let (next, tag) = if m.group == a {
            (&mut next_a, "a")
        } else if m.group == b {
            (&mut next_b, "b")
        } else {
            panic!("message from an unexpected group {}", m.group)
        };
        assert_eq!(m.offset, *next, "group {tag} out of order");
        assert_eq!(m.payload, Payload::text(format!("{tag}{next}")));
        *next += 1;
    }
}

async fn offsets_per_group<L: Layer>(t: Ctx<L>) {
    let a = t.group("a");
    let b = t.group("b");
    let a1 = t.publish(&a, Payload::text("x")).await;
    let a2 = t.publish(&a, Payload::text("x")).await;
    let b1 = t.publish(&b, Payload::text("x")).await;
    let a3 = t.publish(&a, Payload::text("x")).await;
    let b2 = t.publish(&b, Payload::text("x")).await;
    assert_eq!([a1.offset, a2.offset, a3.offset], [1, 2, 3]);
    assert_eq!([b1.offset, b2.offset], [1, 2]);
    assert!(
        a1.epoch == a2.epoch && a2.epoch == a3.epoch,
        "one epoch per group history"
    );
    assert_eq!(b1.epoch, b2.epoch);
}

async fn unsubscribed_publish_kept<L: Layer>(mut t: Ctx<L>) {
    let g = t.group("quiet");
    let sentinel = t.group("sentinel");
    t.subscribe(&sentinel).await;
    let mut last = None;
    for i in 1..=3 {
        last = Some(t.publish(&g, Payload::text(format!("m{i}"))).await);
    }
    let last = last.expect("three publishes");
    assert_eq!(last.offset, 3);
    // Nobody here subscribed to `g`: nothing may arrive for it.
    t.expect_nothing_before_sentinel(&sentinel).await;
    let start = Position {
        offset: 0,
        epoch: last.epoch.clone(),
    };
    let h = t.history(&g, Some(&start)).await;
    assert!(h.recovered);
    assert_eq!(h.current, last);
    let texts: Vec<_> = h.messages.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(
        texts,
        vec![
            Payload::text("m1"),
            Payload::text("m2"),
            Payload::text("m3")
        ]
    );
}

// ---------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------

async fn history_none_is_current<L: Layer>(t: Ctx<L>) {
    let g = t.group("g");
    t.publish(&g, Payload::text("1")).await;
    let last = t.publish(&g, Payload::text("2")).await;
    let h = t.history(&g, None).await;
    assert_eq!(h.current, last);
    assert!(h.recovered, "a first visit is always recovered");
    assert!(h.messages.is_empty(), "a first visit replays nothing");
}

async fn history_since_returns_rest<L: Layer>(t: Ctx<L>) {
    let g = t.group("g");
    let mut positions = Vec::new();
    for i in 1..=5 {
        positions.push(t.publish(&g, Payload::text(format!("m{i}"))).await);
    }
    let h = t.history(&g, Some(&positions[1])).await;
    assert!(h.recovered);
    assert_eq!(h.current, positions[4]);
    let got: Vec<_> = h
        .messages
        .iter()
        .map(|m| (m.offset, m.payload.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, Payload::text("m3")),
            (4, Payload::text("m4")),
            (5, Payload::text("m5")),
        ]
    );
    for m in &h.messages {
        assert_eq!(m.group, g);
        assert_eq!(m.epoch, positions[0].epoch);
    }
}

async fn history_from_current<L: Layer>(t: Ctx<L>) {
    let g = t.group("g");
    t.publish(&g, Payload::text("1")).await;
    let last = t.publish(&g, Payload::text("2")).await;
    let h = t.history(&g, Some(&last)).await;
    assert!(h.recovered, "nothing was missed");
    assert!(h.messages.is_empty());
    assert_eq!(h.current, last);
}

async fn history_wrong_epoch<L: Layer>(t: Ctx<L>) {
    let g = t.group("g");
    let last = t.publish(&g, Payload::text("1")).await;
    let other = Position {
        offset: 0,
        epoch: herald_core::Epoch::new("not-this-one"),
    };
    let h = t.history(&g, Some(&other)).await;
    assert!(!h.recovered, "another epoch is another history");
    assert!(
        h.messages.is_empty(),
        "an unrecovered answer carries no messages"
    );
    assert_eq!(h.current, last);
}

async fn history_trimmed<L: Layer>(t: Ctx<L>) {
    let g = t.group("g");
    let kept = SUITE_HISTORY.max_len as u64;
    let total = kept + 3;
    let mut last = None;
    for i in 1..=total {
        last = Some(t.publish(&g, Payload::text(format!("m{i}"))).await);
    }
    let last = last.expect("published");
    let at = |offset| Position {
        offset,
        epoch: last.epoch.clone(),
    };
    let h = t.history(&g, Some(&at(1))).await;
    assert!(!h.recovered, "offset 2 was trimmed away");
    assert!(h.messages.is_empty());
    // The oldest message kept is `total - kept + 1`: resuming just before it works.
    let h = t.history(&g, Some(&at(total - kept))).await;
    assert!(h.recovered, "the rest is still kept");
    let offsets: Vec<u64> = h.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (total - kept + 1..=total).collect::<Vec<_>>());
}

/// `SUITE_HISTORY.max_bytes` (1 MiB) holds three 300 kB messages, not four; a message
/// larger than the bound is not kept, and the history cannot be continued past it.
async fn history_trimmed_by_bytes<L: Layer>(t: Ctx<L>) {
    let g = t.group("g");
    let mut positions = Vec::new();
    for i in 0..5u8 {
        positions.push(t.publish(&g, Payload::binary(vec![i; 300_000])).await);
    }
    let h = t.history(&g, Some(&positions[0])).await;
    assert!(!h.recovered, "offset 2 was trimmed by the byte bound");
    let h = t.history(&g, Some(&positions[1])).await;
    assert!(h.recovered, "offsets 3..5 are kept");
    let offsets: Vec<u64> = h.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    assert_eq!(h.messages[2].payload.data().len(), 300_000);
    let big = t.publish(&g, Payload::binary(vec![9u8; 1_100_000])).await;
    let h = t.history(&g, Some(&positions[4])).await;
    assert!(!h.recovered, "the large message was not kept");
    let h = t.history(&g, Some(&big)).await;
    assert!(h.recovered, "nothing missed after it");
    let after = t.publish(&g, Payload::text("small")).await;
    let h = t.history(&g, Some(&big)).await;
    assert!(h.recovered);
    assert_eq!(h.messages.len(), 1);
    assert_eq!(h.messages[0].offset, after.offset);
}

async fn history_ahead<L: Layer>(t: Ctx<L>) {
    let g = t.group("g");
    let last = t.publish(&g, Payload::text("1")).await;
    let ahead = Position {
        offset: last.offset + 5,
        epoch: last.epoch.clone(),
    };
    let h = t.history(&g, Some(&ahead)).await;
    assert!(!h.recovered, "a position ahead of the group is not ours");
    assert!(h.messages.is_empty());
    assert_eq!(h.current, last);
}

async fn history_creates_epoch<L: Layer>(t: Ctx<L>) {
    let g = t.group("fresh");
    let h = t.history(&g, None).await;
    assert_eq!(h.current.offset, 0, "a fresh group has no messages");
    assert!(h.recovered);
    let again = t.history(&g, None).await;
    assert_eq!(
        again.current, h.current,
        "asking twice names the same epoch"
    );
    let first = t.publish(&g, Payload::text("first")).await;
    assert_eq!(first.offset, 1);
    assert_eq!(
        first.epoch, h.current.epoch,
        "the first publish keeps the told epoch"
    );
    let replay = t.history(&g, Some(&h.current)).await;
    assert!(replay.recovered);
    assert_eq!(replay.messages.len(), 1);
    assert_eq!(replay.messages[0].payload, Payload::text("first"));
}

// ---------------------------------------------------------------------------------------
// Payloads and batches
// ---------------------------------------------------------------------------------------

async fn payloads_survive<L: Layer>(mut t: Ctx<L>) {
    let g = t.group("bytes");
    t.subscribe(&g).await;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let payloads = vec![
        Payload::text(""),
        Payload::text("héllo wörld ✓ 😀 — 日本語"),
        // Characters a text envelope might use as separators.
        Payload::text("line1\nline2\r\n:colon:\t{\"json\":true}"),
        Payload::binary(Bytes::new()),
        Payload::binary(all_bytes.clone()),
        Payload::binary(all_bytes.iter().rev().copied().collect::<Vec<u8>>()),
        Payload::binary(Bytes::from_static(b"\x00\x01\r\n\xff")),
        Payload::text("x".repeat(64 * 1024)),
    ];
    let mut positions = Vec::new();
    for payload in &payloads {
        positions.push(t.publish(&g, payload.clone()).await);
    }
    for (payload, position) in payloads.iter().zip(&positions) {
        let m = t.recv().await;
        assert_delivered(&m, &g, position, payload);
        assert_eq!(m.payload.kind(), payload.kind());
        assert_eq!(
            m.payload.data(),
            payload.data(),
            "bytes changed in delivery"
        );
    }
    // History keeps only the last `max_len`, which covers all of them.
    assert!(payloads.len() <= SUITE_HISTORY.max_len);
    let start = Position {
        offset: 0,
        epoch: positions[0].epoch.clone(),
    };
    let h = t.history(&g, Some(&start)).await;
    assert!(h.recovered);
    let replayed: Vec<Payload> = h.messages.into_iter().map(|m| m.payload).collect();
    assert_eq!(replayed, payloads, "bytes changed in history");
}

async fn batch_positions_in_order<L: Layer>(mut t: Ctx<L>) {
    let a = t.group("a");
    let b = t.group("b");
    t.subscribe(&a).await;
    t.subscribe(&b).await;
    let items = vec![
        (a.clone(), Payload::text("a1")),
        (b.clone(), Payload::binary(vec![1u8, 2, 3])),
        (a.clone(), Payload::text("a2")),
        (a.clone(), Payload::text("a3")),
    ];
    let positions = within("publish_batch", t.layer.publish_batch(items.clone()))
        .await
        .unwrap_or_else(|(at, e)| panic!("publish_batch failed at {at}: {e}"));
    let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![1, 1, 2, 3]);
    assert_eq!(positions[0].epoch, positions[2].epoch);
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..items.len() {
        let m = t.recv().await;
        if m.group == a {
            got_a.push((m.offset, m.payload));
        } else {
            got_b.push((m.offset, m.payload));
        }
    }
    assert_eq!(
        got_a,
        vec![
            (1, Payload::text("a1")),
            (2, Payload::text("a2")),
            (3, Payload::text("a3")),
        ]
    );
    assert_eq!(got_b, vec![(1, Payload::binary(vec![1u8, 2, 3]))]);
    let empty = within("empty publish_batch", t.layer.publish_batch(Vec::new()))
        .await
        .unwrap_or_else(|(at, e)| panic!("empty publish_batch failed at {at}: {e}"));
    assert!(empty.is_empty());
}

// ---------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------

fn keyed(group: &GroupName, text: &str, key: Option<&str>) -> KeyedItem {
    KeyedItem {
        group: group.clone(),
        payload: Payload::text(text),
        key: key.map(std::sync::Arc::from),
    }
}

async fn publish_keyed<L: Layer>(
    t: &Ctx<L>,
    items: Vec<KeyedItem>,
    window: Duration,
) -> Vec<Published> {
    within(
        "publish_idempotent",
        t.layer.publish_idempotent(items, window),
    )
    .await
    .unwrap_or_else(|(at, e)| panic!("publish_idempotent failed at {at}: {e}"))
}

async fn idempotent_retry_publishes_once<L: Layer>(mut t: Ctx<L>) {
    let g = t.group("once");
    let sentinel = t.group("sentinel");
    t.subscribe(&g).await;
    t.subscribe(&sentinel).await;
    let window = Duration::from_secs(60);
    let first = publish_keyed(&t, vec![keyed(&g, "shipped", Some("order-17"))], window).await;
    assert_eq!(first.len(), 1);
    assert!(!first[0].duplicate, "the first publish is not a duplicate");
    let m = t.recv().await;
    assert_delivered(&m, &g, &first[0].position, &Payload::text("shipped"));
    // The retry (even with another payload, and within a batch) answers the first
    // position and delivers nothing; an unkeyed message beside it is published.
    let retry = publish_keyed(
        &t,
        vec![
            keyed(&g, "shipped again", Some("order-17")),
            keyed(&g, "unkeyed", None),
        ],
        window,
    )
    .await;
    assert_eq!(retry[0].position, first[0].position);
    assert!(retry[0].duplicate, "the retry is a duplicate");
    assert!(!retry[1].duplicate);
    assert_eq!(retry[1].position.offset, first[0].position.offset + 1);
    let m = t.recv().await;
    assert_eq!(m.payload, Payload::text("unkeyed"));
    t.expect_nothing_before_sentinel(&sentinel).await;
    let history = t.history(&g, None).await;
    assert_eq!(history.current.offset, 2, "the retry took no offset");
}

async fn idempotency_keys_are_per_group<L: Layer>(t: Ctx<L>) {
    let a = t.group("a");
    let b = t.group("b");
    let window = Duration::from_secs(60);
    let out = publish_keyed(
        &t,
        vec![keyed(&a, "x", Some("k")), keyed(&b, "x", Some("k"))],
        window,
    )
    .await;
    assert!(
        out.iter().all(|p| !p.duplicate),
        "one key, two groups: {out:?}"
    );
}

async fn idempotency_window_ends<L: Layer>(t: Ctx<L>) {
    let g = t.group("window");
    let window = Duration::from_millis(300);
    let first = publish_keyed(&t, vec![keyed(&g, "x", Some("k"))], window).await;
    let retry = publish_keyed(&t, vec![keyed(&g, "x", Some("k"))], window).await;
    assert!(retry[0].duplicate);
    // Past the window the key is free again: wait for it, with a deadline.
    let until = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again = publish_keyed(&t, vec![keyed(&g, "x", Some("k"))], window).await;
        if !again[0].duplicate {
            assert_eq!(again[0].position.offset, first[0].position.offset + 1);
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the key was still a duplicate {RECV_TIMEOUT:?} after a window of {window:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------------------

/// Long enough that no entry in the presence cases expires by accident.
const PRESENCE_TTL: Duration = Duration::from_secs(60);

fn local(connections: u64, subs: &[&str]) -> LocalPresence {
    LocalPresence {
        connections,
        subs: subs.iter().map(|s| (*s).to_owned()).collect(),
    }
}

async fn presence_of_an_unknown_group_is_empty<L: Layer>(t: Ctx<L>) {
    let g = t.group("nobody");
    assert_eq!(t.presence(&g).await, Presence::default());
}

async fn presence_update_replaces_and_zero_removes<L: Layer>(t: Ctx<L>) {
    let (g, other) = (t.group("g"), t.group("other"));
    t.presence_update(&g, &local(3, &["42", "7"]), PRESENCE_TTL)
        .await;
    t.presence_update(&other, &local(1, &[]), PRESENCE_TTL)
        .await;
    let seen = t.presence(&g).await;
    assert_eq!(
        (seen.connections, seen.nodes),
        (3, 1),
        "one node, three connections"
    );
    assert_eq!(seen.subs, vec!["42".to_owned(), "7".to_owned()], "sorted");
    // A second update replaces the node's entry, it does not add to it.
    t.presence_update(&g, &local(1, &["7"]), PRESENCE_TTL).await;
    assert_eq!(
        t.presence(&g).await,
        Presence {
            connections: 1,
            subs: vec!["7".to_owned()],
            nodes: 1
        }
    );
    t.presence_update(&g, &local(0, &[]), PRESENCE_TTL).await;
    assert_eq!(t.presence(&g).await, Presence::default(), "zero removes");
    assert_eq!(
        t.presence(&other).await,
        Presence {
            connections: 1,
            subs: Vec::new(),
            nodes: 1
        },
        "other groups are untouched, and anonymous connections have no sub"
    );
}

async fn presence_expires_without_refresh<L: Layer>(t: Ctx<L>) {
    let ttl = Duration::from_millis(400);
    let (g, refreshed) = (t.group("g"), t.group("refreshed"));
    t.presence_update(&g, &local(2, &["42"]), ttl).await;
    t.presence_update(&refreshed, &local(1, &["9"]), ttl).await;
    assert_eq!(t.presence(&g).await.connections, 2);
    // `refreshed` is updated within its ttl, twice; `g` is not.
    for _ in 0..2 {
        tokio::time::sleep(ttl / 2).await;
        t.presence_update(&refreshed, &local(1, &["9"]), ttl).await;
    }
    tokio::time::sleep(ttl / 4).await;
    assert_eq!(
        t.presence(&g).await,
        Presence::default(),
        "an entry not refreshed within its ttl is gone"
    );
    assert_eq!(t.presence(&refreshed).await.connections, 1, "refreshed");
}

async fn occupy<L: Layer>(t: &Ctx<L>, g: &GroupName) -> bool {
    within(&format!("occupy {g}"), t.layer.occupy(g))
        .await
        .unwrap_or_else(|e| panic!("occupy {g} failed: {e}"))
}

async fn vacate<L: Layer>(t: &Ctx<L>, g: &GroupName, delay: Duration) -> bool {
    within(&format!("vacate {g}"), t.layer.vacate(g, delay))
        .await
        .unwrap_or_else(|e| panic!("vacate {g} failed: {e}"))
}

async fn is_listed<L: Layer>(t: &Ctx<L>, g: &GroupName) -> bool {
    within("occupied", t.layer.occupied(100_000))
        .await
        .unwrap_or_else(|e| panic!("occupied failed: {e}"))
        .contains(g)
}

async fn occupied_once_vacated_once_after_the_delay<L: Layer>(t: Ctx<L>) {
    let g = t.group("g");
    let delay = Duration::from_millis(300);
    assert!(
        !vacate(&t, &g, delay).await,
        "never occupied: nothing to vacate"
    );
    t.presence_update(&g, &local(1, &["42"]), PRESENCE_TTL)
        .await;
    assert!(occupy(&t, &g).await, "the first occupy wins the transition");
    assert!(!occupy(&t, &g).await, "already occupied");
    assert!(is_listed(&t, &g).await);
    assert!(!vacate(&t, &g, delay).await, "a live entry: still occupied");
    t.presence_update(&g, &local(0, &[]), PRESENCE_TTL).await;
    assert!(!vacate(&t, &g, delay).await, "empty: the clock starts");
    assert!(
        !vacate(&t, &g, delay).await,
        "empty for less than the delay"
    );
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    assert!(vacate(&t, &g, delay).await, "empty for the delay: vacated");
    assert!(!vacate(&t, &g, delay).await, "vacated once");
    assert!(!is_listed(&t, &g).await);
    assert!(occupy(&t, &g).await, "a new transition");
}

async fn occupy_within_the_delay_stops_the_vacate_clock<L: Layer>(t: Ctx<L>) {
    let g = t.group("g");
    let delay = Duration::from_millis(300);
    assert!(occupy(&t, &g).await);
    assert!(!vacate(&t, &g, delay).await, "the clock starts");
    tokio::time::sleep(delay / 2).await;
    assert!(!occupy(&t, &g).await, "a reload: no new transition");
    tokio::time::sleep(delay / 2 + Duration::from_millis(50)).await;
    assert!(
        !vacate(&t, &g, delay).await,
        "the occupy stopped the clock: it starts again"
    );
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    assert!(vacate(&t, &g, delay).await);
}
