//! The supervisor task: owns the connection life cycle. It connects both connections,
//! re-subscribes every wanted group, runs the subscriber's read loop and the readiness
//! probe (`probe.rs`) side by side, and after a loss
//! tears down and reconnects with jittered exponential backoff, until the layer closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::layer::Shared;
use crate::subscriber::{self, End, SubscriberReader, SubscriberWriter};
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
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => break,
            attempt = tokio::time::timeout(config.connect_timeout, connect(&shared)) => attempt,
        };
        let attempt = attempt
            .unwrap_or_else(|_| Err(format!("no connection within {:?}", config.connect_timeout)));
        match attempt {
            Ok((command, reader, writer)) => {
                if ever_connected {
                    shared.stats.reconnects.increment();
                    tracing::info!(prefix = %config.prefix, "reconnected to redis");
                } else {
                    tracing::info!(prefix = %config.prefix, "connected to redis");
                }
                ever_connected = true;
                failures_in_a_row = 0;
                let started = Instant::now();
                let end = session(&shared, command, reader, writer, &cancel).await;
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

async fn connect(
    shared: &Shared,
) -> Result<
    (
        redis::aio::MultiplexedConnection,
        SubscriberReader,
        SubscriberWriter,
    ),
    String,
> {
    let config = &shared.config;
    let connection_config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout));
    let command = shared
        .client
        .get_multiplexed_async_connection_with_config(&connection_config)
        .await
        .map_err(|e| format!("command connection: {e}"))?;
    let (reader, writer) =
        subscriber::connect(shared.client.get_connection_info(), config.command_timeout).await?;
    Ok((command, reader, writer))
}

/// One connected period: install both connections, re-subscribe, read until lost.
async fn session(
    shared: &Shared,
    command: redis::aio::MultiplexedConnection,
    mut reader: SubscriberReader,
    mut writer: SubscriberWriter,
    cancel: &CancellationToken,
) -> End {
    let probe_conn = command.clone();
    shared.probe.reset();
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
    tokio::select! {
        end = subscriber::read_loop(shared, &mut reader, session, cancel) => end,
        // Runs until the read loop ends; it never returns on its own.
        () = shared.probe.run(prefix, probe_conn, shared.config.command_timeout) => End::Lost,
    }
}
