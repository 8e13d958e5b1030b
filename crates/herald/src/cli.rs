//! The client side of `herald publish`: one POST to a running server's publish API.

use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// Why a publish from the command line failed; the text is what the user sees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The server URL is not `http://host:port[/...]`.
    #[error("invalid --server URL {0:?}: expected http://host:port")]
    BadUrl(String),
    /// The payload is not UTF-8 and `--binary` was not given.
    #[error("the payload is not valid UTF-8; pass --binary to send it as a binary frame")]
    NotUtf8,
    /// The server could not be reached.
    #[error("cannot reach {url}: {source}")]
    Connect {
        /// The server URL.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("request failed: {0}")]
    Http(String),
    /// The server answered with an error.
    #[error("server answered {status}: {message}")]
    Server {
        /// HTTP status.
        status: StatusCode,
        /// The server's `message` (or the raw body).
        message: String,
    },
}

/// Publishes `payload` to `group` through the server at `server`; returns the offset.
pub async fn publish(
    server: &str,
    api_key: Option<&str>,
    group: &str,
    payload: &[u8],
    binary: bool,
    django: bool,
) -> Result<u64, PublishError> {
    let rest = server
        .strip_prefix("http://")
        .ok_or_else(|| PublishError::BadUrl(server.to_string()))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(PublishError::BadUrl(server.to_string()));
    }
    let mut body = if binary {
        json!({"group": group, "bytes": base64::engine::general_purpose::STANDARD.encode(payload)})
    } else {
        let text = std::str::from_utf8(payload).map_err(|_| PublishError::NotUtf8)?;
        json!({"group": group, "text": text})
    };
    if django {
        body["django"] = serde_json::Value::Bool(true);
    }
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|source| PublishError::Connect {
            url: server.to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| PublishError::Http(e.to_string()))?;
    // The connection future drives the socket; it ends when the exchange is over.
    let driver = tokio::spawn(conn);
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/api/publish", server.trim_end_matches('/')))
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = api_key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .map_err(|e| PublishError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| PublishError::Http(e.to_string()))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| PublishError::Http(e.to_string()))?
        .to_bytes();
    driver.abort();
    let answer: Option<Value> = serde_json::from_slice(&bytes).ok();
    if !status.is_success() {
        let message = answer
            .as_ref()
            .and_then(|v| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(PublishError::Server { status, message });
    }
    answer
        .as_ref()
        .and_then(|v| v.get("offset"))
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            PublishError::Http(format!(
                "unexpected answer: {}",
                String::from_utf8_lossy(&bytes)
            ))
        })
}
