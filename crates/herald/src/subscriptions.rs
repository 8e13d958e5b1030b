//! The one task that turns hub membership changes into layer subscribe/unsubscribe calls,
//! in order.
//!
//! Callers send "check group G" after changing the hub; the task compares what the hub
//! holds now with what the layer records as wanted (`NodeLayer::is_subscribed`, the one
//! record: this task keeps no copy) and fixes the difference. Because it
//! reconciles with the hub's current state instead of replaying each edge, a fast
//! join/leave/join cannot leave a stale subscription, whatever order the checks arrive in.
//! The checks queued while one round trip is in flight are handled together, in one
//! `update_subscriptions` call: a connect storm costs a few round trips, not one per group.

use std::collections::HashSet;
use std::sync::Arc;

use herald_core::{GroupName, Layer};
use herald_django::DjangoBridge;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::burst_log::BurstLog;
use crate::hub::Hub;
use crate::node_layer::NodeLayer;

struct Check {
    group: GroupName,
    done: Option<oneshot::Sender<()>>,
}

/// Handle to the subscriptions task.
#[derive(Clone, Debug)]
pub struct Subscriptions {
    tx: mpsc::Sender<Check>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check").field("group", &self.group).finish()
    }
}

impl Subscriptions {
    /// Starts the task; it ends when `cancel` fires (or every handle is dropped).
    pub fn spawn(
        hub: Arc<Hub>,
        layer: NodeLayer,
        django: Option<DjangoBridge>,
        tracker: &tokio_util::task::TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        // Bounded: a burst of connects waits here rather than growing a queue.
        let (tx, rx) = mpsc::channel(1024);
        tracker.spawn(run(rx, hub, layer, django, cancel));
        Self { tx }
    }

    /// Asks for `group` to be reconciled and waits until it is, so that a caller who just
    /// joined knows the layer delivers the group's messages from now on.
    pub async fn sync(&self, group: &GroupName) {
        let (done, wait) = oneshot::channel();
        let check = Check {
            group: group.clone(),
            done: Some(done),
        };
        if self.tx.send(check).await.is_ok() {
            // An error means the task ended (shutdown): nothing to wait for.
            let _ = wait.await;
        }
    }

    /// Asks for `group` to be reconciled without waiting (used when leaving).
    pub async fn sync_later(&self, group: &GroupName) {
        let check = Check {
            group: group.clone(),
            done: None,
        };
        // An error means the task ended (shutdown), when unsubscribing no longer matters.
        let _ = self.tx.send(check).await;
    }
}

/// Most checks handled together: bounds one round of work (and one write to Redis).
const BATCH: usize = 1024;

async fn run(
    mut rx: mpsc::Receiver<Check>,
    hub: Arc<Hub>,
    layer: NodeLayer,
    django: Option<DjangoBridge>,
    cancel: CancellationToken,
) {
    let unconfirmed = BurstLog::default();
    let mut checks = Vec::with_capacity(BATCH);
    loop {
        // Every check queued meanwhile is taken together: a connect storm becomes a few
        // batched round trips instead of one per group.
        let received = tokio::select! {
            _ = cancel.cancelled() => break,
            received = rx.recv_many(&mut checks, BATCH) => received,
        };
        if received == 0 {
            break;
        }
        reconcile(&hub, &layer, django.as_ref(), &unconfirmed, &checks).await;
        for check in checks.drain(..) {
            if let Some(done) = check.done {
                // The waiter may have gone away (its connection closed); that is fine.
                let _ = done.send(());
            }
        }
    }
}

/// Brings the layer's wanted state for the checked groups in line with the hub, in one
/// `update_subscriptions` call.
///
/// The layer is the only record of which groups are wanted: this task reads it and keeps
/// no copy. A change that fails after recording its intent (Redis did not confirm in
/// time) leaves the record changed, and the layer applies it to Redis when Redis catches
/// up; the next check compares the hub with that record, not with what this task believed.
/// Each group is compared once per batch, with the hub's state now, so it ends up in at
/// most one of the two lists and its subscribe/unsubscribe edges keep their order.
async fn reconcile(
    hub: &Hub,
    layer: &NodeLayer,
    django: Option<&DjangoBridge>,
    unconfirmed: &BurstLog,
    checks: &[Check],
) {
    let mut seen: HashSet<&GroupName> = HashSet::with_capacity(checks.len());
    let mut subscribe = Vec::new();
    let mut unsubscribe = Vec::new();
    for check in checks {
        let group = &check.group;
        if !seen.insert(group) {
            continue;
        }
        match (hub.has_members(group), layer.is_subscribed(group)) {
            (true, false) => subscribe.push(group.clone()),
            (false, true) => unsubscribe.push(group.clone()),
            _ => {}
        }
    }
    if subscribe.is_empty() && unsubscribe.is_empty() {
        return;
    }
    if let Err(e) = layer.update_subscriptions(&subscribe, &unsubscribe).await {
        // Redis hangs: every change in the burst times out alike; one line for them.
        if let Some(count) = unconfirmed.hit() {
            tracing::warn!(
                count,
                subscribe = subscribe.len(),
                unsubscribe = unsubscribe.len(),
                error = %e,
                "subscription changes not confirmed yet; applied when the layer catches up"
            );
        }
    }
    // The Django bridge follows the edges of the layer's record (a closing layer records
    // nothing, and then nothing changed).
    let Some(bridge) = django else { return };
    for group in &subscribe {
        if layer.is_subscribed(group) {
            if let Err(e) = bridge.group_active(group).await {
                tracing::warn!(%group, error = %e, "django membership failed");
            }
        }
    }
    for group in &unsubscribe {
        if !layer.is_subscribed(group) {
            if let Err(e) = bridge.group_inactive(group).await {
                tracing::warn!(%group, error = %e, "django membership release failed");
            }
        }
    }
}
