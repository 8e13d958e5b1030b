//! Redis Sentinel: finding the master through the sentinels, checking that it is one, and
//! noticing while connected that it no longer is.
//!
//! The sentinels are asked in the URL's order (`SENTINEL get-master-addr-by-name`); the
//! first that answers with an address wins, so a dead or partitioned sentinel only costs
//! its connect timeout. The address is then checked with `ROLE` (a replica that a stale
//! sentinel still names is refused, and the supervisor retries with backoff). While a
//! session runs, [`watch`] asks again every probe interval and checks `ROLE` on the
//! session's own connection; when the sentinels name another master, or the connected
//! server was demoted, it returns and the supervisor ends the session, reconnects to the
//! new master and re-subscribes. Asking (rather than subscribing to `+switch-master`)
//! needs no extra long-lived connection per sentinel and survives any sentinel dying; it
//! adds at most one probe interval to the time a failover takes to be followed, and a
//! killed master is noticed sooner anyway by its broken connections.

use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::topology::SentinelTopology;

/// Asks the sentinels in order for the master's address; the first answer wins.
pub(crate) async fn find_master(
    topology: &SentinelTopology,
    timeout: Duration,
) -> Result<(String, u16), String> {
    let mut last_error = String::from("no sentinel configured");
    for (host, port) in &topology.sentinels {
        match tokio::time::timeout(timeout, ask(host, *port, &topology.master, timeout)).await {
            Ok(Ok(Some(address))) => return Ok(address),
            Ok(Ok(None)) => {
                last_error = format!(
                    "sentinel {host}:{port} knows no master named {:?}",
                    topology.master
                )
            }
            Ok(Err(e)) => last_error = format!("sentinel {host}:{port}: {e}"),
            Err(_) => last_error = format!("sentinel {host}:{port}: no answer within {timeout:?}"),
        }
    }
    Err(format!("no sentinel named the master: {last_error}"))
}

/// One sentinel's answer: the master's address, or `None` when it does not know the name.
async fn ask(
    host: &str,
    port: u16,
    master: &str,
    timeout: Duration,
) -> Result<Option<(String, u16)>, String> {
    let host_part = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let client = redis::Client::open(format!("redis://{host_part}:{port}"))
        .map_err(|e| format!("bad sentinel address: {e}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    let reply: Option<Vec<String>> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    match reply.as_deref() {
        None => Ok(None),
        Some([ip, port]) => match port.parse::<u16>() {
            Ok(port) if port > 0 && !ip.is_empty() => Ok(Some((ip.clone(), port))),
            _ => Err(format!("unusable master address {ip:?}:{port:?}")),
        },
        Some(_) => Err("unexpected answer to SENTINEL get-master-addr-by-name".to_owned()),
    }
}

/// Whether the server behind `conn` says it is a master (`ROLE`).
pub(crate) async fn is_master(conn: &mut MultiplexedConnection) -> Result<bool, String> {
    let reply: Value = redis::cmd("ROLE")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let Value::Array(items) = reply else {
        return Err("unexpected answer to ROLE".to_owned());
    };
    Ok(match items.first() {
        Some(Value::BulkString(role)) => role.as_slice() == b"master",
        Some(Value::SimpleString(role)) => role == "master",
        _ => false,
    })
}

/// Returns (with the reason) once the sentinels name a master other than `current`, or
/// the server behind `conn` stops being a master. Checks every `interval`; a sentinel that
/// does not answer is skipped, and when none answers the session is left alone (the
/// master may well be fine; its own failure ends the session through its connections).
pub(crate) async fn watch(
    topology: &SentinelTopology,
    current: &(String, u16),
    mut conn: MultiplexedConnection,
    interval: Duration,
    timeout: Duration,
) -> String {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the connect just checked both things.
    tick.tick().await;
    let mut unanswered = false;
    loop {
        tick.tick().await;
        match find_master(topology, timeout).await {
            Ok(named) if named != *current => {
                return format!(
                    "sentinels name a new master {}:{} (was {}:{})",
                    named.0, named.1, current.0, current.1
                );
            }
            Ok(_) => unanswered = false,
            Err(e) => {
                if !unanswered {
                    tracing::warn!(error = %e, "no sentinel answers; staying with the current master");
                }
                unanswered = true;
            }
        }
        if let Ok(Ok(false)) = tokio::time::timeout(timeout, is_master(&mut conn)).await {
            return format!("{}:{} is no longer a master", current.0, current.1);
        }
    }
}
