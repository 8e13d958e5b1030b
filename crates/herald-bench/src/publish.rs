//! Publishers: keep-alive HTTP/1.1 connections POSTing messages that carry their send time.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::target::{Target, fill};
use crate::unix_nanos;

/// How messages are addressed and wrapped.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Where to POST; the path may hold `{g}`.
    pub target: Target,
    /// One message: a template with `{g}` and `{payload}`.
    pub body: String,
    /// A batch wrapper holding `{items}` (comma-joined message bodies), if batching.
    pub batch_body: Option<String>,
    /// Messages per request.
    pub batch: usize,
    /// `Content-Type` of every request.
    pub content_type: String,
    /// Extra request headers, e.g. an `Authorization`.
    pub headers: Vec<(String, String)>,
    /// Messages to publish in total.
    pub messages: u64,
    /// Messages per second over all publishers; 0 = as fast as responses come back.
    pub rate: f64,
    /// Concurrent publisher connections.
    pub publishers: usize,
    /// Payload size in bytes (the timestamp prefix, padded with `x`).
    pub payload_size: usize,
    /// Group indices to address: one (broadcast) or many, picked at random.
    pub groups: Range<u64>,
    /// Give up on a request after this long.
    pub request_timeout: Duration,
}

/// What the publishers achieved.
#[derive(Debug, Default)]
pub struct PublishTally {
    /// Messages in requests answered 2xx.
    pub acked: AtomicU64,
    /// Messages in requests that failed or were answered otherwise.
    pub failed: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// The first failure seen, for the report.
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl PublishTally {
    fn error(&self, message: String, count: u64) {
        self.failed.fetch_add(count, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(message);
        }
    }
}

/// A message payload: `HB<unix ns>:<seq>:` padded with `x` to `size` bytes.
pub fn payload(seq: u64, size: usize) -> String {
    let mut p = format!("HB{}:{seq}:", unix_nanos());
    while p.len() < size {
        p.push('x');
    }
    p
}

/// Publishes the whole plan, stopping early at `deadline`.
pub async fn run(plan: Arc<PublishPlan>, tally: Arc<PublishTally>, deadline: Instant) {
    let batch = plan.batch.max(1) as u64;
    let requests = plan.messages.div_ceil(batch);
    let publishers = (plan.publishers.max(1) as u64).min(requests.max(1));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for p in 0..publishers {
        let plan = plan.clone();
        let tally = tally.clone();
        tasks.spawn(async move {
            let mut conn: Option<http1::SendRequest<Full<Bytes>>> = None;
            let mut connections = JoinSet::new();
            let mut j = p;
            while j < requests {
                if Instant::now() >= deadline {
                    break;
                }
                let first = j * batch;
                let count = batch.min(plan.messages - first);
                if plan.rate > 0.0 {
                    let due = start + Duration::from_secs_f64(first as f64 / plan.rate);
                    tokio::time::sleep_until(due.min(deadline)).await;
                }
                let sender = match conn.as_mut() {
                    Some(sender) if !sender.is_closed() => sender,
                    _ => match open(&plan.target, &mut connections).await {
                        Ok(sender) => conn.insert(sender),
                        Err(e) => {
                            tally.error(format!("connect: {e}"), count);
                            j += publishers;
                            continue;
                        }
                    },
                };
                let (path, body) = request(&plan, first, count);
                tally.requests.fetch_add(1, Ordering::Relaxed);
                let mut builder = Request::post(path)
                    .header(hyper::header::HOST, &plan.target.host)
                    .header(hyper::header::CONTENT_TYPE, &plan.content_type);
                for (name, value) in &plan.headers {
                    builder = builder.header(name, value);
                }
                let req = match builder.body(Full::new(Bytes::from(body))) {
                    Ok(req) => req,
                    Err(e) => {
                        tally.error(format!("request: {e}"), count);
                        j += publishers;
                        continue;
                    }
                };
                let answer = tokio::time::timeout(plan.request_timeout, async {
                    sender.ready().await?;
                    let response = sender.send_request(req).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((status, body))
                })
                .await;
                match answer {
                    Ok(Ok((status, _))) if status.is_success() => {
                        tally.acked.fetch_add(count, Ordering::Relaxed);
                    }
                    Ok(Ok((status, body))) => {
                        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                        tally.error(format!("HTTP {status}: {text}"), count);
                    }
                    Ok(Err(e)) => {
                        conn = None;
                        tally.error(format!("http: {e}"), count);
                    }
                    Err(_) => {
                        conn = None;
                        tally.error("request timed out".into(), count);
                    }
                }
                j += publishers;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Opens a keep-alive connection; its driver task lives in `connections`.
async fn open(
    target: &Target,
    connections: &mut JoinSet<()>,
) -> Result<http1::SendRequest<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(target.addr).await?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    connections.spawn(async move {
        // Ends when the server closes or the sender is dropped; errors show up on the
        // sender's next request.
        let _ = connection.await;
    });
    Ok(sender)
}

/// The path and body of the request carrying messages `first .. first + count`.
fn request(plan: &PublishPlan, first: u64, count: u64) -> (String, String) {
    let pick = || {
        let Range { start, end } = plan.groups.clone();
        if end > start + 1 {
            fastrand::u64(start..end)
        } else {
            start
        }
    };
    match &plan.batch_body {
        Some(wrapper) => {
            let items: Vec<String> = (first..first + count)
                .map(|seq| fill(&plan.body, 0, pick(), &payload(seq, plan.payload_size)))
                .collect();
            let g = plan.groups.start;
            let path = fill(&plan.target.path, 0, g, "");
            (path, wrapper.replace("{items}", &items.join(",")))
        }
        None => {
            let g = pick();
            let body = fill(&plan.body, 0, g, &payload(first, plan.payload_size));
            (fill(&plan.target.path, 0, g, ""), body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(batch_body: Option<&str>, groups: Range<u64>) -> PublishPlan {
        PublishPlan {
            target: Target::parse("http://127.0.0.1:1/pub/{g}", &[("http://", 80)]).unwrap(),
            body: "{\"group\":\"user.{g}\",\"text\":\"{payload}\"}".into(),
            batch_body: batch_body.map(str::to_string),
            batch: 3,
            content_type: "application/json".into(),
            headers: Vec::new(),
            messages: 10,
            rate: 0.0,
            publishers: 1,
            payload_size: 40,
            groups,
            request_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn payloads_carry_a_stamp_and_size() {
        let p = payload(7, 60);
        assert_eq!(p.len(), 60);
        assert!(crate::client::stamp(p.as_bytes()).is_some());
        assert!(p.contains(":7:"));
    }

    #[test]
    fn batches_wrap_items() {
        let plan = plan(Some("{\"messages\":[{items}]}"), 5..6);
        let (path, body) = request(&plan, 0, 3);
        assert_eq!(path, "/pub/5");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let items = v["messages"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0]["group"], "user.5");
    }

    #[test]
    fn single_messages_pick_groups_in_range() {
        let plan = plan(None, 10..20);
        for _ in 0..50 {
            let (path, body) = request(&plan, 0, 1);
            let g: u64 = path.trim_start_matches("/pub/").parse().unwrap();
            assert!((10..20).contains(&g));
            assert!(body.contains(&format!("user.{g}\"")));
        }
    }
}
