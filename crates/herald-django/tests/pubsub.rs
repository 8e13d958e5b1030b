//! The pubsub backend (`RedisPubSubChannelLayer`) against real redis-server and Django.

mod support;

use herald_core::Payload;
use herald_testkit::redis::RedisProcess;
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_django_message_enters_herald_once_across_nodes() {
    let redis = RedisProcess::start();
    let django = DjangoSide::pubsub(vec![redis.url()]);
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    // group_active returns once subscribed, so every node hears what follows.
    let nodes = start_nodes(3, &django.herald_config(), &sink, &["user.42"], &shutdown).await;

    // pubsub payloads have no random prefix: ten identical messages must stay ten.
    django.group_send("user.42", "same", 10).await;
    django.group_send("user.42", "other", 5).await;
    // Every node hears every message and settles its claim before counting it as
    // published or skipped; once all have, the totals are final.
    eventually(DEADLINE, "every node to settle every message", || async {
        nodes.iter().all(|n| {
            let s = n.stats();
            s.received == 15 && s.published + s.skipped == 15
        })
    })
    .await;
    let published = sink.published();
    assert_eq!(published.len(), 15);
    assert_eq!(
        published
            .iter()
            .filter(|(_, p)| *p == Payload::text("same"))
            .count(),
        10
    );
    assert!(published.iter().all(|(g, _)| g.as_str() == "user.42"));
    assert_eq!(total(&nodes, |s| s.skipped), 30);
    stop(shutdown, nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_pubsub_both_ways_without_echo() {
    let redis = RedisProcess::start();
    let mut django = DjangoSide::pubsub(vec![redis.url()]);
    django.keys = vec!["s3cret".into()];
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    let nodes = start_nodes(2, &django.herald_config(), &sink, &["user.42"], &shutdown).await;

    django.group_send("user.42", "encrypted hello", 1).await;
    eventually(DEADLINE, "the django message", || async {
        sink.count() == 1
    })
    .await;
    assert_eq!(sink.published()[0].1, Payload::text("encrypted hello"));

    let mut listener = django.spawn(&["recv", "user.42", "1", "20"]);
    listener.next().await;
    let report = nodes[0]
        .group_send(&group("user.42"), &Payload::text("from herald"))
        .await
        .unwrap();
    // The Django process and both herald nodes are subscribed.
    assert_eq!(report.members, 3);
    let line = listener.next().await;
    assert_eq!(line["message"]["type"], "herald.message");
    assert_eq!(line["message"]["text"], "from herald");
    listener.finish().await;
    // Both nodes heard herald's own message and skipped it.
    eventually(DEADLINE, "the echo to be skipped", || async {
        nodes.iter().all(|n| n.stats().received == 2)
    })
    .await;
    assert_eq!(sink.count(), 1);

    // Once every node let the group go, herald no longer listens to its channel.
    for node in &nodes {
        node.group_inactive(&group("user.42")).await.unwrap();
    }
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (_, subscribers): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("asgi__group__user.42")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(subscribers, 0);
    stop(shutdown, nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_after_a_redis_restart() {
    let mut redis = RedisProcess::start();
    let django = DjangoSide::pubsub(vec![redis.url()]);
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    let nodes = start_nodes(1, &django.herald_config(), &sink, &["user.42"], &shutdown).await;

    redis.restart();
    let url = redis.url();
    eventually(DEADLINE, "herald to subscribe again", || {
        let url = url.clone();
        async move {
            let Ok(mut conn) = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
            else {
                return false;
            };
            redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("asgi__group__user.42")
                .query_async::<(String, u64)>(&mut conn)
                .await
                .is_ok_and(|(_, n)| n == 1)
        }
    })
    .await;
    django.group_send("user.42", "after restart", 1).await;
    eventually(DEADLINE, "the message after the restart", || async {
        sink.count() == 1
    })
    .await;
    stop(shutdown, nodes).await;
}

/// A layer whose publishes wait until the gate opens (a stalled herald layer).
#[derive(Clone, Debug)]
struct GatedLayer {
    inner: CountingLayer,
    open: tokio::sync::watch::Receiver<bool>,
}

impl herald_core::Layer for GatedLayer {
    async fn publish(
        &self,
        group: &herald_core::GroupName,
        payload: Payload,
    ) -> Result<herald_core::Position, herald_core::LayerError> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.inner.publish(group, payload).await
    }

    async fn publish_idempotent(
        &self,
        items: Vec<herald_core::KeyedItem>,
        window: std::time::Duration,
    ) -> Result<Vec<herald_core::Published>, (usize, herald_core::LayerError)> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.inner.publish_idempotent(items, window).await
    }

    async fn subscribe(&self, g: &herald_core::GroupName) -> Result<(), herald_core::LayerError> {
        self.inner.subscribe(g).await
    }

    async fn presence_update(
        &self,
        g: &herald_core::GroupName,
        local: &herald_core::LocalPresence,
        ttl: std::time::Duration,
    ) -> Result<(), herald_core::LayerError> {
        self.inner.presence_update(g, local, ttl).await
    }

    async fn presence(
        &self,
        g: &herald_core::GroupName,
    ) -> Result<herald_core::Presence, herald_core::LayerError> {
        self.inner.presence(g).await
    }

    async fn occupy(&self, g: &herald_core::GroupName) -> Result<bool, herald_core::LayerError> {
        self.inner.occupy(g).await
    }

    async fn vacate(
        &self,
        g: &herald_core::GroupName,
        delay: std::time::Duration,
    ) -> Result<bool, herald_core::LayerError> {
        self.inner.vacate(g, delay).await
    }

    async fn occupied(
        &self,
        limit: usize,
    ) -> Result<Vec<herald_core::GroupName>, herald_core::LayerError> {
        self.inner.occupied(limit).await
    }

    async fn unsubscribe(&self, g: &herald_core::GroupName) -> Result<(), herald_core::LayerError> {
        self.inner.unsubscribe(g).await
    }

    async fn history(
        &self,
        g: &herald_core::GroupName,
        since: Option<&herald_core::Position>,
    ) -> Result<herald_core::History, herald_core::LayerError> {
        self.inner.history(g, since).await
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// Output buffer bytes Redis holds for its pub/sub clients (largest `omem`).
async fn pubsub_omem(redis: &RedisProcess) -> u64 {
    let list = redis.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]).await;
    let text = match list {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("CLIENT LIST: {other:?}"),
    };
    text.split_whitespace()
        .filter_map(|f| f.strip_prefix("omem="))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Issue 14 (7): with herald's layer stalled, the pub/sub backlog stays in Redis (where
/// `client-output-buffer-limit pubsub` bounds it), not in herald's memory; once the layer
/// moves again, every message is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_layer_leaves_the_pubsub_backlog_in_redis() {
    let redis = RedisProcess::start();
    let django = DjangoSide::pubsub(vec![redis.url()]);
    let (gate, open) = tokio::sync::watch::channel(false);
    let sink = CountingLayer::default();
    let layer = GatedLayer {
        inner: sink.clone(),
        open,
    };
    let shutdown = CancellationToken::new();
    let bridge = herald_django::DjangoBridge::start(
        django.herald_config(),
        layer,
        1 << 20,
        shutdown.clone(),
    )
    .await
    .unwrap();
    bridge.group_active(&group("user.42")).await.unwrap();
    // 300 messages of 50 kB: 15 MB, more than loopback socket buffers absorb.
    const COUNT: usize = 300;
    django
        .run(&["send", "user.42", "50000", &COUNT.to_string(), "big"])
        .await;
    eventually(DEADLINE, "Redis to hold the backlog", || async {
        pubsub_omem(&redis).await > 4 << 20
    })
    .await;
    assert!(sink.count() == 0);
    gate.send_replace(true);
    eventually(DEADLINE, "every message", || async {
        sink.count() == COUNT
    })
    .await;
    stop(shutdown, vec![bridge]).await;
}
