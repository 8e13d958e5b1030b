//! A minimal broadcast server: the yardstick herald's figures are compared with.
//!
//! Every WebSocket upgrade (any path) joins one broadcast; `POST /api/publish` with a JSON
//! body `{"text": "..."}` (or `{"messages": [{"text": ...}, ...]}`) encodes each text once
//! into a frame and every connection's task writes it. No routing, groups, limits,
//! history, auth or heartbeats: what is left is the cost of the sockets themselves, which
//! is what a comparison on one machine needs to separate from herald's own work.
//!
//! ```text
//! cargo run --release -p herald-bench --example minimal_server -- 127.0.0.1:9000 [threads]
//! ```
//! Prints `listening on http://ADDR` once bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use herald_ws::{OpCode, accept_key, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Largest request head or body accepted.
const MAX_REQUEST: usize = 1 << 20;

#[derive(Default)]
struct Counters {
    lagged: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let threads: usize = match args.next() {
        Some(t) => t.parse()?,
        None => 2,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(serve(addr))
}

async fn serve(addr: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Bounded: a receiver more than 4,096 frames behind skips ahead (counted).
    let (tx, _) = broadcast::channel::<Bytes>(4096);
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
        tokio::spawn(connection(stream, tx.clone(), counters.clone()));
    }
}

/// One request head: the method, the WebSocket key if any and the body length.
struct Head {
    post: bool,
    ws_key: Option<String>,
    content_length: usize,
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let post = lines.next()?.starts_with("POST ");
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
        ws_key,
        content_length,
    })
}

async fn connection(mut stream: TcpStream, tx: broadcast::Sender<Bytes>, counters: Arc<Counters>) {
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
            let rx = tx.subscribe();
            if stream.write_all(response.as_bytes()).await.is_ok() {
                websocket(stream, rx, counters).await;
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
        let (status, answer) = match publish(&body, &tx) {
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

/// Encodes each text of the body once and broadcasts the frame; the number sent.
fn publish(body: &[u8], tx: &broadcast::Sender<Bytes>) -> Option<usize> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let texts: Vec<&str> = match value.get("messages").and_then(|m| m.as_array()) {
        Some(messages) => messages
            .iter()
            .filter_map(|m| m.get("text").and_then(|t| t.as_str()))
            .collect(),
        None => vec![value.get("text")?.as_str()?],
    };
    for text in &texts {
        // No receivers is not an error here.
        let _ = tx.send(encode_frame(OpCode::Text, text.as_bytes()));
    }
    Some(texts.len())
}

/// Writes every broadcast frame to the socket (several queued ones in one write); ends
/// when the peer closes or the socket fails. Client frames are read and discarded.
async fn websocket(stream: TcpStream, mut rx: broadcast::Receiver<Bytes>, counters: Arc<Counters>) {
    let (mut rd, mut wr) = stream.into_split();
    let mut scratch = vec![0u8; 1024];
    let mut batch = BytesMut::new();
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        counters.lagged.fetch_add(n, Ordering::Relaxed);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let result = match rx.try_recv() {
                    Ok(second) => {
                        batch.clear();
                        batch.extend_from_slice(&frame);
                        batch.extend_from_slice(&second);
                        while let Ok(more) = rx.try_recv() {
                            batch.extend_from_slice(&more);
                        }
                        wr.write_all(&batch).await
                    }
                    Err(_) => wr.write_all(&frame).await,
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
