//! The supervisor task: owns the connection life cycle. It finds the master (through
//! Sentinel when configured, `sentinel.rs`), connects both connections, checks for lost
//! writes (`lost_writes.rs`), re-subscribes every wanted group, runs the subscriber's read
//! loop, the readiness probe (`probe.rs`) and the Sentinel watch side by side, and after
//! a loss tears down and reconnects with jittered exponential backoff, until the layer
//! closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::layer::{Shared, Target};
use crate::subscriber::{self, End, SubscriberReader, SubscriberWriter};
use crate::{lost_writes, sentinel};
use herald_core::Backoff;

/// Runs until `cancel` fires. Holds the shared state only through this task's lifetime;
/// the layer handles own `cancel`, so dropping the last handle ends the task.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    if shared.cluster.is_some() {
        // Redis Cluster: its own supervisor (`cluster/mod.rs`).
        return crate::cluster::run(shared, cancel).await;
    }
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_min_delay, config.reconnect_max_delay);
    let mut ever_connected = false;
    let mut failures_in_a_row = 0u64;
    // With Sentinel, each sentinel asked may take a whole connect timeout (a frozen one
    // accepts the connection and answers nothing): room to ask them all, then connect.
    let connect_limit = match &shared.target {
        Target::Single(_) | Target::Cluster => config.connect_timeout,
        Target::Sentinel(topology) => {
            let asks = u32::try_from(topology.sentinels.len()).unwrap_or(u32::MAX);
            config
                .connect_timeout
                .saturating_mul(asks.saturating_add(1))
        }
    };
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => break,
            attempt = tokio::time::timeout(connect_limit, connect(&shared)) => attempt,
        };
        let attempt =
            attempt.unwrap_or_else(|_| Err(format!("no connection within {connect_limit:?}")));
        match attempt {
            Ok(Connected {
                command,
                reader,
                writer,
                master,
            }) => {
                if ever_connected {
                    shared.stats.reconnects.increment();
                    tracing::info!(prefix = %config.prefix, "reconnected to redis");
                } else {
                    tracing::info!(prefix = %config.prefix, "connected to redis");
                }
                ever_connected = true;
                failures_in_a_row = 0;
                let started = Instant::now();
                let end = session(&shared, command, reader, writer, master, &cancel).await;
                shared.go_down().await;
                if end == End::Closed {
                    break;
                }
                // A connection that lasted a while earns a fast retry; one that keeps
                // dying at once (e.g. Redis still loading) keeps backing off.
                if started.elapsed() >= config.reconnect_max_delay.max(Duration::from_secs(1)) {
                    backoff.reset();
                }
            }
            Err(why) => {
                shared.stats.connect_failures.increment();
                // Once per outage at warn; the retries after it would flood the log.
                if failures_in_a_row == 0 {
                    tracing::warn!(prefix = %config.prefix, error = %why, "cannot reach redis; retrying with backoff");
                } else {
                    tracing::debug!(prefix = %config.prefix, error = %why, attempt = failures_in_a_row + 1, "still cannot reach redis");
                }
                failures_in_a_row += 1;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    shared.go_down().await;
    tracing::debug!(prefix = %config.prefix, "redis layer stopped");
}

/// A session's connections, and the master's address when Sentinel found it.
struct Connected {
    command: redis::aio::MultiplexedConnection,
    reader: SubscriberReader,
    writer: SubscriberWriter,
    master: Option<(String, u16)>,
}

async fn connect(shared: &Shared) -> Result<Connected, String> {
    let config = &shared.config;
    let (client, master) = match &shared.target {
        Target::Single(client) => (client.clone(), None),
        // `run` hands a cluster to `cluster::run` before it gets here.
        Target::Cluster => return Err("a cluster's shards are connected by cluster::run".into()),
        Target::Sentinel(topology) => {
            let (host, port) = sentinel::find_master(topology, config.connect_timeout).await?;
            let client = redis::Client::open(topology.master_url(&host, port))
                .map_err(|e| format!("master {host}:{port}: {e}"))?;
            (client, Some((host, port)))
        }
    };
    let connection_config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout));
    let mut command = client
        .get_multiplexed_async_connection_with_config(&connection_config)
        .await
        .map_err(|e| format!("command connection: {e}"))?;
    if let Some((host, port)) = &master {
        // A sentinel may still name a master that was demoted (or not yet promoted one).
        if !sentinel::is_master(&mut command).await? {
            return Err(format!(
                "{host}:{port}, named by the sentinels, is not a master (yet)"
            ));
        }
    }
    let (reader, writer) =
        subscriber::connect(client.get_connection_info(), config.command_timeout).await?;
    Ok(Connected {
        command,
        reader,
        writer,
        master,
    })
}

/// One connected period: install both connections, re-subscribe, read until lost.
async fn session(
    shared: &Shared,
    command: redis::aio::MultiplexedConnection,
    mut reader: SubscriberReader,
    mut writer: SubscriberWriter,
    master: Option<(String, u16)>,
    cancel: &CancellationToken,
) -> End {
    let probe_conn = command.clone();
    shared.probe.reset();
    // Before anything can publish through this connection: groups whose acknowledged
    // writes this master lost get a new epoch first.
    if let Err(why) = lost_writes::check_after_connect(shared, &mut command.clone(), cancel).await {
        tracing::warn!(prefix = %shared.config.prefix, error = %why, "lost-writes check failed");
        return End::Lost;
    }
    let watch_conn = command.clone();
    let session = shared.install_command(command);
    {
        // Holding the writer lock while reading the wanted set orders this against every
        // concurrent `subscribe`: a call that changed the set before this point is in the
        // snapshot, one after it finds the writer installed and applies itself.
        let mut slot = shared.subscriber.lock().await;
        let wanted = shared.wanted_snapshot();
        if let Err(why) = writer
            .resubscribe(&shared.keys, shared.probe.channel(), wanted)
            .await
        {
            tracing::warn!(prefix = %shared.config.prefix, error = %why, "re-subscribing failed");
            return End::Lost;
        }
        *slot = Some(writer);
    }
    let prefix = shared.config.prefix.as_str();
    let watch = async {
        match (&shared.target, &master) {
            (Target::Sentinel(topology), Some(master)) => {
                let interval = shared.config.probe_interval;
                let timeout = shared.config.command_timeout;
                sentinel::watch(topology, master, watch_conn, interval, timeout).await
            }
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        end = subscriber::read_loop(shared, &mut reader, session, cancel) => end,
        // Runs until the read loop ends; it never returns on its own.
        () = shared.probe.run(prefix, probe_conn, shared.config.command_timeout) => End::Lost,
        why = watch => {
            tracing::info!(prefix, reason = %why, "following the redis master");
            End::Lost
        }
    }
}
