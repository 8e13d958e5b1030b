//! A minimal push server: the yardstick herald's figures are compared with.
//!
//! Broadcast (the default): every WebSocket upgrade (any path) joins one broadcast;
//! `POST /api/publish` with a JSON body `{"text": "..."}` (or `{"messages": [{"text": ...},
//! ...]}`) encodes each text once into a frame and every connection's task writes it.
//!
//! Per-user (`--groups`): an upgrade on `/message/{id}/stream/` joins group `user.{id}`
//! (any other path joins group `""`), and each message goes to the connections of its
//! `"group"` only, through a bounded queue per connection.
//!
//! No limits, history, auth or heartbeats in either: what is left is the cost of the
//! sockets and the routing, which is what a comparison on one machine needs to separate
//! from herald's own work.
//!
//! ```text
//! cargo run --release -p herald-bench --example minimal_server -- 127.0.0.1:9000 [threads] [--groups]
//! ```
//! Prints `listening on http://ADDR` once bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use herald_ws::{OpCode, accept_key, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

/// Largest request head or body accepted.
const MAX_REQUEST: usize = 1 << 20;

/// Frames one connection may have queued in per-user mode; past it they are dropped.
const QUEUE: usize = 4096;

#[derive(Default)]
struct Counters {
    lagged: AtomicU64,
}

/// One connection in a group: its id and its queue.
type Member = (u64, mpsc::Sender<Bytes>);

/// Per-user mode: each group's connections.
#[derive(Default)]
struct Groups {
    members: Mutex<HashMap<String, Vec<Member>>>,
    next_id: AtomicU64,
}

impl Groups {
    fn join(&self, group: String) -> (u64, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.entry(group).or_default().push((id, tx));
        (id, rx)
    }

    fn leave(&self, group: &str, id: u64) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = members.get_mut(group) {
            list.retain(|(member, _)| *member != id);
            if list.is_empty() {
                members.remove(group);
            }
        }
    }

    /// Queues `frame` for every member of `group`; a full queue drops it (counted).
    fn send(&self, group: &str, frame: &Bytes, counters: &Counters) {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        for (_, tx) in members.get(group).into_iter().flatten() {
            if tx.try_send(frame.clone()).is_err() {
                counters.lagged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Where a connection's frames come from.
#[derive(Clone)]
enum Router {
    Broadcast(broadcast::Sender<Bytes>),
    Groups(Arc<Groups>),
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let mut threads = 2;
    let mut groups = false;
    for arg in args {
        if arg == "--groups" {
            groups = true;
        } else {
            threads = arg.parse()?;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(serve(addr, groups))
}

async fn serve(addr: String, groups: bool) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let router = if groups {
        Router::Groups(Arc::default())
    } else {
        // Bounded: a receiver more than 4,096 frames behind skips ahead (counted).
        Router::Broadcast(broadcast::channel::<Bytes>(QUEUE).0)
    };
    let counters = Arc::new(Counters::default());
    let stats = counters.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("lagged frames: {}", stats.lagged.load(Ordering::Relaxed));
        std::process::exit(0);
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, router.clone(), counters.clone()));
    }
}

/// One request head: the method, the WebSocket key if any and the body length.
struct Head {
    post: bool,
    path: String,
    ws_key: Option<String>,
    content_length: usize,
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?;
    let post = request_line.starts_with("POST ");
    let path = request_line.split(' ').nth(1)?.to_string();
    let mut ws_key = None;
    let mut content_length = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok()?;
        }
    }
    Some(Head {
        post,
        path,
        ws_key,
        content_length,
    })
}

/// The group an upgrade on `path` joins in per-user mode.
fn group_of(path: &str) -> String {
    path.strip_prefix("/message/")
        .and_then(|rest| rest.strip_suffix("/stream/"))
        .map(|id| format!("user.{id}"))
        .unwrap_or_default()
}

async fn connection(mut stream: TcpStream, router: Router, counters: Arc<Counters>) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // Read one request head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_REQUEST {
                return;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let Some(head) = parse_head(&buf[..end]) else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        buf.advance(end);
        if let Some(key) = head.ws_key {
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                accept_key(key.as_bytes())
            );
            match &router {
                Router::Broadcast(tx) => {
                    let rx = tx.subscribe();
                    if stream.write_all(response.as_bytes()).await.is_ok() {
                        websocket(stream, Frames::Broadcast(rx), counters).await;
                    }
                }
                Router::Groups(groups) => {
                    let group = group_of(&head.path);
                    let (id, rx) = groups.join(group.clone());
                    if stream.write_all(response.as_bytes()).await.is_ok() {
                        websocket(stream, Frames::Queue(rx), counters).await;
                    }
                    groups.leave(&group, id);
                }
            }
            return;
        }
        if !head.post || head.content_length > MAX_REQUEST {
            let _ = stream
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await;
            continue;
        }
        while buf.len() < head.content_length {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = buf.split_to(head.content_length);
        let (status, answer) = match publish(&body, &router, &counters) {
            Some(n) => ("200 OK", format!("{{\"published\":{n}}}")),
            None => ("400 Bad Request", "{\"error\":\"bad body\"}".to_string()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Encodes each text of the body once and sends the frame to its receivers (everyone, or
/// the message's `"group"` in per-user mode); the number of messages.
fn publish(body: &[u8], router: &Router, counters: &Counters) -> Option<usize> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let one = |m: &serde_json::Value| {
        let text = m.get("text")?.as_str()?;
        let group = m.get("group").and_then(|g| g.as_str()).unwrap_or("");
        Some((group.to_string(), text.to_string()))
    };
    let messages: Vec<(String, String)> = match value.get("messages").and_then(|m| m.as_array()) {
        Some(messages) => messages.iter().filter_map(one).collect(),
        None => vec![one(&value)?],
    };
    for (group, text) in &messages {
        let frame = encode_frame(OpCode::Text, text.as_bytes());
        match router {
            // No receivers is not an error here.
            Router::Broadcast(tx) => drop(tx.send(frame)),
            Router::Groups(groups) => groups.send(group, &frame, counters),
        }
    }
    Some(messages.len())
}

/// A connection's source of frames.
enum Frames {
    Broadcast(broadcast::Receiver<Bytes>),
    Queue(mpsc::Receiver<Bytes>),
}

impl Frames {
    /// The next frame; `None` once the source is gone.
    async fn next(&mut self, counters: &Counters) -> Option<Bytes> {
        match self {
            Self::Broadcast(rx) => loop {
                match rx.recv().await {
                    Ok(frame) => return Some(frame),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        counters.lagged.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
            Self::Queue(rx) => rx.recv().await,
        }
    }

    /// A frame already waiting, if any.
    fn try_next(&mut self) -> Option<Bytes> {
        match self {
            Self::Broadcast(rx) => rx.try_recv().ok(),
            Self::Queue(rx) => rx.try_recv().ok(),
        }
    }
}

/// Writes every broadcast frame to the socket (several queued ones in one write); ends
/// when the peer closes or the socket fails. Client frames are read and discarded.
async fn websocket(stream: TcpStream, mut rx: Frames, counters: Arc<Counters>) {
    let (mut rd, mut wr) = stream.into_split();
    let mut scratch = vec![0u8; 1024];
    let mut batch = BytesMut::new();
    loop {
        tokio::select! {
            frame = rx.next(&counters) => {
                let Some(frame) = frame else { return };
                let result = match rx.try_next() {
                    Some(second) => {
                        batch.clear();
                        batch.extend_from_slice(&frame);
                        batch.extend_from_slice(&second);
                        while let Some(more) = rx.try_next() {
                            batch.extend_from_slice(&more);
                        }
                        wr.write_all(&batch).await
                    }
                    None => wr.write_all(&frame).await,
                };
                if result.is_err() {
                    return;
                }
            }
            read = rd.read(&mut scratch) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}
