//! Lost acknowledged writes detected live: an offset this node already received comes
//! again under the same epoch (what a new master does after losing writes). Provoked on
//! one real redis-server by moving the group's offset back, as a failover would.

mod support;

use std::time::Duration;

use herald_core::{Layer, Payload, Position};
use herald_testkit::redis::{RedisProcess, unique_prefix};
use support::{group, layer, ready, recv_within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reassigned_offset_arriving_live_resets_the_group_on_every_node() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let (a, mut a_rx) = layer(&redis, &prefix);
    let (b, mut b_rx) = layer(&redis, &prefix);
    ready(&a).await;
    ready(&b).await;
    let g = group("reassigned");
    a.subscribe(&g).await.unwrap();
    b.subscribe(&g).await.unwrap();
    let mut last = None;
    for i in 1..=5u64 {
        last = Some(a.publish(&g, Payload::text(format!("{i}"))).await.unwrap());
    }
    for i in 1..=5u64 {
        assert_eq!(
            recv_within(&mut a_rx, Duration::from_secs(5)).await.offset,
            i
        );
        assert_eq!(
            recv_within(&mut b_rx, Duration::from_secs(5)).await.offset,
            i
        );
    }
    let epoch = last.expect("published").epoch;
    // The new master kept only offsets 1..3 (its stream is left out: never had 4 and 5).
    let meta = format!("{prefix}:{{reassigned}}:meta");
    let stream = format!("{prefix}:{{reassigned}}:stream");
    redis.cmd(&["HSET", &meta, "o", "3"]).await;
    redis.cmd(&["DEL", &stream]).await;
    // Offset 4 again, for another message: both nodes already had an offset 4.
    let reassigned = b.publish(&g, Payload::text("other 4")).await.unwrap();
    assert_eq!((reassigned.offset, &reassigned.epoch), (4, &epoch));

    for (name, rx) in [("a", &mut a_rx), ("b", &mut b_rx)] {
        let notice = recv_within(rx, Duration::from_secs(5)).await;
        assert_eq!(
            notice.offset, 0,
            "{name}: a reset notice, not the reassigned message"
        );
        assert_ne!(notice.epoch, epoch, "{name}: under a new epoch");
    }
    assert_eq!(
        a.stats().lost_writes + b.stats().lost_writes,
        2,
        "each node saw the reassignment (one of them replaced the epoch)"
    );
    let h = a
        .history(&g, Some(&Position { offset: 5, epoch }))
        .await
        .unwrap();
    assert!(
        !h.recovered,
        "a resume from the lost position is not silent"
    );
    let next = a.publish(&g, Payload::text("6")).await.unwrap();
    assert_eq!(next.epoch, h.current.epoch);
    assert_eq!(
        recv_within(&mut a_rx, Duration::from_secs(5)).await.epoch,
        next.epoch
    );
    a.close().await;
    b.close().await;
}
