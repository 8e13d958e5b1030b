//! Caps on HTTP connections that are not WebSockets (yet), in total and per client
//! address, and how a connection past them is answered. A request that stalls holds its
//! descriptor until a timeout ends it; the caps keep many such requests from taking the
//! descriptors that WebSockets and `/healthz` need.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client_ip::{self, IpNet};
use crate::metrics::Metrics;

/// The counters behind the caps.
#[derive(Debug)]
pub(crate) struct HttpSlots {
    max_total: usize,
    max_per_ip: usize,
    /// Peers exempt from the per-address cap: the proxies whose clients share an address.
    trusted: Vec<IpNet>,
    open: AtomicUsize,
    /// Open connections per address key; entries are removed at zero. A std mutex: held
    /// for one map operation, never across an await.
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    metrics: Arc<Metrics>,
}

/// Why a connection is refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `limits.max_http_connections` reached: 503.
    Total,
    /// `limits.max_http_connections_per_ip` reached: 429.
    PerIp,
    /// The process has no descriptor left: 503.
    NoDescriptors,
}

impl Refused {
    /// The complete HTTP answer (JSON body, `Connection: close`).
    pub(crate) fn answer(self) -> Vec<u8> {
        match self {
            Refused::Total => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "the server holds as many HTTP connections as it allows (limits.max_http_connections); retry later",
            ),
            Refused::PerIp => json_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "this address holds as many HTTP connections as it may (limits.max_http_connections_per_ip)",
            ),
            Refused::NoDescriptors => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the server is out of file descriptors; retry later",
            ),
        }
    }
}

/// One connection's place under the caps; released on drop.
#[derive(Debug)]
pub(crate) struct HttpSlot {
    slots: Arc<HttpSlots>,
    ip: Option<IpAddr>,
}

impl HttpSlots {
    /// Caps of `max_total` (lowered to half of `open_files`, the process's descriptor
    /// limit, when that is smaller) and `max_per_ip`.
    pub(crate) fn new(
        max_total: usize,
        max_per_ip: usize,
        open_files: Option<u64>,
        trusted: Vec<IpNet>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let by_descriptors = open_files
            .map(|n| usize::try_from(n / 2).unwrap_or(usize::MAX).max(16))
            .unwrap_or(usize::MAX);
        Self {
            max_total: max_total.min(by_descriptors),
            max_per_ip,
            trusted,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The total cap in force.
    pub(crate) fn max_total(&self) -> usize {
        self.max_total
    }

    /// Takes a place for a connection from `peer`, or says which cap is reached.
    pub(crate) fn take(self: &Arc<Self>, peer: IpAddr) -> Result<HttpSlot, Refused> {
        // AcqRel: the count is the only state; every taker sees every other's increment.
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            Metrics::add(&self.metrics.http_refused_total, 1);
            return Err(Refused::Total);
        }
        let exempt = self.trusted.iter().any(|net| net.contains(peer));
        let ip = (!exempt).then(|| client_ip::limit_key(peer));
        if let Some(ip) = ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            if *count as usize >= self.max_per_ip {
                if *count == 0 {
                    per_ip.remove(&ip);
                }
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                Metrics::add(&self.metrics.http_refused_per_ip, 1);
                return Err(Refused::PerIp);
            }
            *count += 1;
        }
        self.metrics
            .http_connections
            .fetch_add(1, Ordering::Relaxed);
        Ok(HttpSlot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        let slots = &self.slots;
        slots.open.fetch_sub(1, Ordering::AcqRel);
        slots
            .metrics
            .http_connections
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = slots.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A connection's [`HttpSlot`], shared with its requests (as a request extension) so that
/// a request that turns the connection into a long-lived stream (SSE) can give the place
/// back: from then on the stream counts under the WebSocket-style connection limits, not
/// under the caps meant for short requests. Dropping the last handle releases it too.
#[derive(Clone, Debug)]
pub(crate) struct SlotRelease(Arc<Mutex<Option<HttpSlot>>>);

impl SlotRelease {
    pub(crate) fn new(slot: HttpSlot) -> Self {
        Self(Arc::new(Mutex::new(Some(slot))))
    }

    /// Gives the connection's place back now (idempotent).
    pub(crate) fn release(&self) {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(slot);
    }
}

/// A complete HTTP/1.1 answer with the API's JSON error body, closing the connection.
pub(crate) fn json_response(status: StatusCode, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// How long a refused connection is kept to let its answer arrive.
const LINGER: Duration = Duration::from_secs(1);

/// Answers a refused connection and closes it. What the client already sent is read and
/// discarded for up to [`LINGER`] first: closing a socket with unread data resets it, and
/// the reset can destroy the answer before the client reads it.
pub(crate) async fn refuse(mut stream: TcpStream, answer: Vec<u8>) {
    let written = tokio::time::timeout(LINGER, stream.write_all(&answer)).await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let drain = async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    // The answer is out either way; a client that keeps sending is cut off.
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Answers a refused connection without waiting (no task, no descriptor beyond its own):
/// what the client already sent is read first, so that closing does not reset the
/// connection and destroy the answer; data arriving later may still do so.
pub(crate) fn refuse_now(stream: &TcpStream, answer: &[u8]) {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    // The socket buffer takes a short answer whole; a failure leaves only the close.
    let _ = stream.try_write(answer);
}

/// A descriptor held in reserve for when the process runs out: released, it lets the
/// accept loop take the waiting connection off the queue, answer it and close it,
/// instead of spinning on `EMFILE` while clients hang.
#[derive(Debug)]
pub(crate) struct Reserve(Option<std::fs::File>);

impl Reserve {
    pub(crate) fn new() -> Self {
        Self(std::fs::File::open("/dev/null").ok())
    }

    /// Whether an accept error means the process (or system) is out of descriptors.
    pub(crate) fn is_exhaustion(e: &std::io::Error) -> bool {
        // EMFILE 24, ENFILE 23 on Linux.
        matches!(e.raw_os_error(), Some(23 | 24))
    }

    /// Frees the reserved descriptor (if any is held).
    pub(crate) fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a descriptor back into reserve.
    pub(crate) fn refill(&mut self) {
        if self.0.is_none() {
            *self = Self::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(total: usize, per_ip: usize, trusted: &[&str]) -> Arc<HttpSlots> {
        Arc::new(HttpSlots::new(
            total,
            per_ip,
            None,
            trusted.iter().map(|t| t.parse().unwrap()).collect(),
            Arc::new(Metrics::default()),
        ))
    }

    #[test]
    fn caps_total_and_per_address_and_release_on_drop() {
        let s = slots(3, 2, &[]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = s.take(a).unwrap();
        let _a2 = s.take(a).unwrap();
        assert_eq!(s.take(a).unwrap_err(), Refused::PerIp);
        let _b1 = s.take(b).unwrap();
        assert_eq!(s.take(b).unwrap_err(), Refused::Total);
        drop(a1);
        let _a3 = s.take(a).unwrap();
        assert_eq!(s.metrics.http_connections.load(Ordering::Relaxed), 3);
        assert_eq!(s.metrics.http_refused_per_ip.load(Ordering::Relaxed), 1);
        assert_eq!(s.metrics.http_refused_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn trusted_proxies_count_only_in_the_total() {
        let s = slots(10, 1, &["10.0.0.0/8"]);
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| s.take(proxy).unwrap()).collect();
        assert_eq!(held.len(), 5);
        assert!(s.per_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn the_total_never_exceeds_half_the_descriptor_limit() {
        let s = HttpSlots::new(
            10_000,
            10,
            Some(1024),
            Vec::new(),
            Arc::new(Metrics::default()),
        );
        assert_eq!(s.max_total(), 512);
        let s = HttpSlots::new(
            100,
            10,
            Some(1024),
            Vec::new(),
            Arc::new(Metrics::default()),
        );
        assert_eq!(s.max_total(), 100);
    }

    #[test]
    fn a_released_slot_frees_its_place_once() {
        let s = slots(1, 1, &[]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let handle = SlotRelease::new(s.take(a).unwrap());
        let clone = handle.clone();
        assert_eq!(s.take(a).unwrap_err(), Refused::Total);
        clone.release();
        clone.release();
        let again = s.take(a).unwrap();
        drop(handle);
        assert_eq!(s.metrics.http_connections.load(Ordering::Relaxed), 1);
        drop(again);
        assert_eq!(s.metrics.http_connections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn answers_are_complete_json_responses() {
        for refused in [Refused::Total, Refused::PerIp, Refused::NoDescriptors] {
            let text = String::from_utf8(refused.answer()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("content-length: {}", body.len())));
            assert!(head.contains("connection: close"));
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(json["error"].is_string());
        }
        assert!(Refused::PerIp.answer().starts_with(b"HTTP/1.1 429 "));
    }
}
