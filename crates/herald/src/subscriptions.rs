//! The one task that turns hub membership changes into layer subscribe/unsubscribe calls,
//! in order.
//!
//! Callers send "check group G" after changing the hub; the task compares what the hub
//! holds now with what the layer is subscribed to and fixes the difference. Because it
//! reconciles with the hub's current state instead of replaying each edge, a fast
//! join/leave/join cannot leave a stale subscription, whatever order the checks arrive in.

use std::collections::HashSet;
use std::sync::Arc;

use herald_core::{GroupName, Layer};
use herald_django::DjangoBridge;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

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

async fn run(
    mut rx: mpsc::Receiver<Check>,
    hub: Arc<Hub>,
    layer: NodeLayer,
    django: Option<DjangoBridge>,
    cancel: CancellationToken,
) {
    let mut subscribed: HashSet<GroupName> = HashSet::new();
    loop {
        let check = tokio::select! {
            _ = cancel.cancelled() => break,
            check = rx.recv() => match check {
                Some(check) => check,
                None => break,
            },
        };
        let wanted = hub.has_members(&check.group);
        let have = subscribed.contains(&check.group);
        if wanted && !have {
            match layer.subscribe(&check.group).await {
                Ok(()) => {
                    subscribed.insert(check.group.clone());
                    // The Django bridge follows the same edges: this node now has members.
                    if let Some(bridge) = &django {
                        if let Err(e) = bridge.group_active(&check.group).await {
                            tracing::warn!(group = %check.group, error = %e, "django membership failed");
                        }
                    }
                }
                Err(e) => tracing::warn!(group = %check.group, error = %e, "subscribe failed"),
            }
        } else if !wanted && have {
            match layer.unsubscribe(&check.group).await {
                Ok(()) => {
                    subscribed.remove(&check.group);
                    if let Some(bridge) = &django {
                        if let Err(e) = bridge.group_inactive(&check.group).await {
                            tracing::warn!(group = %check.group, error = %e, "django membership release failed");
                        }
                    }
                }
                Err(e) => tracing::warn!(group = %check.group, error = %e, "unsubscribe failed"),
            }
        }
        if let Some(done) = check.done {
            // The waiter may have gone away (its connection closed); that is fine.
            let _ = done.send(());
        }
    }
}
